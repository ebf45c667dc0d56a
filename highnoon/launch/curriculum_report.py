"""Show what a curriculum will do before compute is spent (and what a finished run did).

    highnoon-curriculum-report --gin_file=runs/quickstart.gin --output=/tmp/quickstart_report
    highnoon-curriculum-report --gin_file=runs/quickstart.gin --gin.Trainer.pacing='root_p' \\
        --output=/tmp/report
    highnoon-curriculum-report --model_dir=/tmp/highnoon_quickstart --output=/tmp/report

(In a checkout, `python -m launch.curriculum_report ...` is the same program.) From the gin
config a training run would use (`--gin_file`/`--gin_bindings`, or the `config.gin` of
`--model_dir`, read as data: its `import` and `include` lines are not run), it builds (or reuses) each stage's token store and, without training, prints per
stage: the pool size at each epoch, how many samples each epoch adds and how hard they are
(min/median/max of the stage's difficulty scores), the steps, row lengths and target tokens per
epoch and in total, sample texts from the easiest and hardest ends; then a time estimate from a
few measured optimizer steps of every row shape (`--measure_steps=0` skips it). It writes the
same as report.txt and report.json, and PNG plots, to `--output`: plan.png (pool growth and row
length over the planned steps) and stage_<i>.png (pool and difficulty added per epoch). With
`--model_dir` it also plots the run found there: run.png, its training and held-out loss (per
difficulty bucket) against the pool fraction and row length it trained on.

Plots need matplotlib: pip install 'highnoon[plot]'.
"""

from __future__ import annotations

import json
import os
from typing import Any

from absl import app, flags, logging

from highnoon.launch import flags as hn_flags  # defines --gin_file, --gin_bindings, --model_dir
from highnoon.launch import program
from highnoon.utils import validation

FLAGS = flags.FLAGS

flags.DEFINE_string("output", None, "Directory for report.txt, report.json and the PNG plots.")
flags.DEFINE_integer(
    "measure_steps",
    3,
    "Optimizer steps timed per row shape for the time estimate, after one compiling call "
    "(0: no estimate, and no model is built beyond what planning needs).",
)
flags.DEFINE_integer("samples", 3, "Sample texts shown from each end of every stage's order.")

program.check_flag("output", validation.check_str)
program.check_flag("measure_steps", validation.check_int, minimum=0)
program.check_flag("samples", validation.check_int, minimum=0)


class ReportError(ValueError):
    """The report cannot be made from this configuration (the message says why and what to do)."""


def _gin_config(model_dir: str | None) -> tuple[list[str], list[str], str | None]:
    """(gin files, config text, what to say when gin refuses it): --gin_file, else the config.gin a training run wrote
    to --model_dir, read as data: its import and include lines are not run (see
    ``hn_flags.config_without_code``; a model_dir may come from someone else)."""
    if FLAGS.gin_file:
        return list(FLAGS.gin_file), [], None
    if model_dir:
        path = os.path.join(model_dir, "config.gin")
        if not os.path.isfile(path):
            raise ReportError(
                f"--model_dir={model_dir!r} holds no config.gin to plan from; pass the run's "
                "--gin_file(s)"
            )
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        problem = hn_flags.gin_syntax_problem(text)
        if problem:
            raise ReportError(f"{path} is not valid gin: {problem}")
        text, removed = hn_flags.config_without_code(text)
        if removed:
            logging.warning(
                "%s: not running its %d import/include line(s) (%s): reading a model_dir runs "
                "no code it names; pass --gin_file to plan from config files you trust",
                path,
                len(removed),
                "; ".join(removed),
            )
        skipped = (
            " (its import lines are not run when a model_dir is read; pass the run's "
            "--gin_file(s) if you trust them)"
            if removed
            else ""
        )
        return [], [text], f"{path}: {{error}}{skipped}"
    raise app.UsageError("give --gin_file (the training config), or --model_dir of a run")


_DATA_HINT = (
    "the report builds each stage's token store from its datasets, so they must exist: register "
    "them, fix the paths, or prepare them first (highnoon-prepare-data)"
)


def plan_from_gin(strategy: Any = None) -> tuple[Any, list[Any]]:
    """(trainer, stage plans) of the parsed gin config, as ``highnoon-train`` would build them.
    A dataset that cannot be found or read is a ``ReportError`` naming the stage."""
    from highnoon import data as hn_data
    from highnoon.launch import configurables
    from highnoon.training import run as run_lib

    arguments = run_lib.run_training_arguments()
    try:
        run_lib.check_stage_specs(arguments["stages"])
    except ValueError as error:
        raise ReportError(str(error)) from None
    for spec in arguments["stages"]:
        entries = spec["datasets"]
        for entry in [entries] if isinstance(entries, str | tuple) else list(entries):
            try:
                hn_data.validate_dataset_entry(entry)
            except ValueError as error:
                raise ReportError(f"stage {spec['name']!r}: {error}; {_DATA_HINT}") from None
    try:
        trainer = run_lib.build_trainer(
            strategy,
            model=arguments["model"],
            tokenizer=arguments["tokenizer"],
            stages=arguments["stages"],
            model_factory=configurables.create_model,
        )
        plans = trainer.plan()  # the Trainer's epochs_per_stage
    except (ValueError, OSError) as error:
        raise ReportError(str(error)) from None
    return trainer, plans


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.output:
        raise app.UsageError("--output is required (where report.txt, report.json and plots go)")
    try:
        make_report(FLAGS.output, FLAGS.model_dir, FLAGS.measure_steps, FLAGS.samples)
    except (ReportError, ImportError, FileNotFoundError) as error:  # matplotlib, a gin file
        raise app.UsageError(str(error)) from None


def make_report(output: str, model_dir: str | None, measure_steps: int, samples: int) -> dict:
    """The whole report (see the module docstring); returns what report.json holds."""
    # Import every module that registers gin configurables before gin parses (as train does).
    from highnoon.launch import configurables
    from highnoon.training import history as history_lib
    from highnoon.training import report as report_lib
    from highnoon.training import report_plots
    from highnoon.training import run as _run  # noqa: F401
    from highnoon.utils.files import atomic_write_text
    from highnoon.utils.plotting import pyplot

    pyplot()  # matplotlib missing: say so before any store is built
    validation.check_writable_dir("output", output)
    files, saved, refusal = _gin_config(model_dir)
    try:
        hn_flags.parse_gin(files, [*saved, *FLAGS.gin_bindings], FLAGS.gin_search_paths)
    except ValueError as error:
        if refusal is None:
            raise
        raise ReportError(refusal.replace("{error}", str(error).splitlines()[0])) from None
    configurables.register_datasets()
    trainer, plans = plan_from_gin()
    reports = [report_lib.stage_report(plan, samples=samples) for plan in plans]
    estimate, timings = None, {}
    if measure_steps:
        for plan, report in zip(plans, reports):
            for length in report["steps_by_length"]:
                logging.info("timing stage %r at rows of %s tokens", plan.name, length)
                timings[(plan.index, int(length))] = report_lib.measure_step_seconds(
                    trainer, plan, int(length), measure_steps
                )
        estimate = report_lib.time_estimate(reports, timings)
    text = report_lib.format_report(reports, estimate)
    result: dict[str, Any] = {
        "stages": reports,
        "time_estimate": estimate,
        "step_seconds": [
            {"stage": index, "seq_length": length, **timing}
            for (index, length), timing in sorted(timings.items())
        ],
        "plots": [report_plots.plot_plan(reports, os.path.join(output, "plan.png"))],
    }
    for report in reports:
        path = os.path.join(output, f"stage_{report['index']}.png")
        result["plots"].append(report_plots.plot_stage(report, path))
    if model_dir:
        try:
            history = history_lib.run_history(model_dir)
        except history_lib.RunHistoryError as error:
            raise ReportError(str(error)) from None
        result["run"] = history
        result["plots"].append(
            report_plots.plot_run(history, os.path.join(output, "run.png"), title=model_dir)
        )
    atomic_write_text(os.path.join(output, "report.txt"), text)
    atomic_write_text(os.path.join(output, "report.json"), json.dumps(result, indent=2))
    print(text, flush=True)
    print("wrote " + ", ".join(result["plots"]), flush=True)
    return result


def run() -> None:
    """Console-script entry point (``highnoon-curriculum-report``)."""
    hn_flags.run(main, key_flags=(*hn_flags.GIN_FLAGS, "model_dir"))


if __name__ == "__main__":
    run()
