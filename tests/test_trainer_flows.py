"""The documented flows as a user runs them: relative paths, built models, fine-tuning,
Trainer.load, the documented API's behaviours, and what a run prints."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import highnoon as hn
from tests.trainer_helpers import corpus, make_trainer, nano_model, write_jsonl


@pytest.fixture()
def data(tmp_path):
    return {
        "a": write_jsonl(str(tmp_path / "a.jsonl"), corpus(0, 48)),
        "b": write_jsonl(str(tmp_path / "b.jsonl"), corpus(1, 32)),
    }


def logits_of(model) -> np.ndarray:
    return model(tf.constant([[1, 5, 9, 13, 17, 21]], tf.int32), training=False).numpy()


# -- relative directories ------------------------------------------------------------------
def test_a_relative_checkpoint_dir_resumes_on_the_second_run(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = make_trainer(tmp_path)
    first.add_curriculum_stage("only", [data["a"]], epochs=1)
    summary = first.train(checkpoint_dir="./checkpoints", checkpoint_interval=3)
    assert summary["checkpoint_dir"] == str(tmp_path / "checkpoints")
    again = make_trainer(tmp_path)
    again.add_curriculum_stage("only", [data["a"]], epochs=1)
    resumed = again.train(checkpoint_dir="./checkpoints", checkpoint_interval=3)
    assert resumed["total_steps"] == summary["total_steps"]
    from_relative = make_trainer(tmp_path)
    from_relative.add_curriculum_stage("only", [data["a"]], epochs=1)
    out = from_relative.train(save_checkpoints=False, resume_from="checkpoints")
    assert out["total_steps"] == summary["total_steps"]


# -- models that are already built -------------------------------------------------------------
def test_a_model_built_by_generate_trains(tmp_path, data):
    model = nano_model()
    model.generate("abc", max_length=8, temperature=0.0)
    trainer = make_trainer(tmp_path, model=model)
    trainer.add_curriculum_stage("only", [data["a"]], epochs=1)
    assert trainer.train(save_checkpoints=False)["total_steps"] > 0


def test_fine_tuning_with_a_second_trainer_on_the_same_model(tmp_path, data):
    model = nano_model()
    pretrain = make_trainer(tmp_path, model=model)
    pretrain.add_curriculum_stage("pretrain", [data["a"]], epochs=1)
    pretrain.train(save_checkpoints=False)
    before = logits_of(model)
    finetune = make_trainer(tmp_path, model=model, learning_rate=1e-3)
    assert finetune.strategy is pretrain.strategy  # the model's own strategy, not a new one
    finetune.add_curriculum_stage("finetune", [data["b"]], epochs=1)
    assert finetune.train(save_checkpoints=False)["total_steps"] > 0
    assert not np.allclose(before, logits_of(model))


def test_load_restores_the_weights_before_train_and_train_continues(tmp_path, data):
    trainer = make_trainer(tmp_path)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=1)
    trainer.add_curriculum_stage("second", [data["b"]], epochs=1)
    trainer.train(save_checkpoints=False)
    saved_logits = logits_of(trainer.model)
    trainer.save(str(tmp_path / "saved"))
    fresh = nano_model()
    loaded = hn.Trainer.load(str(tmp_path / "saved"), fresh)
    np.testing.assert_array_equal(logits_of(fresh), saved_logits)  # before any train()
    assert [s.name for s in loaded.stages] == ["first", "second"]
    summary = loaded.train(save_checkpoints=False)  # already finished: nothing left to do
    assert summary["total_steps"] == trainer._position.global_step
    np.testing.assert_array_equal(logits_of(fresh), saved_logits)


# -- the documented API's behaviours --------------------------------------------------------
def test_epochs_per_stage_none_uses_each_stages_epochs(tmp_path, data):
    trainer = make_trainer(tmp_path)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=2)
    trainer.add_curriculum_stage("second", [data["b"]], epochs=1)
    summary = trainer.train(epochs_per_stage=None, save_checkpoints=False)
    assert [s["epochs"] for s in summary["stages_completed"]] == [2, 1]
    trainer.add_curriculum_stage("third", [data["b"]])
    with pytest.raises(ValueError, match=r"epochs_per_stage=None.*\['third'\] name none"):
        trainer.train(epochs_per_stage=None, save_checkpoints=False)


def test_stage_complete_metrics_count_the_stages_steps(tmp_path, data):
    trainer = make_trainer(tmp_path)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=2)
    trainer.add_curriculum_stage("second", [data["b"]], epochs=1)
    events = []
    trainer.add_callback(events.append)
    summary = trainer.train(save_checkpoints=False, log_interval=1)
    completed = [e for e in events if e["event"] == "stage_complete"]
    logs = [e for e in events if e["event"] == "log"]
    per_stage = {name: sum(1 for e in logs if e["stage"] == name) for name in ("first", "second")}
    assert [c["metrics"]["steps"] for c in completed] == [per_stage["first"], per_stage["second"]]
    assert sum(per_stage.values()) == summary["total_steps"]
    assert [s["steps"] for s in summary["stages_completed"]] == list(per_stage.values())


# -- what a run prints and writes -------------------------------------------------------------
def test_a_run_prints_progress_lines_on_the_chief(tmp_path, data, capsys):
    trainer = make_trainer(tmp_path, verbose=True, eval_fraction=0.25)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=2)
    summary = trainer.train(save_checkpoints=False, log_interval=2, eval_interval=4)
    lines = capsys.readouterr().err.splitlines()
    steps = [line for line in lines if line.startswith("first step ")]
    assert len(steps) == summary["total_steps"] // 2
    assert all(" tok/s " in line and " ETA " in line and " loss " in line for line in steps)
    assert any(line.startswith("stage 'first': 2 epoch(s)") for line in lines)
    assert any(line.startswith("first eval at step 4: loss ") for line in lines)
    assert lines[-1].startswith(f"done: {summary['total_steps']} steps")


def test_verbose_false_prints_nothing(tmp_path, data, capsys):
    trainer = make_trainer(tmp_path, verbose=False)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=1)
    trainer.train(save_checkpoints=False, log_interval=1)
    assert capsys.readouterr() == ("", "")


def test_summary_lists_the_checkpoints_on_disk(tmp_path, data):
    run_dir = tmp_path / "run"
    trainer = make_trainer(tmp_path, max_checkpoints_to_keep=2)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=2)
    summary = trainer.train(checkpoint_dir=str(run_dir), checkpoint_interval=2)
    on_disk = sorted(
        str(run_dir / name[: -len(".index")])
        for name in os.listdir(run_dir)
        if name.endswith(".index")
    )
    assert len(on_disk) == 2 and sorted(summary["checkpoints"]) == on_disk
    with open(run_dir / "summary.json") as handle:
        assert sorted(json.load(handle)["checkpoints"]) == on_disk
