"""Benchmark of the curriculum engine at scale (one core, numpy only).

Measures, on synthetic difficulty scores of ``--num_samples`` samples:
  * scores -> easy-to-hard order (``order_from_scores``), and the whole
    ``prepare_curriculum_from_scores`` (finite check + SHA-256 fingerprint + order);
  * one host's indices for a whole epoch of 8 hosts (``host_epoch_indices``, full pool);
  * peak extra memory of each phase (tracemalloc, numpy allocations) and the process peak RSS;
  * the ratio against plain ``numpy.argsort`` of the same scores, measured in this process.

Prints a markdown table for BENCHMARKS.md. Targets at 100M: order < 15 s, host epoch < 2 s,
peak < 2 GiB.

    python bench/bench_curriculum.py             # 100M samples (about 2-3 minutes)
    python bench/bench_curriculum.py --quick     # 1M samples
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from highnoon.curriculum import CurriculumScheduler, order_from_scores

GIB = float(1 << 30)


def synthetic_scores(n: int, seed: int) -> np.ndarray:
    """difficulty_based-like scores: 0.7 * normalised rarity + 0.3 * sqrt(length / max)."""
    rng = np.random.default_rng(seed)
    scores = np.empty(n, dtype=np.float64)
    chunk = 1 << 22
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        lengths = rng.integers(16, 2049, size).astype(np.float64)
        rarity = rng.gamma(8.0, 0.5, size) / 20.0
        scores[start : start + size] = 0.7 * np.minimum(rarity, 1.0) + 0.3 * np.sqrt(lengths / 2048)
    return scores


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, seconds, peak extra GiB traced during the call)."""
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, (tracemalloc.get_traced_memory()[1] - base) / GIB


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # ru_maxrss is KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_samples", type=int, default=100_000_000)
    parser.add_argument("--quick", action="store_true", help="1M samples")
    parser.add_argument("--num_hosts", type=int, default=8)
    parser.add_argument("--global_batch_size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_baseline", action="store_true", help="skip numpy.argsort")
    args = parser.parse_args()
    n = 1_000_000 if args.quick else args.num_samples

    scores = synthetic_scores(n, args.seed)
    tracemalloc.start()
    rows: list[tuple[str, float, float, str]] = []

    order, t_order, m_order = measure(lambda: order_from_scores(scores))
    rows.append(("scores -> order (order_from_scores)", t_order, m_order, "< 15 s"))
    del order

    scheduler = CurriculumScheduler(
        verbose=False, global_batch_size=args.global_batch_size, seed=args.seed
    )
    _, t_prep, m_prep = measure(lambda: scheduler.prepare_curriculum_from_scores(scores))
    rows.append(("prepare_curriculum_from_scores (checks + sha256 + order)", t_prep, m_prep, ""))

    epoch = 90  # full pool with the warm-up staircase's defaults
    host_rows, t_host, m_host = measure(
        lambda: scheduler.host_epoch_indices(epoch, 0, args.num_hosts)
    )
    rows.append(
        (
            f"host_epoch_indices, 1 host of {args.num_hosts}, full pool {tuple(host_rows.shape)}",
            t_host,
            m_host,
            "< 2 s",
        )
    )
    _, t_early, m_early = measure(lambda: scheduler.host_epoch_indices(0, 0, args.num_hosts))
    rows.append((f"host_epoch_indices, 1 host of {args.num_hosts}, 20% pool", t_early, m_early, ""))
    del host_rows
    rss_curriculum = rss_gib()

    lengths = np.floor(scores * 2048.0)  # integer-valued (size_based-like): the exact packed path
    _, t_sized, m_sized = measure(partial(order_from_scores, lengths))
    rows.append(("scores -> order, integer-valued (size_based-like)", t_sized, m_sized, ""))
    del lengths

    baselines: list[tuple[str, float]] = []
    if not args.skip_baseline:
        for kind in ("quicksort", "stable"):
            _, seconds, memory = measure(lambda kind=kind: np.argsort(scores, kind=kind))
            rows.append((f"baseline numpy.argsort(kind={kind!r})", seconds, memory, ""))
            baselines.append((kind, seconds))
    tracemalloc.stop()

    print(f"\n### bench_curriculum: {n:,} samples, G={args.global_batch_size}, 1 core\n")
    print("| measurement | seconds | peak extra GiB (tracemalloc) | target |")
    print("|---|---:|---:|---|")
    for name, seconds, memory, target in rows:
        print(f"| {name} | {seconds:.2f} | {memory:.2f} | {target} |")
    print()
    print(f"- input scores: {scores.nbytes / GIB:.2f} GiB (float64)")
    print(
        f"- process peak RSS after the curriculum phases (incl. inputs): {rss_curriculum:.2f} GiB"
    )
    for kind, seconds in baselines:
        print(f"- order speed-up vs numpy.argsort(kind={kind!r}): {seconds / t_order:.2f}x")


if __name__ == "__main__":
    main()
