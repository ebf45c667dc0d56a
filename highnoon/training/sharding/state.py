"""The sharded training state that lives on each replica.

Every variable here is replica-local (``synchronization=ON_READ``): each replica reads and writes
its own copy in replica context, no collective involved, and under XLA too. Per trainable
variable of the model, of its ``ShardSpec`` share size S:

* ``m``, ``v``: the replica's share of the two AdamW moments, [S] each;
* ``weights`` (level "full" only): the replica's share of the weight, [S]; the model's own
  variables then have no storage at all (built in a ``keras.StatelessScope``);

and the scalars every replica keeps equal: the step counter (Keras' ``iterations``) and, under
loss scaling, the loss scale and its growth counter.

Whole tensors exist only transiently: ``full_value`` all-gathers one variable (for a checkpoint
save or an export) and ``assign_from_full`` gives each replica its slice of one (initialisation,
restore).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from highnoon.training.sharding.adamw import LossScaling
from highnoon.training.sharding.layout import ShardSpec
from highnoon.utils.validation import InvalidArgumentError


def replica_local(initial: tf.Tensor, name: str) -> tf.Variable:
    """A variable of which each replica holds and updates its own copy."""
    return tf.Variable(
        initial,
        trainable=False,
        name=name,
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )


class ShardedState:
    """Shares of the moments (and weights) of ``variables`` over ``strategy``'s replicas."""

    def __init__(
        self,
        variables: Sequence,
        specs: Sequence[ShardSpec],
        strategy: tf.distribute.Strategy,
        *,
        shard_weights: bool,
        loss_scaling: LossScaling | None,
    ) -> None:
        self.strategy = strategy
        self.specs = list(specs)
        names = [v.path.replace("/", "_") for v in variables]
        with strategy.scope():
            self.m = [
                self._share(spec, v.dtype, f"{n}_m") for spec, v, n in zip(specs, variables, names)
            ]
            self.v = [
                self._share(spec, v.dtype, f"{n}_v") for spec, v, n in zip(specs, variables, names)
            ]
            self.weights = (
                [
                    self._share(spec, v.dtype, f"{n}_share")
                    for spec, v, n in zip(specs, variables, names)
                ]
                if shard_weights
                else None
            )
            self.iterations = replica_local(tf.constant(0, tf.int64), "sharded_iterations")
            self.loss_scale = self.growth_counter = None
            if loss_scaling is not None:
                self.loss_scale = replica_local(
                    tf.constant(loss_scaling.initial_scale, tf.float32), "sharded_loss_scale"
                )
                self.growth_counter = replica_local(tf.constant(0, tf.int64), "sharded_growth")

        self._functions: dict[int, tuple] = {}

    @staticmethod
    def _share(spec: ShardSpec, dtype: tf.DType, name: str) -> tf.Variable:
        return replica_local(tf.zeros([spec.shard_size], dtype), name)

    # -- whole tensors, one variable at a time -------------------------------------------------
    def full_value(self, share: tf.Variable, spec: ShardSpec) -> tf.Tensor:
        """The whole tensor of ``share`` (all-gathered over the replicas), on the host CPU.
        Every replica (every worker) must call it, in the same order."""
        gathered = self._share_functions(share)[0]()
        with tf.device("/cpu:0"):
            return tf.identity(spec.unshard(self.strategy.experimental_local_results(gathered)[0]))

    def assign_from_full(self, share: tf.Variable, spec: ShardSpec, full: tf.Tensor) -> None:
        """Gives each replica its slice of ``full`` (no collective)."""
        full = tf.convert_to_tensor(full)
        if tuple(full.shape) != spec.shape:
            raise InvalidArgumentError(
                f"shape mismatch: a tensor of shape {tuple(full.shape)} cannot fill the shares "
                f"of {share.name.split(':')[0]}, whose variable has shape {spec.shape}"
            )
        self._share_functions(share)[1](spec.split(tf.cast(full, share.dtype)))

    def _share_functions(self, share: tf.Variable) -> tuple:
        """(gather, assign) traced for ``share`` itself: a tf.function taking a distributed
        variable as an argument would reuse its first trace for another variable of the same
        shape, so each share gets its own pair (traced once per process)."""
        if id(share) not in self._functions:
            strategy = self.strategy

            def replica_gather():
                ctx = tf.distribute.get_replica_context()
                return ctx.all_gather(share.read_value(), axis=0)

            def replica_assign(split):
                ctx = tf.distribute.get_replica_context()
                share.assign(tf.gather(split, ctx.replica_id_in_sync_group))

            self._functions[id(share)] = (
                tf.function(lambda: strategy.run(replica_gather)),
                tf.function(lambda split: strategy.run(replica_assign, args=(split,))),
            )
        return self._functions[id(share)]

    # -- what exists on one replica ------------------------------------------------------------
    def replica_bytes(self) -> dict[str, int]:
        """Bytes of this state held by one replica, from the variables themselves."""

        def nbytes(var: tf.Variable) -> int:
            local = self.strategy.experimental_local_results(var)[0]
            return int(np.prod(local.shape)) * var.dtype.size

        scalars = [self.iterations, self.loss_scale, self.growth_counter]
        return {
            "optimizer": sum(nbytes(x) for x in [*self.m, *self.v])
            + sum(nbytes(x) for x in scalars if x is not None),
            "weights": sum(nbytes(x) for x in self.weights or []),
        }
