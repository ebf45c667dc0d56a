"""The curriculum report's plots (matplotlib, imported only when one is drawn): the planned pool
and row length of a run, one stage's pools and the difficulty they add, and a trained run's
losses against the pool it trained on."""

from __future__ import annotations

import numpy as np


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
    buckets = buckets if buckets > 1 else 0  # one bucket is the overall loss again
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
