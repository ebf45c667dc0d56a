"""Sharding levels and the one decision of whether to shard at all (pure Python).

``None`` trains as today: every replica holds the whole model, its gradients and both AdamW
moments. The three levels follow ZeRO (Rajbhandari et al., 2020) and FSDP:

* ``"optimizer"`` (ZeRO-1): replica r of N keeps only its 1/N share of both AdamW moments and
  updates only its share of the weights, which are then all-gathered.
* ``"gradients"`` (ZeRO-2): as "optimizer", and between micro-batches the accumulated gradients
  are kept only as the replica's share (each micro-batch's gradients are reduce-scattered).
* ``"full"`` (ZeRO-3 / FSDP): the weights too are stored only as shares and gathered segment by
  segment (embedding, each block, head) for the forward and backward passes, each segment
  recomputed in the backward pass so its gathered weights are freed after use.

Users and settings name a level by its string; the step works with ``ShardingLevel``, which
answers what the level shards instead of being compared to strings.

Sharding on one replica shares nothing, so it is a warning, and the run trains unsharded: the
checkpoint is the same either way (full tensors under the unsharded names), so a sharded run can
resume on one replica and the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass

from absl import logging

from highnoon.models.memory import SHARDING_CHOICES as CHOICES
from highnoon.utils.validation import check_choice, check_int

# None first, then from the smallest to the largest memory saving: the order in which the
# memory plan tries them (the list lives with the memory plan, which models need too).
LEVELS = tuple(level for level in CHOICES if level is not None)
COLLECTIVES = ("auto", "portable", "xla")


@dataclass(frozen=True)
class ShardingLevel:
    """One sharding level (``name`` in ``LEVELS``) and what it keeps as per-replica shares."""

    name: str

    def __post_init__(self) -> None:
        check_choice("sharding", self.name, LEVELS)

    @classmethod
    def parse(cls, sharding: object) -> ShardingLevel | None:
        """``sharding`` (None, a level's name, or a ``ShardingLevel``) as a level, or None."""
        if isinstance(sharding, ShardingLevel):
            return sharding
        name = check_level(sharding)
        return None if name is None else cls(name)

    @property
    def shards_gradients(self) -> bool:
        """Gradients carried between micro-batches are shares ("gradients", "full"); at
        "optimizer" the whole local gradients are summed first and scattered once."""
        return self.name != "optimizer"

    @property
    def shards_weights(self) -> bool:
        """The weights live only as shares, gathered segment by segment ("full")."""
        return self.name == "full"

    def __str__(self) -> str:
        return self.name


def check_level(sharding: object) -> str | None:
    """``sharding`` validated: None or one of ``LEVELS`` (a ``ShardingLevel`` gives its name)."""
    if isinstance(sharding, ShardingLevel):
        return sharding.name
    return check_choice("sharding", sharding, CHOICES)


def resolve_sharding(sharding: object, num_replicas: int) -> str | None:
    """The level's name a run on ``num_replicas`` replicas uses: ``sharding`` itself, or None
    (with a warning) on one replica, where every share would be the whole."""
    level = check_level(sharding)
    check_int("num_replicas", num_replicas, minimum=1)
    if level is not None and num_replicas == 1:
        logging.warning(
            "sharding=%r on one replica has nothing to share; training unsharded (checkpoints "
            "are the same either way, so the run can resume sharded on more replicas)",
            level,
        )
        return None
    return level


def resolve_level(sharding: object, num_replicas: int) -> ShardingLevel | None:
    """``resolve_sharding`` as a ``ShardingLevel`` (None: train unsharded)."""
    return ShardingLevel.parse(resolve_sharding(sharding, num_replicas))
