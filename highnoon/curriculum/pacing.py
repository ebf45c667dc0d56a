"""Pacing functions: which fraction of the easy-to-hard order is exposed at time ``t``.

A pacing is split in two parts so that the fixed schedules and the adaptive scheduler share the
same fraction levels:

* ``progress(t)``: how far along the curriculum is, ``u`` in [0, 1] (a staircase or a ramp);
* ``level(u)``: the exposed fraction for that progress, from ``initial_fraction`` (``u = 0``) to 1.

``t`` is an epoch, or a global step when a ``total_steps`` horizon is given (runs shorter than an
epoch). ``T`` is the horizon: ``total_epochs`` / ``total_steps``; for epoch-based pacing without
``total_epochs`` it defaults to ``warmup_epochs + (num_stages - 1) * stage_increment_epochs``, the
epoch at which the warm-up staircase reaches 1.0 (90 with the defaults). ``c0`` is
``initial_fraction`` and ``n`` is ``num_stages``.

================  =========================================================  =====================
name              progress ``u(t)``                                          level ``f(u)``
================  =========================================================  =====================
warmup_staircase  0 for ``t < warmup``, else ``min(n, 1 + (t - warmup) //     ``c0 + (1 - c0) u``
                  increment) / n``: ``warmup_epochs`` at the first level,
                  then one stair every ``stage_increment_epochs`` epochs
                  (``"reference"`` is its earlier name, still accepted)
linear            ``min(1, t / T)``                                          ``c0 + (1 - c0) u``
root_p            ``min(1, t / T)``                                          ``(u (1 - c0^p) +
                                                                             c0^p) ^ (1/p)``
                                                                             (Platanios et al.
                                                                             2019, p = 2)
discrete          ``min(n, (t * n) // T) / n`` (n equal stairs over T)       ``c0 + (1 - c0) u``
exponential       ``min(n, (t * n) // T) / n``                               ``c0 ^ (1 - u)``
                                                                             (each stair multiplies
                                                                             the pool by
                                                                             ``c0^(-1/n)``)
constant          0 (no growth; ``initial_fraction=1.0`` exposes all data)   ``c0``
================  =========================================================  =====================

With the default settings (c0 = 0.2, n = 5, warmup 10, increment 20) the fractions 0.2, 0.36,
0.52, 0.68, 0.84, 1.0 start at epochs 0, 10, 30, 50, 70, 90.

Only integer arithmetic decides the staircase position, so every host agrees on it exactly; the
fraction itself is a few IEEE operations, identical on every platform.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from highnoon.utils.validation import (
    InvalidArgumentError,
    check_fraction,
    check_int,
    check_keys,
    check_positive_float,
    is_integer,
)

WARMUP_STAIRCASE = "warmup_staircase"
# Earlier names still accepted; a pacing keeps the name it was given (saved scheduler states and
# stream fingerprints read as before), so compare through ``canonical_pacing``.
PACING_ALIASES = {"reference": WARMUP_STAIRCASE}
PACINGS = (
    WARMUP_STAIRCASE,
    "linear",
    "root_p",
    "discrete",
    "exponential",
    "constant",
    *PACING_ALIASES,
)
_OPTIONS = {"root_p": {"p"}}  # pacing -> accepted pacing_options keys
DEFAULT_P = 2.0


def canonical_pacing(name: str) -> str:
    """The pacing ``name`` stands for: an alias (``"reference"``) becomes its current name
    (``"warmup_staircase"``), every other name is itself."""
    return PACING_ALIASES.get(name, name)


def check_pacing_options(pacing: str, options: Any) -> dict[str, Any]:
    """``options`` validated for ``pacing``: only the keys that pacing takes (``p`` of root_p), each
    value checked (``p`` a finite number > 0). The one rule for the Trainer's settings, stage
    overrides and the scheduler."""
    options = check_keys(
        "pacing_options", options, sorted(_OPTIONS.get(pacing, ())), owner=f"pacing={pacing!r}"
    )
    if "p" in options:
        p = check_positive_float("pacing_options['p']", options["p"])
        # numpy values become Python ones (the settings are saved as JSON); an int stays an int,
        # so the saved settings and the stream fingerprint read as before.
        options["p"] = int(options["p"]) if is_integer(options["p"]) else p
    return options


@dataclass(frozen=True)
class Pacing:
    """A validated pacing: ``fraction(t)`` and ``stage(t)`` for an epoch or global step ``t``."""

    name: str = WARMUP_STAIRCASE
    initial_fraction: float = 0.2
    num_stages: int = 5
    warmup_epochs: int = 10
    stage_increment_epochs: int = 20
    total_epochs: int | None = None
    total_steps: int | None = None
    p: float = DEFAULT_P

    def __post_init__(self) -> None:
        if self.name not in PACINGS:
            raise InvalidArgumentError(
                f"pacing={self.name!r} is not a known pacing; use one of {PACINGS}"
            )
        check_fraction("initial_fraction", self.initial_fraction, allow_zero=False)
        check_int("num_stages", self.num_stages, minimum=1)
        check_int("warmup_epochs", self.warmup_epochs, minimum=0)
        check_int("stage_increment_epochs", self.stage_increment_epochs, minimum=1)
        if self.total_epochs is not None:
            check_int("total_epochs", self.total_epochs, minimum=1)
        if self.total_steps is not None:
            check_int("total_steps", self.total_steps, minimum=1)
            if canonical_pacing(self.name) == WARMUP_STAIRCASE:
                raise InvalidArgumentError(
                    f"pacing={self.name!r} counts epochs (warmup_epochs, stage_increment_epochs); "
                    "total_steps needs one of 'linear', 'root_p', 'discrete', 'exponential', "
                    "'constant'"
                )
            if self.total_epochs is not None:
                raise InvalidArgumentError(
                    f"give total_epochs={self.total_epochs!r} or total_steps={self.total_steps!r}, "
                    "not both"
                )
        check_positive_float("p", self.p)

    @classmethod
    def create(
        cls, name: str, options: Mapping[str, Any] | None = None, p: float | None = None, **kwargs
    ) -> Pacing:
        """Build from a pacing name plus ``pacing_options`` (only ``{"p": ...}`` for root_p)."""
        if not isinstance(name, str) or name not in PACINGS:
            raise InvalidArgumentError(
                f"pacing={name!r} is not a known pacing; use one of {PACINGS}"
            )
        options = check_pacing_options(name, options or {})
        if p is not None and "p" in options and options["p"] != p:
            raise InvalidArgumentError(
                f"p={p!r} conflicts with pacing_options['p']={options['p']!r}"
            )
        p_value = options.get("p", p if p is not None else DEFAULT_P)
        return cls(name=name, p=p_value, **kwargs)

    @property
    def unit(self) -> str:
        """``"step"`` when a ``total_steps`` horizon is set, else ``"epoch"``."""
        return "step" if self.total_steps is not None else "epoch"

    @property
    def horizon(self) -> int:
        """``T``: total_steps, total_epochs, or the epoch at which the warm-up staircase reaches
        1.0."""
        if self.total_steps is not None:
            return self.total_steps
        if self.total_epochs is not None:
            return self.total_epochs
        return max(1, self.warmup_epochs + (self.num_stages - 1) * self.stage_increment_epochs)

    def stair(self, t: int) -> int | None:
        """Staircase position in 0..num_stages (None for the continuous ramps)."""
        n = self.num_stages
        if canonical_pacing(self.name) == WARMUP_STAIRCASE:
            if t < self.warmup_epochs:
                return 0
            return min(n, 1 + (t - self.warmup_epochs) // self.stage_increment_epochs)
        if self.name in ("discrete", "exponential"):
            return min(n, (t * n) // self.horizon)
        if self.name == "constant":
            return 0
        return None

    def progress(self, t: int) -> float:
        """``u(t)`` in [0, 1]."""
        t = check_int("epoch" if self.unit == "epoch" else "step", t, minimum=0)
        stair = self.stair(t)
        if stair is not None:
            return stair / self.num_stages
        return min(1.0, t / self.horizon)

    def level(self, u: float) -> float:
        """Exposed fraction for progress ``u`` in [0, 1]."""
        c0 = float(self.initial_fraction)
        if u >= 1.0:
            return 1.0
        if self.name == "root_p":
            c0p = c0**self.p
            return min(1.0, (u * (1.0 - c0p) + c0p) ** (1.0 / self.p))
        if self.name == "exponential":
            return min(1.0, c0 ** (1.0 - u))
        return min(1.0, c0 + (1.0 - c0) * u)

    def fraction(self, t: int) -> float:
        """Exposed fraction of the easy-to-hard order at epoch/step ``t``."""
        stair = self.stair(check_int("epoch" if self.unit == "epoch" else "step", t, minimum=0))
        if stair is not None:
            return self.stage_fraction(stair)
        return self.level(self.progress(t))

    def stage(self, t: int) -> int:
        """Stage index 0..num_stages: the stair, or for ramps how many ``1/n`` of the way."""
        t = check_int("epoch" if self.unit == "epoch" else "step", t, minimum=0)
        stair = self.stair(t)
        if stair is not None:
            return stair
        return min(self.num_stages, math.floor(self.progress(t) * self.num_stages))

    def stage_fraction(self, stage: int) -> float:
        """Fraction at stage ``stage`` (the adaptive scheduler's levels).

        Linear levels ``c0 + (1 - c0) * s / n`` are rounded to 12 decimals so that they are the
        decimal values (0.36, 0.68, ...) rather than 1 ulp off (0.6799999999999999).
        """
        n = self.num_stages
        s = min(stage, n)
        if self.name == "constant":
            return float(self.initial_fraction)
        if self.name in ("root_p", "exponential"):
            return self.level(s / n)
        c0 = float(self.initial_fraction)
        return round(c0 + (1.0 - c0) * s / n, 12)


def pool_size(fraction: float, num_samples: int, global_batch_size: int) -> int:
    """Samples in the pool: ``fraction * num_samples`` rounded down to whole global batches,
    never below one global batch (nor above the whole batches that fit in the data).

    The product is rounded to 6 decimals before flooring so that a fraction like
    0.36000000000000004 (or 0.35999999999999999) of 100 gives 36 on every machine.
    """
    exact = math.floor(round(fraction * num_samples, 6))
    whole = (min(exact, num_samples) // global_batch_size) * global_batch_size
    return max(global_batch_size, whole)


def exposed_size(fraction: float, num_samples: int, global_batch_size: int) -> int:
    """Samples the pacing exposes before rounding down to whole global batches: ``fraction *
    num_samples`` (same 6-decimal rule as ``pool_size``), at least ``pool_size``, at most the
    data. Packed epochs use all of them (their steps are rows, not samples); an unpacked epoch
    leaves ``exposed_size - pool_size`` out."""
    exact = math.floor(round(fraction * num_samples, 6))
    return max(pool_size(fraction, num_samples, global_batch_size), min(exact, num_samples))
