"""Training memory estimate per replica: will this model and batch fit on this device?

Data parallelism: every replica holds a full copy of weights, gradients and optimizer state, and
the activations of its own micro-batch, `b = batch_size / (num_replicas * accumulation_steps)`.

Formula (bytes; p = bytes per parameter dtype, c = bytes per compute dtype, N = parameters,
L layers, d = d_model, kv = num_kv_heads * head_dim, f = d_ff, H = heads, V = vocab, s = seq):

* weights      N * p
* gradients    N * p, plus another N * p accumulation buffer when accumulation_steps > 1
* optimizer    N * p * slots: adamw/adam 2 (m, v), momentum/lion 1, sgd 0; adafactor keeps
               factored second moments (rows + cols per matrix, the whole vector otherwise)
* activations  what the backward pass keeps without rematerialisation, per layer:
                 s*b*(8d + 3kv + 4f) * c     (norm in/out, q/k/v, rotated q/k, attention
                                              output, MLP norm, gate, up, silu(gate), product)
               + b*H*s^2 * (4 + c)           (float32 softmax probabilities and their
                                              compute-dtype copy used in the value matmul)
               + b*H*s^2 * 1 if dropout > 0  (mask)
               plus the embedding output s*b*d*c and the logits s*b*V*8 (float32 logits and
               their gradient).
* total        the sum. Not counted: framework workspace, XLA temporaries, fragmentation,
               and under mixed precision the transient compute-dtype copies of weights; keep
               ~10-20% headroom (see `check_fits`).
"""

from __future__ import annotations

import dataclasses

from highnoon.models.config import ModelConfig
from highnoon.models.presets import PRESETS, get_preset

GIB = 1024**3
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_OPTIMIZER_SLOTS = {"adamw": 2, "adam": 2, "lion": 1, "momentum": 1, "sgd": 0, "adafactor": None}
_OPTIMIZER_NAMES = {"adamw": "AdamW", "adam": "Adam", "lion": "Lion", "momentum": "SGD+momentum",
                    "sgd": "SGD", "adafactor": "Adafactor"}  # fmt: skip


class ModelDoesNotFitError(ValueError):
    """The estimated training memory exceeds the device memory."""


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per replica; see the module docstring for the formula."""

    name: str
    optimizer: str
    batch_size: int
    seq_length: int
    micro_batch_size: int
    num_replicas: int
    gradient_accumulation_steps: int
    param_dtype: str
    compute_dtype: str
    num_parameters: int
    weights_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    activations_bytes: int

    @property
    def total_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.gradients_bytes
            + self.optimizer_bytes
            + self.activations_bytes
        )

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def describe(self) -> str:
        g = lambda n: f"{n / GIB:.1f}"  # noqa: E731
        return (
            f"{self.name} with {_OPTIMIZER_NAMES[self.optimizer]} needs about "
            f"{g(self.total_bytes)} GiB per replica (weights {g(self.weights_bytes)}, gradients "
            f"{g(self.gradients_bytes)}, optimizer {g(self.optimizer_bytes)}, activations "
            f"{g(self.activations_bytes)} GiB) at micro-batch {self.micro_batch_size} x "
            f"{self.seq_length} tokens, {self.param_dtype} weights, {self.compute_dtype} compute"
        )


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"estimate_memory: {name}={value!r} must be a positive integer")
    return value


def _dtype_bytes(name: str, value: str) -> int:
    if value not in _DTYPE_BYTES:
        raise ValueError(f"estimate_memory: {name}={value!r}; allowed: {sorted(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[value]


def _optimizer_elements(config: ModelConfig, optimizer: str) -> int:
    slots = _OPTIMIZER_SLOTS[optimizer]
    if slots is not None:
        return slots * config.num_parameters()
    # Adafactor: factored second moment (rows + cols) per matrix, full for vectors; no momentum
    return sum(
        shape[0] + shape[1] if len(shape) == 2 else shape[0] for _, shape in config.weight_shapes()
    )


def estimate_memory(
    config_or_name: ModelConfig | str,
    *,
    batch_size: int,
    seq_length: int,
    optimizer: str = "adamw",
    param_dtype: str = "float32",
    compute_dtype: str = "float32",
    num_replicas: int = 1,
    gradient_accumulation_steps: int = 1,
) -> MemoryEstimate:
    """Estimate training memory per replica. `batch_size` is the global batch per step."""
    if isinstance(config_or_name, str):
        config, name = get_preset(config_or_name), config_or_name
    elif isinstance(config_or_name, ModelConfig):
        config = config_or_name
        name = next((n for n, c in PRESETS.items() if c == config), "model")
        if name == "model":
            name = f"model ({config.num_parameters() / 1e6:.1f}M parameters)"
    else:
        raise ValueError(
            f"estimate_memory: config_or_name={config_or_name!r} must be a ModelConfig or a "
            f"preset name ({sorted(PRESETS)})"
        )
    batch_size = _positive_int("batch_size", batch_size)
    seq_length = _positive_int("seq_length", seq_length)
    num_replicas = _positive_int("num_replicas", num_replicas)
    accum = _positive_int("gradient_accumulation_steps", gradient_accumulation_steps)
    if optimizer not in _OPTIMIZER_SLOTS:
        raise ValueError(
            f"estimate_memory: optimizer={optimizer!r}; allowed: {sorted(_OPTIMIZER_SLOTS)}"
        )
    p = _dtype_bytes("param_dtype", param_dtype)
    c = _dtype_bytes("compute_dtype", compute_dtype)
    if batch_size % (num_replicas * accum):
        raise ValueError(
            f"estimate_memory: batch_size={batch_size} must divide by num_replicas * "
            f"gradient_accumulation_steps = {num_replicas} * {accum}"
        )
    b, s = batch_size // (num_replicas * accum), seq_length
    n = config.num_parameters()
    d, kv, f, h, v = config.d_model, config.kv_dim, config.d_ff, config.num_heads, config.vocab_size
    per_layer = s * b * (8 * d + 3 * kv + 4 * f) * c + b * h * s * s * (4 + c)
    if config.dropout > 0:
        per_layer += b * h * s * s
    activations = config.num_layers * per_layer + s * b * d * c + s * b * v * 8
    return MemoryEstimate(
        name=name,
        optimizer=optimizer,
        batch_size=batch_size,
        seq_length=seq_length,
        micro_batch_size=b,
        num_replicas=num_replicas,
        gradient_accumulation_steps=accum,
        param_dtype=param_dtype,
        compute_dtype=compute_dtype,
        num_parameters=n,
        weights_bytes=n * p,
        gradients_bytes=n * p * (2 if accum > 1 else 1),
        optimizer_bytes=_optimizer_elements(config, optimizer) * p,
        activations_bytes=activations,
    )


def check_fits(
    estimate: MemoryEstimate, device_bytes: int, *, headroom: float = 0.9
) -> MemoryEstimate:
    """Return `estimate` if it fits in `headroom * device_bytes`, else raise
    `ModelDoesNotFitError` saying by how much and what would help."""
    if isinstance(device_bytes, bool) or not isinstance(device_bytes, int) or device_bytes <= 0:
        raise ValueError(f"check_fits: device_bytes={device_bytes!r} must be a positive integer")
    if not 0 < headroom <= 1:
        raise ValueError(f"check_fits: headroom={headroom!r} must be in (0, 1]")
    usable = int(device_bytes * headroom)
    if estimate.total_bytes <= usable:
        return estimate
    fixed = estimate.weights_bytes + estimate.gradients_bytes + estimate.optimizer_bytes
    if fixed > usable:
        hint = (
            "weights, gradients and optimizer state alone exceed the device: use a smaller "
            "model, bfloat16 parameters or a factored optimizer (adafactor); data parallelism "
            "does not shard them"
        )
    else:
        hint = (
            "activations are the excess: lower the micro-batch (more gradient accumulation "
            "steps or replicas) or the sequence length, or use bfloat16 compute"
        )
    raise ModelDoesNotFitError(
        f"{estimate.describe()}, but the device has {device_bytes / GIB:.1f} GiB "
        f"({usable / GIB:.1f} GiB usable at headroom={headroom}); {hint}"
    )
