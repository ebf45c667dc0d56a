"""Train a language model through a gin-configured curriculum.

    python -m launch.train --gin_file=runs/quickstart.gin --model_dir=/tmp/highnoon_quickstart
    python -m launch.train --gin_file=runs/quickstart.gin --gin.Trainer.batch_size=32 ...
    python -m launch.train --strategy=tpu --tpu=local --gin_file=runs/pretrain.gin ...

The same command runs on a laptop, on every worker of a multi-host cluster (TF_CONFIG, Slurm or
--worker_hosts/--task_index) and on a TPU VM pod. It parses gin, creates the strategy before any
other TensorFlow work, then calls the gin-configurable ``run_training``.
"""

from __future__ import annotations

import json

from absl import app, logging

from launch import flags as hn_flags

FLAGS = hn_flags.FLAGS


def main(argv: list[str]) -> None:
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
    with peer_failure_guard():
        summary = run_lib.run_training(
            FLAGS.model_dir,
            strategy,
            config_writer=lambda: hn_flags.write_operative_config(FLAGS.model_dir, chief),
        )
    if chief:
        hn_flags.write_operative_config(FLAGS.model_dir, chief)
        brief = {key: summary[key] for key in ("total_steps", "stages_completed", "tokens_seen")}
        print(json.dumps(brief, indent=2))
        if "sample" in summary:
            print(f"\nSample from the trained model:\n{summary['sample']['text']}")
    logging.info("training finished: %d steps", summary["total_steps"])


def run() -> None:
    """Console-script entry point (``highnoon-train``)."""
    hn_flags.run(main)


if __name__ == "__main__":
    run()
