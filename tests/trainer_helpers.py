"""Small real data and models for Trainer tests (built on the fly, no downloads)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import highnoon as hn
from highnoon.training.trainer import Trainer


def write_jsonl(path: str, texts: list[str]) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}) + "\n")
    return path


def corpus(seed: int, count: int, min_len: int = 4, max_len: int = 40) -> list[str]:
    """Deterministic texts of varied length (so the size-based curriculum has an order)."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "x = 1", "def f():", "return y", "{[()]}", "42"]
    return [
        " ".join(rng.choice(words, size=int(rng.integers(min_len, max_len)))) for _ in range(count)
    ]


# One block: what the Trainer tests show (loops, resumes, curricula, checkpoints) does not depend
# on depth, and a step traces in about 60% of nano's two blocks' time. The model tests build
# every preset; tests that need nano's own shape create it themselves.
LAYERS = 1


def nano_model(seq: int = 32):
    return hn.create_model("highnoon-nano", max_seq_length=seq, num_layers=LAYERS)


def make_trainer(tmp_path, model=None, **kwargs) -> Trainer:
    options = {
        "learning_rate": 3e-3,
        "batch_size": 4,
        "max_seq_length": 32,
        "data_cache_dir": os.path.join(str(tmp_path), "cache"),
        "verbose": False,
        "eval_fraction": 0.0,
        "deterministic_ops": True,
        # The Trainer trains without a curriculum by default; these tests exercise one.
        "curriculum_strategy": "size_based",
    }
    options.update(kwargs)
    return Trainer(model if model is not None else nano_model(), **options)


class StopTraining(Exception):
    """Raised by a callback to stop a run as a crash would (``train_until``)."""


def train_until(trainer: Trainer, stop_step: int, checkpoint_dir: str) -> None:
    """Train ``trainer`` (logging every step) until the log of global step ``stop_step``, then
    stop as a crash would, leaving the checkpoints written so far."""

    def stop(event):
        if event["event"] == "log" and event["step"] == stop_step:
            raise StopTraining

    trainer.add_callback(stop)
    with pytest.raises(StopTraining):
        trainer.train(checkpoint_dir=checkpoint_dir, log_interval=1)


def assert_exact_resume(make, tmp_path, stop_at) -> dict:
    """Train ``make(model)`` whole, then again stopped at the log of ``stop_at`` (a step, or a
    function of the whole run's summary) and resumed by a fresh Trainer; the resumed run must end
    with the same steps, stages and weights, bit for bit. Returns the whole run's summary."""
    reference = make(nano_model())
    expected = reference.train(checkpoint_dir=str(tmp_path / "full"), log_interval=1)
    step = stop_at(expected) if callable(stop_at) else stop_at
    train_until(make(nano_model()), step, str(tmp_path / "cut"))
    resumed = make(nano_model())
    summary = resumed.train(checkpoint_dir=str(tmp_path / "cut"), log_interval=1)
    assert summary["total_steps"] == expected["total_steps"]
    assert summary["stages_completed"] == expected["stages_completed"]
    for got, want in zip(resumed.model.weights, reference.model.weights):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    return expected
