"""The Trainer: the public facade over a training run.

    trainer = Trainer(model, learning_rate=1e-4, batch_size=8, max_seq_length=2048)
    trainer.add_curriculum_stage("foundation", datasets=["stdlib_docs"], epochs=2)
    summary = trainer.train(checkpoint_dir="/tmp/run")

The Trainer validates what it is given (settings are declared once, in ``settings.py``), keeps
the stages and callbacks, and hands each run to ``assembly.py``, which locks, plans, builds,
restores and gives the ``Controller`` its collaborators. It also saves and loads itself
(``trainer.json`` beside a checkpoint) and exports the trained model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import gin
import keras
import tensorflow as tf
from absl import logging

from highnoon import data as hn_data
from highnoon.data.saved_tokenizer import resolve_config as resolve_tokenizer_config
from highnoon.models import contract
from highnoon.training import assembly, saved_state
from highnoon.training.assembly import Built, Loaded, RunSpec, model_config
from highnoon.training.checkpointing import checkpoint_candidates
from highnoon.training.controller import NonFiniteLossError
from highnoon.training.events import Callback
from highnoon.training.lm_eval_loop import check_lm_eval_settings
from highnoon.training.position import DataPosition
from highnoon.training.run_dir import RunDir
from highnoon.training.settings import (
    FROM_SETTINGS,
    POSITIONAL,
    StageSettings,
    loop_signature,
    split_settings,
    trainer_signature,
)
from highnoon.training.sharding.collectives import resolve_collectives
from highnoon.training.sharding.levels import resolve_level
from highnoon.training.stage_plan import StagePlan
from highnoon.training.stages import CurriculumStage, checked_stage
from highnoon.utils import validation as v
from highnoon.utils.files import is_remote

__all__ = ["CurriculumStage", "NonFiniteLossError", "Trainer", "model_config"]


@gin.configurable(denylist=["model"])
class Trainer:
    """Runs curriculum stages of training for a HighNoon language model.

    ``Trainer(model, learning_rate=1e-4, batch_size=8, max_seq_length=2048,
    gradient_accumulation_steps=1, *, tokenizer=None, strategy=None, **settings)``: the
    positional settings, then any setting of ``StageSettings``, ``RunOptions`` or
    ``LoopSettings`` (``highnoon/training/settings.py``; README "Trainer settings"), each
    validated here.

    ``model`` is a Keras language model (``highnoon.create_model(...)``), built or not. Its
    strategy is, in order: ``strategy``; the one in scope; the one its variables were created
    under (a model trained before, or built by ``generate``); else one device.
    """

    def __init__(
        self,
        model: keras.Model,
        *args: Any,
        tokenizer: Any = None,
        strategy: tf.distribute.Strategy | None = None,
        **settings: Any,
    ) -> None:
        _check_objects(model, tokenizer, strategy)
        given = _named(args, settings)
        self.settings, self.options, self.loop = split_settings(given)
        self.model = model
        # What the step trains: the model itself, or a KerasHub CausalLM under the model
        # contract (docs/design.md, "The model contract").
        self._network = contract.adapt(model)
        self.tokenizer = hn_data.load_tokenizer(tokenizer if tokenizer is not None else "byte")
        self.settings = _cap_seq_length(
            self.settings, self._network, asked="max_seq_length" in given
        )
        self.strategy = strategy or _strategy_for(model)
        self._sharding = resolve_level(self.options.sharding, self.strategy.num_replicas_in_sync)
        # Checked on one replica too (where nothing is sharded): a config must not fail only
        # when moved to several.
        resolve_collectives(self.options.collectives, self.strategy)
        contract.check_features(
            self._network, pack=self.settings.pack, shards_weights=self.options.sharding == "full"
        )
        if self._sharding is not None and self._sharding.shards_weights and model.built:
            raise v.InvalidArgumentError(
                "sharding='full' stores the weights only as per-replica shares, so the model "
                "must reach the Trainer unbuilt (create it and pass it before calling, "
                "generating or loading weights into it); or use sharding='optimizer'/'gradients'"
            )
        _check_mixed_precision(model, self.options.mixed_precision)
        vocab_size = model_config(self._network).get("vocab_size")
        if vocab_size is not None:
            hn_data.check_vocab_fits(self.tokenizer, vocab_size)
        if self._network.built:  # probed now; an unbuilt model once it is built
            contract.check_outputs(self._network, self.tokenizer.vocab_size)
        check_lm_eval_settings(self.options, model)  # task names exist, before any build
        self.stages: list[CurriculumStage] = []
        self._callbacks: list[Callback] = []
        self._built: Built | None = None  # weights, optimizer, step: built once
        self._position = DataPosition()  # where the last train() (or load) left the run
        self._loaded: Loaded | None = None  # Trainer.load: train() continues from it
        self._plans: list[StagePlan] = []  # the last train()'s stages, made concrete

    __init__.__signature__ = trainer_signature()  # gin and help() see every setting

    # -- configuration -------------------------------------------------------------------
    def add_curriculum_stage(
        self,
        name: str,
        datasets: str | Sequence[Any],
        epochs: int | None = None,
        weight: float = 1.0,
        mixture_schedule: Any = None,
        **config_overrides: Any,
    ) -> Trainer:
        """Adds a stage; validates everything cheap now (not an hour into training).

        ``weight`` multiplies the stage's learning rate. ``mixture_schedule`` (a
        ``highnoon.data.MixtureSchedule`` or ``{'points': [[w, ...], ...], 'shape':
        'linear' | 'steps'}``) changes the weights of unweighted entries from epoch to epoch.
        ``config_overrides`` may set any of ``STAGE_OVERRIDABLE`` for this stage only. Returns
        ``self`` for chaining.
        """
        stage = checked_stage(
            name,
            datasets,
            epochs,
            weight,
            config_overrides,
            self.settings,
            self.stages,
            mixture_schedule,
        )
        if self.settings.with_overrides(stage.config_overrides).pack:
            contract.check_features(self._network, pack=True, shards_weights=False)
        self.stages.append(stage)
        return self

    def add_callback(self, callback: Callback) -> Trainer:
        """Adds ``callback(event: dict)``, called for every training event."""
        if not callable(callback):
            raise v.InvalidArgumentTypeError(f"callback={callback!r} is not callable")
        self._callbacks.append(callback)
        return self

    # -- training ------------------------------------------------------------------------
    def train(
        self,
        epochs_per_stage: int | None = FROM_SETTINGS,
        save_checkpoints: bool = True,
        checkpoint_dir: str | None = None,
        checkpoint_interval: int = FROM_SETTINGS,
        log_interval: int = FROM_SETTINGS,
        eval_interval: int = FROM_SETTINGS,
        resume_from: str | None = None,
    ) -> dict[str, Any]:
        """Trains through every stage; returns the run summary (see README).

        The loop arguments default to the Trainer's settings of the same name (README
        "Trainer settings"); ``epochs_per_stage`` is the epochs of a stage that names none
        (``None``: every stage must name its own). A relative ``checkpoint_dir`` or
        ``resume_from`` is relative to the working directory at this call.
        """
        loop = self.loop.with_arguments(
            epochs_per_stage=epochs_per_stage,
            checkpoint_interval=checkpoint_interval,
            log_interval=log_interval,
            eval_interval=eval_interval,
        )
        save_checkpoints = v.check_bool("save_checkpoints", save_checkpoints)
        self._check_stages("train()", loop.epochs_per_stage)
        checkpoint_dir, resume_from = _run_paths(save_checkpoints, checkpoint_dir, resume_from)
        loaded, self._loaded = self._loaded, None
        result = assembly.run_training_job(
            self._spec(),
            self._built,
            loop,
            checkpoint_dir=checkpoint_dir,
            save_checkpoints=save_checkpoints,
            resume_from=resume_from,
            loaded=loaded,
            keep=self._keep,
        )
        if resume_from is not None and loaded is not None:  # not used: kept for the next run
            self._loaded = Loaded(loaded.path, result.position)
        return result.summary

    train.__signature__ = loop_signature(train)  # the declared defaults, for help() and gin

    def plan(self, epochs_per_stage: int | None = FROM_SETTINGS) -> list[StagePlan]:
        """The stages as ``train(epochs_per_stage=...)`` would run them, without training: each
        stage's token store built (or reused), its held-out split, curriculum and row lengths.
        ``highnoon-curriculum-report`` shows them."""
        loop = self.loop.with_arguments(epochs_per_stage=epochs_per_stage)
        self._check_stages("plan()", loop.epochs_per_stage)
        return assembly.plan_stages(self._spec(), loop.epochs_per_stage)

    plan.__signature__ = loop_signature(plan)

    def export_model(self, average: bool | None = None) -> keras.Model:
        """The trained model, for inference: the model itself, or, with ``sharding='full'``
        (whose model holds only shares), a whole copy gathered from them. Under a multi-worker
        strategy every worker must call it (the gather is a collective).

        With ``weight_average`` on, a copy holding the averaged weights (``average=None`` or
        ``True``; ``average=False``: the live model); ``average=True`` without it is refused."""
        average = v.check_bool("average", average) if average is not None else None
        kept = self._built.average if self._built is not None else None
        if average and self.options.weight_average is None:
            raise v.InvalidArgumentError(
                "export_model(average=True) but this Trainer keeps no weight average; set "
                "weight_average (e.g. 0.999) before training, or export the live weights"
            )
        if kept is not None and average is not False:
            return contract.unwrap(kept.export_model())
        if self._built is None:
            return self.model
        return contract.unwrap(self._built.step.export_model())

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str) -> str:
        """Writes ``path/trainer.json`` (settings, stages) and a checkpoint of weights,
        optimizer and data position. ``Trainer.load(path, model)`` continues from it."""
        path = _absolute(v.check_str("path", path))
        v.check_writable_dir("path", path)
        run_dir = RunDir.for_strategy(path, self.strategy)
        checkpointer = assembly.make_checkpointer(
            self._spec(), self._build(None), run_dir, self._position
        )
        run_dir.write_model_config(model_config(self._network))
        saved = checkpointer.save(self._position.global_step)
        if run_dir.chief:
            saved_state.write_trainer_state(
                path,
                {
                    "settings": self.settings.to_json(),
                    "run_options": self.options.to_json(),
                    "loop": self.loop.to_json(),
                    # a copy of the tokenizer's file in ``path``, named relative to it
                    "tokenizer": run_dir.write_tokenizer(self.tokenizer),
                    "stages": [stage.to_json() for stage in self.stages],
                },
            )
        return saved

    @classmethod
    def load(cls, path: str, model: keras.Model, **overrides: Any) -> Trainer:
        """The saved trainer, restored: ``model`` holds the saved weights when this returns,
        and the next ``train()`` continues where the saved one stopped. ``overrides`` replace
        saved settings (e.g. ``strategy=`` or ``verbose=False``)."""
        path = _absolute(v.check_str("path", path))
        state = saved_state.read_trainer_state(path)
        tokenizer = overrides.pop("tokenizer", None)
        saved = {**state["settings"], **state["run_options"], **state.get("loop", {})}
        try:
            if tokenizer is None:
                tokenizer = hn_data.tokenizer_from_config(
                    resolve_tokenizer_config(state["tokenizer"], path)
                )
            trainer = cls(model, tokenizer=tokenizer, **{**saved, **overrides})
            for stage in map(CurriculumStage.from_json, state["stages"]):
                trainer.add_curriculum_stage(
                    stage.name,
                    stage.datasets,
                    stage.epochs,
                    stage.weight,
                    mixture_schedule=stage.mixture_schedule,
                    **stage.config_overrides,
                )
        except (ValueError, TypeError) as error:
            raise saved_state.TrainerStateError(
                f"{saved_state.state_path(path)}: {error}"
            ) from None
        position = DataPosition()
        run_dir = RunDir.for_strategy(path, trainer.strategy)
        checkpointer = assembly.make_checkpointer(
            trainer._spec(), trainer._build(None), run_dir, position
        )
        checkpointer.restore(path, model_config(trainer._network))
        trainer._keep(position=position, loaded=Loaded(path, position))
        return trainer

    # -- internals -----------------------------------------------------------------------
    def _spec(self) -> RunSpec:
        return RunSpec(
            model=self._network,
            tokenizer=self.tokenizer,
            strategy=self.strategy,
            settings=self.settings,
            options=self.options,
            sharding=self._sharding,
            stages=tuple(self.stages),
            callbacks=self._callbacks,
            gin_config=gin.operative_config_str() if gin.config_is_locked() else "",
        )

    def _build(self, plans: list[StagePlan] | None) -> Built:
        """Weights, optimizer and compiled step, built on first use."""
        if self._built is None:
            self._built = assembly.build(self._spec(), plans)
        return self._built

    def _keep(self, **parts: Any) -> None:
        """What a run hands back as soon as it exists (its plans, the built step, the live
        position), so a run that fails later still leaves them inspectable."""
        for name, value in parts.items():
            setattr(self, f"_{name}", value)

    @property
    def _step(self) -> Any:
        return self._built.step if self._built is not None else None

    @property
    def _optimizer(self) -> keras.optimizers.Optimizer | None:
        return self._built.optimizer if self._built is not None else None

    def _check_stages(self, call: str, epochs_per_stage: int | None) -> None:
        if not self.stages:
            raise v.InvalidArgumentError(
                f"{call} has no curriculum stages; call add_curriculum_stage(name, datasets) first"
            )
        if epochs_per_stage is not None:
            return
        missing = [stage.name for stage in self.stages if stage.epochs is None]
        if missing:
            raise v.InvalidArgumentError(
                f"train(epochs_per_stage=None) uses each stage's own epochs, but stage(s) "
                f"{missing} name none; give them epochs= or pass epochs_per_stage"
            )


def _check_objects(model: Any, tokenizer: Any, strategy: Any) -> None:
    """The Trainer's object arguments are of the kinds it can use."""
    if not isinstance(model, keras.Model):
        raise v.InvalidArgumentTypeError(
            f"model={model!r} must be a Keras language model, e.g. "
            "highnoon.create_model('highnoon-tiny')"
        )
    if tokenizer is not None and not isinstance(tokenizer, (hn_data.Tokenizer, str, dict)):
        raise v.InvalidArgumentTypeError(
            f"tokenizer={tokenizer!r} must be a highnoon.data.Tokenizer (ByteTokenizer, "
            "SentencePieceTokenizer, TokenizerJson), what load_tokenizer accepts ('byte', a "
            ".model or tokenizer.json path, a config dict) or None"
        )
    if strategy is not None and not isinstance(strategy, tf.distribute.Strategy):
        raise v.InvalidArgumentTypeError(
            f"strategy={strategy!r} must be a tf.distribute.Strategy or None"
        )


def _named(args: tuple[Any, ...], settings: dict[str, Any]) -> dict[str, Any]:
    """Positional settings (in ``POSITIONAL``'s order) merged with keyword ones."""
    if len(args) > len(POSITIONAL):
        raise v.InvalidArgumentTypeError(
            f"Trainer takes at most {len(POSITIONAL)} positional settings after the model "
            f"({', '.join(POSITIONAL)}); pass the others by keyword"
        )
    named = dict(zip(POSITIONAL, args))
    twice = sorted(set(named) & set(settings))
    if twice:
        raise v.InvalidArgumentTypeError(f"Trainer got {twice} both by position and by keyword")
    return {**named, **settings}


def _run_paths(
    save_checkpoints: bool, checkpoint_dir: str | None, resume_from: str | None
) -> tuple[str | None, str | None]:
    """``train()``'s directories, absolute and checked before any expensive work."""
    if save_checkpoints and checkpoint_dir is None:
        checkpoint_dir = "checkpoints"
    checkpoint_dir = _absolute(v.check_str("checkpoint_dir", checkpoint_dir, allow_none=True))
    resume_from = _resume_source(
        _absolute(v.check_str("resume_from", resume_from, allow_none=True))
    )
    if resume_from is not None and not checkpoint_candidates(resume_from):
        raise v.InvalidArgumentError(
            f"resume_from={resume_from!r} holds no checkpoint; pass a checkpoint directory "
            "(or DIR/latest) or a checkpoint path such as DIR/ckpt-1000"
        )
    if checkpoint_dir is not None and save_checkpoints:
        v.check_writable_dir("checkpoint_dir", checkpoint_dir)  # before any expensive work
    return checkpoint_dir, resume_from


def _absolute(path: str | None) -> str | None:
    """A local path made absolute against the working directory now; URLs as they are."""
    if path is None or is_remote(path):
        return path
    return os.path.abspath(path)


def _resume_source(path: str | None) -> str | None:
    """``DIR/latest`` (the original docs' spelling) means ``DIR``: its newest checkpoint."""
    if path is None or checkpoint_candidates(path):
        return path
    head, tail = os.path.split(path.rstrip("/"))
    return head if tail == "latest" and head else path


def _cap_seq_length(settings: StageSettings, model: keras.Model, asked: bool) -> StageSettings:
    """Rows no longer than the model's positions. A length the caller asked for is capped with a
    warning naming both lengths (the default's cap is only noted)."""
    model_seq = model_config(model).get("max_seq_length")
    if model_seq and settings.max_seq_length > model_seq:
        log = logging.warning if asked else logging.info
        log(
            "max_seq_length=%d is longer than the model's max_seq_length=%d; training on rows "
            "of %d tokens (pass max_seq_length<=%d, or create the model with a longer one)",
            settings.max_seq_length,
            model_seq,
            model_seq,
            model_seq,
        )
        return dataclasses.replace(settings, max_seq_length=int(model_seq))
    return settings


def _strategy_for(model: keras.Model) -> tf.distribute.Strategy:
    """The strategy in scope; else the one the model's variables live under; else one device."""
    if tf.distribute.has_strategy():
        return tf.distribute.get_strategy()
    if model.built and model.variables:
        owner = getattr(model.variables[0].value, "_distribute_strategy", None)
        # Built outside any scope (e.g. by generate): the default strategy owns the variables.
        return owner if owner is not None else tf.distribute.get_strategy()
    device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device)


def _check_mixed_precision(model: keras.Model, policy: str | None) -> None:
    if policy in (None, "float32"):
        return
    model_policy = getattr(getattr(model, "dtype_policy", None), "name", None)
    if model_policy != policy:
        raise v.InvalidArgumentError(
            f"mixed_precision={policy!r} but the model was built with dtype policy "
            f"{model_policy!r}; call keras.mixed_precision.set_global_policy({policy!r}) "
            "before create_model (or pass dtype_policy to it)"
        )
