"""Mixture schedules: a stage's weights change from epoch to epoch (linearly through points or
in steps), the same for any host count, counted per dataset in the summary and the curriculum
report, part of the stream fingerprint (a changed schedule is refused on resume), and bad values
refused at ``add_curriculum_stage``."""

from __future__ import annotations

import numpy as np
import pytest

from highnoon.data import MixtureSchedule, register_dataset, unregister_dataset
from highnoon.training.report import format_report, stage_report
from highnoon.training.resume import DataChangedError
from highnoon.utils.validation import InvalidArgumentError, InvalidArgumentTypeError
from tests.trainer_helpers import make_trainer, write_jsonl

SIZES = {"bulk": 40, "clean": 40}  # 80 samples: an epoch of 10 global batches of 8


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedule_data")
    for name, size in SIZES.items():
        register_dataset(
            name, write_jsonl(str(root / f"{name}.jsonl"), [f"{name}{i}" for i in range(size)])
        )
    yield root
    for name in SIZES:
        unregister_dataset(name)


def _plan(root, schedule, epochs=5, **settings):
    options = {"curriculum_strategy": None, "batch_size": 8, "max_seq_length": 8, **settings}
    trainer = make_trainer(root, **options)
    trainer.add_curriculum_stage("mix", ["bulk", "clean"], epochs=epochs, mixture_schedule=schedule)
    (plan,) = trainer.plan()
    return plan


def _per_source(rows: np.ndarray) -> list[int]:
    return np.bincount(np.asarray(rows).ravel() >= 40, minlength=2).tolist()


def test_weights_move_linearly_through_the_points_or_in_steps():
    linear = MixtureSchedule(((1.0, 0.0), (0.5, 0.5), (0.0, 2.0)))
    assert [linear.weights_at(e, 5) for e in range(5)] == [
        (1.0, 0.0), (0.75, 0.25), (0.5, 0.5), (0.25, 1.25), (0.0, 2.0),
    ]  # fmt: skip
    assert linear.weights_at(9, 5) == (0.0, 2.0)  # past the planned epochs: the last
    steps = MixtureSchedule(((3.0, 1.0), (0.0, 1.0)), "steps")
    assert [steps.weights_at(e, 5) for e in range(5)] == [(3.0, 1.0)] * 3 + [(0.0, 1.0)] * 2
    assert [steps.weights_at(e, 4) for e in range(4)] == [(3.0, 1.0)] * 2 + [(0.0, 1.0)] * 2


def test_each_epoch_draws_the_schedules_shares_on_any_host_count(sources):
    plan = _plan(sources, {"points": [[1, 0], [0, 1]]})
    per_epoch = [_per_source(plan.host_rows(e, 0, 1)) for e in range(5)]
    assert per_epoch == [[80, 0], [60, 20], [40, 40], [20, 60], [0, 80]]
    for epoch in range(5):
        halves = [plan.host_rows(epoch, h, 2) for h in range(2)]
        np.testing.assert_array_equal(np.concatenate(halves, axis=1), plan.host_rows(epoch, 0, 1))
    assert plan.samples_per_dataset() == {"bulk": 200, "clean": 200}
    steps = _plan(sources, {"points": [[1, 1], [0, 1]], "shape": "steps"}, epochs=4)
    assert [_per_source(steps.host_rows(e, 0, 1)) for e in range(4)] == [[40, 40]] * 2 + [
        [0, 80]
    ] * 2


def test_a_sources_windows_continue_so_every_sample_comes_before_any_repeats(sources):
    plan = _plan(sources, {"points": [[3, 1], [1, 3]]}, epochs=2)  # clean: 20, then 60 samples
    first, second = (plan.host_rows(e, 0, 1).ravel() for e in range(2))
    clean0 = set(first[first >= 40].tolist())
    counts = np.bincount(second[second >= 40] - 40, minlength=40)
    assert len(clean0) == 20
    # the second epoch: one whole pass plus the 20 samples the first epoch did not see
    assert sorted(set(counts.tolist())) == [1, 2]
    assert set((np.flatnonzero(counts == 2) + 40).tolist()) == set(range(40, 80)) - clean0


def test_the_report_shows_each_epochs_samples_and_shares(sources):
    plan = _plan(sources, {"points": [[1, 0], [0, 1]]}, epochs=3)
    report = stage_report(plan, samples=0)
    assert report["mixture"] == [
        {"epoch": 0, "shares": {"bulk": 1.0, "clean": 0.0}, "samples": {"bulk": 80, "clean": 0}},
        {"epoch": 1, "shares": {"bulk": 0.5, "clean": 0.5}, "samples": {"bulk": 40, "clean": 40}},
        {"epoch": 2, "shares": {"bulk": 0.0, "clean": 1.0}, "samples": {"bulk": 0, "clean": 80}},
    ]
    text = format_report([report])
    assert "  mixture: samples per dataset entry (share of the epoch)" in text
    assert "      1  bulk 40 (0.500), clean 40 (0.500)" in text


def test_the_summary_counts_per_dataset_and_a_changed_schedule_is_refused_on_resume(
    sources, tmp_path
):
    def trainer(schedule):
        t = make_trainer(tmp_path, curriculum_strategy=None, batch_size=8, max_seq_length=8)
        t.add_curriculum_stage("mix", ["bulk", "clean"], epochs=2, mixture_schedule=schedule)
        return t

    summary = trainer({"points": [[3, 1], [1, 3]]}).train(checkpoint_dir=str(tmp_path / "ck"))
    (stage,) = summary["stages_completed"]
    assert stage["samples_per_dataset"] == {"bulk": 80, "clean": 80}  # 60 + 20, 20 + 60
    with pytest.raises(DataChangedError, match="stage index 0: 'mix'"):
        trainer({"points": [[3, 1], [1, 1]]}).train(checkpoint_dir=str(tmp_path / "ck"))


@pytest.mark.parametrize(
    "datasets, schedule, epochs, error, message",
    [
        (["bulk", "clean"], {"points": [[1, -1], [0, 1]]}, 2, InvalidArgumentError,
         r"mixture_schedule\['points'\]\[0\]\[1\]=-1 must be a finite number >= 0"),
        (["bulk", "clean"], {"points": [[1, float("nan")], [0, 1]]}, 2, InvalidArgumentError,
         r"\['points'\]\[0\]\[1\]=nan must be a finite number"),
        (["bulk", "clean"], {"points": [[1, 0, 1], [0, 1, 1]]}, 2, InvalidArgumentError,
         r"has 3 weight\(s\) but the stage has 2 dataset entries"),
        (["bulk", "clean"], {"points": [[1, 1]]}, 2, InvalidArgumentError,
         r"at least two weight vectors"),
        (["bulk", "clean"], {"points": [[0, 0], [0, 1]]}, 2, InvalidArgumentError, "sums to 0"),
        (["bulk", "clean"], {"points": [[1, 0], [0, 1]], "shape": "exp"}, 2,
         InvalidArgumentError, r"\['shape'\]='exp' must be one of"),
        (["bulk", "clean"], {"weights": [[1, 0], [0, 1]]}, 2, InvalidArgumentError,
         r"unknown key\(s\) \['weights'\]"),
        (["bulk", "clean"], {"points": "1,0"}, 2, InvalidArgumentTypeError,
         "must be a list of weight vectors"),
        ([("bulk", 1.0), ("clean", 1.0)], {"points": [[1, 0], [0, 1]]}, 2,
         InvalidArgumentError, "the schedule holds every weight"),
        (["bulk"], {"points": [[1], [2]]}, 2, InvalidArgumentError, "two or more dataset entries"),
        (["bulk", "clean"], {"points": [[1, 0], [0, 1]]}, 1, InvalidArgumentError,
         "needs at least 2"),
    ],
)  # fmt: skip
def test_bad_schedules_are_refused_at_the_call(sources, datasets, schedule, epochs, error, message):
    trainer = make_trainer(sources)
    with pytest.raises(error, match=message):
        trainer.add_curriculum_stage("mix", datasets, epochs=epochs, mixture_schedule=schedule)
    assert trainer.stages == []


def test_a_stage_without_epochs_is_checked_when_planned(sources):
    trainer = make_trainer(sources, curriculum_strategy=None, batch_size=8, max_seq_length=8)
    trainer.add_curriculum_stage(
        "mix", ["bulk", "clean"], mixture_schedule={"points": [[1, 0], [0, 1]]}
    )
    with pytest.raises(InvalidArgumentError, match="the stage has 1 epoch; give it epochs >= 2"):
        trainer.plan(epochs_per_stage=1)


def test_a_saved_trainer_loads_its_stages_schedule(sources, tmp_path):
    from highnoon.training.trainer import Trainer
    from tests.trainer_helpers import nano_model

    trainer = make_trainer(tmp_path, curriculum_strategy=None, batch_size=8, max_seq_length=8)
    schedule = {"points": [[1, 0], [0, 1]], "shape": "steps"}
    trainer.add_curriculum_stage("mix", ["bulk", "clean"], epochs=2, mixture_schedule=schedule)
    trainer.save(str(tmp_path / "saved"))
    loaded = Trainer.load(str(tmp_path / "saved"), nano_model())
    assert loaded.stages[0].mixture_schedule == MixtureSchedule(((1.0, 0.0), (0.0, 1.0)), "steps")
