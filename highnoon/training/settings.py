"""Every Trainer setting, declared once.

Three frozen dataclasses hold them: ``StageSettings`` (what shapes one stage's training; a stage
may override any of them in ``add_curriculum_stage``), ``RunOptions`` (what applies to the whole
run, the optimizer's hyper-parameters included) and ``LoopSettings`` (how ``train()`` walks the
run: ``epochs_per_stage`` and the checkpoint, log and eval intervals). Each field carries its
default, a one-line description and its validator, and everything else derives from these
declarations:

* the ``Trainer`` signature (``trainer_signature``) and therefore gin's ``Trainer.NAME`` bindings,
* ``train()``'s and ``plan()``'s loop arguments (``loop_signature``),
* ``trainer.json`` (``Trainer.save`` writes all three, ``Trainer.load`` restores them),
* the set of stage overrides (``STAGE_OVERRIDABLE``),
* validation (``__post_init__``: every value is checked when the dataclass is made, so a bad
  value fails at ``Trainer(...)`` or ``add_curriculum_stage(...)``, not an hour into training),
* the README's settings table (``python -m highnoon.training.settings``).

Adding a setting is one field here (and, for a new behaviour, the code that reads it).
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from highnoon.curriculum import PACINGS
from highnoon.curriculum import STRATEGIES as CURRICULUM_STRATEGIES
from highnoon.curriculum.pacing import check_pacing_options
from highnoon.curriculum.seq_length import SequenceLengthWarmup
from highnoon.data.pipeline import OVERFLOW as OVERFLOWS
from highnoon.models.memory import SHARDABLE_OPTIMIZERS
from highnoon.training.devices import PEAK_FLOPS
from highnoon.training.sharding.levels import CHOICES as SHARDING_CHOICES
from highnoon.training.sharding.levels import COLLECTIVES
from highnoon.utils import validation as v

OPTIMIZERS = ("adamw", "adam", "sgd")
LR_SCHEDULES = ("cosine", "constant", "wsd")
# Shapes of the warmup-stable-decay schedule's decay (``WarmupCosineSchedule``); ``1-sqrt``
# (Hägele et al. 2024) falls fast at first and matched cosine's loss in their runs.
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")
MIXED_PRECISION_POLICIES = (None, "float32", "mixed_bfloat16", "mixed_float16")
# The positional parameters after ``model``, in order (README, "Trainer settings").
POSITIONAL = ("learning_rate", "batch_size", "max_seq_length", "gradient_accumulation_steps")
# Seeds reach numpy's and Keras' global seeding (keras.utils.set_random_seed), which take 32 bits.
MAX_SEED = 2**32 - 1

Check = Callable[[str, Any], Any]


def setting(default: Any, doc: str, check: Check, *, factory: bool = False) -> Any:
    """A dataclass field with its description and validator (``check(name, value)``)."""
    metadata = {"doc": doc, "check": check}
    if factory:
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def _choice(*choices: Any) -> Check:
    return lambda name, value: v.check_choice(name, value, choices)


def _optional(check: Check) -> Check:
    return lambda name, value: None if value is None else check(name, value)


def _non_negative_float(name: str, value: Any) -> float:
    return v.check_float(name, value, minimum=0.0)


def _non_negative_int(name: str, value: Any) -> int:
    return v.check_int(name, value, minimum=0)


def _fraction_below_one(name: str, value: Any) -> float:
    return v.check_fraction(name, value, allow_one=False)


def _initial_fraction(name: str, value: Any) -> float:
    return v.check_fraction(name, value, allow_zero=False)


def _beta(name: str, value: Any) -> float:
    return v.check_fraction(name, value, allow_one=False)


def _seed(name: str, value: Any) -> int:
    return v.check_int(name, value, minimum=0, maximum=MAX_SEED)


def _curriculum_strategy(name: str, value: Any) -> str | None:
    builtin = tuple(s for s in CURRICULUM_STRATEGIES if s != "custom")
    return None if value is None else v.check_choice(name, value, builtin)


def _warmup_steps(name: str, value: Any) -> int | float:
    """Whole steps (an int >= 0) or a share of the stage's planned steps (a float in (0, 1))."""
    if isinstance(value, float):
        if not 0.0 < value < 1.0:  # also NaN
            raise v.InvalidArgumentError(
                f"{name}={value!r} must be whole steps (an int >= 0) or a share of the stage's "
                "planned steps (a float in (0, 1))"
            )
        return value
    return v.check_int(name, value, minimum=0)


def _decay_steps(name: str, value: Any) -> int | float:
    """Whole steps (an int >= 1) or a share of the schedule's horizon (a float in (0, 1])."""
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:  # also NaN
            raise v.InvalidArgumentError(
                f"{name}={value!r} must be whole steps (an int >= 1) or a share of the run's "
                "planned steps (a float in (0, 1]); 0.1 is the usual choice (MiniCPM 2024)"
            )
        return value
    return v.check_int(name, value, minimum=1)


def _difficulty_strategy(name: str, value: Any) -> str | None:
    measures = tuple(s for s in CURRICULUM_STRATEGIES if s not in ("custom", "random"))
    return None if value is None else v.check_choice(name, value, measures)


def _peak_flops(name: str, value: Any) -> float | str | None:
    if value is None or isinstance(value, str):
        return v.check_choice(name, value, (None, "auto", *PEAK_FLOPS))
    return v.check_positive_float(name, value)


def _task_names(name: str, value: Any) -> tuple[str, ...]:
    """A list or tuple of non-empty task names (JSON and gin give lists), as a tuple."""
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(item, str) and item.strip() for item in value
    ):
        raise v.InvalidArgumentTypeError(
            f"{name}={value!r} must be a list of lm-eval task names, e.g. ['hellaswag']"
        )
    return tuple(value)


def _limit(name: str, value: Any) -> int | float:
    """lm-eval's ``limit``: a positive count, or a share of each task's documents in (0, 1)."""
    if isinstance(value, float) and not value.is_integer():
        return v.check_fraction(name, value, allow_zero=False, allow_one=False)
    return v.check_positive_int(name, int(value) if isinstance(value, float) else value)


def _validate(instance: Any) -> None:
    """Runs every field's validator; normalises ints/floats in place (frozen-safe)."""
    for item in dataclasses.fields(instance):
        value = item.metadata["check"](item.name, getattr(instance, item.name))
        if isinstance(value, int | float | tuple) and not isinstance(value, bool):
            object.__setattr__(instance, item.name, value)


@dataclass(frozen=True)
class StageSettings:
    """Every setting that shapes one stage's training (Trainer defaults + stage overrides)."""

    learning_rate: float = setting(
        1e-4, "peak learning rate (after warm-up)", v.check_positive_float
    )
    batch_size: int = setting(
        8,
        "global batch of one micro-step over all replicas; one optimizer step takes "
        "`batch_size * gradient_accumulation_steps` samples",
        v.check_positive_int,
    )
    max_seq_length: int = setting(
        2048, "tokens per training row (capped at the model's)", v.check_positive_int
    )
    gradient_accumulation_steps: int = setting(
        1, "micro-batches accumulated inside one compiled step", v.check_positive_int
    )
    clip_norm: float | None = setting(
        1.0,
        "global-norm clipping of the all-replica gradient (`None`: off)",
        _optional(v.check_positive_float),
    )
    curriculum_strategy: str | None = setting(
        None,
        "`None`: all the stage's data every epoch, shuffled (the default: easy-to-hard pools did "
        "not pay in the curriculum study, BENCHMARKS.md); `size_based`, `difficulty_based`, "
        "`mixed`: a pool growing easy-to-hard; `random`: a pool growing on the same pacing in a "
        "keyed random order (the control of Wu et al. 2021)",
        _curriculum_strategy,
    )
    pacing: str = setting(
        "linear",
        f"how a stage's pool grows: {', '.join(f'`{p}`' for p in PACINGS)}",
        _choice(*PACINGS),
    )
    pacing_options: dict[str, Any] = setting(
        dict,
        "options of the pacing: `{'p': 2}` for `root_p`; the other pacings take none",
        v.check_mapping,
        factory=True,
    )
    initial_fraction: float = setting(
        0.2, "share of the easiest data in the first epoch's pool, in (0, 1]", _initial_fraction
    )
    shuffle: bool = setting(
        True, "keyed per-epoch shuffle of the pool (`False`: easy-to-hard order)", v.check_bool
    )
    pack: bool = setting(False, "pack short samples into shared rows", v.check_bool)
    overflow: str = setting(
        "truncate",
        "samples longer than a row: cut (`truncate`) or take a keyed window (`window`)",
        _choice(*OVERFLOWS),
    )
    adaptive: bool = setting(
        False, "loss-driven pacing (`AdaptiveCurriculumScheduler`)", v.check_bool
    )
    loss_threshold_for_progression: float = setting(
        0.1, "adaptive: relative loss improvement below which the pool grows", _non_negative_float
    )
    min_epochs_per_stage: int = setting(
        1, "adaptive: epochs before the pool may grow", v.check_positive_int
    )
    max_epochs_per_stage: int = setting(
        50, "adaptive: epochs after which the pool grows anyway", v.check_positive_int
    )
    max_samples: int | None = setting(
        None, "cap on samples read per dataset entry", _optional(v.check_positive_int)
    )
    eval_fraction: float = setting(
        0.02, "held-out share of each stage's data, in [0, 1)", _fraction_below_one
    )
    seq_length_warmup_steps: int | float = setting(
        0,
        "sequence-length warm-up (Li et al. 2022): over the stage's first N steps (an int), or "
        "that share of its planned steps (a float in (0, 1)), rows grow from "
        "`seq_length_warmup_start` to `max_seq_length` on the lengths start * 2^k (one compiled "
        "shape each; 0: off)",
        _warmup_steps,
    )
    seq_length_warmup_start: int = setting(
        64, "first row length of the sequence-length warm-up", v.check_positive_int
    )
    eval_difficulty_buckets: int = setting(
        4,
        "held-out loss is also reported per difficulty quantile: the eval rows ranked by "
        "`eval_difficulty_strategy` into this many equal buckets (0: off)",
        _non_negative_int,
    )
    eval_difficulty_strategy: str | None = setting(
        None,
        "scores that rank the eval rows into buckets (`None`: the stage's `curriculum_strategy`, "
        "`size_based` when that is `None` or `random`)",
        _difficulty_strategy,
    )

    def __post_init__(self) -> None:
        _validate(self)
        options = check_pacing_options(self.pacing, self.pacing_options)
        object.__setattr__(self, "pacing_options", options)
        if self.max_epochs_per_stage < self.min_epochs_per_stage:
            raise v.InvalidArgumentError(
                f"max_epochs_per_stage={self.max_epochs_per_stage!r} must be >= "
                f"min_epochs_per_stage={self.min_epochs_per_stage!r}"
            )
        if self.seq_length_warmup_steps:  # a start at or above max_seq_length fails here
            self.seq_length_warmup(stage_steps=1)
        if self.pack and self.seq_length_warmup_steps:
            raise v.InvalidArgumentError(
                f"pack=True with seq_length_warmup_steps={self.seq_length_warmup_steps}: the "
                "warm-up truncates rows, which would cut packed samples; use one or the other "
                "in a stage"
            )

    def seq_length_warmup(self, stage_steps: int) -> SequenceLengthWarmup:
        """The row length at every step of a stage of ``stage_steps`` planned steps
        (``highnoon.curriculum.seq_length``); a share is rounded down, to at least one step."""
        steps = self.seq_length_warmup_steps
        if isinstance(steps, float):
            steps = max(1, int(steps * stage_steps))
        return SequenceLengthWarmup(self.max_seq_length, steps, self.seq_length_warmup_start)

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step, over all replicas and micro-batches."""
        return self.batch_size * self.gradient_accumulation_steps

    def with_overrides(self, overrides: dict[str, Any]) -> StageSettings:
        """These settings with a stage's overrides applied (validated)."""
        unknown = sorted(set(overrides) - set(STAGE_OVERRIDABLE))
        if unknown:
            raise v.InvalidArgumentError(
                f"unknown config override(s) {unknown}; a stage may override "
                f"{list(STAGE_OVERRIDABLE)}"
            )
        return dataclasses.replace(self, **overrides)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class RunOptions:
    """Settings of the whole run (no stage may override them)."""

    optimizer: str = setting("adamw", "`adamw`, `adam` or `sgd`", _choice(*OPTIMIZERS))
    weight_decay: float = setting(
        0.01,
        "`adamw`: decoupled weight decay (norm scales and biases are not decayed)",
        _non_negative_float,
    )
    beta_1: float = setting(0.9, "`adamw`/`adam`: first-moment decay, in [0, 1)", _beta)
    beta_2: float = setting(0.95, "`adamw`/`adam`: second-moment decay, in [0, 1)", _beta)
    epsilon: float = setting(1e-8, "`adamw`/`adam`: denominator epsilon", v.check_positive_float)
    momentum: float = setting(0.0, "`sgd`: momentum, in [0, 1)", _beta)
    warmup_steps: int | None = setting(
        None,
        "linear warm-up length in steps (`None`: `warmup_fraction`)",
        _optional(_non_negative_int),
    )
    warmup_fraction: float = setting(
        0.05, "warm-up as a share of the planned steps", _fraction_below_one
    )
    lr_schedule: str = setting(
        "cosine",
        "`cosine` decay to `min_learning_rate_ratio` of the peak, `constant`, or `wsd` "
        "(warmup-stable-decay: flat at the peak, then `lr_decay_steps` of decay to the floor)",
        _choice(*LR_SCHEDULES),
    )
    min_learning_rate_ratio: float = setting(
        0.1,
        "floor of `cosine` and `wsd` as a share of the peak",
        lambda n, x: v.check_fraction(n, x),
    )
    lr_decay_steps: int | float = setting(
        0.1,
        "`wsd`: the decay's length, whole steps (an int) or a share of the schedule's planned "
        "steps (a float in (0, 1]); it ends at the last planned step",
        _decay_steps,
    )
    lr_decay_shape: str = setting(
        "1-sqrt",
        f"`wsd`: the decay's shape, {', '.join(f'`{s}`' for s in DECAY_SHAPES)}",
        _choice(*DECAY_SHAPES),
    )
    lr_decay_stage: str | None = setting(
        None,
        "`wsd`: the decay covers this stage (by name; the annealing stage) and any after it, "
        "instead of the last `lr_decay_steps`",
        _optional(v.check_str),
    )
    weight_average: float | None = setting(
        None,
        "an exponential moving average of the weights, with this decay per optimizer step "
        "(e.g. 0.999), kept by the step and checkpointed: evaluated beside the live weights "
        "(`eval_loss_average`) and exported by `export_model()`; `None`: off; not with `sharding`",
        _optional(lambda n, x: v.check_fraction(n, x, allow_zero=False, allow_one=False)),
    )
    seed: int = setting(
        0,
        f"seeds curriculum shuffles, eval split and weight initialisation, in [0, {MAX_SEED}]",
        _seed,
    )
    steps_per_call: int = setting(
        1,
        "optimizer steps per host call (keeps TPUs busy); 1 with `jit_compile` on one replica: "
        "the call is the XLA step alone, with no loop around it",
        v.check_positive_int,
    )
    mixed_precision: str | None = setting(
        None,
        "`mixed_bfloat16` / `mixed_float16` (set the Keras policy before `create_model`)",
        _choice(*MIXED_PRECISION_POLICIES),
    )
    jit_compile: bool = setting(
        False,
        "XLA-compile the step (on one replica gradients, clipping and update are one XLA "
        "computation, as in Keras `fit(jit_compile=True)`)",
        v.check_bool,
    )
    deterministic_ops: bool = setting(
        False, "`tf.config.experimental.enable_op_determinism()` (bit-exact resume)", v.check_bool
    )
    eval_batches: int = setting(8, "eval batches per evaluation", v.check_positive_int)
    lm_eval_tasks: tuple[str, ...] = setting(
        (),
        "lm-evaluation-harness tasks scored on the live weights every `eval_interval` steps "
        "(`lm_eval` events, TensorBoard `lm_eval/*`, `summary.json`); names are checked at the "
        "Trainer call; needs `highnoon[eval]`",
        _task_names,
    )
    lm_eval_include_path: str | None = setting(
        None,
        "directory of your own lm-eval task YAML files (e.g. tasks on local JSONL files)",
        _optional(v.check_str),
    )
    lm_eval_limit: int | float | None = setting(
        None,
        "documents per lm-eval task and evaluation: a count, or a share in (0, 1) (`None`: all)",
        _optional(_limit),
    )
    lm_eval_batch_size: int = setting(
        8, "rows per model call of the in-loop lm-eval", v.check_positive_int
    )
    max_checkpoints_to_keep: int = setting(3, "checkpoints kept on disk", v.check_positive_int)
    resume_existing: bool = setting(
        True,
        "`train()` on a directory that holds a run resumes it; `False` refuses instead",
        v.check_bool,
    )
    allow_data_change: bool = setting(
        False,
        "resume even though a stage's data or stream settings changed, or the stages the run "
        "completed differ: completed stages stay as trained, the current stage's stream "
        "restarts from its first epoch on the new data (recorded in the summary)",
        v.check_bool,
    )
    continue_schedule: bool = setting(
        False,
        "stages appended after a finished run continue its learning-rate schedule (horizon "
        "extended over them) instead of starting their own warm-up and decay",
        v.check_bool,
    )
    sharding: str | None = setting(
        None,
        "ZeRO-style sharding across replicas: `optimizer` (AdamW moments and the update), "
        "`gradients` (also accumulated gradients), `full` (also the weights, gathered block by "
        "block; FSDP), or `None` (every replica holds everything); with `adamw` or `adam` only",
        lambda n, x: v.check_choice(n, x, SHARDING_CHOICES),
    )
    collectives: str = setting(
        "auto",
        "sharded collectives: `portable` (all-reduce and slice; CPU/GPU), `xla` (true "
        "reduce-scatter and all-to-all inside the compiled TPU step; refused off TPU), `auto` "
        "(xla on TPU)",
        lambda n, x: v.check_choice(n, x, COLLECTIVES),
    )
    device_memory_gib: float | None = setting(
        None,
        "memory of one device, for the memory plan checked before anything is built (`None`: "
        "known accelerators are recognised, else no check)",
        _optional(v.check_positive_float),
    )
    preemption_grace_seconds: float = setting(
        30.0,
        "after SIGTERM (or one Ctrl-C), the time to stop at an agreed step and save; past it the "
        "process exits to be relaunched without the save",
        v.check_positive_float,
    )
    peak_flops_per_device: float | str | None = setting(
        "auto",
        "device peak for MFU: FLOP/s, a chip (`tpu_v4`, `tpu_v5e`, `tpu_v5p`, `h100`), `auto` "
        "(detected; a CPU is measured), or `None` (no MFU)",
        _peak_flops,
    )
    data_cache_dir: str | None = setting(
        None, "where token stores are cached (`None`: `~/.cache/highnoon`)", _optional(v.check_str)
    )
    data_dir: str | None = setting(None, "TFDS `data_dir`", _optional(v.check_str))
    store_cache_bytes: int = setting(
        2 << 30,
        "bytes of verified store blocks and samples a host keeps in memory when it reads a store in place "
        "from a path with a scheme (`gs://`, `file://`; one LRU per process); `0`: no cache "
        "(every read fetches, and nothing is prefetched). Local paths are memory-mapped",
        _non_negative_int,
    )
    write_summaries: bool = setting(
        True, "TensorBoard summaries under `checkpoint_dir/summaries`", v.check_bool
    )
    verbose: bool = setting(
        True, "progress bar (or a line per log interval) on the chief", v.check_bool
    )

    def __post_init__(self) -> None:
        _validate(self)
        if self.lr_decay_stage is not None and self.lr_schedule != "wsd":
            raise v.InvalidArgumentError(
                f"lr_decay_stage={self.lr_decay_stage!r} with lr_schedule={self.lr_schedule!r}: "
                "only the 'wsd' schedule places its decay on a stage; set lr_schedule='wsd' or "
                "lr_decay_stage=None"
            )
        if self.weight_average is not None and self.sharding is not None:
            raise v.InvalidArgumentError(
                f"weight_average={self.weight_average!r} with sharding={self.sharding!r}: the "
                "sharded step updates weight shares with its own AdamW arithmetic, which keeps "
                "no average; use sharding=None or weight_average=None"
            )
        # Refused on any replica count (one replica trains unsharded), so a config that runs on
        # one replica never fails only when moved to several.
        if self.sharding is not None and self.optimizer not in SHARDABLE_OPTIMIZERS:
            raise v.InvalidArgumentError(
                f"optimizer={self.optimizer!r} with sharding={self.sharding!r}: sharding keeps "
                f"shares of the moments of {list(SHARDABLE_OPTIMIZERS)} only; use one of those "
                "optimizers or sharding=None"
            )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LoopSettings:
    """How ``train()`` walks the run: epochs of a stage that names none, and the steps between
    checkpoints, log events and evaluations. ``Trainer(...)`` (and gin's ``Trainer.NAME``) sets
    them; an argument of ``train()`` or ``plan()`` overrides them for that call."""

    epochs_per_stage: int | None = setting(
        10,
        "epochs of a stage that names none (`None`: every stage must name its own)",
        lambda n, x: v.check_positive_int(n, x, allow_none=True),
    )
    checkpoint_interval: int = setting(1000, "steps between checkpoints", v.check_positive_int)
    log_interval: int = setting(100, "steps between `log` events", v.check_positive_int)
    eval_interval: int = setting(500, "steps between held-out evaluations", v.check_positive_int)

    def __post_init__(self) -> None:
        _validate(self)

    def with_arguments(self, **given: Any) -> LoopSettings:
        """These settings with the arguments a ``train()``/``plan()`` call gave (validated);
        ``FROM_SETTINGS`` keeps the setting."""
        return dataclasses.replace(
            self, **{k: x for k, x in given.items() if x is not FROM_SETTINGS}
        )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _FromSettings:
    """Default of ``train()``'s loop arguments: the Trainer's setting of that name."""

    def __repr__(self) -> str:
        return "<the Trainer's setting>"


FROM_SETTINGS: Any = _FromSettings()

STAGE_OVERRIDABLE = tuple(f.name for f in dataclasses.fields(StageSettings))
RUN_OPTIONS = tuple(f.name for f in dataclasses.fields(RunOptions))
LOOP_SETTINGS = tuple(f.name for f in dataclasses.fields(LoopSettings))
SETTING_CLASSES = (StageSettings, RunOptions, LoopSettings)
# Keyword-only Trainer arguments that are objects, not settings (never saved as JSON).
OBJECT_ARGUMENTS = {
    "tokenizer": "a `highnoon.data.Tokenizer` or what `load_tokenizer` takes ('byte', a "
    "SentencePiece `.model` or Hugging Face `tokenizer.json` path); default byte-level; the "
    "model's vocabulary must hold it",
    "strategy": "any `tf.distribute.Strategy` (default: the one in scope, else the model's, else "
    "one device)",
}


def split_settings(values: dict[str, Any]) -> tuple[StageSettings, RunOptions, LoopSettings]:
    """Validated ``(StageSettings, RunOptions, LoopSettings)`` from keyword values; unknown
    names are an error that lists the known ones."""
    known = STAGE_OVERRIDABLE + RUN_OPTIONS + LOOP_SETTINGS
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise v.InvalidArgumentTypeError(
            f"unknown Trainer setting(s) {unknown}; known settings: {sorted(known)}"
        )
    stage = StageSettings(**{k: values[k] for k in STAGE_OVERRIDABLE if k in values})
    run = RunOptions(**{k: values[k] for k in RUN_OPTIONS if k in values})
    loop = LoopSettings(**{k: values[k] for k in LOOP_SETTINGS if k in values})
    return stage, run, loop


def _default(item: dataclasses.Field) -> Any:
    if item.default_factory is not dataclasses.MISSING:
        return item.default_factory()
    return item.default


def trainer_signature() -> inspect.Signature:
    """``Trainer.__init__``'s signature: ``self, model``, the four positional
    settings, then every other setting and the object arguments as keyword-only."""
    kind = inspect.Parameter
    params = [kind("self", kind.POSITIONAL_OR_KEYWORD), kind("model", kind.POSITIONAL_OR_KEYWORD)]
    fields = {f.name: f for cls in SETTING_CLASSES for f in dataclasses.fields(cls)}
    for name in POSITIONAL:
        params.append(kind(name, kind.POSITIONAL_OR_KEYWORD, default=_default(fields[name])))
    for name in OBJECT_ARGUMENTS:
        params.append(kind(name, kind.KEYWORD_ONLY, default=None))
    for name, item in fields.items():
        if name not in POSITIONAL:
            params.append(kind(name, kind.KEYWORD_ONLY, default=_default(item)))
    return inspect.Signature(params)


def loop_signature(function: Callable[..., Any]) -> inspect.Signature:
    """``function``'s signature showing the declared defaults of its loop arguments (``train``,
    ``plan``): their real default, ``FROM_SETTINGS``, takes the Trainer's setting, which is that
    declared default unless the Trainer was given another."""
    defaults = {f.name: _default(f) for f in dataclasses.fields(LoopSettings)}
    signature = inspect.signature(function)
    params = [
        p.replace(default=defaults[p.name]) if p.name in defaults else p
        for p in signature.parameters.values()
    ]
    return signature.replace(parameters=params)


def settings_table() -> str:
    """The README's table of Trainer settings (markdown), generated from the declarations."""
    rows = ["| setting | default | stage override | meaning |", "|---|---|---|---|"]
    for cls, overridable in ((StageSettings, "yes"), (RunOptions, ""), (LoopSettings, "train()")):
        for item in dataclasses.fields(cls):
            rows.append(
                f"| `{item.name}` | `{_default(item)!r}` | {overridable} | {item.metadata['doc']} |"
            )
    for name, doc in OBJECT_ARGUMENTS.items():
        rows.append(f"| `{name}` | `None` |  | {doc} |")
    return "\n".join(rows)


TABLE_BEGIN = "<!-- settings table: generated by python -m highnoon.training.settings -->"
TABLE_END = "<!-- end of settings table -->"


def update_readme(path: str) -> None:
    """Rewrites the table between ``TABLE_BEGIN`` and ``TABLE_END`` in ``path``."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    head, _, rest = text.partition(TABLE_BEGIN)
    _, _, tail = rest.partition(TABLE_END)
    if not rest or not tail:
        raise v.InvalidArgumentError(f"{path} has no '{TABLE_BEGIN}' ... '{TABLE_END}' block")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(f"{head}{TABLE_BEGIN}\n{settings_table()}\n{TABLE_END}{tail}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:  # python -m highnoon.training.settings --write README.md
        update_readme(sys.argv[2])
    else:
        sys.stdout.write(settings_table() + "\n")
