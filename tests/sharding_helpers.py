"""A small training run driven through ``TrainStep`` directly, for the sharding tests.

Every run trains the model of ``CONFIG`` on the same global batches, whatever the replica
count: step ``s`` (1-based) has ``GLOBAL_ROWS`` rows drawn from a generator seeded by ``s``; host
``h`` of ``H`` feeds rows ``[h*G/H, (h+1)*G/H)`` and its local replicas split those in order;
each replica's rows are ``ACCUMULATION`` micro-batches. Two stages, like the Trainer's: the
second starts at ``STAGE_BOUNDARY`` with another learning-rate multiplier and a new iterator.
Both clip at the same norm, so each run traces its step once (tracing the 'full' step is the
slowest part of a run). A run can start at any global step (resume) because the batches depend
on the step only.

The model is nano with one block (``LAYERS``): it has every kind of segment level "full" gathers
(embedding, block, head) and every sharded path, and its steps trace in about 60% of the time of
nano's two blocks (tracing, not the steps, is what these runs spend their time on). Several
blocks are trained at every level through the Trainer (``tests/test_trainer_sharding.py``).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

import highnoon as hn
from highnoon.models import get_preset
from highnoon.training.optimization import WarmupCosineSchedule, make_optimizer
from highnoon.training.sharding.recorder import StepRecorder
from highnoon.training.step import StepConfig, TrainStep

SEQ = 16
LAYERS = 1
CONFIG = get_preset("highnoon-nano").replace(max_seq_length=SEQ, num_layers=LAYERS)
GLOBAL_ROWS = 12  # divides over 1, 2 and 3 replicas, times ACCUMULATION micro-batches
ACCUMULATION = 2
TOTAL_STEPS = 24
STAGE_BOUNDARY = 12  # steps 1..12 are stage 0, 13..24 stage 1
STAGES = ({"multiplier": 1.0, "clip_norm": 0.5}, {"multiplier": 0.5, "clip_norm": 0.5})
PEAK_LR, WARMUP = 3e-3, 3
# Weights of runs whose sums run in another order (sharded vs unsharded, another replica count):
# the same tolerance as the Trainer's multi-worker and parity tests. Measured largest absolute
# differences after 24 steps: 1e-7 (ZeRO-1) to 4e-6 ("full") on 2 logical CPUs against the
# unsharded 2-replica run, 4e-6 to 6.3e-6 on 2 and 3 workers against one unsharded worker (whose
# own 2-worker run differs as much). Why not smaller: Adam divides by sqrt(v) + 1e-8, so an
# element whose gradient is ~1e-9 turns a last-bit difference of the gradient into a visible one
# of its update; and grappler rewrites the update's arithmetic differently in the two programs
# (tests/test_sharding.py shows them bitwise equal with that rewriting off).
RTOL, ATOL = 1e-4, 5e-5


def create_model(**overrides: Any) -> keras.Model:
    """The model every run trains (``CONFIG``), unbuilt; ``overrides`` change its config."""
    return hn.create_model("highnoon-nano", max_seq_length=SEQ, num_layers=LAYERS, **overrides)


def global_batch(step: int) -> dict[str, np.ndarray]:
    """The global batch of 1-based optimizer ``step``: GLOBAL_ROWS rows of SEQ tokens."""
    rng = np.random.default_rng(1000 + step)
    ids = rng.integers(3, 259, size=(GLOBAL_ROWS, SEQ + 1))
    mask = (rng.random((GLOBAL_ROWS, SEQ)) > 0.1).astype("float32")
    return {
        "inputs": ids[:, :-1].astype("int32"),
        "targets": ids[:, 1:].astype("int32"),
        "loss_mask": mask,
    }


def batches(strategy: tf.distribute.Strategy, first_step: int, last_step: int):
    """A distributed iterator over the global batches of steps first_step..last_step."""
    steps = range(first_step, last_step + 1)
    stacked = {k: np.stack([global_batch(s)[k] for s in steps]) for k in global_batch(1)}

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        hosts, host = context.num_input_pipelines, context.input_pipeline_id
        local = context.num_replicas_in_sync // hosts
        rows = GLOBAL_ROWS // hosts
        own = {k: v[:, host * rows : (host + 1) * rows] for k, v in stacked.items()}
        dataset = tf.data.Dataset.from_tensor_slices(own)
        return dataset.map(
            lambda b: {k: tf.reshape(v, [local, -1, *v.shape[1:]]) for k, v in b.items()}
        ).unbatch()

    return iter(strategy.distribute_datasets_from_function(dataset_fn))


def build(
    strategy: tf.distribute.Strategy,
    sharding: str | None,
    *,
    loss_scale: float | None = None,
    collectives: str = "auto",
    recorder: StepRecorder | None = None,
) -> tuple[TrainStep, tf.Variable]:
    """(TrainStep, lr multiplier) for the model as a Trainer would set them up: the model
    built unless level "full" applies, the Keras optimizer built only when unsharded.
    ``recorder`` measures the sharded step's traffic and carried gradients."""
    from highnoon.training.sharding import resolve_sharding

    level = resolve_sharding(sharding, strategy.num_replicas_in_sync)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = create_model()
        if level != "full":
            model.build()
        multiplier = tf.Variable(1.0, trainable=False, name="lr_multiplier")
        schedule = WarmupCosineSchedule(PEAK_LR, TOTAL_STEPS, WARMUP, multiplier=multiplier)
        optimizer = make_optimizer(schedule)
        if loss_scale is not None:
            optimizer = keras.optimizers.LossScaleOptimizer(
                optimizer, initial_scale=loss_scale, dynamic_growth_steps=3
            )
        if level is None:
            optimizer.build(model.trainable_variables)
    step = TrainStep(
        model, optimizer, strategy, sharding=level, collectives=collectives, recorder=recorder
    )
    return step, multiplier


def stage_config(stage: int, jit_compile: bool = False) -> StepConfig:
    return StepConfig(
        accumulation_steps=ACCUMULATION,
        clip_norm=STAGES[stage]["clip_norm"],
        jit_compile=jit_compile,
    )


def stages_between(first_step: int, last_step: int) -> list[tuple[int, int, int]]:
    """(stage, first, last) of the stages that global steps first_step..last_step touch."""
    bounds = [(1, STAGE_BOUNDARY), (STAGE_BOUNDARY + 1, TOTAL_STEPS)]
    spans = [(i, max(a, first_step), min(b, last_step)) for i, (a, b) in enumerate(bounds)]
    return [span for span in spans if span[1] <= span[2]]


def train(
    step: TrainStep,
    multiplier: tf.Variable,
    first_step: int = 1,
    last_step: int = TOTAL_STEPS,
    *,
    jit_compile: bool = False,
) -> list[float]:
    """Runs global steps first_step..last_step, stage by stage; returns the step losses."""
    losses: list[float] = []
    for stage, start, end in stages_between(first_step, last_step):
        multiplier.assign(STAGES[stage]["multiplier"])
        iterator = batches(step.strategy, start, end)
        out, _ = step.train_fn(stage_config(stage, jit_compile))(iterator, end - start + 1)
        losses += [float(x) for x in out.numpy()]
    return losses


def assert_weights_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want) == len(CONFIG.weight_shapes())
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)


def max_difference(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    return max(float(np.max(np.abs(g - w))) for g, w in zip(got, want))


def unsharded_bytes(step: TrainStep) -> dict[str, Any]:
    """What one replica of an unsharded run holds: whole weights, both moments (plus the step
    counter), and whole gradients."""
    weights = sum(int(np.prod(v.shape)) * 4 for v in step.model.trainable_variables)
    return {"weights": weights, "optimizer": 2 * weights + 8, "gradients": weights}
