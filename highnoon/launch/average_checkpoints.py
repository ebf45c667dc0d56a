"""Average the last K checkpoints of a highnoon-train run into one model.

    highnoon-average-checkpoints --model_dir=/tmp/run --last=5 --output=/tmp/run_avg5
    highnoon-average-checkpoints --model_dir=/tmp/run --last=3 --output=/tmp/avg3.keras
    highnoon-generate --checkpoint=/tmp/run_avg5 --prompt="def "

(In a checkout, `python -m launch.average_checkpoints ...` is the same program.) The element-wise
mean of the model weights of the run's newest `--last` checkpoints (summed in float32, whatever
the weights' dtype), written as a new checkpoint directory (with the run's model_config.json,
tokenizer and average.json naming the checkpoints averaged) or, for an `--output` ending in
`.keras`, a Keras file. Both load with `highnoon.load_model` and `highnoon-generate`. A run keeps
`max_checkpoints_to_keep` checkpoints (default 3): set it to at least K before training. Any
`tf.io.gfile` path works for `--model_dir`.
"""

from __future__ import annotations

from absl import flags

from highnoon.launch import program
from highnoon.utils import validation

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "The --model_dir of a highnoon-train run.")
flags.DEFINE_integer("last", None, "How many of the run's newest checkpoints to average.")
flags.DEFINE_string(
    "output", None, "A new directory for the averaged checkpoint, or a path ending in .keras."
)
flags.mark_flags_as_required(["model_dir", "last", "output"])

program.check_flag("last", validation.check_int, minimum=1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise SystemExit(f"average_checkpoints: unexpected arguments {argv[1:]}")
    from highnoon.training.checkpoint_average import export_average

    try:
        written = export_average(FLAGS.model_dir, FLAGS.last, FLAGS.output)
    except (ValueError, OSError) as error:
        raise SystemExit(f"average_checkpoints: {error}") from None
    print(written)


def run() -> None:
    """Console-script entry point (``highnoon-average-checkpoints``)."""
    program.run(main)


if __name__ == "__main__":
    run()
