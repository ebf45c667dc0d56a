"""Preemption in one process: SIGTERM stops at the next step, saved, with the restart code; the
relaunch resumes exactly; goodput counts the restart. The multi-worker proofs are in
test_preemption_multiworker.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from highnoon.training.goodput import Goodput, flops_per_token
from highnoon.training.preemption import EXIT_RESTART, Preempted, PreemptionWatcher
from highnoon.utils.validation import InvalidArgumentError
from tests.trainer_helpers import corpus, make_trainer, nano_model, write_jsonl


@pytest.fixture()
def data(tmp_path):
    return write_jsonl(str(tmp_path / "a.jsonl"), corpus(0, 64))


def _trainer(tmp_path, data, **kwargs):
    trainer = make_trainer(tmp_path, model=nano_model(), **kwargs)
    trainer.add_curriculum_stage("only", [data], epochs=2)
    return trainer


def _signal_at(step: int, signum: int = signal.SIGTERM, times: int = 1):
    def callback(event):
        if event["event"] == "log" and event["step"] == step:
            for _ in range(times):
                os.kill(os.getpid(), signum)

    return callback


def test_sigterm_saves_at_the_next_step_and_exits_with_the_restart_code(tmp_path, data):
    run_dir = str(tmp_path / "run")
    reference = _trainer(tmp_path, data)
    expected = reference.train(save_checkpoints=False, log_interval=1)
    expected_weights = [w.numpy() for w in reference.model.weights]

    trainer = _trainer(tmp_path, data)
    events = []
    trainer.add_callback(events.append)
    trainer.add_callback(_signal_at(4))
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as caught:
        trainer.train(checkpoint_dir=run_dir, log_interval=1, checkpoint_interval=1000)
    assert isinstance(caught.value, SystemExit) and caught.value.code == EXIT_RESTART == 42
    (preempted,) = [e for e in events if e["event"] == "preempted"]
    assert preempted["step"] == 5 and preempted["signal"] == "SIGTERM"
    assert preempted["checkpoint"] == os.path.join(run_dir, "ckpt-5")
    assert tf.train.latest_checkpoint(run_dir).endswith("ckpt-5")
    assert signal.getsignal(signal.SIGTERM) == handler  # the watcher restored it

    relaunched = _trainer(tmp_path, data)
    summary = relaunched.train(checkpoint_dir=run_dir, log_interval=1)
    assert summary["total_steps"] == expected["total_steps"]
    for got, want in zip(relaunched.model.weights, expected_weights):
        np.testing.assert_array_equal(got.numpy(), want)
    goodput = summary["goodput"]
    assert goodput["restarts"] == 1 and goodput["steps_replayed"] == 0
    with open(os.path.join(run_dir, "goodput.json")) as handle:
        assert json.load(handle)["finished"] is True


def test_a_second_ctrl_c_aborts_without_the_save(tmp_path, data):
    run_dir = str(tmp_path / "run")
    trainer = _trainer(tmp_path, data)
    trainer.add_callback(_signal_at(3, signal.SIGINT, times=2))
    with pytest.raises(KeyboardInterrupt):
        trainer.train(checkpoint_dir=run_dir, log_interval=1)
    assert tf.train.latest_checkpoint(run_dir) is None  # nothing saved after the abort


_CRASHING_RUN = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from tests.trainer_helpers import make_trainer, nano_model

def crash(event):
    if event["event"] == "log" and event["step"] == 7:
        os.kill(os.getpid(), signal.SIGKILL)  # after step 7; the newest checkpoint is ckpt-4

trainer = make_trainer({tmp!r}, model=nano_model())
trainer.add_curriculum_stage("only", [{data!r}], epochs=2)
trainer.add_callback(crash)
trainer.train(checkpoint_dir={run!r}, log_interval=1, checkpoint_interval=4)
"""


@pytest.mark.slow
def test_a_killed_attempt_counts_the_steps_it_trained_past_its_checkpoint(tmp_path, data):
    run_dir = str(tmp_path / "run")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = _CRASHING_RUN.format(repo=repo, tmp=str(tmp_path), data=data, run=run_dir)
    killed = subprocess.run([sys.executable, "-c", script], timeout=600, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert tf.train.latest_checkpoint(run_dir).endswith("ckpt-4")
    summary = _trainer(tmp_path, data).train(checkpoint_dir=run_dir, log_interval=1)
    goodput = summary["goodput"]
    assert goodput["restarts"] == 1 and goodput["steps_replayed"] == 3  # steps 5, 6, 7 again
    assert goodput["lost_to_restarts_seconds"] > 0
    for bucket in ("productive_step", "compilation", "data", "checkpoint", "evaluation"):
        assert goodput[f"{bucket}_seconds"] >= 0
    assert 0 < goodput["goodput"] < 1


def test_grace_period_must_be_positive(tmp_path):
    with pytest.raises(InvalidArgumentError, match="preemption_grace_seconds=0"):
        make_trainer(tmp_path, preemption_grace_seconds=0)


def test_watcher_restores_handlers_and_ignores_other_threads():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionWatcher(5.0) as watcher:
        assert signal.getsignal(signal.SIGTERM) == watcher._on_signal
        watcher.request("test")
        assert watcher.requested and watcher.signal_name == "test"
    assert signal.getsignal(signal.SIGTERM) == before


def test_goodput_record_round_trip(tmp_path):
    first = Goodput(str(tmp_path))
    first.add_steps("compilation", 2.0, 1, 1)
    first.add_steps("productive_step", 3.0, 3, 4)
    first.write()  # not finished: a crash
    second = Goodput(str(tmp_path))
    second.resumed_at(2)
    report = second.report()
    assert report["restarts"] == 1 and report["steps_replayed"] == 2
    assert report["lost_to_restarts_seconds"] == pytest.approx(2.0)  # 2 steps at 1 s each
    assert report["compilation_seconds"] == pytest.approx(2.0)


def test_flops_per_token_formula():
    model = nano_model(seq=32)
    config = {k: getattr(model.config, k) for k in model.config.to_dict()}
    n = model.config.num_parameters()
    layers, width = model.config.num_layers, model.config.d_model
    assert flops_per_token(config, 32) == 6 * n + 12 * layers * width * 32
    assert flops_per_token({"not": "a highnoon model"}, 32) is None
