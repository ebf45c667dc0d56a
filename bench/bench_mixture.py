"""One host's cost of drawing a mixed stage's epoch (``data.stage_data.mixture_epoch``).

Every host draws the whole epoch of a weighted mixture (three sources of 60/10/30% of the
samples at shares 0.5/0.3/0.2), so its time and memory grow with the corpus, not with its own
rows. Prints the draw's seconds and the process's peak RSS against the inputs alone, per size,
each size in a fresh process (peak RSS only grows):

    python bench/bench_mixture.py            # 1e6 and 1e7 samples
    python bench/bench_mixture.py 5e7
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import numpy as np


def measure(n: int) -> str:
    from highnoon.data.stage_data import mixture_counts, mixture_epoch

    sizes = [n * 6 // 10, n // 10, n - n * 7 // 10]
    bounds = np.cumsum([0, *sizes])
    groups = [np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i in range(3)]
    inputs = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    started = time.perf_counter()
    draw = mixture_epoch(groups, mixture_counts(sizes, [0.5, 0.3, 0.2]), seed=0, epoch=1)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return (
        f"| {n:.0e} | {seconds:.2f} | {seconds / n * 1e9:.0f} | {peak:.2f} | {inputs:.2f} | "
        f"{(peak - inputs) * 2**30 / n:.0f} | {draw.nbytes / 2**30:.2f} |"
    )


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[1].startswith("--one="):
        print(measure(int(float(argv[1][6:]))))
        return
    sizes = argv[1:] or ["1e6", "1e7"]
    print("| samples | draw s | ns/sample | peak RSS GiB | inputs GiB | bytes/sample | draw GiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in sizes:
        out = subprocess.run(
            [sys.executable, __file__, f"--one={size}"], capture_output=True, text=True, check=True
        )
        print(out.stdout.strip())


if __name__ == "__main__":
    main(sys.argv)
