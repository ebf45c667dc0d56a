"""Assembling a run: what ``Trainer.train`` does after its arguments are checked.

``RunSpec`` is what the Trainer was given (model, tokenizer, strategy, validated settings,
stages, callbacks), frozen for one run. ``run_training_job`` takes the model_dir's run lock
(agreed across hosts), checks the memory plan, plans the stages, checks that every host planned
the same run, builds weights, optimizer and step once (``build``), restores the position to
continue from, sets the learning-rate phase, and hands each collaborator what it needs in its
constructor: the ``Checkpointer`` its ``RunDir``, live ``DataPosition`` and the lock's check;
the ``Controller`` its step runner, evaluator, events and options. Nothing is wired afterwards.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from highnoon import data as hn_data
from highnoon.data.remote_blocks import configure_block_cache
from highnoon.distribute.hosts import is_chief, num_hosts
from highnoon.models import contract
from highnoon.models.config import ModelConfig
from highnoon.models.memory import check_sharding_fits
from highnoon.training import resume
from highnoon.training.averaging import WeightAverage
from highnoon.training.checkpointing import (
    Checkpointer,
    checkpoint_candidates,
    remove_stale_checkpoint_temporaries,
)
from highnoon.training.controller import Controller, Intervals, LoopOptions
from highnoon.training.devices import device_memory_bytes
from highnoon.training.evaluation import Evaluator
from highnoon.training.events import EventHub, ProgressDisplay, SummaryListener
from highnoon.training.goodput import Goodput, flops_per_token, peak_flops
from highnoon.training.lm_eval_loop import LmEvalLoop
from highnoon.training.optimization import (
    Phase,
    WarmupCosineSchedule,
    make_optimizer,
    schedule_phase,
)
from highnoon.training.position import DataPosition
from highnoon.training.preemption import PreemptionWatcher
from highnoon.training.run_dir import RunDir
from highnoon.training.run_lock import ModelDirLockedError, RunLock
from highnoon.training.runner import TrainStepRunner
from highnoon.training.settings import LoopSettings, RunOptions, StageSettings
from highnoon.training.sharding.levels import ShardingLevel
from highnoon.training.stage_plan import StagePlan
from highnoon.training.step import TrainStep
from highnoon.utils import validation as v


@dataclass(frozen=True)
class RunSpec:
    """What a run is made of: the Trainer's inputs, validated."""

    model: keras.Model
    tokenizer: hn_data.Tokenizer
    strategy: tf.distribute.Strategy
    settings: StageSettings
    options: RunOptions
    sharding: ShardingLevel | None  # None: unsharded
    stages: tuple[Any, ...]  # CurriculumStage
    callbacks: list[Callable[[dict], Any]]  # the Trainer's own list: later additions count
    gin_config: str = ""  # the operative gin config of a launch's run (hosts must agree on it)

    @property
    def model_config(self) -> dict[str, Any]:
        return model_config(self.model)


@dataclass(frozen=True)
class Built:
    """Weights, schedule, optimizer and compiled step: built once, reused by every ``train()``."""

    schedule: WarmupCosineSchedule
    optimizer: keras.optimizers.Optimizer
    step: TrainStep
    average: WeightAverage | None = None  # ``weight_average``: the optimizer's moving average


@dataclass(frozen=True)
class Loaded:
    """What ``Trainer.load`` restored: the next ``train()`` continues from it."""

    path: str
    position: DataPosition


@dataclass(frozen=True)
class RunResult:
    summary: dict[str, Any]
    plans: list[StagePlan]
    position: DataPosition
    resumed_from: str | None


def model_config(model: keras.Model) -> dict[str, Any]:
    """The model's configuration as a plain dict (empty for models without one)."""
    import dataclasses

    config = getattr(model, "config", None)
    if config is None:
        return {}
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config.to_dict()) if hasattr(config, "to_dict") else dict(config)


# -- the run --------------------------------------------------------------------------------
def run_training_job(
    spec: RunSpec,
    built: Built | None,
    loop: LoopSettings,
    *,
    checkpoint_dir: str | None,
    save_checkpoints: bool,
    resume_from: str | None,
    loaded: Loaded | None,
    keep: Callable[..., None],
) -> RunResult:
    """One ``train()``, its arguments checked: locks, plans, builds, restores, runs.

    ``keep(plans=)``, ``keep(built=)`` and ``keep(position=)`` hand the Trainer what it keeps
    as soon as each exists, so a run that fails later still leaves them inspectable."""
    if spec.options.deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    run_dir = RunDir.for_strategy(checkpoint_dir, spec.strategy) if checkpoint_dir else None
    writes = run_dir if save_checkpoints else None
    with (
        PreemptionWatcher(spec.options.preemption_grace_seconds) as watcher,
        run_lock(spec.strategy, writes) as lock,
    ):
        check_decay_stage(spec.options, spec.stages)
        check_memory(spec)
        goodput = Goodput(writes.path if writes else None, writer=is_chief(spec.strategy))
        with goodput.measure("data"):
            plans = plan_stages(spec, loop.epochs_per_stage)
        keep(plans=plans)
        verify_hosts_agree(spec, plans)
        built = built or build(spec, plans)
        keep(built=built)
        with goodput.measure("checkpoint"):
            position, checkpointer, source = restore_position(
                spec, built, run_dir, resume_from, loaded, lock
            )
        keep(position=position)
        goodput.resumed_at(position.global_step)
        resumed = resume.reconcile(position, plans, spec.options.allow_data_change, source=source)
        set_schedule_phase(spec.options, built.schedule, plans, position, resumed)
        if run_dir is not None:  # after the restore checked the saved config
            run_dir.write_model_config(spec.model_config)
            run_dir.write_tokenizer(spec.tokenizer)  # generate and lm-eval read it back
        controller = make_controller(
            spec,
            built,
            checkpointer if save_checkpoints else None,
            run_dir,
            Intervals(loop.checkpoint_interval, loop.log_interval, loop.eval_interval),
            goodput,
            watcher,
            position,
        )
        summary = controller.run(plans, appended=resumed.appended)
        if lock is not None:
            lock.check()
        if run_dir is not None:
            run_dir.write_summary(summary)
    return RunResult(summary, plans, position, source)


@contextlib.contextmanager
def run_lock(strategy: tf.distribute.Strategy, run_dir: RunDir | None) -> Iterator[RunLock | None]:
    """One run per model_dir: the chief holds its lock for the run's life and removes what
    killed saves left there. Every host learns whether the chief got it (one small collective)
    before any store is built, so a refusal stops all of them at once."""
    if run_dir is None:
        yield None
        return
    directory = run_dir.path
    lock, refusal = None, None
    if run_dir.chief:
        try:
            lock = RunLock(directory).acquire()
        except ModelDirLockedError as error:
            refusal = error
    if num_hosts(strategy) > 1:
        from highnoon.distribute import verify_consistent
        from highnoon.distribute.errors import ConfigMismatchError

        try:  # workers say "free"; a chief that was refused says otherwise
            verify_consistent(strategy, {"model_dir lock": "refused" if refusal else "free"})
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


# -- plans ----------------------------------------------------------------------------------
def plan_stages(spec: RunSpec, epochs_per_stage: int | None) -> list[StagePlan]:
    """Builds (or reuses) each stage's token store and curriculum; checks the batch fits."""
    replicas = spec.strategy.num_replicas_in_sync
    # the bound of the process-wide cache of stores read in place (data/remote_blocks.py)
    configure_block_cache(spec.options.store_cache_bytes)
    plans = []
    for index, stage in enumerate(spec.stages):
        settings = spec.settings.with_overrides(stage.config_overrides)
        if settings.batch_size % replicas:
            raise v.InvalidArgumentError(
                f"stage {stage.name!r}: batch_size={settings.batch_size} does not divide "
                f"across {replicas} replicas; use a multiple of {replicas}"
            )
        store = hn_data.prepare_stage_store(
            stage.datasets,
            spec.tokenizer,
            spec.options.data_cache_dir,  # None: the data layer's default
            max_samples=settings.max_samples,
            seed=spec.options.seed,
            data_dir=spec.options.data_dir,
            progress=spec.options.verbose and is_chief(spec.strategy),
            vocab_size=spec.model_config.get("vocab_size"),
        )
        hn_data.check_enough_samples(store, settings.global_batch_size)
        plans.append(
            StagePlan(
                index,
                stage.name,
                settings,
                stage.epochs or epochs_per_stage,
                store,
                spec.options.seed,
                verbose=spec.options.verbose,
                learning_rate_multiplier=(
                    settings.learning_rate / spec.settings.learning_rate * stage.weight
                ),
                datasets=stage.datasets,
                mixture_schedule=stage.mixture_schedule,
            )
        )
    return plans


def fingerprint_parts(spec: RunSpec, plans: Sequence[StagePlan]) -> dict[str, str]:
    """What every host must agree on: the configuration, the data and the curriculum."""
    config = {
        "settings": spec.settings.to_json(),
        "run_options": {k: x for k, x in spec.options.to_json().items() if k != "verbose"},
        "stages": [stage.to_json() for stage in spec.stages],
        "model": spec.model_config,
        "operative_gin": spec.gin_config,
    }
    streams = [plan.stream_fingerprint() for plan in plans]
    return {
        "config": json.dumps(config, sort_keys=True, default=str),
        "data": json.dumps([(s["data"], s["tokenizer"]) for s in streams]),
        "curriculum": json.dumps([s["stream"] for s in streams]),
    }


def verify_hosts_agree(spec: RunSpec, plans: Sequence[StagePlan]) -> None:
    """Every host plans the same run (one host has nothing to compare: skipped)."""
    if num_hosts(spec.strategy) <= 1:
        return
    from highnoon.distribute import verify_consistent

    verify_consistent(spec.strategy, fingerprint_parts(spec, plans))


def check_memory(spec: RunSpec) -> None:
    """The memory plan, before anything is built: each stage's per-replica estimate at the
    run's sharding level against one device's memory (``device_memory_gib``, or a recognised
    chip's); a plan that does not fit names the smallest level that would."""
    device = device_memory_bytes(spec.options.device_memory_gib)
    config = getattr(spec.model, "config", None)
    if device is None or not isinstance(config, ModelConfig):
        return
    policy = getattr(spec.model, "dtype_policy", None)
    for stage in spec.stages:
        s = spec.settings.with_overrides(stage.config_overrides)
        estimate = check_sharding_fits(
            config,
            device,
            sharding=None if spec.sharding is None else spec.sharding.name,
            batch_size=s.global_batch_size,
            seq_length=s.max_seq_length,
            num_replicas=spec.strategy.num_replicas_in_sync,
            gradient_accumulation_steps=s.gradient_accumulation_steps,
            optimizer=spec.options.optimizer,
            compute_dtype=getattr(policy, "compute_dtype", "float32"),
            remat=bool(getattr(spec.model, "remat", False)),
        )
        logging.info("stage %r memory plan: %s", stage.name, estimate.describe())


# -- build, restore -------------------------------------------------------------------------
def build(spec: RunSpec, plans: Sequence[StagePlan] | None) -> Built:
    """Creates weights (under the strategy's scope), optimizer and the compiled step.

    The schedule's phase (start, horizon, warm-up) is a variable: every ``train()`` sets it
    after the restore (``set_schedule_phase``), so steps traced earlier follow it.
    """
    options = spec.options
    phase_steps = phase_of(options, plans or [], 0)
    model = spec.model
    with spec.strategy.scope():
        if not model.built:
            keras.utils.set_random_seed(options.seed)
            if spec.sharding is None or not spec.sharding.shards_weights:  # else: the step does
                # The first call builds the weights; its logits are checked against the model
                # contract before the step is built.
                length = min(spec.settings.max_seq_length, 8)
                contract.check_outputs(model, spec.tokenizer.vocab_size, seq_length=length)
        multiplier = tf.Variable(1.0, trainable=False, name="lr_multiplier")
        phase = tf.Variable(
            [0, phase_steps.total, phase_steps.warmup],
            trainable=False,
            dtype=tf.int64,
            name="lr_phase",
        )
        decay = tf.Variable(
            [phase_steps.decay_start, phase_steps.decay_steps],
            trainable=False,
            dtype=tf.int64,
            name="lr_decay",
        )
        schedule = WarmupCosineSchedule(
            peak=spec.settings.learning_rate,
            total_steps=phase_steps.total,
            warmup_steps=phase_steps.warmup,
            min_ratio=options.min_learning_rate_ratio,
            kind=options.lr_schedule,
            multiplier=multiplier,
            phase=phase,
            decay_start=phase_steps.decay_start,
            decay_steps=phase_steps.decay_steps,
            decay_shape=options.lr_decay_shape,
            decay=decay,
        )
        optimizer = make_optimizer(
            schedule, options, loss_scaling=options.mixed_precision == "mixed_float16"
        )
        if spec.sharding is None:  # sharded: the step keeps per-replica moment shares
            optimizer.build(model.trainable_variables)
    step = TrainStep(
        model, optimizer, spec.strategy, sharding=spec.sharding, collectives=options.collectives
    )
    average = WeightAverage(model, optimizer) if options.weight_average is not None else None
    return Built(schedule, optimizer, step, average)


def make_checkpointer(
    spec: RunSpec,
    built: Built,
    run_dir: RunDir,
    position: DataPosition,
    before_save: Callable[[], None] | None = None,
) -> Checkpointer:
    """Sharded runs save whole tensors under the unsharded names: any replica count, sharded or
    not, restores them (docs/design.md, "Sharding")."""
    objects = built.step.checkpoint_objects()
    return Checkpointer(
        run_dir,
        model=objects["model"],
        optimizer=objects["optimizer"],
        strategy=spec.strategy,
        max_to_keep=spec.options.max_checkpoints_to_keep,
        position=position,
        before_save=before_save,
    )


def restore_position(
    spec: RunSpec,
    built: Built,
    run_dir: RunDir | None,
    resume_from: str | None,
    loaded: Loaded | None,
    lock: RunLock | None,
) -> tuple[DataPosition, Checkpointer | None, str | None]:
    """The position to continue from, the run's checkpointer (saving that position) and where
    it came from: ``resume_from``, else what ``load`` restored, else the newest checkpoint in
    the run's directory, else the start."""
    source = resume_from
    fresh = source is None and loaded is None
    if fresh and run_dir is not None and checkpoint_candidates(run_dir.path):
        if not spec.options.resume_existing:
            raise v.InvalidArgumentError(
                f"checkpoint_dir={run_dir.path!r} already holds a run and "
                "resume_existing=False; pick a fresh checkpoint_dir or allow resuming"
            )
        source = run_dir.path
    use_loaded = resume_from is None and loaded is not None
    position = loaded.position if use_loaded else DataPosition()
    before_save = lock.check if lock is not None else None  # a lost lock stops a write
    checkpointer = (
        make_checkpointer(spec, built, run_dir, position, before_save) if run_dir else None
    )
    if use_loaded:
        return position, checkpointer, loaded.path
    if source is None:
        return position, checkpointer, None
    target = checkpointer
    if target is None:
        directory = source if tf.io.gfile.isdir(source) else os.path.dirname(source)
        target = make_checkpointer(
            spec, built, RunDir.for_strategy(directory, spec.strategy), position
        )
    path = target.restore(source, spec.model_config)
    logging.info("resumed from %s at step %d", path, position.global_step)
    return position, checkpointer, source


def set_schedule_phase(
    options: RunOptions,
    schedule: WarmupCosineSchedule,
    plans: Sequence[StagePlan],
    position: DataPosition,
    resumed: resume.Resumed,
) -> None:
    """The learning-rate schedule for this ``train()``: stages appended after a finished run
    start a phase of their own (warm-up, then decay over the appended stages) unless
    ``continue_schedule``; otherwise the phase recorded in the position continues, its horizon
    covering every planned stage from its start."""
    if resumed.appended and not options.continue_schedule:
        position.start_schedule_phase()
    elif resumed.appended:
        logging.info("stages %s continue the run's learning-rate schedule", resumed.appended)
    steps = phase_of(options, plans, position.schedule_start_stage)
    schedule.set_phase(
        position.schedule_start_step,
        steps.total,
        steps.warmup,
        steps.decay_start,
        steps.decay_steps,
    )


def phase_of(options: RunOptions, plans: Sequence[StagePlan], start_stage: int) -> Phase:
    """The schedule phase over ``plans`` from ``start_stage`` on, as ``options`` shape it: one
    function of the plans, so a resume at any step sets the same phase (``lr_decay_stage``
    names a stage; ``check_decay_stage`` refused unknown names before any plan was made)."""
    names = [plan.name for plan in plans]
    decay_stage = options.lr_decay_stage
    return schedule_phase(
        [plan.planned_steps() for plan in plans],
        start_stage,
        options.warmup_steps,
        options.warmup_fraction,
        decay_steps=options.lr_decay_steps,
        decay_stage=names.index(decay_stage) if decay_stage in names else None,
    )


def check_decay_stage(options: RunOptions, stages: Sequence[Any]) -> None:
    """``lr_decay_stage`` names one of the run's stages (checked before any data is read)."""
    names = [stage.name for stage in stages]
    if options.lr_decay_stage is not None and options.lr_decay_stage not in names:
        raise v.InvalidArgumentError(
            f"lr_decay_stage={options.lr_decay_stage!r} is not a stage of this run (stages: "
            f"{names}); name the stage the decay should cover, or None for the last "
            "lr_decay_steps"
        )


def make_controller(
    spec: RunSpec,
    built: Built,
    checkpointer: Checkpointer | None,
    run_dir: RunDir | None,
    intervals: Intervals,
    goodput: Goodput,
    watcher: PreemptionWatcher,
    position: DataPosition,
) -> Controller:
    """The loop with its collaborators: step runner, evaluator, outputs."""
    chief = is_chief(spec.strategy)
    options = spec.options
    progress = ProgressDisplay() if options.verbose and chief else None
    builtin: list[Any] = [progress] if progress is not None else []
    if options.write_summaries and run_dir is not None and chief:
        builtin.append(SummaryListener(run_dir.summaries))
    replicas = spec.strategy.num_replicas_in_sync
    runner = TrainStepRunner(
        built.step,
        spec.strategy,
        built.schedule,
        jit_compile=options.jit_compile,
        multi_host=num_hosts(spec.strategy) > 1,
        steps_per_call=options.steps_per_call,
    )
    lm_evaluator = (
        LmEvalLoop(built.step, spec.strategy, spec.tokenizer, options)
        if options.lm_eval_tasks
        else None
    )
    return Controller(
        runner=runner,
        evaluator=Evaluator(built.step, spec.strategy, options.eval_batches, average=built.average),
        lm_evaluator=lm_evaluator,
        checkpointer=checkpointer,
        events=EventHub(builtin, spec.callbacks),
        goodput=goodput,
        watcher=watcher,
        options=LoopOptions(
            intervals=intervals,
            steps_per_call=options.steps_per_call,
            num_replicas=replicas,
            checkpoint_dir=run_dir.path if run_dir is not None else None,
            flops_per_token=functools.partial(flops_per_token, spec.model_config),
            peak_flops=peak_flops(options.peak_flops_per_device, replicas),
        ),
        position=position,
        progress=progress,
    )
