"""A packed host's start, cold and warm, across code checkouts and store roots, interleaved.

Runs ``bench_scale.py``'s ``pack`` child (open -> the first call's packed rows, then those rows'
tokens, then calls) for every (checkout, store root) pair given, at each size, cold (the
store's files dropped from the page cache first, ``bench_scale.evict``) and warm, round after
round, so a loaded machine's drift falls on every arm alike; prints the median of each figure
and each arm's 1e9 / 1e6 ratio (the issue-21 goal is 1.3x). A checkout without the tokens
figure prints "-" there.

    python bench/bench_cold_start.py --arms before=/work/main:/tmp/old,now=.:/tmp/new \\
        --sizes 1e6,1e9 --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_scale  # beside this file (the path above)


def run_pack_child(code: str, store: str) -> dict[str, Any]:
    """``bench_scale.py --child=pack`` of the checkout ``code`` on ``store``; its JSON."""
    code = os.path.abspath(code)
    env = {**os.environ, "PYTHONPATH": code, "BENCH_HIGHNOON_ROOT": code}
    out = subprocess.run(
        [sys.executable, os.path.join(code, "bench", "bench_scale.py"), "--child=pack",
         f"--store={store}"],
        capture_output=True, text=True, cwd=code, env=env, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", required=True,
                        help="name=CHECKOUT:STORE_ROOT,... (stores at STORE_ROOT/nN)")  # fmt: skip
    parser.add_argument("--sizes", default="1e6,1e9")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    arms = [(a.split("=", 1)[0], *a.split("=", 1)[1].split(":", 1)) for a in args.arms.split(",")]
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    figures: dict[tuple[str, str, int], dict[str, list[float]]] = {}
    for r in range(args.rounds):
        for n in sizes:
            for mode in ("cold", "warm"):
                for name, code, root in arms:
                    store = os.path.join(root, f"n{n}")
                    if mode == "cold":
                        bench_scale.evict(store)
                    got = run_pack_child(code, store)
                    row = figures.setdefault((mode, name, n), {})
                    for key in ("first_rows", "first_tokens"):
                        if key in got:
                            row.setdefault(key, []).append(got[key]["seconds"])
                            row.setdefault(key + "_cpu", []).append(got[key]["cpu_seconds"])
                    row.setdefault("call_100", []).append(got["call_100"])
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    def med(row: dict[str, list[float]], key: str) -> float | None:
        return statistics.median(row[key]) if key in row else None

    def cell(row: dict[str, list[float]], key: str) -> str:
        wall, cpu = med(row, key), med(row, key + "_cpu")
        return "-" if wall is None else f"{wall * 1e3:.0f} ms ({cpu * 1e3:.0f} ms CPU)"

    print("| cache | arm | samples | open -> first rows: wall (CPU) | their tokens: wall (CPU) "
          "| both: wall | 100-step call |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for (mode, name, n), row in figures.items():
        both = med(row, "first_rows") + (med(row, "first_tokens") or 0.0)
        print(f"| {mode} | {name} | {n:.0e} | {cell(row, 'first_rows')} "
              f"| {cell(row, 'first_tokens')} | {both * 1e3:.0f} ms "
              f"| {med(row, 'call_100') * 1e3:.0f} ms |")  # fmt: skip
    print(f"\nratios {sizes[-1]:.0e} / {sizes[0]:.0e} (wall; CPU):")
    for mode in ("cold", "warm"):
        for name, _, _ in arms:
            lo, hi = figures[(mode, name, sizes[0])], figures[(mode, name, sizes[-1])]
            parts = []
            for key in ("first_rows", "first_tokens"):
                if key in lo:
                    parts.append(f"{key} {med(hi, key) / med(lo, key):.2f}x; "
                                 f"{med(hi, key + '_cpu') / med(lo, key + '_cpu'):.2f}x")  # fmt: skip
            print(f"  {mode} {name}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
