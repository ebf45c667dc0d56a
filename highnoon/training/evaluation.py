"""Held-out evaluation of one stage: loss and perplexity over whole eval batches, overall and per
difficulty bucket; with a weight average (``averaging.py``) the same for the averaged weights.

The eval batches come easiest first (``StagePlan.eval_table``), so each difficulty bucket is a
run of whole batches and its loss is the sum of its batches' losses over their target tokens:
the compiled eval step stays the plain one (loss sum, token count per batch), and a curriculum
that only learns the easy part of the data shows as a low first bucket and high last ones.
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from highnoon.training.averaging import WeightAverage
from highnoon.training.inputs import eval_dataset
from highnoon.training.stage_plan import StagePlan
from highnoon.training.step import TrainStep


class Evaluator:
    """``evaluate(plan, step) -> metrics`` on at most ``max_batches`` eval batches of the stage's
    held-out set (the same batches every time, so evaluations are comparable); ``average``: the
    weight average, evaluated on the same batches after the live weights."""

    def __init__(
        self,
        step: TrainStep,
        strategy: tf.distribute.Strategy,
        max_batches: int,
        *,
        average: WeightAverage | None = None,
    ) -> None:
        self.step = step
        self.strategy = strategy
        self.max_batches = max_batches
        self.average = average

    def evaluate(self, plan: StagePlan, global_step: int) -> dict[str, Any]:
        """``{"step", "stage", "eval_loss", "perplexity"}`` (the loss per target token), plus,
        with difficulty buckets on, ``eval_loss_by_difficulty`` (one loss per bucket, easiest
        first) and ``difficulty_edges`` (the score at each bucket boundary); with a weight
        average, ``eval_loss_average`` and ``eval_loss_by_difficulty_average`` too."""
        sums, counts = self._sums(plan)
        loss = sum(sums) / max(sum(counts), 1.0)
        result: dict[str, Any] = {
            "step": global_step,
            "stage": plan.name,
            "eval_loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
        }
        buckets = plan.eval_buckets(self.max_batches)
        if buckets:
            result["eval_loss_by_difficulty"] = _bucket_losses(sums, counts, buckets)
            result["difficulty_edges"] = plan.eval_bucket_edges(self.max_batches)
        if self.average is not None:
            with self.average.swapped():
                sums, counts = self._sums(plan)
            result["eval_loss_average"] = sum(sums) / max(sum(counts), 1.0)
            if buckets:
                result["eval_loss_by_difficulty_average"] = _bucket_losses(sums, counts, buckets)
        return result

    def _sums(self, plan: StagePlan) -> tuple[list[float], list[float]]:
        """Loss sum and target tokens of every eval batch, in order."""
        batches = plan.eval_batches(self.max_batches)
        dataset = eval_dataset(self.strategy, plan, self.max_batches)
        eval_fn = self.step.eval_fn()
        sums, counts = [], []
        iterator = iter(dataset)
        for _ in range(batches):
            loss_sum, tokens = eval_fn(next(iterator))
            sums.append(float(loss_sum))
            counts.append(float(tokens))
        return sums, counts


def _bucket_losses(
    sums: list[float], counts: list[float], buckets: list[tuple[int, int]]
) -> list[float]:
    return [sum(sums[first:end]) / max(sum(counts[first:end]), 1.0) for first, end in buckets]
