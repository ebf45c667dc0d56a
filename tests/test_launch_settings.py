"""Every Trainer setting bound in gin takes effect under ``highnoon-train``: the program's gin
parsing and ``run_training`` resolve each binding into the run (the loop's intervals,
``mixed_precision`` and the optimizer's hyper-parameters included), checked on the run as it is
handed to the loop, without training it."""

from __future__ import annotations

import dataclasses
import os
import tempfile

import gin
import pytest

from highnoon.launch import configurables
from highnoon.launch import flags as hn_flags
from highnoon.training import assembly
from highnoon.training import run as run_lib
from highnoon.training import settings as settings_lib
from highnoon.training.position import DataPosition

# Two runs between them bind every setting to a value other than its default (a few settings
# exclude each other: packing and the sequence-length warm-up, sgd and sharding).
FIRST = {
    "learning_rate": 3e-3,
    "batch_size": 4,
    "max_seq_length": 32,
    "gradient_accumulation_steps": 2,
    "clip_norm": 0.5,
    "curriculum_strategy": "size_based",
    "pacing": "root_p",
    "pacing_options": {"p": 3},
    "initial_fraction": 0.4,
    "shuffle": False,
    "pack": True,
    "overflow": "window",
    "adaptive": True,
    "loss_threshold_for_progression": 0.2,
    "min_epochs_per_stage": 2,
    "max_epochs_per_stage": 7,
    "max_samples": 64,
    "eval_fraction": 0.1,
    "seq_length_warmup_start": 16,
    "eval_difficulty_buckets": 2,
    "eval_difficulty_strategy": "difficulty_based",
    "weight_decay": 0.25,
    "beta_1": 0.8,
    "beta_2": 0.9,
    "epsilon": 1e-6,
    "warmup_steps": 7,
    "warmup_fraction": 0.1,
    "lr_schedule": "constant",
    "min_learning_rate_ratio": 0.2,
    "lr_decay_steps": 0.2,
    "lr_decay_shape": "linear",
    "seed": 5,
    "steps_per_call": 2,
    "mixed_precision": "mixed_bfloat16",
    "jit_compile": True,
    "deterministic_ops": True,
    "eval_batches": 3,
    "max_checkpoints_to_keep": 2,
    "resume_existing": False,
    "allow_data_change": True,
    "continue_schedule": True,
    "sharding": "optimizer",
    "collectives": "portable",
    "device_memory_gib": 8.0,
    "preemption_grace_seconds": 5.0,
    "peak_flops_per_device": "h100",
    "data_cache_dir": "/tmp/highnoon-test-cache",
    "data_dir": "/tmp/highnoon-test-tfds",
    "store_cache_bytes": 1 << 20,
    "write_summaries": False,
    "verbose": False,
    "epochs_per_stage": 3,
    "checkpoint_interval": 7,
    "log_interval": 3,
    "eval_interval": 5,
}
# A local lm-eval task (names are checked when the Trainer is made; nothing is evaluated here).
LM_EVAL_TASKS = os.path.join(tempfile.gettempdir(), f"highnoon-settings-tasks-{os.getpid()}")
SECOND = {
    "lm_eval_tasks": ("hn_settings",),
    "lm_eval_include_path": LM_EVAL_TASKS,
    "lm_eval_limit": 2,
    "lm_eval_batch_size": 4,
    "optimizer": "sgd",
    "momentum": 0.5,
    "seq_length_warmup_steps": 4,
    "lr_schedule": "wsd",
    "lr_decay_stage": "docs",
    "weight_average": 0.99,
}


@pytest.fixture(scope="module", autouse=True)
def _lm_eval_task():
    os.makedirs(LM_EVAL_TASKS, exist_ok=True)
    with open(os.path.join(LM_EVAL_TASKS, "hn_settings.yaml"), "w", encoding="utf-8") as f:
        f.write(
            "task: hn_settings\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            "    test: none.jsonl\ntest_split: test\noutput_type: loglikelihood\n"
            "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\n"
        )


def _resolved_run(tmp_path, monkeypatch, values: dict) -> dict:
    """What ``run_training`` hands to the run when highnoon-train parses a one-stage run file
    and ``--gin.Trainer.NAME=VALUE`` for each of ``values``."""
    captured: dict = {}

    def run_training_job(spec, built, loop, **kwargs):
        captured.update(spec=spec, loop=loop, kwargs=kwargs)
        return assembly.RunResult({"total_steps": 0}, [], DataPosition(), None)

    monkeypatch.setattr(assembly, "run_training_job", run_training_job)
    bindings = [f"Trainer.{name} = {value!r}" for name, value in values.items()]
    bindings += [
        "highnoon.models.create_model.name_or_config = 'highnoon-nano'",
        "run_training.stages = [{'name': 'docs', 'datasets': ['stdlib_docs']}]",
    ]
    gin.clear_config()
    try:
        hn_flags.parse_gin([], bindings)
        run_lib.run_training(str(tmp_path / "run"), None, model_factory=configurables.create_model)
    finally:
        gin.clear_config()
    return captured


def _setting(captured: dict, name: str):
    spec, loop = captured["spec"], captured["loop"]
    for part in (spec.settings, spec.options, loop):
        if name in {f.name for f in dataclasses.fields(part)}:
            return getattr(part, name)
    raise AssertionError(f"{name} is no setting")


def test_the_two_runs_bind_every_setting_to_a_value_other_than_its_default():
    fields = [f for cls in settings_lib.SETTING_CLASSES for f in dataclasses.fields(cls)]
    assert {f.name for f in fields} == set(FIRST) | set(SECOND)
    for item in fields:
        value = FIRST.get(item.name, SECOND.get(item.name))
        assert value != settings_lib._default(item), item.name


@pytest.mark.parametrize("values", [FIRST, SECOND], ids=["first", "second"])
def test_every_gin_bound_setting_takes_effect_under_highnoon_train(tmp_path, monkeypatch, values):
    captured = _resolved_run(tmp_path, monkeypatch, values)
    for name, value in values.items():
        assert _setting(captured, name) == value, name
    assert captured["kwargs"]["checkpoint_dir"] == str(tmp_path / "run")
    spec = captured["spec"]
    built = assembly.build(spec, None)
    if values is FIRST:  # the model was created under the bound policy, the optimizer built
        assert spec.model.dtype_policy.name == "mixed_bfloat16"
        assert built.optimizer.weight_decay == pytest.approx(0.25)
        assert (built.optimizer.beta_1, built.optimizer.beta_2) == (0.8, 0.9)
        assert built.optimizer.epsilon == pytest.approx(1e-6)
    else:
        assert spec.model.dtype_policy.name == "float32"
        assert type(built.optimizer).__name__ == "SGD"
        assert built.optimizer.momentum == pytest.approx(0.5)


def test_library_knobs_bound_in_gin_take_effect_under_highnoon_train(tmp_path, monkeypatch):
    """``create_model``, ``create_strategy`` and ``register_datasets`` are registered from the
    launch package, and ``highnoon-train``'s own main calls the configured ones."""
    from absl.testing import flagsaver

    from highnoon.data import registered_datasets, unregister_dataset
    from highnoon.launch import train
    from highnoon.models import get_preset

    captured: dict = {}

    def run_training_job(spec, built, loop, **kwargs):
        captured.update(spec=spec)
        return assembly.RunResult({"total_steps": 0}, [], DataPosition(), None)

    monkeypatch.setattr(assembly, "run_training_job", run_training_job)
    monkeypatch.setattr(train, "_install_signal_handlers", lambda: None)
    (tmp_path / "mine.txt").write_text("a line\n", encoding="utf-8")
    bindings = [
        "create_model.name_or_config = 'highnoon-nano'",
        "create_model.dropout = 0.1",
        "create_strategy.peer_timeout_seconds = 7.0",
        f"register_datasets.mapping = {{'gin_mine': '{tmp_path / 'mine.txt'}'}}",
        "run_training.stages = [{'name': 'mine', 'datasets': ['gin_mine']}]",
    ]
    flag_values = hn_flags.FLAGS
    was_parsed = flag_values.is_parsed()
    gin.clear_config()
    try:
        with flagsaver.flagsaver():
            flag_values(["highnoon-train", f"--model_dir={tmp_path}", "--strategy=one_device"])
            flag_values.gin_bindings = bindings
            train.main(["highnoon-train"])
        assert "gin_mine" in registered_datasets()
    finally:
        gin.clear_config()
        unregister_dataset("gin_mine")
        if not was_parsed:
            flag_values.unparse_flags()
    model = captured["spec"].model
    assert model.config == get_preset("highnoon-nano").replace(dropout=0.1, vocab_size=259)
    written = (tmp_path / "config.gin").read_text(encoding="utf-8")
    assert "create_strategy.peer_timeout_seconds = 7.0" in written
    assert "create_model.dropout = 0.1" in written
