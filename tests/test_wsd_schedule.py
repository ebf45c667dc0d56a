"""Warmup-stable-decay (``lr_schedule='wsd'``): the decay's length as steps or a share, its
three shapes, the decay placed on a stage, bad values refused, and a resume mid-decay giving
the learning rates and weights of an uninterrupted run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from highnoon.training.optimization import Phase, WarmupCosineSchedule, schedule_phase
from highnoon.training.settings import RunOptions
from highnoon.utils.validation import InvalidArgumentError
from tests.trainer_helpers import corpus, make_trainer, write_jsonl

PEAK = 3e-3  # make_trainer's learning rate


def _rates(schedule, steps):
    return [float(schedule(s)) for s in steps]


@pytest.mark.parametrize(
    "shape, remaining",
    [
        ("linear", lambda p: 1 - p),
        ("cosine", lambda p: 0.5 * (1 + math.cos(math.pi * p))),
        ("1-sqrt", lambda p: 1 - math.sqrt(p)),
    ],
)
def test_wsd_is_flat_then_decays_along_its_shape_to_the_floor(shape, remaining):
    schedule = WarmupCosineSchedule(
        2.0, 20, 2, min_ratio=0.1, kind="wsd", decay_start=12, decay_steps=8, decay_shape=shape
    )
    rates = _rates(schedule, range(24))
    assert rates[:2] == pytest.approx([1.0, 2.0])  # warm-up of 2 steps
    assert rates[2:13] == pytest.approx([2.0] * 11)  # stable through the decay's first step
    for step in range(12, 20):
        want = 2.0 * (0.1 + 0.9 * remaining((step - 12) / 8))
        assert rates[step] == pytest.approx(want, rel=1e-5)
    assert rates[20:] == pytest.approx([0.2] * 4)  # at the floor after the horizon


def test_schedule_phase_places_the_decay_by_share_steps_or_stage():
    planned = [30, 50, 20]
    assert schedule_phase(planned, 0, 5, 0.0, decay_steps=0.1) == Phase(100, 5, 90, 10)
    assert schedule_phase(planned, 0, None, 0.05, decay_steps=7) == Phase(100, 5, 93, 7)
    # on a stage: the decay covers it and every stage after it
    assert schedule_phase(planned, 0, 0, 0.0, decay_stage=1) == Phase(100, 0, 30, 70)
    assert schedule_phase(planned, 0, 0, 0.0, decay_stage=2) == Phase(100, 0, 80, 20)
    # a phase of appended stages (from stage 1 on): the decay stage counts from the phase start
    assert schedule_phase(planned, 1, 0, 0.0, decay_stage=2) == Phase(70, 0, 50, 20)
    # a decay stage before the phase: the phase's own last share
    assert schedule_phase(planned, 1, 0, 0.0, decay_steps=0.5, decay_stage=0) == Phase(
        70, 0, 35, 35
    )
    # longer than the run: the whole run decays; a tiny share: one step
    assert schedule_phase(planned, 0, 0, 0.0, decay_steps=500) == Phase(100, 0, 0, 100)
    assert schedule_phase(planned, 0, 0, 0.0, decay_steps=0.001) == Phase(100, 0, 99, 1)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"lr_decay_steps": 0}, r"lr_decay_steps=0 must be an integer >= 1"),
        ({"lr_decay_steps": 1.5}, r"lr_decay_steps=1.5 must be whole steps .* \(0, 1\]"),
        ({"lr_decay_steps": float("nan")}, r"lr_decay_steps=nan must be whole steps"),
        ({"lr_decay_shape": "exp"}, r"lr_decay_shape='exp' must be one of"),
        ({"lr_schedule": "wsd2"}, r"lr_schedule='wsd2' must be one of"),
        (
            {"lr_decay_stage": "anneal"},
            r"lr_decay_stage='anneal' with lr_schedule='cosine': only the 'wsd' schedule",
        ),
    ],
)
def test_bad_wsd_settings_are_refused_at_the_call(options, message):
    with pytest.raises(InvalidArgumentError, match=message):
        RunOptions(**options)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("wsd_data")
    return {n: write_jsonl(str(root / f"{n}.jsonl"), corpus(s, 16)) for s, n in enumerate("ab")}


def _wsd_trainer(tmp_path, sources, **kwargs):
    trainer = make_trainer(
        tmp_path,
        curriculum_strategy=None,
        lr_schedule="wsd",
        warmup_steps=2,
        min_learning_rate_ratio=0.0,
        lr_decay_shape="linear",
        **kwargs,
    )
    trainer.add_curriculum_stage("bulk", [sources["a"]], epochs=2)  # 8 steps
    trainer.add_curriculum_stage("anneal", [sources["b"]], epochs=1)  # 4 steps
    return trainer


def _record_rates(trainer):
    rates: dict[int, float] = {}
    trainer.add_callback(
        lambda e: rates.__setitem__(e["step"], e["learning_rate"]) if e["event"] == "log" else None
    )
    return rates


def test_an_unknown_decay_stage_is_refused_before_any_data_is_read(tmp_path, sources):
    trainer = _wsd_trainer(tmp_path, sources, lr_decay_stage="cooldown")
    with pytest.raises(InvalidArgumentError, match=r"lr_decay_stage='cooldown' is not a stage"):
        trainer.train(save_checkpoints=False)
    assert not (tmp_path / "cache").exists()


class _Stop(Exception):
    pass


def test_a_resume_mid_decay_gives_the_rates_and_weights_of_an_uninterrupted_run(
    tmp_path, sources, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    reference = _wsd_trainer(tmp_path, sources, lr_decay_stage="anneal")
    want = _record_rates(reference)
    reference.train(checkpoint_dir="./full", log_interval=1)
    # steps are counted after they ran: the rate logged at step s is the rate of step s - 1
    decay = [PEAK * (1 - k / 4) for k in range(4)]  # linear over the anneal stage's 4 steps
    assert [want[s] for s in range(9, 13)] == pytest.approx(decay, rel=1e-5)
    assert [want[s] for s in range(3, 9)] == pytest.approx([PEAK] * 6, rel=1e-6)

    def stop(event):
        if event["event"] == "log" and event["step"] == 10:  # two steps into the decay
            raise _Stop()

    cut = _wsd_trainer(tmp_path, sources, lr_decay_stage="anneal", checkpoint_interval=1)
    cut.add_callback(stop)
    with pytest.raises(_Stop):
        cut.train(checkpoint_dir="./cut", log_interval=1)
    resumed = _wsd_trainer(tmp_path, sources, lr_decay_stage="anneal")
    got = _record_rates(resumed)
    summary = resumed.train(checkpoint_dir="./cut", log_interval=1)
    assert summary["total_steps"] == 12 and min(got) == 11
    assert [got[s] for s in (11, 12)] == pytest.approx([want[11], want[12]], rel=1e-6)
    for mine, theirs in zip(resumed.model.weights, reference.model.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_the_anneal_recipe_decays_over_its_anneal_stage_with_a_mixture_schedule(tmp_path):
    import gin

    from highnoon.launch.flags import parse_gin
    from highnoon.training import run as run_lib

    gin.clear_config()
    try:
        parse_gin(["runs/pretrain.gin", "curricula/anneal.gin"], finalize=False)
        stages = gin.query_parameter("run_training.stages")
        assert gin.query_parameter("Trainer.lr_schedule") == "wsd"
        assert gin.query_parameter("Trainer.lr_decay_stage") == "anneal"
    finally:
        gin.clear_config()
    trainer = make_trainer(tmp_path, lr_schedule="wsd", lr_decay_stage="anneal")
    run_lib.add_stages(trainer, stages)
    assert [s.name for s in trainer.stages] == ["bulk", "anneal"]
    assert trainer.stages[1].mixture_schedule.points == ((3.0, 1.0), (1.0, 3.0))
    # the study's one setting ahead on both tasks: the bulk stage warms its row length up
    assert (
        stages[0]["seq_length_warmup_steps"] == 0.25 and stages[0]["seq_length_warmup_start"] == 16
    )
