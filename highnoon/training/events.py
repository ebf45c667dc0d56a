"""Training events: callbacks, progress display and TensorBoard summaries.

Every event is a dict with an ``event`` key (see README, "Callback events"). The Trainer emits
through one ``EventHub``; the progress display and the summary writer are just listeners, so user
callbacks see exactly what the built-in outputs see.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar, TextIO

import tensorflow as tf

Event = dict[str, Any]
Callback = Callable[[Event], Any]


class EventHub:
    """Calls every listener with each event, in the order they were added."""

    def __init__(self, builtin: list[Callback] | tuple = (), user: list[Callback] | None = None):
        """``builtin``: the run's own outputs (progress, summaries), called first; ``user``:
        the caller's callbacks (the list itself, so callbacks added later are called too)."""
        self.builtin: tuple[Callback, ...] = tuple(builtin)
        self.user: list[Callback] = user if user is not None else []

    def emit(self, name: str, **fields: Any) -> Event:
        event = {"event": name, **fields}
        for listener in self.builtin:
            listener(event)
        for callback in self.user:
            callback(dict(event))  # a copy: one callback cannot change what the next sees
        return event


class ProgressDisplay:
    """What a person watching the run sees (chief only; the ``verbose`` setting).

    On a terminal: one tqdm bar per stage with steps, loss, tokens/s and ETA, advanced after every
    host call. Elsewhere (logs, CI, notebooks' captured output): one line per log interval and
    per epoch, evaluation and stage, printed to ``stream`` (standard error by default, like
    tqdm and absl's logs, so standard output stays free for a program's results).
    """

    def __init__(self, interactive: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._bar: Any = None
        self._total_steps = 0
        self._stage_first = 0  # global step at which the current stage began
        self._clock: tuple[float, int] = (time.time(), 0)  # (time, step) when timing started
        self._nothing_to_train = False  # a finished run, run again

    # -- driven by the controller after every host call -----------------------------------
    def advance(self, step: int, loss: float, tokens: float) -> None:
        del tokens  # the bar's own rate is steps/s; tokens/s comes with log events
        if self._bar is not None:
            self._bar.update(step - self._stage_first - self._bar.n)
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    # -- events ------------------------------------------------------------------------
    def __call__(self, event: Event) -> None:
        handler = getattr(self, f"_on_{event['event']}", None)
        if handler is not None:
            handler(event)

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _on_train_begin(self, event: Event) -> None:
        self._total_steps = event["total_steps"]
        self._clock = (time.time(), event["start_step"])
        done = event.get("completed_stages") or []
        self._nothing_to_train = bool(event.get("already_complete"))
        if self._nothing_to_train:
            self._print(
                f"already complete: stage(s) {done} trained, {event['start_step']} steps; "
                "nothing to train"
            )
            return
        if event.get("appended_stages"):
            self._print(
                f"resuming at step {event['start_step']} after the finished stage(s) {done}; "
                f"appending stage(s) {event['appended_stages']}"
            )
        self._print(
            f"training {len(event['stages'])} stage(s), {event['total_steps']} steps planned, "
            f"{event['num_replicas']} replica(s)"
            + (f"; resuming at step {event['start_step']}" if event["start_step"] else "")
        )

    def _on_stage_begin(self, event: Event) -> None:
        first, steps = event["first_step"], event["steps"]
        self._stage_first = first
        if self.interactive:
            from tqdm import tqdm

            self._bar = tqdm(
                total=steps,
                initial=max(event["step"] - first, 0),
                desc=event["stage"],
                unit="step",
                file=self.stream,
                dynamic_ncols=True,
            )
        else:
            self._print(f"stage {event['stage']!r}: {event['epochs']} epoch(s), {steps} steps")

    def _on_log(self, event: Event) -> None:
        if self._bar is not None:
            self._bar.set_postfix(
                loss=f"{event['loss']:.4f}", tok_s=f"{event['tokens_per_second']:,.0f}"
            )
            return
        self._print(
            f"{event['stage']} step {event['step']}/{self._total_steps} "
            f"loss {event['loss']:.4f} lr {event['learning_rate']:.2e} "
            f"{event['tokens_per_second']:,.0f} tok/s "
            + (f"MFU {event['mfu']:.1%} " if event.get("mfu") is not None else "")
            + f"pool {event['curriculum_fraction']:.0%} padding {event['padding_fraction']:.0%} "
            + f"ETA {_duration(self._eta(event['step']))}"
        )

    def _on_epoch_end(self, event: Event) -> None:
        if self._bar is None:
            self._print(f"{event['stage']} epoch {event['epoch']} done: loss {event['loss']:.4f}")

    def _on_eval(self, event: Event) -> None:
        buckets = event.get("eval_loss_by_difficulty")
        self._print(
            f"{event['stage']} eval at step {event['step']}: loss {event['eval_loss']:.4f} "
            f"perplexity {event['perplexity']:.2f}"
            + (
                f" (averaged weights {event['eval_loss_average']:.4f})"
                if "eval_loss_average" in event
                else ""
            )
            + (
                " by difficulty (easy to hard) " + " / ".join(f"{x:.3f}" for x in buckets)
                if buckets and len(buckets) > 1
                else ""
            )
        )

    def _on_lm_eval(self, event: Event) -> None:
        scores = ", ".join(f"{name} {value:.4f}" for name, value in event["scores"].items())
        self._print(f"{event['stage']} lm-eval at step {event['step']}: {scores}")

    def _on_stage_complete(self, event: Event) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        loss = event["metrics"].get("final_loss")
        self._print(
            f"stage {event['stage']!r} complete: {event['metrics'].get('steps', 0)} steps"
            + (f", final loss {loss:.4f}" if loss is not None else "")
        )

    def _on_train_end(self, event: Event) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._nothing_to_train:
            return  # the start said so
        summary = event["summary"]
        self._print(
            f"done: {summary['total_steps']} steps, {summary['tokens_seen']:,} tokens in "
            f"{_duration(summary['wall_time_seconds'])}"
        )

    def _eta(self, step: int) -> float:
        started, first = self._clock
        done = step - first
        if done <= 0:
            return float("nan")
        return (time.time() - started) / done * max(self._total_steps - step, 0)


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN: not known yet
        return "?"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class SummaryListener:
    """Writes scalar summaries for TensorBoard (chief only) under ``directory``: the log and eval
    scalars as they come (the held-out loss of difficulty bucket ``b``, easiest ``0``, as
    ``eval/eval_loss_difficulty_b``; each in-loop lm-eval score as ``lm_eval/TASK/METRIC``), and
    at the end where the wall time went (``goodput/*``)."""

    SCALARS: ClassVar[dict[str, tuple[str, ...]]] = {
        "log": (
            "loss",
            "learning_rate",
            "tokens_per_second",
            "curriculum_fraction",
            "padding_fraction",
            "seq_length",
            "mfu",
        ),
        "eval": ("eval_loss", "perplexity", "eval_loss_average"),
    }

    def __init__(self, directory: str) -> None:
        self.writer = tf.summary.create_file_writer(directory)

    def __call__(self, event: Event) -> None:
        kind = event["event"]
        if kind == "train_end":
            summary = event["summary"]
            with self.writer.as_default(step=summary["total_steps"]):
                for name, value in summary.get("goodput", {}).items():
                    tf.summary.scalar(f"goodput/{name}", value)
            self.writer.flush()
            return
        if kind == "lm_eval":  # one scalar per task and metric: lm_eval/TASK/METRIC
            with self.writer.as_default(step=event["step"]):
                for name, value in event["scores"].items():
                    tf.summary.scalar(f"lm_eval/{name}", value)
            return
        names = self.SCALARS.get(kind)
        if names is None:
            return
        with self.writer.as_default(step=event["step"]):
            for name in names:
                if event.get(name) is not None:
                    tf.summary.scalar(f"{kind}/{name}", event[name])
            for bucket, value in enumerate(event.get("eval_loss_by_difficulty") or ()):
                tf.summary.scalar(f"eval/eval_loss_difficulty_{bucket}", value)
            if kind == "log":
                tf.summary.text("stage", event["stage"])
