"""Where a Beam preparation's CPU goes per MB (issue 20): the one-process build against the
pipeline's own steps, replayed in this process without Beam, and the real pipeline in one
process and in two worker processes, each with its step counters.

    python bench/bench_prepare_steps.py [--mb 400] [--workers 1,2]

The replay runs ``beam_prepare``'s steps for a source of several files in order (per file: read
and tokenise each chunk, write it into the file's shards; then per shard, the features), so its
ratio to the one-process build is the pipeline's per-MB work without any runner. CPU seconds
are this process's and its finished children's (Beam's workers); one corpus, built once.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _cpu() -> float:
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def replay(source, tokenizer, staging: str, max_shard_tokens: int) -> dict[str, float]:
    """The pipeline's steps for a source of several files in this process; CPU seconds per
    step: each unit read, tokenised and written as its shards (``ShardSequence``), then each
    shard's features under the summed counts."""
    from highnoon.data import beam_prepare as bp
    from highnoon.data.shards import BLOCK_BYTES, write_shard_features
    from highnoon.data.store_build import ShardSequence

    times: dict[str, float] = {"read": 0.0, "tokenise": 0.0, "write": 0.0, "features": 0.0}
    units = []
    for u, unit in enumerate(bp.read_units(source)):
        sequence = ShardSequence(staging, tokenizer, max_shard_tokens, BLOCK_BYTES, unit=u,
                                 hold_leading_empty=True)  # fmt: skip
        chunks = bp.iter_chunks(unit)
        while True:
            start = time.process_time()
            samples = next(chunks, None)
            times["read"] += time.process_time() - start
            if samples is None:
                break
            start = time.process_time()
            flat, lengths = bp.encode_chunk(samples, tokenizer)
            middle = time.process_time()
            sequence.add(flat, lengths)
            times["tokenise"] += middle - start
            times["write"] += time.process_time() - middle
        start = time.process_time()
        written = sequence.close()
        times["write"] += time.process_time() - start
        units.append({"unit": u, "shards": [(n, s.num_samples) for n, s in written],
                      "leading_empty": sequence.leading_empty, "counts": written})  # fmt: skip
    start = time.process_time()
    counts = np.sum([s.counts for unit in units for _, s in unit["counts"]], axis=0)
    for name, first, more_empty in bp.unit_plan(units)["shards"]:
        write_shard_features(os.path.join(staging, name), counts, first, more_empty=more_empty)
    times["features"] = time.process_time() - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=float, default=400.0)
    parser.add_argument(
        "--workers", default="1,2", help="Beam runs: worker processes (1: in memory)"
    )
    args = parser.parse_args()
    import apache_beam  # noqa: F401  (imported once, before any timing)
    from corpus_prepare import shard_tokens_for, write_corpus

    from highnoon.data.beam_prepare import build_store_on_beam
    from highnoon.data.read_units import unit_samples
    from highnoon.data.registry import resolve_dataset
    from highnoon.data.store import build_token_store
    from highnoon.data.tokenizers import load_tokenizer

    with tempfile.TemporaryDirectory(prefix="bench-steps-") as work:
        data = os.path.join(work, "data")
        mb = write_corpus(data, args.mb)
        tokenizer = load_tokenizer("byte")
        source = resolve_dataset(os.path.join(data, "*.jsonl"))
        max_shard_tokens = shard_tokens_for(data, tokenizer, 4)
        out = os.path.join(work, "store")
        cpu = _cpu()
        build_token_store(
            unit_samples(source), tokenizer, out, progress=False,
            max_shard_tokens=max_shard_tokens,
        )  # fmt: skip
        one = _cpu() - cpu
        shutil.rmtree(out)
        print(f"{mb:.0f} MB, byte tokenizer; one process {one:.2f} CPU-s", flush=True)
        cpu = _cpu()
        steps = replay(source, tokenizer, os.path.join(work, "replay"), max_shard_tokens)
        replayed = _cpu() - cpu
        shutil.rmtree(os.path.join(work, "replay"))
        detail = ", ".join(f"{k} {v:.2f}" for k, v in steps.items())
        print(f"replayed steps {replayed:.2f} CPU-s ({replayed / one:.2f}x): {detail}")
        for workers in [int(w) for w in args.workers.split(",") if w]:
            options = (
                f"--direct_num_workers={workers} --direct_running_mode=multi_processing"
                if workers > 1
                else ""
            )
            cpu = _cpu()
            store = build_store_on_beam(
                source, tokenizer, out, beam_options=options, max_shard_tokens=max_shard_tokens
            )
            total = _cpu() - cpu
            own = store.manifest["preparation"]["cpu_seconds"]
            shutil.rmtree(out)
            detail = ", ".join(f"{k} {v:.2f}" for k, v in own.items())
            print(
                f"Beam, {workers} worker(s): {total:.2f} CPU-s ({total / one:.2f}x), own steps "
                f"{sum(own.values()):.2f} ({sum(own.values()) / one:.2f}x): {detail}",
                flush=True,
            )
        print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
