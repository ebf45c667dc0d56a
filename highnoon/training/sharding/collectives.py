"""The sharded step's collectives, inside one replica (``strategy.run``), with their traffic.

Two implementations behind one switch (``collectives=`` of the sharded step):

* ``portable`` (MultiWorkerMirroredStrategy, MirroredStrategy, TPUStrategy): ``ReplicaContext``'s
  public all-reduce and all-gather. TensorFlow offers no reduce-scatter there (the strategies'
  collective launcher has none, and ``CollectiveReduceScatterV2`` runs on NCCL only), so a
  reduce-scatter is an all-reduce followed by taking the own share: twice the traffic of a true
  reduce-scatter, the same as the unsharded step's all-reduce.
* ``xla`` (TPUStrategy only; the whole replica step is one XLA computation there): a true
  reduce-scatter (``XlaReduceScatter``, the HLO reduce-scatter) and an all-gather through
  all-to-all of the share tiled N times (N-1 shares sent per replica, as a true all-gather;
  ``ReplicaContext.all_gather`` on TPUs is an all-reduce of an N-times buffer, twice that).

``auto`` picks ``xla`` under TPUStrategy and ``portable`` elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from highnoon.training.sharding.layout import ShardSpec
from highnoon.training.sharding.levels import COLLECTIVES
from highnoon.training.sharding.traffic import TrafficLog
from highnoon.utils.validation import InvalidArgumentError, check_choice


def resolve_collectives(mode: str, strategy: tf.distribute.Strategy) -> str:
    """``portable`` or ``xla`` for ``mode`` under ``strategy``; ``xla`` needs TPUStrategy."""
    check_choice("collectives", mode, COLLECTIVES)
    on_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    if mode == "auto":
        return "xla" if on_tpu else "portable"
    if mode == "xla" and not on_tpu:
        raise InvalidArgumentError(
            f"collectives='xla' needs TPUStrategy (the step's collectives run inside one XLA "
            f"computation only there), not {type(strategy).__name__}; use collectives='auto' "
            "(xla on TPU, portable elsewhere) or 'portable'"
        )
    return mode


class Collectives:
    """Portable collectives of the current replica; every call logs its traffic."""

    def __init__(self, num_replicas: int, log: TrafficLog | None = None, *, on_tpu: bool = False):
        self.ctx = tf.distribute.get_replica_context()
        self.num_replicas = num_replicas
        self.log = log if log is not None else TrafficLog()
        self._gather_kind = "masked_all_gather" if on_tpu else "all_gather"

    @property
    def replica_id(self) -> tf.Tensor:
        return self.ctx.replica_id_in_sync_group

    def all_reduce(self, tensors: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Sums over replicas (one batched all-reduce)."""
        for t in tensors:
            self.log.add("all_reduce", _nbytes(t))
        return list(self.ctx.all_reduce(tf.distribute.ReduceOp.SUM, list(tensors)))

    def reduce_scatter(
        self, tensors: Sequence[tf.Tensor], specs: Sequence[ShardSpec], *, chained: bool = False
    ):
        """Each replica's share of the sum over replicas: all-reduce, then the own slice.
        ``chained``: one tensor at a time, so only one whole-size sum is alive at once (for the
        whole model's gradients; a segment's, at level "full", go in one batch)."""
        if not chained:
            summed = self.all_reduce(_static(tensors, specs))
            return [spec.shard(t, self.replica_id) for t, spec in zip(summed, specs)]
        shares: list[tf.Tensor] = []
        for t, spec in zip(_static(tensors, specs), specs):
            with tf.control_dependencies(shares[-1:]):
                (summed,) = self.all_reduce([t])
            shares.append(spec.shard(summed, self.replica_id))
        return shares

    def _gather_flat(self, shards: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        return list(self.ctx.all_gather(list(shards), axis=0))

    def all_gather(self, shards: Sequence[tf.Tensor], specs: Sequence[ShardSpec]):
        """Whole tensors (their own shapes) from every replica's share."""
        for s in shards:
            self.log.add(self._gather_kind, _nbytes(s) * self.num_replicas)
        return [spec.unshard(g) for g, spec in zip(self._gather_flat(shards), specs)]

    def gather_weights(self, shards: Sequence[tf.Tensor], specs: Sequence[ShardSpec]):
        """``all_gather`` whose gradient is the reduce-scatter of the incoming gradient: the
        gradient of a replica's share is its slice of the gradient summed over replicas."""
        specs = list(specs)

        @tf.custom_gradient
        def gather(*parts):
            def grad(*upstream):
                return self.reduce_scatter(upstream, specs)

            return self.all_gather(parts, specs), grad

        return gather(*shards)


class XlaCollectives(Collectives):
    """TPU collectives inside the replica's XLA computation: true reduce-scatter and
    all-gather (see the module docstring). Never run on this project's CPU tests; the
    reduce-scatter's HLO is checked to compile (tests/test_sharding.py)."""

    def __init__(self, num_replicas: int, log: TrafficLog | None = None):
        super().__init__(num_replicas, log)
        self._gather_kind = "all_gather"
        self._group = [list(range(num_replicas))]

    def reduce_scatter(
        self, tensors: Sequence[tf.Tensor], specs: Sequence[ShardSpec], *, chained: bool = False
    ):
        """XLA's own reduce-scatter, which holds only the share (``chained`` changes nothing:
        XLA schedules the whole computation)."""
        from tensorflow.compiler.tf2xla.ops import gen_xla_ops

        out = []
        for t, spec in zip(_static(tensors, specs), specs):
            self.log.add("reduce_scatter", _nbytes(t))
            out.append(
                gen_xla_ops.xla_reduce_scatter(
                    tf.reshape(spec.split(t), [-1]),
                    group_assignment=tf.constant(self._group, tf.int32),
                    scatter_dimension=0,
                    reduce_op="Add",
                )
            )
        return out

    def _gather_flat(self, shards: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        from tensorflow.python.tpu.ops import tpu_ops

        n = self.num_replicas
        # all-to-all of the share tiled N times: replica j receives every replica's share in
        # replica order, which is the all-gather (each replica sends N-1 shares).
        return [
            tpu_ops.all_to_all(
                tf.tile(s, [n]),
                concat_dimension=0,
                split_dimension=0,
                split_count=n,
                group_assignment=self._group,
            )
            for s in shards
        ]


def make_collectives(mode: str, num_replicas: int, log: TrafficLog, *, on_tpu: bool):
    """The collectives of the current replica for a resolved ``mode``."""
    if mode == "xla":
        return XlaCollectives(num_replicas, log)
    return Collectives(num_replicas, log, on_tpu=on_tpu)


def _static(tensors: Sequence, specs: Sequence[ShardSpec]) -> list[tf.Tensor]:
    """Dense tensors with their variables' static shapes (a gradient may have lost them, e.g.
    through a batch dimension unknown when traced, or out of an XLA-compiled segment)."""
    return [tf.reshape(tf.convert_to_tensor(t), spec.shape) for t, spec in zip(tensors, specs)]


def _nbytes(t: tf.Tensor) -> int:
    return int(t.shape.num_elements()) * t.dtype.size
