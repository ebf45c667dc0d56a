"""Mixture weights that change over a stage: one weight vector per epoch.

A mixed stage draws each epoch's samples by its sources' shares (``stage_data``, "Mixing
rule"). A ``MixtureSchedule`` gives those shares per epoch instead of once for the stage, so a
stage can move from the bulk of its data towards a curated share as it goes (the "best data
last" of Blakeney et al. 2024 and of the mid-training mixes of OLMo 2 and Llama 3):

* ``shape='linear'``: the weights move linearly through ``points`` (two or more weight vectors,
  spread evenly over the stage): epoch ``e`` of ``E`` sits at ``e / (E - 1)`` of the way from
  the first point to the last;
* ``shape='steps'``: the stage's epochs are cut into ``len(points)`` equal runs (as equal as
  whole epochs allow, earlier runs never longer) and run ``k`` uses ``points[k]``.

Epochs past the stage's planned ones (an adaptive stage) keep the last epoch's weights. The
weights of an epoch are a pure function of (schedule, epoch, epochs), computed in Python floats
the same way on every host, so every host draws the same epoch whatever their count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from highnoon.utils import validation as v

SHAPES = ("linear", "steps")
KEYS = ("points", "shape")


@dataclass(frozen=True)
class MixtureSchedule:
    """Per-epoch mixture weights of a stage (module docstring)."""

    points: tuple[tuple[float, ...], ...]
    shape: str = "linear"

    def weights_at(self, epoch: int, epochs: int) -> tuple[float, ...]:
        """The weights of ``epoch`` in a stage of ``epochs`` planned epochs."""
        last = len(self.points) - 1
        epochs = max(int(epochs), 1)
        epoch = min(max(int(epoch), 0), epochs - 1)
        if self.shape == "steps":
            return self.points[min(epoch * (last + 1) // epochs, last)]
        position = epoch * last / (epochs - 1) if epochs > 1 else 0.0
        low = min(int(position), last - 1)
        share = position - low
        return tuple(
            (1.0 - share) * a + share * b for a, b in zip(self.points[low], self.points[low + 1])
        )

    def to_json(self) -> dict[str, Any]:
        return {"points": [list(p) for p in self.points], "shape": self.shape}


def check_mixture_schedule(name: str, value: Any, num_datasets: int) -> MixtureSchedule | None:
    """``value`` (a ``MixtureSchedule``, its JSON dict ``{'points': [[w, ...], ...], 'shape':
    'linear'}``, or None) checked against a stage of ``num_datasets`` unweighted entries: two
    or more points, one finite weight >= 0 per entry in each, each summing to more than 0."""
    if value is None:
        return None
    if isinstance(value, MixtureSchedule):
        value = value.to_json()
    mapping = v.check_keys(name, value, KEYS, owner="a mixture schedule")
    if "points" not in mapping:
        raise v.InvalidArgumentError(
            f"{name}={value!r} has no 'points': give two or more weight vectors, e.g. "
            "{'points': [[0.9, 0.1], [0.2, 0.8]]} to move from the first to the second"
        )
    shape = v.check_choice(f"{name}['shape']", mapping.get("shape", "linear"), SHAPES)
    points = mapping["points"]
    if isinstance(points, str | bytes | Mapping) or not hasattr(points, "__len__"):
        raise v.InvalidArgumentTypeError(
            f"{name}['points']={points!r} must be a list of weight vectors"
        )
    if len(points) < 2:
        raise v.InvalidArgumentError(
            f"{name}['points']={points!r} must hold at least two weight vectors (one is a fixed "
            "mixture: give the entries (entry, weight) tuples instead)"
        )
    checked = []
    for k, point in enumerate(points):
        where = f"{name}['points'][{k}]"
        if isinstance(point, str | bytes | Mapping) or not hasattr(point, "__len__"):
            raise v.InvalidArgumentTypeError(f"{where}={point!r} must be a list of weights")
        if len(point) != num_datasets:
            raise v.InvalidArgumentError(
                f"{where}={list(point)!r} has {len(point)} weight(s) but the stage has "
                f"{num_datasets} dataset entries; give one weight per entry, in their order"
            )
        weights = tuple(v.check_float(f"{where}[{i}]", w, minimum=0.0) for i, w in enumerate(point))
        if not math.fsum(weights) > 0.0:
            raise v.InvalidArgumentError(
                f"{where}={list(point)!r} sums to 0; every point needs a positive weight"
            )
        checked.append(weights)
    return MixtureSchedule(tuple(checked), shape)
