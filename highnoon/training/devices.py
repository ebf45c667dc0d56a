"""What the accelerator is, and the two facts the Trainer needs about it: peak FLOP/s (for MFU)
and memory (for the memory plan). TensorFlow reports neither: ``get_memory_info`` gives current
and peak use, not capacity. So known chips are recognised (a TPU VM's ``TPU_ACCELERATOR_TYPE``,
a GPU's device name) and everything else comes from a setting.
"""

from __future__ import annotations

import os

GIB = 1024**3
# Per chip, from the vendors' data sheets: dense bf16 peak FLOP/s and HBM bytes.
PEAK_FLOPS = {"tpu_v4": 275e12, "tpu_v5e": 197e12, "tpu_v5p": 459e12, "h100": 989e12}
MEMORY_BYTES = {"tpu_v4": 32 * GIB, "tpu_v5e": 16 * GIB, "tpu_v5p": 95 * GIB, "h100": 80 * 10**9}
# TPU_ACCELERATOR_TYPE prefixes (e.g. "v4-32", "v5litepod-16", "v5p-128").
_TPU_PREFIXES = (("v4", "tpu_v4"), ("v5litepod", "tpu_v5e"), ("v5e", "tpu_v5e"), ("v5p", "tpu_v5p"))


def detect_accelerator() -> str | None:
    """``tpu_v4``/``tpu_v5e``/``tpu_v5p``/``h100`` when recognised, ``cpu`` on a machine with
    neither TPU nor GPU, else None (an accelerator whose facts must be given as settings)."""
    accelerator = os.environ.get("TPU_ACCELERATOR_TYPE", "").lower()
    for prefix, name in _TPU_PREFIXES:
        if accelerator.startswith(prefix):
            return name
    if accelerator:
        return None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "h100" if "H100" in str(details.get("device_name", "")) else None
    return None if tf.config.list_physical_devices("TPU") else "cpu"


def device_memory_bytes(setting_gib: float | None) -> int | None:
    """One device's memory: the setting, else a recognised chip's, else None (unknown)."""
    if setting_gib is not None:
        return int(setting_gib * GIB)
    return MEMORY_BYTES.get(detect_accelerator() or "")
