"""What a curriculum will do, before compute is spent; what it did, after.

``stage_report(plan)`` describes one planned stage from its data and settings alone (no
training): per epoch the pool size, how many samples join it and how hard they are (quantiles of
the stage's difficulty scores, ``StagePlan.difficulty_strategy``), the steps, the row lengths and
the target tokens (exactly what the Trainer will count in ``tokens_seen``), plus texts from the
easiest and hardest ends. ``measure_step_seconds`` times a few real optimizer steps of each row
shape, and ``time_estimate`` turns them into a run time. ``run_history(model_dir)`` reads a
trained run's summaries back (loss, pool fraction and row length per logged step, evaluations),
and ``plots`` draws both. ``highnoon-curriculum-report`` is the program around them.

An adaptive stage's pool grows when the training loss plateaus, so its epochs cannot be listed in
advance: its report lists the pool's levels instead, and its totals are a range, from never
growing (what ``StagePlan.planned_steps`` counts) to growing every ``min_epochs_per_stage``.
"""

from __future__ import annotations

import json
import os
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
    difficulty = plan.difficulty_scores()[plan.train_indices]
    order = scheduler.order  # positions in train_indices, the curriculum's order
    ranked = order_from_scores(difficulty)  # easy-to-hard by the difficulty scores
    report: dict[str, Any] = {
        "stage": plan.name,
        "index": plan.index,
        "epochs": plan.epochs,
        "curriculum_strategy": s.curriculum_strategy,
        "pacing": "adaptive" if s.adaptive else (s.pacing if s.curriculum_strategy else "off"),
        "difficulty": plan.difficulty_strategy(),
        "train_samples": int(plan.train_indices.size),
        "eval_samples": int(plan.eval_indices.size),
        "global_batch_size": s.global_batch_size,
        "max_seq_length": s.max_seq_length,
        "seq_length_warmup": (
            {
                "steps": s.seq_length_warmup_steps,
                "lengths": list(plan.seq_warmup.lengths),
                "first_steps": list(plan.seq_warmup.begins),
            }
            if plan.seq_warmup.enabled
            else None
        ),
        "easiest": _texts(plan, plan.train_indices[ranked[:samples]], max_chars),
        "hardest": _texts(plan, plan.train_indices[ranked[::-1][:samples]], max_chars),
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
                "added_difficulty": _quantiles(difficulty[order[previous:pool]]),
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
    if s.adaptive:
        report.update(_adaptive_levels(plan, difficulty, order))
    else:
        report["epochs_table"] = rows
    return report


def _adaptive_levels(plan: StagePlan, difficulty: np.ndarray, order: np.ndarray) -> dict:
    """An adaptive stage: its pool levels and the upper end of its totals."""
    scheduler = plan.scheduler
    pacing = scheduler.pacing
    s = plan.settings
    levels, previous = [], 0
    for level in range(scheduler.num_stages + 1):
        fraction = pacing.stage_fraction(level)
        pool = pacing_lib.pool_size(fraction, scheduler.num_samples, s.global_batch_size)
        lengths = plan.store.features.lengths[plan.train_indices[order[:pool]]]
        levels.append(
            {
                "level": level,
                "pool": pool,
                "fraction": fraction,
                "added": pool - previous,
                "added_difficulty": _quantiles(difficulty[order[previous:pool]]),
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
    real batches of ``plan`` cut to ``seq_length``. It trains the model for ``steps + 1`` steps:
    measure on a throw-away Trainer (the report never saves it)."""
    from highnoon.training.inputs import training_dataset
    from highnoon.training.step import StepConfig

    trainer._build([plan])
    config = StepConfig(
        accumulation_steps=plan.settings.gradient_accumulation_steps,
        clip_norm=plan.settings.clip_norm,
        jit_compile=trainer.options.jit_compile,
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
    train_fn(iterator, steps)[0].numpy()
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


# -- a finished run -------------------------------------------------------------------------
class RunHistoryError(ValueError):
    """A model directory holds nothing to plot."""


def run_history(model_dir: str) -> dict[str, Any]:
    """A trained (or training) run's history from ``model_dir``: ``log`` (per logged step:
    ``step``, ``stage``, ``loss``, ``curriculum_fraction``, ``seq_length``) from the TensorBoard
    summaries; ``eval`` (per evaluation: ``step``, ``stage``, ``eval_loss``, ``by_difficulty``)
    from summary.json when the run finished, else from the summaries; ``stages`` (name and last
    step of each completed stage) from summary.json."""
    from highnoon.utils import files

    summaries = os.path.join(model_dir, "summaries")
    summary_path = os.path.join(model_dir, "summary.json")
    scalars, texts = _read_summaries(summaries) if files.isdir(summaries) else ({}, {})
    summary = json.loads(files.read_text(summary_path)) if files.isfile(summary_path) else None
    if not scalars and summary is None:
        raise RunHistoryError(
            f"model_dir={model_dir!r} holds no training history (no summaries/ event files and "
            "no summary.json); point --model_dir at a run trained with write_summaries=True"
        )
    log_steps = sorted(scalars.get("log/loss", {}))
    stage_steps = sorted(texts.get("stage", {}).items())

    def stage_at(step: int) -> str | None:  # the stage of the last log at or before ``step``
        names = [name for logged, name in stage_steps if logged <= step]
        return names[-1] if names else None

    log = {"step": log_steps, "stage": [stage_at(step) for step in log_steps]}
    for name in ("loss", "curriculum_fraction", "seq_length"):
        values = scalars.get(f"log/{name}", {})
        log[name] = [values.get(step) for step in log_steps]
    if summary is not None and summary.get("eval"):
        records = summary["eval"]
        evals = {
            "step": [e["step"] for e in records],
            "stage": [e["stage"] for e in records],
            "eval_loss": [e["eval_loss"] for e in records],
            "by_difficulty": [e.get("eval_loss_by_difficulty") or [] for e in records],
        }
    else:
        losses = scalars.get("eval/eval_loss", {})
        steps = sorted(losses)
        buckets = sorted(
            int(tag.rsplit("_", 1)[1])
            for tag in scalars
            if tag.startswith("eval/eval_loss_difficulty_")
        )
        evals = {
            "step": steps,
            "stage": [stage_at(step) for step in steps],
            "eval_loss": [losses[step] for step in steps],
            "by_difficulty": [
                [scalars[f"eval/eval_loss_difficulty_{b}"].get(step) for b in buckets]
                for step in steps
            ],
        }
    stages, step = [], 0
    for stage in (summary or {}).get("stages_completed", []):
        step += int(stage.get("steps", 0))
        stages.append({"name": stage["name"], "end_step": step})
    return {"log": log, "eval": evals, "stages": stages}


def _read_summaries(directory: str) -> tuple[dict[str, dict[int, float]], dict[str, dict]]:
    """The scalars and texts of the event files under ``directory``: tag -> {step: value} (a
    step logged again after a resume keeps its latest value)."""
    import tensorflow as tf

    scalars: dict[str, dict[int, float]] = {}
    texts: dict[str, dict[int, str]] = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for record in tf.compat.v1.train.summary_iterator(path):
            for value in record.summary.value:
                if value.metadata.plugin_data.plugin_name == "text":
                    text = tf.make_ndarray(value.tensor).reshape(-1)[0]
                    texts.setdefault(value.tag, {})[int(record.step)] = text.decode("utf-8")
                    continue
                number = (
                    float(tf.make_ndarray(value.tensor))
                    if value.HasField("tensor")
                    else float(value.simple_value)
                )
                scalars.setdefault(value.tag, {})[int(record.step)] = number
    return scalars, texts


# -- plots (matplotlib, imported when drawn) ------------------------------------------------
def plot_plan(reports: list[dict], path: str) -> str:
    """Pool fraction and row length over the planned steps of the whole run, one band per
    stage (an adaptive stage at its slowest growth)."""
    from highnoon.utils.plotting import pyplot, save_figure

    plt = pyplot()
    figure, pool_axis = plt.subplots(figsize=(9, 4))
    length_axis = pool_axis.twinx()
    first = 0
    for r in reports:
        warm = r["seq_length_warmup"]
        if "epochs_table" in r:
            xs, fractions, lengths, step = [], [], [], first
            for row in r["epochs_table"]:
                xs += [step, step + row["steps"]]
                fractions += [row["fraction"]] * 2
                step += row["steps"]
        else:
            xs, fractions = [first, first + r["total_steps"]], [r["levels"][0]["fraction"]] * 2
        pool_axis.plot(xs, fractions, color="tab:blue")
        ends = [first, first + r["total_steps"]]
        if warm:
            points = [first + b for b in warm["first_steps"]] + [ends[1]]
            lengths = [*list(warm["lengths"]), warm["lengths"][-1]]
            length_axis.step(points, lengths, where="post", color="tab:orange")
        else:
            length_axis.plot(ends, [r["max_seq_length"]] * 2, color="tab:orange")
        pool_axis.axvline(first, color="0.8", linewidth=0.8)
        pool_axis.text(first, 1.02, r["stage"], fontsize=8, va="bottom")
        first += r["total_steps"]
    pool_axis.set_xlabel("planned optimizer step")
    pool_axis.set_ylabel("pool (share of the stage's data)", color="tab:blue")
    pool_axis.set_ylim(0, 1.08)
    length_axis.set_ylabel("row length (tokens)", color="tab:orange")
    length_axis.set_ylim(bottom=0)
    pool_axis.set_title("Planned curriculum: pool growth and row length")
    return save_figure(figure, path)


def plot_stage(report: dict, path: str) -> str:
    """One stage: pool size per epoch (bars) and the difficulty of the samples each epoch adds
    (box: quartiles, whiskers: min and max)."""
    from highnoon.utils.plotting import pyplot, save_figure

    plt = pyplot()
    rows = report.get("epochs_table") or report["levels"]
    key = "epoch" if "epochs_table" in report else "level"
    figure, (pool_axis, difficulty_axis) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    xs = [row[key] for row in rows]
    pool_axis.bar(xs, [row["pool"] for row in rows], color="tab:blue", alpha=0.7)
    pool_axis.set_ylabel("pool (samples)")
    pool_axis.set_title(
        f"stage {report['stage']!r}: {report['curriculum_strategy'] or 'no curriculum'}, "
        f"pacing {report['pacing']}"
    )
    stats = [
        {"med": q[2], "q1": q[1], "q3": q[3], "whislo": q[0], "whishi": q[4], "label": str(x)}
        for x, q in ((row[key], row["added_difficulty"]) for row in rows)
        if q is not None
    ]
    positions = [row[key] for row in rows if row["added_difficulty"] is not None]
    if stats:
        difficulty_axis.bxp(stats, positions=positions, showfliers=False)
    difficulty_axis.set_ylabel(f"difficulty added\n({report['difficulty']})")
    difficulty_axis.set_xlabel(key)
    return save_figure(figure, path)


def plot_run(history: dict, path: str, title: str = "") -> str:
    """A trained run: training and held-out loss (and per difficulty bucket) against the step,
    each stage on its own, with the pool fraction and row length it trained on below."""
    from highnoon.utils.plotting import pyplot, save_figure

    plt = pyplot()
    figure, (loss_axis, pool_axis) = plt.subplots(
        2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    log, evals = history["log"], history["eval"]
    buckets = max((len(b) for b in evals["by_difficulty"]), default=0)
    colors = plt.cm.viridis(np.linspace(0.1, 0.9, max(buckets, 1)))
    labelled = set()

    def once(label: str) -> str | None:  # one legend entry per series, not per stage
        if label in labelled:
            return None
        labelled.add(label)
        return label

    for stage in dict.fromkeys(log["stage"] + evals["stage"]):
        steps = [x for x, name in zip(log["step"], log["stage"]) if name == stage]
        losses = [y for y, name in zip(log["loss"], log["stage"]) if name == stage]
        loss_axis.plot(steps, losses, color="0.55", linewidth=1, label=once("training loss"))
        chosen = [i for i, name in enumerate(evals["stage"]) if name == stage]
        xs = [evals["step"][i] for i in chosen]
        loss_axis.plot(
            xs, [evals["eval_loss"][i] for i in chosen], "k-o", markersize=3,
            label=once("held-out"),
        )  # fmt: skip
        for bucket in range(buckets):
            ys = [
                evals["by_difficulty"][i][bucket] if len(evals["by_difficulty"][i]) > bucket
                else None
                for i in chosen
            ]  # fmt: skip
            end = " (easiest)" if bucket == 0 else " (hardest)" if bucket == buckets - 1 else ""
            loss_axis.plot(
                xs, [np.nan if y is None else y for y in ys], "--", color=colors[bucket],
                linewidth=1, label=once(f"held-out, difficulty bucket {bucket}{end}"),
            )  # fmt: skip
    loss_axis.set_ylabel("loss (nats/token)")
    loss_axis.legend(fontsize=7)
    loss_axis.set_title(title or "Training run: loss against pool growth")
    fractions = [(x, y) for x, y in zip(log["step"], log["curriculum_fraction"]) if y is not None]
    if fractions:
        pool_axis.step(*zip(*fractions), where="post", color="tab:blue")
    pool_axis.set_ylim(0, 1.08)
    pool_axis.set_ylabel("pool fraction", color="tab:blue")
    lengths = [(x, y) for x, y in zip(log["step"], log["seq_length"]) if y is not None]
    if lengths:
        length_axis = pool_axis.twinx()
        length_axis.step(*zip(*lengths), where="post", color="tab:orange")
        length_axis.set_ylabel("row length", color="tab:orange")
        length_axis.set_ylim(bottom=0)
    for stage in history["stages"]:
        for axis in (loss_axis, pool_axis):
            axis.axvline(stage["end_step"], color="0.8", linewidth=0.8)
    pool_axis.set_xlabel("optimizer step")
    return save_figure(figure, path)
