"""``RunDir``: every file of a model_dir by its one name, the chief as its only writer, and
``model_config.json`` written and read in ``ModelConfig``'s format."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from highnoon.models.config import ModelConfig, load_model_config
from highnoon.training.run_dir import RunDir


def test_every_file_of_the_model_dir_has_one_path():
    run_dir = RunDir("/runs/a")
    assert {
        "summary": run_dir.summary_json,
        "goodput": run_dir.goodput_json,
        "lock": run_dir.run_lock,
        "summaries": run_dir.summaries,
        "model": run_dir.model_config_json,
        "trainer": run_dir.trainer_json,
        "gin": run_dir.config_gin,
    } == {
        "summary": "/runs/a/summary.json",
        "goodput": "/runs/a/goodput.json",
        "lock": "/runs/a/run.lock",
        "summaries": "/runs/a/summaries",
        "model": "/runs/a/model_config.json",
        "trainer": "/runs/a/trainer.json",
        "gin": "/runs/a/config.gin",
    }
    assert run_dir.checkpoint_write_dir == "/runs/a"  # the chief writes in place
    worker = RunDir("/runs/a", chief=False, write_path="/tmp/worker-1")
    assert worker.checkpoint_write_dir == "/tmp/worker-1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        run_dir.path = "/runs/b"


def test_the_model_config_round_trips_and_load_model_reads_it(tmp_path):
    run_dir = RunDir(str(tmp_path / "run"))
    assert run_dir.read_model_config() is None
    config = ModelConfig(d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=192)
    run_dir.write_model_config(config.to_dict())
    assert run_dir.read_model_config() == json.loads(config.to_json())
    assert load_model_config(run_dir.path) == config  # the format load_model reads


def test_only_the_chief_writes(tmp_path):
    worker = RunDir(str(tmp_path), chief=False)
    worker.write_model_config({"d_model": 64})
    worker.write_summary({"total_steps": 3})
    assert worker.write_text(worker.config_gin, "x = 1") is None
    assert os.listdir(tmp_path) == []
    chief = RunDir(str(tmp_path))
    chief.write_summary({"total_steps": 3})
    with open(chief.summary_json) as handle:
        assert json.load(handle) == {"total_steps": 3}
