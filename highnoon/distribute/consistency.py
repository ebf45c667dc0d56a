"""Start-up check that every host runs the same config, data and curriculum.

Each host hashes each named part to a few 31-bit integers (exact in int32, so nothing is lost in
transit), all-gathers them across replicas, and compares. Every replica receives the same
gathered table, so every host reaches the same verdict: all pass, or all raise
`ConfigMismatchError` naming the parts that differ. A silent divergence is never possible.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from highnoon.distribute.errors import ConfigMismatchError
from highnoon.utils.hashing import sha256_digest
from highnoon.utils.validation import InvalidArgumentError

CHUNKS = 4  # 4 x 31 bits = 124 bits of SHA-256 per part
_NAMES_PART = "<part names>"


def fingerprint(text: str) -> np.ndarray:
    """SHA-256 of `text` (UTF-8) as CHUNKS non-negative int32 values of 31 bits each."""
    if not isinstance(text, str):
        raise InvalidArgumentError(
            f"part values must be str, got {type(text).__name__}: {text!r:.80}"
        )
    digest = int.from_bytes(sha256_digest(text)[:16], "big")
    mask = (1 << 31) - 1
    return np.array([(digest >> (31 * i)) & mask for i in range(CHUNKS)], dtype=np.int32)


# One compiled gather per strategy, traced once per table shape: a new tf.function per call
# retraces every time (and TensorFlow warns about it after a few calls in one process).
_GATHERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def all_gather_fn(strategy: Any) -> Any:
    """The cached ``tf.function`` that all-gathers a table (int32, first axis one row per
    replica) under ``strategy``: the cross-host fingerprint check and ``broadcast``."""
    import tensorflow as tf

    gather = _GATHERS.get(strategy)
    if gather is None:

        @tf.function
        def gather(value: tf.Tensor) -> Any:
            def replica_fn(local: tf.Tensor) -> tf.Tensor:
                # tf.identity places the table on this replica's device (an argument has none).
                context = tf.distribute.get_replica_context()
                return context.all_gather(tf.identity(local), axis=0)

            return strategy.run(replica_fn, args=(value,))

        _GATHERS[strategy] = gather
    return gather


def _gather(strategy: Any, table: np.ndarray) -> np.ndarray:
    """All-gather `table` [parts, CHUNKS] from every replica -> [replicas, parts, CHUNKS]."""
    import tensorflow as tf

    value = tf.constant(table[None, ...], dtype=tf.int32)
    with strategy.scope():
        result = all_gather_fn(strategy)(value)
    return strategy.experimental_local_results(result)[0].numpy()


def _disagreements(gathered: np.ndarray, names: list[str]) -> list[tuple[str, str]]:
    """(part name, description of the replica groups) for each part that differs."""
    problems = []
    for j, name in enumerate(names):
        groups: dict[bytes, list[int]] = {}
        for replica in range(gathered.shape[0]):
            groups.setdefault(gathered[replica, j].tobytes(), []).append(replica)
        if len(groups) > 1:
            described = "; ".join(
                f"replicas {members} have {np.frombuffer(key, np.int32)[0]:08x}.."
                for key, members in groups.items()
            )
            problems.append((name, described))
    return problems


def verify_consistent(strategy: Any, parts: Mapping[str, str]) -> None:
    """Check every host holds the same value of each named part; raise on any difference.

    Args:
      strategy: any tf.distribute strategy (OneDevice, Mirrored, MultiWorkerMirrored, TPU).
      parts: part name -> text, e.g. {"config": gin_str, "data": data_fp, "curriculum": ...}.

    Raises:
      ConfigMismatchError: on every host, naming the parts whose fingerprints differ.
      ValueError: `parts` is empty or a value is not a string (raised before any collective).
    """
    if not parts:
        raise InvalidArgumentError(
            "parts must name at least one part to compare, got an empty mapping"
        )
    names = sorted(parts)
    for name in names:
        if not isinstance(name, str):
            raise InvalidArgumentError(f"part names must be str, got {name!r}")
    tables = np.stack([fingerprint(parts[name]) for name in names])  # validates values
    # First agree on the part names: the second gather's shape depends on them.
    names_table = fingerprint("\x00".join(names))[None, :]
    if _disagreements(_gather(strategy, names_table), [_NAMES_PART]):
        raise ConfigMismatchError(
            f"hosts disagree on the set of parts to compare (this host has {names}); every "
            "host must run the same code, gin config, data and seed"
        )
    problems = _disagreements(_gather(strategy, tables), names)
    if problems:
        which = ", ".join(repr(name) for name, _ in problems)
        details = " | ".join(f"{name!r}: {described}" for name, described in problems)
        raise ConfigMismatchError(
            f"hosts disagree on {which} (fingerprints differ: {details}); every host must run "
            "the same gin config, data and seed"
        )
