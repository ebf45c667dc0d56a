"""The preparation side of ``bench/bench_corpus.py`` (``--part prepare``): a corpus prepared on
Apache Beam's ``DirectRunner`` with 2 worker processes against today's one-process build of the
same files, in the same process run (goal >= 1.7x on 2 cores), and the bound this machine sets
on any 2-process preparation: the one-process build run by two processes at once on half the
files each (``_ideal_split``: the same work split perfectly, nothing to combine).

Both read the same JSONL files (8 files, synthetic words) through the same registry source and
write stores whose shards end where files do, each file's shard cut at ``max_shard_tokens``
(a quarter of the corpus: 8 shards, one per file, the same for both); the bench asserts that
the two stores are the
same (fingerprint, features, curriculum scores) before it prints any ratio. Two tokenizers: the
byte tokenizer (cheap per byte: reading, serialisation and writing dominate) and a SentencePiece
BPE model trained on the corpus first (about what C4-scale preparation pays per byte).

    python bench/bench_corpus.py --part prepare [--mb 256] [--sp_mb 32] [--repeats 1] [--dir D]

Each comparison also extrapolates the corpus size at which 1.7x would be reached from Beam's fixed
cost (a 0.1 MB preparation's wall time) and both builds' seconds per MB (``goal_size_mb``).
CPU seconds (this process and its finished child processes, Beam's workers) are printed beside
the wall times: on a machine whose cores other work also uses, they say what the wall ratio
cannot, how much more work the pipeline does than the one process.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import tempfile
import time

import numpy as np

BEAM_OPTIONS = os.environ.get(
    "BENCH_BEAM_OPTIONS", "--direct_num_workers=2 --direct_running_mode=multi_processing"
)
SHARDS = 4  # shards per store in both builds (Beam writes them in parallel)
WORDS = np.array(
    ["alpha", "beta", "gamma", "delta", "def", "return", "x = 1", "é", "lambda", "yield", "42"]
)


def write_corpus(directory: str, total_mb: float, files: int = 8, seed: int = 0) -> float:
    """``files`` JSONL files of texts of 40..800 words, about ``total_mb`` MB of text in all;
    returns the MB of text written (UTF-8)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    os.makedirs(directory, exist_ok=True)
    size, n = 0, 0
    lines: list[list[str]] = [[] for _ in range(files)]
    while size < total_mb * 1e6:
        text = " ".join(WORDS[rng.integers(0, len(WORDS), int(rng.integers(40, 800)))])
        lines[n % files].append(json.dumps({"text": text}) + "\n")
        size += len(text.encode())
        n += 1
    for i, part in enumerate(lines):
        with open(os.path.join(directory, f"part-{i:02d}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(part)
    return size / 1e6


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (Beam's worker processes)."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _build(source, tokenizer, path: str, max_shard_tokens: int) -> None:
    """The one-process build of ``source``, as ``prepare_stage_store`` calls it (the files'
    hashes in the manifest)."""
    from highnoon.data.read_units import unit_samples
    from highnoon.data.store import build_token_store

    build_token_store(
        unit_samples(source),
        tokenizer,
        path,
        progress=False,
        max_shard_tokens=max_shard_tokens,
        sources=[source.describe()],
        skipped=source.stats,
    )


def _one_process(source, tokenizer, path: str, max_shard_tokens: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the one-process build."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    _build(source, tokenizer, path, max_shard_tokens)
    return time.perf_counter() - start, _cpu_seconds() - cpu


def _ideal_split(data: str, tokenizer, work: str, max_shard_tokens: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the one-process build run by two forked processes at once,
    each on half of the files into a store of its own: the same work split perfectly, with no
    runner, no process start and nothing to combine. No 2-process preparation of these files
    can beat it on this machine, so it bounds what Beam on 2 workers could reach here."""
    import multiprocessing

    from highnoon.data.sources import FileSource

    files = sorted(os.path.join(data, name) for name in os.listdir(data))
    halves = [FileSource(files[: len(files) // 2]), FileSource(files[len(files) // 2 :])]
    context = multiprocessing.get_context("fork")
    paths = [os.path.join(work, f"ideal-{i}") for i in range(2)]
    start, cpu = time.perf_counter(), _cpu_seconds()
    workers = [
        context.Process(target=_build, args=(half, tokenizer, path, max_shard_tokens))
        for half, path in zip(halves, paths)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if any(worker.exitcode != 0 for worker in workers):
        raise RuntimeError(
            f"an ideal-split build failed: exit codes {[w.exitcode for w in workers]}"
        )
    for path in paths:
        shutil.rmtree(path)
    return wall, cpu


def _beam(source, tokenizer, path: str, max_shard_tokens: int) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds with the workers', CPU seconds of the pipeline's own steps as
    its Beam counters report them) of the Beam preparation."""
    from highnoon.data.beam_prepare import build_store_on_beam

    start, cpu = time.perf_counter(), _cpu_seconds()
    store = build_store_on_beam(
        source, tokenizer, path, beam_options=BEAM_OPTIONS, max_shard_tokens=max_shard_tokens
    )
    steps = store.manifest["preparation"]["cpu_seconds"]
    return time.perf_counter() - start, _cpu_seconds() - cpu, sum(steps.values())


def shard_tokens_for(data: str, tokenizer, shards: int, files: int = 8) -> int:
    """``max_shard_tokens`` giving about ``shards`` shards: the first file's ids times the files
    (the files are alike), so both builds write several shards with the same boundaries."""
    with open(os.path.join(data, "part-00.jsonl"), encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    flat, _ = tokenizer.encode_batch(texts)
    return max(1, (flat.size + len(texts)) * files // shards)


def _same_store(a: str, b: str) -> None:
    """The two stores hold the same data: fingerprint, features and scores (or AssertionError)."""
    from highnoon.curriculum.scoring import scores_from_features
    from highnoon.data.store import TokenStore

    one, other = TokenStore.open(a), TokenStore.open(b)
    assert one.fingerprint == other.fingerprint, (one.fingerprint, other.fingerprint)
    assert one.manifest["sources"] == other.manifest["sources"]
    for name in ("lengths", "surprisal_sum"):
        assert np.array_equal(getattr(one.features, name), getattr(other.features, name)), name
    for strategy in ("size_based", "difficulty_based", "mixed"):
        assert np.array_equal(
            scores_from_features(one.features, strategy),
            scores_from_features(other.features, strategy),
        ), strategy


def goal_size_mb(mb: float, one: float, beam: float, fixed: float, goal: float = 1.7) -> float:
    """The corpus size (MB) at which Beam's wall time reaches ``goal`` times the one process's
    speed, extrapolated from one measurement: the one process's seconds per MB ``one / mb``,
    Beam's ``fixed`` seconds plus ``(beam - fixed) / mb`` per MB. ``inf`` when Beam's per-MB
    time alone is above ``1 / goal`` of the one process's (no size reaches it)."""
    per_one, per_beam = one / mb, max(beam - fixed, 0.0) / mb
    margin = per_one - goal * per_beam
    return goal * fixed / margin if margin > 0 else float("inf")


def compare(
    label: str, data: str, tokenizer, mb: float, work: str, repeats: int, fixed: float
) -> None:
    """Time both builds and the ideal split (``_ideal_split``) ``repeats`` times, alternating;
    check the two stores are the same; print the ratios, the bound the ideal split sets and the
    size at which 1.7x would be reached (``goal_size_mb``, with the ``fixed`` seconds of a tiny
    preparation)."""
    from highnoon.data.registry import resolve_dataset

    source = resolve_dataset(os.path.join(data, "*.jsonl"))
    max_shard_tokens = shard_tokens_for(data, tokenizer, SHARDS)
    one_times, beam_times, ideal_times = [], [], []
    for r in range(repeats):
        ideal_times.append(_ideal_split(data, tokenizer, work, max_shard_tokens))
        one_path, beam_path = os.path.join(work, f"one-{r}"), os.path.join(work, f"beam-{r}")
        one_times.append(_one_process(source, tokenizer, one_path, max_shard_tokens))
        beam_times.append(_beam(source, tokenizer, beam_path, max_shard_tokens))
        _same_store(one_path, beam_path)
        shutil.rmtree(one_path)
        shutil.rmtree(beam_path)
    (one, one_cpu), (beam, beam_cpu, steps_cpu) = min(one_times), min(beam_times)
    ideal, ideal_cpu = min(ideal_times)
    print(
        f"{label}: {mb:.1f} MB of text; one process {mb / one:.2f} MB/s ({one:.1f} s, "
        f"{one_cpu:.1f} CPU-s), DirectRunner x2 {mb / beam:.2f} MB/s ({beam:.1f} s, "
        f"{beam_cpu:.1f} CPU-s with its workers): {one / beam:.2f}x (best of {repeats}; goal "
        f">= 1.7x); CPU-s {beam_cpu / one_cpu:.2f}x the one process's, so at best "
        f"{2 * one_cpu / beam_cpu:.2f}x on 2 idle cores; the pipeline's own steps "
        f"{steps_cpu:.1f} CPU-s ({steps_cpu / one_cpu:.2f}x); 1.7x extrapolated at "
        f"{goal_size_mb(mb, one, beam, fixed):.0f} MB (fixed {fixed:.1f} s, per MB "
        f"{(beam - fixed) / mb * 1000:.1f} ms against {one / mb * 1000:.1f} ms); load average "
        f"{os.getloadavg()[0]:.1f}; stores identical (fingerprint, features, scores)",
        flush=True,
    )
    print(
        f"{label}: the ideal split (the one-process build run by two processes at once, half "
        f"the files each, no Beam): {ideal:.1f} s, {ideal_cpu:.1f} CPU-s ({ideal_cpu / one_cpu:.2f}x "
        f"the one process's): {one / ideal:.2f}x, the most any 2-process preparation of these "
        f"files reaches on this machine; Beam reached {ideal / beam:.2f} of it",
        flush=True,
    )


def startup_seconds(work: str, tokenizer) -> tuple[float, float]:
    """A Beam preparation of a 0.1 MB corpus: the pipeline's fixed cost (construction, worker
    processes, the runner's bookkeeping), which larger corpora amortise."""
    from highnoon.data.registry import resolve_dataset

    data = os.path.join(work, "tiny")
    write_corpus(data, 0.1, seed=2)
    source = resolve_dataset(os.path.join(data, "*.jsonl"))
    wall, cpu, _ = _beam(source, tokenizer, os.path.join(work, "tiny-store"), 1 << 28)
    shutil.rmtree(os.path.join(work, "tiny-store"))
    return wall, cpu


def bench_prepare(
    mb: float = 64.0, sp_mb: float = 16.0, repeats: int = 1, directory: str | None = None
) -> None:
    """Both comparisons (module docstring) in a temporary directory, made in ``directory``
    (default: the system's temporary directory; ``/dev/shm`` keeps the corpus and the stores in
    memory, so the builds write nothing to disk). Beam is imported before any timing (about 4 s
    once per process, whatever the corpus)."""
    import apache_beam  # noqa: F401  (its import is a per-process constant, timed by no one)

    from highnoon.data.tokenizers import load_tokenizer, train_sentencepiece

    print(f"cores: {os.cpu_count()}; Beam options: {BEAM_OPTIONS}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-prepare-", dir=directory) as work:
        wall, cpu = startup_seconds(work, load_tokenizer("byte"))
        print(
            f"fixed cost of a Beam preparation (0.1 MB corpus): {wall:.1f} s, {cpu:.1f} CPU-s",
            flush=True,
        )
        data = os.path.join(work, "byte-data")
        written = write_corpus(data, mb)
        compare("byte tokenizer", data, load_tokenizer("byte"), written, work, repeats, wall)
        if sp_mb <= 0:
            return
        data = os.path.join(work, "sp-data")
        written = write_corpus(data, sp_mb, seed=1)
        with open(os.path.join(data, "part-00.jsonl"), encoding="utf-8") as handle:
            texts = [json.loads(line)["text"] for _, line in zip(range(2000), handle)]
        model = train_sentencepiece(texts, os.path.join(work, "sp"), 2000, seed=0)
        compare("SentencePiece BPE 2000", data, model, written, work, repeats, wall)
