"""Benchmarks of highnoon at a billion samples, part by part, on synthetic stores.

Every part measures one path at several store sizes (``--sizes``) beside today's in-memory path
up to the size it reaches (``--in_memory_max``), in the same run, and prints the ratios. Each
measurement runs in a child process of its own, so its peak RSS above the child's baseline (RSS
after its imports) is its own. Stores come from ``bench/scale_store.py`` under ``--root``,
written once per size and reused (``--keep`` keeps them after the run; by default a store this
run wrote is deleted at the end: the disk is shared).

Parts:

* ``order``: ``stored_order.write_orders`` of the three built-in strategies (the preparation
  step: an external sort in bounded memory) vs ``order_from_scores(scores_from_features(
  store.features, s))`` for each strategy (what every host computes at start today), and the
  first read of a stored order (``open_stored_order`` + 1 024 positions).

    python bench/bench_scale.py --part order                      # 1e6, 1e7, 1e8
    python bench/bench_scale.py --part order --sizes 1e6,1e7,1e8,1e9
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MIB = float(1 << 20)


def _reset_peak() -> float:
    """Reset this process' peak RSS (Linux ``clear_refs`` 5) and return its RSS now, MiB: the
    baseline a measurement's peak is taken above."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass  # the peak then includes the imports
    return _status_mib("VmRSS")


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def _measured(fn: Callable[[], Any]) -> dict[str, Any]:
    """Wall and CPU seconds of ``fn()`` and its peak RSS above the baseline before it."""
    base = _reset_peak()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return {
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "peak_mib": _status_mib("VmHWM") - base,
    }


# --- children: one measurement each ------------------------------------------------------------


def _child_write_orders(path: str) -> dict[str, Any]:
    from highnoon.curriculum.stored_order import BUILT_IN, write_orders
    from highnoon.data.store import TokenStore

    store = TokenStore.open(path)
    return _measured(lambda: write_orders(store, BUILT_IN))


def _child_in_memory(path: str) -> dict[str, Any]:
    from highnoon.curriculum.order import order_from_scores
    from highnoon.curriculum.scoring import scores_from_features
    from highnoon.curriculum.stored_order import BUILT_IN
    from highnoon.data.store import TokenStore

    store = TokenStore.open(path)

    def run() -> None:
        for strategy in BUILT_IN:
            order_from_scores(scores_from_features(store.features, strategy))

    return _measured(run)


def _child_first_read(path: str) -> dict[str, Any]:
    import numpy as np

    from highnoon.curriculum.stored_order import open_stored_order
    from highnoon.data.store import TokenStore

    def run() -> None:
        order = open_stored_order(TokenStore.open(path), "mixed")
        order.take(np.arange(1024, dtype=np.int64) * (len(order) // 1024))

    return _measured(run)


CHILDREN: dict[str, Callable[[str], dict[str, Any]]] = {
    "write_orders": _child_write_orders,
    "in_memory": _child_in_memory,
    "first_read": _child_first_read,
}


def run_child(name: str, path: str) -> dict[str, Any]:
    """Run child ``name`` on the store at ``path`` in a fresh process; its JSON result."""
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), f"--child={name}", f"--store={path}"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
    )  # fmt: skip
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- stores shared by every part -----------------------------------------------------------------


def ensure_store(root: str, n: int, created: list[str]) -> str:
    """The synthetic store of ``n`` samples under ``root``, written unless present."""
    from scale_store import write_scale_store

    from highnoon.data.store import is_store

    path = os.path.join(root, f"n{n}")
    if not is_store(path):
        shutil.rmtree(path, ignore_errors=True)
        start = time.perf_counter()
        write_scale_store(path, n, progress=False)
        print(
            f"store of {n:.0e} samples written in {time.perf_counter() - start:.1f} s", flush=True
        )
        created.append(path)
    return path


# --- parts ---------------------------------------------------------------------------------------


def part_order(path: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(os.path.join(path, "orders"), ignore_errors=True)
    row: dict[str, Any] = {"n": n, "write_orders": run_child("write_orders", path)}
    row["first_read"] = run_child("first_read", path)
    if n <= args.in_memory_max:
        row["in_memory"] = run_child("in_memory", path)
    shutil.rmtree(os.path.join(path, "orders"), ignore_errors=True)
    return row


def format_order(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| samples | write_orders (3 strategies): wall / CPU | peak RSS above baseline | in "
        "memory today (3 strategies): wall / CPU | its peak RSS | CPU ratio stored / in memory "
        "| open + first read of 1 024 positions |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        w, m, r = row["write_orders"], row.get("in_memory"), row["first_read"]

        def cell(x: dict[str, Any] | None, key: str, fmt: str) -> str:
            if x is None:
                return "not run"
            if "error" in x:
                return x["error"]
            return (
                fmt.format(x["seconds"], x["cpu_seconds"]) if key == "both" else fmt.format(x[key])
            )

        ok = m is not None and "error" not in m and "error" not in w
        ratio = f"{w['cpu_seconds'] / m['cpu_seconds']:.2f}x" if ok else "-"
        both = "{:.1f} s / {:.1f} s"
        lines.append(
            f"| {row['n']:.0e} | {cell(w, 'both', both)} | {cell(w, 'peak_mib', '{:.0f} MiB')} "
            f"| {cell(m, 'both', both)} | {cell(m, 'peak_mib', '{:.0f} MiB')} | {ratio} "
            f"| {cell(r, 'seconds', '{:.3f} s')} |"
        )
    return "\n".join(lines)


PARTS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[[list], str]]] = {
    "order": (part_order, format_order),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=sorted(PARTS), default="order")
    parser.add_argument("--sizes", default="1e6,1e7,1e8", help="store sizes, comma-separated")
    parser.add_argument("--in_memory_max", type=float, default=1e8,
                        help="largest size today's in-memory path is run at")  # fmt: skip
    parser.add_argument("--root", default="/tmp/highnoon_scale", help="where stores are written")
    parser.add_argument("--keep", action="store_true", help="keep the stores this run wrote")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.store)))
        return
    run, fmt = PARTS[args.part]
    created: list[str] = []
    rows = []
    try:
        for size in [int(float(s)) for s in args.sizes.split(",") if s]:
            rows.append(run(ensure_store(args.root, size, created), size, args))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        if not args.keep:
            for path in created:
                shutil.rmtree(path, ignore_errors=True)
    print(fmt(rows))


if __name__ == "__main__":
    main()
