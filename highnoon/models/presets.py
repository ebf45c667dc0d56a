"""Named model presets and the table of them that README.md shows.

The named sizes (small .. 20b) are within 10% of their name's parameter count with the byte
vocabulary (259), which `tests/test_models.py` checks. `nano` and `tiny` train in seconds on a CPU.

Print the README table (generated from these configs, never typed by hand):

    python -m highnoon.models.presets
"""

from __future__ import annotations

from highnoon.models.config import ModelConfig
from highnoon.utils.validation import InvalidArgumentError, check_str

PRESETS: dict[str, ModelConfig] = {
    "highnoon-nano": ModelConfig(
        d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=192, max_seq_length=128
    ),
    "highnoon-tiny": ModelConfig(
        d_model=128, num_layers=4, num_heads=4, num_kv_heads=2, d_ff=384, max_seq_length=256
    ),
    "highnoon-small": ModelConfig(
        d_model=768, num_layers=18, num_heads=12, num_kv_heads=12, d_ff=2048, max_seq_length=1024
    ),
    "highnoon-base": ModelConfig(
        d_model=1024, num_layers=28, num_heads=16, num_kv_heads=16, d_ff=2816, max_seq_length=2048
    ),
    "highnoon-3b": ModelConfig(
        d_model=3072, num_layers=30, num_heads=24, num_kv_heads=8, d_ff=8192, max_seq_length=4096
    ),
    "highnoon-7b": ModelConfig(
        d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8, d_ff=14336, max_seq_length=4096
    ),
    "highnoon-13b": ModelConfig(
        d_model=5120, num_layers=48, num_heads=40, num_kv_heads=8, d_ff=13824, max_seq_length=4096
    ),
    "highnoon-20b": ModelConfig(
        d_model=6144, num_layers=44, num_heads=48, num_kv_heads=8, d_ff=20480, max_seq_length=4096
    ),
}

# Nominal size in the name of each sized preset (the 10% rule is checked against these).
NOMINAL_PARAMETERS: dict[str, float] = {
    "highnoon-small": 125e6,
    "highnoon-base": 350e6,
    "highnoon-3b": 3e9,
    "highnoon-7b": 7e9,
    "highnoon-13b": 13e9,
    "highnoon-20b": 20e9,
}


PRESET_PREFIX = "highnoon-"


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_name(name: str) -> str:
    """The full preset name for `name`: a preset name as is, or its short alias (`"3b"`, `"7b"`,
    `"tiny"`, ... the name without `highnoon-`, in any case). An unknown name is a ValueError
    listing the valid ones."""
    check_str("name", name)
    for candidate in (name, PRESET_PREFIX + name.strip().lower()):
        if candidate in PRESETS:
            return candidate
    short = [n[len(PRESET_PREFIX) :] for n in PRESETS]
    raise InvalidArgumentError(
        f"unknown model preset name={name!r}; valid presets: {preset_names()} "
        f"(or their short names {short})"
    )


def get_preset(name: str) -> ModelConfig:
    """The config of preset `name` (full or short name, see `preset_name`)."""
    return PRESETS[preset_name(name)]


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def preset_table(vocab_size: int | None = None) -> list[dict[str, object]]:
    """One row per preset: name, layers, d_model, heads, kv_heads, d_ff, params (exact int).

    `vocab_size` recomputes the counts for another tokenizer (default: the preset's, 259).
    """
    rows = []
    for name, config in PRESETS.items():
        if vocab_size is not None:
            config = config.replace(vocab_size=vocab_size)
        rows.append(
            {
                "name": name,
                "layers": config.num_layers,
                "d_model": config.d_model,
                "heads": config.num_heads,
                "kv_heads": config.num_kv_heads,
                "d_ff": config.d_ff,
                "max_seq_length": config.max_seq_length,
                "params": config.num_parameters(),
            }
        )
    return rows


def preset_table_markdown(vocab_size: int | None = None) -> str:
    """`preset_table` as a markdown table (params shown as 1.23M / 6.98B)."""
    header = "| preset | layers | d_model | heads | kv heads | d_ff | max seq | parameters |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in preset_table(vocab_size):
        lines.append(
            f"| `{r['name']}` | {r['layers']} | {r['d_model']} | {r['heads']} | {r['kv_heads']} "
            f"| {r['d_ff']} | {r['max_seq_length']} | {_human(int(r['params']))} |"
        )
    return "\n".join(lines)


def main() -> None:
    print(preset_table_markdown())


if __name__ == "__main__":
    main()
