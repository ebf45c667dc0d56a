"""In-loop lm-evaluation-harness: named lm-eval tasks scored on the live weights every
``eval_interval`` steps (the ``lm_eval_tasks`` setting).

``check_lm_eval_settings`` runs at the Trainer call: lm-eval must be installed, the model must
be one the adapter decodes (a ``HighNoonLM``: ``forward`` and ``decode_step``), and every task
name must exist (``include_path``'s YAML files, then lm-eval's built-in tasks), all before any
data or weights are built.

``LmEvalLoop.evaluate(stage, step)`` is called by the ``Controller`` on every worker at the
same step. Every worker takes the exported model (a collective gather at ``sharding='full'``,
the model itself otherwise); the chief alone runs the tasks (``HighNoonEvalLM`` on those
weights, greedy and seeded, so a repeat gives the same scores) while the others wait; then the
chief's scores reach every worker (``broadcast_json``), so every host reports the same numbers
and leaves the evaluation together. A long evaluation therefore counts against the strategy's
collective timeout on the waiting workers: keep it short with ``lm_eval_limit``.
"""

from __future__ import annotations

from typing import Any

from highnoon.distribute.hosts import is_chief, num_hosts
from highnoon.utils import validation as v


def check_lm_eval_settings(options: Any, model: Any) -> None:
    """The in-loop lm-eval settings are usable: lm-eval installed, a model it can decode,
    every task name known. Nothing when ``lm_eval_tasks`` is empty."""
    if not options.lm_eval_tasks:
        return
    from highnoon.evaluation.tasks import task_manager

    if not (hasattr(model, "decode_step") and hasattr(model, "forward")):
        raise v.InvalidArgumentError(
            f"lm_eval_tasks={list(options.lm_eval_tasks)} scores the live weights through "
            "highnoon's lm-eval adapter, which decodes HighNoonLM models only (it needs "
            f"forward and decode_step); {type(model).__name__} has neither: leave lm_eval_tasks "
            "empty and score exported checkpoints with lm-eval's own models"
        )
    task_manager(options.lm_eval_tasks, options.lm_eval_include_path)


class LmEvalLoop:
    """``evaluate(stage, global_step) -> {"step", "stage", "tasks", "scores"}``."""

    def __init__(self, step: Any, strategy: Any, tokenizer: Any, options: Any) -> None:
        self.step = step
        self.strategy = strategy
        self.tokenizer = tokenizer
        self.options = options
        self.chief = is_chief(strategy)
        self.multi_host = num_hosts(strategy) > 1

    def evaluate(self, stage: str, global_step: int) -> dict[str, Any]:
        model = self.step.export_model()  # every worker: a 'full'-sharded model gathers
        scores: dict[str, float] | None = None
        if self.chief:
            from highnoon.evaluation.lm_eval_model import HighNoonEvalLM
            from highnoon.evaluation.tasks import flat_scores, run_tasks, task_manager

            options = self.options
            tasks = tuple(options.lm_eval_tasks)
            lm = HighNoonEvalLM(
                model=model, tokenizer=self.tokenizer, batch_size=options.lm_eval_batch_size
            )
            results = run_tasks(
                lm,
                tasks,
                limit=options.lm_eval_limit,
                manager=task_manager(tasks, options.lm_eval_include_path),
            )
            scores = flat_scores(results)
        if self.multi_host:
            from highnoon.distribute.broadcast import broadcast_json

            scores = broadcast_json(self.strategy, scores, chief=self.chief)
        return {
            "step": global_step,
            "stage": stage,
            "tasks": list(self.options.lm_eval_tasks),
            "scores": scores,
        }
