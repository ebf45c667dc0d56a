"""The Trainer: the reference's API over the training loop.

    trainer = Trainer(model, learning_rate=1e-4, batch_size=8, max_seq_length=2048)
    trainer.add_curriculum_stage("foundation", datasets=["stdlib_docs"], epochs=2)
    summary = trainer.train(checkpoint_dir="/tmp/run")

The Trainer validates what it is given, builds what a run needs and hands it to the
``Controller``, which owns the loop: ``StagePlan`` is the data side of a stage (store,
curriculum, per-host rows), ``TrainStep`` the compiled step, ``Checkpointer`` the state on disk,
``EventHub`` the callbacks and outputs. Settings are declared once, in ``settings.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import gin
import keras
import tensorflow as tf
from absl import logging

from highnoon import data as hn_data
from highnoon.distribute.hosts import is_chief, num_hosts
from highnoon.models.config import ModelConfig
from highnoon.models.memory import check_sharding_fits
from highnoon.training import resume, saved_state
from highnoon.training.checkpointing import (
    Checkpointer,
    DataPosition,
    checkpoint_candidates,
    remove_stale_checkpoint_temporaries,
)
from highnoon.training.controller import Controller, Intervals, NonFiniteLossError
from highnoon.training.devices import device_memory_bytes
from highnoon.training.evaluation import Evaluator
from highnoon.training.events import Callback, EventHub, ProgressDisplay, SummaryListener
from highnoon.training.goodput import Goodput, flops_per_token, peak_flops
from highnoon.training.optimization import WarmupCosineSchedule, make_optimizer, schedule_phase
from highnoon.training.preemption import PreemptionWatcher
from highnoon.training.run_lock import ModelDirLockedError, RunLock
from highnoon.training.settings import (
    POSITIONAL,
    StageSettings,
    split_settings,
    trainer_signature,
)
from highnoon.training.sharding.collectives import resolve_collectives
from highnoon.training.sharding.levels import resolve_sharding
from highnoon.training.stage_plan import StagePlan
from highnoon.training.step import TrainStep
from highnoon.utils import validation as v
from highnoon.utils.files import atomic_write_text

__all__ = ["CurriculumStage", "NonFiniteLossError", "Trainer"]

SUMMARY_FILE = "summary.json"
TRAINER_STATE_FILE = saved_state.TRAINER_STATE_FILE


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


@gin.configurable(denylist=["model"])
class Trainer:
    """Runs curriculum stages of training for a HighNoon language model.

    ``Trainer(model, learning_rate=1e-4, batch_size=8, max_seq_length=2048,
    gradient_accumulation_steps=1, *, tokenizer=None, strategy=None, **settings)``: the
    reference's positional settings, then any setting of ``StageSettings`` or ``RunOptions``
    (``highnoon/training/settings.py``; README "Trainer settings"), each validated here.

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
        if not isinstance(model, keras.Model):
            raise v.InvalidArgumentTypeError(
                f"model={model!r} must be a Keras language model, e.g. "
                "highnoon.create_model('highnoon-tiny')"
            )
        given = _named(args, settings)
        self.settings, self.options = split_settings(given)
        self.model = model
        if tokenizer is not None and not isinstance(tokenizer, (hn_data.Tokenizer, str, dict)):
            raise v.InvalidArgumentTypeError(
                f"tokenizer={tokenizer!r} must be a highnoon.data.Tokenizer (ByteTokenizer, "
                "SentencePieceTokenizer, TokenizerJson), what load_tokenizer accepts ('byte', a "
                ".model or tokenizer.json path, a config dict) or None"
            )
        self.tokenizer = hn_data.load_tokenizer(tokenizer if tokenizer is not None else "byte")
        self.settings = _cap_seq_length(self.settings, model, asked="max_seq_length" in given)
        if strategy is not None and not isinstance(strategy, tf.distribute.Strategy):
            raise v.InvalidArgumentTypeError(
                f"strategy={strategy!r} must be a tf.distribute.Strategy or None"
            )
        self.strategy = strategy or _strategy_for(model)
        self._sharding = resolve_sharding(self.options.sharding, self.strategy.num_replicas_in_sync)
        # Checked on one replica too (where nothing is sharded): a config must not fail only
        # when moved to several.
        resolve_collectives(self.options.collectives, self.strategy)
        if self._sharding == "full" and model.built:
            raise v.InvalidArgumentError(
                "sharding='full' stores the weights only as per-replica shares, so the model "
                "must reach the Trainer unbuilt (create it and pass it before calling, "
                "generating or loading weights into it); or use sharding='optimizer'/'gradients'"
            )
        _check_mixed_precision(model, self.options.mixed_precision)
        hn_data.check_vocab_fits(self.tokenizer, model_config(model).get("vocab_size"))
        self.stages: list[CurriculumStage] = []
        self._events = EventHub()
        self._optimizer: keras.optimizers.Optimizer | None = None
        self._schedule: WarmupCosineSchedule | None = None
        self._step: TrainStep | None = None
        self._position = DataPosition()
        self._loaded_from: str | None = None  # Trainer.load: train() continues from here
        self._resumed_from: str | None = None  # where the last train() resumed from
        self._plans: list[StagePlan] = []  # the last train()'s stages, made concrete

    __init__.__signature__ = trainer_signature()  # gin and help() see every setting

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
        v.check_str("stage name", name)
        if any(stage.name == name for stage in self.stages):
            raise v.InvalidArgumentError(
                f"a stage named {name!r} already exists; stage names must be unique"
            )
        if datasets is None:
            raise v.InvalidArgumentTypeError(
                f"stage {name!r}: datasets=None; name at least one dataset (a registered name, "
                "a path or glob, or (entry, weight))"
            )
        datasets = v.check_items(
            f"stage {name!r}: datasets",
            datasets,
            single=(str, tuple, hn_data.DataSource),
            allowed="a dataset entry (a registered name, a path or glob, 'tfds:NAME', a "
            "DataSource or (entry, weight))",
        )
        if not datasets:
            raise v.InvalidArgumentError(
                f"stage {name!r}: datasets is empty; name at least one dataset"
            )
        epochs = v.check_positive_int(f"stage {name!r}: epochs", epochs, allow_none=True)
        weight = v.check_positive_float(f"stage {name!r}: weight", weight)
        try:
            self.settings.with_overrides(config_overrides)
        except v.InvalidArgumentError as error:
            raise type(error)(f"stage {name!r}: {error}") from None
        for entry in datasets:
            hn_data.validate_dataset_entry(entry)
        v.check_mixture_weights(f"stage {name!r}: datasets", datasets)
        self.stages.append(CurriculumStage(name, datasets, epochs, weight, dict(config_overrides)))
        return self

    def add_callback(self, callback: Callback) -> Trainer:
        """Adds ``callback(event: dict)``, called for every training event."""
        if not callable(callback):
            raise v.InvalidArgumentTypeError(f"callback={callback!r} is not callable")
        self._events.user.append(callback)
        return self

    # -- training ------------------------------------------------------------------------
    def train(
        self,
        epochs_per_stage: int | None = 10,
        save_checkpoints: bool = True,
        checkpoint_dir: str | None = None,
        checkpoint_interval: int = 1000,
        log_interval: int = 100,
        eval_interval: int = 500,
        resume_from: str | None = None,
    ) -> dict[str, Any]:
        """Trains through every stage; returns the run summary (see README).

        ``epochs_per_stage`` is the epochs of a stage that names none (``None``: every stage
        must name its own). A relative ``checkpoint_dir`` or ``resume_from`` is relative to the
        working directory at this call.
        """
        epochs_per_stage = v.check_positive_int(
            "epochs_per_stage", epochs_per_stage, allow_none=True
        )
        save_checkpoints = v.check_bool("save_checkpoints", save_checkpoints)
        intervals = Intervals(
            checkpoint=v.check_positive_int("checkpoint_interval", checkpoint_interval),
            log=v.check_positive_int("log_interval", log_interval),
            eval=v.check_positive_int("eval_interval", eval_interval),
        )
        if not self.stages:
            raise v.InvalidArgumentError(
                "train() has no curriculum stages; call add_curriculum_stage(name, datasets) first"
            )
        self._check_stage_epochs(epochs_per_stage)
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
        if self.options.deterministic_ops:
            tf.config.experimental.enable_op_determinism()
        writes = checkpoint_dir if save_checkpoints else None
        with (
            PreemptionWatcher(self.options.preemption_grace_seconds) as watcher,
            self._run_lock(writes) as lock,
        ):
            return self._train(
                epochs_per_stage, save_checkpoints, checkpoint_dir, resume_from, intervals, watcher,
                lock,
            )  # fmt: skip

    @contextlib.contextmanager
    def _run_lock(self, directory: str | None) -> Iterator[RunLock | None]:
        """One run per model_dir: the chief holds ``directory``'s lock for the run's life and
        removes what killed saves left there. Every host learns whether the chief got it (one
        small collective) before any store is built, so a refusal stops all of them at once."""
        if directory is None:
            yield None
            return
        chief = is_chief(self.strategy)
        lock, refusal = None, None
        if chief:
            try:
                lock = RunLock(directory).acquire()
            except ModelDirLockedError as error:
                refusal = error
        if num_hosts(self.strategy) > 1:
            from highnoon.distribute import verify_consistent
            from highnoon.distribute.errors import ConfigMismatchError

            try:  # workers say "free"; a chief that was refused says otherwise
                verify_consistent(
                    self.strategy, {"model_dir lock": "refused" if refusal else "free"}
                )
            except ConfigMismatchError as error:
                if refusal is None:
                    raise ModelDirLockedError(
                        f"the chief could not lock model_dir {directory!r}: another run holds "
                        "it (the chief's error names the holder)"
                    ) from error
        if refusal is not None:
            raise refusal
        try:
            if lock is not None:
                remove_stale_checkpoint_temporaries(directory)
            yield lock
        finally:
            if lock is not None:
                lock.release()

    def _train(
        self,
        epochs_per_stage: int | None,
        save_checkpoints: bool,
        checkpoint_dir: str | None,
        resume_from: str | None,
        intervals: Intervals,
        watcher: PreemptionWatcher,
        lock: RunLock | None,
    ) -> dict[str, Any]:
        """``train()`` after its arguments are checked, with preemption signals watched and
        the model_dir locked."""
        chief = is_chief(self.strategy)
        self._check_memory()
        goodput = Goodput(checkpoint_dir if save_checkpoints else None, writer=chief)
        with goodput.measure("data"):
            plans = self._plans = self._plan_stages(epochs_per_stage)
        self._verify_hosts_agree(plans)
        self._build(plans)
        checkpointer = self._checkpointer(checkpoint_dir) if checkpoint_dir else None
        with goodput.measure("checkpoint"):
            position = self._restore(checkpointer, checkpoint_dir, resume_from)
        goodput.resumed_at(position.global_step)
        resumed = resume.reconcile(
            position, plans, self.options.allow_data_change, source=self._resumed_from
        )
        self._set_schedule_phase(plans, position, resumed)
        if checkpointer is not None:  # after the restore checked the saved config
            checkpointer.write_model_config(model_config(self.model))
        if checkpointer is not None and lock is not None:
            checkpointer.before_save = lock.check  # a lost lock stops the run before a write
        controller = self._controller(
            checkpointer if save_checkpoints else None, checkpoint_dir, intervals, goodput, watcher
        )
        self._position = position
        summary = controller.run(plans, position, appended=resumed.appended)
        if lock is not None:
            lock.check()
        if checkpoint_dir and chief:
            atomic_write_text(
                os.path.join(checkpoint_dir, SUMMARY_FILE), json.dumps(summary, indent=2)
            )
        return summary

    def plan(self, epochs_per_stage: int | None = 10) -> list[StagePlan]:
        """The stages as ``train(epochs_per_stage=...)`` would run them, without training: each
        stage's token store built (or reused), its held-out split, curriculum and row lengths.
        ``highnoon-curriculum-report`` shows them."""
        epochs_per_stage = v.check_positive_int(
            "epochs_per_stage", epochs_per_stage, allow_none=True
        )
        if not self.stages:
            raise v.InvalidArgumentError(
                "plan() has no curriculum stages; call add_curriculum_stage(name, datasets) first"
            )
        self._check_stage_epochs(epochs_per_stage)
        return self._plan_stages(epochs_per_stage)

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str) -> str:
        """Writes ``path/trainer.json`` (settings, stages) and a checkpoint of weights,
        optimizer and data position. ``Trainer.load(path, model)`` continues from it."""
        path = _absolute(v.check_str("path", path))
        v.check_writable_dir("path", path)
        if self._optimizer is None:
            self._build(plans=None)
        checkpointer = self._checkpointer(path)
        checkpointer.position = self._position
        checkpointer.write_model_config(model_config(self.model))
        saved = checkpointer.save(self._position.global_step)
        if checkpointer.is_chief:
            saved_state.write_trainer_state(
                path,
                {
                    "settings": self.settings.to_json(),
                    "run_options": self.options.to_json(),
                    "tokenizer": self.tokenizer.to_config(),
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
        values = {**state["settings"], **state["run_options"], **overrides}
        try:
            if tokenizer is None:
                tokenizer = hn_data.tokenizer_from_config(state["tokenizer"])
            trainer = cls(model, tokenizer=tokenizer, **values)
            for stage in map(CurriculumStage.from_json, state["stages"]):
                trainer.add_curriculum_stage(
                    stage.name, stage.datasets, stage.epochs, stage.weight, **stage.config_overrides
                )
        except (ValueError, TypeError) as error:
            raise saved_state.TrainerStateError(
                f"{saved_state.state_path(path)}: {error}"
            ) from None
        trainer._build(plans=None)
        checkpointer = trainer._checkpointer(path)
        checkpointer.restore(path, model_config(model))
        trainer._position = checkpointer.position
        trainer._loaded_from = path
        return trainer

    # -- internals -----------------------------------------------------------------------
    def _check_stage_epochs(self, epochs_per_stage: int | None) -> None:
        if epochs_per_stage is not None:
            return
        missing = [stage.name for stage in self.stages if stage.epochs is None]
        if missing:
            raise v.InvalidArgumentError(
                f"train(epochs_per_stage=None) uses each stage's own epochs, but stage(s) "
                f"{missing} name none; give them epochs= or pass epochs_per_stage"
            )

    def _plan_stages(self, epochs_per_stage: int | None) -> list[StagePlan]:
        """Builds (or reuses) each stage's token store and curriculum; checks the batch fits."""
        replicas = self.strategy.num_replicas_in_sync
        plans = []
        for index, stage in enumerate(self.stages):
            settings = self.settings.with_overrides(stage.config_overrides)
            if settings.batch_size % replicas:
                raise v.InvalidArgumentError(
                    f"stage {stage.name!r}: batch_size={settings.batch_size} does not divide "
                    f"across {replicas} replicas; use a multiple of {replicas}"
                )
            store = hn_data.prepare_stage_store(
                stage.datasets,
                self.tokenizer,
                self.options.data_cache_dir,  # None: the data layer's default
                max_samples=settings.max_samples,
                seed=self.options.seed,
                data_dir=self.options.data_dir,
                progress=self.options.verbose and is_chief(self.strategy),
                vocab_size=model_config(self.model).get("vocab_size"),
            )
            hn_data.check_enough_samples(store, settings.global_batch_size)
            plans.append(
                StagePlan(
                    index,
                    stage.name,
                    settings,
                    stage.epochs or epochs_per_stage,
                    store,
                    self.options.seed,
                    verbose=self.options.verbose,
                    learning_rate_multiplier=(
                        settings.learning_rate / self.settings.learning_rate * stage.weight
                    ),
                    datasets=stage.datasets,
                )
            )
        return plans

    def _fingerprint_parts(self, plans: list[StagePlan]) -> dict[str, str]:
        config = {
            "settings": self.settings.to_json(),
            "run_options": {k: v for k, v in self.options.to_json().items() if k != "verbose"},
            "stages": [stage.to_json() for stage in self.stages],
            "model": model_config(self.model),
            "operative_gin": gin.operative_config_str() if gin.config_is_locked() else "",
        }
        streams = [plan.stream_fingerprint() for plan in plans]
        return {
            "config": json.dumps(config, sort_keys=True, default=str),
            "data": json.dumps([(s["data"], s["tokenizer"]) for s in streams]),
            "curriculum": json.dumps([s["stream"] for s in streams]),
        }

    def _verify_hosts_agree(self, plans: list[StagePlan]) -> None:
        """Every host plans the same run (one host has nothing to compare: skipped)."""
        if num_hosts(self.strategy) <= 1:
            return
        from highnoon.distribute import verify_consistent

        verify_consistent(self.strategy, self._fingerprint_parts(plans))

    def _build(self, plans: list[StagePlan] | None) -> None:
        """Creates weights (under the strategy's scope), optimizer and the compiled step.

        The schedule's phase (start, horizon, warm-up) is a variable: every ``train()`` sets it
        after the restore (``_set_schedule_phase``), so steps traced earlier follow it.
        """
        total, warmup = schedule_phase(
            [plan.planned_steps() for plan in plans or []],
            0,
            self.options.warmup_steps,
            self.options.warmup_fraction,
        )
        if self._optimizer is not None:
            return
        with self.strategy.scope():
            if not self.model.built:
                keras.utils.set_random_seed(self.options.seed)
                if self._sharding != "full":  # "full": the step creates the weight shares
                    length = min(self.settings.max_seq_length, 8)
                    self.model(tf.zeros([1, length], tf.int32))
            multiplier = tf.Variable(1.0, trainable=False, name="lr_multiplier")
            phase = tf.Variable(
                [0, total, warmup], trainable=False, dtype=tf.int64, name="lr_phase"
            )
            self._schedule = WarmupCosineSchedule(
                peak=self.settings.learning_rate,
                total_steps=total,
                warmup_steps=warmup,
                min_ratio=self.options.min_learning_rate_ratio,
                kind=self.options.lr_schedule,
                multiplier=multiplier,
                phase=phase,
            )
            self._optimizer = make_optimizer(
                self._schedule,
                name=self.options.optimizer,
                loss_scaling=self.options.mixed_precision == "mixed_float16",
            )
            if self._sharding is None:  # sharded: the step keeps per-replica moment shares
                self._optimizer.build(self.model.trainable_variables)
        self._step = TrainStep(
            self.model,
            self._optimizer,
            self.strategy,
            sharding=self._sharding,
            collectives=self.options.collectives,
        )

    def _checkpointer(self, directory: str) -> Checkpointer:
        # Sharded runs save whole tensors under the unsharded names: any replica count, sharded
        # or not, restores them (docs/design.md, "Sharding").
        objects = self._step.checkpoint_objects()
        return Checkpointer(
            directory,
            model=objects["model"],
            optimizer=objects["optimizer"],
            strategy=self.strategy,
            max_to_keep=self.options.max_checkpoints_to_keep,
        )

    def _check_memory(self) -> None:
        """The memory plan, before anything is built: each stage's per-replica estimate at the
        run's sharding level against one device's memory (``device_memory_gib``, or a
        recognised chip's); a plan that does not fit names the smallest level that would."""
        device = device_memory_bytes(self.options.device_memory_gib)
        config = getattr(self.model, "config", None)
        if device is None or not isinstance(config, ModelConfig):
            return
        policy = getattr(self.model, "dtype_policy", None)
        for stage in self.stages:
            s = self.settings.with_overrides(stage.config_overrides)
            estimate = check_sharding_fits(
                config,
                device,
                sharding=self._sharding,
                batch_size=s.global_batch_size,
                seq_length=s.max_seq_length,
                num_replicas=self.strategy.num_replicas_in_sync,
                gradient_accumulation_steps=s.gradient_accumulation_steps,
                optimizer=self.options.optimizer,
                compute_dtype=getattr(policy, "compute_dtype", "float32"),
                remat=bool(getattr(self.model, "remat", False)),
            )
            logging.info("stage %r memory plan: %s", stage.name, estimate.describe())

    def export_model(self) -> keras.Model:
        """The trained model, for inference: the model itself, or, with ``sharding='full'``
        (whose model holds only shares), a whole copy gathered from them. Under a multi-worker
        strategy every worker must call it (the gather is a collective)."""
        if self._step is None:
            return self.model
        return self._step.export_model()

    def _restore(
        self, checkpointer: Checkpointer | None, checkpoint_dir: str | None, resume_from: str | None
    ) -> DataPosition:
        """The position to continue from: ``resume_from``, else what ``load`` restored, else the
        newest checkpoint in ``checkpoint_dir``, else the start."""
        source = resume_from
        self._resumed_from = source
        if source is None and self._loaded_from is not None:
            self._resumed_from, self._loaded_from = self._loaded_from, None
            return self._position
        if source is None and checkpoint_dir and checkpoint_candidates(checkpoint_dir):
            if not self.options.resume_existing:
                raise v.InvalidArgumentError(
                    f"checkpoint_dir={checkpoint_dir!r} already holds a run and "
                    "resume_existing=False; pick a fresh checkpoint_dir or allow resuming"
                )
            source = checkpoint_dir
        self._resumed_from = source
        if source is None:
            return DataPosition()
        target = checkpointer or self._checkpointer(
            source if tf.io.gfile.isdir(source) else os.path.dirname(source)
        )
        path = target.restore(source, model_config(self.model))
        logging.info("resumed from %s at step %d", path, target.position.global_step)
        return target.position

    def _set_schedule_phase(
        self, plans: list[StagePlan], position: DataPosition, resumed: resume.Resumed
    ) -> None:
        """The learning-rate schedule for this ``train()``: stages appended after a finished
        run start a phase of their own (warm-up, then decay over the appended stages) unless
        ``continue_schedule``; otherwise the phase recorded in the position continues, its
        horizon covering every planned stage from its start."""
        if resumed.appended and not self.options.continue_schedule:
            position.schedule_start_stage = position.stage
            position.schedule_start_step = position.global_step
        elif resumed.appended:
            logging.info("stages %s continue the run's learning-rate schedule", resumed.appended)
        total, warmup = schedule_phase(
            [plan.planned_steps() for plan in plans],
            position.schedule_start_stage,
            self.options.warmup_steps,
            self.options.warmup_fraction,
        )
        self._schedule.set_phase(position.schedule_start_step, total, warmup)

    def _controller(
        self,
        checkpointer: Checkpointer | None,
        checkpoint_dir: str | None,
        intervals: Intervals,
        goodput: Goodput,
        watcher: PreemptionWatcher,
    ) -> Controller:
        chief = is_chief(self.strategy)
        progress = ProgressDisplay() if self.options.verbose and chief else None
        self._events.builtin = [progress] if progress is not None else []
        if self.options.write_summaries and checkpoint_dir and chief:
            self._events.builtin.append(SummaryListener(os.path.join(checkpoint_dir, "summaries")))
        return Controller(
            strategy=self.strategy,
            step=self._step,
            schedule=self._schedule,
            checkpointer=checkpointer,
            events=self._events,
            evaluator=Evaluator(self._step, self.strategy, self.options.eval_batches),
            intervals=intervals,
            checkpoint_dir=checkpoint_dir,
            steps_per_call=self.options.steps_per_call,
            jit_compile=self.options.jit_compile,
            goodput=goodput,
            multi_host=num_hosts(self.strategy) > 1,
            watcher=watcher,
            flops_per_token=functools.partial(flops_per_token, model_config(self.model)),
            peak_flops=peak_flops(
                self.options.peak_flops_per_device, self.strategy.num_replicas_in_sync
            ),
            progress=progress,
        )


def _named(args: tuple[Any, ...], settings: dict[str, Any]) -> dict[str, Any]:
    """Positional settings (the reference's order) merged with keyword ones."""
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


def _absolute(path: str | None) -> str | None:
    """A local path made absolute against the working directory now; URLs as they are."""
    if path is None or "://" in path:
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


def model_config(model: keras.Model) -> dict[str, Any]:
    """The model's configuration as a plain dict (empty for models without one)."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config.to_dict()) if hasattr(config, "to_dict") else dict(config)
