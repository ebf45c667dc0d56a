"""`HighNoonLM`: the decoder-only transformer (a Keras 3 `keras.Model`).

token embedding -> num_layers x pre-norm block (RMSNorm, RoPE causal GQA attention, RMSNorm,
SwiGLU) -> final RMSNorm -> output head (tied to the embedding by default) -> float32 logits.

Weights are created only when the model is built (`model.build()` or the first call), so
`create_model("highnoon-20b")` is cheap until then. The model serialises through
`get_config`/`from_config` (`model.save("x.keras")` + `keras.models.load_model`) and through
`tf.train.Checkpoint(model=model)`.

Rematerialisation (`remat=True`): in training, each block's activations are recomputed in the
backward pass instead of kept (`tf.recompute_grad` per block), trading about a third more compute
for activation memory of one block instead of all. It changes no weight, so it is a model option,
not a `ModelConfig` field (a checkpoint written with it restores without it).

Segments: `weight_segments()` names the weight groups in the order the forward pass uses them
(embedding, each block, head). `call(..., runner=fn)` runs every segment through
`fn(name, variables, segment_fn, *inputs)`; the sharded step uses this to gather a segment's
weights from the replicas' shares just before it runs (`highnoon/training/sharding/fsdp.py`).
Without a runner the forward pass is the plain one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from highnoon.models.config import ModelConfig
from highnoon.models.layers import Block, RMSNorm, normal_init, rotary_cos_sin, weight_seed
from highnoon.utils.validation import InvalidArgumentError, check_bool

# runner(name, variables, segment_fn, *inputs) -> segment_fn(*inputs), however it gets the weights
SegmentRunner = Callable[..., Any]


@keras.saving.register_keras_serializable(package="highnoon")
class HighNoonLM(keras.Model):
    """Decoder-only language model.

    `model(input_ids, training=False, positions=None, segment_ids=None)`:
      input_ids: int [B, T] token ids.
      positions: optional int32 [B, T] rotary positions (default 0..T-1 per row; packed batches
        pass positions that restart at 0 for each packed sample).
      segment_ids: optional int32 [B, T]; a token attends only to earlier tokens of the same
        segment (packed samples never see each other).
    Returns float32 logits [B, T, vocab_size], whatever the dtype policy.

    `remat=True` recomputes each block in the backward pass (see the module docstring).
    """

    def __init__(self, config: ModelConfig | dict[str, Any], remat: bool = False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(config, dict):
            config = ModelConfig.from_dict(config)
        if not isinstance(config, ModelConfig):
            raise InvalidArgumentError(
                f"HighNoonLM: config must be a ModelConfig or dict, got {type(config).__name__}"
            )
        self.remat = check_bool("remat", remat)
        if self.remat and config.dropout > 0:
            raise InvalidArgumentError(
                f"HighNoonLM: remat=True with dropout={config.dropout} is not supported: a "
                "recomputed block would draw a different dropout mask than the forward pass; "
                "use dropout=0 or remat=False"
            )
        self._config = config
        c = config
        self._embed_seed = weight_seed(c.init_seed, 0)
        # one attribute per block: tf.train.Checkpoint does not track Keras-wrapped lists
        for i in range(c.num_layers):
            setattr(self, f"block_{i}", Block(c, i, 1 + 9 * i, name=f"block_{i}"))
        self.final_norm = RMSNorm(c.d_model, c.norm_eps, name="final_norm")
        self.tokenizer = None  # optional: attach one for string prompts in `generate`

    # -- construction -------------------------------------------------------------------------

    @property
    def blocks(self) -> list[Block]:
        return [getattr(self, f"block_{i}") for i in range(self._config.num_layers)]

    @property
    def config(self) -> ModelConfig:
        return self._config

    @property
    def vocab_size(self) -> int:
        """Number of token ids the model embeds and predicts (``config.vocab_size``)."""
        return self._config.vocab_size

    @property
    def embedding_dim(self) -> int:
        """Width of the token embedding and residual stream (``config.d_model``; the
        public API's name for it)."""
        return self._config.d_model

    @property
    def num_blocks(self) -> int:
        """Number of transformer blocks (``config.num_layers``)."""
        return self._config.num_layers

    def weight_segments(self) -> list[tuple[str, list[keras.Variable]]]:
        """(name, weights) of each segment in the order the forward pass runs them: the
        embedding, every block, then the head (final norm and the output matrix, which is the
        embedding again when tied)."""
        if not self.built:
            raise InvalidArgumentError("HighNoonLM.weight_segments: build the model first")
        head = self.embedding if self._config.tie_embeddings else self.lm_head
        return [
            ("embed", [self.embedding]),
            *((block.name, list(block.trainable_weights)) for block in self.blocks),
            ("head", [self.final_norm.scale, head]),
        ]

    def build(self, input_shape=None):
        """Create every weight (shapes come from the config; `input_shape` is ignored)."""
        c = self._config
        self.embedding = self.add_weight(
            name="embedding",
            shape=(c.vocab_size, c.d_model),
            initializer=normal_init(c.initializer_range, self._embed_seed),
        )
        for block in self.blocks:
            block.build()
        self.final_norm.build()
        if not c.tie_embeddings:
            self.lm_head = self.add_weight(
                name="lm_head",
                shape=(c.d_model, c.vocab_size),
                initializer=normal_init(
                    c.initializer_range, weight_seed(c.init_seed, 1 + 9 * c.num_layers + 1)
                ),
            )
        self.built = True

    def load_weights(self, filepath, *args, **kwargs):
        """Keras' `load_weights`, building the model first when it is not built yet (a fresh
        `create_model(...)` holds no weights to load into; the build's initial values are then
        all overwritten, and a file that does not match the config is Keras' error). The weights
        must fit this machine's memory before the build allocates them."""
        if not self.built:
            from highnoon.models.factory import check_model_fits

            check_model_fits(self._config, source=f"the config of the model loading {filepath}")
            self.build()
        return super().load_weights(filepath, *args, **kwargs)

    def get_config(self) -> dict[str, Any]:
        base = super().get_config()
        base = {k: v for k, v in base.items() if k in ("name", "trainable", "dtype")}
        return {**base, "config": self._config.to_dict(), "remat": self.remat}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> HighNoonLM:
        config = dict(config)
        model_config = config.pop("config")
        return cls(model_config, **config)

    def get_build_config(self) -> dict[str, Any]:
        return {"input_shape": None}

    def build_from_config(self, config: dict[str, Any]) -> None:
        self.build(None)

    # -- forward ------------------------------------------------------------------------------

    def _embed(self, input_ids):
        x = ops.take(self.embedding, ops.cast(input_ids, "int32"), axis=0)
        return ops.cast(x, self.compute_dtype)

    def _logits(self, x):
        x = self.final_norm(x)
        if self._config.tie_embeddings:
            logits = ops.matmul(x, ops.transpose(ops.cast(self.embedding, x.dtype)))
        else:
            logits = ops.matmul(x, ops.cast(self.lm_head, x.dtype))
        return ops.cast(logits, "float32")

    def forward(self, input_ids, training=False, positions=None, segment_ids=None):
        """Logits [B,T,V] float32 and the per-layer (k, v) [B,T,KV,hd] (the prefill cache)."""
        cos, sin, mask = self._attention_inputs(input_ids, positions, segment_ids)
        x = self._embed(input_ids)
        cache = []
        for block in self.blocks:
            x, k, v = block(x, cos, sin, mask, training=training)
            cache.append((k, v))
        return self._logits(x), cache

    def _attention_inputs(self, input_ids, positions, segment_ids):
        """Rotary cos/sin and the boolean attention mask of a batch."""
        if not self.built:
            self.build()
        t = input_ids.shape[1]
        if t is None:
            raise InvalidArgumentError(
                "HighNoonLM needs a static sequence length (input_ids.shape[1])"
            )
        if positions is None:
            positions = ops.broadcast_to(
                ops.arange(t, dtype="int32")[None, :], ops.shape(input_ids)
            )
        cos, sin = rotary_cos_sin(positions, self._config.head_dim, self._config.rope_theta)
        mask = ops.tril(ops.ones((t, t), dtype="bool"))[None]  # [1, T, T] causal
        if segment_ids is not None:
            segment_ids = ops.cast(segment_ids, "int32")
            mask = ops.logical_and(
                mask, ops.equal(segment_ids[:, :, None], segment_ids[:, None, :])
            )
        return cos, sin, mask

    def call(self, input_ids, training=False, positions=None, segment_ids=None, runner=None):
        if runner is None and not (training and self.remat):
            logits, _ = self.forward(
                input_ids, training=training, positions=positions, segment_ids=segment_ids
            )
            return logits
        return self._segmented(input_ids, training, positions, segment_ids, runner)

    def _segmented(self, input_ids, training, positions, segment_ids, runner):
        """Logits of a forward pass that runs each weight segment through ``runner`` (plain
        calls when None), recomputing blocks in the backward pass when ``remat`` is on and no
        runner takes care of memory itself."""
        import tensorflow as tf

        run = runner or _run_directly
        segments = dict(self.weight_segments())
        cos, sin, mask = self._attention_inputs(input_ids, positions, segment_ids)
        x = run("embed", segments["embed"], lambda: self._embed(input_ids))
        for block in self.blocks:

            def block_fn(h, block=block):
                return block(h, cos, sin, mask, training=training)[0]

            if runner is None and training and self.remat:
                block_fn = tf.recompute_grad(block_fn)
            x = run(block.name, segments[block.name], block_fn, x)
        return run("head", segments["head"], self._logits, x)

    def decode_step(self, token_ids, index, cache, positions=None, visible=None):
        """Logits [B,V] of one new token per row at cache slot `index` (int32 scalar tensor),
        attending to the key/value `cache` (list of (k, v) [B, L, KV, hd]) for slots
        0..index; returns (logits, updated cache). Static shapes: compiles once for any index.

        Batched decoding of prompts of different lengths left-pads them; such rows pass
        `positions` (int32 [B], each row's rotary position of the new token: `index` minus the
        row's padding) and `visible` (bool [B, L], the slots each row attends to: its own
        tokens up to `index`, not its padding). Both default to the unpadded case."""
        b = ops.shape(token_ids)[0]
        length = cache[0][0].shape[1]
        if positions is None:
            positions = ops.broadcast_to(ops.reshape(ops.cast(index, "int32"), (1, 1)), (b, 1))
        else:
            positions = ops.reshape(ops.cast(positions, "int32"), (b, 1))
        cos, sin = rotary_cos_sin(positions, self._config.head_dim, self._config.rope_theta)
        if visible is None:
            mask = ops.reshape(ops.arange(length, dtype="int32") <= index, (1, 1, length))
        else:
            mask = ops.reshape(ops.cast(visible, "bool"), (b, 1, length))
        x = self._embed(ops.reshape(token_ids, (b, 1)))
        new_cache = []
        for block, (k_cache, v_cache) in zip(self.blocks, cache):
            x, k_cache, v_cache = block.decode(x, cos, sin, k_cache, v_cache, index, mask)
            new_cache.append((k_cache, v_cache))
        return self._logits(x)[:, 0, :], new_cache

    # -- generation ---------------------------------------------------------------------------

    def generate(
        self,
        prompt,
        max_length: int = 256,
        temperature: float = 1.0,
        top_k: int = 50,
        top_p: float = 1.0,
        seed: int | None = None,
        tokenizer=None,
        *,
        use_cache: bool = True,
        eos_id: int | None = None,
        jit_compile: bool = True,
    ):
        """Continue `prompt`; see `highnoon.models.generation.generate` for the details."""
        from highnoon.models.generation import generate

        return generate(
            self,
            prompt,
            max_length=max_length,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            tokenizer=tokenizer,
            use_cache=use_cache,
            eos_id=eos_id,
            jit_compile=jit_compile,
        )


def _run_directly(name: str, variables: list, segment_fn: Callable, *inputs):
    del name, variables
    return segment_fn(*inputs)
