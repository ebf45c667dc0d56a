"""`ModelConfig`: the shape of a HighNoon decoder-only transformer, validated and countable.

Pure Python (no TensorFlow), so configs, presets, parameter counts and memory estimates can be
inspected for a 20B model on a laptop without allocating a single weight.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from highnoon.utils import files
from highnoon.utils import validation as v

BYTE_VOCAB_SIZE = 259  # ByteTokenizer: pad 0, bos 1, eos 2, byte b -> b + 3
_POSITIVE_INTS = (
    "vocab_size",
    "d_model",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "d_ff",
    "max_seq_length",
)
_POSITIVE_FLOATS = ("rope_theta", "norm_eps", "initializer_range")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of `HighNoonLM`.

    Attributes:
      vocab_size: number of token ids (from the tokenizer; 259 for the byte tokenizer).
      d_model: width of the residual stream.
      num_layers: number of transformer blocks.
      num_heads: query heads; `d_model` must divide by it (head_dim = d_model // num_heads).
      num_kv_heads: key/value heads for grouped-query attention; must divide `num_heads`
        (== num_heads is multi-head attention, 1 is multi-query attention).
      d_ff: hidden width of the SwiGLU MLP (gate and up projections).
      max_seq_length: longest sequence the model is meant for (generation refuses longer).
      rope_theta: base of the rotary position embedding frequencies.
      norm_eps: epsilon of the RMSNorms.
      tie_embeddings: if True the output head reuses the token embedding matrix.
      dropout: dropout rate on the residual branches during training (0 disables it).
      initializer_range: standard deviation of the normal weight initialiser.
      init_seed: seed of the weight initialisers: the same config gives the same initial
        weights on every host and every run (no global RNG).
    """

    vocab_size: int = BYTE_VOCAB_SIZE
    d_model: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 4
    d_ff: int = 704
    max_seq_length: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    initializer_range: float = 0.02
    init_seed: int = 0

    def __post_init__(self) -> None:
        # The same rules as the Trainer's settings (numpy integers are integers, NaN and
        # infinity are never numbers); values are normalised to Python types so the config
        # compares, hashes and serialises to JSON as it would from plain literals.
        for name in _POSITIVE_INTS:
            self._set(name, v.check_positive_int(f"ModelConfig.{name}", getattr(self, name)))
        for name in _POSITIVE_FLOATS:
            self._set(name, v.check_positive_float(f"ModelConfig.{name}", getattr(self, name)))
        self._set("dropout", v.check_fraction("ModelConfig.dropout", self.dropout, allow_one=False))
        self._set("tie_embeddings", v.check_bool("ModelConfig.tie_embeddings", self.tie_embeddings))
        self._set("init_seed", v.check_int("ModelConfig.init_seed", self.init_seed))
        if self.d_model % self.num_heads:
            raise v.InvalidArgumentError(
                f"ModelConfig.num_heads={self.num_heads}: must divide d_model={self.d_model}"
            )
        if (self.d_model // self.num_heads) % 2:
            raise v.InvalidArgumentError(
                f"ModelConfig.num_heads={self.num_heads}: head_dim = d_model // num_heads = "
                f"{self.d_model // self.num_heads} must be even (rotary embeddings rotate pairs)"
            )
        if self.num_heads % self.num_kv_heads:
            raise v.InvalidArgumentError(
                f"ModelConfig.num_kv_heads={self.num_kv_heads}: must divide "
                f"num_heads={self.num_heads} (each key/value head serves a whole group)"
            )

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: normalising in __post_init__ only

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def kv_dim(self) -> int:
        """Width of the key (and of the value) projection: num_kv_heads * head_dim."""
        return self.num_kv_heads * self.head_dim

    def num_parameters(self) -> int:
        """Exact parameter count by closed form (no biases anywhere).

        embedding V*d + layers * (2d norms + d*d q + 2*d*kv_dim k,v + d*d out + 3*d*d_ff MLP)
        + d final norm + (V*d untied head, 0 if tied).
        """
        d, v = self.d_model, self.vocab_size
        per_layer = 2 * d + 2 * d * d + 2 * d * self.kv_dim + 3 * d * self.d_ff
        head = 0 if self.tie_embeddings else v * d
        return v * d + self.num_layers * per_layer + d + head

    def non_embedding_parameters(self) -> int:
        """Parameters outside the embedding and output head (the `N` of scaling laws)."""
        d = self.d_model
        return self.num_parameters() - self.vocab_size * d * (1 if self.tie_embeddings else 2)

    def weight_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every weight the model creates, in creation order."""
        d = self.d_model
        shapes: list[tuple[str, tuple[int, ...]]] = [("embedding", (self.vocab_size, d))]
        for i in range(self.num_layers):
            p = f"block_{i}/"
            shapes += [
                (p + "attn_norm", (d,)),
                (p + "q", (d, d)),
                (p + "k", (d, self.kv_dim)),
                (p + "v", (d, self.kv_dim)),
                (p + "o", (d, d)),
                (p + "mlp_norm", (d,)),
                (p + "gate", (d, self.d_ff)),
                (p + "up", (d, self.d_ff)),
                (p + "down", (self.d_ff, d)),
            ]
        shapes.append(("final_norm", (d,)))
        if not self.tie_embeddings:
            shapes.append(("lm_head", (d, self.vocab_size)))
        return shapes

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed; unknown fields are a ValueError listing the valid ones."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise v.InvalidArgumentError(
                f"unknown ModelConfig field(s) {unknown}; valid fields: {field_names()}"
            )
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys are a ValueError (a typo must not pass silently)."""
        if not isinstance(data, dict):
            raise v.InvalidArgumentError(
                f"ModelConfig.from_dict: expected a dict, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise v.InvalidArgumentError(
                f"unknown ModelConfig field(s) {unknown}; valid fields: {field_names()}"
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ModelConfig)]


MODEL_CONFIG_FILENAME = "model_config.json"


def save_model_config(config: ModelConfig, path: str) -> str:
    """Write `config` as JSON atomically. `path` is a file or a directory (then
    `<dir>/model_config.json`, the name the Trainer and `highnoon.launch.generate` agree on).
    Any `tf.io.gfile` path works (`gs://...`)."""
    if files.isdir(path):
        path = os.path.join(path, MODEL_CONFIG_FILENAME)
    return files.atomic_write_text(path, config.to_json() + "\n")


def load_model_config(path: str) -> ModelConfig:
    """Read a config written by `save_model_config` (a file, or a directory holding one; any
    `tf.io.gfile` path). Invalid JSON or a bad field is an error naming the file."""
    if files.isdir(path):
        path = os.path.join(path, MODEL_CONFIG_FILENAME)
    if not files.isfile(path):
        raise v.InvalidArgumentError(f"load_model_config: path={path!r} does not exist")
    try:
        data = json.loads(files.read_text(path))
    except json.JSONDecodeError as error:
        raise v.InvalidArgumentError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno} column "
            f"{error.colno}); it must hold one object of ModelConfig fields, as "
            "save_model_config writes it: restore the file the run wrote or fix that line"
        ) from None
    try:
        return ModelConfig.from_dict(data)
    except ValueError as error:  # InvalidArgumentTypeError is a ValueError too
        raise type(error)(f"{path}: {error}") from None
