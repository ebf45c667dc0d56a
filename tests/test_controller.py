"""The training loop on its own: a fake step runner, fake stages and a fake checkpointer drive
the ``Controller`` through saves, evaluations, logs, stage ends, resumes, preemption and
failures at exact steps, without building or training a model."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from highnoon.training.controller import Controller, Intervals, LoopOptions, NonFiniteLossError
from highnoon.training.events import EventHub
from highnoon.training.goodput import Goodput
from highnoon.training.position import DataPosition
from highnoon.training.preemption import Preempted
from highnoon.training.runner import StepOutputs


class LostPeerError(RuntimeError):
    """Stands in for the runner's fatal errors (a lost peer: nothing may be saved)."""


class FakePlan:
    """A stage of ``epochs`` epochs of ``steps`` steps, each step 2 samples, 10 target tokens
    and 16 token slots; ``held_out`` toggles its evaluation."""

    def __init__(self, index: int, name: str, epochs: int, steps: int, held_out: bool = True):
        self.index, self.name, self.epochs, self.steps = index, name, epochs, steps
        self.settings = SimpleNamespace(adaptive=False, pack=False)
        self.scheduler = None
        self.learning_rate_multiplier = 0.5 * (index + 1)
        self.num_eval = 4 if held_out else 0

    def planned_steps(self) -> int:
        return self.epochs * self.steps

    def steps_per_epoch(self, epoch: int) -> int:
        return self.steps

    def segment_at(self, step_in_epoch: int, steps: int, stage_step: int) -> tuple[int, int]:
        return 8, steps  # one row length for the whole epoch

    def step_totals(self, epoch, first, end, seq_length, step_tokens) -> dict[str, int]:
        assert list(step_tokens) == [10.0] * (end - first)  # the runner's own token counts
        return {
            "samples": 2 * (end - first),
            "tokens": 10 * (end - first),
            "slots": 16 * (end - first),
        }

    def samples_dropped(self, epoch: int) -> int:
        return 0

    def samples_per_dataset(self) -> dict[str, int]:
        return {"data": 2 * self.planned_steps()}

    def fraction(self, epoch: int) -> float:
        return 1.0


class FakePackedPlan(FakePlan):
    """A packed stage: its epochs end where their stream does (``steps_available``)."""

    def begin_packed_epoch(self, epoch: int, cursor: Any) -> None:
        self.cursor_given = cursor

    def steps_available(self, epoch: int, step: int, limit: int) -> int:
        return max(0, min(limit, self.steps - step))

    def packing_cursor(self, epoch: int, step: int) -> Any:
        return SimpleNamespace(to_json=lambda: {"window": 0, "row": 0, "step": step})


class FakeRunner:
    """Runs nothing: each step's loss is ``1 / global step`` (``nan`` from ``nan_at`` on)."""

    def __init__(
        self, position: DataPosition, nan_at: int | None = None, fail_at: int | None = None
    ):
        self.position = position
        self.nan_at, self.fail_at = nan_at, fail_at
        self.fatal_errors = (LostPeerError,)
        self.reached = position.global_step  # the step the call in progress reaches
        self.calls: list[tuple[str, int, int]] = []  # (stage, first step, steps)
        self.segments: list[tuple[str, int, int, int]] = []  # (stage, epoch, start, end)
        self.stages: list[tuple[str, float]] = []  # (stage, learning-rate multiplier)

    def begin_stage(self, plan: FakePlan) -> None:
        self.stages.append((plan.name, plan.learning_rate_multiplier))

    def learning_rate(self, step: int) -> float:
        return 1e-3

    def segment(self, plan, epoch: int, start: int, end: int, seq_length: int):
        self.segments.append((plan.name, epoch, start, end))
        return iter(())

    def run(self, iterator, num_steps, plan, seq_length, stop_requested) -> StepOutputs:
        first = self.position.global_step + 1
        self.calls.append((plan.name, first, num_steps))
        self.reached = first + num_steps - 1
        steps = np.arange(first, first + num_steps, dtype=np.float64)
        if self.fail_at is not None and first + num_steps - 1 >= self.fail_at:
            raise LostPeerError("a peer was lost")
        losses = 1.0 / steps
        if self.nan_at is not None:
            losses[steps >= self.nan_at] = np.nan
        return StepOutputs(
            losses=losses,
            tokens=np.full(num_steps, 10.0),
            compiled=len(self.calls) == 1,
            stop=stop_requested(),
        )


class FakeCheckpointer:
    def __init__(self) -> None:
        self.saved: list[int] = []

    def save(self, step: int) -> str:
        self.saved.append(step)
        return f"/run/ckpt-{step}"

    def kept_paths(self) -> list[str]:
        return [f"/run/ckpt-{step}" for step in self.saved]


class FakeEvaluator:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def evaluate(self, plan: FakePlan, global_step: int) -> dict:
        self.steps.append(global_step)
        return {"step": global_step, "stage": plan.name, "eval_loss": 2.0, "perplexity": 7.39}


class Watcher:
    """Requests a stop during the host call that reaches step ``at`` (as a signal arriving
    then would)."""

    signal_name = "SIGTERM"

    def __init__(self, runner: FakeRunner, at: int | None = None) -> None:
        self.runner, self.at = runner, at

    @property
    def requested(self) -> bool:
        return self.at is not None and self.runner.reached >= self.at


class Loop(SimpleNamespace):
    """A controller with its fakes, the events it emitted and its position."""


def make_loop(
    *,
    checkpoint: int = 4,
    log: int = 2,
    eval: int = 3,
    steps_per_call: int = 3,
    position: DataPosition | None = None,
    stop_at: int | None = None,
    saving: bool = True,
    **runner_options,
) -> Loop:
    position = position if position is not None else DataPosition()
    events: list[dict] = []
    runner = FakeRunner(position, **runner_options)
    checkpointer = FakeCheckpointer() if saving else None
    evaluator = FakeEvaluator()
    controller = Controller(
        runner=runner,
        evaluator=evaluator,
        checkpointer=checkpointer,
        events=EventHub(user=[events.append]),
        goodput=Goodput(None),
        watcher=Watcher(runner, stop_at),
        options=LoopOptions(
            intervals=Intervals(checkpoint=checkpoint, log=log, eval=eval),
            steps_per_call=steps_per_call,
            num_replicas=2,
            checkpoint_dir="/run" if saving else None,
        ),
        position=position,
    )
    return Loop(
        controller=controller,
        runner=runner,
        checkpointer=checkpointer,
        evaluator=evaluator,
        events=events,
        position=position,
    )


def _steps(events: list[dict], name: str) -> list[int]:
    return [e["step"] for e in events if e["event"] == name]


def test_host_calls_stop_at_every_boundary_and_save_log_evaluate_there():
    loop = make_loop()
    summary = loop.controller.run([FakePlan(0, "only", epochs=2, steps=5)])
    # At most steps_per_call steps a call, never past an epoch end or a log/eval/save step.
    assert [steps for _, _, steps in loop.runner.calls] == [2, 1, 1, 1, 1, 2, 1, 1]
    assert loop.runner.segments == [("only", 0, 0, 5), ("only", 1, 0, 5)]
    assert _steps(loop.events, "log") == [2, 4, 6, 8, 10]
    # Every third step, and once more at the stage's end (step 9 was not the last).
    assert loop.evaluator.steps == [3, 6, 9, 10]
    # Every fourth step and at the stage's end; the run's end saves nothing twice.
    assert loop.checkpointer.saved == [4, 8, 10]
    assert _steps(loop.events, "checkpoint_saved") == [4, 8, 10]
    assert summary["total_steps"] == 10 and summary["tokens_seen"] == 100
    assert summary["checkpoints"] == ["/run/ckpt-4", "/run/ckpt-8", "/run/ckpt-10"]
    assert summary["checkpoint_dir"] == "/run" and summary["num_replicas"] == 2
    assert [e["step"] for e in summary["eval"]] == [3, 6, 9, 10]
    # The log reports the token-weighted mean loss of its window: steps 1 and 2 first.
    first_log = next(e for e in loop.events if e["event"] == "log")
    assert first_log["loss"] == pytest.approx((1.0 + 0.5) / 2)
    assert first_log["step_loss"] == pytest.approx(0.5)
    assert first_log["padding_fraction"] == pytest.approx(1 - 20 / 32)


def test_stages_run_in_order_with_their_multipliers_and_are_recorded():
    loop = make_loop(checkpoint=100, log=100, eval=100)
    plans = [FakePlan(0, "easy", 1, 3), FakePlan(1, "hard", 2, 2, held_out=False)]
    summary = loop.controller.run(plans)
    order = [e["event"] for e in loop.events if e["event"] != "epoch_end"]
    assert order == [
        "train_begin",
        "stage_begin",
        "eval",
        "checkpoint_saved",
        "stage_complete",
        "stage_begin",
        "checkpoint_saved",
        "stage_complete",
        "train_end",
    ]
    assert loop.runner.stages == [("easy", 0.5), ("hard", 1.0)]
    assert loop.evaluator.steps == [3]  # the second stage holds nothing out
    assert loop.checkpointer.saved == [3, 7]
    assert [s["name"] for s in summary["stages_completed"]] == ["easy", "hard"]
    assert [s["steps"] for s in summary["stages_completed"]] == [3, 4]
    assert summary["stages_completed"][1]["samples_seen"] == 8
    assert loop.position.stage == 2 and loop.position.global_step == 7


def test_a_resumed_position_continues_mid_epoch_at_its_step():
    position = DataPosition(global_step=3, step_in_epoch=3, tokens_seen=30)
    loop = make_loop(position=position, checkpoint=100, log=100, eval=100)
    summary = loop.controller.run([FakePlan(0, "only", epochs=2, steps=5)])
    assert loop.runner.segments[0] == ("only", 0, 3, 5)
    assert loop.runner.calls[0] == ("only", 4, 2)
    begin = loop.events[0]
    assert begin["event"] == "train_begin" and begin["start_step"] == 3
    assert summary["total_steps"] == 10 and summary["tokens_seen"] == 100


def test_an_already_complete_run_trains_nothing():
    position = DataPosition(stage=1, global_step=5)
    loop = make_loop(position=position)
    loop.controller.run([FakePlan(0, "only", epochs=1, steps=5)])
    assert loop.runner.calls == [] and loop.events[0]["already_complete"] is True
    assert loop.checkpointer.saved == [5]  # the final save of the position


def test_preemption_saves_at_the_agreed_step_and_exits_with_the_restart_code():
    loop = make_loop(stop_at=3)
    with pytest.raises(Preempted) as stop:
        loop.controller.run([FakePlan(0, "only", epochs=2, steps=5)])
    assert stop.value.code == 42 and stop.value.step == 3
    assert stop.value.checkpoint == "/run/ckpt-3"
    assert loop.checkpointer.saved == [3]
    assert loop.runner.calls[-1] == ("only", 3, 1)  # no call after the signal's
    (preempted,) = [e for e in loop.events if e["event"] == "preempted"]
    assert preempted["step"] == 3 and preempted["signal"] == "SIGTERM"
    assert preempted["exit_code"] == 42 and preempted["checkpoint"] == "/run/ckpt-3"
    # The agreed step stops the call before its boundaries: no eval, no log after it.
    assert loop.evaluator.steps == [] and _steps(loop.events, "log") == [2]


def test_preemption_without_saving_reports_no_checkpoint():
    loop = make_loop(stop_at=2, saving=False)
    with pytest.raises(Preempted) as stop:
        loop.controller.run([FakePlan(0, "only", epochs=1, steps=5)])
    assert stop.value.step == 2 and stop.value.checkpoint is None


def test_a_non_finite_loss_stops_before_any_save_and_names_the_step():
    loop = make_loop(nan_at=6)
    with pytest.raises(NonFiniteLossError) as error:
        loop.controller.run([FakePlan(0, "only", epochs=2, steps=5)])
    assert "became nan at step 6 (stage 'only', epoch 1)" in str(error.value)
    assert "The last good checkpoint, /run/ckpt-4, was kept." in str(error.value)
    assert loop.checkpointer.saved == [4]


def test_the_finiteness_check_is_decided_by_the_losses_not_their_weighted_sum():
    """The call's token-weighted loss sum settles finite calls at once; a sum that overflows
    on finite losses still passes, and an infinite loss on a step with no target tokens
    (inf * 0 is nan) is refused, as when every loss was looked at."""
    loop = make_loop()
    plan = FakePlan(0, "only", epochs=1, steps=5)
    check = loop.controller._check_finite
    sums = np.errstate(over="ignore", invalid="ignore")(DataPosition.step_sums)
    losses, tokens = np.array([1e308, 1e308]), np.array([10.0, 10.0])
    loss_sum, _ = sums(losses, tokens)
    assert loss_sum == np.inf
    check(losses, loss_sum, plan)  # every loss is finite: no error
    losses, tokens = np.array([0.5, np.inf]), np.array([10.0, 0.0])
    with pytest.raises(NonFiniteLossError, match=r"became inf at step 2 \(stage 'only', epoch 0\)"):
        check(losses, sums(losses, tokens)[0], plan)


def test_a_fatal_runner_error_saves_nothing_and_a_failing_callback_saves_first():
    loop = make_loop(fail_at=5)
    with pytest.raises(LostPeerError):
        loop.controller.run([FakePlan(0, "only", epochs=2, steps=5)])
    assert loop.checkpointer.saved == [4]

    loop = make_loop()

    def fail_at_step_6(event: dict) -> None:
        if event["event"] == "log" and event["step"] == 6:
            raise ZeroDivisionError("callback")

    loop.controller.events.user.append(fail_at_step_6)
    with pytest.raises(ZeroDivisionError):
        loop.controller.run([FakePlan(0, "only", epochs=2, steps=5)])
    assert loop.checkpointer.saved == [4, 6]


class WarmupPlan(FakePlan):
    """Rows of 4 tokens for the stage's first 3 steps, then 8 (a sequence-length warm-up)."""

    def segment_at(self, step_in_epoch: int, steps: int, stage_step: int) -> tuple[int, int]:
        if stage_step < 3:
            return 4, min(step_in_epoch + 3 - stage_step, steps)
        return 8, steps


class PreparingRunner(FakeRunner):
    """A runner that builds input ahead: records each hint with the call it preceded."""

    def __init__(self, position: DataPosition) -> None:
        super().__init__(position)
        self.hints: list[tuple[int, tuple]] = []  # (calls made before the hint, segment)

    def prepare(self, plan, epoch: int, start: int, end: int, seq_length: int) -> None:
        self.hints.append((len(self.calls), (plan.name, epoch, start, end, seq_length)))

    def segment(self, plan, epoch: int, start: int, end: int, seq_length: int):
        self.segments.append((plan.name, epoch, start, end, seq_length))
        return iter(())


def _preparing_loop(**options) -> Loop:
    loop = make_loop(**options)
    runner = PreparingRunner(loop.position)
    loop.controller.runner = runner
    loop.controller.watcher = Watcher(runner)
    loop.runner = runner
    return loop


def test_the_runner_hears_of_each_next_segment_before_the_call_that_ends_its_own():
    loop = _preparing_loop(log=100, eval=100, checkpoint=100)
    loop.controller.run([WarmupPlan(0, "warm", epochs=2, steps=5)])
    segments = loop.runner.segments
    assert segments == [
        ("warm", 0, 0, 3, 4),
        ("warm", 0, 3, 5, 8),
        ("warm", 1, 0, 5, 8),
    ]
    # Calls of 3 steps at most: [0, 3) | [3, 5) | [0, 3), [3, 5). Each hint names the segment
    # the loop asks for next and comes right before the last call of the one before it; the
    # stage's last segment has none (a new stage begins differently).
    assert [steps for _, _, steps in loop.runner.calls] == [3, 2, 3, 2]
    assert loop.runner.hints == [(0, segments[1]), (1, segments[2])]


@pytest.mark.parametrize("setting", ["adaptive", "pack"])
def test_no_segment_is_prepared_where_an_epoch_end_decides_or_packs_the_next(setting):
    loop = _preparing_loop()
    plan = (FakePackedPlan if setting == "pack" else FakePlan)(0, "only", epochs=2, steps=5)
    plan.settings = SimpleNamespace(
        adaptive=setting == "adaptive", pack=setting == "pack", max_seq_length=8
    )
    if setting == "adaptive":
        plan.scheduler = SimpleNamespace(update_with_loss=lambda *a: False, get_state=dict)
    loop.controller.run([plan])
    assert len(loop.runner.segments) == 2 and loop.runner.hints == []


def test_a_saved_position_keeps_each_stage_s_dataset_order():
    """A resumed run reports ``samples_per_dataset`` in the stage's dataset order, as the
    fresh run did (the position file is not key-sorted)."""
    position = DataPosition()
    position.complete_stage("mix", 1, 4, {"web": 70, "code": 30, "books": 5})
    restored = DataPosition.from_json(position.to_json())
    assert list(restored.completed_stages[0]["samples_per_dataset"]) == ["web", "code", "books"]
    assert restored == position
