"""Training memory estimate per replica: will this model and batch fit on this device?

Data parallelism: every replica holds the activations of its own micro-batch,
`b = batch_size / (num_replicas * accumulation_steps)`. Unsharded (`sharding=None`) it also
holds a full copy of weights, gradients and optimizer state; the sharding levels
(`highnoon/training/sharding/levels.py`) keep shares instead, a share of a variable of n
elements being ceil(n / R) elements on R replicas (flatten-and-pad).

Formula (bytes; p = bytes per parameter dtype, c = bytes per compute dtype, N = parameters,
L layers, d = d_model, kv = num_kv_heads * head_dim, f = d_ff, H = heads, V = vocab, s = seq):

* weights      N * p; "full": S * p + G * p (S = the shares' elements, G = the largest segment
               (embedding, one block, or the head), gathered whole while it runs)
* gradients    N * p, plus another N * p accumulation buffer when accumulation_steps > 1;
               "gradients": N * p (one micro-batch's, before its reduce-scatter) plus S * p
               (the accumulated share) when accumulation_steps > 1; "full": S * p + G * p
               (the accumulated share and one gathered segment's gradient)
* optimizer    N * p * slots: adamw/adam 2 (m, v), momentum/lion 1, sgd 0; adafactor keeps
               factored second moments (rows + cols per matrix, the whole vector otherwise);
               every sharding level: S * p * slots (sharding supports adamw and adam)
* activations  what the backward pass keeps without rematerialisation, per layer:
                 s*b*(8d + 3kv + 4f) * c     (norm in/out, q/k/v, rotated q/k, attention
                                              output, MLP norm, gate, up, silu(gate), product)
               + b*H*s^2 * (4 + c)           (float32 softmax probabilities and their
                                              compute-dtype copy used in the value matmul)
               + b*H*s^2 * 1 if dropout > 0  (mask)
               plus the embedding output s*b*d*c and the logits s*b*V*8 (float32 logits and
               their gradient). With `remat` (implied by sharding "full") a layer keeps only
               its input s*b*d*c, and one layer's activations above exist at a time (while it
               is recomputed).
* total        the sum. Not counted: framework workspace, XLA temporaries, collective
               buffers (an all-reduce's output), fragmentation, and under mixed precision the
               transient compute-dtype copies of weights; keep ~10-20% headroom (see
               `check_fits`).

`smallest_sharding` picks the smallest level that fits a device; `check_sharding_fits` is the
check a training run makes before building anything. `python -m highnoon.training.sharding.table`
prints the README tables of per-chip memory by preset, level and replica count.
"""

from __future__ import annotations

import dataclasses
import math
import os

from highnoon.models.config import ModelConfig
from highnoon.models.presets import PRESETS, get_preset
from highnoon.utils.validation import (
    InvalidArgumentError,
    check_bool,
    check_choice,
    check_float,
    check_positive_int,
)

GIB = 1024**3
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_OPTIMIZER_SLOTS = {"adamw": 2, "adam": 2, "lion": 1, "momentum": 1, "sgd": 0, "adafactor": None}
_OPTIMIZER_NAMES = {"adamw": "AdamW", "adam": "Adam", "lion": "Lion", "momentum": "SGD+momentum",
                    "sgd": "SGD", "adafactor": "Adafactor"}  # fmt: skip
# None, then the sharding levels from least to most sharded (highnoon.training.sharding.levels;
# repeated here so this module stays free of TensorFlow).
SHARDING_CHOICES = (None, "optimizer", "gradients", "full")
SHARDABLE_OPTIMIZERS = ("adamw", "adam")


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
    sharding: str | None
    remat: bool
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
            f"{self.seq_length} tokens, {self.param_dtype} weights, {self.compute_dtype} compute, "
            f"sharding={self.sharding!r} over {self.num_replicas} replicas"
            + (", remat" if self.remat else "")
        )


def _dtype_bytes(name: str, value: str) -> int:
    return _DTYPE_BYTES[check_choice(f"estimate_memory: {name}", value, sorted(_DTYPE_BYTES))]


def _optimizer_elements(config: ModelConfig, optimizer: str) -> int:
    slots = _OPTIMIZER_SLOTS[optimizer]
    if slots is not None:
        return slots * config.num_parameters()
    # Adafactor: factored second moment (rows + cols) per matrix, full for vectors; no momentum
    return sum(
        shape[0] + shape[1] if len(shape) == 2 else shape[0] for _, shape in config.weight_shapes()
    )


def share_elements(config: ModelConfig, num_replicas: int) -> int:
    """Elements of one replica's shares of all weights (flatten-and-pad per variable)."""
    return sum(-(-math.prod(shape) // num_replicas) for _, shape in config.weight_shapes())


def largest_segment(config: ModelConfig) -> int:
    """Elements of the largest weight segment gathered whole at sharding "full": the embedding,
    one block or the head (final norm and output matrix, the embedding again when tied)."""
    d, v = config.d_model, config.vocab_size
    block = 2 * d + 2 * d * d + 2 * d * config.kv_dim + 3 * d * config.d_ff
    return max(v * d, block, d + v * d)


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
    sharding: str | None = None,
    remat: bool = False,
) -> MemoryEstimate:
    """Estimate training memory per replica. `batch_size` is the global batch per step;
    `sharding` a level of `SHARDING_CHOICES`; `remat` recomputes each block in the backward
    pass (always on at sharding "full")."""
    if isinstance(config_or_name, str):
        config, name = get_preset(config_or_name), config_or_name
    elif isinstance(config_or_name, ModelConfig):
        config = config_or_name
        name = next((n for n, c in PRESETS.items() if c == config), "model")
        if name == "model":
            name = f"model ({config.num_parameters() / 1e6:.1f}M parameters)"
    else:
        raise InvalidArgumentError(
            f"estimate_memory: config_or_name={config_or_name!r} must be a ModelConfig or a "
            f"preset name ({sorted(PRESETS)})"
        )
    batch_size = check_positive_int("estimate_memory: batch_size", batch_size)
    seq_length = check_positive_int("estimate_memory: seq_length", seq_length)
    num_replicas = check_positive_int("estimate_memory: num_replicas", num_replicas)
    accum = check_positive_int(
        "estimate_memory: gradient_accumulation_steps", gradient_accumulation_steps
    )
    check_choice("estimate_memory: optimizer", optimizer, sorted(_OPTIMIZER_SLOTS))
    sharding = check_choice("estimate_memory: sharding", sharding, SHARDING_CHOICES)
    remat = check_bool("estimate_memory: remat", remat) or sharding == "full"
    if sharding is not None and optimizer not in SHARDABLE_OPTIMIZERS:
        raise InvalidArgumentError(
            f"estimate_memory: sharding={sharding!r} supports the optimizers "
            f"{list(SHARDABLE_OPTIMIZERS)}, not optimizer={optimizer!r}"
        )
    p = _dtype_bytes("param_dtype", param_dtype)
    c = _dtype_bytes("compute_dtype", compute_dtype)
    if batch_size % (num_replicas * accum):
        raise InvalidArgumentError(
            f"estimate_memory: batch_size={batch_size} must divide by num_replicas * "
            f"gradient_accumulation_steps = {num_replicas} * {accum}"
        )
    b, s = batch_size // (num_replicas * accum), seq_length
    n = config.num_parameters()
    d, kv, f, h, v = config.d_model, config.kv_dim, config.d_ff, config.num_heads, config.vocab_size
    per_layer = s * b * (8 * d + 3 * kv + 4 * f) * c + b * h * s * s * (4 + c)
    if config.dropout > 0:
        per_layer += b * h * s * s
    kept_layers = config.num_layers * (s * b * d * c) + per_layer if remat else None
    activations = (
        (kept_layers if remat else config.num_layers * per_layer) + s * b * d * c + s * b * v * 8
    )
    weights, grads = n * p, n * p * (2 if accum > 1 else 1)
    optimizer_elements = _optimizer_elements(config, optimizer)
    if sharding is not None:
        shares = share_elements(config, num_replicas)
        optimizer_elements = _OPTIMIZER_SLOTS[optimizer] * shares
        if sharding == "gradients":
            grads = n * p + (shares * p if accum > 1 else 0)
        elif sharding == "full":
            segment = largest_segment(config)
            weights = grads = (shares + segment) * p
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
        sharding=sharding,
        remat=remat,
        num_parameters=n,
        weights_bytes=weights,
        gradients_bytes=grads,
        optimizer_bytes=optimizer_elements * p,
        activations_bytes=activations,
    )


def check_fits(
    estimate: MemoryEstimate, device_bytes: int, *, headroom: float = 0.9
) -> MemoryEstimate:
    """Return `estimate` if it fits in `headroom * device_bytes`, else raise
    `ModelDoesNotFitError` saying by how much and what would help."""
    usable = _usable("check_fits", device_bytes, headroom)
    if estimate.total_bytes <= usable:
        return estimate
    fixed = estimate.weights_bytes + estimate.gradients_bytes + estimate.optimizer_bytes
    if fixed > usable:
        hint = (
            "weights, gradients and optimizer state alone exceed the device: shard them over "
            "the replicas (sharding='optimizer', 'gradients' or 'full'; smallest_sharding "
            "names the level that fits), use more replicas, a smaller model, bfloat16 "
            "parameters or a factored optimizer (adafactor)"
        )
    else:
        hint = (
            "activations are the excess: lower the micro-batch (more gradient accumulation "
            "steps or replicas) or the sequence length, use bfloat16 compute, or "
            "rematerialise blocks (create_model(..., remat=True))"
        )
    raise ModelDoesNotFitError(
        f"{estimate.describe()}, but the device has {device_bytes / GIB:.1f} GiB "
        f"({usable / GIB:.1f} GiB usable at headroom={headroom}); {hint}"
    )


def _usable(where: str, device_bytes: int, headroom: float) -> int:
    device_bytes = check_positive_int(f"{where}: device_bytes", device_bytes)
    headroom = check_float(f"{where}: headroom", headroom, minimum=0.0, maximum=1.0,
                           exclusive_minimum=True)  # fmt: skip
    return int(device_bytes * headroom)


def smallest_sharding(
    config_or_name: ModelConfig | str,
    device_bytes: int,
    *,
    headroom: float = 0.9,
    **estimate_kwargs,
) -> tuple[str | None, MemoryEstimate] | None:
    """``(level, estimate)`` of the least sharded level of `SHARDING_CHOICES` (None first) whose
    estimate fits `headroom * device_bytes`, or None when even "full" does not fit.
    `estimate_kwargs` are `estimate_memory`'s (batch_size, seq_length, num_replicas, ...)."""
    usable = _usable("smallest_sharding", device_bytes, headroom)
    estimate_kwargs.pop("sharding", None)
    for level in SHARDING_CHOICES:
        estimate = estimate_memory(config_or_name, sharding=level, **estimate_kwargs)
        if estimate.total_bytes <= usable:
            return level, estimate
    return None


def check_sharding_fits(
    config_or_name: ModelConfig | str,
    device_bytes: int,
    *,
    sharding: str | None,
    headroom: float = 0.9,
    **estimate_kwargs,
) -> MemoryEstimate:
    """The check before a run builds anything: the estimate at `sharding` if it fits the device,
    else `ModelDoesNotFitError` naming the smallest level that would fit (or, when none does,
    what the excess is)."""
    estimate = estimate_memory(config_or_name, sharding=sharding, **estimate_kwargs)
    usable = _usable("check_sharding_fits", device_bytes, headroom)
    if estimate.total_bytes <= usable:
        return estimate
    found = smallest_sharding(config_or_name, device_bytes, headroom=headroom, **estimate_kwargs)
    if found is None:
        full = estimate_memory(config_or_name, sharding="full", **estimate_kwargs)
        raise ModelDoesNotFitError(
            f"{estimate.describe()}, but the device has {device_bytes / GIB:.1f} GiB "
            f"({usable / GIB:.1f} GiB usable at headroom={headroom}) and no sharding level "
            f"fits: even sharding='full' needs {full.total_gib:.1f} GiB per replica; use more "
            "replicas (shares shrink as 1/replicas), a smaller micro-batch or sequence, "
            "bfloat16 compute or a smaller model"
        )
    level, fitting = found
    raise ModelDoesNotFitError(
        f"{estimate.describe()}, but the device has {device_bytes / GIB:.1f} GiB "
        f"({usable / GIB:.1f} GiB usable at headroom={headroom}); sharding={level!r} would fit "
        f"({fitting.total_gib:.1f} GiB per replica): set Trainer.sharding = {level!r}"
    )


def host_memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def check_weights_fit(
    config: ModelConfig,
    device_bytes: int,
    *,
    param_dtype: str = "float32",
    headroom: float = 0.9,
    source: str = "the config",
    memory_of: str = "the device",
) -> int:
    """The check before a model is built for inference: its weights' bytes if they fit in
    ``headroom * device_bytes``, else ``ModelDoesNotFitError`` naming the size, the settings
    behind the largest part, ``source`` (where the config came from) and ``memory_of`` (whose
    memory ``device_bytes`` is)."""
    usable = _usable("check_weights_fit", device_bytes, headroom)
    per_param = _dtype_bytes("param_dtype", param_dtype)
    needed = config.num_parameters() * per_param
    if needed <= usable:
        return needed
    c = config
    table = (c.vocab_size * c.d_model) * (1 if c.tie_embeddings else 2) * per_param
    blocks = (needed - table) - c.d_model * per_param
    if table >= blocks:
        largest = (
            f"the embedding{'' if c.tie_embeddings else ' and output head'} "
            f"(vocab_size={c.vocab_size} x d_model={c.d_model}) takes {table / GIB:.1f} GiB"
        )
    else:
        largest = (
            f"the blocks (num_layers={c.num_layers} at d_model={c.d_model}, d_ff={c.d_ff}) take "
            f"{blocks / GIB:.1f} GiB"
        )
    raise ModelDoesNotFitError(
        f"{source} describes a model of {c.num_parameters():,} parameters whose {param_dtype} "
        f"weights need {needed / GIB:.1f} GiB, but {memory_of} has {device_bytes / GIB:.1f} GiB "
        f"({usable / GIB:.1f} GiB usable at headroom={headroom}); {largest}: check those "
        "settings against the checkpoint"
    )
