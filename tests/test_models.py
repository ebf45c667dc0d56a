"""Model configs, presets, create_model's config resolution, memory estimates (no weights built)."""

from __future__ import annotations

import glob
import json
import math
import os
import re
import subprocess
import sys

import gin
import numpy as np
import pytest

from highnoon.launch import configurables
from highnoon.models import (
    NOMINAL_PARAMETERS,
    PRESETS,
    ModelConfig,
    ModelDoesNotFitError,
    check_fits,
    create_model,
    estimate_memory,
    get_preset,
    load_model_config,
    preset_table,
    preset_table_markdown,
    resolve_config,
    save_model_config,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FakeTokenizer:
    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2

    def encode(self, text):
        return [3 + b for b in text.encode()]

    def decode(self, ids):
        return bytes(i - 3 for i in ids if i >= 3).decode()


# -- ModelConfig --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"d_model": -8}, "ModelConfig.d_model=-8 must be an integer >= 1"),
        ({"num_layers": 0}, "ModelConfig.num_layers=0 must be an integer >= 1"),
        ({"vocab_size": 2.5}, "ModelConfig.vocab_size=2.5 must be an integer >= 1 (got float)"),
        ({"d_model": 96, "num_heads": 5}, "ModelConfig.num_heads=5: must divide d_model=96"),
        ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads=3: must divide num_heads=4"),
        ({"d_model": 12, "num_heads": 4, "num_kv_heads": 4}, "head_dim = d_model // num_heads"),
        ({"dropout": 1.0}, "ModelConfig.dropout=1.0 must be a finite number in [0, 1)"),
        ({"rope_theta": 0}, "ModelConfig.rope_theta=0 must be a finite number > 0.0"),
        ({"rope_theta": math.nan}, "ModelConfig.rope_theta=nan must be a finite number > 0.0"),
        ({"norm_eps": math.inf}, "ModelConfig.norm_eps=inf must be a finite number > 0.0"),
        (
            {"initializer_range": -math.inf},
            "ModelConfig.initializer_range=-inf must be a finite number > 0.0",
        ),
        ({"dropout": math.nan}, "ModelConfig.dropout=nan must be a finite number in [0, 1)"),
        ({"tie_embeddings": 1}, "ModelConfig.tie_embeddings=1 must be True or False (got int)"),
        ({"init_seed": "7"}, "ModelConfig.init_seed='7' must be an integer (got str)"),
    ],
)
def test_config_validation_names_field_value_and_rule(overrides, message):
    with pytest.raises(ValueError) as err:
        ModelConfig(**overrides)
    assert message in str(err.value)


def test_create_model_takes_numpy_values_as_the_trainer_does():
    """One rule for both: numpy integers are integers, numpy floats numbers; the config holds
    plain Python values, so it serialises to JSON and equals the literal config."""
    model = create_model(
        "highnoon-nano", num_layers=np.int64(1), d_ff=np.int32(96), rope_theta=np.float32(500)
    )
    expected = get_preset("highnoon-nano").replace(num_layers=1, d_ff=96, rope_theta=500.0)
    assert model.config == expected
    assert type(model.config.num_layers) is int and type(model.config.rope_theta) is float
    assert ModelConfig.from_json(model.config.to_json()) == expected
    flag = np.bool_(True)
    with pytest.raises(ValueError, match=re.escape(f"num_layers={flag!r} must be an integer")):
        create_model("highnoon-nano", num_layers=flag)


def test_model_config_json_errors_name_the_file_and_the_problem(tmp_path):
    path = tmp_path / "model_config.json"
    path.write_text('{"d_model": 64,\n "num_layers" 2}\n')
    with pytest.raises(ValueError) as err:
        load_model_config(str(tmp_path))
    assert str(err.value).startswith(
        f"{path} is not valid JSON (Expecting ':' delimiter at line 2 column 15); it must hold "
        "one object of ModelConfig fields"
    )
    # json accepts NaN and Infinity; the config does not, and says which file holds them
    for field, text in (("rope_theta", "NaN"), ("norm_eps", "Infinity")):
        fields = get_preset("highnoon-nano").to_dict()
        path.write_text(
            json.dumps(fields).replace(f'"{field}": {fields[field]}', f'"{field}": {text}')
        )
        with pytest.raises(ValueError) as err:
            load_model_config(str(path))
        value = "nan" if text == "NaN" else "inf"
        assert str(err.value) == (
            f"{path}: ModelConfig.{field}={value} must be a finite number > 0.0"
        )


def test_config_dict_and_json_round_trip(tmp_path):
    config = ModelConfig(d_model=96, num_heads=6, num_kv_heads=2, tie_embeddings=False)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_json(config.to_json()) == config
    path = save_model_config(config, str(tmp_path))
    assert path == str(tmp_path / "model_config.json")
    assert load_model_config(str(tmp_path)) == config
    assert os.listdir(tmp_path) == ["model_config.json"]  # no temp file left behind


def test_config_save_and_load_through_gfile(tmp_path):
    """model_config.json in a non-local model_dir (ram://, as gs:// in production)."""
    import tensorflow as tf

    config = get_preset("highnoon-nano").replace(vocab_size=300)
    run = f"ram://hn-config-{os.getpid()}-{tmp_path.name}/run"
    tf.io.gfile.makedirs(run)
    assert save_model_config(config, run) == f"{run}/model_config.json"
    assert tf.io.gfile.exists(f"{run}/model_config.json")
    assert load_model_config(run) == config
    assert load_model_config(f"{run}/model_config.json") == config
    with pytest.raises(ValueError, match=r"path='ram://.*/missing/model_config.json' does not"):
        load_model_config(f"{run}/missing/model_config.json")


def test_config_unknown_field_is_an_error():
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['d_modle'\]"):
        ModelConfig.from_dict({"d_modle": 64})
    with pytest.raises(ValueError, match="valid fields: .*'d_model'"):
        ModelConfig().replace(d_modle=64)


def test_num_parameters_closed_form_by_hand():
    nano = get_preset("highnoon-nano")  # V=259, d=64, L=2, kv_dim=32, d_ff=192, tied
    per_layer = 2 * 64 + 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 192
    assert nano.num_parameters() == 259 * 64 + 2 * per_layer + 64 == 115_200
    untied = nano.replace(tie_embeddings=False)
    assert untied.num_parameters() == 115_200 + 259 * 64
    assert (
        untied.non_embedding_parameters() == nano.non_embedding_parameters() == 2 * per_layer + 64
    )


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_formula_matches_weight_shapes(name):
    config = get_preset(name)
    total = 0
    for _, shape in config.weight_shapes():
        size = 1
        for dim in shape:
            size *= dim
        total += size
    assert config.num_parameters() == total
    assert config.vocab_size == 259


@pytest.mark.parametrize("name", sorted(NOMINAL_PARAMETERS))
def test_named_presets_within_ten_percent_of_their_name(name):
    count = get_preset(name).num_parameters()
    nominal = NOMINAL_PARAMETERS[name]
    assert abs(count - nominal) <= 0.1 * nominal, (name, count, nominal)


def test_every_sized_preset_has_a_nominal_size():
    assert set(PRESETS) - set(NOMINAL_PARAMETERS) == {"highnoon-nano", "highnoon-tiny"}
    sizes = [get_preset(n).num_parameters() for n in PRESETS]
    assert sizes == sorted(sizes)  # the table reads smallest to largest


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError) as err:
        create_model("highnoon-70b")
    message = str(err.value)
    assert "name='highnoon-70b'" in message
    for name in PRESETS:
        assert name in message


def test_short_preset_names_and_the_size_keyword_are_aliases():
    for short in ("3b", "7b", "nano", "tiny", "7B", "Small"):
        full = "highnoon-" + short.lower()
        assert create_model(short).config == get_preset(full)
        assert create_model(size=short).config == get_preset(full)
    assert create_model(size="highnoon-13b").config == get_preset("highnoon-13b")
    assert create_model().config == get_preset("highnoon-tiny")  # the default preset
    assert resolve_config("nano") == get_preset("highnoon-nano")


def test_preset_given_twice_or_unknown_short_name_is_an_error():
    with pytest.raises(
        ValueError,
        match=r"^create_model: give the preset once, as name_or_config='7b' or size='3b', "
        r"not both",
    ):
        create_model("7b", size="3b")
    with pytest.raises(
        ValueError, match=r"unknown model preset name='70b'; valid presets: "
    ) as err:
        create_model(size="70b")
    assert "(or their short names ['nano', 'tiny', 'small', 'base', '3b'," in str(err.value)


def test_model_exposes_vocab_size_and_num_blocks():
    model = create_model("nano", tokenizer=FakeTokenizer(300), num_layers=3)
    assert model.vocab_size == 300 == model.config.vocab_size
    assert model.num_blocks == 3 == len(model.blocks)
    assert not model.built  # read from the config: no weights needed


def test_preset_table_rows_and_markdown():
    rows = preset_table()
    assert [r["name"] for r in rows] == list(PRESETS)
    twenty = rows[-1]
    assert twenty == {
        "name": "highnoon-20b",
        "layers": 44,
        "d_model": 6144,
        "heads": 48,
        "kv_heads": 8,
        "d_ff": 20480,
        "max_seq_length": 4096,
        "params": get_preset("highnoon-20b").num_parameters(),
    }
    assert preset_table(vocab_size=32000)[0]["params"] == 115_200 + (32000 - 259) * 64
    lines = preset_table_markdown().splitlines()
    assert lines[0].startswith("| preset | layers | d_model |")
    assert lines[2] == "| `highnoon-nano` | 2 | 64 | 4 | 2 | 192 | 128 | 115.20K |"
    assert len(lines) == 2 + len(PRESETS)


def test_preset_table_cli_prints_the_markdown():
    out = subprocess.run(
        [sys.executable, "-m", "highnoon.models.presets"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == preset_table_markdown()


# -- create_model without building ----------------------------------------------------------------


def test_vocab_resolution_order():
    assert resolve_config("highnoon-nano").vocab_size == 259
    assert resolve_config("highnoon-nano", tokenizer=FakeTokenizer(1000)).vocab_size == 1000
    explicit = resolve_config("highnoon-nano", tokenizer=FakeTokenizer(1000), vocab_size=1024)
    assert explicit.vocab_size == 1024
    assert (
        resolve_config(
            {"d_model": 64, "num_heads": 2, "num_kv_heads": 1}, tokenizer=FakeTokenizer(300)
        ).vocab_size
        == 300
    )
    with pytest.raises(
        ValueError, match="vocab_size=500 is smaller than the tokenizer's vocab_size=1000"
    ):
        resolve_config("highnoon-nano", tokenizer=FakeTokenizer(1000), vocab_size=500)
    with pytest.raises(
        ValueError, match="vocab_size=259 is smaller than the tokenizer's vocab_size=1000"
    ):
        resolve_config(ModelConfig(), tokenizer=FakeTokenizer(1000))


def test_bad_overrides_are_errors():
    with pytest.raises(ValueError, match=r"unknown ModelConfig field\(s\) \['layers'\]"):
        create_model("highnoon-nano", layers=3)
    with pytest.raises(ValueError, match="num_kv_heads=3: must divide num_heads=4"):
        create_model("highnoon-nano", num_kv_heads=3)
    with pytest.raises(ValueError, match="name_or_config=42"):
        create_model(42)


def test_twenty_b_config_without_allocating_weights():
    model = create_model("highnoon-20b", num_layers=44)
    assert not model.built
    assert model.weights == []
    assert model.config == get_preset("highnoon-20b")
    count = model.config.num_parameters()
    assert count == 20_487_118_848
    assert abs(count - 20e9) <= 2e9


def test_create_model_attaches_tokenizer_and_overrides():
    tok = FakeTokenizer(300)
    model = create_model("highnoon-nano", tokenizer=tok, num_layers=1, dropout=0.1)
    assert model.tokenizer is tok
    assert model.config == get_preset("highnoon-nano").replace(
        vocab_size=300, num_layers=1, dropout=0.1
    )


def test_gin_binds_create_model():
    """The launch's configured create_model applies bindings; the library's own ignores gin."""
    gin.clear_config()
    try:
        gin.parse_config(
            ["create_model.name_or_config = 'highnoon-nano'", "create_model.num_layers = 1"]
        )
        configured = configurables.create_model().config
        assert configured == get_preset("highnoon-nano").replace(num_layers=1)
        assert create_model().config == get_preset("highnoon-tiny")
    finally:
        gin.clear_config()


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "gin", "models", "*.gin"))))
def test_model_gin_files_name_their_preset(path):
    gin.clear_config()
    try:
        gin.parse_config_file(path)
        name = os.path.basename(path)[: -len(".gin")]
        assert configurables.create_model().config == get_preset(name)
    finally:
        gin.clear_config()


def test_there_is_a_gin_file_per_preset():
    files = {
        os.path.basename(p)[:-4] for p in glob.glob(os.path.join(REPO, "gin", "models", "*.gin"))
    }
    assert files == set(PRESETS)


# -- memory estimates -------------------------------------------------------------------------


def test_memory_estimate_formula_for_nano():
    est = estimate_memory("highnoon-nano", batch_size=8, seq_length=128)
    n, b, s = 115_200, 8, 128
    d, kv, f, h, v = 64, 32, 192, 4, 259
    per_layer = s * b * (8 * d + 3 * kv + 4 * f) * 4 + b * h * s * s * 8
    assert est.weights_bytes == est.gradients_bytes == 4 * n
    assert est.optimizer_bytes == 8 * n
    assert est.activations_bytes == 2 * per_layer + s * b * d * 4 + s * b * v * 8
    assert est.total_bytes == 16 * n + est.activations_bytes


def test_memory_estimate_micro_batch_and_dtypes():
    base = estimate_memory("highnoon-small", batch_size=16, seq_length=256)
    split = estimate_memory(
        "highnoon-small",
        batch_size=16,
        seq_length=256,
        num_replicas=2,
        gradient_accumulation_steps=2,
    )
    assert split.micro_batch_size == 4 and base.micro_batch_size == 16
    assert split.activations_bytes * 4 == base.activations_bytes
    assert split.gradients_bytes == 2 * base.gradients_bytes  # accumulation buffer
    bf16 = estimate_memory(
        "highnoon-small", batch_size=16, seq_length=256, compute_dtype="bfloat16"
    )
    assert bf16.activations_bytes < base.activations_bytes
    sgd = estimate_memory("highnoon-small", batch_size=16, seq_length=256, optimizer="sgd")
    assert sgd.optimizer_bytes == 0
    ada = estimate_memory("highnoon-small", batch_size=16, seq_length=256, optimizer="adafactor")
    assert 0 < ada.optimizer_bytes < base.optimizer_bytes / 100


def test_memory_describe_and_check_fits():
    est = estimate_memory("highnoon-7b", batch_size=1, seq_length=2048)
    text = est.describe()
    assert text.startswith(
        f"highnoon-7b with AdamW needs about {est.total_gib:.1f} GiB per replica"
    )
    assert est.total_gib > 100  # 16 bytes per parameter for AdamW in float32 alone is ~104 GiB
    with pytest.raises(ModelDoesNotFitError, match="optimizer state alone exceed the device"):
        check_fits(est, 24 * 1024**3)
    nano = estimate_memory("highnoon-nano", batch_size=8, seq_length=128)
    assert check_fits(nano, 24 * 1024**3) is nano
    big_batch = estimate_memory("highnoon-small", batch_size=64, seq_length=1024)
    with pytest.raises(ModelDoesNotFitError, match="activations are the excess"):
        check_fits(big_batch, 8 * 1024**3)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"batch_size": 0, "seq_length": 8}, "batch_size=0"),
        ({"batch_size": 6, "seq_length": 8, "num_replicas": 4}, "batch_size=6 must divide"),
        ({"batch_size": 8, "seq_length": 8, "optimizer": "adagrad"}, "optimizer='adagrad'"),
        ({"batch_size": 8, "seq_length": 8, "compute_dtype": "fp8"}, "compute_dtype='fp8'"),
    ],
)
def test_memory_estimate_bad_input(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        estimate_memory("highnoon-nano", **kwargs)
