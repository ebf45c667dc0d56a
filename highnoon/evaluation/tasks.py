"""lm-evaluation-harness tasks: names checked before any model is loaded, runs, flat scores.

``task_manager(tasks, include_path)`` indexes the YAML task configs under ``include_path``
first (a few milliseconds) and adds lm-eval's built-in task index (thousands of YAML files,
seconds) only when a name is not found there, so runs on local tasks stay fast. A cached
manager per ``include_path`` serves every later check and run in the process.
``check_tasks`` raises ``InvalidArgumentError`` naming every unknown task (and the include
path searched) before anything expensive happens. ``run_tasks`` runs ``simple_evaluate`` on an
``lm_eval.api.model.LM`` and ``flat_scores`` turns its results into ``{"task/metric": value}``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from highnoon.utils import validation as v

INSTALL_HINT = "pip install 'highnoon[eval]' (lm-eval>=0.4.13,<0.5)"
_MANAGERS: dict[tuple[Any, bool], Any] = {}


def import_lm_eval() -> Any:
    """The ``lm_eval`` package, or an error saying how to install it."""
    try:
        import lm_eval
    except ImportError as error:
        raise v.InvalidArgumentError(
            f"lm-evaluation-harness is not installed ({error}); {INSTALL_HINT}"
        ) from None
    return lm_eval


def _manager(include_path: str | None, defaults: bool) -> Any:
    key = (include_path, defaults)
    if key not in _MANAGERS:
        import_lm_eval()
        from lm_eval.tasks import TaskManager

        _MANAGERS[key] = TaskManager(include_path=include_path, include_defaults=defaults)
    return _MANAGERS[key]


def _unknown(manager: Any, tasks: Sequence[str]) -> list[str]:
    return [name for name in tasks if not manager.match_tasks([name])]


def task_manager(tasks: Sequence[str], include_path: str | None = None) -> Any:
    """A ``TaskManager`` that knows every name in ``tasks``: ``include_path``'s tasks alone
    when they suffice, else with lm-eval's built-in tasks too. Unknown names are an error."""
    tasks = check_task_names(tasks)
    if include_path is not None:
        include_path = v.check_str("lm_eval_include_path", include_path)
        if not os.path.exists(include_path):
            raise v.InvalidArgumentError(
                f"lm_eval_include_path={include_path!r} does not exist; pass a directory (or "
                "YAML file) of lm-eval task configs"
            )
        local = _manager(include_path, False)
        if not _unknown(local, tasks):
            return local
    manager = _manager(include_path, True)
    missing = _unknown(manager, tasks)
    if missing:
        where = f"in {include_path!r} nor " if include_path else ""
        raise v.InvalidArgumentError(
            f"lm-eval task(s) {missing} not found {where}among lm-eval's built-in tasks; check "
            "the names (`lm_eval ls tasks` lists them) or pass the directory of your task YAML "
            "files as include_path / lm_eval_include_path / --include_path"
        )
    return manager


def check_task_names(tasks: Any) -> tuple[str, ...]:
    """``tasks`` as a tuple of non-empty names (a single name is a one-task tuple)."""
    if isinstance(tasks, str):
        tasks = (tasks,)
    if not isinstance(tasks, (list, tuple)) or not all(
        isinstance(t, str) and t.strip() for t in tasks
    ):
        raise v.InvalidArgumentTypeError(
            f"lm_eval_tasks={tasks!r} must be a list of lm-eval task names, e.g. ['hellaswag']"
        )
    return tuple(tasks)


def run_tasks(
    lm: Any,
    tasks: Sequence[str],
    *,
    include_path: str | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    manager: Any = None,
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` of ``lm`` (an ``LM``) on ``tasks``; returns its results."""
    lm_eval = import_lm_eval()
    manager = manager or task_manager(tasks, include_path)
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=manager,
        limit=limit,
        num_fewshot=num_fewshot,
        log_samples=False,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=None,
        fewshot_random_seed=0,
    )


def flat_scores(results: dict[str, Any]) -> dict[str, float]:
    """``{"task/metric": value}`` of the numeric metrics in ``simple_evaluate``'s results
    (lm-eval's ``"acc,none"`` keys become ``acc``, a named filter stays: ``exact_match_strict``),
    sorted by name; standard errors and document counts are left out."""
    scores = {}
    for task, metrics in sorted(results.get("results", {}).items()):
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if "_stderr" in metric or metric == "sample_len" or isinstance(value, bool):
                continue
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            name = metric if filter_name in ("", "none") else f"{metric}_{filter_name}"
            scores[f"{task}/{name}"] = float(value)
    return dict(sorted(scores.items()))
