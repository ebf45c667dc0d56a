"""The compiled training and evaluation steps (docs/design.md, "The loop and the step").

One step consumes one *effective* global batch: ``gradient_accumulation_steps`` micro-batches per
replica, accumulated inside the compiled function. The loss is the masked token cross-entropy
summed over every replica and micro-batch and divided by the global number of target tokens, so
loss and gradients equal a single-device run on the same global batch, whatever the replica count
or accumulation (``losses.py``).

``TrainStep`` is the part every run shares: the global token count, the loop of several steps in
one host call, the reduction of loss, tokens and preemption flag, and the evaluation sums. What
one replica does in a step belongs to a step engine (``step_engine.py``): ``UnshardedEngine``,
or with ``sharding`` ("optimizer", "gradients", "full") ``sharding.engine.ShardedEngine``, which
replaces the gradient all-reduce and the Keras optimizer by a step over per-replica shares.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf

from highnoon.training.losses import Batch, masked_token_loss_sum
from highnoon.training.sharding.levels import ShardingLevel, resolve_level
from highnoon.training.step_engine import StepConfig, StepEngine, UnshardedEngine
from highnoon.utils.validation import InvalidArgumentError

if TYPE_CHECKING:
    from highnoon.training.sharding.recorder import StepRecorder

__all__ = ["StepConfig", "TrainStep", "make_engine", "masked_token_loss_sum"]


def make_engine(
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    strategy: tf.distribute.Strategy,
    level: ShardingLevel | None,
    *,
    collectives: str = "auto",
    recorder: StepRecorder | None = None,
) -> StepEngine:
    """The engine for ``level`` (None: unsharded). ``recorder``: the hook tests and benches
    pass to measure a sharded step (an unsharded step has no collectives of its own to log)."""
    if level is None:
        return UnshardedEngine(model, optimizer, strategy)
    from highnoon.training.sharding.engine import ShardedEngine

    return ShardedEngine(
        model, optimizer, strategy, level, collectives=collectives, recorder=recorder
    )


class ConcreteCall:
    """Calls a ``tf.function`` of ``(iterator, *tensors)`` through the concrete function its
    first call on an iterator traced (or found), for every later call on that iterator.

    The ``tf.function``'s own call binds and canonicalises its arguments and looks its trace
    up on every call: about 60 us of host time a call, as much as the loop's bookkeeping
    (BENCHMARKS.md, "Host time per step against fit"). The first call on each iterator goes
    through the ``tf.function`` (so tracing, retracing and variable creation are its own);
    the iterator is held weakly, so the step keeps no finished segment's pipeline alive."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self._iterator: Callable[[], Any] = lambda: None  # a weak reference
        self._concrete: Callable | None = None

    def __call__(self, iterator: Any, *args: tf.Tensor) -> Any:
        if self._iterator() is iterator:
            return self._concrete(iterator, *args)
        out = self.function(iterator, *args)
        self._concrete = self.function.get_concrete_function(iterator, *args)
        self._iterator = weakref.ref(iterator)
        return out


class TrainStep:
    """Builds and caches the distributed train/eval functions for one model and optimizer.

    ``sharding``: None, "optimizer", "gradients" or "full" (or a ``ShardingLevel``); on one
    replica a level warns and trains unsharded. Sharded, the optimizer must be a Keras Adam or
    AdamW left unbuilt (the shares replace its moments), the model built ("optimizer",
    "gradients") or unbuilt ("full", built here without storage). ``collectives``: "auto",
    "portable" or "xla" (TPU only: true reduce-scatter and all-gather inside the XLA step).
    ``recorder``: a measurement hook for tests and benches (``sharding.recorder``).
    """

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        strategy: tf.distribute.Strategy,
        sharding: str | ShardingLevel | None = None,
        *,
        collectives: str = "auto",
        recorder: StepRecorder | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.strategy = strategy
        self.level = resolve_level(sharding, strategy.num_replicas_in_sync)
        self.engine = make_engine(
            model, optimizer, strategy, self.level, collectives=collectives, recorder=recorder
        )
        self._train_fns: dict[tuple, Callable] = {}
        self._eval_fn: Callable | None = None

    def checkpoint_objects(self) -> dict[str, Any]:
        """The ``model`` and ``optimizer`` entries of this run's ``tf.train.Checkpoint``: the
        objects themselves unsharded; sharded, stand-ins with the same names that save whole
        tensors (any replica count, sharded or not, restores them)."""
        return self.engine.checkpoint_objects()

    def export_model(self) -> keras.Model:
        """The trained model for inference: the model itself, or at sharding "full" (whose
        model holds no weights) a whole copy gathered from the shares (every worker calls)."""
        return self.engine.export_model()

    def full_weights(self) -> list[np.ndarray]:
        """The model's whole trainable weights as numpy arrays (every worker must call it)."""
        return self.engine.full_weights()

    # -- replica functions -------------------------------------------------------------
    def _replica_train_step(self, batch: Batch, config: StepConfig) -> tuple[tf.Tensor, tf.Tensor]:
        ctx = tf.distribute.get_replica_context()
        local_tokens = tf.reduce_sum(tf.cast(batch["loss_mask"], tf.float32))
        global_tokens = ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_tokens)
        denominator = tf.maximum(global_tokens, 1.0)
        return self.engine.replica_step(batch, denominator, config), local_tokens

    def _replica_eval_step(self, batch: Batch) -> tuple[tf.Tensor, tf.Tensor]:
        logits = self.engine.replica_logits(batch)
        loss_sum = masked_token_loss_sum(batch["targets"], logits, batch["loss_mask"])
        return loss_sum, tf.reduce_sum(tf.cast(batch["loss_mask"], tf.float32))

    # -- distributed functions ---------------------------------------------------------
    def train_fn(self, config: StepConfig, agree: bool = False) -> Callable:
        """``fn(iterator, num_steps) -> (losses [num_steps], tokens [num_steps])``: ``num_steps``
        optimizer steps in one host call (several per call keep TPUs busy). ``num_steps`` enters
        the compiled function as a tensor, so a shorter call (an epoch's last) does not retrace.
        With ``config.steps_per_call == 1`` and a step that is one XLA computation
        (``whole_step_in_xla``), every call is that step with no in-graph loop around it: the
        loop's control flow costs about 1 ms of host CPU on every call (docs/design.md,
        "KerasHub models"). A call of more steps than ``config.steps_per_call`` is refused.

        ``agree=True`` (multi-host runs): ``fn(iterator, num_steps, flag) -> (losses, tokens,
        flags)``, where ``flags`` is the sum over every replica of its host's ``flag`` (1.0: a
        preemption signal arrived). The flag rides in the reduction that already sums each
        step's loss and token count, so every host learns whether any host must stop at no extra
        collective and no extra host round trip."""
        single = config.steps_per_call == 1 and self.whole_step_in_xla(config)
        key = ("train", config.accumulation_steps, config.clip_norm, config.jit_compile, agree)
        key += ("single",) if single else ()
        if key not in self._train_fns:
            build = self._build_single_step_fn if single else self._build_train_fn
            self._train_fns[key] = build(config, agree)
        compiled = self._train_fns[key]
        limit = config.steps_per_call
        counts: dict[int, tf.Tensor] = {}  # num_steps -> its tensor, made once

        def steps(num_steps: int) -> tf.Tensor:
            if (single and num_steps != 1) or (limit is not None and num_steps > limit):
                raise InvalidArgumentError(
                    f"a host call of {num_steps} steps, but this step was compiled for calls of "
                    f"1 to steps_per_call={limit} steps; build it with "
                    "StepConfig(steps_per_call=None) for calls of any length"
                )
            if num_steps not in counts:
                counts[num_steps] = tf.constant(num_steps, tf.int32)
            return counts[num_steps]

        if agree:
            return lambda iterator, num_steps, flag: compiled(
                iterator, steps(num_steps), tf.constant(float(flag), tf.float32)
            )
        call = ConcreteCall(compiled)
        return lambda iterator, num_steps: call(iterator, steps(num_steps))

    def whole_step_in_xla(self, config: StepConfig) -> bool:
        """Whether a step of ``config`` is one XLA computation (one replica, unsharded, jit).
        Only then does a host call without the loop train bit for bit as the loop: what is
        left outside XLA is the token count and one-replica reductions, which are exact.
        Ops outside XLA are optimised by Grappler one way inside a loop body and another at
        the top of a graph, and their results differ in the last bits."""
        return config.jit_compile and self.level is None and self.strategy.num_replicas_in_sync == 1

    def _replica_step_totals(self, config: StepConfig) -> Callable:
        """One replica's step as ``[loss, tokens, flag]`` (the reduction's one tensor)."""

        def replica_step(batch: Batch, flag: tf.Tensor) -> tf.Tensor:
            loss, tokens = self._replica_train_step(batch, config)
            # Loss, tokens and the preemption flag travel in one reduction (tf.identity gives
            # the flag this replica's device; a bare argument has none).
            return tf.stack([loss, tokens, tf.identity(flag)])

        return replica_step

    def _one_step(self, config: StepConfig) -> Callable:
        """``one_step(batch, flag) -> [loss, tokens, flags]`` summed over every replica."""
        strategy, replica_step = self.strategy, self._replica_step_totals(config)

        def one_step(batch: Batch, flag: tf.Tensor) -> tf.Tensor:
            per_replica = strategy.run(replica_step, args=(batch, flag))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        return one_step

    def _build_single_step_fn(self, config: StepConfig, agree: bool) -> Callable:
        """The host call of a run whose calls are one step each: the step alone, its results
        shaped as the loop's (``[1]`` losses and tokens). ``num_steps`` is taken (always 1) so
        both builds are called alike."""
        one_step = self._one_step(config)

        def step(iterator, flag: tf.Tensor):
            totals = one_step(next(iterator), flag)
            return totals[0:1], totals[1:2], totals[2]

        if agree:
            return tf.function(lambda iterator, num_steps, flag: step(iterator, flag))

        @tf.function
        def fn(iterator, num_steps: tf.Tensor):
            losses, tokens, _ = step(iterator, tf.constant(0.0))
            return losses, tokens

        return fn

    def _build_train_fn(self, config: StepConfig, agree: bool) -> Callable:
        """The host call of up to any number of steps: an in-graph loop over ``one_step``."""
        one_step = self._one_step(config)

        def steps(iterator, num_steps: tf.Tensor, flag: tf.Tensor):
            losses = tf.TensorArray(tf.float32, size=num_steps)
            tokens = tf.TensorArray(tf.float32, size=num_steps)
            flags = tf.constant(0.0)
            for i in tf.range(num_steps):
                totals = one_step(next(iterator), flag)
                losses = losses.write(i, totals[0])
                tokens = tokens.write(i, totals[1])
                flags = totals[2]
            return losses.stack(), tokens.stack(), flags

        if agree:
            return tf.function(steps)

        @tf.function
        def fn(iterator, num_steps: tf.Tensor):
            losses, tokens, _ = steps(iterator, num_steps, tf.constant(0.0))
            return losses, tokens

        return fn

    def eval_fn(self) -> Callable:
        """``fn(batch) -> (loss_sum, token_count)`` summed over all replicas."""
        if self._eval_fn is None:
            strategy = self.strategy

            @tf.function
            def fn(batch):
                loss_sum, tokens = strategy.run(self._replica_eval_step, args=(batch,))
                return (
                    strategy.reduce(tf.distribute.ReduceOp.SUM, loss_sum, axis=None),
                    strategy.reduce(tf.distribute.ReduceOp.SUM, tokens, axis=None),
                )

            self._eval_fn = fn
        return self._eval_fn
