"""Per-sample difficulty features: what the token store measures once per sample.

The indexed token store records these for every sample, so no host ever rescans a corpus; the
curriculum (``highnoon.curriculum.scoring``) turns them into scores. In-memory samples get the
same features through ``features_from_samples``, so a score means the same thing wherever it was
computed.

Features of a sample (a sequence of token ids):
  * ``length``: number of tokens.
  * ``surprisal_sum``: sum over its tokens of -log p(token), p being the token's unigram frequency
    in the whole corpus the sample belongs to (rare tokens are hard for a language model).

Bit-identical on every run and machine: the per-vocabulary surprisal table is computed with
Python's ``math.log`` and quantised to fixed point (``SURPRISAL_SCALE`` units per nat) so that no
last-bit difference between vectorised ``log`` implementations can leak through; sums are integer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from highnoon.utils.validation import InvalidArgumentError

SURPRISAL_SCALE = 1 << 24  # fixed-point units per nat
_CHUNK = 1 << 24  # tokens processed at a time, bounds temporary memory


@dataclass(frozen=True)
class SampleFeatures:
    """Difficulty features of ``n`` samples: two aligned int64 arrays of shape [n]."""

    lengths: np.ndarray
    surprisal_sum: np.ndarray

    def __post_init__(self) -> None:
        if self.lengths.shape != self.surprisal_sum.shape or self.lengths.ndim != 1:
            raise InvalidArgumentError(
                "SampleFeatures needs two 1-D arrays of equal length, got shapes "
                f"{self.lengths.shape} and {self.surprisal_sum.shape}"
            )

    @property
    def mean_surprisal(self) -> np.ndarray:
        """Mean -log p(token) in nats per token (0 for empty samples)."""
        # in place, in the order of ``sum / SURPRISAL_SCALE / max(length, 1)`` (the same bits):
        # two arrays allocated, not five (a store's order scores it chunk by chunk)
        safe = self.lengths.astype(np.float64)
        np.maximum(safe, 1.0, out=safe)
        mean = self.surprisal_sum.astype(np.float64)
        mean /= SURPRISAL_SCALE
        mean /= safe
        return mean


def token_counts(flat_tokens: np.ndarray, vocab_size: int | None = None) -> np.ndarray:
    """Unigram counts of every token id (int64, length >= vocab_size)."""
    flat = np.asarray(flat_tokens)
    if flat.size and flat.min() < 0:
        raise InvalidArgumentError("token ids must be non-negative")
    return np.bincount(flat.astype(np.int64, copy=False), minlength=vocab_size or 0).astype(
        np.int64
    )


def surprisal_table(counts: np.ndarray) -> np.ndarray:
    """Fixed-point -log p(token) for every token id, p being its corpus frequency.

    Unseen tokens cost 0 (they occur in no sample, so the value is never read).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    table = np.zeros(counts.shape[0], dtype=np.int64)
    if total == 0:
        return table
    log_total = math.log(total)
    for token_id in np.flatnonzero(counts):
        nats = log_total - math.log(int(counts[token_id]))
        table[token_id] = round(nats * SURPRISAL_SCALE)
    return table


def features_from_flat(
    flat_tokens: np.ndarray,
    offsets: np.ndarray,
    counts: np.ndarray | None = None,
    *,
    table: np.ndarray | None = None,
) -> SampleFeatures:
    """Features of samples stored back to back: sample i is ``flat[offsets[i]:offsets[i+1]]``.

    ``counts`` are the corpus unigram counts; by default they come from ``flat_tokens`` itself.
    ``table``: ``surprisal_table(counts)`` when the caller has it (a caller scoring a shard in
    many small pieces builds it once; ``counts`` is then not read).
    """
    flat = np.asarray(flat_tokens)
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 or offsets[-1] != flat.size:
        raise InvalidArgumentError(
            "offsets must be 1-D, start at 0 and end at the number of tokens"
        )
    if table is None:
        table = surprisal_table(token_counts(flat) if counts is None else counts)
    # Prefix sums of per-token cost, chunked so a 100M-token corpus needs no 800 MB temporary.
    prefix = np.empty(flat.size + 1, dtype=np.int64)
    prefix[0] = 0
    running = 0
    for start in range(0, flat.size, _CHUNK):
        chunk_cost = table[flat[start : start + _CHUNK].astype(np.int64, copy=False)]
        np.cumsum(chunk_cost, out=prefix[start + 1 : start + 1 + chunk_cost.size])
        prefix[start + 1 : start + 1 + chunk_cost.size] += running
        running = int(prefix[start + chunk_cost.size])
    lengths = np.diff(offsets)
    sums = prefix[offsets[1:]] - prefix[offsets[:-1]]
    return SampleFeatures(lengths=lengths.astype(np.int64), surprisal_sum=sums)


def sample_to_tokens(sample: Any) -> np.ndarray:
    """One LM sample as token ids: a token sequence, a string (its UTF-8 bytes, as the byte
    tokenizer sees it), or a dict with ``tokens`` or ``text``."""
    if isinstance(sample, dict):
        if "tokens" in sample:
            return sample_to_tokens(sample["tokens"])
        if "text" in sample:
            return sample_to_tokens(sample["text"])
        raise InvalidArgumentError(
            f"a dict sample needs a 'tokens' or 'text' key (or 'complexity'), got keys {sorted(sample)}"
        )
    if isinstance(sample, str):
        return np.frombuffer(sample.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    if isinstance(sample, bytes | bytearray):
        return np.frombuffer(bytes(sample), dtype=np.uint8).astype(np.int64)
    array = np.asarray(sample)
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise InvalidArgumentError(
            "a sample must be a 1-D sequence of integer token ids, a string, or a dict with "
            f"'tokens'/'text'; got {type(sample).__name__} with shape {array.shape}"
        )
    return array.astype(np.int64, copy=False)


def features_from_samples(samples: Sequence[Any] | Iterable[Any]) -> SampleFeatures:
    """Features of in-memory samples (see ``sample_to_tokens`` for the accepted forms)."""
    arrays = [sample_to_tokens(s) for s in samples]
    lengths = np.array([a.size for a in arrays], dtype=np.int64)
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
    return features_from_flat(flat, offsets)
