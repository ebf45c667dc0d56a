"""Benchmark: multi-worker training on 127.0.0.1 against one worker, same per-worker batch.

    python bench/bench_distribute.py [--steps=30] [--batch=64] [--hidden=1024]

Measures, for 1 and 2 MultiWorkerMirroredStrategy workers: the per-step time of a small MLP
trained with a custom `strategy.run` loop, the time from launch to the first finished step, and
the time of an all-reduce of gradient-sized tensors alone (its share of the step). Prints a
markdown table. The same file is the worker (`--worker`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def worker(steps: int, batch: int, hidden: int) -> None:
    from highnoon.distribute import create_strategy

    strategy = create_strategy("multi_worker", peer_timeout_seconds=120)
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    dim = 256
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((dim,)),
                keras.layers.Dense(hidden, activation="relu"),
                keras.layers.Dense(hidden, activation="relu"),
                keras.layers.Dense(dim),
            ]
        )
        optimizer = keras.optimizers.Adam(1e-3)
    global_batch = batch * strategy.num_replicas_in_sync
    x = np.random.default_rng(0).normal(size=(global_batch, dim)).astype("float32")
    ds = tf.data.Dataset.from_tensors((x, x)).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(ds))

    @tf.function
    def step(data):
        def replica_step(inputs):
            xb, yb = inputs
            with tf.GradientTape() as tape:
                err = tf.reduce_mean(tf.square(model(xb, training=True) - yb), axis=1)
                loss = tf.nn.compute_average_loss(err, global_batch_size=global_batch)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        return strategy.reduce("SUM", strategy.run(replica_step, args=(data,)), axis=None)

    shapes = [v.shape for v in model.trainable_variables]

    @tf.function
    def allreduce_only():
        def replica_fn():
            ctx = tf.distribute.get_replica_context()
            return ctx.all_reduce("SUM", [tf.ones(s) for s in shapes])

        return strategy.run(replica_fn)

    float(step(next(iterator)))
    print(f"FIRST_STEP {time.time():.6f}", flush=True)
    for _ in range(3):
        float(step(next(iterator)))
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(next(iterator))
    float(loss)
    step_s = (time.perf_counter() - start) / steps
    allreduce_only()
    start = time.perf_counter()
    for _ in range(steps):
        out = allreduce_only()
    strategy.experimental_local_results(out)[0][0].numpy()
    reduce_s = (time.perf_counter() - start) / steps
    params = sum(int(np.prod(s)) for s in shapes)
    print(f"RESULT step={step_s:.6f} allreduce={reduce_s:.6f} params={params}", flush=True)


def measure(num_workers: int, args: argparse.Namespace) -> dict[str, float]:
    from highnoon.launch.local_cluster import run_local_cluster

    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        f"--steps={args.steps}",
        f"--batch={args.batch}",
        f"--hidden={args.hidden}",
    ]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    launched = time.time()
    result = run_local_cluster(command, num_workers, timeout=600, env=env, echo=lambda s: None)
    if result.exit_code != 0:
        raise SystemExit(f"{num_workers} workers failed:\n" + "\n".join(result.outputs))
    first = max(float(re.search(r"FIRST_STEP (\S+)", o).group(1)) for o in result.outputs)
    rows = [re.search(r"RESULT step=(\S+) allreduce=(\S+) params=(\d+)", o) for o in result.outputs]
    return {
        "step": max(float(r.group(1)) for r in rows),
        "allreduce": max(float(r.group(2)) for r in rows),
        "params": int(rows[0].group(3)),
        "first": first - launched,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64, help="per-worker batch")
    parser.add_argument("--hidden", type=int, default=1024)
    args = parser.parse_args()
    if args.worker:
        worker(args.steps, args.batch, args.hidden)
        return
    one, two = measure(1, args), measure(2, args)
    print(
        f"MLP {one['params']:,} params, per-worker batch {args.batch}, {args.steps} steps, "
        "MultiWorkerMirroredStrategy (RING) on 127.0.0.1, CPU\n"
    )
    print("| workers | step ms | all-reduce ms | all-reduce share | launch -> first step s |")
    print("|---|---|---|---|---|")
    for n, r in ((1, one), (2, two)):
        print(
            f"| {n} | {r['step'] * 1e3:.1f} | {r['allreduce'] * 1e3:.1f} | "
            f"{r['allreduce'] / r['step']:.0%} | {r['first']:.1f} |"
        )
    print(f"\nstep time ratio 2 workers / 1 worker: {two['step'] / one['step']:.2f}x")


if __name__ == "__main__":
    main()
