"""The main job as one gin-configurable function: model, trainer, stages, train, sample.

``highnoon.launch.train`` parses flags and gin files, creates the strategy and calls ``run_training``;
everything it does is bound in gin (see ``gin/runs/quickstart.gin``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import gin
import keras
import tensorflow as tf

from highnoon import data as hn_data
from highnoon.distribute.hosts import is_chief
from highnoon.models import create_model
from highnoon.training.trainer import Trainer

STAGE_KEYS = ("name", "datasets", "epochs", "weight")


def check_stage_specs(stages: Any) -> None:
    """Stage specs are a non-empty list of dicts with at least ``name`` and ``datasets``."""
    if stages is gin.REQUIRED:  # a run file's `%gin.REQUIRED` left unbound
        raise ValueError(
            "run_training.stages is required but unbound: include one of gin/curricula/*.gin or "
            "bind a list of stage dicts"
        )
    if not stages:
        raise ValueError("run_training.stages is empty; bind at least one stage in gin")
    for spec in stages:
        if not isinstance(spec, dict) or "name" not in spec or "datasets" not in spec:
            raise ValueError(
                f"stage spec {spec!r} must be a dict with at least 'name' and 'datasets'"
            )


def add_stages(trainer: Trainer, stages: Sequence[dict[str, Any]]) -> None:
    """Adds stages given as dicts: ``name``, ``datasets``, optional ``epochs`` and ``weight``;
    every other key is a per-stage config override."""
    check_stage_specs(stages)
    for spec in stages:
        spec = dict(spec)
        core = {key: spec.pop(key) for key in STAGE_KEYS if key in spec}
        trainer.add_curriculum_stage(**core, **spec)


def build_trainer(
    strategy: tf.distribute.Strategy | None = None,
    *,
    model: str | None = None,
    tokenizer: str = "byte",
    stages: Sequence[dict[str, Any]] = (),
    mixed_precision: str | None = None,
) -> Trainer:
    """The model and the Trainer with its stages, as ``run_training`` makes them (before it
    trains): what ``highnoon-curriculum-report`` plans without training."""
    check_stage_specs(stages)  # before anything is built
    tokenizer_obj = hn_data.load_tokenizer(tokenizer)
    # Layers take the dtype policy in force when they are created; restore it afterwards so
    # this call leaves no global state behind.
    previous_policy = keras.mixed_precision.global_policy()
    if mixed_precision is not None:
        keras.mixed_precision.set_global_policy(mixed_precision)
    try:
        names = () if model is None else (model,)  # None: create_model's gin binding decides
        lm = create_model(*names, tokenizer=tokenizer_obj)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    trainer = Trainer(
        lm, strategy=strategy, tokenizer=tokenizer_obj, mixed_precision=mixed_precision
    )
    add_stages(trainer, stages)
    return trainer


def run_training_arguments() -> dict[str, Any]:
    """``run_training``'s keyword arguments as the parsed gin config binds them (its defaults
    for the unbound ones; ``gin.REQUIRED`` stays as such)."""
    values = {
        name: parameter.default
        for name, parameter in inspect.signature(run_training).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    values.update(gin.get_bindings(run_training))
    return values


@gin.configurable(denylist=["model_dir", "strategy", "config_writer"])
def run_training(
    model_dir: str,
    strategy: tf.distribute.Strategy | None = None,
    *,
    model: str | None = None,
    tokenizer: str = "byte",
    stages: Sequence[dict[str, Any]] = gin.REQUIRED,
    epochs_per_stage: int = 10,
    checkpoint_interval: int = 1000,
    log_interval: int = 100,
    eval_interval: int = 500,
    sample_prompt: str | None = None,
    sample_length: int = 64,
    mixed_precision: str | None = None,
    config_writer: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Trains ``model`` through ``stages`` into ``model_dir``; returns the Trainer's summary.

    ``model`` is a preset name; by default ``create_model``'s own gin binding decides
    (``gin/models/*.gin``). ``config_writer`` is called once the model and Trainer exist, so the
    operative gin config it writes is complete. ``mixed_precision`` (e.g. ``mixed_bfloat16``)
    sets Keras' global policy while the model is created and tells the Trainer. With
    ``sample_prompt`` set, the chief greedily continues it with the trained model and adds the
    text to the summary as ``sample``.
    """
    trainer = build_trainer(
        strategy, model=model, tokenizer=tokenizer, stages=stages, mixed_precision=mixed_precision
    )
    if config_writer is not None:
        config_writer()
    summary = trainer.train(
        epochs_per_stage=epochs_per_stage,
        checkpoint_dir=model_dir,
        checkpoint_interval=checkpoint_interval,
        log_interval=log_interval,
        eval_interval=eval_interval,
    )
    if sample_prompt is not None:
        lm = trainer.export_model()  # every worker: a "full"-sharded model gathers its shares
        if is_chief(trainer.strategy):
            sample = lm.generate(
                sample_prompt,
                max_length=sample_length,
                temperature=0.0,
                tokenizer=trainer.tokenizer,
            )
            summary["sample"] = {"prompt": sample_prompt, "text": sample}
    return summary
