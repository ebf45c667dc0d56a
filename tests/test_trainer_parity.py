"""The Trainer's math against Keras' own ``model.fit`` (issue: "Correctness against Keras").

One stage, curriculum off (all data, index order), SGD, no clipping, constant learning rate: the
Trainer must produce the same per-step losses and final weights as ``fit`` without a strategy on
the same global batches in the same order; and so must its 2-replica run (MirroredStrategy over
two logical CPUs) and its gradient_accumulation_steps=4 run (against a 4x batch in ``fit``).
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from highnoon import data as hn_data
from highnoon.training.stage_plan import StagePlan
from tests.trainer_helpers import corpus, make_trainer, nano_model, write_jsonl

SEQ = 16
LR = 0.1
GLOBAL_BATCH = 8

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parity")
    # Every sample is longer than SEQ + 1 tokens, so no row is padded and the loss mask is all
    # ones: Keras' mean over tokens and the Trainer's sum / token count are then the same.
    path = write_jsonl(str(tmp / "data.jsonl"), corpus(3, 64, min_len=12, max_len=30))
    keras.utils.set_random_seed(0)
    model = nano_model(SEQ)
    model(tf.zeros([1, SEQ], tf.int32))
    return {"tmp": tmp, "path": path, "weights": model.get_weights()}


def _trainer_run(setup, **kwargs):
    trainer = make_trainer(
        setup["tmp"],
        learning_rate=LR,
        max_seq_length=SEQ,
        optimizer="sgd",
        lr_schedule="constant",
        warmup_steps=0,
        clip_norm=None,
        curriculum_strategy=None,
        shuffle=False,
        **kwargs,
    )
    trainer.add_curriculum_stage("only", [setup["path"]], epochs=1)
    trainer._build(None)
    trainer.model.set_weights(setup["weights"])
    losses = []
    trainer.add_callback(lambda e: losses.append(e["step_loss"]) if e["event"] == "log" else None)
    trainer.train(save_checkpoints=False, log_interval=1)
    return trainer, np.array(losses), trainer.model.get_weights()


def _global_batches(trainer, setup):
    """The exact global batches the Trainer fed, in order (from the same plan and pipeline)."""
    store = hn_data.prepare_stage_store(
        [setup["path"]], trainer.tokenizer, os.path.join(str(setup["tmp"]), "cache")
    )
    plan = StagePlan(0, "only", trainer.settings, 1, store, trainer.options.seed)
    rows = plan.host_rows(0, 0, 1)
    batches = list(hn_data.make_host_dataset(store, rows, SEQ).as_numpy_iterator())
    assert all(b["loss_mask"].all() for b in batches)  # the premise of the comparison
    return batches


def _keras_fit(setup, batches):
    keras.utils.set_random_seed(0)
    model = nano_model(SEQ)
    model(tf.zeros([1, SEQ], tf.int32))
    model.set_weights(setup["weights"])
    model.compile(
        optimizer=keras.optimizers.SGD(LR),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    running = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: running.append(float(logs["loss"]))
    )
    inputs = np.concatenate([b["inputs"] for b in batches])
    targets = np.concatenate([b["targets"] for b in batches])
    model.fit(
        inputs,
        targets,
        batch_size=len(batches[0]["inputs"]),
        shuffle=False,
        epochs=1,
        verbose=0,
        callbacks=[record],
    )
    # fit reports the running mean of the epoch; recover each batch's own loss.
    means = np.array(running, dtype=np.float64)
    counts = np.arange(1, len(means) + 1)
    per_step = means * counts - np.concatenate([[0.0], means[:-1] * counts[:-1]])
    return per_step, model.get_weights()


@pytest.fixture(scope="module")
def keras_reference(setup):
    trainer, losses, weights = _trainer_run(setup, batch_size=GLOBAL_BATCH)
    batches = _global_batches(trainer, setup)
    fit_losses, fit_weights = _keras_fit(setup, batches)
    return {"trainer": (losses, weights), "fit": (fit_losses, fit_weights), "steps": len(batches)}


def _assert_matches_fit(losses, weights, reference):
    fit_losses, fit_weights = reference["fit"]
    assert len(losses) == reference["steps"] == len(fit_losses)
    np.testing.assert_allclose(losses, fit_losses, rtol=2e-5, atol=2e-5)
    for got, want in zip(weights, fit_weights):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


def test_single_device_matches_keras_fit(keras_reference):
    losses, weights = keras_reference["trainer"]
    assert losses[-1] < losses[0]  # it really trained
    _assert_matches_fit(losses, weights, keras_reference)


def test_two_replicas_match_keras_fit(setup, keras_reference, mirrored):
    strategy = mirrored
    trainer, losses, weights = _trainer_run(setup, batch_size=GLOBAL_BATCH, strategy=strategy)
    assert trainer.strategy.num_replicas_in_sync == 2
    _assert_matches_fit(losses, weights, keras_reference)


def test_gradient_accumulation_matches_a_4x_batch_in_keras_fit(setup, keras_reference):
    _, losses, weights = _trainer_run(
        setup, batch_size=GLOBAL_BATCH // 4, gradient_accumulation_steps=4
    )
    _assert_matches_fit(losses, weights, keras_reference)
