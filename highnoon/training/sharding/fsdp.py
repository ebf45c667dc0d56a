"""Level "full": weights stored as shares, gathered segment by segment (FSDP).

The model is built inside ``keras.StatelessScope(initialize_variables=False)``: its Keras
variables exist (names, shapes, initialisers) but hold no storage. Each replica keeps its share
of every weight (``ShardedState.weights``). A forward pass runs the model with a ``GatherRunner``
(``HighNoonLM.call(..., runner=...)``): for each segment (embedding, each block, head) it
all-gathers the segment's weights from the shares and runs the segment with them mapped onto the
model's variables (a ``StatelessScope`` state mapping), inside ``tf.recompute_grad``, so the
gathered weights and the segment's activations are dropped after the forward pass and gathered
and recomputed again in the backward pass. The gather's gradient is the reduce-scatter of the
weights' gradient (``Collectives.gather_weights``), so each replica's backward pass yields only
its share of the gradient, summed over replicas.

A model can be trained this way when it exposes ``weight_segments()`` and accepts ``runner=``
in ``call`` (``HighNoonLM`` does), has no non-trainable weights (a dropout layer's seed state
could not be replayed by the recomputation) and every weight belongs to a segment.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from highnoon.training.sharding.collectives import Collectives
from highnoon.training.sharding.layout import ShardSpec
from highnoon.utils.validation import InvalidArgumentError


class ShardingModelError(InvalidArgumentError):
    """The model cannot be trained with the requested sharding level."""


def check_segmented(model: keras.Model) -> None:
    """Refuses a model that level "full" cannot gather block by block (before building)."""
    call_params = inspect.signature(model.call).parameters
    if not hasattr(model, "weight_segments") or "runner" not in call_params:
        raise ShardingModelError(
            f"sharding='full' needs a model that runs its weights block by block "
            f"(weight_segments() and call(..., runner=...), as HighNoonLM); "
            f"{type(model).__name__} has no blocks to gather: use sharding='gradients'"
        )
    if model.built:
        raise ShardingModelError(
            "sharding='full' needs an unbuilt model: its weights are created as shares, and a "
            "built model already holds every whole weight; pass create_model(...) without "
            "building or calling it (weights of a trained model come back through the "
            "checkpoint, resume_from)"
        )


def build_without_storage(model: keras.Model, strategy: tf.distribute.Strategy) -> None:
    """Builds ``model``'s variables with no storage (see the module docstring)."""
    with strategy.scope(), keras.StatelessScope(initialize_variables=False):
        model.build()
    _forget_deferred_initialization(model)
    extra = [v.path for v in model.non_trainable_weights]
    if extra:
        raise ShardingModelError(
            f"sharding='full' cannot replay non-trainable state {extra} (e.g. dropout seeds) "
            "when a block is recomputed; use a model without it (dropout=0)"
        )
    covered = {id(v) for _, weights in model.weight_segments() for v in weights}
    missing = [v.path for v in model.trainable_weights if id(v) not in covered]
    if missing:
        raise ShardingModelError(
            f"sharding='full': the weights {missing} belong to no segment of "
            f"{type(model).__name__}.weight_segments(), so they could never be gathered"
        )


def _forget_deferred_initialization(model: keras.Model) -> None:
    """Takes ``model``'s storage-less variables off Keras' process-wide list of variables to
    initialise later. Keras initialises that whole list when the next stateless scope that may
    initialise closes (e.g. any other model's symbolic build in the same process), which would
    read these variables' refusing initialisers (``refuse_reads``) and fail an unrelated model.
    Relies on the private ``uninitialized_variables`` attribute of Keras 3's global state."""
    from keras.src.backend.common import global_state

    pending = global_state.get_global_attribute("uninitialized_variables")
    if pending:
        ours = {id(v) for v in model.weights}
        kept = [v for v in pending if id(v) not in ours]
        global_state.set_global_attribute("uninitialized_variables", kept)


def refuse_reads(model: keras.Model) -> None:
    """Makes reading a weight of ``model`` outside a gathered segment an error. A Keras variable
    without storage otherwise reads as a fresh value of its initialiser, so a model trained at
    level "full" would silently predict, save or export its initial weights."""
    for variable in model.weights:
        variable._initializer = _refusal(variable.path)


def _refusal(path: str) -> Callable:
    def initializer(shape, dtype=None):
        raise ShardingModelError(
            f"{path} has no value of its own: with sharding='full' the weights live in "
            "per-replica shares; use TrainStep.full_weights() (numpy) or "
            "TrainStep.export_model() (a whole copy), or checkpoint through "
            "TrainStep.checkpoint_objects()"
        )

    return initializer


class GatherRunner:
    """``runner(name, variables, segment_fn, *inputs)`` for ``HighNoonLM.call``: runs the
    segment on weights gathered from ``shares`` (a map from variable id to its share tensor)."""

    def __init__(
        self,
        collectives: Collectives,
        specs: dict[int, ShardSpec],
        shares: dict[int, tf.Tensor],
        *,
        recompute: bool,
        jit_compile: bool = False,
    ) -> None:
        self._comm, self._specs, self._shares = collectives, specs, shares
        self._recompute, self._jit = recompute, jit_compile

    def __call__(self, name: str, variables: Sequence, segment_fn: Callable, *inputs):
        del name
        variables = list(variables)
        specs = [self._specs[id(v)] for v in variables]
        shares = [self._shares[id(v)] for v in variables]
        count = len(inputs)
        compute = _with_weights(variables, segment_fn)
        if self._jit:
            compute = tf.function(compute, jit_compile=True)

        def gathered(*args):
            weights = self._comm.gather_weights(args[count:], specs)
            return compute(list(weights), *args[:count])

        if self._recompute:
            gathered = tf.recompute_grad(gathered)
        return gathered(*inputs, *shares)


def _with_weights(variables: list, segment_fn: Callable) -> Callable:
    """``segment_fn`` run with ``weights`` standing in for ``variables``."""

    def compute(weights, *inputs):
        mapping = list(zip(variables, weights))
        with keras.StatelessScope(state_mapping=mapping, initialize_variables=False):
            return segment_fn(*inputs)

    return compute
