"""Score a highnoon run with lm-evaluation-harness: lm-eval's own command line, with the model
``highnoon`` registered.

    highnoon-lm-eval --model highnoon --model_args model_dir=/runs/r1,batch_size=16 \\
        --tasks my_task --include_path ./my_tasks --limit 100

Every argument is lm-eval's (``lm_eval --help``). lm-eval 0.4.13 has no plugin entry point
for models (its registry knows only its own ``MODEL_MAPPING``), so a bare ``lm_eval --model
highnoon`` cannot find this one: this program registers it and then runs lm-eval's CLI in the
same process. In Python, ``import highnoon.evaluation.lm_eval_model`` registers it for
``lm_eval.simple_evaluate(model="highnoon", ...)``. lm-eval parses the arguments, so this is not
an absl program; it checks the task names (``Tasks not found: ...``) before loading the model.
(In a checkout, ``python -m launch.evaluate ...`` is the same program.)
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Runs lm-eval's CLI on ``argv`` (default ``sys.argv[1:]``) with ``highnoon`` registered."""
    from highnoon.evaluation.tasks import import_lm_eval

    try:
        import_lm_eval()
    except ValueError as error:
        raise SystemExit(f"highnoon-lm-eval: {error}") from None
    from lm_eval.__main__ import cli_evaluate

    from highnoon.evaluation.lm_eval_model import register

    register()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        cli_evaluate()
    except ValueError as error:  # lm-eval's "Tasks not found", ours about model_dir
        raise SystemExit(f"highnoon-lm-eval: {error}") from None


def run() -> None:
    """Console-script entry point (``highnoon-lm-eval``)."""
    main()


if __name__ == "__main__":
    run()
