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
"""

from __future__ import annotations

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
    """SIGTERM/SIGINT before the Trainer watches for them (gin parsing, strategy, stores): there
    is nothing to save yet, so exit at once with the restart code."""
    del frame
    sys.stderr.write(
        f"highnoon-train: {signal.Signals(signum).name} before training began; exiting with the "
        f"restart code {EXIT_RESTART} (nothing to save)\n"
    )
    sys.stderr.flush()
    os._exit(EXIT_RESTART)


def main(argv: list[str]) -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):  # the Trainer takes over once it trains
        signal.signal(signum, _exit_before_training)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required (where checkpoints and summaries go)")
    # Import every module that registers gin configurables before gin locks its config.
    from highnoon import data as hn_data
    from highnoon.distribute import is_chief, peer_failure_guard
    from highnoon.distribute import strategy as _strategy  # noqa: F401
    from highnoon.training import run as run_lib

    hn_flags.parse_gin_from_flags()
    hn_data.register_datasets()  # datasets named in gin (register_datasets.mapping)
    strategy = hn_flags.strategy_from_flags()
    chief = is_chief(strategy)
    hn_flags.set_worker_verbosity(chief)
    with peer_failure_guard():
        summary = run_lib.run_training(
            FLAGS.model_dir,
            strategy,
            config_writer=lambda: hn_flags.write_operative_config(FLAGS.model_dir, chief),
        )
    if chief:
        hn_flags.write_operative_config(FLAGS.model_dir, chief)
        print(report(summary), flush=True)
    logging.info("training finished: %d steps", summary["total_steps"])


def run() -> None:
    """Console-script entry point (``highnoon-train``)."""
    hn_flags.run(main)


if __name__ == "__main__":
    run()
