"""Packed batches through the compiled ``TrainStep``, fed as the Trainer feeds its pipelines:
the weights after a few steps do not depend on the replica count, the host count (two input
pipelines read two halves of each step's rows) or gradient accumulation."""

from __future__ import annotations

import numpy as np
import pytest

from highnoon.data import build_token_store, make_packed_host_dataset, pack_epoch, stored_lengths

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

SEQ = 16
ROWS = 4  # global rows per step
STEPS = 3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    rng = np.random.Generator(np.random.PCG64(4))
    samples = [rng.integers(3, 250, int(n)) for n in rng.integers(1, 12, 40)]
    store = build_token_store(
        samples, "byte", str(tmp_path_factory.mktemp("ps") / "s"), progress=False
    )
    packed = pack_epoch(np.arange(40), stored_lengths(store), SEQ, ROWS, window=16)
    assert (
        packed.num_steps >= STEPS and packed.counts().samples[:STEPS].min() > ROWS
    )  # rows are shared
    from highnoon.models import create_model

    keras.utils.set_random_seed(0)
    model = create_model("highnoon-nano", max_seq_length=SEQ)
    model(tf.zeros([1, SEQ], tf.int32))
    return {"store": store, "packed": packed, "weights": model.get_weights()}


def train(setup, strategy, accumulation: int = 1, hosts: int = 1) -> list[np.ndarray]:
    """``STEPS`` SGD steps on the packing; ``hosts`` input pipelines split each step's rows."""
    from highnoon.models import create_model
    from highnoon.training.step import StepConfig, TrainStep

    with strategy.scope():
        model = create_model("highnoon-nano", max_seq_length=SEQ)
        model(tf.zeros([1, SEQ], tf.int32))
        model.set_weights(setup["weights"])
        optimizer = keras.optimizers.SGD(0.5)
        optimizer.build(model.trainable_variables)
    step = TrainStep(model, optimizer, strategy)
    replicas = strategy.num_replicas_in_sync

    def pipeline(host_id: int, num_hosts: int) -> tf.data.Dataset:
        local = replicas // num_hosts
        dataset = make_packed_host_dataset(
            setup["store"], setup["packed"], host_id=host_id, num_hosts=num_hosts
        )
        # one host step -> its local replicas' consecutive shares (as the Trainer does)
        split = lambda b: {k: tf.reshape(v, [local, -1, SEQ]) for k, v in b.items()}  # noqa: E731
        return dataset.map(split).unbatch()

    if replicas == 1:
        dataset = pipeline(0, 1)
    else:
        options = tf.distribute.InputOptions(
            experimental_fetch_to_device=True,
            experimental_replication_mode=tf.distribute.InputReplicationMode.PER_WORKER,
        )

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            return pipeline(0, 1) if hosts == 1 else _two_hosts(pipeline)

        dataset = strategy.distribute_datasets_from_function(dataset_fn, options)
    iterator = iter(dataset)
    config = StepConfig(accumulation_steps=accumulation, clip_norm=None)
    _, tokens = step.train_fn(config)(iterator, STEPS)
    assert tokens.numpy().tolist() == setup["packed"].counts().tokens[:STEPS].tolist()
    return model.get_weights()


def _two_hosts(pipeline) -> tf.data.Dataset:
    """Two host pipelines (halves of every step's rows) interleaved replica by replica: what two
    one-replica workers would each feed."""
    halves = [pipeline(h, 2) for h in (0, 1)]
    return tf.data.Dataset.zip(tuple(halves)).flat_map(
        lambda a, b: tf.data.Dataset.from_tensors(a).concatenate(tf.data.Dataset.from_tensors(b))
    )


def assert_same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)


def test_weights_do_not_depend_on_replicas_hosts_or_accumulation(setup, mirrored) -> None:
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs the two logical CPU devices configured by conftest")
    one = train(setup, tf.distribute.OneDeviceStrategy("/cpu:0"))
    assert any(not np.allclose(w, w0) for w, w0 in zip(one, setup["weights"]))  # it trained
    assert_same(train(setup, mirrored), one)
    assert_same(train(setup, mirrored, hosts=2), one)
    assert_same(train(setup, tf.distribute.OneDeviceStrategy("/cpu:0"), accumulation=2), one)
