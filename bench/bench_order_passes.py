"""``write_orders`` of the three built-in strategies across code checkouts, from a cold page
cache, with the bytes it read from disk, interleaved round by round (issue 21: three stored
orders of 1e9 samples under 5 minutes from a cold cache).

Each run is a fresh process on the checkout's highnoon (``PYTHONPATH``) writing the orders of
``ROOT/nN`` (its ``orders/`` removed first): wall and CPU seconds, peak RSS above the process'
baseline, and ``/proc/self/io``'s ``read_bytes`` (read from the disk, memory-mapped pages
included) and ``rchar`` (asked of files by ``read``, page cache or not). Modes:

* ``cold``: the store's files dropped from the page cache before the run
  (``bench_scale.evict``), as a first preparation after the store was written elsewhere;
* ``each_pass``: also dropped at the start of every pass over the features (each
  ``features_range``/``lengths_range`` of sample 0), which makes a store that fits the page
  cache behave as one that does not (at 1e9 the 16 GB of features do not stay cached beside
  the orders being written), so its passes are counted in ``read_bytes``.

Prints the median of each figure per (mode, size, arm) and each arm's ratio to the first.

    python bench/bench_order_passes.py --arms main=/work/main,now=. --root R --sizes 1e7,1e8 \\
        --modes cold,each_pass --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_scale  # beside this file (the path above)

CHILD = r"""
import json, os, sys, time
from highnoon.curriculum.stored_order import write_orders
from highnoon.data.store import TokenStore
sys.path.insert(0, {bench!r})
import bench_scale  # after highnoon: it puts BENCH_HIGHNOON_ROOT first on the path
import highnoon
assert os.path.dirname(os.path.dirname(highnoon.__file__)) == os.getcwd(), highnoon.__file__

store_path, each_pass = {store!r}, {each_pass!r}
shards = [os.path.join(store_path, d) for d in os.listdir(store_path) if d.startswith("shard-")]
if each_pass:  # every pass over the features starts with the store's pages dropped
    for name in ("features_range", "lengths_range"):
        real = getattr(TokenStore, name, None)
        if real is None:
            continue
        def dropping(self, start, stop, _real=real):
            if start == 0:
                for shard in shards:
                    bench_scale.evict(shard)
            return _real(self, start, stop)
        setattr(TokenStore, name, dropping)

def io():
    with open("/proc/self/io") as handle:
        return dict((k, int(v)) for k, v in (line.split(": ") for line in handle))

store = TokenStore.open(store_path)
base = bench_scale._reset_peak()
before, wall, cpu = io(), time.perf_counter(), time.process_time()
write_orders(store, ("size_based", "difficulty_based", "mixed"))
after = io()
print(json.dumps({{
    "seconds": time.perf_counter() - wall,
    "cpu_seconds": time.process_time() - cpu,
    "peak_mib": bench_scale._status_mib("VmHWM") - base,
    "disk_read_gb": (after["read_bytes"] - before["read_bytes"]) / 1e9,
    "rchar_gb": (after["rchar"] - before["rchar"]) / 1e9,
}}))
"""

FIGURES = ("seconds", "cpu_seconds", "peak_mib", "disk_read_gb", "rchar_gb")


def run(code: str, store: str, each_pass: bool) -> dict[str, Any]:
    """One ``write_orders`` of the three strategies on the checkout ``code``; its figures."""
    shutil.rmtree(os.path.join(store, "orders"), ignore_errors=True)  # unlinks only
    bench_scale.evict(store)
    code = os.path.abspath(code)
    source = CHILD.format(bench=os.path.dirname(os.path.abspath(__file__)), store=store,
                          each_pass=each_pass)  # fmt: skip
    out = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                         cwd=code, env={**os.environ, "PYTHONPATH": code, "BENCH_HIGHNOON_ROOT": code}, check=True)  # fmt: skip
    shutil.rmtree(os.path.join(store, "orders"), ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", required=True, help="name=CHECKOUT,... (the first: baseline)")
    parser.add_argument("--root", required=True, help="stores at ROOT/nN (their orders removed)")
    parser.add_argument("--sizes", default="1e7,1e8")
    parser.add_argument("--modes", default="cold,each_pass")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    arms = [a.split("=", 1) for a in args.arms.split(",")]
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    figures: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in range(args.rounds):
        for n in sizes:
            for mode in modes:
                for name, code in arms:
                    got = run(code, os.path.join(args.root, f"n{n}"), mode == "each_pass")
                    got["load"] = load()
                    figures.setdefault((mode, n, name), []).append(got)
                    print(json.dumps({"round": r, "mode": mode, "n": n, "arm": name, **got}),
                          flush=True)  # fmt: skip
    print("| mode | samples | arm | wall s | CPU s | peak RSS MiB | read from disk GB "
          "| read() GB | wall / CPU / disk vs " + arms[0][0] + " |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        for n in sizes:
            base = {f: statistics.median(g[f] for g in figures[(mode, n, arms[0][0])])
                    for f in FIGURES}  # fmt: skip
            for name, _ in arms:
                med = {f: statistics.median(g[f] for g in figures[(mode, n, name)])
                       for f in FIGURES}  # fmt: skip
                ratios = " / ".join(
                    f"{med[f] / base[f]:.2f}x" if base[f] else "-"
                    for f in ("seconds", "cpu_seconds", "disk_read_gb")
                )
                print(f"| {mode} | {n:.0e} | {name} | {med['seconds']:.1f} | "
                      f"{med['cpu_seconds']:.1f} | {med['peak_mib']:.0f} | "
                      f"{med['disk_read_gb']:.2f} | {med['rchar_gb']:.2f} | {ratios} |")  # fmt: skip


if __name__ == "__main__":
    main()
