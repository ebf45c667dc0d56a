"""Read units: the parts of a source that are read on their own, and where a shard must end.

A file source of several files is one read unit per file (in its sorted order); any other source
(``tfds:``, a registered callable, embedded data, or any source capped by ``max_samples``, whose
cap counts across files) is one unit. A store never puts samples of two units in one shard
(``store_build.ShardSequence``), so a preparation spread over workers can write each unit's
shards where it reads the unit, and a one-process build, told where units end, writes the same
shards (docs/design.md, "Preparation on Apache Beam").
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from typing import Any

from highnoon.data.sources import DataSource, FileSource


class UnitEnd:
    """The marker ``unit_samples`` puts between two read units' samples."""

    def __repr__(self) -> str:
        return "UNIT_END"


UNIT_END = UnitEnd()


def read_units(source: DataSource, max_samples: int | None = None) -> list[DataSource]:
    """The source cut into units read independently, in source order: one per file of a file
    source (``max_samples`` needs the count across files, so it keeps one unit)."""
    if max_samples is None and isinstance(source, FileSource) and len(source.paths) > 1:
        units = []
        for path in source.paths:
            unit = copy.copy(source)
            unit.paths = [path]
            unit.stats = {}
            units.append(unit)
        return units
    return [source]


def unit_samples(source: DataSource, max_samples: int | None = None) -> Iterator[Any]:
    """``source``'s (first ``max_samples``) samples in order with ``UNIT_END`` between two read
    units: what ``build_token_store`` takes to cut shards as a preparation on Beam does. The
    units' stats are summed into ``source.stats`` as they are read."""
    units = read_units(source, max_samples)
    if units == [source]:
        samples = source.iter_samples()
        yield from samples if max_samples is None else itertools.islice(samples, int(max_samples))
        return
    source.stats.clear()
    for number, unit in enumerate(units):
        if number:
            yield UNIT_END
        yield from unit.iter_samples()
        for name, count in unit.stats.items():
            source.stats[name] = source.stats.get(name, 0) + int(count)
