"""KerasHub causal LMs (GPT-2, Llama, Gemma, ...) trained by the Trainer as they are.

``Trainer(keras_hub.models.GPT2CausalLM(backbone, preprocessor=None), ...)`` works: the Trainer
wraps the model in ``KerasHubLM`` (``contract.adapt``), which maps highnoon's batch (int32 ids
``[batch, seq]``) to the model's inputs (``token_ids`` and an all-true ``padding_mask``: rows are
right-padded and attention is causal, so no real token sees a pad) and returns its logits. The
wrapper owns no variable of its own: the step trains the KerasHub model's variables, and
``Trainer.export_model()`` returns the KerasHub model itself, which saves (``save_to_preset``,
``.keras``) and generates (``generate`` on token ids, or ``generate`` below) as KerasHub's do.

Packing: ``CausalLM.call`` takes only ``token_ids`` and ``padding_mask``; the backbone builds a
causal mask over the whole row and numbers positions 0..seq-1, so packed documents would attend
to each other. GPT-2's layers take per-document positions and attention masks through their own
call arguments, so a packed GPT-2 row runs through them layer by layer (``_packed_gpt2``; the
same logits as each document alone). Other backbones are refused with ``pack=True``.

``sharding='full'`` is refused: the backbone is a functional model called whole; it has no
weight segments to gather one block at a time.

keras_hub is imported only when a function here needs it; a model object of its classes can
only exist if it is installed. ``causal_lm``, the factory a gin file binds, lives in
``kerashub_factory`` (no Keras on import) and is re-exported here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from highnoon.models import kerashub_factory as _factory
from highnoon.models.contract import ModelContractError, is_kerashub_causal_lm
from highnoon.utils import validation as v

# The factory and its helpers live in kerashub_factory (importable without Keras); their names
# stay here too.
INSTALL_HINT = _factory.INSTALL_HINT
causal_lm = _factory.causal_lm
import_keras_hub = _factory.import_keras_hub
is_kerashub_causal_lm_class = _factory.is_kerashub_causal_lm_class

# Backbones whose layers take per-document positions and attention masks through their own
# call arguments (PositionEmbedding(positions=), TransformerDecoder(decoder_attention_mask=)):
# packed rows run through them layer by layer (``_packed_gpt2``).
PACKABLE = ("GPT2Backbone",)

LIMITS = {
    "pack": (
        "a KerasHub CausalLM takes only token_ids and padding_mask, and its backbone masks "
        "the whole row causally with positions 0..seq-1, so packed documents would attend to "
        f"each other (packing is supported for {', '.join(PACKABLE)} only)"
    ),
    "full": (
        "a KerasHub backbone is one functional model called whole, with no weight segments "
        "to gather block by block"
    ),
}


class KerasHubLM(keras.Model):
    """A KerasHub ``CausalLM`` under highnoon's model contract (``models/contract.py``).

    ``model(input_ids, training=False)`` -> the CausalLM's logits ``[batch, seq, vocab]``. The
    CausalLM must have no preprocessor (the Trainer feeds token ids, not text).
    """

    def __init__(self, causal_lm: keras.Model, **kwargs: Any) -> None:
        if not is_kerashub_causal_lm(causal_lm):
            raise v.InvalidArgumentTypeError(
                f"KerasHubLM wraps a keras_hub CausalLM, got {type(causal_lm).__name__}"
            )
        if getattr(causal_lm, "preprocessor", None) is not None:
            task = type(causal_lm).__name__
            raise ModelContractError(
                f"{task} has a preprocessor attached ({type(causal_lm.preprocessor).__name__}), "
                "so it expects text; the Trainer feeds token ids from its own tokenizer. "
                f"Detach it: {task}(backbone=model.backbone, preprocessor=None), or "
                f"{task}.from_preset(path, preprocessor=None)"
            )
        super().__init__(name=kwargs.pop("name", f"highnoon_{causal_lm.name}"), **kwargs)
        self.causal_lm = causal_lm
        self.built = True  # the CausalLM holds every weight already

    @property
    def contract_limits(self) -> dict[str, str]:
        """What this model cannot do, with the reason (``contract.check_features``)."""
        limits = dict(LIMITS)
        if self.packable:
            del limits["pack"]
        return limits

    @property
    def packable(self) -> bool:
        return type(self.causal_lm.backbone).__name__ in PACKABLE

    @property
    def wrapped_model(self) -> keras.Model:
        """The KerasHub model itself (``contract.unwrap``)."""
        return self.causal_lm

    @property
    def config(self) -> dict[str, Any]:
        """What identifies the architecture (``model_config.json``; a resume compares it): the
        task and backbone classes and the backbone's config, plus ``vocab_size`` and
        ``max_seq_length`` under highnoon's names."""
        backbone = self.causal_lm.backbone
        backbone_config = {
            key: value
            for key, value in backbone.get_config().items()
            if key not in ("name", "trainable")
        }
        config = {
            "model_type": "keras_hub",
            "task": type(self.causal_lm).__name__,
            "backbone_class": type(backbone).__name__,
            "backbone": backbone_config,
            "vocab_size": int(backbone.vocabulary_size),
            "max_seq_length": getattr(backbone, "max_sequence_length", None),
        }
        return json.loads(json.dumps(config, default=str))  # as model_config.json reads back

    def call(
        self,
        input_ids: Any,
        training: bool = False,
        positions: Any = None,
        segment_ids: Any = None,
    ) -> Any:
        """Logits of ``input_ids``; packed rows (``positions``, ``segment_ids``: only for a
        backbone in ``PACKABLE``, which ``check_features`` enforces) run layer by layer with
        per-document positions and attention."""
        ids = ops.cast(input_ids, "int32")
        if positions is None and segment_ids is None:
            inputs = {"token_ids": ids, "padding_mask": ops.ones_like(ids, dtype="int32")}
            return self.causal_lm(inputs, training=training)
        return _packed_gpt2(self.causal_lm.backbone, ids, positions, segment_ids, training)


def _packed_gpt2(backbone: Any, ids: Any, positions: Any, segment_ids: Any, training: bool) -> Any:
    """GPT2CausalLM's forward pass (``GPT2Backbone.__init__``'s graph, then the tied head)
    with each token's own position and attention only within its segment: the layers' public
    ``positions=`` and ``decoder_attention_mask=`` arguments, merged by the decoder with its
    causal mask."""
    x = backbone.token_embedding(ids)
    if positions is None:
        position_embeddings = backbone.position_embedding(x)
    else:
        position_embeddings = backbone.position_embedding(x, positions=ops.cast(positions, "int32"))
    x = backbone.embeddings_add((x, position_embeddings))
    x = backbone.embeddings_dropout(x, training=training)
    mask = None
    if segment_ids is not None:
        same = ops.equal(segment_ids[:, :, None], segment_ids[:, None, :])
        mask = ops.cast(same, "int32")
    for layer in backbone.transformer_layers:
        x = layer(x, decoder_attention_mask=mask, training=training)
    x = backbone.layer_norm(x)
    return backbone.token_embedding(x, reverse=True)


def from_model_config(config: dict[str, Any]) -> keras.Model:
    """The CausalLM (no preprocessor, fresh weights) that ``KerasHubLM.config`` describes: the
    architecture ``model_config.json`` records beside a checkpoint."""
    keras_hub = import_keras_hub()
    task = getattr(keras_hub.models, str(config.get("task")), None)
    backbone_cls = getattr(keras_hub.models, str(config.get("backbone_class")), None)
    if task is None or backbone_cls is None or not isinstance(config.get("backbone"), dict):
        raise ModelContractError(
            f"model config names task={config.get('task')!r} and "
            f"backbone_class={config.get('backbone_class')!r}, which this keras-hub "
            f"({keras_hub.__version__}) does not have, or holds no backbone config; it was "
            f"written by the Trainer for a KerasHub model ({INSTALL_HINT})"
        )
    return task(backbone=backbone_cls.from_config(config["backbone"]), preprocessor=None)


def load_checkpoint(prefix: str, config: dict[str, Any], source: str) -> keras.Model:
    """The KerasHub CausalLM of a Trainer checkpoint: rebuilt from ``config`` (read from
    ``source``), its weights restored from ``prefix`` through the object graph; a checkpoint
    that does not hold exactly those weights is refused, naming both."""
    import tensorflow as tf

    causal = from_model_config(config)
    status = tf.train.Checkpoint(model=KerasHubLM(causal)).restore(prefix).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as error:
        raise ModelContractError(
            f"checkpoint {prefix!r} does not hold the weights of the {config.get('task')} that "
            f"{source} describes ({str(error).splitlines()[0][:200]})"
        ) from error
    return causal


def generate(
    model: keras.Model,
    prompt: str | Sequence[int] | np.ndarray,
    *,
    max_length: int,
    tokenizer: Any,
    temperature: float = 0.0,
    top_k: int = 50,
    top_p: float = 1.0,
    seed: int | None = None,
    stop: bool = True,
) -> str | list[int]:
    """Continue ``prompt`` with a KerasHub CausalLM through its own ``generate`` (its key/value
    cache), on highnoon's tokens: a text prompt is encoded with BOS first, as training rows
    start, and the result decoded; ids come back as ids (prompt + continuation, up to and with
    the tokenizer's EOS when ``stop``).

    ``temperature=0`` is greedy; otherwise KerasHub's top-p sampler (``top_p``, among the
    ``top_k`` most likely; 0 disables the cut) with ``seed``. The model is re-compiled with that
    sampler (KerasHub keeps the sampler in ``compile``)."""
    keras_hub = import_keras_hub()
    v.check_int("max_length", max_length, minimum=2)
    v.check_float("temperature", temperature, minimum=0.0)
    v.check_int("top_k", top_k, minimum=0)
    v.check_float("top_p", top_p, minimum=0.0, exclusive_minimum=True, maximum=1.0)
    v.check_int("seed", seed, allow_none=True)
    is_text = isinstance(prompt, str)
    ids = (
        [int(tokenizer.bos_id), *tokenizer.encode(prompt)] if is_text else [int(i) for i in prompt]
    )
    if not 1 <= len(ids) < max_length:
        raise v.InvalidArgumentError(
            f"generate: prompt has {len(ids)} tokens; it needs 1 to max_length - 1 = "
            f"{max_length - 1}"
        )
    token_ids = np.zeros((1, max_length), np.int32)
    token_ids[0, : len(ids)] = ids
    padding_mask = np.zeros((1, max_length), bool)
    padding_mask[0, : len(ids)] = True
    if temperature == 0:
        sampler = keras_hub.samplers.GreedySampler()
    else:
        sampler = keras_hub.samplers.TopPSampler(
            p=top_p, k=top_k or None, seed=seed, temperature=temperature
        )
    model.compile(sampler=sampler)
    out = model.generate(
        {"token_ids": token_ids, "padding_mask": padding_mask},
        stop_token_ids=[int(tokenizer.eos_id)] if stop else None,
    )
    length = int(np.sum(out["padding_mask"][0]))
    result = [int(i) for i in out["token_ids"][0, :length]]
    return tokenizer.decode(result) if is_text else result
