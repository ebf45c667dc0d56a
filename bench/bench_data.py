"""Data-layer throughput: store build MB/s (byte tokenizer) and pipeline tokens/s.

The pipeline figure is also printed as a ratio against a plain numpy gather of the same rows in
the same process (no tf.data), so machine speed cancels out. Targets: build >= 5 MB/s of text,
pipeline >= 2M tokens/s.

    python bench/bench_data.py [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from highnoon.data import build_token_store, make_host_dataset


def synthetic_texts(total_mb: float, seed: int = 0) -> list[str]:
    """Texts of 200..4000 characters (ASCII words), about ``total_mb`` MB in all."""
    rng = np.random.Generator(np.random.PCG64(seed))
    words = np.array(["alpha", "beta", "gamma", "delta", "def", "return", "x = 1\n", "é"])
    texts, size = [], 0
    while size < total_mb * 1e6:
        n = int(rng.integers(40, 800))
        text = " ".join(words[rng.integers(0, len(words), n)])
        texts.append(text)
        size += len(text.encode())
    return texts


def bench_build(texts: list[str], directory: str) -> float:
    mb = sum(len(t.encode()) for t in texts) / 1e6
    start = time.perf_counter()
    build_token_store(texts, "byte", os.path.join(directory, "build"), progress=False)
    return mb / (time.perf_counter() - start)


def numpy_gather(store, rows: np.ndarray, seq_len: int) -> int:
    """Baseline: the same [B, T+1] gather of the first tokens of every row, numpy only."""
    tokens, offsets = store.tokens, store.offsets
    total = 0
    ar = np.arange(seq_len + 1)
    for step_rows in rows:
        starts = offsets[step_rows]
        lengths = offsets[step_rows + 1] - starts
        pos = np.minimum(starts[:, None] + ar, starts[:, None] + lengths[:, None] - 1)
        batch = np.asarray(tokens[pos], dtype=np.int32)
        total += batch[:, :-1].size
    return total


def bench_pipeline(store, batch: int, seq_len: int, steps: int) -> tuple[float, float]:
    rng = np.random.Generator(np.random.PCG64(1))
    rows = rng.integers(0, store.num_samples, size=(steps, batch))
    dataset = make_host_dataset(store, rows, seq_len)
    for _ in dataset.take(5):  # warm up tracing and threads
        pass
    start = time.perf_counter()
    tokens = 0
    for element in dataset:
        tokens += int(element["inputs"].shape[0] * element["inputs"].shape[1])
    pipeline = tokens / (time.perf_counter() - start)
    start = time.perf_counter()
    base_tokens = numpy_gather(store, rows, seq_len)
    baseline = base_tokens / (time.perf_counter() - start)
    return pipeline, baseline


def main() -> None:
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory() as directory:
        texts = synthetic_texts(8 if quick else 40)
        build_rate = bench_build(texts, directory)
        store = build_token_store(texts, "byte", os.path.join(directory, "s"), progress=False)
        print("| measurement | value | target |")
        print("|---|---|---|")
        print(f"| store build, byte tokenizer | {build_rate:.1f} MB/s | >= 5 MB/s |")
        for batch, seq_len, steps in [
            (8, 256, 400 if quick else 2000),
            (8, 1024, 200 if quick else 1000),
        ]:
            rate, baseline = bench_pipeline(store, batch, seq_len, steps)
            print(
                f"| pipeline B={batch} T={seq_len} | {rate / 1e6:.2f} M tokens/s "
                f"({rate / baseline:.2f}x numpy gather baseline at {baseline / 1e6:.1f} M/s) "
                "| >= 2 M tokens/s |"
            )


if __name__ == "__main__":
    main()
