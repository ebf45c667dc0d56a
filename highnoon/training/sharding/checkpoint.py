"""Checkpoints of a sharded run that look exactly like an unsharded run's.

A sharded run saves whole tensors under the names an unsharded run uses, so its checkpoints
restore on any number of replicas, sharded or not, and ``load_model`` / ``launch.generate`` read
them as they are. The names of a ``tf.train.Checkpoint`` come from the object graph (the path of
attribute names from the root to each variable), so the sharded step builds the same graph:

* ``mirror(obj, leaf_for)`` copies the object graph of a Keras model or optimizer into plain
  trackable nodes with the same child names, replacing each variable by ``leaf_for(variable)``;
* a ``WholeTensor`` leaf saves the whole tensor of a sharded variable (all-gathered when the
  checkpoint is written, never when it is read) and restores by giving each replica its slice.

Memory: a save holds every sharded variable's whole tensor in host memory at once (TensorFlow
collects all tensors of a checkpoint before writing): 8 bytes a parameter for the two fp32
moments, 12 with level "full"'s weights, on every worker (each writes its own copy; the
chief's is kept). The gathers run one variable at a time, so device memory grows by one variable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from highnoon.utils.validation import InvalidArgumentError

# The attribute name TensorFlow gives a variable's value ("<path>/.ATTRIBUTES/VARIABLE_VALUE").
VARIABLE_VALUE = "VARIABLE_VALUE"


class WholeTensor(tf.__internal__.tracking.Trackable):
    """Checkpoints one sharded variable as its whole tensor.

    ``read`` returns the whole tensor (called only while a checkpoint is written; every worker
    saves, so the collectives inside it line up); ``write`` takes a restored whole tensor.
    """

    def __init__(
        self,
        read: Callable[[], tf.Tensor],
        write: Callable[[tf.Tensor], None],
        dtype: tf.DType,
        device: str,
    ) -> None:
        self._read, self._write = read, write
        self._dtype, self._device = tf.as_dtype(dtype), device

    def _serialize_to_tensors(self) -> dict[str, Any]:
        # tensor_callable.Callable: evaluated when the checkpoint is written; a restore only
        # asks for the dtype (as tf.Variable's own _serialize_to_tensors does).
        from tensorflow.python.checkpoint import tensor_callable

        return {VARIABLE_VALUE: tensor_callable.Callable(self._read, self._dtype, self._device)}

    def _restore_from_tensors(self, restored_tensors: dict[str, tf.Tensor]) -> None:
        self._write(restored_tensors[VARIABLE_VALUE])


def is_variable(obj: Any) -> bool:
    return isinstance(obj, keras.Variable | tf.Variable)


def has_storage(variable: Any) -> bool:
    """False for a Keras variable created in a ``StatelessScope`` and never initialised."""
    return not isinstance(variable, keras.Variable) or variable._value is not None


def mirror(obj: Any, leaf_for: Callable[[Any], Any], memo: dict[int, Any] | None = None) -> Any:
    """A copy of ``obj``'s checkpoint object graph whose variables are ``leaf_for(variable)``
    (which may return the variable itself). Shared objects stay shared (``memo``)."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if is_variable(obj):
        memo[id(obj)] = leaf_for(obj)
        return memo[id(obj)]
    children = tf.train.TrackableView.children(obj)
    if not children and _saves_tensors(obj):
        raise InvalidArgumentError(
            f"cannot mirror {type(obj).__name__} for a sharded checkpoint: it saves tensors "
            "of its own"
        )
    node = tf.__internal__.tracking.AutoTrackable()
    memo[id(obj)] = node
    for name, child in children.items():
        setattr(node, name, mirror(child, leaf_for, memo))
    return node


def _saves_tensors(obj: Any) -> bool:
    own = getattr(type(obj), "_serialize_to_tensors", None)
    return own is not None and own is not tf.__internal__.tracking.Trackable._serialize_to_tensors


def unsharded_layout(engine) -> dict[str, Any]:
    """``{"model": ..., "optimizer": ...}`` with the object graph of an unsharded run of
    ``engine`` (a ``ShardedEngine``): the optimizer is a copy of the configured one built over
    one-element stand-ins of the weights, its moments created without storage, and every variable
    of it is then replaced by the sharded state that holds its value."""
    strategy, state = engine.strategy, engine.state
    optimizer = engine.optimizer
    with strategy.scope():
        skeleton = type(optimizer).from_config(optimizer.get_config())
        stand_ins = [
            keras.Variable(initializer="zeros", shape=(1,), dtype=v.dtype, name=v.name)
            for v in engine.variables
        ]
        with keras.StatelessScope(initialize_variables=False):
            skeleton.build(stand_ins)
    scaled = isinstance(skeleton, keras.optimizers.LossScaleOptimizer)
    inner = skeleton.inner_optimizer if scaled else skeleton
    original = optimizer.inner_optimizer if scaled else optimizer

    def whole(share, spec):
        device = strategy.experimental_local_results(share)[0].device
        cpu = tf.DeviceSpec.from_string(device).replace(device_type="CPU", device_index=0)
        return WholeTensor(
            lambda: state.full_value(share, spec),
            lambda full: state.assign_from_full(share, spec, full),
            share.dtype,
            cpu.to_string(),
        )

    leaves: dict[int, Any] = {id(inner._iterations): state.iterations}
    for i, (var, spec) in enumerate(zip(engine.variables, engine.specs)):
        weight = whole(state.weights[i], spec) if state.weights is not None else var
        leaves[id(var)] = leaves[id(stand_ins[i])] = weight
        leaves[id(inner._momentums[i])] = whole(state.m[i], spec)
        leaves[id(inner._velocities[i])] = whole(state.v[i], spec)
    if isinstance(inner._learning_rate, keras.Variable):
        leaves[id(inner._learning_rate)] = original._learning_rate
    if scaled:
        leaves[id(skeleton.dynamic_scale)] = state.loss_scale
        leaves[id(skeleton.step_counter)] = state.growth_counter

    def leaf_for(variable):
        if id(variable) in leaves:
            return leaves[id(variable)]
        if has_storage(variable):  # e.g. a LossScaleOptimizer's own unused step counter
            return variable
        raise InvalidArgumentError(
            f"sharded checkpoint: nothing holds the value of {variable.path}"
        )

    memo: dict[int, Any] = {}
    model = engine.model if state.weights is None else mirror(engine.model, leaf_for, memo)
    return {"model": model, "optimizer": mirror(skeleton, leaf_for, memo)}
