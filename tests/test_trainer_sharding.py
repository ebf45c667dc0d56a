"""Sharding through the Trainer: each level trains two stages with accumulation and
clipping to the unsharded Trainer's weights, resumes unsharded from a sharded checkpoint, and
every bad setting is refused before anything is built. Two logical CPUs under MirroredStrategy;
the multi-worker proofs of the step are in test_sharding_multiworker.py, the Trainer on real
workers in test_trainer_multiworker.py."""

from __future__ import annotations

import numpy as np
import pytest

import highnoon as hn
from highnoon.models.memory import ModelDoesNotFitError, estimate_memory
from highnoon.utils.validation import InvalidArgumentError
from tests.trainer_helpers import corpus, make_trainer, write_jsonl

RTOL, ATOL = 1e-4, 5e-5  # sums in another order (the step's multi-replica tolerance)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    files = tmp_path_factory.mktemp("data")
    return {
        "a": write_jsonl(str(files / "a.jsonl"), corpus(0, 96)),
        "b": write_jsonl(str(files / "b.jsonl"), corpus(1, 64)),
    }


def _trainer(tmp_path, data, strategy, sharding, **kwargs):
    trainer = make_trainer(
        tmp_path,
        model=hn.create_model("highnoon-nano", max_seq_length=32),
        strategy=strategy,
        sharding=sharding,
        gradient_accumulation_steps=2,
        clip_norm=0.5,
        **kwargs,
    )
    trainer.add_curriculum_stage("first", [data["a"]], epochs=2)
    trainer.add_curriculum_stage("second", [data["b"]], epochs=1, learning_rate=1e-3, weight=2.0)
    return trainer


def _weights(trainer) -> list[np.ndarray]:
    return [w.numpy() for w in trainer.export_model().trainable_variables]


@pytest.fixture(scope="module")
def unsharded(tmp_path_factory, data, mirrored):
    trainer = _trainer(tmp_path_factory.mktemp("unsharded"), data, mirrored, None)
    summary = trainer.train(save_checkpoints=False)
    return summary, _weights(trainer)


@pytest.mark.slow
@pytest.mark.parametrize("level", ["optimizer", "gradients", "full"])
def test_each_level_trains_two_stages_to_the_unsharded_weights(
    tmp_path, data, mirrored, unsharded, level
):
    expected_summary, expected = unsharded
    trainer = _trainer(tmp_path, data, mirrored, level)
    summary = trainer.train(checkpoint_dir=str(tmp_path / "run"), checkpoint_interval=5)
    assert summary["total_steps"] == expected_summary["total_steps"] >= 20
    for got, want in zip(_weights(trainer), expected):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    # The sharded checkpoint restores into an unsharded Trainer on one device.
    single = make_trainer(tmp_path, model=hn.create_model("highnoon-nano", max_seq_length=32),
                          gradient_accumulation_steps=2, clip_norm=0.5)  # fmt: skip
    single.add_curriculum_stage("first", [data["a"]], epochs=2)
    single.add_curriculum_stage("second", [data["b"]], epochs=1, learning_rate=1e-3, weight=2.0)
    resumed = single.train(checkpoint_dir=str(tmp_path / "run"))
    assert resumed["total_steps"] == summary["total_steps"]  # nothing left: restored at the end
    for got, want in zip(_weights(single), expected):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


def test_bad_sharding_settings_are_refused_before_anything_is_built(tmp_path, data, mirrored):
    with pytest.raises(InvalidArgumentError, match="sharding='zero' must be one of"):
        make_trainer(tmp_path, sharding="zero")
    with pytest.raises(InvalidArgumentError, match="collectives='nccl' must be one of"):
        make_trainer(tmp_path, collectives="nccl")
    built = hn.create_model("highnoon-nano", max_seq_length=32)
    built.build()
    with pytest.raises(InvalidArgumentError, match="sharding='full' .* must reach the Trainer"):
        make_trainer(tmp_path, model=built, strategy=mirrored, sharding="full")


def test_sharding_on_one_replica_warns_and_trains_unsharded(tmp_path, data, caplog):
    trainer = make_trainer(tmp_path, sharding="optimizer")
    assert trainer._sharding is None
    assert "on one replica has nothing to share" in caplog.text
    trainer.add_curriculum_stage("first", [data["a"]], epochs=1)
    assert trainer.train(save_checkpoints=False)["total_steps"] > 0


def test_a_plan_that_does_not_fit_names_the_smallest_level_that_would(tmp_path, data, mirrored):
    model = hn.create_model("highnoon-nano", max_seq_length=32)
    plan = {"batch_size": 4, "seq_length": 32, "num_replicas": 2}
    unsharded = estimate_memory(model.config, sharding=None, **plan).total_bytes
    zero1 = estimate_memory(model.config, sharding="optimizer", **plan).total_bytes
    device_gib = (unsharded + zero1) / 2 / 0.9 / 2**30  # ZeRO-1 fits the 90% headroom, not None
    trainer = make_trainer(tmp_path, model=model, strategy=mirrored, device_memory_gib=device_gib)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=1)
    with pytest.raises(ModelDoesNotFitError, match="sharding='optimizer' would fit"):
        trainer.train(checkpoint_dir=str(tmp_path / "run"))
    assert not (tmp_path / "cache").exists() and not model.built  # nothing was built
