"""Sharding through the Trainer: each level trains two stages with accumulation and
clipping to the unsharded Trainer's weights, resumes unsharded from a sharded checkpoint, and
every bad setting is refused before anything is built; a "full" run's checkpoints average as
they load. Two logical CPUs under MirroredStrategy;
the multi-worker proofs of the step are in test_sharding_multiworker.py, the Trainer on real
workers in test_trainer_multiworker.py."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import highnoon as hn
from highnoon.models import load_model
from highnoon.models.memory import ModelDoesNotFitError, estimate_memory
from highnoon.models.restore import model_variables
from highnoon.training import export_average
from highnoon.training.checkpoint_average import average_checkpoints, last_checkpoints
from highnoon.utils.validation import InvalidArgumentError
from tests.test_checkpoint_average import assert_weights_equal, mean_weights
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


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, data, mirrored):
    """Level "full" through both stages, a checkpoint every 5 steps (its trace is the slowest of
    the levels): the level test and the averaging test read it. (directory, summary, weights)."""
    tmp = tmp_path_factory.mktemp("full")
    trainer = _trainer(tmp, data, mirrored, "full")
    summary = trainer.train(checkpoint_dir=str(tmp / "run"), checkpoint_interval=5)
    return tmp / "run", summary, _weights(trainer)


@pytest.mark.slow
@pytest.mark.parametrize("level", ["optimizer", "gradients", "full"])
def test_each_level_trains_two_stages_to_the_unsharded_weights(
    tmp_path, data, mirrored, unsharded, level, request
):
    expected_summary, expected = unsharded
    if level == "full":  # a copy: the resume below writes into the run
        run_dir, summary, weights = request.getfixturevalue("full_run")
        shutil.copytree(run_dir, tmp_path / "run")
    else:
        trainer = _trainer(tmp_path, data, mirrored, level)
        summary = trainer.train(checkpoint_dir=str(tmp_path / "run"), checkpoint_interval=5)
        weights = _weights(trainer)
    assert summary["total_steps"] == expected_summary["total_steps"] >= 20
    for got, want in zip(weights, expected):
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


@pytest.mark.slow
def test_a_full_sharded_run_averages_like_its_checkpoints_load(full_run, tmp_path):
    """sharding='full' keeps only per-replica shares of the weights, but its checkpoints hold
    whole tensors under the unsharded names: the average is the mean of what load_model reads
    from each checkpoint, and loads on one device."""
    run_dir, summary, _ = full_run
    path = str(run_dir)
    kept = last_checkpoints(path, 3)
    last = summary["total_steps"]
    assert [os.path.basename(p) for p in kept] == ["ckpt-15", "ckpt-20", f"ckpt-{last}"]
    saved = [
        {p: v.numpy() for p, v in model_variables(load_model(prefix)).items()} for prefix in kept
    ]
    assert any(
        not np.array_equal(saved[0][p], saved[-1][p]) for p in saved[0]
    )  # the run trained between the checkpoints
    assert_weights_equal(average_checkpoints(path, 3).weights, mean_weights(saved))
    written = export_average(path, 3, str(tmp_path / "avg"))
    loaded = load_model(os.path.dirname(written))
    assert_weights_equal(
        {p: v.numpy() for p, v in model_variables(loaded).items()}, mean_weights(saved)
    )


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
