"""Data-layer throughput: store build MB/s (byte tokenizer), pipeline tokens/s, and the cost of
opening a store and of checking every block of it (CRC32C).

The pipeline figure is also printed as a ratio against a plain numpy gather of the same rows in
the same process (no tf.data), so machine speed cancels out. Targets: build >= 5 MB/s of text,
pipeline >= 2M tokens/s.

    python bench/bench_data.py [--quick]
    python bench/bench_data.py --verify_mb 1024

``--verify_mb N`` only measures verification: it builds a store of N MB of uint16 tokens, then
times ``TokenStore.open`` (manifests only: what every start costs), ``store.verify()`` (the
CRC32C of every block of every shard file, what a first read of all the data adds) against a
plain sequential read of the shards' tokens.bin in the same process, both with the files in the
page cache, and a second ``verify()`` in the same process (blocks already checked are skipped).
A cold read from disk adds the disk's time.

``--per_call`` measures the pipeline's tokens per Python call (``_TOKENS_PER_CALL``, the
default of ``steps_per_call`` for a memory-mapped store): a memory-mapped store's unpacked and
packed pipelines at 32K to 512K tokens a call over 4000 steps, consumed in the graph (as the
Trainer's compiled call takes its batches) and by a Python loop, as ratios against 64K in the
same process (7 interleaved rounds, medians).

``--take`` times the unpacked pipeline over a memory-mapped store (random rows, consumed in the
graph) with ``MappedFile._pread_take`` planning its reads by segment against the plan it had
before, one sort of every element (``_element_sorted_pread_take`` below), in the same process (7
interleaved rounds, medians).

``--gather`` compares the numpy gather of unpacked batches (``HostBatcher.batches``, through the
store's reads: offsets, per-sample clamping, block checks) with format 1's arithmetic on the raw
arrays of the same one-shard store, in the same process (best of 15 interleaved rounds).
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from highnoon.data import TokenBatch, TokenStore, blocks, build_token_store, make_host_dataset


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
    """Baseline: the same [B, T+1] gather of the first tokens of every row, numpy only, from
    the (one) shard's raw files: no block checks, no store methods."""
    (shard,) = store.manifest["shards"]
    directory = os.path.join(store.path, shard["name"])
    tokens = np.memmap(os.path.join(directory, "tokens.bin"), dtype=store.dtype, mode="r")
    tokens = np.frombuffer(tokens, dtype=store.dtype)
    offsets = np.fromfile(os.path.join(directory, "offsets.bin"), dtype="<i8")
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


def _pipeline_seconds(make_dataset, consume) -> float:
    """Wall seconds of one full pass over ``make_dataset()``, taken by ``consume``, after a
    warm-up (tracing, threads)."""
    dataset = make_dataset()
    for _ in dataset.take(2):
        pass
    start = time.perf_counter()
    consume(dataset)
    return time.perf_counter() - start


def bench_tokens_per_call(directory: str, rounds: int = 7, steps: int = 4000) -> None:
    """The unpacked and packed pipelines (B=8 rows of T=256 a step, ``steps`` steps: long
    enough that the first call's wait and the last call's lone core weigh little) at several
    ``steps_per_call``, consumed in the graph (as the Trainer's compiled call does) and by a
    Python loop, against 64K tokens a call, interleaved rounds, medians."""
    from bench_corpus import consumed_in_graph, consumed_in_python

    from highnoon.data import make_packed_host_dataset, pack_epoch, stored_lengths

    store = build_token_store(synthetic_texts(20), "byte", directory, progress=False)
    batch, seq_len = 8, 256
    rng = np.random.Generator(np.random.PCG64(1))
    rows = rng.integers(0, store.num_samples, size=(steps, batch))
    stream = rng.permutation(store.num_samples)
    packed = pack_epoch(stream, stored_lengths(store), seq_len, batch)
    tokens_per_step = batch * seq_len
    sizes = [1 << k for k in range(15, 20)]
    makers = {
        "unpacked": lambda n: make_host_dataset(store, rows, seq_len, steps_per_call=n),
        "packed": lambda n: make_packed_host_dataset(store, packed, steps_per_call=n).take(steps),
    }
    consumers = {"in the graph": consumed_in_graph, "Python loop": consumed_in_python}
    arms = [(m, c) for m in makers for c in consumers]
    seconds: dict[tuple[str, str, int], list[float]] = {}
    for _ in range(rounds):
        for name, consumer in arms:
            for size in sizes:
                per_call = max(1, size // tokens_per_step)
                seconds.setdefault((name, consumer, size), []).append(
                    _pipeline_seconds(
                        lambda: makers[name](per_call),  # noqa: B023 (called here)
                        consumers[consumer],
                    )
                )
    print("| tokens per call | " + " | ".join(f"{m}, {c} (x of 64K)" for m, c in arms) + " |")
    print("|---:|" + "---:|" * len(arms))
    for size in sizes:
        cells = []
        for name, consumer in arms:
            base = float(np.median(seconds[(name, consumer, 1 << 16)]))
            own = float(np.median(seconds[(name, consumer, size)]))
            cells.append(f"{base / own:.2f}x ({own * 1e3:.0f} ms)")
        print(f"| {size // 1024}K | " + " | ".join(cells) + " |")


def _token_batches(total_tokens: int, seed: int = 0) -> Iterator[TokenBatch]:
    """Random byte-tokenizer ids in samples of 100..4000 tokens, 8M tokens per batch."""
    rng = np.random.Generator(np.random.PCG64(seed))
    left = total_tokens
    while left > 0:
        lengths = rng.integers(100, 4000, size=4096)
        lengths = lengths[np.cumsum(lengths) <= min(left, 1 << 23)] if left > 4000 else [left]
        lengths = np.asarray(lengths, dtype=np.int64)
        flat = rng.integers(3, 259, size=int(lengths.sum()), dtype=np.int64)
        left -= int(lengths.sum())
        yield TokenBatch(flat, lengths)


def _plain_read_seconds(path: str) -> float:
    buffer = bytearray(1 << 23)
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while handle.readinto(buffer):
            pass
    return time.perf_counter() - start


def bench_verify(megabytes: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "store")
        # uint16 ids; the builder appends one EOS per sample, so the size is slightly above
        build_token_store(_token_batches(megabytes * 1_000_000 // 2), "byte", path, progress=False)
        shards = [os.path.join(path, n, "tokens.bin") for n in sorted(os.listdir(path))
                  if n.startswith("shard-")]  # fmt: skip
        size = sum(os.path.getsize(t) for t in shards)
        read = min(sum(_plain_read_seconds(t) for t in shards) for _ in range(2))  # warm cache
        blocks._BITMAPS.clear()
        blocks.RACY_SECONDS = -1.0  # remember checked blocks although the files are fresh
        start = time.perf_counter()
        store = TokenStore.open(path, verify=True)
        opened = time.perf_counter() - start
        start = time.perf_counter()
        store.verify()
        verify = time.perf_counter() - start
        start = time.perf_counter()
        TokenStore.open(path).verify()
        again = time.perf_counter() - start
    print("| measurement | value |")
    print("|---|---|")
    print(f"| open(verify=True), {store.num_shards} shards | {opened * 1e3:.1f} ms |")
    print(
        f"| verify(): every block, {size / 1e9:.2f} GB of tokens | {verify:.2f} s "
        f"({size / verify / 1e9:.2f} GB/s; {verify / read:.1f}x a plain read of the files at "
        f"{size / read / 1e9:.2f} GB/s) |"
    )
    print(f"| open + verify() again in the same process | {again * 1e3:.1f} ms |")


def _raw_plain(tokens: np.ndarray, offsets: np.ndarray, idx: np.ndarray, seq_len: int) -> dict:
    """Format 1's ``HostBatcher._plain`` (truncate) on raw arrays: the baseline of --gather."""
    arange = np.arange(seq_len + 1)
    starts = offsets[idx]
    full_len = offsets[idx + 1] - starts + 1
    w = np.zeros_like(full_len)  # the truncate rule's windows
    row_len = np.minimum(full_len - w, seq_len + 1)
    k = w[:, None] + arange
    positions = starts[:, None] - 1 + k
    np.clip(positions, 0, tokens.size - 1, out=positions)
    row = np.take(tokens, positions).astype(np.int32)
    row[:, 0] = np.where(w == 0, 1, row[:, 0])
    valid = arange < row_len[:, None]
    row[~valid] = 0
    return {
        "inputs": row[:, :-1],
        "targets": row[:, 1:],
        "loss_mask": valid[:, 1:].astype(np.int32),
    }


def bench_gather() -> None:
    from highnoon.data.pipeline import HostBatcher

    with tempfile.TemporaryDirectory() as directory:
        store = build_token_store(synthetic_texts(20), "byte", os.path.join(directory, "s"),
                                  progress=False)  # fmt: skip
        (shard,) = store.manifest["shards"]
        shard_dir = os.path.join(store.path, shard["name"])
        tokens = np.fromfile(os.path.join(shard_dir, "tokens.bin"), dtype=store.dtype)
        offsets = np.fromfile(os.path.join(shard_dir, "offsets.bin"), dtype="<i8")
        rows = np.random.Generator(np.random.PCG64(1)).integers(0, store.num_samples, (800, 8))
        print(
            "| gather, 8 steps of 8 rows per call | store reads | format 1 arithmetic | speed (format 1 time / store time) |"
        )
        print("|---|---|---|---|")
        for seq_len in (256, 1024):
            batcher = HostBatcher(store, rows, seq_len)
            want = _raw_plain(tokens, offsets, rows[:8].reshape(-1), seq_len)
            got = batcher.batches(0, 8)
            for key, value in want.items():  # the same batches
                np.testing.assert_array_equal(got[key].reshape(value.shape), value)
            new, old = [], []
            for _ in range(15):
                start = time.perf_counter()
                for s in range(0, 800, 8):
                    batcher.batches(s, 8)
                new.append(time.perf_counter() - start)
                start = time.perf_counter()
                for s in range(0, 800, 8):
                    _raw_plain(tokens, offsets, rows[s : s + 8].reshape(-1), seq_len)
                old.append(time.perf_counter() - start)
            print(f"| T={seq_len} | {min(new) * 1e3:.1f} ms | {min(old) * 1e3:.1f} ms | "
                  f"{min(old) / min(new):.2f}x |")  # fmt: skip


def _element_sorted_pread_take(self, positions: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``MappedFile._pread_take`` before it planned by segment (the baseline of --take): every
    element's byte offset sorted, one read per run of offsets at most ``PREAD_GAP`` apart."""
    size = dtype.itemsize
    flat = positions.reshape(-1) * size
    steps = np.diff(flat)
    order = None if bool((steps >= 0).all()) else np.argsort(flat, kind="stable")
    ordered = flat if order is None else flat[order]
    gap = (steps if order is None else np.diff(ordered)) > blocks.PREAD_GAP
    starts = np.flatnonzero(np.concatenate([[True], gap]))
    ends = np.concatenate([starts[1:], [ordered.size]])
    lo, hi = ordered[starts], ordered[ends - 1] + size
    with open(self.path, "rb") as handle:
        fd = handle.fileno()
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        raw = b"".join([os.pread(fd, b - a, a) for a, b in zip(lo.tolist(), hi.tolist())])
    base = np.cumsum(hi - lo) - (hi - lo)
    at = np.repeat(base - lo, ends - starts) + ordered
    gathered = np.frombuffer(raw, dtype=dtype)[at // size]
    if order is None:
        return gathered.reshape(positions.shape)
    values = np.empty(flat.size, dtype=dtype)
    values[order] = gathered
    return values.reshape(positions.shape)


def bench_take(directory: str, rounds: int = 7) -> None:
    """The unpacked pipeline (B=8 rows, consumed in the graph) with ``_pread_take`` planning by
    segment against ``_element_sorted_pread_take``, interleaved rounds, medians."""
    from bench_corpus import consumed_in_graph

    store = build_token_store(synthetic_texts(40), "byte", directory, progress=False)
    planned = blocks.MappedFile._pread_take
    arms = {"by segment": planned, "elements sorted": _element_sorted_pread_take}
    print("| pipeline, memory map, B=8 | by segment | elements sorted | speed |")
    print("|---|---:|---:|---:|")
    try:
        for seq_len, steps in ((256, 4000), (1024, 2000)):
            rng = np.random.Generator(np.random.PCG64(1))
            rows = rng.integers(0, store.num_samples, size=(steps, 8))
            seconds: dict[str, list[float]] = {name: [] for name in arms}
            for round_ in range(rounds):
                for name in list(arms)[:: 1 if round_ % 2 else -1]:
                    blocks.MappedFile._pread_take = arms[name]
                    make = functools.partial(make_host_dataset, store, rows, seq_len)
                    seconds[name].append(_pipeline_seconds(make, consumed_in_graph))
            new, old = (float(np.median(seconds[name])) for name in arms)
            tokens = steps * 8 * seq_len
            print(f"| T={seq_len} | {tokens / new / 1e6:.2f} M tokens/s | "
                  f"{tokens / old / 1e6:.2f} M tokens/s | {old / new:.2f}x |")  # fmt: skip
    finally:
        blocks.MappedFile._pread_take = planned


def main() -> None:
    if "--per_call" in sys.argv:
        with tempfile.TemporaryDirectory() as directory:
            bench_tokens_per_call(os.path.join(directory, "s"))
        return
    if "--take" in sys.argv:
        with tempfile.TemporaryDirectory() as directory:
            bench_take(os.path.join(directory, "s"))
        return
    if "--gather" in sys.argv:
        bench_gather()
        return
    if "--verify_mb" in sys.argv:
        bench_verify(int(sys.argv[sys.argv.index("--verify_mb") + 1]))
        return
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
