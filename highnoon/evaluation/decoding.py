"""Batched greedy decoding with a key/value cache, stopping per row.

``greedy_batch(model, prompts, max_new_tokens, ...)`` continues several prompts at once: the
prompts are left-padded to one length (rounded up to ``bucket`` tokens), one forward pass over
the buffer fills the cache (``HighNoonLM.forward`` with per-row positions and segment ids, so
padding is invisible and every row's rotary positions start at 0 at its first real token), and
each new token then costs one ``decode_step`` of the whole batch, with per-row positions and
visible slots. Rows stop at EOS or when ``stop(row, ids)`` says so (lm-eval's ``until``
strings); the loop ends when every row has stopped. The tokens are exactly those of decoding
each prompt alone without a cache (tests/test_lm_eval.py).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from highnoon.evaluation.scoring import bucketed
from highnoon.utils import validation as v

_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _functions(model: Any) -> tuple[Callable, Callable]:
    """The model's compiled prefill and decode step (one pair per model, traced per shape)."""
    if model not in _STEPS:
        import tensorflow as tf

        ref = weakref.ref(model)  # the cache must not keep the model alive

        @tf.function(autograph=False)
        def prefill(buffer, positions, segments, last):
            logits, cache = ref().forward(buffer, positions=positions, segment_ids=segments)
            return tf.gather(logits, last, axis=1), cache

        @tf.function(autograph=False)
        def step(token, index, cache, positions, visible):
            logits, cache = ref().decode_step(
                token, index, cache, positions=positions, visible=visible
            )
            return tf.argmax(logits, axis=-1, output_type=tf.int32), cache

        _STEPS[model] = (prefill, step)
    return _STEPS[model]


def greedy_batch(
    model: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    eos_id: int,
    pad_id: int = 0,
    stop: Callable[[int, list[int]], bool] | None = None,
    bucket: int = 32,
) -> list[list[int]]:
    """Greedy continuations (ids, without the prompt; an EOS ends a row and is not returned)
    of ``prompts``, each of at most ``max_new_tokens`` tokens; every prompt plus its new tokens
    must fit the model's ``max_seq_length`` (the caller truncates prompts)."""
    import tensorflow as tf

    count = len(prompts)
    if not count:
        return []
    limit = int(model.config.max_seq_length)
    longest = max(len(p) for p in prompts)
    width = bucketed(longest, bucket, limit - max_new_tokens)
    if width < longest or max_new_tokens < 1:
        raise v.InvalidArgumentError(  # the adapter truncates prompts first
            f"greedy_batch: prompts of {longest} tokens plus {max_new_tokens} new ones exceed "
            f"max_seq_length={limit}"
        )
    total = width + max_new_tokens
    buffer = np.full((count, total), pad_id, np.int32)
    padding = np.array([width - len(p) for p in prompts], np.int32)
    for row, prompt in enumerate(prompts):
        buffer[row, padding[row] : width] = prompt
    slots = np.arange(total, dtype=np.int32)[None, :]
    positions = np.maximum(slots - padding[:, None], 0).astype(np.int32)
    segments = (slots >= padding[:, None]).astype(np.int32)  # padding: its own segment
    prefill, step = _functions(model)
    logits_last, cache = prefill(buffer, positions, segments, tf.constant(width - 1))
    token = tf.argmax(logits_last, axis=-1, output_type=tf.int32)
    generated: list[list[int]] = [[] for _ in range(count)]
    done = np.zeros(count, bool)
    for offset in range(max_new_tokens):
        ids = token.numpy()
        for row in np.flatnonzero(~done):
            if int(ids[row]) == eos_id:
                done[row] = True
                continue
            generated[row].append(int(ids[row]))
            if stop is not None and stop(int(row), generated[row]):
                done[row] = True
        if done.all() or offset == max_new_tokens - 1:
            break
        index = width + offset
        visible = (slots >= padding[:, None]) & (slots <= index)
        token, cache = step(
            ids, tf.constant(index, tf.int32), cache, (index - padding).astype(np.int32), visible
        )
    return generated
