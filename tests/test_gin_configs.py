"""Every gin file in gin/ parses against the real configurables, and the run files bind what
their headers promise."""

from __future__ import annotations

import glob
import os

import gin
import pytest

from highnoon.launch import configurables
from highnoon.launch.flags import gin_dir, parse_gin
from highnoon.training import run as _run


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@pytest.mark.parametrize(
    "model_file", sorted(os.path.basename(p) for p in glob.glob(f"{gin_dir()}/models/*.gin"))
)
def test_each_model_file_names_its_preset(model_file):
    parse_gin([f"models/{model_file}"], finalize=False)
    preset = gin.query_parameter("highnoon.models.create_model.name_or_config")
    assert preset == model_file[: -len(".gin")]


def test_quickstart_binds_three_stages_on_embedded_data():
    parse_gin(["runs/quickstart.gin"], finalize=False)
    stages = gin.query_parameter("run_training.stages")
    assert [s["name"] for s in stages] == ["foundation", "code", "instruction"]
    assert gin.query_parameter("highnoon.models.create_model.name_or_config") == "highnoon-tiny"
    # The curriculum study's defaults: no easy-to-hard pool, a row-length warm-up in stage one.
    assert gin.query_parameter("Trainer.curriculum_strategy") is None
    assert stages[0]["seq_length_warmup_steps"] == 0.25
    assert stages[0]["seq_length_warmup_start"] == 16
    assert all("seq_length_warmup_steps" not in stage for stage in stages[1:])


def test_pretrain_requires_a_model_and_a_curriculum():
    parse_gin(["runs/pretrain.gin"], finalize=False)
    with pytest.raises(ValueError, match="run_training.stages is required but unbound"):
        _run.run_training("/tmp/unused")
    gin.clear_config()
    parse_gin(["runs/pretrain.gin", "curricula/quickstart.gin"], finalize=False)
    with pytest.raises(ValueError, match="create_model.name_or_config is required but unbound"):
        _run.run_training("/tmp/unused", model_factory=configurables.create_model)
    gin.clear_config()
    parse_gin(
        ["runs/pretrain.gin", "models/highnoon-3b.gin", "curricula/quickstart.gin"],
        finalize=False,
    )
    assert gin.query_parameter("highnoon.models.create_model.name_or_config") == "highnoon-3b"
    assert gin.query_parameter("Trainer.jit_compile") is True
    assert gin.query_parameter("Trainer.curriculum_strategy") is None  # the study's evidence
    assert len(gin.query_parameter("run_training.stages")) == 3
