"""A mixed stage in the Trainer: samples per dataset in the summary and stage_complete, and an
exact resume in the middle of a mixed epoch."""

from __future__ import annotations

import os

import numpy as np
import pytest

from highnoon.data import prepare_datasets
from tests.trainer_helpers import make_trainer, nano_model, train_until, write_jsonl


@pytest.fixture()
def mixture(tmp_path):
    """``[(a, 0.5), (b, 0.3), (c, 0.2)]`` over 12, 2 and 6 samples: an epoch of 20 samples holds
    10, 6 and 4 of them (b repeats, a is subsampled)."""
    sizes = {"a": 12, "b": 2, "c": 6}
    paths = {
        name: write_jsonl(str(tmp_path / f"{name}.jsonl"), [f"{name} {i} " * 3 for i in range(n)])
        for name, n in sizes.items()
    }
    return [(paths["a"], 0.5), (paths["b"], 0.3), (paths["c"], 0.2)]


def _weights(model) -> list[np.ndarray]:
    return [w.numpy() for w in model.weights]


def test_samples_per_dataset_in_the_summary_and_stage_complete(tmp_path, mixture):
    trainer = make_trainer(tmp_path, curriculum_strategy=None)
    trainer.add_curriculum_stage("mix", mixture, epochs=2)
    completed = []
    trainer.add_callback(lambda e: completed.append(e) if e["event"] == "stage_complete" else None)
    summary = trainer.train(save_checkpoints=False)
    expected = {mixture[0][0]: 20, mixture[1][0]: 12, mixture[2][0]: 8}  # 2 epochs of 10, 6, 4
    (entry,) = summary["stages_completed"]
    assert entry["samples_per_dataset"] == expected
    assert completed[0]["metrics"]["samples_per_dataset"] == expected
    assert entry["samples_seen"] == sum(expected.values()) == summary["total_steps"] * 4


@pytest.mark.slow
def test_a_mixed_stage_resumes_mid_epoch_bit_identical(tmp_path, mixture, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as a user runs it: a relative ./checkpoints

    def trainer():
        t = make_trainer(tmp_path, model=nano_model())
        t.add_curriculum_stage("mix", mixture, epochs=2)
        return t

    reference = trainer()
    ends = []
    reference.add_callback(lambda e: ends.append(e["step"]) if e["event"] == "epoch_end" else None)
    expected = reference.train(checkpoint_dir="./full", log_interval=1)
    stop_step = ends[0] + 2  # inside the second epoch
    assert stop_step < ends[1]
    train_until(trainer(), stop_step, "./checkpoints")
    resumed = trainer()
    summary = resumed.train(checkpoint_dir="./checkpoints", log_interval=1)
    assert summary["total_steps"] == expected["total_steps"]
    assert summary["stages_completed"] == expected["stages_completed"]
    assert (
        sum(summary["stages_completed"][0]["samples_per_dataset"].values())
        == (summary["stages_completed"][0]["samples_seen"])
    )
    for got, want in zip(_weights(resumed.model), _weights(reference.model)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow  # two trainings: about 30 s on 2 cores
def test_a_prepared_store_by_path_trains_as_its_raw_source(tmp_path, mixture):
    """highnoon-prepare-data's store of ``a``, named by path in a weighted mixture, trains
    exactly as ``a`` itself: the same samples, scores, batches and weights, with no rebuild."""
    index = prepare_datasets([mixture[0][0]], str(tmp_path / "prepared"), progress=False)
    prepared = index["datasets"][0]["path"]
    runs = {}
    for name, first in (("raw", mixture[0][0]), ("prepared", prepared)):
        trainer = make_trainer(tmp_path / name)
        trainer.add_curriculum_stage("mix", [(first, 0.5), *mixture[1:]], epochs=1)
        summary = trainer.train(save_checkpoints=False)
        runs[name] = (summary["stages_completed"][0]["samples_per_dataset"], trainer.model)
    (raw_counts, raw_model), (prepared_counts, prepared_model) = runs["raw"], runs["prepared"]
    assert list(prepared_counts.values()) == list(raw_counts.values()) == [10, 6, 4]
    assert list(prepared_counts) == [prepared, mixture[1][0], mixture[2][0]]
    for got, want in zip(_weights(prepared_model), _weights(raw_model)):
        np.testing.assert_array_equal(got, want)
    assert len(os.listdir(tmp_path / "raw" / "cache" / "sources")) == 3
    assert len(os.listdir(tmp_path / "prepared" / "cache" / "sources")) == 2  # a: read in place


@pytest.mark.slow  # three short trainings per case
@pytest.mark.parametrize("where", ["stage_boundary", "mixed_epoch_1"])
def test_a_curriculum_mixture_after_a_stage_resumes_bit_identical(tmp_path, mixture, where):
    """A single-source stage, then a mixed stage with a curriculum (pools per source): cut at the
    mixed stage's first step, or inside its second epoch, and resumed, the run ends with the
    uninterrupted run's weights and per-dataset counts."""

    def trainer():
        t = make_trainer(tmp_path, model=nano_model(), curriculum_strategy="size_based")
        t.add_curriculum_stage("warm", [mixture[0][0]], epochs=1)
        t.add_curriculum_stage("mix", mixture, epochs=3, pacing="linear", initial_fraction=0.5)
        return t

    reference = trainer()
    ends = []
    reference.add_callback(
        lambda e: ends.append((e["stage"], e["step"])) if e["event"] == "epoch_end" else None
    )
    expected = reference.train(checkpoint_dir=str(tmp_path / "full"), log_interval=1)
    warm_end = ends[0][1]
    mixed_ends = [step for stage, step in ends if stage == "mix"]
    stop_step = warm_end + 1 if where == "stage_boundary" else mixed_ends[0] + 1
    assert stop_step < mixed_ends[-1]
    train_until(trainer(), stop_step, str(tmp_path / where))
    resumed = trainer()
    summary = resumed.train(checkpoint_dir=str(tmp_path / where), log_interval=1)
    assert summary["total_steps"] == expected["total_steps"]
    assert summary["stages_completed"] == expected["stages_completed"]
    for got, want in zip(_weights(resumed.model), _weights(reference.model)):
        np.testing.assert_array_equal(got, want)
