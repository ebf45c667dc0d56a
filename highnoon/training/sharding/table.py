"""README tables for sharding, generated from the presets (pure Python; never typed by hand).

    python -m highnoon.training.sharding.table

Assumptions, stated under each table: AdamW, float32 weights, bfloat16 compute, one sequence of
the preset's ``max_seq_length`` per replica (no accumulation), ``remat=True``, 10% headroom.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from highnoon.models.memory import GIB, SHARDING_CHOICES, estimate_memory, smallest_sharding
from highnoon.models.presets import PRESETS
from highnoon.training.sharding.traffic import step_traffic

REPLICAS = (8, 64, 256)
MAX_CHIPS = 8192


@dataclass(frozen=True)
class Device:
    """An accelerator: memory per chip (as the vendor states it), and its slices."""

    memory_gib: float
    min_chips: int
    max_chips: int
    slice_name: Callable[[int], str]


# TPU v4 and v5p slices are named by TensorCores (two a chip; the smallest is v4-8, 4 chips);
# v5e slices by chips, at most 256 in one slice.
DEVICES = {
    "TPU v4 (32 GiB)": Device(32, 4, MAX_CHIPS, lambda c: f"v4-{2 * c}"),
    "TPU v5e (16 GiB)": Device(16, 1, 256, lambda c: f"v5litepod-{c}"),
    "TPU v5p (95 GiB)": Device(95, 4, MAX_CHIPS, lambda c: f"v5p-{2 * c}"),
    "H100 (80 GB)": Device(80e9 / GIB, 1, MAX_CHIPS, lambda c: f"{c} GPU" + "s" * (c > 1)),
}


def _estimate(name: str, replicas: int, sharding: str | None):
    seq = PRESETS[name].max_seq_length
    return estimate_memory(
        name,
        batch_size=replicas,
        seq_length=seq,
        num_replicas=replicas,
        compute_dtype="bfloat16",
        sharding=sharding,
        remat=True,
    )


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def memory_table(replicas: int) -> str:
    """Per-chip GiB of each preset at each sharding level on ``replicas`` replicas."""
    levels = ["none" if lvl is None else f"`{lvl}`" for lvl in SHARDING_CHOICES]
    rows = [_row(["preset", *levels]), "|" + "---|" * (len(levels) + 1)]
    for name in PRESETS:
        gib = [f"{_estimate(name, replicas, lvl).total_gib:.1f}" for lvl in SHARDING_CHOICES]
        rows.append(_row([name, *gib]))
    return "\n".join(rows)


def _smallest_fit(name: str, device: Device) -> str:
    """The smallest slice (chips a power of two) on which some level fits, and that level."""
    chips = device.min_chips
    while chips <= device.max_chips:
        found = smallest_sharding(
            name,
            int(device.memory_gib * GIB),
            batch_size=chips,
            seq_length=PRESETS[name].max_seq_length,
            num_replicas=chips,
            compute_dtype="bfloat16",
            remat=True,
        )
        if found is not None:
            level = "none" if found[0] is None else found[0]
            return f"{device.slice_name(chips)} ({level})"
        chips *= 2
    return f"more than {device.slice_name(device.max_chips)}"


def chips_table() -> str:
    """The smallest slice of each device that trains each preset, and the level that fits."""
    rows = [_row(["preset", *DEVICES]), "|" + "---|" * (len(DEVICES) + 1)]
    for name in PRESETS:
        rows.append(_row([name, *(_smallest_fit(name, d) for d in DEVICES.values())]))
    return "\n".join(rows)


def traffic_table(replicas: int = 64) -> str:
    """GB each replica sends per optimizer step (accumulation 1) at each level, on
    MultiWorkerMirroredStrategy/GPUs (all-reduce + slice, true all-gather) and on TPUs with
    collectives='xla' (true reduce-scatter and all-gather) or 'portable' (ReplicaContext's
    masked all-gather)."""
    kinds = {
        "MWMS / GPU": {},
        "TPU xla": {"true_reduce_scatter": True},
        "TPU portable": {"tpu_masked_gather": True},
    }
    levels = ["none" if lvl is None else lvl for lvl in SHARDING_CHOICES]
    head = ["preset"] + [f"{lvl} ({k})" for k in kinds for lvl in levels]
    rows = [_row(head), "|" + "---|" * len(head)]
    for name, config in PRESETS.items():
        cells = [name]
        for options in kinds.values():
            cells += [
                f"{step_traffic(config, lvl, replicas, **options) / 1e9:.2f}"
                for lvl in SHARDING_CHOICES
            ]
        rows.append(_row(cells))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m highnoon.training.sharding.table",
        description="Print the README's sharding tables (memory, chips, traffic) from the presets.",
    ).parse_args(argv)
    for replicas in REPLICAS:
        print(f"Per-chip training memory (GiB) on {replicas} replicas\n")
        print(memory_table(replicas))
        print()
    print(
        "AdamW, float32 weights, bfloat16 compute, one sequence of the preset's "
        "max_seq_length per replica, remat=True (implied by 'full'); highnoon.models.memory."
    )
    print("\nSmallest slice that trains each preset (chips a power of two), and the level\n")
    print(chips_table())
    print(
        "\nSame assumptions, 10% headroom; TPU v4/v5p slices are named by TensorCores "
        "(v4-8 = 4 chips), v5e slices by chips (at most 256)."
    )
    print("\nGB sent per replica per optimizer step on 64 replicas (gradients and weights)\n")
    print(traffic_table())


if __name__ == "__main__":
    main()
