"""Worker for the multi-process tests: MWMS via create_strategy, a tiny custom loop, a checksum.

Run under TF_CONFIG (see launch.local_cluster). Modes (argv[1]):
  train      verify_consistent on equal parts ("VERIFY OK"), train a tiny Keras model a few
             steps, print "CHECKSUM <value>"
  verify     verify_consistent with part "data" from env HN_DATA; print "VERIFY OK"
  die_mid    train; worker 1 SIGKILLs itself after step 2, the others keep stepping under
             peer_failure_guard
Options via env: HN_PEER_TIMEOUT (s, default 60), HN_COLLECTIVE_TIMEOUT (s, default none).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from highnoon.distribute import create_strategy, peer_failure_guard, task_info, verify_consistent


def _strategy():
    collective = os.environ.get("HN_COLLECTIVE_TIMEOUT")
    return create_strategy(
        "multi_worker",
        peer_timeout_seconds=float(os.environ.get("HN_PEER_TIMEOUT", "60")),
        collective_timeout_seconds=float(collective) if collective else None,
    )


def _train(strategy, steps: int, die_after: int | None = None) -> float:
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)])
        optimizer = keras.optimizers.SGD(0.1)
    global_batch = 4 * strategy.num_replicas_in_sync
    rng = np.random.default_rng(1)
    x = rng.normal(size=(global_batch, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(global_batch)
    iterator = iter(strategy.experimental_distribute_dataset(ds))

    @tf.function
    def step(batch):
        def replica_step(inputs):
            xb, yb = inputs
            with tf.GradientTape() as tape:
                per_example = tf.square(model(xb, training=True) - yb)[:, 0]
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        return strategy.reduce("SUM", strategy.run(replica_step, args=(batch,)), axis=None)

    task = task_info(strategy)
    for i in range(steps):
        if die_after is not None and task.task_id == 1 and i == die_after:
            print("DYING", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        with peer_failure_guard():
            loss = float(step(next(iterator)))
        print(f"STEP {i} loss {loss:.6f}", flush=True)
        if die_after is not None:
            time.sleep(0.2)
    return float(sum(float(np.abs(w).sum()) for w in model.get_weights()))


def main() -> None:
    mode = sys.argv[1]
    from tests.workers.train_worker import skip_unused_keras_extras

    skip_unused_keras_extras()  # before _train imports Keras
    strategy = _strategy()
    print(f"READY replicas={strategy.num_replicas_in_sync}", flush=True)
    if mode == "train":
        verify_consistent(strategy, {"config": "same", "data": "same"})
        print("VERIFY OK", flush=True)
        print(f"CHECKSUM {_train(strategy, 5):.9f}", flush=True)
    elif mode == "verify":
        verify_consistent(strategy, {"config": "same", "data": os.environ["HN_DATA"]})
        print("VERIFY OK", flush=True)
    elif mode == "die_mid":
        _train(strategy, 10_000, die_after=2)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
