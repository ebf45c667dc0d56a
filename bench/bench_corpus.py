"""A real corpus on a pod (issue 20): how a host reads a prepared store.

``--part read`` (this file's reading side) measures, on synthetic format-2 stores:

* **start-up**: open to first batch, and the host's peak RSS, for stores of 1e5, 1e6 and 1e7
  samples, each in a fresh process (goal: flat, within 1.2x from smallest to largest). The
  features the curriculum scores (``store.features``: two int64 per sample of the whole store)
  are loaded and timed separately: they still grow with the corpus (issue 21).
* **bytes read**: what one host of 4 fetches from an in-place store (``ram://``) during 100
  steps, against the bytes of its rows' tokens (goal <= 1.2x plus manifests): tokens read per
  sample (``SampleRangedFile``) and, the baseline, per 1 MiB block; batches asserted equal to
  the memory-mapped store's.
* **input throughput**: the host pipeline from an in-place store (``file://``, no memory map;
  cold and warm cache, cold as before the throughput work, and cold reading ahead although
  its reads do not wait) against the same store memory-mapped, in one process, consumed in the
  graph as the Trainer does and, for the cold pass, by a Python loop too (goal >= 0.8x).

``--part open``: requests and time to open stores of 8 and 64 shards on ``gs://`` (TensorFlow's
client against tests/fake_gcs.py, 50 ms a request), on the manifest alone (shard manifests read
at first use) and, the baseline, without the manifest's shard summaries (all read at open).
``--part write``: the shard writer with and without its per-sample CRC32C.
``--part prepare`` is the preparation side (Beam against a one-process build), in
``bench/corpus_prepare.py``.

    python bench/bench_corpus.py --part read [--sizes 1e5,1e6,1e7] [--quick]
    python bench/bench_corpus.py --part throughput [--quick] [--store_samples 50000 --steps 1000]
    python bench/bench_corpus.py --part open | --part write
    python bench/bench_corpus.py --part prepare [--mb 256] [--sp_mb 32] [--repeats 1] [--dir D]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from highnoon.data import shards

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_stats import ratio_interval

VOCAB = "byte"
_WORKER = "--startup_worker"
_OPEN_WORKER = "--open_worker"


# -- synthetic stores -------------------------------------------------------------------------
def synthetic_store(
    path: str,
    num_samples: int,
    *,
    min_len: int = 1,
    max_len: int = 8,
    num_shards: int = 4,
    block_bytes: int = shards.BLOCK_BYTES,
    seed: int = 0,
) -> dict:
    """A format-2 store of ``num_samples`` random byte-tokenizer samples of ``min_len..max_len``
    ids (plus EOS), written with the shared shard writer; returns its manifest."""
    from highnoon.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(VOCAB)
    rng = np.random.Generator(np.random.PCG64(seed))
    os.makedirs(path)
    bounds = np.linspace(0, num_samples, num_shards + 1).astype(np.int64)
    names = [shards.shard_name(i, num_shards) for i in range(num_shards)]
    counts = np.zeros(tokenizer.vocab_size, dtype=np.int64)
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        writer = shards.ShardWriter(
            os.path.join(path, name), tokenizer.vocab_size, tokenizer.eos_id,
            block_bytes=block_bytes,
        )  # fmt: skip
        for start in range(int(lo), int(hi), 1 << 20):
            n = min(1 << 20, int(hi) - start)
            lengths = rng.integers(min_len, max_len + 1, size=n)
            flat = rng.integers(3, 259, size=int(lengths.sum()))
            writer.add(flat, lengths)
        counts += writer.close().counts
    manifests = [
        shards.write_shard_features(os.path.join(path, name), counts, int(lo))
        for name, lo in zip(names, bounds[:-1])
    ]
    manifest = shards.store_manifest(
        manifests, names, tokenizer, sources=[{"synthetic": num_samples}], skipped=None,
        top_files={},
    )  # fmt: skip
    with open(os.path.join(path, shards.MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=2, sort_keys=True)
    return manifest


def host_rows(num_samples: int, steps: int, global_batch: int, host: int, hosts: int) -> np.ndarray:
    """Host ``host``'s rows of ``steps`` global batches drawn uniformly (a shuffled epoch's)."""
    rng = np.random.Generator(np.random.PCG64(11))
    rows = rng.permutation(num_samples)[: steps * global_batch].reshape(steps, global_batch)
    per = global_batch // hosts
    return rows[:, host * per : (host + 1) * per]


def _ranged_files(store) -> list:
    """Every ``RangedFile`` an in-place store reads through."""
    from highnoon.data.remote_blocks import RangedFile

    return [f for f in store.block_files() if isinstance(f, RangedFile)]


# -- start-up ---------------------------------------------------------------------------------
def _startup_worker(path: str) -> None:
    """In a fresh process: open, first batch, then the curriculum's features; prints JSON."""
    import tensorflow as tf  # noqa: F401 (imported first: its memory is no part of the store's)

    from highnoon.data import TokenStore, make_host_dataset

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    store = TokenStore.open(f"file://{path}", verify=True)  # in place, as from a bucket
    opened = time.perf_counter()
    rows = host_rows(min(store.num_samples, 100_000), 10, 64, 0, 4)
    batch = next(iter(make_host_dataset(store, rows, 32)))
    first = time.perf_counter()
    assert batch["inputs"].shape == (16, 32)
    startup_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    features = store.features
    assert features.lengths.shape == (store.num_samples,)
    loaded = time.perf_counter()
    print(json.dumps({
        "open_s": opened - started,
        "first_batch_s": first - started,
        "features_s": loaded - first,
        "base_rss_kb": base_rss,
        "startup_rss_kb": startup_rss,
        "features_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }))  # fmt: skip


def bench_startup(sizes: list[int], directory: str) -> None:
    print("| samples | store MB | open s | open to first batch s | peak RSS MiB (start-up; "
          "after imports) | features s | peak RSS MiB (with features) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for n in sizes:
        path = os.path.join(directory, f"startup-{n}")
        synthetic_store(path, n)
        mb = (
            sum(os.path.getsize(os.path.join(root, f)) for root, _, fs in os.walk(path) for f in fs)
            / 2**20
        )
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        out = subprocess.run(
            [sys.executable, __file__, _WORKER, path], capture_output=True, text=True, env=env,
            check=True,
        ).stdout  # fmt: skip
        r = json.loads(out.strip().splitlines()[-1])
        results.append(r)
        print(f"| {n:.0e} | {mb:.0f} | {r['open_s']:.3f} | {r['first_batch_s']:.3f} | "
              f"{r['startup_rss_kb'] / 1024:.0f} ({(r['startup_rss_kb'] - r['base_rss_kb']) / 1024:.0f}) | {r['features_s']:.3f} | "
              f"{r['features_rss_kb'] / 1024:.0f} |")  # fmt: skip
    first = results[0]
    last = results[-1]
    print(f"\nlargest/smallest: open to first batch {last['first_batch_s'] / first['first_batch_s']:.2f}x, "
          f"start-up peak RSS {last['startup_rss_kb'] / first['startup_rss_kb']:.2f}x "
          f"(goal <= 1.2x); features {last['features_s'] / max(first['features_s'], 1e-9):.0f}x "
          f"the time, peak RSS with them {last['features_rss_kb'] / first['features_rss_kb']:.2f}x")  # fmt: skip


# -- bytes read -------------------------------------------------------------------------------
def _copy_to_ram(path: str) -> str:
    import tensorflow as tf

    target = f"ram://bench-corpus/{os.path.basename(path)}-{time.monotonic_ns()}"
    for root, _, files in os.walk(path):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), path)
            tf.io.gfile.makedirs(os.path.dirname(f"{target}/{rel}"))
            tf.io.gfile.copy(os.path.join(root, name), f"{target}/{rel}")
    return target


def rows_token_bytes(lengths: np.ndarray, rows: np.ndarray, seq_len: int, itemsize: int) -> int:
    """Bytes of the stored ids the rows take: the first ``seq_len`` of each sample (with EOS;
    BOS is not stored), each sample counted once."""
    return int(np.minimum(lengths[np.unique(rows)], seq_len).sum()) * itemsize


def _per_block_tokens(store) -> None:
    """Read ``store``'s tokens per 1 MiB block, as before per-sample reads (the baseline)."""
    from highnoon.data.remote_blocks import RangedFile

    for shard in store._shards:
        f = shard.files[shards.TOKENS]
        shard.files[shards.TOKENS] = RangedFile(f.path, f.size, f.block_bytes, f.crc32c,
                                                label=f.label)  # fmt: skip


def bench_bytes_read(directory: str, *, steps: int = 100, quick: bool = False) -> None:
    """Host 1 of 4 reads its rows of ``steps`` global batches of 16 rows (samples read whole:
    ``seq_len`` above every length) from an in-place ``ram://`` copy, with a cold cache; per
    sample (``SampleRangedFile``, the default) and per block (the baseline), batches checked
    against the memory-mapped store's."""
    from highnoon.data import TokenStore
    from highnoon.data.pipeline import HostBatcher
    from highnoon.data.remote_blocks import block_cache
    from highnoon.data.remote_samples import GAP_BYTES

    print(f"Tokens read per sample (gap bound {GAP_BYTES} bytes) and, the baseline, per 1 MiB "
          "block.\n")  # fmt: skip
    print("| samples (ids each), blocks | rows' token bytes | tokens fetched per sample (reads) | ratio | "
          "per block (baseline) | ratio | offsets fetched (of) | sample CRCs fetched (of) | "
          "manifests |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    global_batch = 16
    mib = shards.BLOCK_BYTES
    # (samples, ids, block bytes): the last store's 4 KiB blocks show the metadata fetched
    # growing with the rows read, not with the store (its offsets are 200 KB a shard)
    cases = [(20_000, 64, 512, mib), (2_000, 2048, 8192, mib), (100_000, 8, 64, mib),
             (100_000, 8, 64, 4096)]  # fmt: skip
    if quick:
        cases = cases[:1]
    for n, lo, hi, block in cases:
        path = os.path.join(directory, f"bytes-{n}-{lo}-{block}")
        synthetic_store(path, n, min_len=lo, max_len=hi, block_bytes=block)
        remote = _copy_to_ram(path)
        local = TokenStore.open(path)
        rows = host_rows(n, steps, global_batch, 1, 4)
        expected = HostBatcher(local, rows, hi + 1).batches(0, steps)
        fetched: dict[str, dict[str, int]] = {}
        for mode in ("sample", "block"):
            block_cache().clear()
            store = TokenStore.open(remote)
            if mode == "block":
                _per_block_tokens(store)
            got = HostBatcher(store, rows, hi + 1).batches(0, steps)
            for key in expected:
                np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
            counts = fetched[mode] = {}
            for f in _ranged_files(store):
                kind = os.path.basename(f.path)
                counts[kind] = counts.get(kind, 0) + f.bytes_read
                counts["reads " + kind] = counts.get("reads " + kind, 0) + f.reads
        manifest_bytes = sum(  # manifest.json and every shard.json, read at open
            os.path.getsize(os.path.join(root, f))
            for root, _, fs in os.walk(path)
            for f in fs
            if f.endswith(".json")
        )
        need = rows_token_bytes(local.features.lengths, rows, hi + 1, local.dtype.itemsize)
        whole = {kind: sum(os.path.getsize(os.path.join(path, s.name, kind)) for s in local._shards)
                 for kind in (shards.OFFSETS, shards.SAMPLE_CRC)}  # fmt: skip
        per_sample, per_block = fetched["sample"], fetched["block"]
        tokens = per_sample[shards.TOKENS]
        print(f"| {n:.0e} ({lo}..{hi}), {block >> 10} KiB blocks | {need / 1e6:.3f} MB | {tokens / 1e6:.3f} MB "
              f"({per_sample['reads ' + shards.TOKENS]}) | {tokens / need:.3f}x | "
              f"{per_block[shards.TOKENS] / 1e6:.3f} MB | {per_block[shards.TOKENS] / need:.2f}x | "
              f"{per_sample[shards.OFFSETS] / 1e6:.3f} MB ({whole[shards.OFFSETS] / 1e6:.3f}) | "
              f"{per_sample[shards.SAMPLE_CRC] / 1e6:.3f} MB ({whole[shards.SAMPLE_CRC] / 1e6:.3f}) | "
              f"{manifest_bytes / 1e3:.1f} kB |")  # fmt: skip


# -- opening a store on gs:// -----------------------------------------------------------------
def _open_worker(url: str) -> None:
    """In a fresh process pointed at the fake GCS: open ``url`` and read one sample; JSON."""
    import tensorflow as tf  # noqa: F401 (its start-up is no part of the open)

    from highnoon.data import TokenStore

    started = time.perf_counter()
    store = TokenStore.open(url, verify=True)
    opened = time.perf_counter()
    store.samples([store.num_samples - 1])
    print(json.dumps({"open_s": opened - started, "first_sample_s": time.perf_counter() - opened,
                      "shards": store.num_shards}))  # fmt: skip


def _without_summaries(path: str, target: str) -> None:
    """A copy of the store at ``path`` whose manifest lacks the shard summaries: a store
    written before them, which opens by reading every ``shard.json`` (the baseline)."""
    import shutil

    shutil.copytree(path, target)
    with open(os.path.join(target, shards.MANIFEST), encoding="utf-8") as handle:
        manifest = json.load(handle)
    for entry in manifest["shards"]:
        del entry["files"], entry["first_sample"]
    with open(os.path.join(target, shards.MANIFEST), "w", encoding="utf-8") as handle:
        json.dump(manifest, handle)


def bench_open(directory: str, *, latency_s: float = 0.05, rounds: int = 3) -> None:
    """Requests and time to open a store of 8 and of 64 shards on ``gs://`` (TensorFlow's own
    client against tests/fake_gcs.py, every answer delayed ``latency_s``): on its manifest
    alone (shard manifests read at first use), and, the baseline, the same store without the
    shard summaries (every shard manifest read at open by ``OPEN_THREADS`` threads). Each open
    in a fresh process, ``rounds`` interleaved rounds, medians."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.fake_gcs import FakeGcs

    root = os.path.join(directory, "gcs")
    fake = FakeGcs(root, directory, latency_s=latency_s)
    print(f"Fake GCS answering after {latency_s * 1e3:.0f} ms per request; medians of {rounds} "
          "interleaved rounds.\n")  # fmt: skip
    print("| shards | manifest | requests at open | open s | then last sample: requests, s |")
    print("|---:|---|---:|---:|---:|")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
           **fake.env(GCS_READ_CACHE_BLOCK_SIZE_MB="0")}  # fmt: skip
    cases = [(count, kind) for count in (8, 64) for kind in ("summaries", "before")]
    for count in (8, 64):
        path = os.path.join(root, "bucket", f"s{count}")
        synthetic_store(path, 64 * 100, num_shards=count)
        _without_summaries(path, os.path.join(root, "bucket", f"s{count}-before"))
    runs: dict[tuple[int, str], list[tuple[int, float, int, float]]] = {c: [] for c in cases}
    try:
        for _ in range(rounds):
            for count, kind in cases:
                before = len(fake.requests)
                url = f"gs://bucket/s{count}" + ("-before" if kind == "before" else "")
                out = subprocess.run(
                    [sys.executable, __file__, _OPEN_WORKER, url], capture_output=True, text=True,
                    env=env, check=True,
                ).stdout  # fmt: skip
                r = json.loads(out.strip().splitlines()[-1])
                log = fake.requests[before:]
                at_open = next(
                    (i for i, q in enumerate(log) if q["what"].startswith("media ")
                     and q["what"].endswith(".bin")), len(log),
                )  # fmt: skip
                at_open -= kind == "summaries"  # the first sample's shard.json, read lazily
                runs[count, kind].append((at_open, r["open_s"], len(log) - at_open,
                                          r["first_sample_s"]))  # fmt: skip
    finally:
        fake.close()
    med = {c: [float(np.median([r[i] for r in runs[c]])) for i in range(4)] for c in cases}
    for count, kind in cases:
        m = med[count, kind]
        label = "summaries (shard.json at first use)" if kind == "summaries" else (
            "without summaries (before: every shard.json at open, 32 threads)")  # fmt: skip
        print(f"| {count} | {label} | {m[0]:.0f} | {m[1]:.3f} | {m[2]:.0f}, {m[3]:.3f} |")
    print(f"\n64/8 shards, open time: {med[64, 'summaries'][1] / med[8, 'summaries'][1]:.2f}x with "
          f"summaries (goal: flat), {med[64, 'before'][1] / med[8, 'before'][1]:.2f}x before; "
          f"per round (64/8, summaries): "
          + ", ".join(f"{a[1] / b[1]:.2f}" for a, b in zip(runs[64, 'summaries'],
                                                          runs[8, 'summaries'])))  # fmt: skip


# -- the shard writer's per-sample CRCs -------------------------------------------------------
def bench_write(directory: str, *, num_samples: int = 1_000_000) -> None:
    """``ShardWriter`` on ``num_samples`` samples of 64..512 ids with its per-sample CRC32C
    against the same writer with that step stubbed out (the baseline), rounds interleaved."""
    from unittest import mock

    rng = np.random.Generator(np.random.PCG64(0))
    lengths = rng.integers(64, 513, size=num_samples)
    flat = rng.integers(3, 259, size=int(lengths.sum()))
    chunks = np.array_split(np.arange(num_samples), 16)
    bounds = np.concatenate([[0], np.cumsum(lengths)])

    def write(name: str) -> float:
        writer = shards.ShardWriter(os.path.join(directory, name), 259, 2)
        started = time.perf_counter()
        for c in chunks:
            writer.add(flat[bounds[c[0]] : bounds[c[-1] + 1]], lengths[c])
        writer.close()
        elapsed = time.perf_counter() - started
        subprocess.run(["rm", "-rf", os.path.join(directory, name)], check=True)
        return elapsed

    def no_crcs(raw: bytes, ends: np.ndarray) -> np.ndarray:
        return np.zeros(ends.size, dtype="<u4")

    rounds = []
    for i in range(3):
        with_crc = write(f"w{i}")
        with mock.patch.object(shards, "_sample_crcs", no_crcs):
            without = write(f"n{i}")
        rounds.append((with_crc, without))
    with_crc, without = (float(np.median([r[k] for r in rounds])) for k in range(2))
    per_sample = (with_crc - without) / num_samples * 1e6
    print(f"| ShardWriter, {num_samples:.0e} samples of 64..512 ids | s | ratio |")
    print("|---|---:|---:|")
    print(f"| without per-sample CRCs (baseline) | {without:.2f} | 1.00 |")
    print(f"| with per-sample CRCs | {with_crc:.2f} | {with_crc / without:.2f}x |")
    print(f"\nper-sample CRC32C: {per_sample:.2f} us a sample (medians of 3 interleaved rounds)")


# -- input throughput -------------------------------------------------------------------------
def consumed_in_graph(dataset: Any) -> int:
    """Tokens of every element, counted by ``Dataset.reduce``: no element reaches Python, as in
    the Trainer, whose compiled call takes its batches with ``next(iterator)`` in the graph."""
    import tensorflow as tf

    def add(total: Any, element: Any) -> Any:
        return total + tf.size(element["inputs"], out_type=tf.int64)

    return int(dataset.reduce(tf.constant(0, tf.int64), add))


def consumed_in_python(dataset: Any) -> int:
    """Tokens of every element, taken one by one by a Python loop (eager tensors): a
    consumer holding the GIL between elements, which the reading threads then wait for."""
    tokens = 0
    for element in dataset:
        tokens += int(np.prod(element["inputs"].shape))
    return tokens


def _tokens_per_second(
    url: str,
    rows: np.ndarray,
    seq_len: int,
    reset: Any = None,
    per_cpu_second: bool = False,
    consume: Any = consumed_in_graph,
) -> Any:
    """Tokens per second of the host pipeline over ``rows`` of the store at ``url``, consumed
    by ``consume`` (and, with ``per_cpu_second``, tokens per second of the process' CPU time
    too). A warm-up pass over the first calls of another dataset of the store comes first
    (tracing, threads); then ``reset()`` (a cold pass: empty the cache, forget the blocks
    checked) and the timed pass over a dataset of a store opened after it, so the warm-up
    leaves nothing of the timed rows read or checked."""
    from highnoon.data import TokenStore, make_host_dataset

    for _ in make_host_dataset(TokenStore.open(url), rows, seq_len).take(2):
        pass
    if reset is not None:
        reset()
    dataset = make_host_dataset(TokenStore.open(url), rows, seq_len)
    started, cpu = time.perf_counter(), time.process_time()
    tokens = consume(dataset)
    if per_cpu_second:  # the process' CPU time, every thread: steadier on a loaded machine
        return tokens / (time.perf_counter() - started), tokens / (time.process_time() - cpu)
    return tokens / (time.perf_counter() - started)


def _as_before():
    """Context: the in-place reader as before this change (the baseline in the same process):
    ``file://`` read through a TensorFlow stream per range read, and the pipeline reading one
    call ahead. What else changed (batched cache locks, bytes kept per sample, the shard split
    by bincount, metadata by block) is not undone by it, so the gap it shows is a lower bound."""
    import contextlib
    from unittest import mock

    from highnoon.data import pipeline, remote_blocks

    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch.object(remote_blocks, "_FILE_SCHEME", "no-such-scheme://"))
    stack.enter_context(mock.patch.object(pipeline, "_CALLS_AHEAD", 1))
    return stack


def _always_ahead():
    """Context: every read counted as waiting (``READ_AHEAD_WAIT_S = 0``), so the store reads
    ahead whatever its reads cost: the read-ahead as it was before it was kept to files whose
    reads wait (the baseline of that change, in the same process)."""
    from unittest import mock

    from highnoon.data import remote_blocks

    return mock.patch.object(remote_blocks, "READ_AHEAD_WAIT_S", 0.0)


def bench_throughput(
    directory: str, *, quick: bool = False, num_samples: int = 50_000, steps: int = 1000
) -> None:
    """The host pipeline over one store, memory-mapped (local path) and in place (``file://``:
    range reads, CRC32C per sample, the block cache) with a cold and a warm cache, in place
    cold as before this change (``_as_before``), and cold reading ahead although the reads do
    not wait (``_always_ahead``), 25 rounds interleaved, medians and paired ratios.

    The elements are consumed in the graph (``consumed_in_graph``), as the Trainer's compiled
    call takes them; the memory-mapped and cold in-place passes are also timed consumed by a
    Python loop (``consumed_in_python``), whose GIL the reading threads wait for after each
    range read (BENCHMARKS.md, "256K tokens a call").

    "Memory-mapped" is the mapped store after its first pass: its blocks' checks are
    remembered by the process (``blocks._BITMAPS``), so it reads and checks nothing again,
    what later epochs over a local store cost. "Memory-mapped, first pass" forgets them first
    (``forget_verified_blocks``): every block it reads is checked, as in a fresh process's
    first epoch. The in-place cold pass fetches and checks every sample, whichever pass it is
    (a sample evicted from the bounded cache is fetched and checked again). Each pass is timed
    on a store opened after its warm-up and reset (``_tokens_per_second``). The store holds
    ``num_samples`` samples; host 0 of 4 reads ``steps`` steps of 8 rows (distinct samples:
    ``steps * 32 <= num_samples``)."""
    import contextlib

    from highnoon.data.blocks import RACY_SECONDS, forget_verified_blocks
    from highnoon.data.remote_blocks import block_cache

    path = os.path.join(directory, "throughput")
    if quick:
        num_samples, steps = 50_000, 400
    synthetic_store(path, num_samples, min_len=64, max_len=1024)
    time.sleep(RACY_SECONDS)  # older than this, a file's checked blocks are shared by its opens
    seq_len = 256
    rows = host_rows(num_samples, steps, 32, 0, 4)
    cold = block_cache().clear  # every sample fetched and checked during the pass
    local, in_place, graph, loop = path, f"file://{path}", consumed_in_graph, consumed_in_python
    # (name, store, reset before the timed pass, context, consumer); the first is the baseline
    arms = [
        ("memory-mapped (local path)", local, None, None, graph),
        ("in place (`file://`), cold cache", in_place, cold, None, graph),
        ("in place, samples cached", in_place, None, None, graph),  # what the cold pass cached
        ("in place, cold, as before (TF stream per read, 1 call ahead)", in_place, cold,
         _as_before, graph),
        ("in place, cold, read ahead whether or not reads wait", in_place, cold, _always_ahead,
         graph),
        ("memory-mapped, first pass (no block checked yet)", local, forget_verified_blocks, None,
         graph),
        ("memory-mapped, consumed by a Python loop", local, None, None, loop),
        ("in place, cold cache, consumed by a Python loop", in_place, cold, None, loop),
    ]  # fmt: skip
    rounds = []
    for _ in range(3 if quick else 25):
        passes = []
        for _name, url, reset, context, consume in arms:
            with context() if context else contextlib.nullcontext():
                passes.append(_tokens_per_second(url, rows, seq_len, reset, True, consume))
        rounds.append(passes)
    wall = [float(np.median([r[i][0] for r in rounds])) for i in range(len(arms))]
    cpu = [float(np.median([r[i][1] for r in rounds])) for i in range(len(arms))]
    seconds = [[1.0 / r[i][0] for r in rounds] for i in range(len(arms))]  # the same tokens
    print(f"| pipeline B=8 T=256, {steps} steps, {num_samples // 1000}K samples of 64..1024 ids "
          "| M tokens/s | ratio | M tokens per CPU s | ratio | paired ratio [95%] |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for i, (name, *_rest) in enumerate(arms):
        base = 6 if i == 7 else 0  # the Python loop's cold pass against its own mapped pass
        low, high = ratio_interval(seconds[base], seconds[i])
        paired = sum(seconds[base]) / sum(seconds[i])
        print(f"| {name} | {wall[i] / 1e6:.2f} | {wall[i] / wall[base]:.2f}x | "
              f"{cpu[i] / 1e6:.2f} | {cpu[i] / cpu[base]:.2f}x | {paired:.2f}x "
              f"[{low:.2f}, {high:.2f}] |")  # fmt: skip
    print("\nratio: of the medians over the rounds, against the memory-mapped pass consumed the "
          "same way; paired ratio: its seconds over this arm's, summed over the rounds, with a "
          "95% interval from resampling the rounds (goal for the cold cache >= 0.8x)")  # fmt: skip
    for i, base in ((1, 0), (2, 0), (4, 0), (7, 6)):
        per_round = ", ".join(f"{r[i][0] / r[base][0]:.2f}" for r in rounds)
        print(f"{arms[i][0]} / {arms[base][0]}, per round: {per_round}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--part", choices=("read", "throughput", "open", "write", "prepare"), default="read"
    )
    parser.add_argument("--sizes", default="1e5,1e6,1e7")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--store_samples", type=int, default=50_000, help="throughput: store size")
    parser.add_argument("--steps", type=int, default=1000, help="throughput: steps of the pass")
    parser.add_argument("--mb", type=float, default=256.0, help="prepare: MB of text (byte)")
    parser.add_argument("--sp_mb", type=float, default=32.0, help="prepare: MB (SentencePiece)")
    parser.add_argument("--repeats", type=int, default=1, help="prepare: best of this many")
    parser.add_argument(
        "--dir", default=None, help="prepare: where the corpus and stores go (default: $TMPDIR)"
    )
    args = parser.parse_args()
    if args.part == "prepare":
        from corpus_prepare import bench_prepare  # this file's directory is on sys.path

        bench_prepare(args.mb, args.sp_mb, args.repeats, args.dir)
        return
    with tempfile.TemporaryDirectory() as directory:
        if args.part == "open":
            print("### opening a store on gs:// (fake GCS), 8 and 64 shards\n")
            bench_open(directory)
            return
        if args.part == "write":
            print("### the shard writer's per-sample CRC32C\n")
            bench_write(directory, num_samples=200_000 if args.quick else 1_000_000)
            return
        if args.part == "throughput":
            print("### input throughput, in place against memory-mapped\n")
            bench_throughput(
                directory, quick=args.quick, num_samples=args.store_samples, steps=args.steps
            )
            return
        sizes = [int(float(s)) for s in args.sizes.split(",")]
        print("### start-up and peak RSS of one host\n")
        bench_startup(sizes, directory)
        print("\n### bytes fetched by host 1 of 4 in 100 steps (in place, `ram://`)\n")
        bench_bytes_read(directory, quick=args.quick)
        print("\n### input throughput, in place against memory-mapped\n")
        bench_throughput(directory, quick=args.quick)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == _WORKER:
        _startup_worker(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == _OPEN_WORKER:
        _open_worker(sys.argv[2])
    else:
        main()
