"""The training loop: *when* things happen (Orbit's ``Controller``).

The controller walks stages, epochs and host calls, and decides after each call whether to log,
evaluate, save or stop. *How* steps run belongs to a ``StepRunner`` (``runner.py``: anything that
runs N steps from an iterator and returns frozen ``StepOutputs``), what a stage feeds to its
``StagePlan``, state on disk to the ``Checkpointer``, outputs to the ``EventHub`` listeners; each
is handed in at construction. Its state is the ``DataPosition`` it advances (the same object the
checkpointer saves, so a checkpoint taken at any boundary resumes exactly) and the evaluations
it reports in the summary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from absl import logging

from highnoon.data.packing import PackingCursor
from highnoon.training.checkpointing import CheckpointError
from highnoon.training.position import DataPosition
from highnoon.training.preemption import Preempted
from highnoon.training.runner import StepRunner


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; nothing is saved after it."""


class Progress(Protocol):
    """What the controller tells a progress display after every host call."""

    def advance(self, step: int, loss: float, tokens: float) -> None: ...


class Saver(Protocol):
    """The checkpointer as the loop uses it."""

    def save(self, step: int) -> str: ...

    def kept_paths(self) -> list[str]: ...


class Evaluates(Protocol):
    def evaluate(self, plan: Any, global_step: int) -> dict[str, Any]: ...


class LmEvaluates(Protocol):
    """In-loop lm-eval (``lm_eval_loop.LmEvalLoop``): scores of named tasks at a step."""

    def evaluate(self, stage: str, global_step: int) -> dict[str, Any]: ...


class StopSignal(Protocol):
    """The preemption watcher as the loop uses it."""

    @property
    def requested(self) -> bool: ...

    @property
    def signal_name(self) -> str | None: ...


@dataclass(frozen=True)
class Intervals:
    """Steps between checkpoints, log events and evaluations."""

    checkpoint: int
    log: int
    eval: int

    def steps_to_next(self, step: int) -> int:
        """Steps from ``step`` to the next log/eval/checkpoint boundary (>= 1)."""
        return min(every - step % every for every in (self.checkpoint, self.log, self.eval))


@dataclass(frozen=True)
class LoopOptions:
    """What the loop needs to know besides its collaborators."""

    intervals: Intervals
    steps_per_call: int = 1
    num_replicas: int = 1
    checkpoint_dir: str | None = None  # reported in the summary
    flops_per_token: Callable[[int], float | None] | None = None  # row length -> FLOPs
    peak_flops: float | None = None  # all devices together, FLOP/s


class LossWindow:
    """Token-weighted mean loss, throughput and padding since the window was (re)opened."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.tokens, self.slots, self.opened = 0.0, 0.0, 0, time.time()

    def add(self, loss_sum: float, tokens: float, slots: int) -> None:
        """Steps with token-weighted loss sum ``loss_sum`` over ``tokens`` target tokens in
        ``slots`` computed positions (``DataPosition.step_sums``)."""
        self.loss_sum += loss_sum
        self.tokens += tokens
        self.slots += slots

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.tokens / self.slots if self.slots else 0.0

    @property
    def mean(self) -> float:
        return self.loss_sum / max(self.tokens, 1.0)

    def tokens_per_second(self) -> float:
        return self.tokens / max(time.time() - self.opened, 1e-9)


class Controller:
    """Runs the stages of ``plans`` from ``position`` to the end; returns the run summary."""

    def __init__(
        self,
        *,
        runner: StepRunner,
        evaluator: Evaluates,
        checkpointer: Saver | None,  # None: no saves
        events: Any,  # EventHub
        goodput: Any,  # Goodput
        watcher: StopSignal,
        options: LoopOptions,
        position: DataPosition,
        progress: Progress | None = None,
        lm_evaluator: LmEvaluates | None = None,  # None: no in-loop lm-eval
    ) -> None:
        self.runner = runner
        self.evaluator = evaluator
        self.checkpointer = checkpointer
        self.events = events
        self.goodput = goodput
        self.watcher = watcher
        self.options = options
        self.intervals = options.intervals
        self.position = position  # the checkpointer saves this same object
        self.progress = progress
        self.seq_length = 0  # row length of the segment being trained
        self._flops: dict[int, float | None] = {}  # row length -> model FLOPs per token
        self.eval_history: list[dict[str, Any]] = []
        self.lm_evaluator = lm_evaluator
        self.lm_eval_history: list[dict[str, Any]] = []

    # -- the run --------------------------------------------------------------------------
    def run(self, plans: Sequence[Any], appended: Sequence[str] = ()) -> dict[str, Any]:
        """Trains ``plans`` from the position; ``appended`` names the stages added after a
        finished run (reported, they start their own schedule phase)."""
        position = self.position
        started = time.time()
        self.events.emit(
            "train_begin",
            total_steps=sum(plan.planned_steps() for plan in plans),
            start_step=position.global_step,
            stages=[plan.name for plan in plans],
            num_replicas=self.options.num_replicas,
            completed_stages=[str(stage["name"]) for stage in position.completed_stages],
            appended_stages=list(appended),
            already_complete=position.stage >= len(plans),
        )
        try:
            for plan in plans[position.stage :]:
                self._run_stage(plan)
        except (NonFiniteLossError, Preempted, KeyboardInterrupt, *self.runner.fatal_errors):
            # No save: keep the last good checkpoint. A lost peer cannot take part; a second
            # Ctrl-C may land between a step and its bookkeeping (one Ctrl-C saves, preemption.py).
            raise
        except BaseException:
            self.save()  # a failing callback stops after a save
            raise
        self.save()
        summary = self._summary(time.time() - started)
        self.goodput.write(finished=True)
        self.events.emit("train_end", summary=summary)
        return summary

    def _run_stage(self, plan: Any) -> None:
        pos = self.position
        if pos.stage != plan.index:  # entering a new stage
            pos.enter_stage(plan.index)
        saved_state = pos.curriculum_states.get(str(plan.index))
        if saved_state is not None and hasattr(plan.scheduler, "load_state"):
            plan.scheduler.load_state(saved_state)
        self.runner.begin_stage(plan)
        self.events.emit(
            "stage_begin",
            stage=plan.name,
            index=plan.index,
            epochs=plan.epochs,
            steps=plan.planned_steps(),
            first_step=pos.stage_start_step,
            step=pos.global_step,
        )
        while pos.epoch < plan.epochs:
            self._run_epoch(plan)
            self._end_epoch(plan)
        metrics = {
            "final_loss": pos.last_epoch_loss,
            "epochs": plan.epochs,
            "steps": pos.global_step - pos.stage_start_step,
            **pos.stage_report(),
            "samples_per_dataset": plan.samples_per_dataset(),
        }
        if plan.num_eval:
            last = self.eval_history[-1] if self.eval_history else None
            if last is not None and (last["step"], last["stage"]) == (pos.global_step, plan.name):
                result = last  # the eval interval already evaluated this very step
            else:
                result = self.evaluate(plan)
            metrics.update(eval_loss=result["eval_loss"], perplexity=result["perplexity"])
        pos.complete_stage(
            plan.name,
            plan.epochs,
            metrics["steps"],
            samples_per_dataset=metrics["samples_per_dataset"],
        )
        self.save()
        self.events.emit("stage_complete", stage=plan.name, metrics=metrics)

    def _end_epoch(self, plan: Any) -> None:
        pos = self.position
        epoch_loss = pos.epoch_loss_sum / max(pos.epoch_token_sum, 1.0)
        advanced = False
        if plan.settings.adaptive:
            advanced = bool(plan.scheduler.update_with_loss(pos.epoch, epoch_loss))
            pos.curriculum_states[str(plan.index)] = plan.scheduler.get_state()
        finished = pos.epoch
        pos.count(dropped=plan.samples_dropped(finished))
        pos.next_epoch(epoch_loss)
        self.events.emit(
            "epoch_end",
            stage=plan.name,
            epoch=finished,
            loss=epoch_loss,
            step=pos.global_step,
            curriculum_advanced=advanced,
        )

    def _run_epoch(self, plan: Any) -> None:
        """The epoch from the current position, one segment of equal row length at a time
        (a single segment unless the stage's sequence-length warm-up changes the length)."""
        pos = self.position
        window = LossWindow()
        if plan.settings.pack:  # full rows (no warm-up); the epoch ends where its stream does
            self._begin_packed_epoch(plan)
            self._run_segment(plan, None, plan.settings.max_seq_length, window)
            return
        steps = plan.steps_per_epoch(pos.epoch)
        while pos.step_in_epoch < steps:
            seq_length, end = plan.segment_at(
                pos.step_in_epoch, steps, pos.global_step - pos.stage_start_step
            )
            self._run_segment(plan, end, seq_length, window)

    def _begin_packed_epoch(self, plan: Any) -> None:
        """Packing restarts at the saved cursor (a resume packs no earlier window)."""
        pos = self.position
        saved = pos.packing_cursor
        cursor = None if saved is None else PackingCursor.from_json(saved)
        if cursor is not None and cursor.step != pos.step_in_epoch:
            raise CheckpointError(
                f"the checkpoint's packing cursor is at step {cursor.step} of epoch {pos.epoch} "
                f"but its data position at step {pos.step_in_epoch}; the checkpoint is "
                "inconsistent, resume from an earlier one"
            )
        plan.begin_packed_epoch(pos.epoch, cursor)

    def _call_steps(self, plan: Any, end: int | None) -> int:
        """Steps of the next host call: up to ``steps_per_call`` and the next log, eval or
        checkpoint boundary, within ``end`` (None: a packed epoch, whose stream says how many
        of them exist; 0 once it has ended)."""
        pos = self.position
        count = min(self.options.steps_per_call, self.intervals.steps_to_next(pos.global_step))
        if end is None:
            return plan.steps_available(pos.epoch, pos.step_in_epoch, count)
        return max(0, min(count, end - pos.step_in_epoch))

    def _run_segment(self, plan: Any, end: int | None, seq_length: int, window: LossWindow) -> None:
        """Epoch steps ``[step_in_epoch, end)`` on rows of ``seq_length`` tokens: one static
        input shape, so a host call never straddles a length change. ``end`` None: a packed
        epoch, run until its stream ends."""
        pos = self.position
        epoch = pos.epoch
        iterator = self.runner.segment(plan, epoch, pos.step_in_epoch, end, seq_length)
        self.seq_length = seq_length
        while count := self._call_steps(plan, end):
            if end is not None and pos.step_in_epoch + count == end:  # the segment's last call
                self._prepare_next(plan, end)
            started = time.time()
            out = self.runner.run(iterator, count, plan, seq_length, self._stop_requested)
            bucket = "compilation" if out.compiled else "productive_step"
            self.goodput.add_steps(bucket, time.time() - started, count, pos.global_step + count)
            loss_sum, token_sum = pos.step_sums(out.losses, out.tokens)
            self._check_finite(out.losses, loss_sum, plan)
            first = pos.step_in_epoch
            fed = plan.step_totals(epoch, first, first + count, seq_length, out.tokens)
            pos.record_steps(count, loss_sum, token_sum)
            if end is None:
                pos.packing_cursor = plan.packing_cursor(epoch, pos.step_in_epoch).to_json()
            pos.count(samples=fed["samples"], tokens=fed["tokens"], slots=fed["slots"])
            window.add(loss_sum, token_sum, fed["slots"])
            if self.progress is not None:
                self.progress.advance(
                    pos.global_step, float(out.losses[-1]), float(out.tokens.sum())
                )
            if out.stop:
                self._stop_preempted(plan)
            self._after_call(plan, window, float(out.losses[-1]))

    def _prepare_next(self, plan: Any, end: int) -> None:
        """Tells a runner that can build input ahead (``TrainStepRunner.prepare``) which
        segment follows the call about to run, the last before ``end``, so that input is built
        during the call instead of after it. A hint: ``segment`` uses it only if it matches.
        Not within an adaptive stage (the epoch's end decides the next epoch) nor a packed one
        (its next epoch's packing would be computed while this one's is still in use)."""
        prepare = getattr(self.runner, "prepare", None)
        if prepare is None or plan.settings.adaptive or getattr(plan.settings, "pack", False):
            return
        pos = self.position
        epoch, start, steps = pos.epoch, end, plan.steps_per_epoch(pos.epoch)
        stage_step = pos.global_step - pos.stage_start_step + (end - pos.step_in_epoch)
        if start >= steps:  # the next epoch's first segment
            epoch, start = epoch + 1, 0
            steps = plan.steps_per_epoch(epoch) if epoch < plan.epochs else 0
        if start < steps:
            seq_length, next_end = plan.segment_at(start, steps, stage_step)
            prepare(plan, epoch, start, next_end, seq_length)

    def _stop_requested(self) -> bool:
        return bool(self.watcher.requested)

    def _stop_preempted(self, plan: Any) -> None:
        """Every host agreed to stop after this call: save here, report, exit to relaunch."""
        self.save()
        kept = self.checkpointer.kept_paths() if self.checkpointer is not None else []
        step = self.position.global_step
        path = kept[-1] if kept and kept[-1].endswith(f"-{step}") else None
        self.goodput.write()
        self.events.emit(
            "preempted",
            step=step,
            stage=plan.name,
            signal=self.watcher.signal_name,
            checkpoint=path,
            exit_code=Preempted(step, path).code,
        )
        stop = Preempted(step, path)
        # Every worker says it (non-chief workers log warnings only): the agreed step, the
        # checkpoint the chief wrote there and the exit code the launcher acts on.
        cause = self.watcher.signal_name or "a stop signal on another worker"
        logging.warning("%s: %s", cause, stop)
        raise stop

    def _after_call(self, plan: Any, window: LossWindow, step_loss: float) -> None:
        """The boundaries of the step just reached: log, evaluate, save."""
        step = self.position.global_step
        if step % self.intervals.log == 0:
            tokens_per_second = window.tokens_per_second()
            self.goodput.write()
            self.events.emit(
                "log",
                step=step,
                stage=plan.name,
                epoch=self.position.epoch,
                loss=window.mean,
                step_loss=step_loss,
                learning_rate=self.runner.learning_rate(step - 1),
                tokens_per_second=tokens_per_second,
                curriculum_fraction=plan.fraction(self.position.epoch),
                padding_fraction=window.padding_fraction,
                seq_length=self.seq_length,
                mfu=self._mfu(tokens_per_second, self.seq_length),
            )
            window.reset()
        if step % self.intervals.eval == 0 and plan.num_eval:
            self.evaluate(plan)
        if step % self.intervals.eval == 0 and self.lm_evaluator is not None:
            self.lm_evaluate(plan)
        if step % self.intervals.checkpoint == 0:
            self.save()

    def _check_finite(self, losses: np.ndarray, loss_sum: float, plan: Any) -> None:
        """Refuses a call any of whose losses is NaN or infinite. ``loss_sum`` (the losses
        weighted by non-negative token counts) is finite only if every loss is, which settles
        nearly every call with one comparison; otherwise the losses themselves decide."""
        if math.isfinite(loss_sum) or np.isfinite(losses).all():
            return
        bad = int(np.argmin(np.isfinite(losses)))
        kept = self.checkpointer.kept_paths() if self.checkpointer is not None else []
        outcome = (
            f"The last good checkpoint, {kept[-1]}, was kept."
            if kept
            else "No checkpoint had been written yet."
        )
        raise NonFiniteLossError(
            f"the training loss became {losses[bad]} at step {self.position.global_step + bad + 1}"
            f" (stage {plan.name!r}, epoch {self.position.epoch}); lower the learning rate or "
            f"enable clip_norm. {outcome}"
        )

    def _mfu(self, tokens_per_second: float, seq_length: int) -> float | None:
        """Model FLOPs utilisation of the last log window (docs: ``goodput.py``)."""
        per_token, peak = self.options.flops_per_token, self.options.peak_flops
        if not per_token or not peak:
            return None
        if seq_length not in self._flops:  # a model config read once per row length
            self._flops[seq_length] = per_token(seq_length)
        flops = self._flops[seq_length]
        return tokens_per_second * flops / peak if flops else None

    # -- evaluation and checkpoints ------------------------------------------------------
    def evaluate(self, plan: Any) -> dict[str, Any]:
        with self.goodput.measure("evaluation"):
            result = self.evaluator.evaluate(plan, self.position.global_step)
        result["tokens_seen"] = self.position.tokens_seen
        self.eval_history.append(result)
        self.events.emit("eval", **result)
        return result

    def lm_evaluate(self, plan: Any) -> dict[str, Any]:
        """The in-loop lm-eval tasks at this step: an ``lm_eval`` event, kept for the summary."""
        with self.goodput.measure("evaluation"):
            result = self.lm_evaluator.evaluate(plan.name, self.position.global_step)
        self.lm_eval_history.append(result)
        self.events.emit("lm_eval", **result)
        return result

    def save(self) -> None:
        """Saves at the current step unless saving is off or that step is already saved."""
        if self.checkpointer is None:
            return
        step = self.position.global_step
        kept = self.checkpointer.kept_paths()
        if kept and kept[-1].endswith(f"-{step}"):
            return
        with self.goodput.measure("checkpoint"):
            path = self.checkpointer.save(step)
        self.goodput.write()
        self.events.emit("checkpoint_saved", path=path, step=step)

    def _summary(self, wall_time: float) -> dict[str, Any]:
        pos = self.position
        checkpointer = self.checkpointer
        lm_eval = {"lm_eval": list(self.lm_eval_history)} if self.lm_evaluator else {}
        return {
            **lm_eval,
            "total_steps": pos.global_step,
            "stages_completed": list(pos.completed_stages),
            "tokens_seen": pos.tokens_seen,
            "wall_time_seconds": wall_time,
            "eval": list(self.eval_history),
            "checkpoints": checkpointer.kept_paths() if checkpointer is not None else [],
            "checkpoint_dir": self.options.checkpoint_dir,
            "num_replicas": self.options.num_replicas,
            "data_changes": list(pos.data_changes),
            "goodput": self.goodput.report(),
        }
