"""Sequence-length warm-up: the schedule, the stream it feeds (same on 1 and 2 hosts), the compiled
shapes, exact resume across a length change, and every bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest

from highnoon.curriculum import SequenceLengthWarmup
from highnoon.data import build_token_store
from highnoon.data.pipeline import HostBatcher
from highnoon.training.settings import StageSettings
from highnoon.training.stage_plan import StagePlan
from highnoon.utils.validation import InvalidArgumentError
from tests.trainer_helpers import corpus, make_trainer, nano_model, write_jsonl


# -- the schedule ---------------------------------------------------------------------------
def test_lengths_are_the_start_doubled_then_the_maximum_on_the_floored_linear_ramp():
    warmup = SequenceLengthWarmup(max_length=256, steps=100, start_length=32)
    assert warmup.lengths == (32, 64, 128, 256)
    # length l begins at ceil((l - 32) * 100 / 224)
    assert warmup.begins == (0, 15, 43, 100)
    for step in range(130):
        target = 32 + 224 * step // 100
        expected = max(length for length in warmup.lengths if length <= target)
        assert warmup.length_at(step) == (256 if step >= 100 else expected), step
    assert [warmup.next_change(s) for s in (0, 14, 15, 42, 43, 99, 100, 500)] == [
        15, 15, 43, 43, 100, 100, None, None,
    ]  # fmt: skip
    assert warmup.steps_per_length() == {32: 15, 64: 28, 128: 57}


def test_a_maximum_that_is_not_a_power_of_two_is_the_last_length():
    warmup = SequenceLengthWarmup(max_length=100, steps=92, start_length=8)
    assert warmup.lengths == (8, 16, 32, 64, 100)
    assert warmup.length_at(91) == 64 and warmup.length_at(92) == 100


def test_no_warmup_is_the_maximum_at_every_step():
    warmup = SequenceLengthWarmup(max_length=128, steps=0, start_length=512)
    assert not warmup.enabled and warmup.lengths == (128,)
    assert {warmup.length_at(s) for s in range(50)} == {128}
    assert warmup.next_change(0) is None
    warmup.check_stage("s", 1)  # nothing to refuse


@pytest.mark.parametrize(
    ("args", "stage_steps", "message"),
    [
        (
            (32, 10, 32),
            100,
            r"seq_length_warmup_start=32 must be below max_seq_length=32: the warm-up grows rows",
        ),
        (
            (32, 50, 8),
            40,
            r"seq_length_warmup_steps=50 is longer than stage 's' \(40 steps\); the rows would "
            r"never reach max_seq_length=32. Use at most 40 warm-up steps",
        ),
        (
            (64, 2, 8),
            3,
            r"stage 's' has 3 steps, too few for the sequence-length warm-up's 4 lengths "
            r"\[8, 16, 32, 64\]",
        ),
        (
            (72, 4, 8),
            100,
            r"seq_length_warmup_steps=4 is too short for the warm-up lengths \[8, 16, 32, 64, 72\] "
            r"of stage 's': length\(s\) \[64\] would get no step. Use at least 8 warm-up steps",
        ),
        (
            (72, 4, 8),
            6,
            r"length\(s\) \[64\] would get no step. The stage \(6 steps\) is too small for "
            r"them: raise seq_length_warmup_start, or give the stage more epochs or data",
        ),
    ],
)
def test_bad_warmups_are_refused_with_the_fix(args, stage_steps, message):
    with pytest.raises(InvalidArgumentError, match=message):
        SequenceLengthWarmup(*args).check_stage("s", stage_steps)


def test_the_minimum_named_in_the_error_is_enough():
    SequenceLengthWarmup(72, 8, 8).check_stage("s", 100)
    assert all(n > 0 for n in SequenceLengthWarmup(72, 8, 8).steps_per_length().values())


def test_settings_refuse_a_start_at_the_maximum_at_the_call(tmp_path):
    with pytest.raises(InvalidArgumentError, match="seq_length_warmup_start=64 must be below"):
        StageSettings(max_seq_length=64, seq_length_warmup_steps=10)
    StageSettings(max_seq_length=64, seq_length_warmup_steps=0)  # off: any start is fine
    trainer = make_trainer(tmp_path)
    with pytest.raises(InvalidArgumentError, match="stage 's': seq_length_warmup_start=32"):
        trainer.add_curriculum_stage(
            "s", ["arithmetic"], seq_length_warmup_steps=4, seq_length_warmup_start=32
        )


# -- the stream: same global batches on 1 and 2 hosts, rows of the scheduled length ----------
@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("warmup") / "store")
    return build_token_store(corpus(3, 64, max_len=20), "byte", path, progress=False)


def _plan(store, **settings) -> StagePlan:
    options = {"batch_size": 4, "max_seq_length": 32, "eval_fraction": 0.0}
    options.update(settings)
    return StagePlan(0, "s", StageSettings(**options), 3, store, seed=5)


def test_every_step_has_the_scheduled_length_and_hosts_split_the_same_global_batch(store):
    plan = _plan(
        store, seq_length_warmup_steps=20, seq_length_warmup_start=8, curriculum_strategy="mixed"
    )
    stage_step, lengths_seen = 0, []
    for epoch in range(plan.epochs):
        segments = plan.segments(epoch, plan.epoch_first_step(epoch))
        assert segments[0][0] == 0 and segments[-1][1] == plan.steps_per_epoch(epoch)
        one = plan.host_rows(epoch, 0, 1)
        halves = [plan.host_rows(epoch, h, 2) for h in (0, 1)]
        for start, end, length in segments:
            whole = HostBatcher(store, one, length).batches(start, end - start)
            parts = [
                HostBatcher(store, rows, length).batches(start, end - start) for rows in halves
            ]
            for key, value in whole.items():
                assert value.shape == (end - start, 4, length)
                joined = np.concatenate([part[key] for part in parts], axis=1)
                np.testing.assert_array_equal(joined, value)
            lengths_seen += [length] * (end - start)
        stage_step += plan.steps_per_epoch(epoch)
    assert lengths_seen == [plan.seq_warmup.length_at(t) for t in range(stage_step)]
    assert sorted(set(lengths_seen)) == [8, 16, 32]


def test_a_segment_resumed_mid_way_ends_at_the_same_change(store):
    plan = _plan(
        store, seq_length_warmup_steps=30, seq_length_warmup_start=8, curriculum_strategy=None
    )
    steps = plan.steps_per_epoch(0)
    change = plan.seq_warmup.next_change(0)
    assert 0 < change < steps
    assert plan.segment_at(0, steps, 0) == (8, change)
    assert plan.segment_at(change - 1, steps, change - 1) == (8, change)  # resumed mid-segment
    assert plan.segment_at(change, steps, change)[0] == 16


def test_a_share_of_the_stage_is_rounded_down_to_whole_steps(store):
    total = _plan(store, curriculum_strategy=None).planned_steps()  # 48
    plan = _plan(
        store, curriculum_strategy=None, seq_length_warmup_steps=0.3, seq_length_warmup_start=8
    )
    assert plan.seq_warmup.steps == int(0.3 * total) == 14
    assert plan.stream_fingerprint() != _plan(store, curriculum_strategy=None).stream_fingerprint()


@pytest.mark.parametrize("value", [1.0, 1.5, -0.25, float("nan")])
def test_a_share_outside_zero_one_is_refused(value):
    with pytest.raises(
        InvalidArgumentError,
        match=r"seq_length_warmup_steps=.* must be whole steps \(an int >= 0\) or a share of "
        r"the stage's planned steps \(a float in \(0, 1\)\)",
    ):
        StageSettings(seq_length_warmup_steps=value)
    with pytest.raises(TypeError, match="seq_length_warmup_steps='10'"):
        StageSettings(seq_length_warmup_steps="10")


def test_a_stage_refuses_a_warmup_longer_than_itself(store):
    total = _plan(store).planned_steps()
    with pytest.raises(InvalidArgumentError, match=f"longer than stage 's' \\({total} steps\\)"):
        _plan(store, seq_length_warmup_steps=total + 1, seq_length_warmup_start=8)


def test_the_stream_fingerprint_is_unchanged_while_the_warmup_is_off(store):
    plain = _plan(store).stream_fingerprint()
    assert "seq_length_warmup" not in plain["stream"]
    assert _plan(store, seq_length_warmup_start=16).stream_fingerprint() == plain
    assert _plan(store, eval_difficulty_buckets=2).stream_fingerprint() == plain
    warm = _plan(store, seq_length_warmup_steps=20, seq_length_warmup_start=8)
    assert warm.stream_fingerprint()["stream"] != plain["stream"]


# -- through the Trainer ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("warm_data")
    return {"a": write_jsonl(str(root / "a.jsonl"), corpus(0, 48))}


def _warm_trainer(tmp_path, data, **kwargs):
    # 48 samples, batch 4: 12 steps an epoch, 24 in the stage. Lengths 8, 16, 32 begin at
    # stage steps 0, 6, 16: the change to 16 falls inside epoch 0, the one to 32 inside epoch 1.
    options = {"curriculum_strategy": None, "seq_length_warmup_steps": 16}
    options.update(seq_length_warmup_start=8, **kwargs)
    trainer = make_trainer(tmp_path, **options)
    trainer.add_curriculum_stage("warm", [data["a"]], epochs=2)
    return trainer


def _weights(model):
    return [w.numpy() for w in model.weights]


def test_training_steps_have_the_scheduled_lengths_and_compile_once_per_length(tmp_path, data):
    runs = {}
    for per_call, log_interval in ((1, 1), (4, 100)):  # a log interval of 1 makes calls of 1
        trainer = _warm_trainer(tmp_path, data, steps_per_call=per_call)
        logs = []
        trainer.add_callback(lambda e, logs=logs: logs.append(e) if e["event"] == "log" else None)
        summary = trainer.train(save_checkpoints=False, log_interval=log_interval)
        runs[per_call] = (summary, _weights(trainer.model), logs)
    summary, weights, logs = runs[1]
    warmup = SequenceLengthWarmup(32, 16, 8)
    assert [e["seq_length"] for e in logs] == [warmup.length_at(t) for t in range(24)]
    (train_fn,) = [f for key, f in trainer._step._train_fns.items() if key[0] == "train"]
    assert train_fn.experimental_get_tracing_count() == 3  # one trace per length, 4 steps a call
    # Four steps per call never straddle a change: the same steps, tokens and weights.
    assert runs[4][0]["tokens_seen"] == summary["tokens_seen"]
    for got, want in zip(runs[4][1], weights):
        np.testing.assert_array_equal(got, want)
    # The tokens are those of rows cut to each step's length.
    plan = trainer.plan(epochs_per_stage=None)[0]
    expected = 0
    for epoch in range(2):
        lengths = plan.store.features.lengths[plan.host_rows(epoch, 0, 1)]
        for start, end, length in plan.segments(epoch, plan.epoch_first_step(epoch)):
            expected += int(np.minimum(lengths[start:end], length).sum())
    assert summary["tokens_seen"] == expected


class _StopAt(Exception):
    pass


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data):
    """The uninterrupted run every interrupted one is compared with: (summary, weights)."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    reference = _warm_trainer(tmp_path, data, model=nano_model(), steps_per_call=4)
    summary = reference.train(checkpoint_dir=str(tmp_path / "full"), log_interval=2)
    return summary, _weights(reference.model)


@pytest.mark.slow
def test_a_run_interrupted_around_each_length_change_resumes_bit_identical(
    tmp_path, data, uninterrupted
):
    """One run stopped before the change to 16 (step 4), at it (step 6) and inside 16 (step
    14), resumed after each stop: it ends with the uninterrupted run's tokens and weights. Each
    resume continues from the checkpoint its stop wrote, so a wrong resume at any of the three
    would change the end (one chain instead of three separate stop-and-resume pairs)."""
    # Calls of up to 2 steps (the log interval): the call that reaches step 6 ends at the change.
    expected_summary, expected_weights = uninterrupted
    cut = str(tmp_path / "cut")
    for stop_step in (4, 6, 14):

        def stop(event, stop_step=stop_step):
            if event["event"] == "log" and event["step"] == stop_step:
                raise _StopAt()

        interrupted = _warm_trainer(tmp_path, data, model=nano_model(), steps_per_call=4)
        interrupted.add_callback(stop)
        with pytest.raises(_StopAt):
            interrupted.train(checkpoint_dir=cut, log_interval=2)
        assert os.path.exists(os.path.join(cut, f"ckpt-{stop_step}.index"))
    resumed = _warm_trainer(tmp_path, data, model=nano_model(), steps_per_call=4)
    starts = []
    resumed.add_callback(lambda e: starts.append(e["step"]) if e["event"] == "log" else None)
    summary = resumed.train(checkpoint_dir=cut, log_interval=2)
    assert starts[0] == 16  # the last resume began after step 14
    assert summary["tokens_seen"] == expected_summary["tokens_seen"]
    for got, want in zip(_weights(resumed.model), expected_weights, strict=True):
        np.testing.assert_array_equal(got, want)
