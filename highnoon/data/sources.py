"""Data sources: where samples come from, before tokenisation.

A ``DataSource`` has a ``name``, ``iter_samples()`` (yields ``str`` texts or 1-D int token arrays),
``iter_texts()`` (texts only), ``describe()`` (a JSON-able dict that goes into store manifests and
cache fingerprints) and ``stats`` (counts of what the last iteration skipped or repaired).

File sources (paths are sorted, so the order is deterministic):

* ``.txt``: ``split="file"`` (default) makes each file one sample; ``split="blank_line"`` makes
  each block of text between blank lines one sample.
* ``.jsonl``: one JSON object per line, text in ``text_field`` (default ``"text"``). A line that
  is not JSON, not an object, or lacks a string field is a ValueError naming file and line.
  Blank lines are ignored.
* ``.tfrecord``/``.tfrecords``: ``tf.train.Example`` records with a ``text`` bytes feature or a
  ``tokens`` int64 feature (ids of the store's tokenizer).
* ``tfds:NAME[/CONFIG][:SPLIT]`` (split defaults to ``train``): read from a TFDS ``data_dir``
  where it was prepared offline; never downloads.

Invalid UTF-8 (a bad byte sequence, or in JSONL an escaped lone surrogate such as ``\\ud800``):
``errors="replace"`` (default) substitutes U+FFFD and counts the sample in
``stats["invalid_utf8_replaced"]`` (the store's manifest keeps the count, and a warning names it
once per source and process); ``errors="strict"`` raises a ValueError naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from highnoon.data.file_hashes import content_sha256
from highnoon.utils.files import is_remote
from highnoon.utils.validation import InvalidArgumentError, InvalidDataError, check_choice

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl",)
TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords")
ERRORS = ("replace", "strict")
SPLITS = ("file", "blank_line")


class DataSource:
    """Base class: subclasses implement ``iter_samples`` and ``describe``."""

    name: str = "source"
    mixing_weight: float | None = None  # None: no weight given (the entry is not a share)

    def __init__(self) -> None:
        self.stats: dict[str, int] = {}

    def iter_samples(self) -> Iterator[str | np.ndarray]:
        raise NotImplementedError

    def iter_texts(self) -> Iterator[str]:
        """Only the text samples (token samples are skipped)."""
        for sample in self.iter_samples():
            if isinstance(sample, str):
                yield sample

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError

    def with_weight(self, weight: float | None) -> DataSource:
        """This source with another mixing weight, or None for none (a shallow copy)."""
        import copy

        clone = copy.copy(self)
        clone.stats = {}
        clone.mixing_weight = None if weight is None else float(weight)
        return clone

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _count(stats: dict[str, int], key: str, n: int = 1) -> None:
    stats[key] = stats.get(key, 0) + n


def _file_signature(path: str) -> dict[str, Any]:
    """What identifies a file's content in cache keys.

    A local file: its path and the sha256 of its bytes, so any edit (also one that keeps size
    and mtime) gives another key; hashing runs at ~1 GB/s, far below the cost of tokenising,
    and an unchanged file is not hashed again (``file_hashes.py``).
    A remote file (``gs://``...): its path, size and modification time from ``tf.io.gfile.stat``,
    since hashing would download it; object stores such as GCS never change an object in place,
    every write makes a new object with a new modification time.
    """
    if is_remote(path):
        import tensorflow as tf

        st = tf.io.gfile.stat(path)
        return {"path": path, "size": int(st.length), "mtime_nsec": int(st.mtime_nsec)}
    return {"path": os.path.abspath(path), "sha256": content_sha256(path)}


def _open_bytes(path: str) -> bytes:
    if is_remote(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def _decode(data: bytes, errors: str, where: str, stats: dict[str, int]) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        if errors == "strict":
            raise InvalidDataError(
                f"{where} is not valid UTF-8 ({err}); fix the file or use errors='replace'"
            ) from err
        _count(stats, "invalid_utf8_replaced")
        return data.decode("utf-8", errors="replace")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_text(text: str, errors: str, where: str, stats: dict[str, int]) -> str:
    """``text`` as UTF-8 can hold it. A JSON escape such as ``\\ud800`` without its pair
    decodes to a lone surrogate, which no UTF-8 encoder accepts: it is invalid UTF-8 like a
    bad byte, so it is replaced (and counted) or refused the same way."""
    if not _SURROGATE.search(text):
        return text
    if errors == "strict":
        raise InvalidDataError(
            f"{where} holds an unpaired surrogate escape (e.g. \\ud800), which is not valid "
            "UTF-8; fix the file or use errors='replace'"
        )
    _count(stats, "invalid_utf8_replaced")
    return _SURROGATE.sub("\ufffd", text)


class FileSource(DataSource):
    """Samples from a sorted list of files; the format is chosen by the file suffix."""

    def __init__(
        self,
        paths: Sequence[str],
        *,
        name: str | None = None,
        pattern: str | None = None,
        split: str = "file",
        text_field: str = "text",
        tokens_field: str = "tokens",
        errors: str = "replace",
    ) -> None:
        super().__init__()
        if not paths:
            raise InvalidArgumentError(f"no files for source {name or pattern!r}")
        check_choice("split", split, SPLITS)
        check_choice("errors", errors, ERRORS)
        self.paths = sorted(str(p) for p in paths)
        self.name = name or pattern or self.paths[0]
        self.pattern = pattern
        self.split = split
        self.text_field = text_field
        self.tokens_field = tokens_field
        self.errors = errors
        for path in self.paths:
            if not path.endswith(TEXT_SUFFIXES + JSONL_SUFFIXES + TFRECORD_SUFFIXES):
                raise InvalidArgumentError(
                    f"file {path!r} has an unsupported suffix; supported: "
                    f"{TEXT_SUFFIXES + JSONL_SUFFIXES + TFRECORD_SUFFIXES}"
                )

    def iter_samples(self) -> Iterator[str | np.ndarray]:
        self.stats.clear()
        for path in self.paths:
            if path.endswith(TEXT_SUFFIXES):
                yield from self._iter_txt(path)
            elif path.endswith(JSONL_SUFFIXES):
                yield from self._iter_jsonl(path)
            else:
                yield from self._iter_tfrecord(path)

    def _iter_txt(self, path: str) -> Iterator[str]:
        text = _decode(_open_bytes(path), self.errors, f"file {path!r}", self.stats)
        if self.split == "file":
            yield text
            return
        block: list[str] = []
        for line in text.splitlines():
            if line.strip():
                block.append(line)
            elif block:
                yield "\n".join(block)
                block = []
        if block:
            yield "\n".join(block)

    def _iter_jsonl(self, path: str) -> Iterator[str]:
        data = _open_bytes(path)
        for number, raw in enumerate(data.split(b"\n"), start=1):
            if not raw.strip():
                continue
            where = f"file {path!r} line {number}"
            line = _decode(raw, self.errors, where, self.stats)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InvalidDataError(f"{where} is not valid JSON: {err.msg}") from err
            if not isinstance(record, dict) or not isinstance(record.get(self.text_field), str):
                raise InvalidDataError(
                    f"{where} has no string field text_field={self.text_field!r} "
                    f"(keys: {sorted(record) if isinstance(record, dict) else type(record).__name__})"
                )
            yield _valid_text(record[self.text_field], self.errors, where, self.stats)

    def _iter_tfrecord(self, path: str) -> Iterator[str | np.ndarray]:
        import tensorflow as tf

        dataset = tf.data.TFRecordDataset(path)
        try:
            for number, raw in enumerate(dataset.as_numpy_iterator()):
                example = tf.train.Example.FromString(raw)
                feature = example.features.feature
                where = f"file {path!r} record {number}"
                if self.text_field in feature and feature[self.text_field].bytes_list.value:
                    values = feature[self.text_field].bytes_list.value
                    yield _decode(b"".join(values), self.errors, where, self.stats)
                elif self.tokens_field in feature:
                    yield np.asarray(feature[self.tokens_field].int64_list.value, dtype=np.int64)
                else:
                    raise InvalidDataError(
                        f"{where} has neither a bytes feature {self.text_field!r} nor an int64 "
                        f"feature {self.tokens_field!r} (features: {sorted(feature)})"
                    )
        except tf.errors.DataLossError as err:
            raise InvalidDataError(
                f"file {path!r} is not a valid TFRecord file: {err.message}"
            ) from err

    def describe(self) -> dict[str, Any]:
        return {
            "type": "files",
            "name": self.name,
            "files": [_file_signature(p) for p in self.paths],
            "split": self.split,
            "text_field": self.text_field,
            "tokens_field": self.tokens_field,
            "errors": self.errors,
        }


def parse_tfds_spec(spec: str) -> tuple[str, str | None, str]:
    """``tfds:NAME[/CONFIG][:SPLIT]`` -> (name, config or None, split; default ``train``)."""
    if not spec.startswith("tfds:"):
        raise InvalidArgumentError(f"tfds spec {spec!r} must start with 'tfds:'")
    body = spec[len("tfds:") :]
    dataset, _, split = body.partition(":")
    name, _, config = dataset.partition("/")
    valid = name and all(c.isalnum() or c in "_." for c in name)
    if not valid or "/" in config or (body.count(":") > 1):
        raise InvalidArgumentError(
            f"tfds spec {spec!r} is malformed; expected 'tfds:NAME[/CONFIG][:SPLIT]', "
            "e.g. 'tfds:wikipedia/20230601.en:train'"
        )
    return name, (config or None), (split or "train")


class TfdsSource(DataSource):
    """A TFDS dataset prepared offline in ``data_dir``; never downloads."""

    def __init__(
        self,
        spec: str,
        *,
        data_dir: str | None = None,
        text_field: str = "text",
        errors: str = "replace",
        name: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("errors", errors, ERRORS)
        self.tfds_name, self.config, self.split = parse_tfds_spec(spec)
        self.spec = spec
        self.name = name or spec
        self.data_dir = data_dir
        self.text_field = text_field
        self.errors = errors

    def _builder(self) -> Any:
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(self.tfds_name, config=self.config, data_dir=self.data_dir)
        except Exception as err:  # tfds raises several types for unknown/unprepared datasets
            raise InvalidArgumentError(
                f"TFDS dataset {self.spec!r} could not be loaded from data_dir="
                f"{self.data_dir!r} ({type(err).__name__}: {err}); it must be prepared offline "
                "(tfds build / download_and_prepare on a machine with network), highnoon never "
                "downloads"
            ) from err
        if not builder.is_prepared():
            raise InvalidArgumentError(
                f"TFDS dataset {self.spec!r} is not prepared in data_dir={self.data_dir!r}; it "
                "must be prepared offline, highnoon never calls download_and_prepare"
            )
        return builder

    def iter_samples(self) -> Iterator[str]:
        self.stats.clear()
        builder = self._builder()
        dataset = builder.as_dataset(split=self.split, shuffle_files=False)
        for number, example in enumerate(dataset.as_numpy_iterator()):
            if self.text_field not in example:
                raise InvalidDataError(
                    f"TFDS {self.spec!r} example {number} has no field "
                    f"text_field={self.text_field!r} (fields: {sorted(example)})"
                )
            value = example[self.text_field]
            if isinstance(value, bytes):
                value = _decode(
                    value, self.errors, f"TFDS {self.spec!r} example {number}", self.stats
                )
            yield str(value)

    def describe(self) -> dict[str, Any]:
        version = None
        with contextlib.suppress(ValueError):
            version = str(self._builder().info.version)
        return {
            "type": "tfds",
            "name": self.tfds_name,
            "config": self.config,
            "split": self.split,
            "version": version,
            "text_field": self.text_field,
        }


class CallableSource(DataSource):
    """Samples from a zero-argument callable returning an iterable (texts or token arrays)."""

    def __init__(
        self, name: str, factory: Callable[[], Iterable[Any]], description: dict[str, Any]
    ) -> None:
        super().__init__()
        self.name = name
        self.factory = factory
        self.description = description

    def iter_samples(self) -> Iterator[str | np.ndarray]:
        self.stats.clear()
        yield from self.factory()

    def describe(self) -> dict[str, Any]:
        return dict(self.description)


class StoreSource(DataSource):
    """A prepared token store used as a dataset entry: its directory (local or any
    ``tf.io.gfile`` URL) holds a store ``manifest.json``. The stage reads it in place
    (``stage_data.prepare_stage_store``): no tokenising, no copy, no raw sources.

    ``iter_samples`` yields its samples as token batches (ids without EOS), so it can also feed
    another store's build. ``describe`` names the store's path and content fingerprint.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.name = path
        self.path = path
        self._store: Any = None

    def open(self) -> Any:
        """The ``TokenStore`` (opened once: manifests only)."""
        if self._store is None:
            from highnoon.data.store import TokenStore

            self._store = TokenStore.open(self.path)
        return self._store

    def iter_samples(self) -> Iterator[Any]:
        from highnoon.data.store import TokenBatch

        store = self.open()
        self.stats.clear()
        for start in range(0, store.num_samples, 4096):
            flat, offsets = store.gather(np.arange(start, min(start + 4096, store.num_samples)))
            keep = np.ones(flat.size, dtype=bool)
            keep[offsets[1:] - 1] = False  # the stored EOS; a build adds it back
            yield TokenBatch(flat[keep], np.diff(offsets) - 1)

    def describe(self) -> dict[str, Any]:
        return {"type": "store", "path": self.path, "fingerprint": self.open().fingerprint}
