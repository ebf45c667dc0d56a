"""Train a language model through a gin-configured curriculum.

    highnoon-train --gin_file=runs/quickstart.gin --model_dir=/tmp/highnoon_quickstart
    highnoon-train --gin_file=runs/quickstart.gin --gin.Trainer.batch_size=32 --model_dir=...
    highnoon-train --strategy=tpu --tpu=local --gin_file=models/highnoon-3b.gin \\
        --gin_file=curricula/quickstart.gin --gin_file=runs/pretrain.gin --model_dir=gs://...

(In a checkout, `python -m launch.train ...` is the same program.) The same command runs on a
laptop, on every worker of a multi-host cluster (TF_CONFIG, Slurm or --worker_hosts/--task_index)
and on a TPU VM pod. It parses gin, creates the strategy before any other TensorFlow work, then
calls the gin-configurable `run_training`, which writes checkpoints, summaries/, config.gin,
model_config.json and summary.json directly in --model_dir. The chief prints a summary (steps,
stages, tokens, evaluations, wall time) and the sample, if one was asked for, to stdout.
`--gin.NAME=VALUE` is shorthand for `--gin_bindings='NAME = VALUE'`.

Signals: SIGTERM or SIGINT before training began exits with the restart code (42, nothing to
save); during training the run stops at a step every worker agrees on, saves and exits 42; after
the last step (the sample, writing config.gin, shutdown) the run is complete and the program
exits 0 saying so, so no launcher relaunches a finished job.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
from typing import Any

from absl import app, logging

from highnoon.distribute.errors import EXIT_RESTART
from highnoon.launch import flags as hn_flags

FLAGS = hn_flags.FLAGS

SUMMARY_KEYS = ("total_steps", "stages_completed", "tokens_seen", "eval", "wall_time_seconds")


def brief_summary(summary: dict[str, Any]) -> dict[str, Any]:
    """The part of the Trainer's summary printed to stdout (keys in `SUMMARY_KEYS` order)."""
    return {key: summary[key] for key in SUMMARY_KEYS if key in summary}


def report(summary: dict[str, Any]) -> str:
    """What the chief prints when training is done: the brief summary as JSON, then the sample."""
    text = json.dumps(brief_summary(summary), indent=2)
    if "sample" in summary:
        text += f"\n\nSample from the trained model:\n{summary['sample']['text']}"
    return text


def _exit_before_training(signum: int, frame: Any) -> None:
    """SIGTERM/SIGINT outside the Trainer's watch and before its run completed (gin parsing,
    strategy, stores; or a run stopping on an error): there is nothing to save, so exit at once
    with the restart code."""
    del frame
    from highnoon.training import preemption

    when = "while the run was stopping" if preemption.run_started() else "before training began"
    sys.stderr.write(
        f"highnoon-train: {signal.Signals(signum).name} {when}; exiting with the restart code "
        f"{EXIT_RESTART} (nothing to save)\n"
    )
    sys.stderr.flush()
    os._exit(EXIT_RESTART)


def _install_signal_handlers() -> None:
    """SIGTERM/SIGINT outside ``train()``: the restart code before the run completed, success
    after it (the Trainer watches for them while it trains)."""
    from highnoon.training import preemption

    handler = preemption.exit_complete_on_signal("highnoon-train", _exit_before_training)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


def _check_model_dir(model_dir: str | None) -> None:
    """--model_dir is required and must be a writable directory (not a file): refused here,
    before gin, the strategy or any store."""
    from highnoon.utils import validation
    from highnoon.utils.files import is_remote

    if not model_dir:
        raise app.UsageError("--model_dir is required (where checkpoints and summaries go)")
    if is_remote(model_dir):
        return  # probed by the Trainer, once TensorFlow may be used
    try:
        validation.check_writable_dir("model_dir", model_dir)
    except validation.InvalidArgumentError as error:
        raise app.UsageError(f"--{error}; pass a directory path for --model_dir") from None


def main(argv: list[str]) -> None:
    _install_signal_handlers()
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _check_model_dir(FLAGS.model_dir)
    # Import every module that registers gin configurables before gin locks its config.
    from highnoon.distribute import is_chief, peer_failure_guard
    from highnoon.launch import configurables
    from highnoon.training import run as run_lib

    hn_flags.parse_gin_from_flags()
    configurables.register_datasets()  # datasets named in gin (register_datasets.mapping)
    strategy = hn_flags.strategy_from_flags()
    chief = is_chief(strategy)
    hn_flags.set_worker_verbosity(chief)
    with peer_failure_guard():
        summary = run_lib.run_training(
            FLAGS.model_dir,
            strategy,
            config_writer=lambda: hn_flags.write_operative_config(FLAGS.model_dir, chief),
            model_factory=configurables.create_model,  # create_model.NAME bindings apply
        )
    if chief:
        hn_flags.write_operative_config(FLAGS.model_dir, chief)
        print(report(summary), flush=True)
    logging.info("training finished: %d steps", summary["total_steps"])
    atexit.register(_ignore_signals_at_exit)  # runs first: registered last


def _ignore_signals_at_exit() -> None:
    from highnoon.training import preemption

    if preemption.run_completed():
        preemption.ignore_signals_at_exit()


def run() -> None:
    """Console-script entry point (``highnoon-train``)."""
    hn_flags.run(main)


if __name__ == "__main__":
    run()
