"""Packing on demand through the Trainer (issue 21), with windows small enough that an epoch
spans many of them: the loop runs each epoch until its stream ends, never reads every
sample's length, reports the steps it ran against the estimated horizon, and a resume
continues from the saved cursor without packing the windows before it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from highnoon.data import packing
from highnoon.training import stage_plan
from highnoon.training.stage_plan import StagePlan
from tests.trainer_helpers import (
    assert_exact_resume,
    corpus,
    make_trainer,
    nano_model,
    train_until,
    write_jsonl,
)


@pytest.fixture()
def data(tmp_path):
    return write_jsonl(
        str(tmp_path / "a.jsonl"), corpus(0, 96, min_len=1, max_len=6)
    )  # rows of 1-4 samples


@pytest.fixture()
def small_windows(monkeypatch):
    """Windows of 8 samples (about 2 rows of 32), and a horizon estimated from 2 of them."""
    monkeypatch.setattr(packing, "MIN_WINDOW", 8)
    monkeypatch.setattr(packing, "ROWS_PER_WINDOW", 2)
    monkeypatch.setattr(stage_plan, "ESTIMATE_WINDOWS", 2)


def _trainer(tmp_path, data, model=None):
    t = make_trainer(tmp_path, model=model, pack=True, max_seq_length=32)
    t.add_curriculum_stage("only", [data], epochs=3)
    return t


def _weights(model) -> list[np.ndarray]:
    return [w.numpy() for w in model.weights]


@pytest.mark.slow
def test_epochs_run_until_their_stream_ends_without_reading_every_length(
    tmp_path, data, small_windows, monkeypatch
):
    def refuse(store):
        raise AssertionError("the run read every sample's length")

    monkeypatch.setattr(stage_plan, "stored_lengths", refuse)
    estimate = stage_plan.estimate_packed_rows
    # A horizon far off the real steps: the loop must not rely on it.
    monkeypatch.setattr(stage_plan, "estimate_packed_rows", lambda *a, **k: estimate(*a, **k) // 2)
    trainer = _trainer(tmp_path, data)
    events = []
    trainer.add_callback(events.append)
    summary = trainer.train(save_checkpoints=False, log_interval=1)
    monkeypatch.undo()
    plan = trainer._plans[0]
    assert plan.packing_window == 8
    exact = [plan.packed_epoch(e).num_steps for e in range(3)]  # the whole-epoch packing
    assert summary["total_steps"] == sum(exact)
    (begin,) = [e for e in events if e["event"] == "train_begin"]
    assert begin["total_steps"] == plan.planned_steps()  # the horizon: an estimate
    assert plan.planned_steps() == sum(plan.estimated_epoch_steps(e) for e in range(3))
    assert plan.planned_steps() < sum(exact)  # about half: the halved estimate
    (stage,) = summary["stages_completed"]
    assert stage["steps"] == sum(exact)  # what ran is what is reported
    streams = [plan.epoch_stream(e) for e in range(3)]
    assert stage["samples_seen"] == sum(s.size for s in streams)
    lengths = packing.segment_lengths(plan.lengths, 32)
    assert stage["tokens_seen"] == summary["tokens_seen"]
    assert stage["tokens_seen"] == sum(int(lengths[s].sum()) for s in streams)
    ends = [e["step"] for e in events if e["event"] == "epoch_end"]
    assert ends == list(np.cumsum(exact))


@pytest.mark.slow
def test_a_resume_continues_from_the_saved_cursor_bit_identically(
    tmp_path, data, small_windows, monkeypatch
):
    reference = _trainer(tmp_path, data, nano_model())
    expected = reference.train(checkpoint_dir=str(tmp_path / "full"), log_interval=1)
    first_epoch = reference._plans[0].packed_epoch(0).num_steps
    stop_at = first_epoch + 7  # mid epoch 1, several windows in

    cut = _trainer(tmp_path, data, nano_model())
    train_until(cut, stop_at, str(tmp_path / "cut"))

    cursors, packed_windows = [], []
    begin, pack = StagePlan.begin_packed_epoch, packing.PackedStream._pack

    def record_begin(plan, epoch, cursor=None):
        stream = begin(plan, epoch, cursor)
        cursors.append((epoch, cursor, stream))
        return stream

    def record_pack(stream, first, last):
        packed_windows.append((stream, first))
        return pack(stream, first, last)

    monkeypatch.setattr(StagePlan, "begin_packed_epoch", record_begin)
    monkeypatch.setattr(packing.PackedStream, "_pack", record_pack)
    resumed = _trainer(tmp_path, data, nano_model())
    summary = resumed.train(checkpoint_dir=str(tmp_path / "cut"), log_interval=1)
    monkeypatch.undo()
    epoch, cursor, first_stream = cursors[0]
    assert epoch == 1 and cursor.step == 7 and cursor.window > 0
    plan = resumed._plans[0]
    packed = plan.packed_epoch(1)  # the cursor's window begins at its first row
    stream = plan.epoch_stream(1).tolist()
    first_rows = {}  # window -> its first row: a row's first segment names its window
    for row in range(packed.num_rows):
        lo = packed.row_ptr[row]
        first_rows.setdefault(stream.index(int(packed.sample[lo])) // 8, row)
    assert first_rows[cursor.window] == cursor.row <= 7 * 4
    # The resumed epoch packed no window before the cursor's.
    assert min(first for s, first in packed_windows if s is first_stream) == cursor.window
    assert summary["total_steps"] == expected["total_steps"]
    assert summary["stages_completed"] == expected["stages_completed"]
    for got, want in zip(_weights(resumed.model), _weights(reference.model)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_a_packed_checkpoint_of_the_previous_stream_rule_is_refused(tmp_path, data, monkeypatch):
    """Packed epochs moved to the blocked keyed order (``highnoon.stream/4``, packed stages
    only): a packed run checkpointed under ``highnoon.stream/3`` does not resume silently, and
    ``allow_data_change`` restarts the stage on the new stream."""
    from highnoon.training.resume import DataChangedError

    monkeypatch.setattr(stage_plan, "PACKED_STREAM_FORMAT", "highnoon.stream/3")
    old = _trainer(tmp_path, data)
    old.train(checkpoint_dir=str(tmp_path / "run"), log_interval=1)
    monkeypatch.undo()
    again = _trainer(tmp_path, data)
    with pytest.raises(
        DataChangedError, match=r"format: 'highnoon.stream/3' -> 'highnoon.stream/4'"
    ):
        again.train(checkpoint_dir=str(tmp_path / "run"))
    assert json.loads(again._plans[0].stream_fingerprint()["stream"])["format"] == (
        "highnoon.stream/4"
    )
    restarted = make_trainer(tmp_path, pack=True, max_seq_length=32, allow_data_change=True)
    restarted.add_curriculum_stage("only", [data], epochs=3)
    summary = restarted.train(checkpoint_dir=str(tmp_path / "run"), log_interval=1)
    (change,) = summary["data_changes"]
    assert change["stage"] == "only" and change["changed"] == ["stream"]


@pytest.mark.slow
def test_a_resume_across_a_packed_stage_boundary_is_bit_identical(tmp_path, data, small_windows):
    """Stopped two steps into the second packed stage: the new stage's cursor started afresh
    (not the first stage's last one), and the resumed run ends where an uninterrupted one does."""

    def trainer(model):
        t = make_trainer(tmp_path, model=model, pack=True, max_seq_length=32)
        t.add_curriculum_stage("one", [data], epochs=1)
        t.add_curriculum_stage("two", [data], epochs=2)
        return t

    assert_exact_resume(trainer, tmp_path, lambda whole: whole["stages_completed"][0]["steps"] + 2)
