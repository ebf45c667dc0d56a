"""Hash of the traced unsharded train step, to show a change leaves the default program as it was.

    PYTHONPATH=/work/main python bench/program_hash.py       # one checkout
    PYTHONPATH=$PWD python bench/program_hash.py             # another: same four hashes?

For one device and for a 2-replica MirroredStrategy (two logical CPUs), with and without
``jit_compile``, it traces ``TrainStep.train_fn`` on the nano model and hashes the op type and the
inputs of every node of the step and of every function it calls, generated names (``_123``)
normalised. Equal hashes mean the same program; this is not a benchmark and times nothing.
"""

from __future__ import annotations

import hashlib
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _normalise(name: str) -> str:
    return re.sub(r"_\d+", "_N", name)


def _nodes(nodes) -> str:
    return ";".join(sorted(_normalise(n.op + "|" + ",".join(n.input)) for n in nodes))


def program_hash(strategy, jit_compile: bool, accumulation_steps: int) -> str:
    import keras
    import tensorflow as tf

    import highnoon as hn
    from highnoon.training.optimization import WarmupCosineSchedule, make_optimizer
    from highnoon.training.step import StepConfig, TrainStep

    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = hn.create_model("highnoon-nano", max_seq_length=16)
        model.build()
        multiplier = tf.Variable(1.0, trainable=False)
        optimizer = make_optimizer(WarmupCosineSchedule(3e-3, 20, 2, multiplier=multiplier))
        optimizer.build(model.trainable_variables)
    step = TrainStep(model, optimizer, strategy)
    rows, seq, replicas = 4 * accumulation_steps, 16, strategy.num_replicas_in_sync
    batch = {
        "inputs": tf.zeros([rows, seq], tf.int32),
        "targets": tf.zeros([rows, seq], tf.int32),
        "loss_mask": tf.ones([rows, seq]),
    }
    dataset = tf.data.Dataset.from_tensors(batch).repeat()
    if replicas > 1:
        per_replica = dataset.map(
            lambda b: {k: tf.reshape(v, [replicas, -1, seq]) for k, v in b.items()}
        ).unbatch()
        dataset = strategy.distribute_datasets_from_function(lambda ctx: per_replica)
    iterator = iter(dataset)
    config = StepConfig(
        accumulation_steps=accumulation_steps, clip_norm=1.0, jit_compile=jit_compile
    )
    step.train_fn(config)(iterator, 1)
    traced = step._train_fns[("train", accumulation_steps, 1.0, jit_compile)]
    graph = traced.get_concrete_function(iterator, tf.constant(1, tf.int32)).graph.as_graph_def()
    functions = sorted(graph.library.function, key=lambda f: _normalise(f.signature.name))
    parts = [_normalise(f.signature.name) + ":" + _nodes(f.node_def) for f in functions]
    parts.append(_nodes(graph.node))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def main() -> None:
    import tensorflow as tf

    import highnoon.training.step

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    print("step module:", highnoon.training.step.__file__)
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print("one device, jit, accumulation 2:", program_hash(one, True, 2))
    print("one device, no jit:             ", program_hash(one, False, 1))
    print("2 replicas, accumulation 2:     ", program_hash(mirrored, False, 2))
    print("2 replicas, jit:                ", program_hash(mirrored, True, 1))


if __name__ == "__main__":
    main()
