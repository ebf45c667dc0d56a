"""Training events: callbacks, progress display and TensorBoard summaries.

Every event is a dict with an ``event`` key (see README, "Callback events"). The Trainer emits
through one ``EventHub``; the progress display and the summary writer are just listeners, so user
callbacks see exactly what the built-in outputs see.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, ClassVar

import tensorflow as tf
from absl import logging

Event = dict[str, Any]
Callback = Callable[[Event], Any]


class EventHub:
    """Calls every listener with each event, in the order they were added."""

    def __init__(self) -> None:
        self.builtin: list[Callback] = []
        self.user: list[Callback] = []

    def emit(self, name: str, **fields: Any) -> Event:
        event = {"event": name, **fields}
        for listener in self.builtin:
            listener(event)
        for callback in self.user:
            callback(dict(event))  # a copy: one callback cannot change what the next sees
        return event


class ProgressDisplay:
    """A tqdm bar on an interactive terminal, absl-style log lines otherwise."""

    def __init__(self, total_steps: int, interactive: bool | None = None) -> None:
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.total_steps = total_steps
        self._bar = None

    def __call__(self, event: Event) -> None:
        name = event["event"]
        if name == "train_begin" and self.interactive:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_steps, initial=event["start_step"], unit="step")
        elif name == "log":
            if self._bar is not None:
                self._bar.n = event["step"]
                self._bar.set_postfix(
                    loss=f"{event['loss']:.4f}", lr=f"{event['learning_rate']:.2e}", refresh=False
                )
                self._bar.refresh()
            else:
                logging.info(
                    "step %d/%d stage=%s epoch=%d loss=%.4f lr=%.3e tokens/s=%.0f fraction=%.3f",
                    event["step"],
                    self.total_steps,
                    event["stage"],
                    event["epoch"],
                    event["loss"],
                    event["learning_rate"],
                    event["tokens_per_second"],
                    event["curriculum_fraction"],
                )
        elif name == "eval":
            logging.info(
                "eval at step %d: loss=%.4f perplexity=%.2f",
                event["step"],
                event["eval_loss"],
                event["perplexity"],
            )
        elif name == "stage_begin":
            logging.info("stage %r begins (%d epochs)", event["stage"], event["epochs"])
        elif name == "epoch_end":
            logging.info(
                "stage %r epoch %d done: loss=%.4f", event["stage"], event["epoch"], event["loss"]
            )
        elif name == "train_end" and self._bar is not None:
            self._bar.close()
            self._bar = None


class SummaryListener:
    """Writes scalar summaries for TensorBoard (chief only) under ``directory``."""

    SCALARS: ClassVar[dict[str, tuple[str, ...]]] = {
        "log": ("loss", "learning_rate", "tokens_per_second", "curriculum_fraction"),
        "eval": ("eval_loss", "perplexity"),
    }

    def __init__(self, directory: str) -> None:
        self.writer = tf.summary.create_file_writer(directory)

    def __call__(self, event: Event) -> None:
        names = self.SCALARS.get(event["event"])
        if names is None:
            if event["event"] == "train_end":
                self.writer.flush()
            return
        with self.writer.as_default(step=event["step"]):
            for name in names:
                tf.summary.scalar(f"{event['event']}/{name}", event[name])
            if event["event"] == "log":
                tf.summary.text("stage", event["stage"])
