"""Held-out evaluation of one stage: loss and perplexity over whole eval batches."""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from highnoon.training.inputs import eval_dataset
from highnoon.training.stage_plan import StagePlan
from highnoon.training.step import TrainStep


class Evaluator:
    """``evaluate(plan, step) -> metrics`` on at most ``max_batches`` eval batches of the stage's
    held-out set (the same batches every time, so evaluations are comparable)."""

    def __init__(self, step: TrainStep, strategy: tf.distribute.Strategy, max_batches: int) -> None:
        self.step = step
        self.strategy = strategy
        self.max_batches = max_batches

    def evaluate(self, plan: StagePlan, global_step: int) -> dict[str, Any]:
        """``{"step", "stage", "eval_loss", "perplexity"}`` (the loss per target token)."""
        batches = plan.eval_batches(self.max_batches)
        dataset = eval_dataset(self.strategy, plan, self.max_batches)
        eval_fn = self.step.eval_fn()
        total, count = 0.0, 0.0
        iterator = iter(dataset)
        for _ in range(batches):
            loss_sum, tokens = eval_fn(next(iterator))
            total += float(loss_sum)
            count += float(tokens)
        loss = total / max(count, 1.0)
        return {
            "step": global_step,
            "stage": plan.name,
            "eval_loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
        }
