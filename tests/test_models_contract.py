"""The model contract (highnoon/models/contract.py): any Keras model that maps int32 token ids
to float logits trains; every way a model can miss the contract is refused when the Trainer is
made, naming what is missing and the fix. Tiny functional models, no training except one."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers, ops

from highnoon.models.contract import ModelContractError, check_outputs
from tests.trainer_helpers import corpus, make_trainer, write_jsonl

VOCAB = 259  # the byte tokenizer's


def _functional(head, vocab: int = VOCAB, dict_out: bool = False) -> keras.Model:
    keras.utils.set_random_seed(0)
    ids = keras.Input(shape=(None,), dtype="int32")
    hidden = layers.Embedding(vocab, 8)(ids)
    out = head(hidden)
    return keras.Model(ids, {"logits": out} if dict_out else out)


class _Probabilities(keras.Model):
    """Logits turned into probabilities inside call: only the probe's numbers show it."""

    def __init__(self):
        super().__init__()
        self.embed = layers.Embedding(VOCAB, 8)
        self.head = layers.Dense(VOCAB)

    def call(self, ids, training=False):
        return ops.softmax(self.head(self.embed(ids)), axis=-1)


class _NeedsDict(keras.Model):
    def __init__(self):
        super().__init__()
        self.embed = layers.Embedding(VOCAB, 8)
        self.head = layers.Dense(VOCAB)

    def call(self, inputs, training=False):
        return self.head(self.embed(inputs["token_ids"]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(str(tmp_path_factory.mktemp("data") / "a.jsonl"), corpus(0, 24))


BAD_MODELS = {
    "dict": (
        lambda: _functional(layers.Dense(VOCAB), dict_out=True),
        r"returns a dict \(keys \['logits'\]\); the Trainer needs one logits tensor",
    ),
    "softmax layer": (
        lambda: _functional(layers.Dense(VOCAB, activation="softmax")),
        r"last layer 'dense.*' applies a softmax.*give that layer activation=None",
    ),
    "probabilities": (
        lambda: _Probabilities(),
        r"_Probabilities returns probabilities \(non-negative, summing to 1 per token\)",
    ),
    "rank 2": (
        lambda: _functional(lambda h: layers.Dense(VOCAB)(ops.mean(h, axis=1))),
        r"returned shape \[1, 259\] for ids of shape \[1, 4\]; the Trainer needs logits "
        r"\[batch, seq, vocab\]",
    ),
    "integer ids out": (
        lambda: _functional(lambda h: ops.argmax(layers.Dense(VOCAB)(h), axis=-1)[..., None]),
        r"returned dtype int(32|64); the Trainer needs float logits",
    ),
    "small vocabulary": (
        lambda: _functional(layers.Dense(100)),
        r"vocabulary is 100 logits but the tokenizer \(or the store\) has ids up to 258: the "
        r"model needs vocab >= 259",
    ),
    "dict input": (
        lambda: _NeedsDict(),
        r"_NeedsDict failed on token ids \(int32 \[batch, seq\]\).*needs a wrapper",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_MODELS))
def test_a_model_off_the_contract_is_refused_before_the_step(tmp_path, data, kind):
    factory, message = BAD_MODELS[kind]
    model = factory()
    if model.built:  # functional: probed as the Trainer is made
        with pytest.raises(ModelContractError, match=message):
            make_trainer(tmp_path, model=model)
        return
    # Unbuilt (subclassed): probed by the call that builds it, before the step is built.
    trainer = make_trainer(tmp_path, model=model)
    trainer.add_curriculum_stage("a", [data], epochs=1)
    with pytest.raises(ModelContractError, match=message):
        trainer.train(save_checkpoints=False)
    assert trainer._step is None


def test_packing_and_full_sharding_need_their_extra_arguments(tmp_path, data):
    model = _functional(layers.Dense(VOCAB))
    with pytest.raises(
        ModelContractError,
        match=r"pack=True needs a model that takes positions= and segment_ids=.*Functional\.call "
        r"takes no positions or segment_ids.*Train Functional with pack=False",
    ):
        make_trainer(tmp_path, model=model, pack=True)
    trainer = make_trainer(tmp_path, model=model)
    with pytest.raises(ModelContractError, match="pack=True needs a model that takes positions="):
        trainer.add_curriculum_stage("a", [data], epochs=1, pack=True)
    assert trainer.stages == []
    with pytest.raises(
        ModelContractError,
        match=r"sharding='full' cannot train Functional: Functional has no weight_segments\(\).*"
        r"Use sharding='gradients'",
    ):
        make_trainer(tmp_path, model=model, sharding="full")


def test_any_keras_model_on_the_contract_trains(tmp_path, data):
    model = _functional(layers.Dense(VOCAB))
    assert check_outputs(model, VOCAB) == VOCAB
    before = [w.numpy().copy() for w in model.trainable_weights]
    trainer = make_trainer(tmp_path, model=model)
    trainer.add_curriculum_stage("a", [data], epochs=1)
    summary = trainer.train(save_checkpoints=False)
    assert summary["total_steps"] == 6  # one epoch: 24 samples in batches of 4
    assert trainer.export_model() is model
    assert all(not np.array_equal(a, w.numpy()) for a, w in zip(before, model.trainable_weights))
