"""Sharding levels against unsharded training on 2 workers: step time, bytes sent, memory.

    python bench/bench_sharding.py            # a 50M-parameter model, 2 workers, 1 round
    python bench/bench_sharding.py --rounds 3 # levels interleaved over 3 rounds
    python bench/bench_sharding.py --quick    # highnoon-nano, few steps (smoke run)

Each level (unsharded, "optimizer", "gradients", "full") trains in its own 2-worker
MultiWorkerMirroredStrategy cluster on 127.0.0.1 (``launch.local_cluster``), so every worker's
peak RSS is that level's alone. A worker builds the model, traces the step on warm-up steps,
then times ``--steps`` single optimizer steps (accumulation 2, clip norm 1.0, AdamW), each
synchronised on its loss. Rounds run the levels in turn (none, optimizer, gradients, full,
none, ...) so a noisy neighbour slows them alike.

Reported per level, as ratios to the unsharded run of the same invocation:

* step time: median over rounds of each worker's median timed step;
* bytes sent per replica per step: the sharded step's traffic log (every collective it traces,
  ring-algorithm costs, ``highnoon/training/sharding/traffic.py``); unsharded, the same cost
  model for its one all-reduce of the gradients (``step_traffic``), which the log reproduces
  exactly for the sharded levels (tests/test_sharding.py);
* bytes held per replica (weights + optimizer state + carried gradients), measured from the
  variables that exist (unsharded: whole weights, two moments, whole gradients);
* peak RSS of a worker process (``ru_maxrss``), which includes TensorFlow itself (~1 GiB).

The 50M model (d_model 768, 8 layers, d_ff 2048, byte vocabulary) keeps 400 MB of AdamW moments
and 200 MB of weights against a few MB of activations (2 x 64 tokens a micro-batch), so the
optimizer state dominates, as in the large presets.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

LEVELS = (None, "optimizer", "gradients", "full")
MODEL_50M = {"d_model": 768, "num_layers": 8, "num_heads": 12, "num_kv_heads": 4, "d_ff": 2048}
SEQ, ROWS, ACCUMULATION = 64, 8, 2  # global rows per step: 2 workers x 2 micro-batches x 2


def _batch(step: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(step)
    ids = rng.integers(3, 259, size=(ROWS, SEQ + 1))
    return {
        "inputs": ids[:, :-1].astype("int32"),
        "targets": ids[:, 1:].astype("int32"),
        "loss_mask": np.ones((ROWS, SEQ), "float32"),
    }


def worker(spec_path: str) -> None:
    """One worker of one level's cluster: train, time, write its figures."""
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    from highnoon.distribute import create_strategy, task_info

    strategy = create_strategy("multi_worker", peer_timeout_seconds=120)
    import numpy as np
    import tensorflow as tf

    import highnoon as hn
    from highnoon.training.optimization import WarmupCosineSchedule, make_optimizer
    from highnoon.training.sharding import step_traffic
    from highnoon.training.sharding.recorder import StepRecorder
    from highnoon.training.step import StepConfig, TrainStep

    level = spec["level"]
    steps = spec["warmup"] + spec["steps"]
    with strategy.scope():
        model = hn.create_model("highnoon-nano", max_seq_length=SEQ, **spec["model"])
        if level != "full":
            model.build()
        schedule = WarmupCosineSchedule(1e-3, steps, 2, multiplier=tf.Variable(1.0))
        optimizer = make_optimizer(schedule)
        if level is None:
            optimizer.build(model.trainable_variables)
    recorder = StepRecorder()
    step = TrainStep(model, optimizer, strategy, sharding=level, recorder=recorder)
    stacked = {k: np.stack([_batch(s)[k] for s in range(steps)]) for k in _batch(0)}

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        rows = ROWS // context.num_input_pipelines
        own = {k: v[:, context.input_pipeline_id * rows :][:, :rows] for k, v in stacked.items()}
        return tf.data.Dataset.from_tensor_slices(own)

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    config = StepConfig(accumulation_steps=ACCUMULATION, clip_norm=1.0)
    train = step.train_fn(config)
    times = []
    for index in range(steps):
        start = time.perf_counter()
        losses, _ = train(iterator, 1)
        losses.numpy()
        if index >= spec["warmup"]:
            times.append(time.perf_counter() - start)
    n = strategy.num_replicas_in_sync
    weights = model.config.num_parameters() * 4
    if step.level is None:
        sent = step_traffic(model.config, None, n, accumulation_steps=ACCUMULATION)
        held = {"weights": weights, "optimizer": 2 * weights + 8, "gradients": weights}
    else:
        sent = recorder.bytes_sent_per_step(config)
        held = recorder.replica_bytes(step.engine)
    result = {
        "level": level,
        "step_seconds": statistics.median(times),
        "bytes_sent": sent,
        "bytes_held": sum(held.values()),
        "held": held,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "parameters": model.config.num_parameters(),
    }
    task = task_info(strategy).task_id
    with open(os.path.join(spec["out_dir"], f"worker{task}.json"), "w", encoding="utf-8") as h:
        json.dump(result, h)


def run_level(level: str | None, args: argparse.Namespace, out_dir: str) -> list[dict[str, Any]]:
    from highnoon.launch.local_cluster import run_local_cluster

    os.makedirs(out_dir)
    spec = {
        "level": level,
        "model": {} if args.quick else MODEL_50M,
        "warmup": 2,
        "steps": args.steps,
        "out_dir": out_dir,
    }
    path = os.path.join(out_dir, "spec.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(spec, handle)
    result = run_local_cluster(
        [sys.executable, os.path.abspath(__file__), "--worker", path],
        2,
        timeout=args.timeout,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"),
        echo=lambda line: None,
        cwd=ROOT,
    )
    if result.exit_codes != [0, 0]:
        raise RuntimeError(f"level {level!r} failed: {result.outputs}")
    results = []
    for task in range(2):
        with open(os.path.join(out_dir, f"worker{task}.json"), encoding="utf-8") as handle:
            results.append(json.load(handle))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="highnoon-nano, few steps")
    parser.add_argument("--rounds", type=int, default=1, help="levels interleaved this often")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per run")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per cluster")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return
    if args.quick:
        args.steps = min(args.steps, 3)
    runs: dict[str | None, list[dict[str, Any]]] = {level: [] for level in LEVELS}
    with tempfile.TemporaryDirectory(prefix="bench-sharding-") as root:
        for round_index in range(args.rounds):
            for level in LEVELS:
                out = os.path.join(root, f"{round_index}-{level}")
                runs[level] += run_level(level, args, out)
                print(f"round {round_index}: {level or 'unsharded'} done", flush=True)
    summary = {
        level: {
            "step": statistics.median(r["step_seconds"] for r in results),
            "sent": results[0]["bytes_sent"],
            "held": results[0]["bytes_held"],
            "rss": max(r["peak_rss"] for r in results),
        }
        for level, results in runs.items()
    }
    base = summary[None]
    params = runs[None][0]["parameters"]
    print(f"\n{params / 1e6:.1f}M parameters, 2 workers, {args.rounds} round(s), {args.steps} timed "
          f"steps each, accumulation {ACCUMULATION} x {ROWS // 4} rows x {SEQ} tokens\n")  # fmt: skip
    print("| level | step s | step ratio | MB sent/step | sent ratio | MB held | held ratio "
          "| peak RSS MiB | RSS ratio |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for level, s in summary.items():
        print(
            f"| {level or 'none'} | {s['step']:.3f} | {s['step'] / base['step']:.2f} "
            f"| {s['sent'] / 1e6:.1f} | {s['sent'] / base['sent']:.2f} "
            f"| {s['held'] / 1e6:.1f} | {s['held'] / base['held']:.2f} "
            f"| {s['rss'] / 2**20:.0f} | {s['rss'] / base['rss']:.2f} |"
        )


if __name__ == "__main__":
    main()
