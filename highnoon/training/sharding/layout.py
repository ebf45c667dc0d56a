"""Flatten-and-pad layout of one variable over N replicas.

Replica r of N holds elements ``[r*S, (r+1)*S)`` of the variable flattened in row-major order,
with ``S = ceil(n / N)`` and the last shares zero-padded to ``N*S`` elements.

Why flatten-and-pad and not a split along the first axis:

* Every share has the same shape on every replica, whatever the variable's shape and N: the
  collectives (all-gather, reduce-scatter) need equal pieces, and the vocabulary (259 rows), the
  norm scales (d elements) or 3 replicas do not divide evenly along any axis.
* Padding is less than N elements per variable, so the memory saving is exactly 1/N up to N-1
  elements a variable; a first-axis split of a [d, d_ff] matrix over more replicas than rows
  would leave replicas empty.
* AdamW is element-wise, so the optimizer never needs the shape; only the forward pass does,
  after the gather, which restores it (``unshard``).

Padding elements start at zero and stay zero: their gradient is zero, so both moments stay zero,
decay keeps 0 at 0, and the update ``m / (sqrt(v) + eps)`` is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class ShardSpec:
    """Where one variable of ``shape`` lives over ``num_replicas`` replicas."""

    shape: tuple[int, ...]
    num_replicas: int

    @property
    def size(self) -> int:
        """Elements of the whole variable."""
        return math.prod(self.shape)

    @property
    def shard_size(self) -> int:
        """Elements of one replica's share (``S``)."""
        return -(-self.size // self.num_replicas)

    @property
    def padding(self) -> int:
        """Zero elements appended so the N shares are equal."""
        return self.shard_size * self.num_replicas - self.size

    def split(self, full: tf.Tensor) -> tf.Tensor:
        """[N, S]: row r is replica r's share of ``full``."""
        flat = tf.reshape(full, [-1])
        if self.padding:
            flat = tf.pad(flat, [[0, self.padding]])
        return tf.reshape(flat, [self.num_replicas, self.shard_size])

    def shard(self, full: tf.Tensor, replica_id: tf.Tensor | int) -> tf.Tensor:
        """[S]: replica ``replica_id``'s share of ``full`` (a dynamic slice, XLA-friendly)."""
        return tf.gather(self.split(full), replica_id)

    def unshard(self, gathered: tf.Tensor) -> tf.Tensor:
        """The variable's shape from the N shares concatenated in replica order ([N*S])."""
        flat = gathered[: self.size] if self.padding else gathered
        return tf.reshape(flat, self.shape)


def spec_of(variable, num_replicas: int) -> ShardSpec:
    """The layout of ``variable`` (anything with a static ``shape``) over ``num_replicas``."""
    return ShardSpec(tuple(int(d) for d in variable.shape), int(num_replicas))
