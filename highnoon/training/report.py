"""What a curriculum will do, before compute is spent.

``stage_report(plan)`` describes one planned stage from its data and settings alone (no
training): per epoch the pool size, how many samples join it and how hard they are (quantiles of
the stage's difficulty scores, ``StagePlan.difficulty_strategy``), the steps, the row lengths and
the target tokens (exactly what the Trainer will count in ``tokens_seen``), plus texts from the
easiest and hardest ends. ``measure_step_seconds`` times a few real optimizer steps of each row
shape, and ``time_estimate`` turns them into a run time; ``format_report`` is the text. A
trained run's history is read by ``history.py``; ``report_plots.py`` draws both.
``highnoon-curriculum-report`` is the program around them.

An adaptive stage's pool grows when the training loss plateaus, so its epochs cannot be listed in
advance: its report lists the pool's levels instead, and its totals are a range, from never
growing (what ``StagePlan.planned_steps`` counts) to growing every ``min_epochs_per_stage``.

A packed stage's steps here are exact: the report packs each epoch whole from every sample's
length (``StagePlan.steps_per_epoch``, O(N), an offline tool's cost). A run packs window by
window and plans its schedule on an estimate (``StagePlan.estimated_epoch_steps``), so the
steps a packed run reports may differ from its schedule's horizon, never from this count.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from highnoon.curriculum import pacing as pacing_lib
from highnoon.curriculum.order import order_from_scores
from highnoon.training.stage_plan import StagePlan

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def _quantiles(values: np.ndarray) -> list[float] | None:
    if values.size == 0:
        return None
    return [float(q) for q in np.quantile(values.astype(np.float64), QUANTILES)]


def _epoch_tokens(plan: StagePlan, epoch: int, first_step: int) -> tuple[int, dict[int, int]]:
    """(target tokens, steps per row length) of ``epoch`` starting at stage step ``first_step``:
    what the Trainer counts (the loss mask), packing included (``StagePlan.step_counts``)."""
    tokens, steps_by_length = 0, {}
    for start, end, length in plan.segments(epoch, first_step):
        tokens += int(plan.step_counts(epoch, length).total(start, end)["tokens"])
        steps_by_length[length] = steps_by_length.get(length, 0) + end - start
    return tokens, steps_by_length


def _texts(plan: StagePlan, indices: np.ndarray, max_chars: int) -> list[str]:
    tokenizer = plan.store.tokenizer
    out = []
    for tokens in plan.store.samples(indices):
        text = tokenizer.decode([int(t) for t in tokens if t != tokenizer.eos_id])
        out.append(text if len(text) <= max_chars else text[: max_chars - 3] + "...")
    return out


def stage_report(plan: StagePlan, samples: int = 3, max_chars: int = 160) -> dict[str, Any]:
    """A planned stage, as plain JSON-able data (see the module docstring)."""
    s = plan.settings
    scheduler = plan.scheduler
    train = plan.train_order[:]  # store indices of the training samples, the curriculum's order
    difficulty = plan.difficulty_scores()[train]  # in the curriculum's order
    ranked = order_from_scores(difficulty)  # easy-to-hard by the difficulty scores
    report: dict[str, Any] = {
        "stage": plan.name,
        "index": plan.index,
        "epochs": plan.epochs,
        "curriculum_strategy": s.curriculum_strategy,
        "pacing": "adaptive" if s.adaptive else (s.pacing if s.curriculum_strategy else "off"),
        "difficulty": plan.difficulty_strategy(),
        "train_samples": int(plan.split.num_train),
        "eval_samples": int(plan.num_eval),
        "global_batch_size": s.global_batch_size,
        "max_seq_length": s.max_seq_length,
        "seq_length_warmup": (
            {
                "steps": plan.seq_warmup.steps,  # a share of the stage, resolved
                "lengths": list(plan.seq_warmup.lengths),
                "first_steps": list(plan.seq_warmup.begins),
            }
            if plan.seq_warmup.enabled
            else None
        ),
        "easiest": _texts(plan, train[ranked[:samples]], max_chars),
        "hardest": _texts(plan, train[ranked[::-1][:samples]], max_chars),
    }
    rows, previous, step, total_tokens = [], 0, 0, 0
    steps_by_length: dict[int, int] = {}
    for epoch in range(plan.epochs):  # an adaptive stage: as if its pool never grew
        pool = scheduler.pool_size(epoch)
        tokens, by_length = _epoch_tokens(plan, epoch, step)
        steps = plan.steps_per_epoch(epoch)
        rows.append(
            {
                "epoch": epoch,
                "pool": pool,
                "fraction": plan.fraction(epoch),
                "added": pool - previous,
                "added_difficulty": _quantiles(difficulty[previous:pool]),
                "steps": steps,
                "tokens": tokens,
                "seq_lengths": sorted(by_length),
            }
        )
        for length, count in by_length.items():
            steps_by_length[length] = steps_by_length.get(length, 0) + count
        previous, step, total_tokens = max(previous, pool), step + steps, total_tokens + tokens
    report.update(
        total_steps=step,
        total_tokens=total_tokens,
        steps_by_length={str(k): v for k, v in sorted(steps_by_length.items())},
    )
    if plan.mixture is not None:
        report["mixture"] = _mixture_rows(plan)
    if s.adaptive:
        report.update(_adaptive_levels(plan, difficulty, train))
    else:
        report["epochs_table"] = rows
    return report


def _mixture_rows(plan: StagePlan) -> list[dict[str, Any]]:
    """A mixed stage's epochs: each dataset entry's weight (a share of the epoch, as the
    entries or the mixture schedule give it; None for unweighted entries) and the samples
    it trains on."""
    rows = []
    for epoch in range(plan.epochs):
        weights = plan.epoch_weights(epoch)
        shares: dict[str, float] | None = None
        if weights is not None:  # a name given twice sums, as its samples do
            shares = {}
            for name, weight in zip(plan.dataset_names, weights):
                shares[name] = shares.get(name, 0.0) + weight / sum(weights)
        rows.append(
            {"epoch": epoch, "shares": shares, "samples": plan.epoch_samples_per_dataset(epoch)}
        )
    return rows


def _adaptive_levels(plan: StagePlan, difficulty: np.ndarray, train: np.ndarray) -> dict:
    """An adaptive stage: its pool levels and the upper end of its totals (``train``: the
    training samples in the curriculum's order, ``difficulty`` their scores)."""
    scheduler = plan.scheduler
    pacing = scheduler.pacing
    s = plan.settings
    levels, previous = [], 0
    for level in range(scheduler.num_stages + 1):
        fraction = pacing.stage_fraction(level)
        pool = pacing_lib.pool_size(fraction, scheduler.num_samples, s.global_batch_size)
        lengths = plan.store.features.lengths[train[:pool]]
        levels.append(
            {
                "level": level,
                "pool": pool,
                "fraction": fraction,
                "added": pool - previous,
                "added_difficulty": _quantiles(difficulty[previous:pool]),
                "steps_per_epoch": pool // s.global_batch_size,
                "tokens_per_epoch": int(np.minimum(lengths, s.max_seq_length).sum()),
            }
        )
        previous = pool
    fastest = [
        levels[min(epoch // s.min_epochs_per_stage, len(levels) - 1)]
        for epoch in range(plan.epochs)
    ]
    # The fastest growth, for the upper end of the totals (rows of max_seq_length: the upper
    # end ignores a sequence-length warm-up, which only lowers it).
    return {
        "levels": levels,
        "total_steps_max": sum(level["steps_per_epoch"] for level in fastest),
        "total_tokens_max": sum(level["tokens_per_epoch"] for level in fastest),
    }


# -- time -----------------------------------------------------------------------------------
def measure_step_seconds(trainer: Any, plan: StagePlan, seq_length: int, steps: int = 3) -> dict:
    """Seconds of the first call (tracing and compiling) and of one optimizer step after it, on
    real batches of ``plan`` cut to ``seq_length``, through the host call a run compiles (its
    ``steps_per_call``). It trains the model for ``steps + 1`` steps: measure on a throw-away
    Trainer (the report never saves it)."""
    from highnoon.training.inputs import training_dataset
    from highnoon.training.step import StepConfig

    trainer._build([plan])
    per_call = trainer.options.steps_per_call
    config = StepConfig(
        accumulation_steps=plan.settings.gradient_accumulation_steps,
        clip_norm=plan.settings.clip_norm,
        jit_compile=trainer.options.jit_compile,
        steps_per_call=per_call,
    )
    train_fn = trainer._step.train_fn(config)
    # The first epoch's real batches; a short epoch times fewer steps (at least the first call).
    steps = min(steps, plan.steps_per_epoch(0) - 1)
    iterator = iter(training_dataset(trainer.strategy, plan, epoch=0, seq_length=seq_length))
    started = time.perf_counter()
    train_fn(iterator, 1)[0].numpy()
    first = time.perf_counter() - started
    if steps < 1:
        return {"first_call": first, "step": first}  # an upper bound: a one-step epoch
    started = time.perf_counter()
    for done in range(0, steps, per_call):
        train_fn(iterator, min(per_call, steps - done))[0].numpy()
    return {"first_call": first, "step": (time.perf_counter() - started) / steps}


def time_estimate(reports: list[dict], timings: dict[tuple[int, int], dict]) -> dict[str, float]:
    """Training seconds of the planned steps from ``timings[(stage index, row length)]``: every
    step at its measured time plus one first call per shape (evaluations not included)."""
    steps = compile_ = 0.0
    for report in reports:
        for length, count in report["steps_by_length"].items():
            timing = timings.get((report["index"], int(length)))
            if timing is None:
                continue
            steps += count * timing["step"]
            compile_ += max(timing["first_call"] - timing["step"], 0.0)
    return {"steps_seconds": steps, "compile_seconds": compile_, "total_seconds": steps + compile_}


# -- text -----------------------------------------------------------------------------------
def _fmt_quantiles(values: list[float] | None) -> str:
    if values is None:
        return "-"
    return " ".join(f"{v:.3g}" for v in (values[0], values[2], values[4]))


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return (
        f"{hours}h{rest // 60:02d}m{rest % 60:02d}s" if hours else f"{rest // 60}m{rest % 60:02d}s"
    )


def format_report(reports: list[dict], estimate: dict[str, float] | None = None) -> str:
    """The report as text: one table per stage, samples from both ends, totals."""
    lines: list[str] = []
    for r in reports:
        warm = r["seq_length_warmup"]
        lines += [
            f"stage {r['index']} {r['stage']!r}: {r['epochs']} epoch(s), "
            f"{r['train_samples']:,} train / {r['eval_samples']:,} held-out samples, "
            f"global batch {r['global_batch_size']}, rows of {r['max_seq_length']} tokens",
            f"  curriculum: {r['curriculum_strategy'] or 'off'}, pacing {r['pacing']}; "
            f"difficulty below = {r['difficulty']} scores (min median max of the samples added)",
        ]
        if warm:
            lines.append(
                f"  sequence-length warm-up over {warm['steps']} steps: lengths "
                + ", ".join(
                    f"{n} from step {b}" for n, b in zip(warm["lengths"], warm["first_steps"])
                )
            )
        if "levels" in r:
            lines.append("  adaptive: the pool grows a level when the training loss plateaus")
            lines.append(
                "  level      pool  fraction     added  difficulty added        steps/epoch"
            )
            for row in r["levels"]:
                lines.append(
                    f"  {row['level']:>5} {row['pool']:>9,} {row['fraction']:>9.3f} "
                    f"{row['added']:>9,}  {_fmt_quantiles(row['added_difficulty']):<22} "
                    f"{row['steps_per_epoch']:>12,}"
                )
            lines.append(
                f"  total: {r['total_steps']:,} to {r['total_steps_max']:,} steps, "
                f"{r['total_tokens']:,} to {r['total_tokens_max']:,} tokens"
            )
        else:
            lines.append(
                "  epoch      pool  fraction     added  difficulty added        steps       tokens"
                "  row lengths"
            )
            for row in r["epochs_table"]:
                lines.append(
                    f"  {row['epoch']:>5} {row['pool']:>9,} {row['fraction']:>9.3f} "
                    f"{row['added']:>9,}  {_fmt_quantiles(row['added_difficulty']):<22} "
                    f"{row['steps']:>6,} {row['tokens']:>12,}  "
                    + ",".join(map(str, row["seq_lengths"]))
                )
            lines.append(f"  total: {r['total_steps']:,} steps, {r['total_tokens']:,} tokens")
        if r.get("mixture"):
            lines.append("  mixture: samples per dataset entry (share of the epoch)")
            for row in r["mixture"]:
                shares = row["shares"] or {}
                lines.append(
                    f"  {row['epoch']:>5}  "
                    + ", ".join(
                        f"{name} {count:,}" + (f" ({shares[name]:.3f})" if name in shares else "")
                        for name, count in row["samples"].items()
                    )
                )
        for end in ("easiest", "hardest"):
            lines.append(f"  {end}:")
            lines += [f"    {json.dumps(text)}" for text in r[end]]
        lines.append("")
    steps = sum(r["total_steps"] for r in reports)
    tokens = sum(r["total_tokens"] for r in reports)
    steps_max = sum(r.get("total_steps_max", r["total_steps"]) for r in reports)
    tokens_max = sum(r.get("total_tokens_max", r["total_tokens"]) for r in reports)
    if steps_max == steps:
        lines.append(f"run: {steps:,} steps, {tokens:,} tokens")
    else:  # adaptive stages
        lines.append(
            f"run: {steps:,} to {steps_max:,} steps, {tokens:,} to {tokens_max:,} tokens "
            "(adaptive stages grow with the loss)"
        )
    if estimate is not None:
        lines.append(
            f"time estimate (training steps on this machine, evaluations not included): "
            f"{_duration(estimate['total_seconds'])} = {_duration(estimate['steps_seconds'])} of "
            f"steps + {_duration(estimate['compile_seconds'])} of compilation"
        )
    return "\n".join(lines) + "\n"
