"""The model contract: what a Keras model must accept and return for the Trainer to train it.

Every model reaches the step the same way (``training/losses.py``):

    logits = model(input_ids, training=..., **extra)

* ``input_ids``: int32 ``[batch, seq]`` token ids, right-padded (a padded position is past
  every real token, so a causal model needs no padding mask to ignore it).
* the result: float logits ``[batch, seq, vocab]`` (one tensor; not a dict, not probabilities),
  ``vocab`` at least the tokenizer's vocabulary and the store's largest id + 1.

Beyond that, three features ask for more:

* packing (``pack=True``): ``call`` takes ``positions`` and ``segment_ids`` (int32
  ``[batch, seq]``): positions restart at 0 for each packed document, and a token attends only
  to earlier tokens of its own segment;
* ``sharding='full'``: ``weight_segments()`` and ``call(..., runner=...)``, so the step can gather
  one segment's weights at a time (``training/sharding/fsdp.py``);
* ``highnoon.generate``: ``config.max_seq_length``, ``forward`` and ``decode_step`` (the key/value
  cache); ``HighNoonLM`` has them. A KerasHub model generates with its own ``generate``.

``adapt`` turns a KerasHub ``CausalLM`` into a model that keeps this contract
(``models/kerashub.py``); any other model is checked as it is. The static checks
(``check_features``) run when the Trainer is made, the probe of one forward pass
(``check_outputs``) once the model holds weights, before the step is built.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np

from highnoon.utils.validation import InvalidArgumentError

PACKING_ARGS = ("positions", "segment_ids")


class ModelContractError(InvalidArgumentError):
    """The model cannot be trained as the Trainer is configured: it misses part of the contract."""


def is_kerashub_causal_lm(model: Any) -> bool:
    """Whether ``model`` is a KerasHub ``CausalLM`` (checked by class, without importing
    keras_hub: a user without it cannot hold one)."""
    return any(
        cls.__name__ == "CausalLM" and cls.__module__.startswith("keras_hub")
        for cls in type(model).__mro__
    )


def _is_kerashub_object(model: Any) -> bool:
    return type(model).__module__.startswith("keras_hub")


def adapt(model: Any) -> Any:
    """The model the step trains: a KerasHub ``CausalLM`` wrapped so it keeps the contract
    (``kerashub.KerasHubLM``, sharing its variables); any other KerasHub model refused (a
    backbone returns hidden states, not logits); every other model as it is."""
    if is_kerashub_causal_lm(model):
        from highnoon.models.kerashub import KerasHubLM

        return KerasHubLM(model)
    if _is_kerashub_object(model) and type(model).__name__ != "KerasHubLM":
        raise ModelContractError(
            f"model is a KerasHub {type(model).__name__}, not a CausalLM: the Trainer needs "
            "token logits; pass the task model, e.g. "
            "keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)"
        )
    return model


def unwrap(model: Any) -> Any:
    """The user's model behind ``adapt``'s wrapper (the model itself when there is none)."""
    return getattr(model, "wrapped_model", model)


def call_parameters(model: Any) -> set[str]:
    """The arguments ``model.call`` names (``**kwargs`` promises none: a functional model takes
    them and ignores them)."""
    params = inspect.signature(model.call).parameters.values()
    return {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}


def check_features(model: Any, *, pack: bool, shards_weights: bool) -> None:
    """Refuses, before anything is built, a feature the model cannot serve: packing without
    per-document positions and masks, ``sharding='full'`` without weight segments."""
    name = type(unwrap(model)).__name__
    reason = getattr(model, "contract_limits", {})
    if pack:
        missing = [arg for arg in PACKING_ARGS if arg not in call_parameters(model)]
        if missing or "pack" in reason:
            why = reason.get("pack") or (
                f"{name}.call takes no {' or '.join(missing)}, so packed documents would "
                "attend to each other and continue each other's positions"
            )
            raise ModelContractError(
                f"pack=True needs a model that takes positions= and segment_ids= "
                f"(per-document attention); {why}. Train {name} with pack=False"
            )
    if shards_weights:
        segmented = hasattr(model, "weight_segments") and "runner" in call_parameters(model)
        if not segmented or "full" in reason:
            why = reason.get("full") or (
                f"{name} has no weight_segments() and call(..., runner=) to gather its "
                "weights block by block"
            )
            raise ModelContractError(
                f"sharding='full' cannot train {name}: {why}. Use sharding='gradients' (or "
                "'optimizer'), which shard the optimizer state and gradients but keep whole "
                "weights"
            )


def check_outputs(model: Any, vocab_size: int | None, *, seq_length: int = 4) -> int:
    """One forward pass on a ``[1, seq_length]`` batch of id 0, checked against the contract;
    returns the model's vocabulary (the logits' last dimension).

    Refuses: a call that fails on int32 ids, a dict or tuple result, a rank or length other
    than ``[1, seq, vocab]``, an integer dtype, probabilities (a softmax activation on the last
    layer, or non-negative rows summing to 1), and fewer than ``vocab_size`` logits."""
    import tensorflow as tf

    name = type(unwrap(model)).__name__
    _check_final_activation(unwrap(model), name)
    ids = tf.zeros([1, seq_length], tf.int32)
    try:
        out = model(ids, training=False)
    except Exception as error:  # any failure is the model's, reported as such
        detail = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split())[:300]
        raise ModelContractError(
            f"{name} failed on token ids (int32 [batch, seq]): the Trainer calls "
            f"model(ids, training=...) ({type(error).__name__}: {detail}). A model "
            "that takes a dict of inputs needs a wrapper (KerasHub CausalLMs are wrapped "
            "for you)"
        ) from error
    if isinstance(out, dict):
        raise ModelContractError(
            f"{name} returns a dict (keys {sorted(out)}); the Trainer needs one logits tensor "
            "[batch, seq, vocab]: return the logits from call (or wrap the model)"
        )
    if isinstance(out, (list, tuple)):
        raise ModelContractError(
            f"{name} returns a {type(out).__name__} of {len(out)}; the Trainer needs one "
            "logits tensor [batch, seq, vocab]"
        )
    shape = tuple(out.shape)
    if len(shape) != 3 or shape[:2] != (1, seq_length):
        raise ModelContractError(
            f"{name} returned shape {list(shape)} for ids of shape [1, {seq_length}]; the "
            f"Trainer needs logits [batch, seq, vocab], here [1, {seq_length}, vocab]"
        )
    if not out.dtype.is_floating:
        raise ModelContractError(
            f"{name} returned dtype {out.dtype.name}; the Trainer needs float logits"
        )
    values = np.asarray(tf.cast(out, tf.float32))
    if np.all(values >= 0) and np.allclose(values.sum(axis=-1), 1.0, atol=1e-3):
        raise ModelContractError(
            f"{name} returns probabilities (non-negative, summing to 1 per token); the "
            "Trainer's loss needs logits: drop the final softmax"
        )
    vocab = int(shape[-1])
    if vocab_size is not None and vocab < int(vocab_size):
        raise ModelContractError(
            f"{name}'s vocabulary is {vocab} logits but the tokenizer (or the store) has ids "
            f"up to {int(vocab_size) - 1}: the model needs vocab >= {int(vocab_size)}; build it "
            f"with a vocabulary of at least {int(vocab_size)} or use a smaller tokenizer"
        )
    return vocab


def _check_final_activation(model: Any, name: str) -> None:
    """A last layer whose activation is a softmax makes probabilities (seen without running)."""
    layers = getattr(model, "layers", None) or []
    if not layers:
        return
    last = layers[-1]
    activation = getattr(last, "activation", None)
    label = getattr(activation, "__name__", "") or type(last).__name__
    if "softmax" in label.lower() or type(last).__name__ == "Softmax":
        raise ModelContractError(
            f"{name}'s last layer {last.name!r} applies a softmax, so it returns probabilities; "
            "the Trainer's loss needs logits: give that layer activation=None"
        )
