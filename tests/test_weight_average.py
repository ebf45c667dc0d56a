"""Weight averaging (``weight_average``): the moving average follows its recurrence step by
step, is evaluated beside the live weights and exported, a resume continues it exactly, and the
settings it cannot take are refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest

from highnoon.training.settings import RunOptions
from highnoon.utils.validation import InvalidArgumentError
from tests.trainer_helpers import corpus, make_trainer, write_jsonl

DECAY = 0.5  # large steps of the average, so a wrong recurrence shows at once


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("average_data")
    return write_jsonl(str(root / "a.jsonl"), corpus(0, 24))


def _trainer(tmp_path, source, **kwargs):
    options = {"curriculum_strategy": None, "weight_average": DECAY, "eval_fraction": 0.25}
    trainer = make_trainer(tmp_path, **{**options, **kwargs})
    trainer.add_curriculum_stage("a", [source], epochs=2)  # 20 train samples: 5 steps an epoch
    return trainer


def _live(trainer):
    return [w.numpy().copy() for w in trainer.model.trainable_variables]


def _averages(trainer):
    return [a.numpy() for a in trainer._built.average.averages]


def _recorded(trainer):
    """The live weights after every step, recorded by a callback (log_interval=1)."""
    after_step: list = []
    trainer.add_callback(
        lambda e: after_step.append(_live(trainer)) if e["event"] == "log" else None
    )
    return after_step


def _recurrence(after_step):
    want = after_step[0]  # the first step's weights, then d * a + (1 - d) * w
    for weights in after_step[1:]:
        want = [DECAY * a + (1 - DECAY) * w for a, w in zip(want, weights)]
    return want


def test_two_replicas_keep_the_same_average(tmp_path, source, mirrored):
    trainer = _trainer(tmp_path, source, strategy=mirrored)
    after_step = _recorded(trainer)
    trainer.train(save_checkpoints=False, log_interval=1)
    assert len(after_step) == 10
    for got, expected in zip(_averages(trainer), _recurrence(after_step)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_the_average_follows_its_recurrence_and_is_evaluated_and_exported(tmp_path, source):
    trainer = _trainer(tmp_path, source)
    after_step, evals = [], []

    def record(event):
        if event["event"] == "log":
            after_step.append(_live(trainer))
        if event["event"] == "eval":
            evals.append(event)

    trainer.add_callback(record)
    trainer.train(save_checkpoints=False, log_interval=1, eval_interval=5)
    assert len(after_step) == 10
    for got, expected in zip(_averages(trainer), _recurrence(after_step)):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    # evaluated beside the live weights, which the evaluation leaves exactly as they were
    assert [e["step"] for e in evals] == [5, 10]
    assert all(e["eval_loss_average"] != e["eval_loss"] for e in evals)
    assert len(evals[-1]["eval_loss_by_difficulty_average"]) == len(
        evals[-1]["eval_loss_by_difficulty"]
    )
    for live, last in zip(_live(trainer), after_step[-1]):
        np.testing.assert_array_equal(live, last)
    # exported: a copy holding the averages; the live model stays the live weights
    exported = trainer.export_model()
    assert exported is not trainer.model
    for got, expected in zip(exported.trainable_variables, _averages(trainer)):
        np.testing.assert_array_equal(got.numpy(), expected)
    assert trainer.export_model(average=False) is trainer.model


@pytest.mark.slow
def test_a_resume_continues_the_average_exactly(tmp_path, source, monkeypatch):
    monkeypatch.chdir(tmp_path)
    reference = _trainer(tmp_path, source)
    reference.train(save_checkpoints=False)

    class Stop(Exception):
        pass

    def stop(event):
        if event["event"] == "log" and event["step"] == 7:
            raise Stop()

    cut = _trainer(tmp_path, source, checkpoint_interval=1)
    cut.add_callback(stop)
    with pytest.raises(Stop):
        cut.train(checkpoint_dir="./cut", log_interval=1)
    resumed = _trainer(tmp_path, source)
    assert resumed.train(checkpoint_dir="./cut")["total_steps"] == 10
    for got, want in zip(_averages(resumed), _averages(reference)):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(_live(resumed), _live(reference)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"weight_average": 1.0}, r"weight_average=1.0 must be a finite number in \(0, 1\)"),
        ({"weight_average": 0}, r"weight_average=0 must be a finite number in \(0, 1\)"),
        ({"weight_average": float("nan")}, r"weight_average=nan must be a finite number"),
        (
            {"weight_average": 0.999, "sharding": "optimizer"},
            r"with sharding='optimizer': the sharded step .* keeps no average",
        ),
    ],
)
def test_bad_weight_average_settings_are_refused(options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        RunOptions(**options)


def test_exporting_an_average_that_is_not_kept_is_refused(tmp_path, source):
    trainer = _trainer(tmp_path, source, weight_average=None)
    with pytest.raises(InvalidArgumentError, match=r"keeps no weight average; set weight_average"):
        trainer.export_model(average=True)
    assert trainer.export_model() is trainer.model
