"""The main job as one gin-configurable function: model, trainer, stages, train, sample.

``highnoon.launch.train`` parses flags and gin files, creates the strategy and calls ``run_training``;
everything it does is bound in gin (see ``gin/runs/quickstart.gin``). Every Trainer setting,
the loop's intervals and ``mixed_precision`` included, has one gin name, ``Trainer.NAME``:
``run_training`` passes none of them, so a binding always takes effect.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import gin
import keras
import tensorflow as tf

from highnoon import data as hn_data
from highnoon.distribute.hosts import is_chief
from highnoon.models import create_model, kerashub
from highnoon.models.contract import is_kerashub_causal_lm
from highnoon.training.trainer import Trainer
from highnoon.utils import validation as v

STAGE_KEYS = ("name", "datasets", "epochs", "weight", "mixture_schedule")


def check_stage_specs(stages: Any) -> None:
    """Stage specs are a non-empty list of dicts with at least ``name`` and ``datasets``."""
    if stages is gin.REQUIRED:  # a run file's `%gin.REQUIRED` left unbound
        raise v.InvalidArgumentError(
            "run_training.stages is required but unbound: include one of gin/curricula/*.gin or "
            "bind a list of stage dicts"
        )
    if not stages:
        raise v.InvalidArgumentError("run_training.stages is empty; bind at least one stage in gin")
    for spec in stages:
        if not isinstance(spec, dict) or "name" not in spec or "datasets" not in spec:
            raise v.InvalidArgumentError(
                f"stage spec {spec!r} must be a dict with at least 'name' and 'datasets'"
            )


def add_stages(trainer: Trainer, stages: Sequence[dict[str, Any]]) -> None:
    """Adds stages given as dicts: ``name``, ``datasets``, optional ``epochs``, ``weight`` and
    ``mixture_schedule``; every other key is a per-stage config override."""
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
    model_factory: Callable[..., Any] = create_model,
) -> Trainer:
    """The model and the Trainer with its stages, as ``run_training`` makes them (before it
    trains): what ``highnoon-curriculum-report`` plans without training.

    ``model_factory`` creates the model (``highnoon.launch`` passes its gin-configured
    ``create_model``, so ``create_model.NAME`` bindings take effect). The model is created
    under the dtype policy of ``Trainer.mixed_precision`` (its gin
    binding; the setting's one home), which the Trainer then checks against the model."""
    check_stage_specs(stages)  # before anything is built
    tokenizer_obj = hn_data.load_tokenizer(tokenizer)
    policy = bound_trainer_setting("mixed_precision")
    # Layers take the dtype policy in force when they are created; restore it afterwards so
    # this call leaves no global state behind.
    previous_policy = keras.mixed_precision.global_policy()
    if policy is not None:
        keras.mixed_precision.set_global_policy(policy)
    try:
        names = (
            () if model is None else (model,)
        )  # None: the factory's default (or its gin binding)
        # Under the strategy: a model built at construction (KerasHub's) creates its
        # variables there; an unbuilt HighNoonLM creates none yet.
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            lm = model_factory(*names, tokenizer=tokenizer_obj)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    trainer = Trainer(lm, strategy=strategy, tokenizer=tokenizer_obj)
    add_stages(trainer, stages)
    return trainer


def bound_trainer_setting(name: str) -> Any:
    """A Trainer setting as gin binds it (``Trainer.NAME``), else its declared default."""
    try:
        return gin.query_parameter(f"Trainer.{name}")
    except ValueError:  # not bound
        return inspect.signature(Trainer.__init__).parameters[name].default


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


@gin.configurable(denylist=["model_dir", "strategy", "config_writer", "model_factory"])
def run_training(
    model_dir: str,
    strategy: tf.distribute.Strategy | None = None,
    *,
    model: str | None = None,
    tokenizer: str = "byte",
    stages: Sequence[dict[str, Any]] = gin.REQUIRED,
    sample_prompt: str | None = None,
    sample_length: int = 64,
    config_writer: Callable[[], Any] | None = None,
    model_factory: Callable[..., Any] = create_model,
) -> dict[str, Any]:
    """Trains ``model`` through ``stages`` into ``model_dir``; returns the Trainer's summary.

    ``model`` is a preset name; by default ``model_factory``'s own gin binding decides
    (``gin/models/*.gin``): ``highnoon-train`` passes ``highnoon.launch.configurables``'
    ``create_model``, the plain one (the default) ignores gin. ``config_writer`` is called once the model and Trainer exist, so the
    operative gin config it writes is complete. The Trainer's settings, its loop settings
    (``Trainer.epochs_per_stage``, ``Trainer.checkpoint_interval``, ...) and
    ``Trainer.mixed_precision`` included, are bound on ``Trainer``. With ``sample_prompt`` set, the chief greedily continues it with the trained model and adds the
    text to the summary as ``sample``.
    """
    trainer = build_trainer(
        strategy, model=model, tokenizer=tokenizer, stages=stages, model_factory=model_factory
    )
    if config_writer is not None:
        config_writer()
    summary = trainer.train(checkpoint_dir=model_dir)
    if sample_prompt is not None:
        lm = trainer.export_model()  # every worker: a "full"-sharded model gathers its shares
        if is_chief(trainer.strategy) and is_kerashub_causal_lm(lm):
            sample = kerashub.generate(
                lm, sample_prompt, max_length=sample_length, tokenizer=trainer.tokenizer
            )
            summary["sample"] = {"prompt": sample_prompt, "text": sample}
        elif is_chief(trainer.strategy):
            sample = lm.generate(
                sample_prompt,
                max_length=sample_length,
                temperature=0.0,
                tokenizer=trainer.tokenizer,
            )
            summary["sample"] = {"prompt": sample_prompt, "text": sample}
    return summary
