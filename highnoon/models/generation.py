"""Text generation for `HighNoonLM`: greedy, top-k and nucleus sampling, with a key/value cache.

The whole decode loop is one XLA-compiled `tf.function` per (model, max_length, cache on/off):

* cached (default): one forward pass over the prompt fills a static-shape key/value cache of
  `max_length` positions; each new token then costs a single position (`decode_step`).
* uncached (`use_cache=False`, for tests and the benchmark): every new token re-runs the full
  forward pass over the `max_length` buffer (static shapes: positions after the current one are
  padding, invisible to it through the causal mask).

Sampling is stateless: the token at position `i` is a categorical draw keyed by `(seed, i)`
(Gumbel-max over `tf.random.stateless_uniform`, which compiles under XLA where
`stateless_categorical` does not), so the same seed gives the same text on any machine and both
paths draw the same tokens from the same logits.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from highnoon.utils import validation as v

_NEG = -1e30
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _ByteCodec:
    """Stand-in for `highnoon.data.tokenizers.ByteTokenizer` (same ids) if that is unavailable."""

    vocab_size, pad_id, bos_id, eos_id = 259, 0, 1, 2

    def encode(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        return bytes(int(i) - 3 for i in ids if int(i) >= 3).decode("utf-8", errors="replace")


def default_tokenizer() -> Any:
    """The byte tokenizer (`highnoon.data.tokenizers.ByteTokenizer` when importable)."""
    try:
        from highnoon.data.tokenizers import ByteTokenizer
    except ImportError:  # pragma: no cover - the data package ships with highnoon
        return _ByteCodec()
    return ByteTokenizer()


def sample_next(logits, temperature, top_k, top_p, seed_pair):
    """Next token ids [B] from float32 logits [B, V].

    temperature <= 0 is greedy (argmax). Otherwise logits / temperature, restricted to the top_k
    largest (top_k <= 0 or >= V disables it), then to the smallest set whose probability mass
    reaches top_p (nucleus; 1.0 disables it), sampled with stateless noise keyed by `seed_pair` (int32 [2]).
    """
    vocab = logits.shape[-1]
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)
    scaled = logits / tf.maximum(temperature, 1e-6)
    k = tf.where((top_k <= 0) | (top_k > vocab), vocab, top_k)
    ordered = tf.sort(scaled, axis=-1, direction="DESCENDING")
    kth = tf.gather(ordered, k - 1, axis=-1)[:, None]
    scaled = tf.where(scaled < kth, _NEG, scaled)
    ordered = tf.sort(scaled, axis=-1, direction="DESCENDING")
    probs = tf.nn.softmax(ordered, axis=-1)
    mass_before = tf.cumsum(probs, axis=-1, exclusive=True)
    keep = mass_before < top_p  # the most likely token is always kept
    threshold = tf.reduce_min(tf.where(keep, ordered, -_NEG), axis=-1, keepdims=True)
    scaled = tf.where(scaled < threshold, _NEG, scaled)
    # Gumbel-max: argmax(logits + Gumbel noise) is a categorical draw; unlike
    # stateless_categorical it compiles under XLA on CPU.
    u = tf.random.stateless_uniform(tf.shape(scaled), seed=seed_pair, minval=1e-20, maxval=1.0)
    sampled = tf.argmax(scaled - tf.math.log(-tf.math.log(u)), axis=-1, output_type=tf.int32)
    return tf.where(temperature <= 0.0, greedy, sampled)


def _generate_graph(model, buffer, prompt_len, temperature, top_k, top_p, seed, eos_id, use_cache):
    """Fill buffer [1, L] from position prompt_len on; returns (buffer, length)."""
    length = buffer.shape[1]

    def sample(logits, position):
        seed_pair = tf.stack([seed, tf.cast(position, tf.int32)])
        return sample_next(logits, temperature, top_k, top_p, seed_pair)

    def write(buf, position, token):
        return tf.tensor_scatter_nd_update(buf, [[0, position]], token)

    def done(token, position):
        return tf.logical_or(tf.equal(token[0], eos_id), position + 1 >= length)

    if use_cache:
        logits, cache = model.forward(buffer)  # prefill: the cache for every position
        logits = tf.gather(logits, prompt_len - 1, axis=1)

        def body(position, buf, logits, cache, _):
            token = sample(logits, position)
            buf = write(buf, position, token)
            stop = done(token, position)
            # at the last position there is nothing left to decode; index stays in range
            logits, cache = model.decode_step(token, tf.minimum(position, length - 1), cache)
            return position + 1, buf, logits, cache, stop

        state = (prompt_len, buffer, logits, cache, tf.constant(False))
    else:

        def body(position, buf, _):
            logits = tf.gather(model(buf, training=False), position - 1, axis=1)
            token = sample(logits, position)
            buf = write(buf, position, token)
            return position + 1, buf, done(token, position)

        state = (prompt_len, buffer, tf.constant(False))

    out = tf.while_loop(
        lambda position, *rest: tf.logical_not(rest[-1]),
        body,
        state,
        maximum_iterations=length - 1,
    )
    return out[1], out[0]


def _compiled(model, max_length: int, use_cache: bool, jit_compile: bool):
    per_model = _COMPILED.setdefault(model, {})
    key = (max_length, use_cache, jit_compile)
    if key not in per_model:
        ref = weakref.ref(model)  # the cache must not keep the model alive

        @tf.function(jit_compile=jit_compile, reduce_retracing=True, autograph=False)
        def run(buffer, prompt_len, temperature, top_k, top_p, seed, eos_id):
            return _generate_graph(
                ref(), buffer, prompt_len, temperature, top_k, top_p, seed, eos_id, use_cache
            )

        per_model[key] = run
    return per_model[key]


def _prompt_ids(prompt: Any, tokenizer: Any) -> tuple[list[int], bool]:
    """(ids, is_text). Text is encoded with BOS first, as the data pipeline feeds training rows."""
    if isinstance(prompt, str):
        return [int(tokenizer.bos_id), *tokenizer.encode(prompt)], True
    array = np.asarray(prompt)
    if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise v.InvalidArgumentError(
            f"generate: prompt must be a string or a 1-D sequence of int token ids, got "
            f"{type(prompt).__name__} with shape {array.shape} and dtype {array.dtype}"
        )
    return [int(i) for i in array], False


def generate(
    model,
    prompt: str | Sequence[int] | np.ndarray,
    max_length: int = 256,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 1.0,
    seed: int | None = None,
    tokenizer: Any = None,
    *,
    use_cache: bool = True,
    eos_id: int | None = None,
    jit_compile: bool = True,
) -> str | list[int]:
    """Continue `prompt` with `model` until EOS or `max_length` tokens in total.

    Args:
      prompt: text (encoded with `tokenizer`, then `model.tokenizer`, then the byte tokenizer;
        BOS is prepended as in training) or token ids (list or 1-D array, used as given).
      max_length: total length in tokens, prompt included; at most `config.max_seq_length`.
      temperature: 0 is greedy decoding; higher flattens the distribution.
      top_k: sample among the k most likely tokens (0 disables).
      top_p: nucleus sampling: the smallest set of tokens with probability mass >= top_p.
      seed: sampling key; the same seed gives the same output. None draws a fresh one.
      tokenizer: duck-typed (encode, decode, bos_id, eos_id, vocab_size).
      use_cache: False re-runs the full forward pass per token (same tokens, slower).
      eos_id: stop token (default: the tokenizer's, 2 for the byte tokenizer).
      jit_compile: compile the decode loop with XLA (the default; False traces faster, which
        suits one-off calls on small models).

    Returns:
      For a text prompt, the decoded text of prompt + continuation (special ids dropped).
      For token ids, the full id list: prompt + generated ids, including the EOS if produced.
    """
    config = model.config
    if tokenizer is None:
        tokenizer = getattr(model, "tokenizer", None) or default_tokenizer()
    v.check_int("max_length", max_length, minimum=2, maximum=config.max_seq_length)
    v.check_float("temperature", temperature, minimum=0.0)  # 0 is greedy
    v.check_int("top_k", top_k, minimum=0)  # 0: no top-k cut
    v.check_float("top_p", top_p, minimum=0.0, exclusive_minimum=True, maximum=1.0)
    v.check_int("seed", seed, allow_none=True)
    ids, is_text = _prompt_ids(prompt, tokenizer)
    if not 1 <= len(ids) < max_length:
        raise v.InvalidArgumentError(
            f"generate: prompt has {len(ids)} tokens; it needs 1 to max_length - 1 = "
            f"{max_length - 1} tokens"
        )
    if ids and not all(0 <= i < config.vocab_size for i in ids):
        raise v.InvalidArgumentError(
            f"generate: prompt ids must be in [0, vocab_size={config.vocab_size}), got "
            f"[{min(ids)}, {max(ids)}]"
        )
    if eos_id is None:
        eos_id = int(getattr(tokenizer, "eos_id", 2))
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    if not model.built:
        model.build()

    buffer = np.zeros((1, max_length), np.int32)
    buffer[0, : len(ids)] = ids
    run = _compiled(model, int(max_length), bool(use_cache), bool(jit_compile))
    out, length = run(
        tf.constant(buffer),
        tf.constant(len(ids), tf.int32),
        tf.constant(float(temperature), tf.float32),
        tf.constant(int(top_k), tf.int32),
        tf.constant(float(top_p), tf.float32),
        tf.constant(int(seed) % (2**31), tf.int32),
        tf.constant(eos_id, tf.int32),
    )
    result = out.numpy()[0, : int(length)].tolist()
    if is_text:
        return tokenizer.decode(result)
    return result
