"""Bytes each replica sends per collective and per training step (pure Python).

Costs are those of the bandwidth-optimal ring algorithms the strategies use, with
``f = (N - 1) / N`` for N replicas and ``B`` the bytes of the whole (unsharded) tensor:

* all-reduce              2 f B   (reduce-scatter, then all-gather)
* reduce-scatter            f B
* all-gather                f B   (a true all-gather: MultiWorkerMirroredStrategy's
                                   CollectiveGatherV2, or the all-to-all used on TPUs)
* masked all-gather       2 f B   (``ReplicaContext.all_gather`` under TPUStrategy: an all-reduce
                                   of an N-times buffer that is zero outside the own share)

``TrafficLog`` adds these up for the collectives a step really issues: the sharded step logs each
collective when it is traced (every micro-batch and every recomputation is traced once per step),
so the total is the step's traffic as the program stands, not an assumption about it.
``step_traffic`` gives the same figure from a model config alone, for the README table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from highnoon.models.config import ModelConfig
from highnoon.models.memory import share_elements
from highnoon.utils.validation import check_choice, check_int

KINDS = ("all_reduce", "reduce_scatter", "all_gather", "masked_all_gather")
_FACTOR = {"all_reduce": 2.0, "reduce_scatter": 1.0, "all_gather": 1.0, "masked_all_gather": 2.0}


def collective_bytes(kind: str, nbytes: int, num_replicas: int) -> float:
    """Bytes one replica sends for one collective over a ``nbytes`` (whole) tensor."""
    check_choice("kind", kind, KINDS)
    n = check_int("num_replicas", num_replicas, minimum=1)
    return _FACTOR[kind] * (n - 1) / n * nbytes


@dataclass
class TrafficLog:
    """The collectives a traced step issues: (kind, whole-tensor bytes) in program order."""

    entries: list[tuple[str, int]] = field(default_factory=list)

    def add(self, kind: str, nbytes: int) -> None:
        check_choice("kind", kind, KINDS)
        self.entries.append((kind, int(nbytes)))

    def bytes_sent(self, num_replicas: int) -> float:
        """Bytes one replica sends over all logged collectives."""
        return sum(collective_bytes(k, b, num_replicas) for k, b in self.entries)

    def clear(self) -> None:
        self.entries.clear()


def step_traffic(
    config: ModelConfig,
    sharding: object,
    num_replicas: int,
    *,
    accumulation_steps: int = 1,
    true_reduce_scatter: bool = False,
    tpu_masked_gather: bool = False,
    param_bytes: int = 4,
) -> float:
    """Bytes one replica sends per optimizer step for the model's gradients and weights (the
    few scalar all-reduces of token counts and norms are left out).

    ``true_reduce_scatter``: gradients are reduce-scattered (TPU) rather than all-reduced and
    sliced (CPU, GPU). ``tpu_masked_gather``: weights are gathered with TPUStrategy's masked
    all-reduce instead of a true all-gather.
    """
    from highnoon.training.sharding.levels import ShardingLevel

    level = ShardingLevel.parse(sharding)
    a = check_int("accumulation_steps", accumulation_steps, minimum=1)
    n = check_int("num_replicas", num_replicas, minimum=1)
    # All-reduces move the whole tensors; gathers and true reduce-scatters move the N equal
    # shares, padding included (highnoon/training/sharding/layout.py).
    weights = config.num_parameters() * param_bytes
    padded = share_elements(config, n) * n * param_bytes
    scatter = ("reduce_scatter", padded) if true_reduce_scatter else ("all_reduce", weights)
    gather = ("masked_all_gather" if tpu_masked_gather else "all_gather", padded)
    cost = lambda kind_and_bytes: collective_bytes(*kind_and_bytes, n)  # noqa: E731
    if level is None:
        return cost(("all_reduce", weights))
    if not level.shards_weights:
        # The whole local gradients scatter once a step, or each micro-batch's as it exists.
        return (a if level.shards_gradients else 1) * cost(scatter) + cost(gather)
    # full: each micro-batch gathers every segment in the forward pass and again when it is
    # recomputed in the backward pass, and reduce-scatters its gradient; a tied embedding is
    # used (gathered, reduce-scattered) twice, by the embedding and by the head segment.
    if config.tie_embeddings:
        tied = config.vocab_size * config.d_model
        tied_padded = -(-tied // n) * n * param_bytes
        scatter = (
            scatter[0],
            scatter[1] + (tied_padded if true_reduce_scatter else tied * param_bytes),
        )
        gather = (gather[0], gather[1] + tied_padded)
    return a * (2 * cost(gather) + cost(scatter))
