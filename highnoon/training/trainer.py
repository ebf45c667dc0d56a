"""The Trainer: curriculum stages of real training under a ``tf.distribute`` strategy.

    trainer = Trainer(model, learning_rate=1e-4, batch_size=8, max_seq_length=2048)
    trainer.add_curriculum_stage("foundation", datasets=["stdlib_docs"], epochs=2)
    summary = trainer.train(checkpoint_dir="/tmp/run")

Orbit-style split of work: ``StagePlan`` owns the data side of a stage (store, curriculum, per-host
rows), ``TrainStep`` the compiled step, ``Checkpointer`` the state on disk, ``EventHub`` the
callbacks and outputs; this module only sequences them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gin
import keras
import numpy as np
import tensorflow as tf
from absl import logging

from highnoon import data as hn_data
from highnoon.distribute.hosts import is_chief
from highnoon.training.checkpointing import (
    Checkpointer,
    DataPosition,
    checkpoint_candidates,
)
from highnoon.training.events import Callback, EventHub, ProgressDisplay, SummaryListener
from highnoon.training.optimization import WarmupCosineSchedule, make_optimizer
from highnoon.training.stage_plan import STAGE_OVERRIDABLE, StagePlan, StageSettings
from highnoon.training.step import StepConfig, TrainStep
from highnoon.utils.files import atomic_write_text

TRAINER_STATE_FILE = "trainer.json"
SUMMARY_FILE = "summary.json"
MIXED_PRECISION_POLICIES = (None, "float32", "mixed_bfloat16", "mixed_float16")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class CurriculumStage:
    """A named training stage: which data, how long, how important, what it overrides."""

    name: str
    datasets: list[Any]
    epochs: int | None = None
    weight: float = 1.0
    config_overrides: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "datasets": [list(d) if isinstance(d, tuple) else d for d in self.datasets],
            "epochs": self.epochs,
            "weight": self.weight,
            "config_overrides": self.config_overrides,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CurriculumStage:
        datasets = [tuple(d) if isinstance(d, list) else d for d in data["datasets"]]
        return cls(
            name=data["name"],
            datasets=datasets,
            epochs=data["epochs"],
            weight=data["weight"],
            config_overrides=dict(data["config_overrides"]),
        )


def _positive(name: str, value: Any, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"{name}={value!r} is invalid: it must be a positive {kind.__name__}")
    if kind is int and not float(value).is_integer():
        raise ValueError(f"{name}={value!r} is invalid: it must be a positive int")


def _check_settings(settings: StageSettings, where: str) -> None:
    _positive(f"{where}learning_rate", settings.learning_rate, float)
    _positive(f"{where}batch_size", settings.batch_size)
    _positive(f"{where}max_seq_length", settings.max_seq_length)
    _positive(f"{where}gradient_accumulation_steps", settings.gradient_accumulation_steps)
    if settings.clip_norm is not None:
        _positive(f"{where}clip_norm", settings.clip_norm, float)
    if not 0.0 <= settings.eval_fraction < 1.0:
        raise ValueError(f"{where}eval_fraction={settings.eval_fraction!r} must be in [0, 1)")


@gin.configurable(denylist=["model"])
class Trainer:
    """Runs curriculum stages of training for a HighNoon language model.

    Args (the reference's, with its defaults):
      model: a Keras language model (``highnoon.create_model(...)``); best passed unbuilt, so its
        weights are created under the strategy's scope.
      learning_rate: peak learning rate (after warm-up).
      batch_size: global batch of one micro-step, over all replicas. The effective batch of one
        optimizer step is ``batch_size * gradient_accumulation_steps``.
      max_seq_length: tokens per training row (capped at the model's ``max_seq_length``).
      gradient_accumulation_steps: micro-batches accumulated inside one compiled step.

    Keyword-only extras (all gin-configurable): see README "Trainer settings".
    """

    def __init__(
        self,
        model: keras.Model,
        learning_rate: float = 1e-4,
        batch_size: int = 8,
        max_seq_length: int = 2048,
        gradient_accumulation_steps: int = 1,
        *,
        tokenizer: Any = None,
        optimizer: str = "adamw",
        warmup_steps: int | None = None,
        warmup_fraction: float = 0.05,
        lr_schedule: str = "cosine",
        min_learning_rate_ratio: float = 0.1,
        clip_norm: float | None = 1.0,
        seed: int = 0,
        strategy: tf.distribute.Strategy | None = None,
        steps_per_call: int = 1,
        mixed_precision: str | None = None,
        jit_compile: bool = False,
        deterministic_ops: bool = False,
        curriculum_strategy: str | None = "size_based",
        pacing: str = "linear",
        pacing_options: dict[str, Any] | None = None,
        initial_fraction: float = 0.2,
        shuffle: bool = True,
        pack: bool = False,
        overflow: str = "truncate",
        adaptive: bool = False,
        loss_threshold_for_progression: float = 0.1,
        min_epochs_per_stage: int = 1,
        max_epochs_per_stage: int = 50,
        max_samples: int | None = None,
        eval_fraction: float = 0.02,
        eval_batches: int = 8,
        max_checkpoints_to_keep: int = 3,
        resume_existing: bool = True,
        data_cache_dir: str | None = None,
        data_dir: str | None = None,
        write_summaries: bool = True,
        verbose: bool = True,
    ) -> None:
        if mixed_precision not in MIXED_PRECISION_POLICIES:
            raise ValueError(
                f"mixed_precision={mixed_precision!r} is not supported; use one of "
                f"{MIXED_PRECISION_POLICIES}"
            )
        _positive("steps_per_call", steps_per_call)
        _positive("eval_batches", eval_batches)
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else hn_data.ByteTokenizer()
        model_seq = _model_config(model).get("max_seq_length")
        if model_seq and max_seq_length > model_seq:
            logging.info(
                "max_seq_length=%d exceeds the model's max_seq_length=%d; training on %d tokens",
                max_seq_length,
                model_seq,
                model_seq,
            )
            max_seq_length = int(model_seq)
        self.settings = StageSettings(
            learning_rate=learning_rate,
            batch_size=batch_size,
            max_seq_length=max_seq_length,
            gradient_accumulation_steps=gradient_accumulation_steps,
            clip_norm=clip_norm,
            curriculum_strategy=curriculum_strategy,
            pacing=pacing,
            pacing_options=dict(pacing_options or {}),
            initial_fraction=initial_fraction,
            shuffle=shuffle,
            pack=pack,
            overflow=overflow,
            adaptive=adaptive,
            loss_threshold_for_progression=loss_threshold_for_progression,
            min_epochs_per_stage=min_epochs_per_stage,
            max_epochs_per_stage=max_epochs_per_stage,
            max_samples=max_samples,
            eval_fraction=eval_fraction,
        )
        _check_settings(self.settings, "")
        self.run_options = {
            "optimizer": optimizer,
            "warmup_steps": warmup_steps,
            "warmup_fraction": warmup_fraction,
            "lr_schedule": lr_schedule,
            "min_learning_rate_ratio": min_learning_rate_ratio,
            "seed": seed,
            "steps_per_call": steps_per_call,
            "mixed_precision": mixed_precision,
            "jit_compile": jit_compile,
            "deterministic_ops": deterministic_ops,
            "eval_batches": eval_batches,
            "max_checkpoints_to_keep": max_checkpoints_to_keep,
            "resume_existing": resume_existing,
            "data_cache_dir": data_cache_dir,
            "data_dir": data_dir,
            "write_summaries": write_summaries,
            "verbose": verbose,
        }
        self.strategy = strategy or _default_strategy()
        self._check_mixed_precision(mixed_precision)
        hn_data.check_vocab_fits(self.tokenizer, _model_vocab_size(model))
        self.stages: list[CurriculumStage] = []
        self._events = EventHub()
        self._pending_restore: str | None = None
        self._optimizer: keras.optimizers.Optimizer | None = None
        self._step: TrainStep | None = None
        self._position = DataPosition()

    # -- configuration -------------------------------------------------------------------
    def add_curriculum_stage(
        self,
        name: str,
        datasets: str | Sequence[Any],
        epochs: int | None = None,
        weight: float = 1.0,
        **config_overrides: Any,
    ) -> Trainer:
        """Adds a stage; validates everything cheap now (not an hour into training).

        ``weight`` multiplies the stage's learning rate. ``config_overrides`` may set any of
        ``STAGE_OVERRIDABLE`` for this stage only. Returns ``self`` for chaining.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"stage name={name!r} must be a non-empty string")
        if any(stage.name == name for stage in self.stages):
            raise ValueError(f"a stage named {name!r} already exists; stage names must be unique")
        if isinstance(datasets, str | tuple):
            datasets = [datasets]
        datasets = list(datasets)
        if not datasets:
            raise ValueError(f"stage {name!r}: datasets is empty; name at least one dataset")
        if epochs is not None:
            _positive(f"stage {name!r}: epochs", epochs)
        _positive(f"stage {name!r}: weight", weight, float)
        unknown = sorted(set(config_overrides) - set(STAGE_OVERRIDABLE))
        if unknown:
            raise ValueError(
                f"stage {name!r}: unknown config override(s) {unknown}; a stage may override "
                f"{list(STAGE_OVERRIDABLE)}"
            )
        _check_settings(self.settings.with_overrides(config_overrides), f"stage {name!r}: ")
        for entry in datasets:
            hn_data.validate_dataset_entry(entry)
        self.stages.append(CurriculumStage(name, datasets, epochs, float(weight), config_overrides))
        return self

    def add_callback(self, callback: Callback) -> Trainer:
        """Adds ``callback(event: dict)``, called for every training event."""
        if not callable(callback):
            raise ValueError(f"callback={callback!r} is not callable")
        self._events.user.append(callback)
        return self

    # -- training ------------------------------------------------------------------------
    def train(
        self,
        epochs_per_stage: int = 10,
        save_checkpoints: bool = True,
        checkpoint_dir: str | None = None,
        checkpoint_interval: int = 1000,
        log_interval: int = 100,
        eval_interval: int = 500,
        resume_from: str | None = None,
    ) -> dict[str, Any]:
        """Trains through every stage; returns the run summary (see README)."""
        _positive("epochs_per_stage", epochs_per_stage)
        _positive("checkpoint_interval", checkpoint_interval)
        _positive("log_interval", log_interval)
        _positive("eval_interval", eval_interval)
        if not self.stages:
            raise ValueError(
                "train() has no curriculum stages; call add_curriculum_stage(name, datasets) first"
            )
        if save_checkpoints and checkpoint_dir is None:
            checkpoint_dir = os.path.join(os.getcwd(), "checkpoints")
        if resume_from is not None and not checkpoint_candidates(resume_from):
            raise ValueError(
                f"resume_from={resume_from!r} holds no checkpoint; pass a checkpoint directory or "
                "a checkpoint path such as DIR/ckpt-1000"
            )
        if self.run_options["deterministic_ops"]:
            tf.config.experimental.enable_op_determinism()

        plans = self._plan_stages(epochs_per_stage)
        self._verify_hosts_agree(plans)
        self._build(plans)
        checkpointer = None
        if checkpoint_dir is not None:
            checkpointer = Checkpointer(
                checkpoint_dir,
                model=self.model,
                optimizer=self._optimizer,
                strategy=self.strategy,
                max_to_keep=self.run_options["max_checkpoints_to_keep"],
            )
        position = self._restore(checkpointer, checkpoint_dir, resume_from)
        if checkpointer is not None:  # after the restore checked the saved config
            checkpointer.write_model_config(_model_config(self.model))
        run = _Run(self, plans, position, checkpointer, save_checkpoints, checkpoint_dir)
        return run.execute(checkpoint_interval, log_interval, eval_interval)

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str) -> str:
        """Writes ``path/trainer.json`` (settings, stages) and a checkpoint of weights,
        optimizer and data position. ``Trainer.load(path, model)`` continues from it."""
        tf.io.gfile.makedirs(path)
        state = {
            "format": 1,
            "settings": self.settings.to_json(),
            "run_options": self.run_options,
            "tokenizer": self.tokenizer.to_config(),
            "stages": [stage.to_json() for stage in self.stages],
        }
        if self._optimizer is None:
            self._build(plans=None)
        checkpointer = Checkpointer(
            path, model=self.model, optimizer=self._optimizer, strategy=self.strategy
        )
        checkpointer.position = self._position
        checkpointer.write_model_config(_model_config(self.model))
        saved = checkpointer.save(checkpointer.position.global_step)
        if checkpointer.is_chief:
            atomic_write_text(os.path.join(path, TRAINER_STATE_FILE), json.dumps(state, indent=2))
        return saved

    @classmethod
    def load(cls, path: str, model: keras.Model, **overrides: Any) -> Trainer:
        """A Trainer with the saved settings and stages whose next ``train()`` continues from
        the saved checkpoint."""
        state_path = os.path.join(path, TRAINER_STATE_FILE)
        if not tf.io.gfile.exists(state_path):
            raise ValueError(
                f"{path!r} holds no {TRAINER_STATE_FILE}; pass a directory written by Trainer.save"
            )
        with tf.io.gfile.GFile(state_path) as handle:
            state = json.load(handle)
        settings = dict(state["settings"])
        options = {**state["run_options"], **overrides}
        trainer = cls(
            model,
            learning_rate=settings.pop("learning_rate"),
            batch_size=settings.pop("batch_size"),
            max_seq_length=settings.pop("max_seq_length"),
            gradient_accumulation_steps=settings.pop("gradient_accumulation_steps"),
            tokenizer=hn_data.tokenizer_from_config(state["tokenizer"]),
            **settings,
            **options,
        )
        for stage in state["stages"]:
            stage = CurriculumStage.from_json(stage)
            trainer.add_curriculum_stage(
                stage.name, stage.datasets, stage.epochs, stage.weight, **stage.config_overrides
            )
        trainer._pending_restore = path
        return trainer

    # -- internals -----------------------------------------------------------------------
    def _check_mixed_precision(self, policy: str | None) -> None:
        if policy in (None, "float32"):
            return
        model_policy = getattr(getattr(self.model, "dtype_policy", None), "name", None)
        if model_policy != policy:
            raise ValueError(
                f"mixed_precision={policy!r} but the model was built with dtype policy "
                f"{model_policy!r}; call keras.mixed_precision.set_global_policy({policy!r}) "
                "before create_model (or pass dtype_policy to it)"
            )

    def _stage_settings(self, stage: CurriculumStage) -> StageSettings:
        return self.settings.with_overrides(stage.config_overrides)

    def _plan_stages(self, epochs_per_stage: int) -> list[StagePlan]:
        """Builds (or reuses) each stage's token store and curriculum; checks the batch fits."""
        replicas = self.strategy.num_replicas_in_sync
        plans = []
        cache_dir = self.run_options["data_cache_dir"]  # None: the data layer's default
        for index, stage in enumerate(self.stages):
            settings = self._stage_settings(stage)
            if settings.batch_size % replicas:
                raise ValueError(
                    f"stage {stage.name!r}: batch_size={settings.batch_size} does not divide across "
                    f"{replicas} replicas; use a multiple of {replicas}"
                )
            store = hn_data.prepare_stage_store(
                stage.datasets,
                self.tokenizer,
                cache_dir,
                max_samples=settings.max_samples,
                seed=self.run_options["seed"],
                data_dir=self.run_options["data_dir"],
            )
            hn_data.check_enough_samples(store, settings.global_batch_size)
            epochs = stage.epochs or epochs_per_stage
            plans.append(
                StagePlan(
                    index,
                    stage.name,
                    settings,
                    epochs,
                    store,
                    self.run_options["seed"],
                    verbose=self.run_options["verbose"],
                )
            )
        return plans

    def _fingerprint_parts(self, plans: list[StagePlan]) -> dict[str, str]:
        config = {
            "settings": self.settings.to_json(),
            "run_options": {k: v for k, v in self.run_options.items() if k != "verbose"},
            "stages": [stage.to_json() for stage in self.stages],
            "model": _model_config(self.model),
            "operative_gin": gin.operative_config_str() if gin.config_is_locked() else "",
        }
        stage_parts = [plan.fingerprint_parts() for plan in plans]
        return {
            "config": json.dumps(config, sort_keys=True, default=str),
            "data": json.dumps([p["data"] for p in stage_parts]),
            "curriculum": json.dumps([p["curriculum"] for p in stage_parts]),
        }

    def _verify_hosts_agree(self, plans: list[StagePlan]) -> None:
        from highnoon.distribute import verify_consistent

        verify_consistent(self.strategy, self._fingerprint_parts(plans))

    def _build(self, plans: list[StagePlan] | None) -> None:
        """Creates weights (under the strategy's scope), optimizer and the compiled step.

        Without ``plans`` (``save()`` before any training) the schedule's horizon is provisional
        and is set from the plans by the first ``train()``, before anything is traced.
        """
        total = sum(plan.planned_steps() for plan in plans) if plans else 1
        warmup = self.run_options["warmup_steps"]
        if warmup is None:
            warmup = int(total * self.run_options["warmup_fraction"])
        if self._optimizer is not None:
            if plans:
                self._schedule.total_steps, self._schedule.warmup_steps = max(total, 1), warmup
            return
        with self.strategy.scope():
            if not self.model.built:
                keras.utils.set_random_seed(self.run_options["seed"])
                length = min(self.settings.max_seq_length, 8)
                self.model(tf.zeros([1, length], tf.int32))
            self._lr_multiplier = tf.Variable(1.0, trainable=False, name="lr_multiplier")
            schedule = WarmupCosineSchedule(
                peak=self.settings.learning_rate,
                total_steps=total,
                warmup_steps=warmup,
                min_ratio=self.run_options["min_learning_rate_ratio"],
                kind=self.run_options["lr_schedule"],
                multiplier=self._lr_multiplier,
            )
            self._schedule = schedule
            self._optimizer = make_optimizer(
                schedule,
                name=self.run_options["optimizer"],
                loss_scaling=self.run_options["mixed_precision"] == "mixed_float16",
            )
            self._optimizer.build(self.model.trainable_variables)
        self._step = TrainStep(self.model, self._optimizer, self.strategy)

    def _restore(
        self, checkpointer: Checkpointer | None, checkpoint_dir: str | None, resume_from: str | None
    ) -> DataPosition:
        source = resume_from or self._pending_restore
        if source is None and checkpoint_dir and checkpoint_candidates(checkpoint_dir):
            if not self.run_options["resume_existing"]:
                raise ValueError(
                    f"checkpoint_dir={checkpoint_dir!r} already holds a run and "
                    "resume_existing=False; pick a fresh checkpoint_dir or allow resuming"
                )
            source = checkpoint_dir
        if source is None:
            return DataPosition()
        target = checkpointer or Checkpointer(
            source if tf.io.gfile.isdir(source) else os.path.dirname(source),
            model=self.model,
            optimizer=self._optimizer,
            strategy=self.strategy,
        )
        path = target.restore(source, _model_config(self.model))
        logging.info("resumed from %s at step %d", path, target.position.global_step)
        self._pending_restore = None
        position = target.position
        if checkpointer is not None and checkpointer is not target:
            checkpointer.position = position
        return position


class _Run:
    """One call of ``Trainer.train``: the loop over stages, epochs and steps."""

    def __init__(
        self,
        trainer: Trainer,
        plans: list[StagePlan],
        position: DataPosition,
        checkpointer: Checkpointer | None,
        save_checkpoints: bool,
        checkpoint_dir: str | None,
    ) -> None:
        self.trainer = trainer
        self.plans = plans
        self.strategy = trainer.strategy
        self.position = position
        self.checkpointer = checkpointer
        self.save_checkpoints = save_checkpoints and checkpointer is not None
        self.checkpoint_dir = checkpoint_dir
        self.events = trainer._events
        self.checkpoint_paths: list[str] = []
        self.eval_history: list[dict[str, Any]] = []
        self.is_chief = is_chief(self.strategy)
        trainer._position = position
        if checkpointer is not None:
            checkpointer.position = position
        self.total_steps = sum(plan.planned_steps() for plan in plans)

    # -- events / saving ----------------------------------------------------------------
    def _builtin_listeners(self) -> list[Callback]:
        listeners: list[Callback] = []
        if self.trainer.run_options["verbose"]:
            listeners.append(ProgressDisplay(self.total_steps))
        if self.trainer.run_options["write_summaries"] and self.checkpoint_dir and self.is_chief:
            listeners.append(SummaryListener(os.path.join(self.checkpoint_dir, "summaries")))
        return listeners

    def save(self) -> None:
        if not self.save_checkpoints:
            return
        step = self.position.global_step
        if self.checkpoint_paths and self.checkpoint_paths[-1].endswith(f"-{step}"):
            return  # already saved at this step
        path = self.checkpointer.save(step)
        self.checkpoint_paths.append(path)
        self.events.emit("checkpoint_saved", path=path, step=step)

    # -- the loop -----------------------------------------------------------------------
    def execute(self, checkpoint_interval: int, log_interval: int, eval_interval: int) -> dict:
        self.intervals = (checkpoint_interval, log_interval, eval_interval)
        self.events.builtin = self._builtin_listeners()
        started = time.time()
        self.events.emit(
            "train_begin",
            total_steps=self.total_steps,
            start_step=self.position.global_step,
            stages=[plan.name for plan in self.plans],
            num_replicas=self.strategy.num_replicas_in_sync,
        )
        try:
            for plan in self.plans[self.position.stage :]:
                self._run_stage(plan)
        except (NonFiniteLossError, tf.errors.OpError):
            raise  # no save: keep the last good checkpoint; a lost peer cannot take part
        except BaseException:
            self.save()  # a failing callback (or Ctrl-C) stops after a final checkpoint
            raise
        self.save()
        summary = self._summary(time.time() - started)
        self.events.emit("train_end", summary=summary)
        if self.checkpoint_dir and self.is_chief:
            atomic_write_text(
                os.path.join(self.checkpoint_dir, SUMMARY_FILE), json.dumps(summary, indent=2)
            )
        return summary

    def _run_stage(self, plan: StagePlan) -> None:
        pos = self.position
        if pos.stage != plan.index:  # entering a new stage
            pos.stage, pos.epoch, pos.step_in_epoch = plan.index, 0, 0
            pos.epoch_loss_sum = pos.epoch_token_sum = 0.0
        saved_state = pos.curriculum_states.get(str(plan.index))
        if saved_state is not None and hasattr(plan.scheduler, "load_state"):
            plan.scheduler.load_state(saved_state)
        stage = self.trainer.stages[plan.index]
        s = plan.settings
        self.trainer._lr_multiplier.assign(
            s.learning_rate / self.trainer.settings.learning_rate * stage.weight
        )
        self.events.emit("stage_begin", stage=plan.name, index=plan.index, epochs=plan.epochs)
        while pos.epoch < plan.epochs:
            self._run_epoch(plan)
            epoch_loss = pos.epoch_loss_sum / max(pos.epoch_token_sum, 1.0)
            advanced = False
            if s.adaptive:
                advanced = bool(plan.scheduler.update_with_loss(pos.epoch, epoch_loss))
                pos.curriculum_states[str(plan.index)] = plan.scheduler.get_state()
            pos.last_epoch_loss = epoch_loss
            finished_epoch = pos.epoch
            pos.epoch += 1
            pos.step_in_epoch = 0
            pos.epoch_loss_sum = pos.epoch_token_sum = 0.0
            self.events.emit(
                "epoch_end",
                stage=plan.name,
                epoch=finished_epoch,
                loss=epoch_loss,
                step=pos.global_step,
                curriculum_advanced=advanced,
            )
        metrics = {"final_loss": pos.last_epoch_loss, "epochs": plan.epochs}
        if plan.eval_indices.size:
            metrics.update(self._evaluate(plan))
        pos.completed_stages.append(
            {"name": plan.name, "epochs": plan.epochs, "final_loss": pos.last_epoch_loss}
        )
        pos.stage = plan.index + 1
        pos.epoch = 0
        self.save()
        self.events.emit("stage_complete", stage=plan.name, metrics=metrics)

    def _dataset(
        self,
        rows_fn: Callable[[int, int], np.ndarray],
        start_step: int,
        plan: StagePlan,
        epoch: int,
    ):
        s = plan.settings

        def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
            host_id, num_hosts = context.input_pipeline_id, context.num_input_pipelines
            local_replicas = context.num_replicas_in_sync // num_hosts
            rows = rows_fn(host_id, num_hosts)
            dataset = hn_data.make_host_dataset(
                plan.store,
                rows,
                s.max_seq_length,
                start_step=start_step,
                pack=s.pack,
                overflow=s.overflow,
                seed=plan.seed,
                epoch=epoch,
            )
            # One host step [G/H, T] -> its local replicas' consecutive shares.
            return dataset.map(
                lambda batch: {
                    k: tf.reshape(v, [local_replicas, -1, *v.shape[1:]]) for k, v in batch.items()
                }
            ).unbatch()

        if self.strategy.num_replicas_in_sync == 1 and not isinstance(
            self.strategy, tf.distribute.TPUStrategy
        ):
            # One replica: the host pipeline feeds the step directly. tf.distribute would wrap
            # it in a MultiDeviceIterator, whose inner datasets run tf.data's autotuning thread;
            # deleting such an iterator at an epoch's end can block for as long as that thread's
            # sleep (seconds to a minute, growing with the epoch's length; BENCHMARKS.md).
            return dataset_fn(tf.distribute.InputContext(1, 0, 1))
        options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
        return self.strategy.distribute_datasets_from_function(dataset_fn, options)

    def _run_epoch(self, plan: StagePlan) -> None:
        pos = self.position
        steps = plan.steps_per_epoch(pos.epoch)
        epoch = pos.epoch
        dataset = self._dataset(
            lambda host_id, num_hosts: plan.host_rows(epoch, host_id, num_hosts),
            pos.step_in_epoch,
            plan,
            epoch,
        )
        iterator = iter(dataset)
        s = plan.settings
        config = StepConfig(
            accumulation_steps=s.gradient_accumulation_steps,
            clip_norm=s.clip_norm,
            jit_compile=self.trainer.run_options["jit_compile"],
        )
        checkpoint_interval, log_interval, eval_interval = self.intervals
        per_call = self.trainer.run_options["steps_per_call"]
        fraction = plan.fraction(epoch)
        window_loss, window_tokens, window_start = 0.0, 0.0, time.time()
        while pos.step_in_epoch < steps:
            n = min(per_call, steps - pos.step_in_epoch)
            for interval in (checkpoint_interval, log_interval, eval_interval):
                n = min(n, interval - pos.global_step % interval)
            losses, tokens = self.trainer._step.train_fn(config)(iterator, n)
            losses, tokens = losses.numpy().astype(np.float64), tokens.numpy().astype(np.float64)
            if not np.all(np.isfinite(losses)):
                raise NonFiniteLossError(
                    f"the training loss became {losses[~np.isfinite(losses)][0]} at step "
                    f"{pos.global_step + int(np.argmin(np.isfinite(losses))) + 1} (stage "
                    f"{plan.name!r}, epoch {epoch}); lower the learning rate or enable clip_norm. "
                    "The last good checkpoint was kept."
                )
            pos.global_step += n
            pos.step_in_epoch += n
            pos.tokens_seen += int(tokens.sum())
            pos.epoch_loss_sum += float((losses * tokens).sum())
            pos.epoch_token_sum += float(tokens.sum())
            window_loss += float((losses * tokens).sum())
            window_tokens += float(tokens.sum())
            step = pos.global_step
            if step % log_interval == 0:
                elapsed = max(time.time() - window_start, 1e-9)
                self.events.emit(
                    "log",
                    step=step,
                    stage=plan.name,
                    epoch=epoch,
                    loss=window_loss / max(window_tokens, 1.0),
                    step_loss=float(losses[-1]),
                    learning_rate=float(self.trainer._schedule(step - 1)),
                    tokens_per_second=window_tokens / elapsed,
                    curriculum_fraction=fraction,
                )
                window_loss, window_tokens, window_start = 0.0, 0.0, time.time()
            if step % eval_interval == 0 and plan.eval_indices.size:
                self._evaluate(plan)
            if step % checkpoint_interval == 0:
                self.save()

    def _evaluate(self, plan: StagePlan) -> dict[str, float]:
        limit = self.trainer.run_options["eval_batches"]
        batches = plan.eval_batches(limit)
        dataset = self._dataset(
            lambda host_id, num_hosts: plan.eval_rows(host_id, num_hosts, limit), 0, plan, 0
        )
        eval_fn = self.trainer._step.eval_fn()
        total, count = 0.0, 0.0
        iterator = iter(dataset)
        for _ in range(batches):
            loss_sum, tokens = eval_fn(next(iterator))
            total += float(loss_sum)
            count += float(tokens)
        loss = total / max(count, 1.0)
        result = {
            "eval_loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "step": self.position.global_step,
            "stage": plan.name,
        }
        self.eval_history.append(result)
        self.events.emit("eval", **result)
        return {"eval_loss": loss, "perplexity": result["perplexity"]}

    def _summary(self, wall_time: float) -> dict[str, Any]:
        pos = self.position
        return {
            "total_steps": pos.global_step,
            "stages_completed": list(pos.completed_stages),
            "tokens_seen": pos.tokens_seen,
            "wall_time_seconds": wall_time,
            "eval": list(self.eval_history),
            "checkpoints": list(self.checkpoint_paths),
            "checkpoint_dir": self.checkpoint_dir,
            "num_replicas": self.strategy.num_replicas_in_sync,
        }


def _default_strategy() -> tf.distribute.Strategy:
    """The strategy in scope, else one device (the first GPU if any, else the CPU)."""
    if tf.distribute.has_strategy():
        return tf.distribute.get_strategy()
    device = "/gpu:0" if tf.config.list_logical_devices("GPU") else "/cpu:0"
    return tf.distribute.OneDeviceStrategy(device)


def _model_config(model: keras.Model) -> dict[str, Any]:
    config = getattr(model, "config", None)
    if config is None:
        return {}
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config.to_dict()) if hasattr(config, "to_dict") else dict(config)


def _model_vocab_size(model: keras.Model) -> int | None:
    return _model_config(model).get("vocab_size")
