"""Does the curriculum pay? Tokens to a target held-out loss, curriculum arms against plain
shuffled training and against a random-order growing pool.

    python bench/curriculum_value.py --quick     # arithmetic, 7 arms x 3 seeds (~10 minutes)
    python bench/curriculum_value.py             # arithmetic, brackets, stdlib_code (hours)
    python bench/curriculum_value.py --analyze   # tables and plot from the results file only

Arms (one stage, the same model, optimizer, constant learning rate after the same warm-up, batch
and token budget; only the data order and row length differ):

  a  none        no curriculum: the whole (shuffled) training set every epoch
  b  random      the pool grows on the same pacing as c-e, in a keyed random order (Wu, Dyer,
                 Neyshabur 2021): what the pool's growth alone does
  c  size_based  easy-to-hard by length
  d  difficulty  easy-to-hard by ``difficulty_based`` (rarity, then length)
  e  mixed       easy-to-hard by ``mixed``
  f  seq_warmup  no curriculum, rows grow from a short length to the full one over the first
                 quarter of the budget (Li, Zhang, He 2022)
  g  adaptive    size_based, the pool grows when the training loss plateaus

Each run trains until it has seen the task's token budget ``B`` (target tokens, what the Trainer
counts as ``tokens_seen``), evaluating the held-out set (a keyed 5% of the task, drawn from its
whole difficulty range, the same rows for every arm of a seed) about 20 times; a curriculum arm's
stage gets the fewest epochs whose planned tokens reach ``B`` (its pool reaches the whole data at
its last epoch). Per arm and seed the script records the held-out loss, overall and per
difficulty quartile (ranked by ``size_based`` scores, the same buckets for every arm), against
tokens and training seconds (evaluation time excluded).

Tokens here are *target* tokens (real tokens, no padding): what a token budget means. Rows are
padded to the row length, so a step of short samples costs as much compute as one of long ones;
the script therefore also reports steps and *row tokens* (rows x row length, padding included:
the compute spent) to the target. Only arm f shortens rows, so only its compute per step drops.

The target loss is arm a's mean held-out loss (over seeds, linearly interpolated in tokens) at
``--target_fraction`` of ``B`` (default 0.5: half-way, where its curve still falls, so the
crossing is not lost in the plateau's noise), unless ``--target_loss`` sets it. For each arm:
tokens (and seconds) to reach the target, interpolated between evaluations, mean and standard
deviation over the seeds that reach it; the speed-up over a and over b, as the ratio of mean
tokens, given only when every seed of both arms reached the target; the held-out loss at ``B``
(equal tokens), overall and per difficulty bucket. An arm *meets the goal* when it reaches the
target with at least 1.3x fewer tokens than a and fewer than b.

Results go to ``--output`` (default ``bench/results``): ``curriculum_value[_quick].jsonl`` (one
line per finished run, appended as each run ends, so an interrupted study resumes where it
stopped), ``.md`` (the tables) and ``.png`` (held-out loss against tokens, every arm, a panel per
task; band = min..max over seeds).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "a": ("none", {"curriculum_strategy": None}),
    "b": ("random", {"curriculum_strategy": "random"}),
    "c": ("size_based", {"curriculum_strategy": "size_based"}),
    "d": ("difficulty", {"curriculum_strategy": "difficulty_based"}),
    "e": ("mixed", {"curriculum_strategy": "mixed"}),
    "f": ("seq_warmup", {"curriculum_strategy": None, "seq_length_warmup_steps": "quarter"}),
    "g": (
        "adaptive",
        {"curriculum_strategy": "size_based", "adaptive": True, "max_epochs_per_stage": 3},
    ),
}
GOAL_SPEEDUP = 1.3


@dataclass(frozen=True)
class Task:
    """One task of the study: its data, row length and token budget (in full-data steps)."""

    dataset: str
    max_seq_length: int
    warmup_start: int  # first row length of arm f
    budget_steps: int  # B = this many steps' worth of the whole data's tokens per step
    max_samples: int | None = None


TASKS = {
    "arithmetic": Task("arithmetic", 32, 8, 1200),
    "brackets": Task("brackets", 64, 8, 1000),
    "stdlib_code": Task("stdlib_code", 128, 16, 800, max_samples=6000),
}
QUICK_TASKS = {"arithmetic": Task("arithmetic", 32, 8, 400, max_samples=3000)}
COMMON = {  # Trainer settings shared by every arm
    "learning_rate": 3e-3,
    "batch_size": 32,
    "lr_schedule": "constant",
    "warmup_steps": 30,
    "eval_fraction": 0.05,
    "eval_batches": 16,
    "eval_difficulty_buckets": 4,
    "eval_difficulty_strategy": "size_based",
    "initial_fraction": 0.2,
    "pacing": "linear",
    "verbose": False,
    "write_summaries": False,
}
EVALS_PER_RUN = 20


# -- analysis (pure Python: tested on fake results, no TensorFlow) ---------------------------
def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float | None:
    """``y`` at ``x`` on the piecewise-linear curve through ``(xs, ys)`` (xs ascending); None
    outside ``[xs[0], xs[-1]]``."""
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    for i in range(1, len(xs)):
        if x <= xs[i]:
            x0, x1 = xs[i - 1], xs[i]
            if x1 == x0:
                return ys[i]
            return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)
    return ys[-1]


def first_crossing(xs: Sequence[float], losses: Sequence[float], target: float) -> float | None:
    """The ``x`` (tokens or seconds) at which the loss curve first reaches ``target`` or below,
    interpolated linearly between the evaluation before and the one at or below it; the first
    evaluation's ``x`` if it is already there; None if the curve never gets there."""
    for i, loss in enumerate(losses):
        if loss <= target:
            if i == 0:
                return xs[0]
            before = losses[i - 1]
            share = (before - target) / (before - loss) if before != loss else 1.0
            return xs[i - 1] + share * (xs[i] - xs[i - 1])
    return None


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (0 for one value; None, None for none)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, None when either is missing or the denominator is not > 0."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


@dataclass
class ArmSummary:
    arm: str
    name: str
    seeds: int
    reached: int
    tokens: tuple[float | None, float | None]  # to target: mean, std (seeds that reached)
    steps: tuple[float | None, float | None]
    row_tokens: tuple[float | None, float | None]  # compute: rows x row length, padding too
    seconds: tuple[float | None, float | None]
    loss_at_budget: tuple[float | None, float | None]
    buckets_at_budget: list[float | None]
    speedup_vs_a: float | None = None
    speedup_vs_b: float | None = None
    compute_vs_a: float | None = None  # a's mean row tokens to target / the arm's
    meets_goal: bool = False


@dataclass
class TaskSummary:
    task: str
    budget: float
    target: float | None
    target_source: str
    arms: list[ArmSummary] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Speed-up over a at the losses a reaches at these shares of the budget: {share: {arm: x}}
    speedups: dict[float, dict[str, float | None]] = field(default_factory=dict)


SPEEDUP_SHARES = (0.25, 0.5, 0.75, 1.0)


def baseline_loss(runs: list[dict[str, Any]], tokens: float) -> float | None:
    """Arm a's mean held-out loss at ``tokens`` (None without a run of a covering it)."""
    values = [interpolate(*curve(run), tokens) for run in runs if run["arm"] == "a"]
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)


def tokens_ratio(runs: list[dict[str, Any]], arm: str, target: float) -> float | None:
    """Mean tokens of a to ``target`` over mean tokens of ``arm``; None unless every seed of
    both reaches it."""
    means = []
    for name in ("a", arm):
        crossings = [first_crossing(*curve(r), target) for r in runs if r["arm"] == name]
        if not crossings or any(c is None for c in crossings):
            return None
        means.append(sum(crossings) / len(crossings))
    return ratio(means[0], means[1])


def curve(run: dict[str, Any], key: str = "loss") -> tuple[list[float], list[float]]:
    points = run["curve"]
    return [p["tokens"] for p in points], [p[key] for p in points]


def summarize_task(
    task: str,
    runs: list[dict[str, Any]],
    target_fraction: float = 0.5,
    target_loss: float | None = None,
    arms_table: dict[str, tuple[str, dict[str, Any]]] | None = None,
) -> TaskSummary:
    """Per-arm figures for one task's runs (see the module docstring); ``arms_table`` names
    the arms (the first round's by default)."""
    table = ARMS if arms_table is None else arms_table
    budget = min(run["budget_tokens"] for run in runs)
    by_arm: dict[str, list[dict]] = {}
    for run in runs:
        by_arm.setdefault(run["arm"], []).append(run)
    target, source = target_loss, "given (--target_loss)"
    if target is None:
        target = baseline_loss(runs, target_fraction * budget)
        source = f"arm a's mean held-out loss at {target_fraction:g} of the budget"
    summary = TaskSummary(task, budget, target, source)
    for share in SPEEDUP_SHARES:
        level = baseline_loss(runs, share * budget)
        summary.speedups[share] = {
            arm: None if level is None else tokens_ratio(runs, arm, level) for arm in sorted(by_arm)
        }
    if target is None:
        summary.notes.append(
            "no target: arm a has no run covering the target point; give --target_loss"
        )
    for arm in sorted(by_arm):
        arm_runs = by_arm[arm]
        reached: dict[str, list[float]] = {
            "tokens": [],
            "step": [],
            "row_tokens": [],
            "seconds": [],
        }
        for run in arm_runs:
            if target is None:
                continue
            losses = [p["loss"] for p in run["curve"]]
            if first_crossing([p["tokens"] for p in run["curve"]], losses, target) is None:
                continue
            for axis, values in reached.items():
                values.append(first_crossing([p[axis] for p in run["curve"]], losses, target))
        at_budget = [interpolate(*curve(run), _at_budget(run, budget)) for run in arm_runs]
        buckets = []
        for b in range(max(len(run["curve"][0]["buckets"]) for run in arm_runs)):
            values = [
                interpolate(*_bucket_curve(run, b), _at_budget(run, budget)) for run in arm_runs
            ]
            buckets.append(mean_std([v for v in values if v is not None])[0])
        summary.arms.append(
            ArmSummary(
                arm=arm,
                name=table[arm][0] if arm in table else arm,
                seeds=len(arm_runs),
                reached=len(reached["tokens"]),
                tokens=mean_std(reached["tokens"]),
                steps=mean_std(reached["step"]),
                row_tokens=mean_std(reached["row_tokens"]),
                seconds=mean_std(reached["seconds"]),
                loss_at_budget=mean_std([v for v in at_budget if v is not None]),
                buckets_at_budget=buckets,
            )
        )
    arms = {a.arm: a for a in summary.arms}
    for item in summary.arms:
        for reference, attribute in (("a", "speedup_vs_a"), ("b", "speedup_vs_b")):
            other = arms.get(reference)
            complete = (
                other is not None and other.reached == other.seeds and item.reached == item.seeds
            )
            if complete:
                setattr(item, attribute, ratio(other.tokens[0], item.tokens[0]))
                if reference == "a":
                    item.compute_vs_a = ratio(other.row_tokens[0], item.row_tokens[0])
        item.meets_goal = (
            item.arm not in ("a", "b")
            and item.speedup_vs_a is not None
            and item.speedup_vs_a >= GOAL_SPEEDUP
            and item.speedup_vs_b is not None
            and item.speedup_vs_b > 1.0
        )
    if target is not None and not any(a.reached for a in summary.arms):
        summary.notes.append(f"no arm reached the target loss {target:.4f}")
    return summary


def _at_budget(run: dict[str, Any], budget: float) -> float:
    """Where a run's "loss at B" is read: at B; a second-round run, which trains its whole
    planned stage (the epochs closest to B), at its end when that comes before B."""
    if run.get("round") == 2:
        return min(budget, run["curve"][-1]["tokens"])
    return budget


def _bucket_curve(run: dict[str, Any], bucket: int) -> tuple[list[float], list[float]]:
    points = [p for p in run["curve"] if len(p["buckets"]) > bucket]
    return [p["tokens"] for p in points], [p["buckets"][bucket] for p in points]


def _fmt(pair: tuple[float | None, float | None], digits: int = 3, scale: float = 1.0) -> str:
    mean, std = pair
    if mean is None:
        return "-"
    return f"{mean / scale:.{digits}f} ± {std / scale:.{digits}f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def format_task(summary: TaskSummary) -> str:
    """One task's results as markdown."""
    lines = [
        f"### {summary.task}",
        "",
        f"Budget {summary.budget:,.0f} target tokens; target held-out loss "
        + ("none" if summary.target is None else f"{summary.target:.4f}")
        + f" ({summary.target_source}).",
        "",
        "To the target: target tokens (k), its speed-up over a and b; steps; compute as row "
        "tokens (k, padding included: what a step costs) and its speed-up over a; training "
        "seconds. Mean ± standard deviation over the seeds that reach it.",
        "",
        "| arm | seeds | tokens (k) | vs a | vs b | steps | row tokens (k) | vs a | seconds "
        "| held-out loss at B | at B per difficulty quartile, easiest first |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for arm in summary.arms:
        buckets = " / ".join("-" if b is None else f"{b:.3f}" for b in arm.buckets_at_budget)
        lines.append(
            f"| {arm.arm} {arm.name}{' **(goal)**' if arm.meets_goal else ''} "
            f"| {arm.reached}/{arm.seeds} | {_fmt(arm.tokens, 1, 1000)} "
            f"| {_times(arm.speedup_vs_a)} | {_times(arm.speedup_vs_b)} | {_fmt(arm.steps, 0)} "
            f"| {_fmt(arm.row_tokens, 0, 1000)} | {_times(arm.compute_vs_a)} "
            f"| {_fmt(arm.seconds, 1)} | {_fmt(arm.loss_at_budget, 4)} | {buckets} |"
        )
    lines += [
        "",
        "Speed-up over a (a's mean tokens / the arm's) to the loss a reaches at a share of the "
        "budget (- : not every seed got there):",
        "",
        "| arm | " + " | ".join(f"{share:.0%} of B" for share in summary.speedups) + " |",
        "|---|" + "---:|" * len(summary.speedups),
    ]
    for arm in summary.arms:
        cells = [_times(summary.speedups[share].get(arm.arm)) for share in summary.speedups]
        lines.append(f"| {arm.arm} {arm.name} | " + " | ".join(cells) + " |")
    winners = [a for a in summary.arms if a.meets_goal]
    lines.append("")
    if winners:
        lines.append(
            "Meets the goal (>= 1.3x fewer tokens than a, fewer than b): "
            + ", ".join(f"{a.arm} {a.name} ({_times(a.speedup_vs_a)} vs a)" for a in winners)
            + "."
        )
    else:
        lines.append(
            f"No arm reaches the target with {GOAL_SPEEDUP}x fewer tokens than a while also "
            "beating b."
        )
    lines += [f"Note: {note}." for note in summary.notes]
    return "\n".join(lines) + "\n"


def plot(
    runs_by_task: dict[str, list[dict]],
    summaries: dict[str, TaskSummary],
    path: str,
    arms_table: dict[str, tuple[str, dict[str, Any]]] | None = None,
) -> str:
    """Held-out loss against tokens, a panel per task, every arm (mean over seeds on the union
    of their evaluation points; band = min..max)."""
    table = ARMS if arms_table is None else arms_table
    from highnoon.utils.plotting import pyplot, save_figure

    plt = pyplot()
    tasks = list(runs_by_task)
    figure, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    colors = dict(zip(table, plt.cm.tab20.colors))
    for axis, task in zip(axes[0], tasks):
        by_arm: dict[str, list[dict]] = {}
        for run in runs_by_task[task]:
            by_arm.setdefault(run["arm"], []).append(run)
        for arm, arm_runs in sorted(by_arm.items()):
            grid = sorted({t for run in arm_runs for t in curve(run)[0]})
            rows = [[interpolate(*curve(run), x) for run in arm_runs] for x in grid]
            keep = [(x, r) for x, r in zip(grid, rows) if all(v is not None for v in r)]
            if not keep:
                continue
            xs = [x / 1000 for x, _ in keep]
            axis.plot(
                xs, [sum(r) / len(r) for _, r in keep], color=colors.get(arm),
                label=f"{arm} {table.get(arm, (arm,))[0]}",
            )  # fmt: skip
            axis.fill_between(
                xs, [min(r) for _, r in keep], [max(r) for _, r in keep],
                color=colors.get(arm), alpha=0.15, linewidth=0,
            )  # fmt: skip
        target = summaries[task].target
        if target is not None:
            axis.axhline(target, color="k", linestyle=":", linewidth=1, label="target")
        axis.set_title(task)
        axis.set_xlabel("target tokens seen (thousands)")
        axis.set_ylabel("held-out loss (nats/token)")
        losses = [p["loss"] for run in runs_by_task[task] for p in run["curve"]]
        early = [
            interpolate(*curve(run), 0.1 * summaries[task].budget) or run["curve"][0]["loss"]
            for run in runs_by_task[task]
        ]
        axis.set_ylim(min(losses) - 0.05, max(early) + 0.05)
        axis.legend(fontsize=7)
    figure.suptitle("Held-out loss against tokens (mean over seeds, band = min..max)")
    return save_figure(figure, path)


# -- running ---------------------------------------------------------------------------------
def read_results(path: str) -> list[dict[str, Any]]:
    """The finished runs recorded in ``path`` (none if it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def append_result(path: str, record: dict[str, Any]) -> None:
    """Appends one finished run as a JSON line, flushed and fsynced (a crash loses at most the
    run in progress)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


class _BudgetReached(Exception):
    pass


def arm_settings(arm: str, task: Task, budget_steps: int, options: argparse.Namespace) -> dict:
    """The Trainer settings of ``arm`` on ``task`` (COMMON + the arm's own)."""
    settings = {
        **COMMON,
        "max_seq_length": task.max_seq_length,
        "max_samples": task.max_samples,
        "initial_fraction": options.initial_fraction,
        "pacing": options.pacing,
    }
    for key, value in ARMS[arm][1].items():
        if key == "seq_length_warmup_steps" and value == "quarter":
            value = max(budget_steps // 4, 1)
            settings["seq_length_warmup_start"] = task.warmup_start
        settings[key] = value
    return settings


def _trainer(task: Task, settings: dict, seed: int, cache_dir: str):
    import highnoon as hn

    model = hn.create_model("highnoon-nano", max_seq_length=task.max_seq_length)
    return hn.Trainer(model, seed=seed, data_cache_dir=cache_dir, **settings)


def epochs_for_budget(task: Task, settings: dict, seed: int, cache_dir: str, budget: int) -> int:
    """The fewest epochs whose planned tokens reach ``budget`` (an adaptive stage: as if its
    pool never grew, so it surely reaches it). Raises the Trainer's own error for settings the
    stage cannot take (an unknown pacing, a warm-up longer than the stage, ...)."""
    from highnoon.training.report import stage_report

    epochs = 1
    if settings.get("seq_length_warmup_steps"):  # start where the warm-up fits in the stage
        plain = {**settings, "seq_length_warmup_steps": 0}
        epochs = epochs_for_budget(task, plain, seed, cache_dir, budget)
    trainer = _trainer(task, settings, seed, cache_dir)
    while True:
        trainer.stages = []
        trainer.add_curriculum_stage(task.dataset, [task.dataset], epochs=epochs)
        (plan,) = trainer.plan(epochs_per_stage=None)
        tokens = stage_report(plan, samples=0)["total_tokens"]
        if tokens >= budget:
            return epochs
        epochs = max(epochs + 1, math.ceil(epochs * budget / max(tokens, 1)))


def full_data_tokens_per_step(task: Task, cache_dir: str) -> float:
    """Target tokens of an average step over the whole training set (arm a's step)."""
    from highnoon.training.report import stage_report

    trainer = _trainer(task, arm_settings("a", task, 1, _defaults()), 0, cache_dir)
    trainer.add_curriculum_stage(task.dataset, [task.dataset], epochs=1)
    (plan,) = trainer.plan(epochs_per_stage=None)
    report = stage_report(plan, samples=0)
    return report["total_tokens"] / report["total_steps"]


def _defaults() -> argparse.Namespace:
    return argparse.Namespace(initial_fraction=COMMON["initial_fraction"], pacing=COMMON["pacing"])


def _row_tokens_counter(warmup: Any, batch_size: int) -> Any:
    """``steps -> batch_size x the row lengths of the first ``steps`` steps`` (the compute a
    stage has spent, padding included)."""

    def count(steps: int) -> int:
        if not warmup.enabled:
            return steps * batch_size * warmup.max_length
        return batch_size * sum(warmup.length_at(t) for t in range(steps))

    return count


def run_one(
    task_name: str, task: Task, arm: str, seed: int, options: argparse.Namespace, budget: int,
    budget_steps: int,
) -> dict[str, Any]:  # fmt: skip
    """Trains one (task, arm, seed) to the token budget; returns its record."""
    import gc

    import keras

    from highnoon.curriculum import SequenceLengthWarmup

    settings = arm_settings(arm, task, budget_steps, options)
    epochs = epochs_for_budget(task, settings, seed, options.cache_dir, budget)
    trainer = _trainer(task, settings, seed, options.cache_dir)
    trainer.add_curriculum_stage(task.dataset, [task.dataset], epochs=epochs)
    interval = max(budget_steps // EVALS_PER_RUN, 1)
    points: list[dict[str, Any]] = []
    clock = {"start": 0.0, "eval": 0.0, "log": 0.0}

    def record(event: dict[str, Any]) -> None:
        now = time.perf_counter()
        kind = event["event"]
        if kind == "train_begin":
            clock["start"] = now
        elif kind == "log":
            clock["log"] = now
        elif kind == "eval":
            if event["step"] % interval == 0:  # the log event came just before the evaluation
                clock["eval"] += now - clock["log"]
            points.append(
                {
                    "step": event["step"],
                    "tokens": event["tokens_seen"],
                    "loss": event["eval_loss"],
                    "buckets": event.get("eval_loss_by_difficulty", []),
                    "edges": event.get("difficulty_edges", []),
                    "seconds": now - clock["start"] - clock["eval"],
                    "row_tokens": row_tokens(event["step"]),
                }
            )
            if event["tokens_seen"] >= budget:
                raise _BudgetReached()

    trainer.add_callback(record)
    warmup = SequenceLengthWarmup(
        task.max_seq_length,
        settings.get("seq_length_warmup_steps", 0),
        settings.get("seq_length_warmup_start", task.max_seq_length),
    )
    row_tokens = _row_tokens_counter(warmup, settings["batch_size"])
    with contextlib.suppress(_BudgetReached):
        trainer.train(save_checkpoints=False, log_interval=interval, eval_interval=interval)
    del trainer
    keras.backend.clear_session()
    gc.collect()
    return {
        "task": task_name,
        "arm": arm,
        "seed": seed,
        "settings": settings,
        "epochs": epochs,
        "budget_tokens": budget,
        "eval_interval": interval,
        "curve": points,
    }


# -- second round (issue 23): schedules over which data is seen when ------------------------
# Each task is a noisy bulk (a keyed 30% of wrong answers or scrambled brackets) and a clean,
# curated fifth of its size, both trained on; every arm is evaluated on the same clean held-out
# set (a third seed of the clean generator), so "best data last" can show. Letters a and b keep
# their roles (the baseline and the random-order control) for the tables.
ROUND2_ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "a": ("uniform_cosine", {}),
    "b": ("random_cosine", {"curriculum_strategy": "random"}),
    "w": ("wsd", {"lr_schedule": "wsd"}),
    "q": ("wsd_clean_decay", {"lr_schedule": "wsd", "mixture": "clean_last"}),
    "k": ("e2h_constant", {"curriculum_strategy": "size_based", "lr_schedule": "constant"}),
    "c": ("e2h_cosine", {"curriculum_strategy": "size_based"}),
    "e": ("e2h_wsd", {"curriculum_strategy": "size_based", "lr_schedule": "wsd"}),
    "s": ("seq_warmup_1x", {"seq_length_warmup_steps": "quarter", "scale": 1}),
    "t": ("seq_warmup_2x", {"seq_length_warmup_steps": "quarter", "scale": 2}),
    "u": ("seq_warmup_4x", {"seq_length_warmup_steps": "quarter", "scale": 4}),
    "m": ("ema_constant", {"lr_schedule": "constant", "weight_average": 0.99}),
    "n": (
        "e2h_ema_constant",
        {"curriculum_strategy": "size_based", "lr_schedule": "constant", "weight_average": 0.99},
    ),
}
ROUND2_COMMON = {  # as the first round's COMMON, with the decay the second round studies
    **{k: x for k, x in COMMON.items() if k not in ("eval_batches",)},
    "lr_schedule": "cosine",
    "min_learning_rate_ratio": 0.0,
    "lr_decay_steps": 0.2,  # WSD: the last fifth (MiniCPM: ~10% suffices, 2.5% does not)
    "lr_decay_shape": "1-sqrt",
    "eval_fraction": 0.0,  # every arm is evaluated on the clean held-out set instead
    "eval_difficulty_buckets": 0,
}
CLEAN_LAST = 5  # arm q: the last 1/CLEAN_LAST of the epochs draws 3/4 of its samples clean,
# and the WSD decay covers exactly those epochs
NOISE = 0.3


@dataclass(frozen=True)
class QualityTask:
    """A second-round task: a noisy bulk, a clean curated set, a clean held-out set."""

    kind: str  # the embedded generator: arithmetic or brackets
    max_seq_length: int
    warmup_start: int
    budget_steps: int  # B = this many baseline steps' worth of tokens
    bulk: int  # noisy samples
    clean: int  # clean curated samples
    held_out: int = 512  # clean evaluation samples

    def datasets(self) -> list[str]:
        return [f"{self.kind}_bulk", f"{self.kind}_clean"]

    def register(self) -> None:
        """The task's three datasets under their names (keyed, built on this machine)."""
        from highnoon.data import EmbeddedSource, register_dataset

        bulk, clean = self.datasets()
        register_dataset(
            bulk, EmbeddedSource(self.kind, seed=0, noise=NOISE, max_samples=self.bulk)
        )
        register_dataset(clean, EmbeddedSource(self.kind, seed=1, max_samples=self.clean))

    def held_out_texts(self) -> list[str]:
        from highnoon.data import EmbeddedSource

        return list(EmbeddedSource(self.kind, seed=2, max_samples=self.held_out).iter_samples())


ROUND2_TASKS = {
    "arithmetic": QualityTask("arithmetic", 32, 8, 1200, bulk=10000, clean=2000),
    "brackets": QualityTask("brackets", 64, 8, 1000, bulk=10000, clean=2000),
}
ROUND2_QUICK = {
    "arithmetic": QualityTask("arithmetic", 32, 8, 400, bulk=3000, clean=600, held_out=256),
}


def clean_epochs(epochs: int) -> int:
    """Arm q's clean-heavy epochs at the end of a stage of ``epochs``: about the last fifth
    (Blakeney et al. 2024: best over the last 10-20%), at least one."""
    return max(1, round(epochs / CLEAN_LAST))


def clean_schedule(task: QualityTask, epochs: int) -> dict[str, Any]:
    """Arm q's mixture: the concatenation's shares (bulk : clean by their sizes) until the
    last ``clean_epochs``, which draw a quarter bulk and three quarters clean."""
    same = [float(task.bulk), float(task.clean)]
    last = clean_epochs(epochs)
    return {"points": [same] * (epochs - last) + [[1.0, 3.0]] * last, "shape": "steps"}


def round2_settings(arm: str, task: QualityTask, budget_steps: int) -> dict[str, Any]:
    """The Trainer settings of a second-round arm (without the stage's mixture)."""
    settings = {**ROUND2_COMMON, "max_seq_length": task.max_seq_length}
    for key, value in ROUND2_ARMS[arm][1].items():
        if key in ("mixture", "scale"):
            continue
        settings[key] = value
    scale = ROUND2_ARMS[arm][1].get("scale", 1)
    settings["batch_size"] = COMMON["batch_size"] * scale
    settings["learning_rate"] = COMMON["learning_rate"] * scale
    settings["warmup_steps"] = max(COMMON["warmup_steps"] // scale, 1)
    if settings.get("seq_length_warmup_steps") == "quarter":
        settings["seq_length_warmup_steps"] = max(budget_steps // scale // 4, 1)
        settings["seq_length_warmup_start"] = task.warmup_start
    return settings


ANSWER_CHARACTERS = {"arithmetic": None, "brackets": ")]}>"}  # None: everything after "="


def answer_targets(kind: str, ids: Sequence[int], text: str) -> list[bool]:
    """Which targets of a row ``ids`` (BOS, ``text``'s bytes, EOS) the task's rule decides from
    the prefix: arithmetic, the result after ``=`` and the EOS; brackets, each closing bracket
    (its kind is the innermost open one's). The held-out loss also counts the random operands
    and bracket shapes, which no data can teach; this loss counts only the learnable skill, the
    part the noisy bulk corrupts and the clean set teaches."""
    targets = ids[1:]
    closing = ANSWER_CHARACTERS[kind]
    if closing is None:
        equals = 1 + text.index("=")  # the row position of "=" (after BOS)
        return [position + 1 > equals for position in range(len(targets))]
    wanted = {ord(c) for c in closing}
    return [position <= len(text) - 1 and ord(text[position]) in wanted
            for position in range(len(targets))]  # fmt: skip


class CleanEvaluator:
    """Held-out loss of a model on a fixed clean set, overall and per length quartile (the
    same rows, in the same batches, for every arm): rows as the pipeline makes them (BOS, the
    sample's bytes, EOS; cut to the row length), ranked by length with the index as tie-break.
    With ``kind``, also the loss on the answer targets alone (``answer_targets``)."""

    def __init__(
        self, texts: Sequence[str], seq_len: int, batch: int = 32, buckets: int = 4,
        kind: str | None = None,
    ):  # fmt: skip
        import numpy as np

        from highnoon.data import ByteTokenizer

        tokenizer = ByteTokenizer()
        encoded = [[tokenizer.bos_id, *tokenizer.encode(t), tokenizer.eos_id] for t in texts]
        order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
        usable = len(order) // (batch * buckets) * batch * buckets
        rows = np.zeros((usable, seq_len + 1), np.int32)
        valid = np.zeros((usable, seq_len + 1), bool)
        answer = np.zeros((usable, seq_len), bool)
        for r, i in enumerate(order[:usable]):
            ids = encoded[i][: seq_len + 1]
            rows[r, : len(ids)] = ids
            valid[r, : len(ids)] = True
            if kind is not None:
                answer[r, : len(ids) - 1] = answer_targets(kind, encoded[i], texts[i])[:seq_len]
        self.inputs, self.targets = rows[:, :-1], rows[:, 1:]
        self.mask = valid[:, 1:].astype(np.float32)
        self.answer_mask = (answer & valid[:, 1:]).astype(np.float32) if kind else None
        self.batch, self.buckets = batch, buckets

    def __call__(self, model: Any) -> tuple[float, list[float], float | None]:
        """The held-out loss, its per-quartile values and the answer loss (None without
        ``kind``)."""
        import tensorflow as tf

        from highnoon.training.losses import masked_token_loss_sum

        sums, counts, answer_sum, answer_count = [], [], 0.0, 0.0
        for first in range(0, self.inputs.shape[0], self.batch):
            part = slice(first, first + self.batch)
            logits = model(tf.constant(self.inputs[part]), training=False)
            sums.append(float(masked_token_loss_sum(self.targets[part], logits, self.mask[part])))
            counts.append(float(self.mask[part].sum()))
            if self.answer_mask is not None:
                mask = self.answer_mask[part]
                answer_sum += float(masked_token_loss_sum(self.targets[part], logits, mask))
                answer_count += float(mask.sum())
        per_bucket = len(sums) // self.buckets
        buckets = [
            sum(sums[b * per_bucket : (b + 1) * per_bucket])
            / max(sum(counts[b * per_bucket : (b + 1) * per_bucket]), 1.0)
            for b in range(self.buckets)
        ]
        answer = answer_sum / max(answer_count, 1.0) if self.answer_mask is not None else None
        return sum(sums) / max(sum(counts), 1.0), buckets, answer


def _round2_trainer(task: QualityTask, arm: str, settings: dict, seed: int, cache_dir, epochs):
    trainer = _trainer(task, settings, seed, cache_dir)  # type: ignore[arg-type]
    schedule = clean_schedule(task, epochs) if ROUND2_ARMS[arm][1].get("mixture") else None
    trainer.add_curriculum_stage(
        task.kind, task.datasets(), epochs=epochs, mixture_schedule=schedule
    )
    return trainer


def round2_epochs(task: QualityTask, arm: str, settings: dict, seed: int, cache_dir, budget):
    """The epochs whose planned tokens come closest to ``budget`` (ties: more; at least 2 for
    arm q, whose mixture changes between epochs). The budget is the baseline's whole stage, so
    every arm's schedule ends near it: one whole epoch more or less would move it by a fifth
    or more (an arm whose rows are cut during a warm-up holds a few percent fewer tokens)."""
    from highnoon.training.report import stage_report

    def tokens(epochs: int) -> int:
        trainer = _round2_trainer(task, arm, settings, seed, cache_dir, epochs)
        (plan,) = trainer.plan(epochs_per_stage=None)
        return int(stage_report(plan, samples=0)["total_tokens"])

    epochs = 2 if ROUND2_ARMS[arm][1].get("mixture") else 1
    planned = tokens(epochs)
    while planned < budget:
        epochs += 1
        planned = tokens(epochs)
    if epochs > 1 and not (ROUND2_ARMS[arm][1].get("mixture") and epochs == 2):
        fewer = tokens(epochs - 1)
        if budget - fewer < planned - budget:
            return epochs - 1
    return epochs


def round2_tokens_per_step(task: QualityTask, cache_dir: str | None) -> float:
    """Target tokens of an average baseline step over the bulk and the clean set together."""
    from highnoon.training.report import stage_report

    settings = round2_settings("a", task, 1)
    trainer = _round2_trainer(task, "a", settings, 0, cache_dir, 1)
    (plan,) = trainer.plan(epochs_per_stage=None)
    report = stage_report(plan, samples=0)
    return report["total_tokens"] / report["total_steps"]


def round2_planned_tokens(task: QualityTask, budget: int, cache_dir: str | None) -> int:
    """Target tokens of the baseline's stage at the fewest epochs that reach ``budget``."""
    from highnoon.training.report import stage_report

    settings = round2_settings("a", task, task.budget_steps)
    epochs = round2_epochs(task, "a", settings, 0, cache_dir, budget)
    (plan,) = _round2_trainer(task, "a", settings, 0, cache_dir, epochs).plan(epochs_per_stage=None)
    return int(stage_report(plan, samples=0)["total_tokens"])


def run_one_round2(
    task_name: str, task: QualityTask, arm: str, seed: int, options: argparse.Namespace,
    budget: int, evaluator: CleanEvaluator,
) -> dict[str, Any]:  # fmt: skip
    """Trains one second-round (task, arm, seed) through its whole planned stage (so every
    schedule reaches its end), evaluating the clean held-out set about ``EVALS_PER_RUN``
    times; the averaging arms are evaluated on their averaged weights."""
    import gc

    import keras

    from highnoon.curriculum import SequenceLengthWarmup

    settings = round2_settings(arm, task, task.budget_steps)
    epochs = round2_epochs(task, arm, settings, seed, options.cache_dir, budget)
    if ROUND2_ARMS[arm][1].get("mixture"):  # the decay covers the clean-heavy epochs exactly
        settings["lr_decay_steps"] = clean_epochs(epochs) / epochs
    trainer = _round2_trainer(task, arm, settings, seed, options.cache_dir, epochs)
    scale = ROUND2_ARMS[arm][1].get("scale", 1)
    interval = max(task.budget_steps // scale // EVALS_PER_RUN, 1)
    points: list[dict[str, Any]] = []
    clock = {"start": 0.0, "eval": 0.0}
    warmup = SequenceLengthWarmup(
        task.max_seq_length,
        settings.get("seq_length_warmup_steps", 0),
        settings.get("seq_length_warmup_start", task.max_seq_length),
    )
    row_tokens = _row_tokens_counter(warmup, settings["batch_size"])

    def evaluate(step: int) -> None:
        began = time.perf_counter()
        average = trainer._built.average
        with average.swapped() if average is not None else contextlib.nullcontext():
            loss, buckets, answer = evaluator(trainer.model)
        points.append(
            {
                "step": step,
                "tokens": trainer._position.tokens_seen,
                "loss": loss,
                "answer_loss": answer,
                "buckets": buckets,
                "seconds": began - clock["start"] - clock["eval"],
                "row_tokens": row_tokens(step),
            }
        )
        clock["eval"] += time.perf_counter() - began

    def record(event: dict[str, Any]) -> None:
        if event["event"] == "train_begin":
            clock["start"] = time.perf_counter()
        elif event["event"] == "log":
            evaluate(event["step"])
        elif event["event"] == "stage_complete" and trainer._position.global_step % interval:
            evaluate(trainer._position.global_step)

    trainer.add_callback(record)
    trainer.train(save_checkpoints=False, log_interval=interval, eval_interval=10**9)
    trainer.stages = []  # the model and data go with this frame; free the Keras graph now
    keras.backend.clear_session()
    gc.collect()
    return {
        "round": 2,
        "task": task_name,
        "arm": arm,
        "seed": seed,
        "settings": settings,
        "epochs": epochs,
        "budget_tokens": budget,
        "eval_interval": interval,
        "curve": points,
    }


def run_round2(names: Sequence[str], tasks: dict, arms: Sequence[str], options, path: str):
    """Every (task, seed, arm) of the second round not yet in the results file."""
    done = {(r["task"], r["arm"], r["seed"]) for r in read_results(path)}
    for name in names:
        task = tasks[name]
        task.register()
        # B: the tokens of the baseline's whole planned stage (its fewest epochs reaching
        # budget_steps' worth), so its schedule ends at B and the loss at B is its last
        budget = int(task.budget_steps * round2_tokens_per_step(task, options.cache_dir))
        budget = round2_planned_tokens(task, budget, options.cache_dir)
        evaluator = CleanEvaluator(task.held_out_texts(), task.max_seq_length, kind=task.kind)
        for seed in range(options.seeds):
            for arm in arms:
                if (name, arm, seed) in done:
                    continue
                started = time.time()
                record = run_one_round2(name, task, arm, seed, options, budget, evaluator)
                record["wall_seconds"] = time.time() - started
                append_result(path, record)
                print(
                    f"{name} {arm} seed {seed}: clean held-out {record['curve'][-1]['loss']:.4f} "
                    f"at {record['curve'][-1]['tokens']:,} tokens "
                    f"({record['wall_seconds']:.0f} s)",
                    flush=True,
                )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round", type=int, choices=(1, 2), default=1, help="which study")
    parser.add_argument("--quick", action="store_true", help="arithmetic only, small budget")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of the tasks")
    parser.add_argument("--arms", default=None, help="comma-separated arm letters (default all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--pacing", default=COMMON["pacing"], help="pacing of arms b-e")
    parser.add_argument("--initial_fraction", type=float, default=COMMON["initial_fraction"])
    parser.add_argument("--target_fraction", type=float, default=0.5)
    parser.add_argument("--target_loss", type=float, default=None)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--name", default=None, help="results file stem (default by size)")
    parser.add_argument("--cache_dir", default=None, help="token store cache (default: HOME's)")
    parser.add_argument("--analyze", action="store_true", help="only analyse the results file")
    options = parser.parse_args(argv)

    second = options.round == 2
    table = ROUND2_ARMS if second else ARMS
    if second:
        tasks_table: dict[str, Any] = ROUND2_QUICK if options.quick else ROUND2_TASKS
    else:
        tasks_table = QUICK_TASKS if options.quick else TASKS
    names = options.tasks.split(",") if options.tasks else list(tasks_table)
    unknown = [n for n in names if n not in tasks_table]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; known: {list(tasks_table)}")
    arms = options.arms.split(",") if options.arms else list(table)
    bad_arms = [a for a in arms if a not in table]
    if bad_arms:
        parser.error(f"unknown arm(s) {bad_arms}; known: {list(table)}")
    if options.seeds < 1:
        parser.error(f"--seeds={options.seeds} must be >= 1")
    if not 0 < options.target_fraction <= 1:
        parser.error(f"--target_fraction={options.target_fraction} must be in (0, 1]")
    stem = options.name or (
        "curriculum_value" + ("_round2" if second else "") + ("_quick" if options.quick else "")
    )
    results_path = os.path.join(options.output, stem + ".jsonl")

    if not options.analyze and second:
        _check_round2_settings(names, tasks_table, arms)
        run_round2(names, tasks_table, arms, options, results_path)
    elif not options.analyze:
        _check_settings(names, tasks_table, arms, options)
        done = {(r["task"], r["arm"], r["seed"]) for r in read_results(results_path)}
        for name in names:
            task = tasks_table[name]
            per_step = full_data_tokens_per_step(task, options.cache_dir)
            budget = int(task.budget_steps * per_step)
            for seed in range(options.seeds):
                for arm in arms:
                    if (name, arm, seed) in done:
                        continue
                    started = time.time()
                    record = run_one(name, task, arm, seed, options, budget, task.budget_steps)
                    record["wall_seconds"] = time.time() - started
                    append_result(results_path, record)
                    print(
                        f"{name} {arm} seed {seed}: held-out {record['curve'][-1]['loss']:.4f} "
                        f"at {record['curve'][-1]['tokens']:,} tokens "
                        f"({record['wall_seconds']:.0f} s)",
                        flush=True,
                    )
    analyze(results_path, names, options, table)


def _check_round2_settings(names, tasks_table, arms) -> None:
    """Every second-round arm's settings are valid Trainer settings before anything trains."""
    from highnoon.training.settings import split_settings

    for name in names:
        for arm in arms:
            settings = round2_settings(arm, tasks_table[name], tasks_table[name].budget_steps)
            try:
                split_settings(settings)
            except ValueError as error:
                raise SystemExit(f"arm {arm} on {name}: {error}") from None


def _check_settings(names, tasks_table, arms, options) -> None:
    """Every arm's settings are valid for every task before anything trains (an unknown
    pacing, a bad fraction, a warm-up the stage cannot hold fail here, with the Trainer's
    message)."""
    from highnoon.training.settings import StageSettings

    for name in names:
        task = tasks_table[name]
        for arm in arms:
            settings = arm_settings(arm, task, task.budget_steps, options)
            stage = {k: v for k, v in settings.items() if k in StageSettings.__dataclass_fields__}
            try:
                StageSettings(**stage)
            except ValueError as error:
                raise SystemExit(f"arm {arm} on {name}: {error}") from None


def answer_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs with their answer loss as the loss (per-quartile values dropped), for the same
    tables; empty unless every evaluation of every run has one."""
    points = [p for run in runs for p in run["curve"]]
    if not points or any(p.get("answer_loss") is None for p in points):
        return []
    return [
        {**run, "curve": [{**p, "loss": p["answer_loss"], "buckets": []} for p in run["curve"]]}
        for run in runs
    ]


def analyze(
    results_path: str,
    names: Sequence[str],
    options: argparse.Namespace,
    arms_table: dict[str, tuple[str, dict[str, Any]]] | None = None,
) -> None:
    """Tables (stdout and .md) and the plot from the results file."""
    runs = read_results(results_path)
    if not runs:
        raise SystemExit(f"no results in {results_path}; run the study first (without --analyze)")
    by_task: dict[str, list[dict]] = {}
    for run in runs:
        if run["task"] in names:
            by_task.setdefault(run["task"], []).append(run)
    summaries = {
        task: summarize_task(
            task, task_runs, options.target_fraction, options.target_loss, arms_table
        )
        for task, task_runs in by_task.items()
    }
    for task, task_runs in list(by_task.items()):  # the second round's skill-only metric
        answers = answer_runs(task_runs)
        if answers:
            label = f"{task}, answer tokens only"
            by_answer = summarize_task(label, answers, options.target_fraction, None, arms_table)
            by_answer.target_source += " (loss on the results / closing brackets alone)"
            summaries[label] = by_answer
    text = "\n".join(format_task(summary) for summary in summaries.values())
    stem = os.path.splitext(results_path)[0]
    from highnoon.utils.files import atomic_write_text

    atomic_write_text(stem + ".md", text)
    print(text)
    try:
        print("plot:", plot(by_task, summaries, stem + ".png", arms_table))
    except ImportError as error:
        print(f"no plot: {error}", file=sys.stderr)


if __name__ == "__main__":
    main()
