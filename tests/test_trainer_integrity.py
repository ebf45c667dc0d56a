"""A run never trains on the wrong thing: changed data on resume, every bad value refused at the
call, tampered trainer.json (the Trainer side; the data side is
test_data_integrity.py)."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import highnoon as hn
from highnoon.training import stage_plan
from highnoon.training.resume import DataChangedError
from highnoon.training.run_lock import ModelDirLockedError
from highnoon.training.saved_state import TrainerStateError
from highnoon.training.trainer import NonFiniteLossError
from highnoon.utils.validation import InvalidArgumentError, InvalidArgumentTypeError
from tests.trainer_helpers import corpus, make_trainer, nano_model, write_jsonl


@pytest.fixture()
def data(tmp_path):
    return {
        "a": write_jsonl(str(tmp_path / "a.jsonl"), corpus(0, 48)),
        "b": write_jsonl(str(tmp_path / "b.jsonl"), corpus(1, 32)),
    }


class _Stop(Exception):
    pass


def _stop_at(step: int):
    def callback(event):
        if event["event"] == "log" and event["step"] == step:
            raise _Stop

    return callback


# -- changed data on resume --------------------------------------------------------------------
def _interrupted_run(tmp_path, data, run_dir):
    trainer = make_trainer(tmp_path)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=2)
    trainer.add_callback(_stop_at(5))
    with pytest.raises(_Stop):
        trainer.train(checkpoint_dir=run_dir, log_interval=1)  # saves at step 5 on the way out


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> str:
    """A run of stage "first" on ``data``'s "a" content stopped at step 5, shared by the tests
    that resume a copy of it (the checkpoint records the store's content hash, not its path,
    so each test's own copy of the sources is the same data)."""
    root = tmp_path_factory.mktemp("interrupted")
    sources = {"a": write_jsonl(str(root / "a.jsonl"), corpus(0, 48))}
    _interrupted_run(root, sources, str(root / "run"))
    return str(root / "run")


def _copy_of(run_dir: str, tmp_path) -> str:
    copy = str(tmp_path / "run")
    shutil.copytree(run_dir, copy)
    return copy


def test_resume_refuses_a_stage_whose_data_changed(tmp_path, data, interrupted):
    run_dir = _copy_of(interrupted, tmp_path)
    write_jsonl(data["a"], corpus(7, 48))  # the same file, other samples
    again = make_trainer(tmp_path)
    again.add_curriculum_stage("first", [data["a"]], epochs=2)
    with pytest.raises(DataChangedError) as caught:
        again.train(checkpoint_dir=run_dir)
    message = str(caught.value)
    assert "stage 'first' (index 0) was checkpointed at global step 5" in message
    assert "the stage's data (token store content)" in message
    assert "fresh checkpoint_dir" in message and "allow_data_change=True" in message
    assert tf.train.latest_checkpoint(run_dir).endswith("ckpt-5")  # nothing written


def test_resume_refuses_changed_stream_settings(tmp_path, data, interrupted):
    run_dir = _copy_of(interrupted, tmp_path)
    again = make_trainer(tmp_path)
    again.add_curriculum_stage("first", [data["a"]], epochs=2, initial_fraction=0.5)
    with pytest.raises(
        DataChangedError,
        match=r"the settings that shape the stream .* \(initial_fraction: 0.2 -> 0.5\)",
    ):
        again.train(checkpoint_dir=run_dir)


def test_allow_data_change_restarts_the_stage_on_the_new_data(tmp_path, data, interrupted):
    run_dir = _copy_of(interrupted, tmp_path)
    write_jsonl(data["a"], corpus(7, 48))
    again = make_trainer(tmp_path, allow_data_change=True)
    again.add_curriculum_stage("first", [data["a"]], epochs=2)
    # the whole stage's steps on the new data (planned steps are trained steps:
    # test_curriculum_report.py)
    stage_steps = again.plan(epochs_per_stage=None)[0].planned_steps()
    summary = again.train(checkpoint_dir=run_dir)
    assert summary["total_steps"] == 5 + stage_steps  # step count continues, stream restarts
    (change,) = summary["data_changes"]
    assert change["stage"] == "first" and change["step"] == 5 and change["changed"] == ["data"]
    with open(os.path.join(run_dir, "summary.json")) as handle:
        assert json.load(handle)["data_changes"] == summary["data_changes"]


def test_a_checkpoint_of_the_previous_stream_rule_refuses_to_resume_silently(
    tmp_path, data, monkeypatch
):
    """Issue 21 changed the stream of small data (whole-store scores, the split in order
    space): a checkpoint written under the previous rule (its stream fingerprint had no
    format key) is refused, and allow_data_change restarts the stage on the new stream."""
    run_dir = str(tmp_path / "run")
    current = stage_plan.StagePlan.stream_fingerprint

    def previous_rule(plan):
        stream = json.loads(current(plan)["stream"])
        del stream["format"]  # what stage plans wrote before the key existed
        return {**current(plan), "stream": json.dumps(stream, sort_keys=True)}

    monkeypatch.setattr(stage_plan.StagePlan, "stream_fingerprint", previous_rule)
    _interrupted_run(tmp_path, data, run_dir)
    monkeypatch.undo()
    again = make_trainer(tmp_path)
    again.add_curriculum_stage("first", [data["a"]], epochs=2)
    with pytest.raises(
        DataChangedError, match=rf"stream .* \(format: None -> '{stage_plan.STREAM_FORMAT}'\)"
    ):
        again.train(checkpoint_dir=run_dir)
    allowed = make_trainer(tmp_path, allow_data_change=True)
    allowed.add_curriculum_stage("first", [data["a"]], epochs=2)
    (change,) = allowed.train(checkpoint_dir=run_dir)["data_changes"]
    assert change["changed"] == ["stream"] and change["step"] == 5


def test_a_stage_not_yet_begun_may_change(tmp_path, data):
    run_dir = str(tmp_path / "run")
    trainer = make_trainer(tmp_path)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=1)
    trainer.add_curriculum_stage("second", [data["b"]], epochs=1)
    trainer.add_callback(_stop_at(3))
    with pytest.raises(_Stop):
        trainer.train(checkpoint_dir=run_dir, log_interval=1)
    write_jsonl(data["b"], corpus(9, 32))
    again = make_trainer(tmp_path)
    again.add_curriculum_stage("first", [data["a"]], epochs=1)
    again.add_curriculum_stage("second", [data["b"]], epochs=1)
    assert again.train(checkpoint_dir=run_dir)["data_changes"] == []


# -- every bad value at the call ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"learning_rate": math.nan}, InvalidArgumentError, "learning_rate=nan"),
        ({"learning_rate": math.inf}, InvalidArgumentError, "learning_rate=inf"),
        ({"batch_size": 4.0}, InvalidArgumentTypeError, "batch_size=4.0 must be an integer"),
        ({"batch_size": True}, InvalidArgumentTypeError, "batch_size=True must be an integer"),
        ({"shuffle": "no"}, InvalidArgumentTypeError, "shuffle='no' must be True or False"),
        ({"pacing": "bogus"}, InvalidArgumentError, "pacing='bogus' must be one of"),
        ({"curriculum_strategy": "bogus"}, InvalidArgumentError, "curriculum_strategy='bogus'"),
        ({"initial_fraction": 2.0}, InvalidArgumentError, r"initial_fraction=2.0 .*\(0, 1\]"),
        ({"overflow": "bogus"}, InvalidArgumentError, "overflow='bogus' must be one of"),
        ({"seed": -1}, InvalidArgumentError, r"seed=-1 must be an integer in \[0, 4294967295\]"),
        ({"steps_per_call": 0}, InvalidArgumentError, "steps_per_call=0"),
        ({"optimizer": "lamb"}, InvalidArgumentError, "optimizer='lamb' must be one of"),
        ({"min_epochs_per_stage": 3, "max_epochs_per_stage": 2}, InvalidArgumentError, "max_ep"),
        ({"no_such_setting": 1}, InvalidArgumentTypeError, r"unknown Trainer setting.*no_such"),
    ],
)
def test_bad_trainer_values_are_refused_at_the_call(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        make_trainer(tmp_path, **kwargs)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"batch_size": 4.0}, InvalidArgumentTypeError, "stage 's': batch_size=4.0"),
        ({"shuffle": "no"}, InvalidArgumentTypeError, "stage 's': shuffle='no'"),
        ({"pacing": "bogus"}, InvalidArgumentError, "stage 's': pacing='bogus'"),
        ({"curriculum_strategy": "bogus"}, InvalidArgumentError, "curriculum_strategy='bogus'"),
        ({"initial_fraction": 2.0}, InvalidArgumentError, "stage 's': initial_fraction=2.0"),
        ({"overflow": "bogus"}, InvalidArgumentError, "stage 's': overflow='bogus'"),
        ({"learning_rate": math.nan}, InvalidArgumentError, "stage 's': learning_rate=nan"),
        ({"weight": math.inf}, InvalidArgumentError, "stage 's': weight=inf"),
        ({"weight": math.nan}, InvalidArgumentError, "stage 's': weight=nan"),
        ({"epochs": 2.5}, InvalidArgumentTypeError, "stage 's': epochs=2.5"),
    ],
)
def test_bad_stage_values_are_refused_when_the_stage_is_added(
    tmp_path, data, overrides, error, message
):
    trainer = make_trainer(tmp_path)
    with pytest.raises(error, match=message):
        trainer.add_curriculum_stage("s", [data["a"]], **overrides)
    assert trainer.stages == []


def test_missing_model_and_datasets_are_clear_errors(tmp_path, data):
    with pytest.raises(InvalidArgumentTypeError, match="model=None must be a Keras"):
        hn.Trainer(None)
    trainer = make_trainer(tmp_path)
    with pytest.raises(InvalidArgumentTypeError, match="stage 's': datasets=None"):
        trainer.add_curriculum_stage("s", None)


def test_a_file_in_place_of_the_checkpoint_dir_fails_before_any_store_is_built(tmp_path, data):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    trainer = make_trainer(tmp_path)
    trainer.add_curriculum_stage("s", [data["a"]])
    with pytest.raises(InvalidArgumentError, match="checkpoint_dir=.*blocker.*file is in the way"):
        trainer.train(checkpoint_dir=str(blocker))
    assert not os.path.exists(tmp_path / "cache")  # no store was built
    assert trainer._optimizer is None  # nor the model's optimizer


def test_an_unwritable_checkpoint_dir_fails_before_any_store_is_built(tmp_path, data):
    if os.geteuid() == 0:  # root writes into read-only directories; /proc refuses everyone
        unwritable = "/proc/highnoon-run"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        unwritable = str(locked / "run")
    trainer = make_trainer(tmp_path)
    trainer.add_curriculum_stage("s", [data["a"]])
    with pytest.raises(InvalidArgumentError, match="checkpoint_dir=.*writable directory"):
        trainer.train(checkpoint_dir=unwritable)
    assert not os.path.exists(tmp_path / "cache")


def test_train_arguments_are_checked(tmp_path, data):
    trainer = make_trainer(tmp_path)
    trainer.add_curriculum_stage("s", [data["a"]])
    for kwargs, message in [
        ({"epochs_per_stage": 0}, "epochs_per_stage=0"),
        ({"save_checkpoints": "yes"}, "save_checkpoints='yes' must be True or False"),
        ({"log_interval": 2.0}, "log_interval=2.0 must be an integer"),
        ({"checkpoint_dir": 5}, "checkpoint_dir=5 must be a non-empty string"),
    ]:
        with pytest.raises(InvalidArgumentError, match=message):
            trainer.train(**kwargs)


def test_nan_loss_without_any_checkpoint_says_so(tmp_path, data):
    model = nano_model()
    trainer = make_trainer(tmp_path, model=model)
    trainer.add_curriculum_stage("s", [data["a"]], epochs=1)
    trainer._build(None)
    model.weights[0].assign(tf.fill(model.weights[0].shape, np.nan))
    with pytest.raises(NonFiniteLossError, match="No checkpoint had been written yet"):
        trainer.train(checkpoint_dir=str(tmp_path / "run"))


# -- tampered trainer.json -------------------------------------------------------------------
@pytest.fixture()
def saved(tmp_path, data):
    trainer = make_trainer(tmp_path)
    trainer.add_curriculum_stage("s", [data["a"]], epochs=1)
    path = str(tmp_path / "saved")
    trainer.save(path)
    return path


def _rewrite(path: str, edit) -> None:
    file = os.path.join(path, "trainer.json")
    with open(file) as handle:
        state = json.load(handle)
    edit(state)
    with open(file, "w") as handle:
        json.dump(state, handle)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("stages"), r"missing key\(s\) \['stages'\]"),
        (lambda s: s.update(format=7), "format=7; this version of highnoon reads format 1"),
        (lambda s: s.update(settings=[1, 2]), r"settings=\[1, 2\] must be a dict"),
        (lambda s: s["settings"].update(batch_size="8"), "batch_size='8' must be an integer"),
        (lambda s: s["run_options"].update(bogus=1), r"unknown Trainer setting\(s\) \['bogus'\]"),
        (lambda s: s["stages"][0].pop("name"), r"missing key\(s\) \['stages\[0\].name'\]"),
        (lambda s: s["stages"][0].update(epochs="1"), r"stages\[0\].epochs='1'"),
    ],
)
def test_tampered_trainer_json_names_the_problem(saved, edit, message):
    _rewrite(saved, edit)
    with pytest.raises(TrainerStateError, match=message):
        hn.Trainer.load(saved, nano_model())


def test_invalid_json_names_the_position(saved):
    with open(os.path.join(saved, "trainer.json"), "w") as handle:
        handle.write('{"format": 1,\n "settings": ')
    with pytest.raises(TrainerStateError, match="not valid JSON .* line 2 column"):
        hn.Trainer.load(saved, nano_model())


def test_load_from_a_directory_without_state(tmp_path):
    with pytest.raises(TrainerStateError, match="holds no trainer.json"):
        hn.Trainer.load(str(tmp_path), nano_model())


# -- one run per model_dir -----------------------------------------------------------------------
_RUN = """
import os, sys, time
sys.path.insert(0, {repo!r})
from tests.trainer_helpers import make_trainer, nano_model

def hold(event):
    if event["event"] == "log" and event["step"] == 2:
        open({marker!r}, "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists({marker!r} + ".release") and time.monotonic() < deadline:
            time.sleep(0.1)  # the run (and its lock) stays alive while the other one starts

trainer = make_trainer({tmp!r}, model=nano_model())
trainer.add_curriculum_stage("only", [{data!r}], epochs=1)
trainer.add_callback(hold)
summary = trainer.train(checkpoint_dir={run!r}, log_interval=1)
print("TOTAL", summary["total_steps"])
"""


@pytest.mark.slow
def test_a_second_concurrent_run_in_one_model_dir_refuses_naming_the_holder(tmp_path, data):
    import subprocess
    import sys
    import time

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run_dir, marker = str(tmp_path / "run"), str(tmp_path / "holding")

    script = _RUN.format(repo=repo, tmp=str(tmp_path), data=data["a"], run=run_dir, marker=marker)
    first = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not os.path.exists(marker):
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the first run never reached step 2"
            time.sleep(0.2)
        # The second run is this process (another process than the holder's; no second
        # TensorFlow start).
        second = make_trainer(tmp_path)
        second.add_curriculum_stage("only", [data["a"]], epochs=1)
        with pytest.raises(ModelDirLockedError) as refused:
            second.train(checkpoint_dir=run_dir)
        assert f"pid={first.pid}" in str(refused.value)
        open(marker + ".release", "w").close()
        out, err = first.communicate(timeout=240)
        assert first.returncode == 0, err[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    with open(os.path.join(run_dir, "summary.json")) as handle:
        assert f"TOTAL {json.load(handle)['total_steps']}" in out  # the first run's, intact
    again = make_trainer(tmp_path)  # the lock is free again once the holder is done
    again.add_curriculum_stage("only", [data["a"]], epochs=1)
    assert again.train(checkpoint_dir=run_dir)["total_steps"] > 0
