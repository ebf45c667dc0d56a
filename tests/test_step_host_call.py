"""The compiled host call around the step (``TrainStep.train_fn``): a run of one step per call
whose step is one XLA computation compiles that step alone, with no in-graph loop, and trains
bit for bit as the loop does; a step outside XLA keeps the loop."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import highnoon as hn
from highnoon.training.step import StepConfig, TrainStep
from highnoon.utils.validation import InvalidArgumentError

CALLS = 3


def _step() -> TrainStep:
    """The same initial weights on every call."""
    keras.utils.set_random_seed(0)
    model = hn.create_model("highnoon-nano", max_seq_length=16)
    model.build()
    optimizer = keras.optimizers.AdamW(1e-2)
    optimizer.build(model.trainable_variables)
    return TrainStep(model, optimizer, tf.distribute.get_strategy())


def _batches() -> tf.data.Iterator:
    """``CALLS`` distinct batches, some targets masked."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 259, size=(CALLS, 4, 17)).astype(np.int32)
    mask = (rng.random((CALLS, 4, 16)) < 0.8).astype(np.int32)
    rows = {"inputs": tokens[..., :-1], "targets": tokens[..., 1:], "loss_mask": mask}
    return iter(tf.data.Dataset.from_tensor_slices(rows))


def _train(
    steps_per_call: int | None, agree: bool = False, jit_compile: bool = True
) -> tuple[TrainStep, list, list]:
    """``CALLS`` host calls of one step each; each call's outputs and the final weights."""
    step = _step()
    config = StepConfig(clip_norm=1.0, jit_compile=jit_compile, steps_per_call=steps_per_call)
    train = step.train_fn(config, agree=agree)
    batches = _batches()
    outputs = []
    for call in range(CALLS):
        args = (batches, 1, call == 1) if agree else (batches, 1)
        outputs.append([t.numpy() for t in train(*args)])
    return step, outputs, [w.numpy() for w in step.model.trainable_variables]


def _host_call_ops(step: TrainStep) -> set[str]:
    """The op types of the host call's own graph (the step inside is a function call)."""
    (compiled,) = step._train_fns.values()
    graph = compiled.get_concrete_function(_batches(), tf.constant(1, tf.int32)).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.slow
def test_one_step_per_call_compiles_no_loop_and_trains_as_the_loop():
    loop, loop_outputs, loop_weights = _train(None)
    single, outputs, weights = _train(1)
    assert "While" in _host_call_ops(loop)
    assert not {"While", "StatelessWhile"} & _host_call_ops(single)
    (key,) = single._train_fns
    assert key[-1] == "single" and single._train_fns[key].experimental_get_tracing_count() == 1
    # Multi-host runs agree on preemption in the same call: each call's flag comes back summed.
    _, agreed, agreed_weights = _train(1, agree=True)
    assert [float(flags) for _, _, flags in agreed] == [0.0, 1.0, 0.0]
    for run, run_weights in ((outputs, weights), (agreed, agreed_weights)):
        for (losses, tokens, *_), (want_losses, want_tokens) in zip(run, loop_outputs):
            assert losses.shape == tokens.shape == (1,)
            np.testing.assert_array_equal(losses, want_losses)
            np.testing.assert_array_equal(tokens, want_tokens)
        for got, want in zip(run_weights, loop_weights):
            np.testing.assert_array_equal(got, want)


def test_a_step_outside_xla_keeps_the_loop():
    """Grappler rewrites ops outside XLA one way in a loop body and another at a graph's top,
    which changes their last bits: such a step keeps the loop, so any steps_per_call trains the
    same weights."""
    step, _, _ = _train(1, jit_compile=False)
    assert not step.whole_step_in_xla(StepConfig(steps_per_call=1))
    assert "While" in _host_call_ops(step)


def test_a_call_longer_than_the_compiled_steps_per_call_is_refused():
    step = _step()
    train = step.train_fn(StepConfig(steps_per_call=1))
    with pytest.raises(InvalidArgumentError) as error:
        train(_batches(), 2)
    assert str(error.value) == (
        "a host call of 2 steps, but this step was compiled for calls of 1 to "
        "steps_per_call=1 steps; build it with StepConfig(steps_per_call=None) for calls of "
        "any length"
    )
    train = step.train_fn(StepConfig(steps_per_call=3))
    with pytest.raises(InvalidArgumentError, match="a host call of 4 steps"):
        train(_batches(), 4)
    assert int(step.optimizer.iterations) == 0  # refused before anything ran


class _Traced:
    """A stand-in for a ``tf.function``: records whether each call went through it or through
    the concrete function it hands out."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def __call__(self, iterator, *args):
        self.calls.append(("function", iterator))
        return "out"

    def get_concrete_function(self, iterator, *args):
        return lambda it, *a: self.calls.append(("concrete", it)) or "out"


class _Iterator:
    pass


def test_later_calls_on_an_iterator_go_through_its_concrete_function():
    """The tf.function's per-call argument binding is skipped after its first call on an
    iterator; a new iterator (a new segment) goes through the tf.function again, and a
    finished segment's iterator is not kept alive."""
    import gc
    import weakref

    from highnoon.training.step import ConcreteCall

    traced = _Traced()
    call = ConcreteCall(traced)
    first, second = _Iterator(), _Iterator()
    for iterator in (first, first, first, second, second, first):
        assert call(iterator, 1) == "out"
    assert [(kind, it is first) for kind, it in traced.calls] == [
        ("function", True),
        ("concrete", True),
        ("concrete", True),
        ("function", False),
        ("concrete", False),
        ("function", True),
    ]
    held = weakref.ref(first)
    traced.calls.clear()  # the record's own references
    del first, iterator
    gc.collect()
    assert held() is None
