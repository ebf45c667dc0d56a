"""``evaluate_run``: score a highnoon run on lm-eval tasks from Python, names checked first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from highnoon.evaluation import tasks as task_lib


def check_tasks(tasks: str | Sequence[str], include_path: str | None = None) -> tuple[str, ...]:
    """The task names, after checking lm-eval knows each one (``include_path``'s task YAML
    files first, then its built-in tasks); an unknown name is an ``InvalidArgumentError``
    naming it. Nothing is loaded but lm-eval's task index."""
    names = task_lib.check_task_names(tasks)
    task_lib.task_manager(names, include_path)
    return names


def evaluate_run(
    model_dir: str,
    tasks: str | Sequence[str],
    *,
    include_path: str | None = None,
    checkpoint: str | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    max_length: int | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """lm-eval's results for the run in ``model_dir`` on ``tasks`` (``simple_evaluate``'s
    dict; ``flat_scores`` turns it into ``{"task/metric": value}``). Task names are checked
    before the model is loaded."""
    names = check_tasks(tasks, include_path)
    manager = task_lib.task_manager(names, include_path)
    from highnoon.evaluation.lm_eval_model import HighNoonEvalLM

    lm = HighNoonEvalLM(
        model_dir=model_dir,
        checkpoint=checkpoint,
        batch_size=batch_size,
        max_length=max_length,
        tokenizer=tokenizer,
    )
    return task_lib.run_tasks(
        lm, names, include_path=include_path, limit=limit, num_fewshot=num_fewshot, manager=manager
    )
