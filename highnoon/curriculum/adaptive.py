"""``AdaptiveCurriculumScheduler``: stages advance on the training loss, not a fixed schedule
(numpy only)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from highnoon.curriculum import pacing as pacing_lib
from highnoon.curriculum.scheduler import CurriculumScheduler
from highnoon.utils.validation import InvalidArgumentError, check_float, check_int


class AdaptiveCurriculumScheduler(CurriculumScheduler):
    """Advances stages on the training loss instead of a fixed schedule.

    Stage ``s`` exposes the pacing's level ``s / num_stages`` (with the warm-up staircase
    ``initial_fraction + (1 - initial_fraction) * s / num_stages``). ``update_with_loss(epoch,
    loss)`` is called once per epoch (strictly increasing epochs) with the loss of that epoch
    (the Trainer passes the all-replica mean). With ``k = epoch - stage_start + 1`` epochs done in
    the current stage (``stage_start`` = 0, or the epoch after the last advance):

    * plateau: with the stage's recorded losses ``L``, ``L_prev`` is the loss reported
      ``w = min(plateau_window, len(L) - 1)`` updates before the current one (``w >= 1``
      required); ``(L_prev - L_now) / max(|L_prev|, 1e-12) < loss_threshold_for_progression``;
    * advance if ``k >= min_epochs_per_stage`` and plateau, or always if
      ``k >= max_epochs_per_stage``; never past ``num_stages``.

    An advance decided at epoch ``e`` applies from epoch ``e + 1`` on (epoch ``e`` was trained on
    the old pool). The advance epochs (and the current stage's losses) are part of the state.
    """

    def __init__(
        self,
        loss_threshold_for_progression: float = 0.1,
        min_epochs_per_stage: int = 10,
        max_epochs_per_stage: int = 50,
        *,
        plateau_window: int = 5,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("total_steps") is not None:
            raise InvalidArgumentError(
                f"total_steps={kwargs['total_steps']!r}: the adaptive scheduler decides once per "
                "epoch; leave total_steps=None"
            )
        super().__init__(**kwargs)
        self.loss_threshold_for_progression = check_float(
            "loss_threshold_for_progression", loss_threshold_for_progression, minimum=0.0
        )
        self.min_epochs_per_stage = check_int(
            "min_epochs_per_stage", min_epochs_per_stage, minimum=1
        )
        self.max_epochs_per_stage = check_int(
            "max_epochs_per_stage", max_epochs_per_stage, minimum=self.min_epochs_per_stage
        )
        self.plateau_window = check_int("plateau_window", plateau_window, minimum=1)
        self.advance_epochs: list[int] = []
        self._stage_losses: list[float] = []
        self._last_update: int | None = None

    def stage_at(self, epoch: int) -> int:
        epoch = check_int("epoch", epoch, minimum=0)
        return sum(1 for e in self.advance_epochs if e < epoch)

    def fraction_at(self, epoch: int) -> float:
        return self.pacing.stage_fraction(self.stage_at(epoch))

    def pool_size(self, epoch: int, step: int = 0) -> int:
        self._require_order()
        return pacing_lib.pool_size(
            self.fraction_at(epoch), self.num_samples, self.global_batch_size
        )

    def steps_per_epoch(self, epoch: int, global_batch_size: int | None = None) -> int:
        return self.pool_size(epoch) // self._batch(global_batch_size)

    def _rows(self, epoch, steps, host_id, num_hosts, g):
        order = self.order_at(epoch)
        per_host = g // num_hosts
        cols = np.arange(host_id * per_host, (host_id + 1) * per_host, dtype=np.int64)
        n = self.pool_size(epoch)
        return order[self._permute(epoch, n, steps[:, None] * g + cols[None, :])]

    def update_with_loss(self, epoch: int, current_loss: float) -> bool:
        """Record the loss of ``epoch``; return True if the curriculum advanced a stage."""
        epoch = check_int("epoch", epoch, minimum=0)
        if self._last_update is not None and epoch <= self._last_update:
            raise InvalidArgumentError(
                f"epoch={epoch} must be greater than the last updated epoch {self._last_update}"
            )
        loss = float(current_loss)
        if not math.isfinite(loss):
            raise InvalidArgumentError(f"current_loss={current_loss!r} must be a finite number")
        self._last_update = epoch
        self._stage_losses.append(loss)
        stage = len(self.advance_epochs)
        if stage >= self.num_stages:
            self._epoch = epoch
            return False
        stage_start = self.advance_epochs[-1] + 1 if self.advance_epochs else 0
        done = epoch - stage_start + 1
        window = min(self.plateau_window, len(self._stage_losses) - 1)
        plateau = False
        if window >= 1:
            previous = self._stage_losses[-1 - window]
            improvement = (previous - loss) / max(abs(previous), 1e-12)
            plateau = improvement < self.loss_threshold_for_progression
        advance = done >= self.max_epochs_per_stage or (
            done >= self.min_epochs_per_stage and plateau
        )
        if advance:
            self.advance_epochs.append(epoch)
            self._stage_losses = []
        # get_stage_info() reports the stage the next epoch trains on, prepared or not.
        current = epoch + 1 if advance else epoch
        if self.order is not None:
            self._note_epoch(current)
        else:
            self._epoch = current
        return advance

    def _params(self) -> dict[str, Any]:
        params = super()._params()
        params["adaptive"] = {
            "loss_threshold_for_progression": self.loss_threshold_for_progression,
            "min_epochs_per_stage": self.min_epochs_per_stage,
            "max_epochs_per_stage": self.max_epochs_per_stage,
            "plateau_window": self.plateau_window,
        }
        return params

    def _decisions(self) -> dict[str, Any]:
        return {
            "advance_epochs": list(self.advance_epochs),
            "stage_losses": list(self._stage_losses),
            "last_update": self._last_update,
        }

    def _load_decisions(self, decisions: Mapping[str, Any]) -> None:
        try:
            advances = [int(e) for e in decisions["advance_epochs"]]
            losses = [float(x) for x in decisions["stage_losses"]]
            last = decisions["last_update"]
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidArgumentError(
                f"state['decisions']={decisions!r} is malformed: {error}"
            ) from None
        if advances != sorted(set(advances)) or len(advances) > self.num_stages:
            raise InvalidArgumentError(
                f"state['decisions']['advance_epochs']={advances!r} is invalid"
            )
        self.advance_epochs = advances
        self._stage_losses = losses
        self._last_update = None if last is None else int(last)
