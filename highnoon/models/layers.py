"""Building blocks of `HighNoonLM`: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Every weight is created in `build` from the `ModelConfig` alone (no input shape needed), so a
model can be built explicitly without data and nothing is allocated before that. Each weight's
initialiser takes its own integer seed, so initial weights depend on the config only.
All ops are Keras/TF ops with static shapes, so the whole model compiles under XLA.
"""

from __future__ import annotations

import keras
from keras import ops

from highnoon.models.config import ModelConfig

_MASK_VALUE = -1e9  # added to masked attention scores (softmax runs in float32)


def weight_seed(init_seed: int, index: int) -> int:
    """Seed of the `index`-th weight (creation order): distinct per weight, fixed per config."""
    return (init_seed * 1_000_003 + index * 7_919 + 17) % (2**31 - 1)


def normal_init(stddev: float, seed: int) -> keras.initializers.Initializer:
    return keras.initializers.RandomNormal(mean=0.0, stddev=stddev, seed=seed)


class RMSNorm(keras.layers.Layer):
    """Root-mean-square norm with a learned scale; statistics in float32 under mixed precision."""

    def __init__(self, dim: int, eps: float, **kwargs):
        super().__init__(**kwargs)
        self.dim = dim
        self.eps = eps

    def build(self, input_shape=None):
        self.scale = self.add_weight(name="scale", shape=(self.dim,), initializer="ones")
        self.built = True

    def call(self, x):
        x32 = ops.cast(x, "float32")
        y = x32 * ops.rsqrt(ops.mean(ops.square(x32), axis=-1, keepdims=True) + self.eps)
        y = y * ops.cast(self.scale, "float32")
        return ops.cast(y, x.dtype)


class Linear(keras.layers.Layer):
    """`x @ kernel` with no bias (kernel [in, out])."""

    def __init__(self, in_dim: int, out_dim: int, stddev: float, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.stddev, self.seed = stddev, seed

    def build(self, input_shape=None):
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.in_dim, self.out_dim),
            initializer=normal_init(self.stddev, self.seed),
        )
        self.built = True

    def call(self, x):
        return ops.matmul(x, self.kernel)


def rotary_cos_sin(positions, head_dim: int, theta: float):
    """cos, sin of the rotary angles for int `positions` [B, T] -> two float32 [B, T, 1, hd/2]."""
    inv_freq = 1.0 / (theta ** (ops.arange(0, head_dim, 2, dtype="float32") / head_dim))
    angles = ops.cast(positions, "float32")[..., None] * inv_freq  # [B, T, hd/2]
    angles = angles[:, :, None, :]
    return ops.cos(angles), ops.sin(angles)


def apply_rotary(x, cos, sin):
    """Rotate the two halves of the last axis of x [B, T, heads, hd] (GPT-NeoX/LLaMA layout)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = ops.cast(cos, x.dtype), ops.cast(sin, x.dtype)
    return ops.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


class Attention(keras.layers.Layer):
    """Causal self-attention with grouped-query attention and rotary position embeddings."""

    def __init__(self, config: ModelConfig, layer_index: int, seeds: list[int], **kwargs):
        super().__init__(**kwargs)
        c = config
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        out_std = c.initializer_range / (2 * c.num_layers) ** 0.5  # GPT-2 scaled residual init
        self.q = Linear(c.d_model, c.d_model, c.initializer_range, seeds[0], name="q")
        self.k = Linear(c.d_model, c.kv_dim, c.initializer_range, seeds[1], name="k")
        self.v = Linear(c.d_model, c.kv_dim, c.initializer_range, seeds[2], name="v")
        self.o = Linear(c.d_model, c.d_model, out_std, seeds[3], name="o")

    def build(self, input_shape=None):
        for layer in (self.q, self.k, self.v, self.o):
            layer.build()
        self.built = True

    def project(self, x, cos, sin):
        """q [B,T,H,hd], k and v [B,T,KV,hd] of x [B,T,d], rotary applied to q and k."""
        b, t = ops.shape(x)[0], x.shape[1]
        q = ops.reshape(self.q(x), (b, t, self.num_heads, self.head_dim))
        k = ops.reshape(self.k(x), (b, t, self.num_kv_heads, self.head_dim))
        v = ops.reshape(self.v(x), (b, t, self.num_kv_heads, self.head_dim))
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def attend(self, q, k, v, mask):
        """Attention of q [B,T,H,hd] over k, v [B,S,KV,hd]; mask bool broadcastable to [B,T,S]."""
        b, t = ops.shape(q)[0], q.shape[1]
        groups = self.num_heads // self.num_kv_heads
        q = ops.reshape(q, (b, t, self.num_kv_heads, groups, self.head_dim))
        scores = ops.einsum("btkgd,bskd->bkgts", q, k)
        scores = ops.cast(scores, "float32") * (self.head_dim**-0.5)
        mask = ops.expand_dims(ops.expand_dims(mask, 1), 1)  # [B,1,1,T,S]
        scores = ops.where(mask, scores, _MASK_VALUE)
        probs = ops.cast(ops.softmax(scores, axis=-1), v.dtype)
        out = ops.einsum("bkgts,bskd->btkgd", probs, v)
        return self.o(ops.reshape(out, (b, t, self.num_heads * self.head_dim)))


class SwiGLU(keras.layers.Layer):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, seeds: list[int], **kwargs):
        super().__init__(**kwargs)
        c = config
        out_std = c.initializer_range / (2 * c.num_layers) ** 0.5
        self.gate = Linear(c.d_model, c.d_ff, c.initializer_range, seeds[0], name="gate")
        self.up = Linear(c.d_model, c.d_ff, c.initializer_range, seeds[1], name="up")
        self.down = Linear(c.d_ff, c.d_model, out_std, seeds[2], name="down")

    def build(self, input_shape=None):
        for layer in (self.gate, self.up, self.down):
            layer.build()
        self.built = True

    def call(self, x):
        return self.down(ops.silu(self.gate(x)) * self.up(x))


class Block(keras.layers.Layer):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: ModelConfig, layer_index: int, first_seed_index: int, **kwargs):
        super().__init__(**kwargs)
        seeds = [weight_seed(config.init_seed, first_seed_index + i) for i in range(9)]
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps, name="attn_norm")
        self.attn = Attention(config, layer_index, seeds[1:5], name="attn")
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps, name="mlp_norm")
        self.mlp = SwiGLU(config, seeds[6:9], name="mlp")
        self.dropout_rate = config.dropout
        if config.dropout > 0:
            self.attn_dropout = keras.layers.Dropout(config.dropout, seed=seeds[0])
            self.mlp_dropout = keras.layers.Dropout(config.dropout, seed=seeds[5])

    def build(self, input_shape=None):
        for layer in (self.attn_norm, self.attn, self.mlp_norm, self.mlp):
            layer.build()
        self.built = True

    def _residual(self, x, branch, dropout, training):
        if self.dropout_rate > 0:
            branch = dropout(branch, training=training)
        return x + branch

    def call(self, x, cos, sin, mask, training=False):
        q, k, v = self.attn.project(self.attn_norm(x), cos, sin)
        x = self._residual(x, self.attn.attend(q, k, v, mask), self._attn_drop(), training)
        return self._mlp_part(x, training), k, v

    def _attn_drop(self):
        return self.attn_dropout if self.dropout_rate > 0 else None

    def _mlp_part(self, x, training):
        drop = self.mlp_dropout if self.dropout_rate > 0 else None
        return self._residual(x, self.mlp(self.mlp_norm(x)), drop, training)

    def decode(self, x, cos, sin, k_cache, v_cache, index, mask):
        """One new position x [B,1,d] at `index`: write its k/v into the caches, attend to them."""
        q, k, v = self.attn.project(self.attn_norm(x), cos, sin)
        start = [0, index, 0, 0]
        k_cache = ops.slice_update(k_cache, start, ops.cast(k, k_cache.dtype))
        v_cache = ops.slice_update(v_cache, start, ops.cast(v, v_cache.dtype))
        x = x + self.attn.attend(q, k_cache, v_cache, mask)
        return self._mlp_part(x, False), k_cache, v_cache
