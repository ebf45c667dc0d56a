"""Curriculum stages as the Trainer keeps them: a name, datasets, epochs, a weight, an optional
mixture schedule and the settings the stage overrides, checked when the stage is added (not an
hour into training)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from highnoon import data as hn_data
from highnoon.data.mixture_schedule import MixtureSchedule, check_mixture_schedule
from highnoon.training.settings import StageSettings
from highnoon.utils import validation as v


@dataclass
class CurriculumStage:
    """A named training stage: which data, how long, how important, what it overrides."""

    name: str
    datasets: list[Any]
    epochs: int | None = None
    weight: float = 1.0
    config_overrides: dict[str, Any] = field(default_factory=dict)
    # Per-epoch weights of a mixed stage's (unweighted) entries; None: fixed shares.
    mixture_schedule: MixtureSchedule | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "datasets": [list(d) if isinstance(d, tuple) else d for d in self.datasets],
            "epochs": self.epochs,
            "weight": self.weight,
            "config_overrides": self.config_overrides,
        }
        if self.mixture_schedule is not None:  # absent otherwise: older records unchanged
            out["mixture_schedule"] = self.mixture_schedule.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CurriculumStage:
        datasets = [tuple(d) if isinstance(d, list) else d for d in data["datasets"]]
        schedule = data.get("mixture_schedule")
        return cls(
            name=data["name"],
            datasets=datasets,
            epochs=data["epochs"],
            weight=data["weight"],
            config_overrides=dict(data["config_overrides"]),
            mixture_schedule=check_mixture_schedule("mixture_schedule", schedule, len(datasets)),
        )


def checked_stage(
    name: Any,
    datasets: Any,
    epochs: Any,
    weight: Any,
    config_overrides: dict[str, Any],
    settings: StageSettings,
    existing: Sequence[CurriculumStage],
    mixture_schedule: Any = None,
) -> CurriculumStage:
    """A stage to add after ``existing``, every argument checked (overrides against the run's
    ``settings``)."""
    v.check_str("stage name", name)
    if any(stage.name == name for stage in existing):
        raise v.InvalidArgumentError(
            f"a stage named {name!r} already exists; stage names must be unique"
        )
    if datasets is None:
        raise v.InvalidArgumentTypeError(
            f"stage {name!r}: datasets=None; name at least one dataset (a registered name, "
            "a path or glob, or (entry, weight))"
        )
    datasets = v.check_items(
        f"stage {name!r}: datasets",
        datasets,
        single=(str, tuple, hn_data.DataSource),
        allowed="a dataset entry (a registered name, a path or glob, 'tfds:NAME', a "
        "DataSource or (entry, weight))",
    )
    if not datasets:
        raise v.InvalidArgumentError(
            f"stage {name!r}: datasets is empty; name at least one dataset"
        )
    epochs = v.check_positive_int(f"stage {name!r}: epochs", epochs, allow_none=True)
    weight = v.check_positive_float(f"stage {name!r}: weight", weight)
    try:
        settings.with_overrides(config_overrides)
    except v.InvalidArgumentError as error:
        raise type(error)(f"stage {name!r}: {error}") from None
    for entry in datasets:
        hn_data.validate_dataset_entry(entry)
    v.check_mixture_weights(f"stage {name!r}: datasets", datasets)
    schedule = _checked_schedule(name, datasets, epochs, mixture_schedule)
    return CurriculumStage(name, datasets, epochs, weight, dict(config_overrides), schedule)


def _checked_schedule(
    name: str, datasets: list[Any], epochs: int | None, value: Any
) -> MixtureSchedule | None:
    """A stage's mixture schedule: over two or more unweighted entries (the schedule holds every
    weight), and over at least two epochs when the stage names its epochs."""
    where = f"stage {name!r}: mixture_schedule"
    schedule = check_mixture_schedule(where, value, len(datasets))
    if schedule is None:
        return None
    if len(datasets) < 2:
        raise v.InvalidArgumentError(
            f"{where} needs two or more dataset entries to mix; the stage has {len(datasets)}"
        )
    if any(isinstance(e, tuple | list) for e in datasets):
        raise v.InvalidArgumentError(
            f"{where} with weighted entries {datasets!r}: the schedule holds every weight; "
            "give the entries without weights"
        )
    if epochs is not None and epochs < 2:
        raise v.InvalidArgumentError(
            f"{where} with epochs={epochs}: the weights change between epochs, so the stage "
            "needs at least 2 (a stage of one epoch mixes by fixed weights)"
        )
    return schedule
