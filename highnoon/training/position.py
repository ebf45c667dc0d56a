"""``DataPosition``: where a run stands, enough to rebuild its exact input stream.

One live object per run: the controller advances it and the checkpointer saves it (and fills it
in place on a restore), both holding the same object from their construction.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class DataPosition:
    """Where training stands: enough to rebuild the exact input stream (docs/design.md,
    "Determinism"), plus the running sums a resumed epoch needs to report the same loss."""

    stage: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    tokens_seen: int = 0
    stage_start_step: int = 0
    # Per stage: the curriculum scheduler's JSON state (adaptive decisions, fingerprint).
    curriculum_states: dict[str, Any] = field(default_factory=dict)
    # Running sums of the current epoch, so a resumed epoch reports the same epoch loss.
    epoch_loss_sum: float = 0.0
    epoch_token_sum: float = 0.0
    last_epoch_loss: float | None = None
    completed_stages: list[dict[str, Any]] = field(default_factory=list)
    # Per stage index: what its stream was made from (``StagePlan.stream_fingerprint``),
    # compared on resume so a run never continues on changed data unnoticed.
    stage_fingerprints: dict[str, dict[str, str]] = field(default_factory=dict)
    # Resumes that restarted a stage on changed data (``allow_data_change``).
    data_changes: list[dict[str, Any]] = field(default_factory=list)
    # What the current stage has fed so far: samples, real target tokens, computed token slots
    # (padding included), and samples its epochs left out.
    stage_counts: dict[str, int] = field(default_factory=dict)
    # The learning-rate schedule's phase: the stage it began at and the global step of that
    # stage's start (0, 0 for a run's planned stages; later for stages appended after it ended).
    schedule_start_stage: int = 0
    schedule_start_step: int = 0
    # A packed epoch's packing cursor at ``step_in_epoch`` (``PackingCursor.to_json``: window,
    # its first row, step), so a resume packs no window before it; None when not packed.
    packing_cursor: dict[str, int] | None = None

    def enter_stage(self, index: int) -> None:
        self.stage, self.epoch, self.step_in_epoch = index, 0, 0
        self.packing_cursor = None
        self.stage_start_step = self.global_step
        self.epoch_loss_sum = self.epoch_token_sum = 0.0
        self.stage_counts = {}

    def count(self, **amounts: int) -> None:
        """Adds to the current stage's counts (``samples``, ``tokens``, ``slots``, ``dropped``)."""
        for key, amount in amounts.items():
            self.stage_counts[key] = self.stage_counts.get(key, 0) + int(amount)

    def stage_report(self) -> dict[str, Any]:
        """The current stage's ``samples_seen``, ``samples_dropped``, ``tokens_seen`` and
        ``padding_fraction`` (of the token positions it computed)."""
        counts = self.stage_counts
        slots = counts.get("slots", 0)
        return {
            "samples_seen": counts.get("samples", 0),
            "samples_dropped": counts.get("dropped", 0),
            "tokens_seen": counts.get("tokens", 0),
            "padding_fraction": 1.0 - counts.get("tokens", 0) / slots if slots else 0.0,
        }

    def record_steps(self, count: int, loss_sum: float, token_sum: float) -> None:
        """``count`` optimizer steps done: the sum of their losses weighted by their target
        tokens, and of those tokens (``step_sums``)."""
        self.global_step += count
        self.step_in_epoch += count
        self.tokens_seen += int(token_sum)
        self.epoch_loss_sum += loss_sum
        self.epoch_token_sum += token_sum

    @staticmethod
    def step_sums(losses: np.ndarray, tokens: np.ndarray) -> tuple[float, float]:
        """Steps' token-weighted loss sum and token sum, what ``record_steps`` and the log
        window add up (computed once a host call)."""
        return float((losses * tokens).sum()), float(tokens.sum())

    def next_epoch(self, epoch_loss: float) -> None:
        self.last_epoch_loss = epoch_loss
        self.epoch += 1
        self.step_in_epoch = 0
        self.packing_cursor = None
        self.epoch_loss_sum = self.epoch_token_sum = 0.0

    def complete_stage(
        self, name: str, epochs: int, steps: int, samples_per_dataset: dict[str, int] | None = None
    ) -> None:
        """Record the finished stage (its summary entry) and enter the next one.
        ``samples_per_dataset``: samples trained per dataset entry, by the entry's name."""
        entry = {
            "name": name,
            "epochs": epochs,
            "final_loss": self.last_epoch_loss,
            "steps": steps,
            **self.stage_report(),
        }
        if samples_per_dataset is not None:
            entry["samples_per_dataset"] = dict(samples_per_dataset)
        self.completed_stages.append(entry)
        self.enter_stage(self.stage + 1)

    def to_json(self) -> str:
        """The position as JSON, in field order: not ``sort_keys``, so a finished stage's
        ``samples_per_dataset`` keeps the stage's dataset order when a resumed run reports it
        (every host writes the same bytes either way: the order is the plan's)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DataPosition:
        values = json.loads(text)
        values.pop("fingerprint", None)  # written by 0.1 checkpoints, never set
        return cls(**values)

    def start_schedule_phase(self) -> None:
        """The learning-rate schedule starts a phase of its own here (appended stages)."""
        self.schedule_start_stage = self.stage
        self.schedule_start_step = self.global_step

    def replace_with(self, other: DataPosition) -> None:
        """Takes every field of ``other`` in place (a restore into the live position)."""
        for item in dataclasses.fields(self):
            setattr(self, item.name, getattr(other, item.name))
