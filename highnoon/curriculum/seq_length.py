"""Sequence-length warm-up: a stage's row length grows with its steps (numpy-free, pure integers).

Li, Zhang and He (NeurIPS 2022, "The Stability-Efficiency Dilemma") train GPT-2 on short rows
first and grow the row length linearly to the full length over a set number of steps; the same
quality came with up to 2.2x fewer tokens. Here the length at stage step ``t`` is the linear
target ``start + (max_length - start) * t // steps``, rounded *down* to a small set of static
lengths, ``start * 2^k`` below ``max_length`` and ``max_length`` itself, so an XLA/TPU step
compiles one shape per length, not one per step. From step ``steps`` on the length is
``max_length``.

Length ``l`` begins at the first step whose target reaches it, ``ceil((l - start) * steps /
(max_length - start))``; integer arithmetic only, so every host agrees on every boundary. The
schedule is a function of the stage step alone (not of the host count, the epoch layout or the
time), so the global batch stream stays the same on any number of hosts and a resumed run picks
up the length of the step it resumes at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from highnoon.utils.validation import InvalidArgumentError, check_int


@dataclass(frozen=True)
class SequenceLengthWarmup:
    """The row length at every step of a stage (see the module docstring).

    ``steps == 0`` turns the warm-up off: every step has ``max_length``.
    """

    max_length: int
    steps: int
    start_length: int
    lengths: tuple[int, ...] = field(init=False)
    begins: tuple[int, ...] = field(init=False)  # first stage step of each length

    def __post_init__(self) -> None:
        check_int("max_seq_length", self.max_length, minimum=1)
        check_int("seq_length_warmup_steps", self.steps, minimum=0)
        check_int("seq_length_warmup_start", self.start_length, minimum=1)
        if self.steps and self.start_length >= self.max_length:
            raise InvalidArgumentError(
                f"seq_length_warmup_start={self.start_length} must be below "
                f"max_seq_length={self.max_length}: the warm-up grows rows from the start length "
                "to max_seq_length (lower the start, or set seq_length_warmup_steps=0)"
            )
        if not self.steps:
            lengths, begins = (self.max_length,), (0,)
        else:
            lengths_list, length = [], self.start_length
            while length < self.max_length:
                lengths_list.append(length)
                length *= 2
            lengths_list.append(self.max_length)
            span = self.max_length - self.start_length
            begins = tuple(
                -(-(ell - self.start_length) * self.steps // span) for ell in lengths_list
            )
            lengths = tuple(lengths_list)
        object.__setattr__(self, "lengths", lengths)
        object.__setattr__(self, "begins", begins)

    @property
    def enabled(self) -> bool:
        return self.steps > 0

    def length_at(self, step: int) -> int:
        """Row length at stage step ``step`` (>= 0)."""
        step = check_int("step", step, minimum=0)
        chosen = self.lengths[0]
        for length, begin in zip(self.lengths, self.begins):
            if begin <= step:
                chosen = length
        return chosen

    def next_change(self, step: int) -> int | None:
        """The first stage step after ``step`` whose length differs (None: no more changes)."""
        step = check_int("step", step, minimum=0)
        current = self.length_at(step)
        for length, begin in zip(self.lengths, self.begins):
            if begin > step and length != current:
                return begin
        return None

    def steps_per_length(self) -> dict[int, int]:
        """Warm-up steps spent at each length below ``max_length`` (0 for a skipped length)."""
        out = {}
        for i, length in enumerate(self.lengths[:-1]):
            out[length] = max(0, min(self.begins[i + 1], self.steps) - self.begins[i])
        return out

    def check_stage(self, stage: str, stage_steps: int) -> None:
        """Refuses a warm-up that a stage of ``stage_steps`` optimizer steps cannot hold: one
        longer than the stage, or one too short (or in too small a stage) for every warm-up
        length to get a step."""
        if not self.steps:
            return
        if stage_steps < len(self.lengths):
            raise InvalidArgumentError(
                f"stage {stage!r} has {stage_steps} steps, too few for the sequence-length "
                f"warm-up's {len(self.lengths)} lengths {list(self.lengths)}; give the stage more "
                "epochs or data, raise seq_length_warmup_start, or set seq_length_warmup_steps=0"
            )
        if self.steps > stage_steps:
            raise InvalidArgumentError(
                f"seq_length_warmup_steps={self.steps} is longer than stage {stage!r} "
                f"({stage_steps} steps); the rows would never reach max_seq_length="
                f"{self.max_length}. Use at most {stage_steps} warm-up steps"
            )
        skipped = [length for length, count in self.steps_per_length().items() if count == 0]
        if skipped:
            needed = self.steps
            while any(
                n == 0
                for n in SequenceLengthWarmup(self.max_length, needed, self.start_length)
                .steps_per_length()
                .values()
            ):
                needed += 1
            raise InvalidArgumentError(
                f"seq_length_warmup_steps={self.steps} is too short for the warm-up lengths "
                f"{list(self.lengths)} of stage {stage!r}: length(s) {skipped} would get no "
                f"step. Use at least {needed} warm-up steps, or raise seq_length_warmup_start"
            )
