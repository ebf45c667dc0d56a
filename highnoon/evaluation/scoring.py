"""Batched log-likelihoods of token continuations under a causal language model.

``TokenScorer.score(pairs)`` takes ``(context_ids, continuation_ids)`` pairs and returns, per
pair, the sum of the continuation tokens' log-probabilities and whether greedy decoding would
have produced the whole continuation (lm-eval's ``loglikelihood`` answer). Requests are sorted
longest first (stable, index tie-break), cut into batches of ``batch_size`` rows, right-padded to
a length rounded up to ``bucket`` tokens (so a handful of shapes is traced, not one per request)
and scored with one model call per batch; a short last batch is padded with empty rows so it
reuses the same trace. Right padding is invisible to the real tokens under the causal mask.

A pair longer than ``max_length + 1`` tokens keeps its last ``max_length + 1`` (left
truncation, as lm-eval's own models do): the continuation is always scored in full context of
what fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from highnoon.utils import validation as v

Pair = tuple[Sequence[int], Sequence[int]]


def bucketed(length: int, bucket: int, cap: int) -> int:
    """``length`` rounded up to a multiple of ``bucket``, at most ``cap``."""
    return min(-(-length // bucket) * bucket, cap)


class TokenScorer:
    """Log-likelihoods of continuations, ``batch_size`` rows per model call."""

    def __init__(self, model: Any, *, batch_size: int, max_length: int, bucket: int = 32):
        self.model = model
        self.batch_size = v.check_positive_int("batch_size", batch_size)
        self.max_length = v.check_int("max_length", max_length, minimum=2)
        self.bucket = v.check_positive_int("bucket", bucket)
        self._fn = None

    def _compiled(self):
        """One ``tf.function``: per-token log-probability of each target and whether it is
        the argmax, for a padded batch (traced once per padded shape: shapes must stay static, the model needs its sequence length)."""
        if self._fn is None:
            import tensorflow as tf

            model = self.model

            @tf.function(autograph=False)
            def token_scores(inputs, targets):
                logits = tf.cast(model(inputs, training=False), tf.float32)
                logp = tf.nn.log_softmax(logits, axis=-1)
                picked = tf.gather(logp, targets, batch_dims=2)
                greedy = tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), targets)
                return picked, greedy

            self._fn = token_scores
        return self._fn

    def score(self, pairs: Sequence[Pair]) -> list[tuple[float, bool]]:
        """``(sum of log p(continuation | context), greedy)`` per pair, in the given order."""
        rows = []
        for index, (context, continuation) in enumerate(pairs):
            if not len(context) or not len(continuation):
                raise v.InvalidArgumentError(
                    f"request {index}: context and continuation need at least one token each "
                    f"(got {len(context)} and {len(continuation)}); start the context with BOS"
                )
            full = np.asarray([*context, *continuation], np.int32)[-(self.max_length + 1) :]
            rows.append((full, min(len(continuation), len(full) - 1)))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        lengths = np.array([len(full) for full, _ in rows], np.int64)
        order = np.lexsort((np.arange(len(rows)), -lengths))  # longest first, index tie-break
        fn = self._compiled()
        for first in range(0, len(order), self.batch_size):
            batch = order[first : first + self.batch_size]
            width = bucketed(int(lengths[batch[0]]) - 1, self.bucket, self.max_length)
            inputs = np.zeros((self.batch_size, width), np.int32)
            targets = np.zeros((self.batch_size, width), np.int32)
            for slot, row in enumerate(batch):
                full, _ = rows[row]
                inputs[slot, : len(full) - 1] = full[:-1]
                targets[slot, : len(full) - 1] = full[1:]
            picked, greedy = fn(inputs, targets)
            picked, greedy = picked.numpy(), greedy.numpy()
            for slot, row in enumerate(batch):
                full, count = rows[row]
                end = len(full) - 1
                span = slice(end - count, end)
                results[row] = (
                    float(picked[slot, span].astype(np.float64).sum()),
                    bool(greedy[slot, span].all()),
                )
        return results


def rolling_windows(tokens: Sequence[int], prefix_id: int, max_length: int) -> list[Pair]:
    """The ``(context, continuation)`` pairs that score every token of ``tokens`` exactly once
    in windows of at most ``max_length`` inputs (lm-eval's ``loglikelihood_rolling``): the
    first window starts from ``prefix_id`` (BOS); each later one predicts the next
    ``max_length`` tokens, its context the tokens just before them, so every prediction but
    the first window's sees a full window of context."""
    tokens = [int(t) for t in tokens]
    pairs: list[Pair] = []
    start = 0
    while start < len(tokens):
        end = min(start + max_length, len(tokens))
        if start == 0:
            context = [prefix_id]
            continuation = tokens[:end]
        else:
            # inputs = the max_length tokens before `end`; predicted: tokens[start:end]
            first = max(end - max_length - 1, 0)
            context = tokens[first:start]
            continuation = tokens[start:end]
        pairs.append((context, continuation))
        start = end
    return pairs
