"""Keyed hashing: every stateless, seeded choice in highnoon comes from here (numpy only).

Every SHA-256 in highnoon is computed here: ``sha256_hex`` / ``sha256_digest`` of a text or
bytes, ``sha256_file`` of a file's bytes (streamed), ``new_sha256`` for a digest fed in pieces
(token stores, score arrays). On top of them, three pieces, each with one job:

* ``derive_key(*parts)``: a 64-bit key from any JSON-able parts (a seed, a stage index, a
  purpose such as ``"eval"``), via SHA-256 of their canonical JSON. This is the one seed
  derivation: stage seeds, permutation keys and per-sample hash keys all come from it.
* ``keyed_hash(indices, *parts)``: a uint64 per index under a key, the SplitMix64 mix of
  ``index ^ key`` (overflow windows, mixture subsamples).
* ``KeyedPermutation(n, *parts)``: a bijection of ``[0, n)`` evaluable at any positions (and
  inverted at any values) without materialising the whole permutation (curriculum epoch orders,
  the ``random`` strategy's order, of 10^9 samples), and
  ``keyed_permutation(n, *parts)``, the whole of it as an array (eval splits, mixtures).

The same parts give the same values on every machine and run, so hosts agree without talking
and nothing needs RNG state in a checkpoint (docs/design.md, "Determinism").
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from highnoon.utils.validation import InvalidArgumentError, InvalidArgumentTypeError

_U = np.uint64
_FILE_BLOCK = 1 << 20  # bytes read at a time by sha256_file (constant memory)
_GOLDEN = _U(0x9E3779B97F4A7C15)
FEISTEL_ROUNDS = 4  # Luby-Rackoff: 4 rounds of a good mixer give a strong keyed permutation
_CHUNK = 1 << 16  # positions permuted at a time (keeps temporaries in cache)


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def sha256_digest(data: str | bytes) -> bytes:
    """The 32-byte SHA-256 of ``data`` (a string is hashed as its UTF-8 bytes)."""
    return hashlib.sha256(_as_bytes(data)).digest()


def sha256_hex(data: str | bytes, *, chars: int | None = None) -> str:
    """The hex SHA-256 of ``data`` (a string as UTF-8), cut to its first ``chars`` digits when
    given: short keys for file and directory names."""
    text = hashlib.sha256(_as_bytes(data)).hexdigest()
    return text if chars is None else text[:chars]


def new_sha256() -> Any:
    """A fresh incremental SHA-256 (``update(...)``, then ``hexdigest()``), for content hashed
    in pieces without holding it whole in memory."""
    return hashlib.sha256()


def sha256_file(path: str) -> str:
    """The hex SHA-256 of a local file's bytes, read in 1 MB blocks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_FILE_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def splitmix64_finalise_(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser applied in place to a uint64 array (wrapping); returns it.

    In place because the curriculum applies it to arrays of up to 10^8 elements.
    """
    with np.errstate(over="ignore"):  # wrap-around is the point
        z ^= z >> _U(30)
        z *= _U(0xBF58476D1CE4E5B9)
        z ^= z >> _U(27)
        z *= _U(0x94D049BB133111EB)
        z ^= z >> _U(31)
    return z


def mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 (golden-ratio increment, then the finaliser) on a copy of ``values``."""
    z = np.array(values, dtype=np.uint64, ndmin=1)
    with np.errstate(over="ignore"):
        z += _GOLDEN
    return splitmix64_finalise_(z)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):  # numpy scalars hash as the Python number they hold
        return value.item()
    raise InvalidArgumentTypeError(f"cannot derive a key from {value!r} ({type(value).__name__})")


def derive_key(*parts: Any) -> int:
    """A 64-bit key from JSON-able ``parts`` (SHA-256 of their canonical JSON)."""
    text = json.dumps(list(parts), sort_keys=True, separators=(",", ":"), default=_plain)
    return int.from_bytes(sha256_digest(text)[:8], "little")


def derive_seed(seed: int, *parts: Any) -> int:
    """A non-negative 63-bit seed from ``seed`` and ``parts`` (fits every framework's seed)."""
    return derive_key(int(seed), *parts) >> 1


def keyed_hash(indices: np.ndarray, *parts: Any) -> np.ndarray:
    """A uint64 hash of every index under the key ``derive_key(*parts)``."""
    key = _U(derive_key(*parts))
    return mix64(np.asarray(indices, dtype=np.int64).astype(np.uint64) ^ key)


class KeyedPermutation:
    """A bijection of ``[0, n)`` keyed by ``parts``, evaluable at any positions.

    A Feistel network over ``Z_a x Z_b`` (``a = ceil(sqrt(n))``, ``b = ceil(n / a)``; rounds
    alternate the two moduli; the round function is SplitMix64 of the half xor a round key),
    with cycle-walking back into ``[0, n)``. Vectorised uint64 numpy: one host's share of an
    epoch costs only its own positions. ``inverse`` undoes it (the rounds in reverse, walking
    the same way), so a value's position is as cheap as a position's value.
    """

    def __init__(self, n: int, *parts: Any) -> None:
        if n < 1:
            raise InvalidArgumentError(f"n={n!r} must be >= 1")
        self.n = int(n)
        self.a = math.isqrt(self.n - 1) + 1
        self.b = -(-self.n // self.a)
        self.keys = mix64(np.arange(FEISTEL_ROUNDS, dtype=np.uint64) ^ _U(derive_key(*parts)))

    def _feistel(self, x: np.ndarray) -> np.ndarray:
        """One pass of the network over Z_a x Z_b (a bijection of [0, a*b))."""
        size_left, size_right = _U(self.a), _U(self.b)
        left = x // size_right  # in Z_a
        right = x - left * size_right  # in Z_b
        f = np.empty_like(x)
        wrapped = np.empty_like(x)
        for key in self.keys:
            np.bitwise_xor(right, key, out=f)
            splitmix64_finalise_(f)
            f >>= _U(32)  # Lemire reduction of the top 32 bits into [0, size_left)
            f *= size_left
            f >>= _U(32)
            f += left  # < 2 * size_left
            np.subtract(f, size_left, out=wrapped)  # wraps to a huge value when f < size_left
            np.minimum(f, wrapped, out=f)  # (left + F(right)) mod size_left
            left, right, f = right, f, left
            size_left, size_right = size_right, size_left
        return left * _U(self.b) + right  # an even number of rounds ends back in Z_a x Z_b

    def _feistel_inverse(self, y: np.ndarray) -> np.ndarray:
        """The inverse of ``_feistel``: the rounds undone last to first."""
        size_left, size_right = _U(self.a), _U(self.b)
        left = y // size_right  # in Z_a
        right = y - left * size_right  # in Z_b
        for key in self.keys[::-1]:
            # The round made (l, r) in Z_q x Z_p into (r, (l + F(r)) mod q): sizes now (p, q).
            f = left ^ key
            splitmix64_finalise_(f)
            f >>= _U(32)
            f *= size_right
            f >>= _U(32)  # F(r) reduced into [0, q)
            f = right + size_right - f  # (R' - F(r)) mod q, kept non-negative
            f -= np.where(f >= size_right, size_right, _U(0))
            left, right = f, left
            size_left, size_right = size_right, size_left
        return left * _U(self.b) + right

    def _walk(self, values: Any, step: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """``step`` over ``values`` in chunks, cycle-walking back into ``[0, n)``; int64."""
        flat = np.asarray(values).reshape(-1)
        out = np.empty(flat.size, dtype=np.int64)
        n = _U(self.n)
        for start in range(0, flat.size, _CHUNK):
            y = step(flat[start : start + _CHUNK].astype(np.uint64))
            outside = np.flatnonzero(y >= n)
            while outside.size:  # cycle-walk back into [0, n); a*b - n < a, so rarely needed
                walked = step(y[outside])
                y[outside] = walked
                outside = outside[walked >= n]
            out[start : start + y.size] = y.view(np.int64)
        return out.reshape(np.shape(values))

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """``pi(positions)`` as int64 (positions must lie in ``[0, n)``)."""
        return self._walk(positions, self._feistel)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """``pi^-1(values)`` as int64 (values in ``[0, n)``): the position each value is at.
        Cycle-walking inverts too: walk the inverse network until it lands in ``[0, n)``."""
        return self._walk(values, self._feistel_inverse)


def keyed_permutation(n: int, *parts: Any) -> np.ndarray:
    """The whole keyed permutation of ``range(n)`` as an int64 array (empty for ``n == 0``)."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return KeyedPermutation(n, *parts)(np.arange(n, dtype=np.int64))
