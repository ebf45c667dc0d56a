"""Argument validation shared by every public entry point (numpy only, no TensorFlow).

Each check takes the parameter's *name* and *value*, returns the value normalised (``int`` for
integers, ``float`` for numbers) and raises ``InvalidArgumentError`` naming the parameter, the
value and what is allowed, in one shape of message::

    batch_size=4.0 must be an integer >= 1 (got float)

Types are strict where Python is loose: ``True`` is not an integer, ``4.0`` is not an integer,
``"no"`` is not a bool, and NaN or infinity is never a number. A wrong type raises
``InvalidArgumentTypeError``, which is both a ``ValueError`` and a ``TypeError``, so callers may
catch either (numpy's ``AxisError`` does the same). Content read from a file or the environment
that is malformed raises ``InvalidDataError`` (a ``ValueError`` too), naming where it is.
"""

from __future__ import annotations

import math
import numbers
import os
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from highnoon.utils.files import is_remote


class InvalidArgumentError(ValueError):
    """An argument has a value that is not allowed; the message names it and what is."""

    # Exception's own constructor: AutoGraph re-raises an error from traced code as the same
    # class only when it has it, otherwise as its StagingError (a check inside a tf.function).
    __init__ = Exception.__init__


class InvalidArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument has the wrong type (a float for an int, a string for a bool, ...)."""


class InvalidDataError(ValueError):
    """What a file, a data record or an environment variable holds is not allowed (malformed
    JSON, invalid UTF-8, a missing field): the argument naming it was fine, its content is not.
    The message names where the content is and how to fix it."""

    __init__ = Exception.__init__  # as InvalidArgumentError's: the class survives AutoGraph


def _fail(name: str, value: Any, allowed: str, *, wrong_type: bool = False) -> None:
    got = f" (got {type(value).__name__})" if wrong_type else ""
    error = InvalidArgumentTypeError if wrong_type else InvalidArgumentError
    raise error(f"{name}={value!r} must be {allowed}{got}")


def _range_text(kind: str, minimum: Any, maximum: Any, exclusive_minimum: bool) -> str:
    low = ">" if exclusive_minimum else ">="
    if minimum is not None and maximum is not None:
        left = "(" if exclusive_minimum else "["
        return f"{kind} in {left}{minimum}, {maximum}]"
    if minimum is not None:
        return f"{kind} {low} {minimum}"
    if maximum is not None:
        return f"{kind} <= {maximum}"
    return kind


def is_integer(value: Any) -> bool:
    """True for Python and numpy integers, False for bools and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def check_int(
    name: str,
    value: Any,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    allow_none: bool = False,
) -> int | None:
    """An integer (not a bool, not a float) within ``[minimum, maximum]``."""
    if value is None and allow_none:
        return None
    allowed = _range_text("an integer", minimum, maximum, False) + (
        " or None" if allow_none else ""
    )
    if not is_integer(value):
        _fail(name, value, allowed, wrong_type=True)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        _fail(name, value, allowed)
    return int(value)


def check_positive_int(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    """An integer >= 1."""
    return check_int(name, value, minimum=1, allow_none=allow_none)


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    allow_none: bool = False,
) -> float | None:
    """A finite real number (int or float, not a bool) within the given bounds."""
    if value is None and allow_none:
        return None
    allowed = _range_text("a finite number", minimum, maximum, exclusive_minimum)
    allowed += " or None" if allow_none else ""
    if not isinstance(value, numbers.Real) or isinstance(value, bool | np.bool_):
        _fail(name, value, allowed, wrong_type=True)
    number = float(value)
    if not math.isfinite(number):
        _fail(name, value, allowed)
    too_low = minimum is not None and (number <= minimum if exclusive_minimum else number < minimum)
    if too_low or (maximum is not None and number > maximum):
        _fail(name, value, allowed)
    return number


def check_positive_float(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    """A finite number > 0."""
    return check_float(name, value, minimum=0.0, exclusive_minimum=True, allow_none=allow_none)


def check_fraction(
    name: str, value: Any, *, allow_zero: bool = True, allow_one: bool = True
) -> float:
    """A finite number in [0, 1], with either end excluded on request."""
    allowed = f"a finite number in {'[' if allow_zero else '('}0, 1{']' if allow_one else ')'}"
    if not isinstance(value, numbers.Real) or isinstance(value, bool | np.bool_):
        _fail(name, value, allowed, wrong_type=True)
    number = float(value)
    low_ok = number >= 0.0 if allow_zero else number > 0.0
    high_ok = number <= 1.0 if allow_one else number < 1.0
    if not (math.isfinite(number) and low_ok and high_ok):
        _fail(name, value, allowed)
    return number


def check_bool(name: str, value: Any) -> bool:
    """``True`` or ``False`` (no strings, no 0/1)."""
    if not isinstance(value, bool | np.bool_):
        _fail(name, value, "True or False", wrong_type=True)
    return bool(value)


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """One of ``choices`` (compared by equality, and by type for bool/int look-alikes)."""
    for choice in choices:
        if value is choice or (type(value) is type(choice) and value == choice):
            return value
    _fail(name, value, f"one of {list(choices)!r}")
    return value  # unreachable


def check_str(name: str, value: Any, *, allow_none: bool = False) -> str | None:
    """A non-empty string."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        _fail(name, value, "a non-empty string", wrong_type=True)
    if not value:
        _fail(name, value, "a non-empty string")
    return value


def check_mapping(name: str, value: Any, *, allow_none: bool = False) -> dict[str, Any] | None:
    """A mapping with string keys (returned as a new dict)."""
    if value is None and allow_none:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        _fail(name, value, "a dict with string keys", wrong_type=True)
    return dict(value)


def check_keys(name: str, value: Any, allowed: Collection[str], *, owner: str = "") -> dict:
    """A mapping whose keys are all in ``allowed`` (returned as a new dict). An unknown key is
    refused naming it and the allowed ones; ``owner`` says who takes them (``pacing='linear'``)."""
    mapping = check_mapping(name, value)
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        who = owner or name
        takes = f"takes only {sorted(allowed)}" if allowed else "takes no options"
        raise InvalidArgumentError(f"{name}={value!r} has unknown key(s) {unknown}: {who} {takes}")
    return mapping


def check_items(name: str, value: Any, *, single: tuple[type, ...], allowed: str) -> list[Any]:
    """One item (an instance of ``single``) or an iterable of items, as a list. ``allowed``
    says what an item is, for the message. Strings and mappings are never iterated."""
    if isinstance(value, single):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, str | bytes | Mapping):
        return list(value)
    _fail(name, value, f"{allowed}, or a list of them", wrong_type=True)
    return []  # unreachable


def check_mixture_weights(name: str, entries: Sequence[Any]) -> None:
    """Dataset entries are all ``(entry, weight)`` (a mixture by shares) or all plain (every
    sample once per epoch); a mix of both has no clear meaning and is refused."""
    weighted = [isinstance(e, tuple | list) and not isinstance(e, str) for e in entries]
    if any(weighted) and not all(weighted):
        plain = [e for e, w in zip(entries, weighted) if not w]
        raise InvalidArgumentError(
            f"{name}={list(entries)!r} mixes (entry, weight) tuples with unweighted entries "
            f"{plain!r}; give every entry a weight (weights are shares of the stage's samples) "
            "or none (every sample of every entry once per epoch)"
        )


def check_sample_indices(
    name: str, value: Any, num_samples: int, *, ndim: int = 1, shape: str = "", owner: str = ""
) -> np.ndarray:
    """An integer array of ``ndim`` dimensions (``shape`` names them for the message, e.g.
    ``[steps, rows_per_step]``) whose values index ``num_samples`` samples, as int64. ``owner``
    says what holds the samples (``the store``, ``lengths``). Empty arrays are allowed."""
    array = np.asarray(value)
    if array.ndim != ndim or not np.issubdtype(array.dtype, np.integer) or 0 in array.shape[1:]:
        what = f"a {ndim}-D integer array" + (f" {shape}" if shape else "")
        raise InvalidArgumentError(
            f"{name} must be {what}, got shape {array.shape} and dtype {array.dtype}"
        )
    if array.size and (array.min() < 0 or array.max() >= num_samples):
        raise InvalidArgumentError(
            f"{name} holds sample indices in [{array.min()}, {array.max()}], but "
            f"{owner or 'the data'} has {num_samples} samples (allowed: [0, {num_samples}))"
        )
    return array.astype(np.int64, copy=False)


def check_port(name: str, value: Any) -> int:
    """A TCP port in [1, 65535]."""
    return check_int(name, value, minimum=1, maximum=65535)


def check_host_port(name: str, value: Any) -> str:
    """``host:port`` with a non-empty host and a port in [1, 65535]."""
    text = check_str(name, value)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        _fail(name, value, "'host:port' with a port in [1, 65535]")
    return text


def check_writable_dir(name: str, path: Any) -> str:
    """A directory that can be created (if missing) and written: probed by writing and removing a
    small file, so a read-only disk, a file in the way or a missing permission fails here, before
    any expensive work, rather than at the first checkpoint. ``gs://`` and other ``tf.io.gfile``
    paths are probed through TensorFlow."""
    text = os.fspath(check_str(name, path) if not isinstance(path, os.PathLike) else path)
    probe_name = f".highnoon-write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if is_remote(text):
        import tensorflow as tf

        try:
            if tf.io.gfile.exists(text) and not tf.io.gfile.isdir(text):
                _fail(name, path, "a directory, but a file is in the way")
            tf.io.gfile.makedirs(text)
            probe = text.rstrip("/") + "/" + probe_name
            with tf.io.gfile.GFile(probe, "w") as handle:
                handle.write("probe")
            tf.io.gfile.remove(probe)
        except tf.errors.OpError as error:
            _fail(name, path, f"a writable directory ({error.message.splitlines()[0]})")
        return text
    if os.path.exists(text) and not os.path.isdir(text):
        _fail(name, path, "a directory, but a file is in the way")
    try:
        os.makedirs(text, exist_ok=True)
        probe = os.path.join(text, probe_name)
        with open(probe, "w", encoding="utf-8") as handle:
            handle.write("probe")
        os.unlink(probe)
    except OSError as error:
        _fail(name, path, f"a writable directory ({error.strerror or error})")
    return text
