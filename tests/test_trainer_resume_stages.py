"""A used model_dir as a user meets it: another curriculum is refused, appended stages say so and
get their own learning-rate schedule, a finished run run again says it is complete, and a
notebook calling train() again and again never retraces the start-up check."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import tensorflow as tf

from highnoon.distribute import consistency
from highnoon.training.optimization import WarmupCosineSchedule
from highnoon.training.resume import DataChangedError
from highnoon.training.trainer import Trainer
from tests.trainer_helpers import corpus, make_trainer, nano_model, write_jsonl

PEAK = 3e-3  # make_trainer's learning rate


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Three 16-sample sources (4 steps per epoch at batch 4), shared by the module."""
    root = tmp_path_factory.mktemp("sources")
    return {
        name: write_jsonl(str(root / f"{name}.jsonl"), corpus(seed, 16))
        for seed, name in enumerate("abc")
    }


@pytest.fixture()
def data(tmp_path, monkeypatch, sources):
    """The sources; the working directory is ``tmp_path``, so ``./checkpoints`` is the
    documented relative default."""
    monkeypatch.chdir(tmp_path)
    return sources


def _copy_run(run: str, to: str) -> None:
    """A module fixture's finished run, copied for one test to continue or refuse (checkpoints
    name their files relative to their directory, so a copy resumes like the original)."""
    shutil.copytree(run, to)


@pytest.fixture(scope="module")
def finished_ab(tmp_path_factory, sources) -> str:
    """A finished run of stages a and b (8 steps): the directory tests copy and change."""
    root = tmp_path_factory.mktemp("finished_ab")
    first = _trainer(root, [("a", "a"), ("b", "b")], sources)
    assert first.train(checkpoint_dir=str(root / "ck"))["total_steps"] == 8
    return str(root / "ck")


@pytest.fixture(scope="module")
def finished_a(tmp_path_factory, sources) -> tuple[str, str, dict[str, list[float]]]:
    """A finished run of stage a (4 steps) and its ``Trainer.save``: (checkpoint dir, saved
    dir, learning rate of every step by stage)."""
    root = tmp_path_factory.mktemp("finished_a")
    first = _trainer(root, [("a", "a")], sources)
    rates = _rates(first)
    first.train(checkpoint_dir=str(root / "ck"), log_interval=1)
    first.save(str(root / "saved"))
    return str(root / "ck"), str(root / "saved"), rates


def _trainer(tmp_path, stages, data, **kwargs):
    trainer = make_trainer(tmp_path, warmup_steps=2, **kwargs)
    for name, source in stages:
        trainer.add_curriculum_stage(name, [data[source]], epochs=1)
    return trainer


def _rates(trainer):
    """The learning rate of every step (log events at log_interval=1), by stage."""
    seen: dict[str, list[float]] = {}
    trainer.add_callback(
        lambda e: (
            seen.setdefault(e["stage"], []).append(e["learning_rate"])
            if e["event"] == "log"
            else None
        )
    )
    return seen


# -- item: another curriculum in a used directory ---------------------------------------------
def test_a_different_curriculum_in_a_used_directory_is_refused(tmp_path, data, finished_ab):
    _copy_run(finished_ab, "ck")  # stages a and b, 8 steps
    other = _trainer(tmp_path, [("x", "a"), ("y", "c"), ("z", "c")], data)
    with pytest.raises(DataChangedError) as caught:
        other.train(checkpoint_dir="./ck")
    message = str(caught.value)
    assert f"the run in {tmp_path / 'ck'} completed stages ['a', 'b']" in message
    assert "stage index 0: 'a' -> 'x' (the stage's name changed)" in message
    assert (
        "stage index 1: 'b' -> 'y' (the stage's name; the stage's data (token store content) "
        "changed)"
    ) in message
    assert "fresh checkpoint_dir" in message and "allow_data_change=True" in message
    # Fewer stages than the run completed: refused too, never "success" at once.
    one = _trainer(tmp_path, [("p", "a")], data)
    with pytest.raises(DataChangedError, match=r"stage index 1: 'b' -> none \(this trainer has 1"):
        one.train(checkpoint_dir="./ck")
    assert tf.train.latest_checkpoint("ck").endswith("ckpt-8")  # nothing written


def test_allow_data_change_keeps_the_trained_stages_and_records_them(tmp_path, data, finished_ab):
    _copy_run(finished_ab, "ck")  # stages a and b, 8 steps
    other = _trainer(tmp_path, [("x", "a"), ("b", "b"), ("z", "c")], data, allow_data_change=True)
    summary = other.train(checkpoint_dir="./ck")
    assert summary["total_steps"] == 12  # only z trained
    assert [s["name"] for s in summary["stages_completed"]] == ["a", "b", "z"]
    assert summary["data_changes"] == [
        {
            "stage": "x",
            "index": 0,
            "previous_name": "a",
            "step": 8,
            "completed": True,
            "changed": ["name"],
        }
    ]
    # The accepted curriculum is the record now: the same trainer runs again without refusal.
    again = _trainer(tmp_path, [("x", "a"), ("b", "b"), ("z", "c")], data)
    assert again.train(checkpoint_dir="./ck")["total_steps"] == 12
    # Fewer stages than the run completed: accepted and recorded, nothing trained.
    fewer = _trainer(tmp_path, [("x", "a"), ("b", "b")], data, allow_data_change=True)
    summary = fewer.train(checkpoint_dir="./ck")
    (dropped,) = summary["data_changes"][1:]
    assert (dropped["index"], dropped["previous_name"], dropped["stage"]) == (2, "z", None)
    assert dropped["changed"] == ["missing"] and summary["total_steps"] == 12


# -- appended stages ---------------------------------------------------------------------------
def test_a_stage_added_after_load_of_a_finished_run_gets_its_own_schedule(
    tmp_path, data, finished_a, capsys
):
    checkpoints, saved, first_rates = finished_a
    _copy_run(checkpoints, "checkpoints")  # train()'s default checkpoint_dir, ./checkpoints
    _copy_run(saved, "saved")
    capsys.readouterr()
    loaded = Trainer.load("./saved", nano_model(), verbose=True)
    loaded.add_curriculum_stage("c", [data["c"]], epochs=1)
    rates = _rates(loaded)
    summary = loaded.train(log_interval=1)
    assert [s["name"] for s in summary["stages_completed"]] == ["a", "c"]
    # Stage c (4 steps) warms up and decays like a fresh run of 4 steps: the rates of a.
    assert rates["c"] == pytest.approx(first_rates["a"], rel=1e-6)
    assert rates["c"][0] == pytest.approx(PEAK / 2, rel=1e-6)  # first of 2 warm-up steps
    lines = capsys.readouterr().err.splitlines()
    assert "resuming at step 4 after the finished stage(s) ['a']; appending stage(s) ['c']" in lines


def test_continue_schedule_extends_the_old_schedule_and_dir_latest_is_the_dir(
    tmp_path, data, finished_a
):
    _copy_run(finished_a[0], "ck")  # stage a, 4 steps
    more = _trainer(tmp_path, [("a", "a"), ("c", "c")], data, continue_schedule=True)
    rates = _rates(more)
    summary = more.train(resume_from="ck/latest", checkpoint_dir="./ck2", log_interval=1)
    assert summary["total_steps"] == 8 and summary["checkpoints"][-1].endswith("ck2/ckpt-8")
    schedule = WarmupCosineSchedule(PEAK, total_steps=8, warmup_steps=2)
    assert rates["c"] == pytest.approx([float(schedule(s)) for s in range(4, 8)], rel=1e-6)
    assert rates["c"][-1] == pytest.approx(
        PEAK * 0.1 + PEAK * 0.9 * 0.5 * (1 + np.cos(np.pi * 5 / 6))
    )


def test_the_schedule_phase_reaches_a_function_traced_before(tmp_path):
    phase = tf.Variable([0, 10, 0], dtype=tf.int64)
    schedule = WarmupCosineSchedule(1.0, 10, 0, min_ratio=0.0, phase=phase)
    rate = tf.function(schedule)
    assert float(rate(tf.constant(10))) == pytest.approx(0.0, abs=1e-7)  # decayed
    schedule.set_phase(start_step=10, total_steps=4, warmup_steps=2)
    assert float(rate(tf.constant(10))) == pytest.approx(0.5)  # warm-up step 1 of 2
    assert float(rate(tf.constant(11))) == pytest.approx(1.0)
    assert rate.experimental_get_tracing_count() == 1


# -- a finished run, run again; a notebook ----------------------------------------------------
def test_a_notebook_calling_train_again_sees_no_retracing_and_complete_runs(
    tmp_path, data, capsys, caplog
):
    caplog.set_level(logging.WARNING, logger="tensorflow")
    trainer = _trainer(tmp_path, [("a", "a")], data, verbose=True)
    for _ in range(6):
        trainer.train(save_checkpoints=False)  # each call trains the stage again
    capsys.readouterr()
    assert trainer.train()["total_steps"] == 4  # ./checkpoints: trains it once more
    for _ in range(2):  # then the run there is complete
        summary = trainer.train()
        assert summary["total_steps"] == 4 and summary["tokens_seen"] > 0
    assert [r.getMessage() for r in caplog.records if "retracing" in r.getMessage()] == []
    lines = capsys.readouterr().err.splitlines()
    complete = [line for line in lines if line.startswith("already complete")]
    assert complete == ["already complete: stage(s) ['a'] trained, 4 steps; nothing to train"] * 2
    assert len([line for line in lines if line.startswith("done:")]) == 1  # the training call


def test_the_host_check_is_traced_once_per_table_shape(mirrored):
    parts = {"config": "c", "data": "d", "curriculum": "k"}
    consistency.verify_consistent(mirrored, parts)
    gather = consistency.all_gather_fn(mirrored)
    traced = gather.experimental_get_tracing_count()
    for _ in range(5):
        consistency.verify_consistent(mirrored, parts)
    assert gather.experimental_get_tracing_count() == traced
