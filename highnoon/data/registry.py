"""The dataset registry: names -> sources, and resolution of dataset entries.

A dataset entry (what ``Trainer.add_curriculum_stage(datasets=...)`` takes) is resolved in this
order:

1. a registered name (``register_dataset``; the embedded datasets are registered on import);
2. ``tfds:NAME[/CONFIG][:SPLIT]``: a TFDS dataset prepared offline in ``data_dir``;
3. a prepared token store: a directory (local or any ``tf.io.gfile`` URL such as ``gs://``)
   holding a store ``manifest.json`` (``highnoon-prepare-data``'s output), read in place;
4. a file path or glob of ``.txt``, ``.jsonl``, ``.tfrecord``/``.tfrecords`` files (or a
   directory: its files with those suffixes);
5. ``(entry, mixing_weight)``: any of the above with a mixing weight: weights are shares of the
   stage's samples (``stage_data``, "Mixing rule"). A stage's entries are all weighted or none.

Anything else is a ValueError listing the registered names and the accepted forms.

From gin: bind ``register_datasets.mapping = {"name": "path/*.jsonl", "other": {"source":
"tfds:foo", "text_field": "body"}}``; the launch programs call the gin-configured
``register_datasets`` (``highnoon.launch.configurables``) after parsing gin files.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from highnoon.data.embedded import EMBEDDED_DEFAULTS, EmbeddedSource
from highnoon.data.sources import (
    JSONL_SUFFIXES,
    TEXT_SUFFIXES,
    TFRECORD_SUFFIXES,
    CallableSource,
    DataSource,
    FileSource,
    StoreSource,
    TfdsSource,
    parse_tfds_spec,
)
from highnoon.data.store import is_store
from highnoon.utils.files import is_remote
from highnoon.utils.validation import InvalidArgumentError, check_mixture_weights

_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + TFRECORD_SUFFIXES
ACCEPTED_FORMS = (
    "a registered dataset name; 'tfds:NAME[/CONFIG][:SPLIT]'; a prepared token store's "
    "directory (holding manifest.json); a path, directory or glob of "
    f"{', '.join(_SUFFIXES)} files; or an (entry, mixing_weight) tuple"
)

# name -> (source, options): source is an entry string, a DataSource or a zero-arg callable
_REGISTRY: dict[str, tuple[Any, dict[str, Any]]] = {}


def register_dataset(name: str, source: Any, **options: Any) -> None:
    """Register ``name`` for ``source``: a dataset entry string (path, glob, ``tfds:``, another
    name), a ``DataSource``, or a zero-argument callable returning an iterable of texts or token
    arrays. ``options`` are passed to the source (e.g. ``text_field``, ``split``, ``errors``,
    ``max_samples`` for embedded datasets). Re-registering a name replaces it."""
    if not isinstance(name, str) or not name or name.startswith("tfds:"):
        raise InvalidArgumentError(
            f"name={name!r} must be a non-empty string not starting with 'tfds:'"
        )
    if not (isinstance(source, str | DataSource) or callable(source)):
        raise InvalidArgumentError(
            f"source={source!r} for dataset {name!r} must be an entry string, a DataSource or a "
            "callable returning an iterable of samples"
        )
    _REGISTRY[name] = (source, dict(options))


def register_datasets(mapping: Mapping[str, Any] | None = None) -> list[str]:
    """Register several datasets: ``{name: source}`` or ``{name: {"source": ..., **options}}``.
    Returns the names registered. Meant to be bound in gin files."""
    names = []
    for name, value in sorted((mapping or {}).items()):
        if isinstance(value, Mapping):
            options = dict(value)
            if "source" not in options:
                raise InvalidArgumentError(
                    f"register_datasets: entry {name!r} needs a 'source' key"
                )
            register_dataset(name, options.pop("source"), **options)
        else:
            register_dataset(name, value)
        names.append(name)
    return names


def unregister_dataset(name: str) -> None:
    """Remove ``name`` from the registry (no error if absent)."""
    _REGISTRY.pop(name, None)


def registered_datasets() -> list[str]:
    """Sorted registered names."""
    return sorted(_REGISTRY)


def register_embedded_datasets() -> None:
    """Register the embedded datasets under their own names (done on import)."""
    for kind in EMBEDDED_DEFAULTS:
        if kind not in _REGISTRY:
            _REGISTRY[kind] = (_embedded_factory(kind), {})


def _embedded_factory(kind: str) -> Callable[..., DataSource]:
    def factory(**options: Any) -> DataSource:
        return EmbeddedSource(kind, **options)

    factory.embedded_kind = kind  # type: ignore[attr-defined]
    return factory


def _split_weight(entry: Any) -> tuple[Any, float | None]:
    if isinstance(entry, tuple | list) and not isinstance(entry, str):
        if len(entry) != 2:
            raise InvalidArgumentError(
                f"dataset entry {entry!r} must be (entry, mixing_weight), got {len(entry)} items"
            )
        inner, weight = entry
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            weight = float("nan")
        if not weight > 0 or weight == float("inf"):
            raise InvalidArgumentError(
                f"mixing_weight={entry[1]!r} for dataset {inner!r} must be a finite number > 0"
            )
        return inner, weight
    return entry, None


def _expand_paths(entry: str) -> list[str]:
    remote = is_remote(entry)
    if remote:
        import tensorflow as tf

        if tf.io.gfile.isdir(entry):
            return sorted(
                f"{entry.rstrip('/')}/{n}"
                for n in tf.io.gfile.listdir(entry)
                if n.endswith(_SUFFIXES)
            )
        return sorted(tf.io.gfile.glob(entry))
    expanded = os.path.expanduser(entry)
    if os.path.isdir(expanded):
        return sorted(
            os.path.join(expanded, n)
            for n in os.listdir(expanded)
            if n.endswith(_SUFFIXES) and os.path.isfile(os.path.join(expanded, n))
        )
    return sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))


def _looks_like_path(entry: str) -> bool:
    return (
        "/" in entry
        or os.sep in entry
        or any(c in entry for c in "*?[")
        or entry.endswith(_SUFFIXES)
        or os.path.exists(os.path.expanduser(entry))
    )


def _unknown(entry: Any) -> ValueError:
    return InvalidArgumentError(
        f"dataset entry {entry!r} is not a registered name, a tfds spec or an existing file/glob. "
        f"Registered names: {registered_datasets()}. Accepted forms: {ACCEPTED_FORMS}"
    )


def _resolve(entry: Any, data_dir: str | None, options: dict[str, Any], depth: int) -> DataSource:
    if depth > 8:
        raise InvalidArgumentError(
            f"dataset entry {entry!r}: registered names refer to each other in a loop"
        )
    if isinstance(entry, DataSource):
        return entry
    if not isinstance(entry, str) or not entry:
        raise _unknown(entry)
    if entry in _REGISTRY:
        source, registered_options = _REGISTRY[entry]
        merged = {**registered_options, **options}
        if isinstance(source, DataSource):
            resolved = source
        elif isinstance(source, str):
            resolved = _resolve(source, data_dir, merged, depth + 1)
        elif hasattr(source, "embedded_kind"):
            resolved = source(**merged)
        else:
            resolved = CallableSource(
                entry, source, {"type": "callable", "name": entry, "options": repr(merged)}
            )
        resolved.name = entry
        return resolved
    if entry.startswith("tfds:"):
        return TfdsSource(entry, data_dir=options.pop("data_dir", data_dir), **options)
    if _looks_like_path(entry) and is_store(entry):
        if options:
            raise InvalidArgumentError(
                f"dataset entry {entry!r} is a prepared token store: options {sorted(options)} "
                "apply to raw sources only; prepare the store with them instead"
            )
        return StoreSource(entry)
    if _looks_like_path(entry):
        paths = _expand_paths(entry)
        if not paths:
            raise InvalidArgumentError(
                f"dataset entry {entry!r} matches no files (looked for a file, directory or glob "
                f"of {', '.join(_SUFFIXES)} files)"
            )
        return FileSource(paths, pattern=entry, **options)
    raise _unknown(entry)


def resolve_dataset(entry: Any, data_dir: str | None = None) -> DataSource:
    """The ``DataSource`` for a dataset entry (see the module docstring for the forms).

    The returned source's ``mixing_weight`` is the tuple's weight (None without one).
    """
    inner, weight = _split_weight(entry)
    source = _resolve(inner, data_dir, {}, 0)
    return source.with_weight(weight)


def validate_dataset_entry(entry: Any) -> None:
    """Cheap check that ``entry`` can be resolved: the name exists, the path/glob matches files
    or the tfds spec is well formed. Reads no data. Raises ValueError otherwise."""
    inner, _ = _split_weight(entry)
    if isinstance(inner, DataSource):
        return
    if not isinstance(inner, str) or not inner:
        raise _unknown(inner)
    if inner in _REGISTRY:
        return
    if inner.startswith("tfds:"):
        parse_tfds_spec(inner)
        return
    if _looks_like_path(inner) and is_store(inner):
        return
    if _looks_like_path(inner):
        paths = _expand_paths(inner)
        if not paths:
            raise InvalidArgumentError(f"dataset entry {inner!r} matches no files")
        bad = [p for p in paths if not p.endswith(_SUFFIXES)]
        if bad:
            raise InvalidArgumentError(
                f"dataset entry {inner!r} matches files with unsupported suffixes {bad[:3]}; "
                f"supported: {_SUFFIXES}"
            )
        return
    raise _unknown(inner)


def resolve_datasets(entries: Any, data_dir: str | None = None) -> list[DataSource]:
    """Resolve a single entry or a list of entries (a tuple ``(entry, weight)`` is one entry)."""
    if isinstance(entries, str | DataSource) or (
        isinstance(entries, tuple) and len(entries) == 2 and not isinstance(entries[1], str | tuple)
    ):
        entries = [entries]
    entries = list(entries) if isinstance(entries, Iterable) else [entries]
    if not entries:
        raise InvalidArgumentError("datasets must name at least one dataset entry")
    check_mixture_weights("datasets", entries)
    return [resolve_dataset(e, data_dir=data_dir) for e in entries]
