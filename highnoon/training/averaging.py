"""Weight averaging: an exponential moving average of the weights, kept by the optimizer step.

With ``weight_average=d`` the optimizer keeps, beside every trainable weight ``w``, an average
``a <- d * a + (1 - d) * w`` updated after each optimizer step (``a = w`` after the first). It is
Keras' own ``use_ema`` (``ema_momentum=d``): the averages are optimizer variables, so the run's
checkpoint saves and restores them with the moments and a resume continues them exactly.

Averaged weights often evaluate better than the live ones late in a run, most of all under a
learning rate that does not decay (Luo et al. 2025 recover the gain of an easy-to-hard order
under decay by averaging checkpoints; Kaddour et al. 2022). The run therefore evaluates both
(``eval_loss`` and ``eval_loss_average``) and ``Trainer.export_model()`` exports the average.

Only the unsharded step keeps averages: a sharded step updates its weight shares with its own
AdamW arithmetic (``sharding/adamw.py``), which keeps none, so ``RunOptions`` refuses
``weight_average`` with ``sharding``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import tensorflow as tf

from highnoon.utils import validation as v


class WeightAverage:
    """The moving averages of ``model``'s trainable weights kept by ``optimizer`` (built, with
    ``use_ema``): swap them in for an evaluation, or copy them into a model for export."""

    def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
        inner = getattr(optimizer, "inner_optimizer", optimizer)  # a LossScaleOptimizer's
        if not getattr(inner, "use_ema", False) or not inner.built:
            raise v.InvalidArgumentError(
                f"optimizer={optimizer!r} keeps no weight average: WeightAverage needs a built "
                "optimizer made with use_ema=True (make_optimizer does with weight_average)"
            )
        self.model = model
        self.averages: list[tf.Variable] = list(inner._model_variables_moving_average)

    def values(self) -> list[tf.Tensor]:
        """The averaged weights, in the order of ``model.trainable_variables``."""
        return [tf.convert_to_tensor(average) for average in self.averages]

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside, the model holds the averaged weights; after, its live weights again
        (copied back exactly, whatever happened inside)."""
        variables = self.model.trainable_variables
        live = [tf.identity(variable) for variable in variables]
        try:
            for variable, average in zip(variables, self.values()):
                variable.assign(average)
            yield
        finally:
            for variable, value in zip(variables, live):
                variable.assign(value)

    def export_model(self) -> keras.Model:
        """A new model of the same config holding the averaged weights (the live model keeps
        training unchanged)."""
        model = type(self.model).from_config(self.model.get_config())
        model.build()
        for variable, average in zip(model.trainable_variables, self.values()):
            variable.assign(average)
        return model
