"""ZeRO-style sharding (``highnoon.training.sharding``), in one process.

The training tests use a 2-replica MirroredStrategy over the two logical CPUs of
``tests/conftest.py`` and drive ``TrainStep`` directly on the one-block nano model of
``tests/sharding_helpers.py``: each level trains 24 steps of accumulation 2 with clipping and a
stage boundary and is compared with the unsharded run on the same global batches; real worker
processes are in ``tests/test_sharding_multiworker.py``.
"""

from __future__ import annotations

import contextlib
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

import highnoon as hn
from highnoon.models.memory import (
    GIB,
    ModelDoesNotFitError,
    check_sharding_fits,
    estimate_memory,
    share_elements,
    smallest_sharding,
)
from highnoon.training.checkpointing import Checkpointer, CheckpointError
from highnoon.training.optimization import WarmupCosineSchedule, make_optimizer
from highnoon.training.sharding import (
    ShardingLevel,
    check_level,
    resolve_level,
    resolve_sharding,
    step_traffic,
)
from highnoon.training.sharding.adamw import (
    AdamWSettings,
    UnsupportedOptimizerError,
    adamw_update,
)
from highnoon.training.sharding.checkpoint import has_storage
from highnoon.training.sharding.fsdp import ShardingModelError
from highnoon.training.sharding.layout import ShardSpec
from highnoon.training.sharding.recorder import StepRecorder
from highnoon.training.step import StepConfig, TrainStep
from highnoon.training.step_engine import UnshardedEngine
from highnoon.utils.validation import InvalidArgumentError
from tests import sharding_helpers as H

LEVELS = ("optimizer", "gradients", "full")


@contextlib.contextmanager
def grappler_arithmetic(enabled: bool):
    """Grappler's arithmetic optimizer on or off for functions first run inside the block."""
    before = tf.config.optimizer.get_experimental_options().get("arithmetic_optimization", True)
    tf.config.optimizer.set_experimental_options({"arithmetic_optimization": enabled})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({"arithmetic_optimization": before})


# -- layout and levels (no training) ----------------------------------------------------------
@pytest.mark.parametrize("shape", [(259, 64), (7,), (5, 3), (1,)])
@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_flatten_and_pad_shares_are_equal_and_give_back_the_variable(shape, replicas):
    spec = ShardSpec(shape, replicas)
    full = tf.reshape(tf.range(spec.size, dtype=tf.float32) + 1.0, shape)
    shares = [spec.shard(full, r) for r in range(replicas)]
    assert [s.shape for s in shares] == [(spec.shard_size,)] * replicas
    assert 0 <= spec.padding < replicas
    joined = tf.concat(shares, axis=0)
    np.testing.assert_array_equal(joined[: spec.size], tf.reshape(full, [-1]))
    np.testing.assert_array_equal(joined[spec.size :], np.zeros(spec.padding))
    np.testing.assert_array_equal(spec.unshard(joined), full)


def test_unknown_level_is_an_error_naming_the_levels():
    message = "sharding='zero3' must be one of [None, 'optimizer', 'gradients', 'full']"
    with pytest.raises(InvalidArgumentError) as error:
        check_level("zero3")
    assert str(error.value) == message
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    model = hn.create_model("highnoon-nano", max_seq_length=H.SEQ)
    with pytest.raises(InvalidArgumentError) as error:
        TrainStep(model, keras.optimizers.AdamW(), strategy, sharding="zero3")
    assert str(error.value) == message
    assert not model.built  # refused before anything was built


def test_a_level_is_parsed_once_from_the_users_string():
    assert ShardingLevel.parse(None) is None
    levels = [ShardingLevel.parse(name) for name in LEVELS]
    assert [level.name for level in levels] == ["optimizer", "gradients", "full"]
    assert [level.shards_gradients for level in levels] == [False, True, True]
    assert [level.shards_weights for level in levels] == [False, False, True]
    assert ShardingLevel.parse(levels[2]) is levels[2] and str(levels[2]) == "full"
    with pytest.raises(InvalidArgumentError) as error:
        ShardingLevel("zero3")
    assert str(error.value) == "sharding='zero3' must be one of ['optimizer', 'gradients', 'full']"
    with pytest.raises(InvalidArgumentError, match="must be one of"):
        ShardingLevel.parse(1)
    # Consumers of a level take the type and the name alike.
    config = hn.models.get_preset("highnoon-nano")
    for level in levels:
        by_type = step_traffic(config, level, 2, accumulation_steps=2)
        assert by_type == step_traffic(config, level.name, 2, accumulation_steps=2)
    assert resolve_level("gradients", 2) == levels[1] and resolve_level("full", 1) is None
    assert check_level(levels[0]) == "optimizer"


def test_a_recorder_refuses_a_step_it_has_not_seen_traced():
    with pytest.raises(InvalidArgumentError) as error:
        StepRecorder().bytes_sent_per_step(StepConfig(accumulation_steps=2))
    assert str(error.value) == (
        "config=StepConfig(accumulation_steps=2, clip_norm=1.0, jit_compile=False, "
        "steps_per_call=None) names a step that has not been traced yet; run it once first"
    )


def test_sharding_on_one_replica_warns_and_trains_unsharded(caplog):
    with caplog.at_level(logging.WARNING):
        assert resolve_sharding("full", 1) is None
    assert "sharding='full' on one replica has nothing to share; training unsharded" in caplog.text
    assert resolve_sharding("optimizer", 2) == "optimizer"
    step, multiplier = H.build(tf.distribute.OneDeviceStrategy("/cpu:0"), "full")
    assert step.level is None and isinstance(step.engine, UnshardedEngine)
    losses = H.train(step, multiplier, 1, 2)
    assert len(losses) == 2 and int(step.optimizer.iterations.numpy()) == 2


# -- the AdamW over shares --------------------------------------------------------------------
def test_adamw_over_shares_is_keras_adamw_bitwise():
    """The configured AdamW (schedule with a stage multiplier, decay exclusions by name) and the
    share update give the same bits, step after step, on the nano model's own variables, when
    grappler does not reassociate the arithmetic (with it on, the two graphs of 20 updates are
    rewritten differently and a few elements differ in the last bit; every single update is
    bitwise equal either way)."""
    model = hn.create_model("highnoon-nano", max_seq_length=H.SEQ)
    model.build()
    multiplier = tf.Variable(0.7, trainable=False)
    optimizer = make_optimizer(WarmupCosineSchedule(3e-3, 20, 3, multiplier=multiplier))
    variables = model.trainable_variables
    optimizer.build(variables)
    settings = AdamWSettings.from_keras(optimizer)
    decays = [settings.decays(v) for v in variables]
    assert decays == [optimizer._use_weight_decay(v.value) for v in variables]
    assert decays.count(False) == 5  # the five RMSNorm scales ("norm" in their paths)
    rng = np.random.default_rng(0)
    weights = [tf.constant(v.numpy()) for v in variables]
    m = [tf.zeros_like(w) for w in weights]
    v = [tf.zeros_like(w) for w in weights]

    @tf.function
    def keras_step(grads):
        optimizer.apply(grads, variables)

    @tf.function
    def share_step(weights, grads, m, v, iterations):
        rate = settings.learning_rate_at(iterations)
        out = [
            adamw_update(w, g, m_, v_, rate, iterations, settings, d)
            for w, g, m_, v_, d in zip(weights, grads, m, v, decays)
        ]
        return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]

    with grappler_arithmetic(False):
        for iteration in range(8):
            grads = [tf.constant(rng.normal(size=x.shape).astype("float32")) for x in variables]
            keras_step(grads)
            weights, m, v = share_step(weights, grads, m, v, tf.constant(iteration, tf.int64))
    for mine, theirs in [
        (weights, variables),
        (m, optimizer._momentums),
        (v, optimizer._velocities),
    ]:
        assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(mine, theirs))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: keras.optimizers.SGD(0.1),
            "sharding needs an Adam or AdamW optimizer (make_optimizer name='adamw' or 'adam'), "
            "not SGD; use sharding=None for other optimizers",
        ),
        (
            lambda: keras.optimizers.AdamW(amsgrad=True, global_clipnorm=1.0),
            "sharding does not support the optimizer option(s) ['amsgrad', 'global_clipnorm']",
        ),
    ],
)
def test_unsupported_optimizers_are_refused(make, message):
    with pytest.raises(UnsupportedOptimizerError) as error:
        AdamWSettings.from_keras(make())
    assert str(error.value).startswith(message)


def test_sharded_step_refuses_bad_setups(mirrored):
    def parts(build_model: bool = True, build_optimizer: bool = False):
        with mirrored.scope():
            model = hn.create_model("highnoon-nano", max_seq_length=H.SEQ)
            if build_model:
                model.build()
            optimizer = keras.optimizers.AdamW()
            if build_optimizer:
                optimizer.build(model.trainable_variables)
        return model, optimizer

    with pytest.raises(ValueError, match="sharding needs the optimizer unbuilt"):
        TrainStep(*parts(build_optimizer=True), mirrored, sharding="optimizer")
    with pytest.raises(ValueError, match="sharding='gradients' needs the model built"):
        TrainStep(*parts(build_model=False), mirrored, sharding="gradients")
    with pytest.raises(ShardingModelError, match="sharding='full' needs an unbuilt model"):
        TrainStep(*parts(), mirrored, sharding="full")
    with pytest.raises(ValueError, match="collectives='xla' needs TPUStrategy"):
        TrainStep(*parts(), mirrored, sharding="optimizer", collectives="xla")
    with mirrored.scope():
        blockless = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ShardingModelError) as error:
        TrainStep(blockless, keras.optimizers.AdamW(), mirrored, sharding="full")
    assert str(error.value) == (
        "sharding='full' needs a model that runs its weights block by block (weight_segments() "
        "and call(..., runner=...), as HighNoonLM); Sequential has no blocks to gather: use "
        "sharding='gradients'"
    )


def test_tpu_reduce_scatter_compiles_to_an_hlo_reduce_scatter():
    """The TPU path's reduce-scatter is XLA's own (XlaReduceScatter); XLA on CPU compiles it
    for a one-replica group (it cannot run it without a device assignment)."""
    from highnoon.training.sharding.collectives import XlaCollectives

    spec = ShardSpec((5, 3), 1)

    @tf.function(jit_compile=True)
    def reduce_scatter(x):
        return XlaCollectives(1).reduce_scatter([x], [spec])[0]

    hlo = reduce_scatter.experimental_get_compiler_ir(tf.ones([5, 3]))(stage="hlo")
    assert "reduce-scatter(f32[15]" in hlo.replace("{0}", "")


def test_tpu_all_gather_is_an_all_to_all_of_the_tiled_share():
    """The TPU path gathers shares with XLA's AllToAll, as TPUStrategy.all_gather does. XLA on
    CPU has no AllToAll kernel, so only the traced graph is checked here."""
    from highnoon.training.sharding.collectives import XlaCollectives

    spec = ShardSpec((5, 3), 2)

    @tf.function
    def gather(share):
        return XlaCollectives(2).all_gather([share], [spec])[0]

    graph = gather.get_concrete_function(tf.TensorSpec([8], tf.float32)).graph
    ops = {op.type: op for op in graph.get_operations()}
    assert "AllToAll" in ops and ops["AllToAll"].get_attr("split_count") == 2
    assert ops["AllToAll"].inputs[0].shape.as_list() == [16]  # the share tiled twice
    assert gather.get_concrete_function(tf.TensorSpec([8], tf.float32)).output_shapes == [5, 3]


# -- the memory plan and the traffic (pure Python) --------------------------------------------
def test_memory_estimate_per_sharding_level():
    config = hn.models.get_preset("highnoon-nano")
    n, shares = config.num_parameters(), share_elements(config, 2)
    assert shares == sum(-(-int(np.prod(s)) // 2) for _, s in config.weight_shapes())
    kwargs = {
        "batch_size": 8,
        "seq_length": 64,
        "num_replicas": 2,
        "gradient_accumulation_steps": 2,
    }
    base = estimate_memory(config, **kwargs)
    zero1 = estimate_memory(config, sharding="optimizer", **kwargs)
    zero2 = estimate_memory(config, sharding="gradients", **kwargs)
    full = estimate_memory(config, sharding="full", **kwargs)
    assert (base.weights_bytes, base.gradients_bytes, base.optimizer_bytes) == (4 * n, 8 * n, 8 * n)
    assert (zero1.weights_bytes, zero1.gradients_bytes) == (4 * n, 8 * n)
    assert zero1.optimizer_bytes == zero2.optimizer_bytes == full.optimizer_bytes == 8 * shares
    assert zero2.gradients_bytes == 4 * n + 4 * shares
    d, kv, f = config.d_model, config.kv_dim, config.d_ff
    segment = 2 * d + 2 * d * d + 2 * d * kv + 3 * d * f  # a block: larger than the tied head
    assert segment > config.vocab_size * d + d
    assert full.weights_bytes == full.gradients_bytes == 4 * (shares + segment)
    assert full.remat and not base.remat
    remat = estimate_memory(config, remat=True, **kwargs)
    assert full.activations_bytes == remat.activations_bytes < base.activations_bytes
    assert "sharding='full' over 2 replicas, remat" in full.describe()


def test_memory_plan_names_the_smallest_level_that_fits():
    kwargs = {"batch_size": 8, "seq_length": 4096, "num_replicas": 8, "compute_dtype": "bfloat16"}
    level, estimate = smallest_sharding("highnoon-7b", 95 * GIB, remat=True, **kwargs)
    assert level == "optimizer" and estimate.total_gib < 95 * 0.9
    with pytest.raises(ModelDoesNotFitError) as error:
        check_sharding_fits("highnoon-7b", 32 * GIB, sharding=None, remat=True, **kwargs)
    assert str(error.value).endswith(
        "sharding='full' would fit (19.4 GiB per replica): set Trainer.sharding = 'full'"
    )
    with pytest.raises(ModelDoesNotFitError, match="no sharding level fits: even sharding='full'"):
        check_sharding_fits("highnoon-20b", 16 * GIB, sharding="full", remat=True, **kwargs)
    fits = check_sharding_fits("highnoon-7b", 32 * GIB, sharding="full", remat=True, **kwargs)
    assert fits.sharding == "full"
    with pytest.raises(ValueError, match="sharding='optimizer' supports the optimizers"):
        estimate_memory("highnoon-nano", batch_size=8, seq_length=8, optimizer="sgd",
                        sharding="optimizer")  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="sharding='zero' must be one of"):
        estimate_memory("highnoon-nano", batch_size=8, seq_length=8, sharding="zero")


def test_readme_tables_are_generated():
    from highnoon.training.sharding import table

    memory = table.memory_table(64).splitlines()
    assert memory[0] == "| preset | none | `optimizer` | `gradients` | `full` |"
    assert len(memory) == 2 + len(hn.models.PRESETS)
    chips = table.chips_table()
    assert "| highnoon-20b | v4-64 (full) |" in chips


# -- the model's remat option -----------------------------------------------------------------
def test_remat_gives_the_same_gradients_and_is_saved_in_the_config():
    ids = tf.constant(np.random.default_rng(0).integers(0, 259, size=(2, H.SEQ)), tf.int32)
    grads = []
    for remat in (False, True):
        model = hn.create_model("highnoon-nano", max_seq_length=H.SEQ, remat=remat)
        model.build()

        @tf.function
        def gradients(model=model):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(model(ids, training=True)))
            return tape.gradient(loss, model.trainable_variables)

        grads.append(gradients())
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(*grads))
    again = hn.models.HighNoonLM.from_config(model.get_config())
    assert again.remat is True
    with pytest.raises(ValueError, match="remat=True with dropout=0.1 is not supported"):
        hn.create_model("highnoon-nano", dropout=0.1, remat=True)


# -- training under MirroredStrategy (2 logical CPUs) -----------------------------------------
@pytest.fixture(scope="module")
def unsharded_run(mirrored):
    """The unsharded run, all 24 steps, and its weights after step 4 (taken on the way: one run
    serves the level tests and the XLA tests). (step, losses, weights after 4 steps)."""
    step, multiplier = H.build(mirrored, None)
    losses = H.train(step, multiplier, 1, 4)
    four_steps = step.full_weights()
    losses += H.train(step, multiplier, 5, H.TOTAL_STEPS)
    return step, losses, four_steps


@pytest.fixture(scope="module")
def unsharded(unsharded_run):
    step, losses, _ = unsharded_run
    return step, losses


@pytest.mark.slow
@pytest.mark.parametrize("level", ["optimizer", "gradients"])  # "full": the multi-worker tests
def test_each_level_trains_to_the_unsharded_weights(mirrored, unsharded, level):
    reference, reference_losses = unsharded
    recorder = StepRecorder()
    step, multiplier = H.build(mirrored, level, recorder=recorder)
    losses = H.train(step, multiplier)
    np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
    H.assert_weights_close(step.full_weights(), reference.full_weights())
    # Per replica, from the variables that exist: moments (all levels), the gradients carried
    # between micro-batches ("gradients", "full") and the weights ("full") are halves, up to
    # padding (every nano variable has an even size: none). Level "full" (weights halved too):
    # tests/test_sharding_multiworker.py and tests/test_trainer_sharding.py.
    full = H.unsharded_bytes(reference)
    held = recorder.replica_bytes(step.engine)
    assert held["optimizer"] == full["optimizer"] // 2 + 4  # + the int64 step counter's half
    assert held["gradients"] == (
        full["gradients"] if level == "optimizer" else full["gradients"] // 2
    )
    assert held["weights"] == full["weights"]
    # The collectives the traced step issues: the model's traffic plus the clip norm's scalar.
    config = H.stage_config(1)
    logged = recorder.bytes_sent_per_step(config)
    expected = step_traffic(step.model.config, level, 2, accumulation_steps=H.ACCUMULATION)
    assert logged == expected + 4


@pytest.mark.slow
def test_optimizer_level_is_bitwise_the_unsharded_step_when_grappler_keeps_the_arithmetic(mirrored):
    """Same all-reduce (accumulated whole gradients), no clipping: the bits are the unsharded
    run's when TensorFlow does not reassociate the update's arithmetic. With grappler's
    arithmetic optimizer on (the default) the two programs' scalar chains are rewritten
    differently and the weights differ in the last bit."""

    def run(level):
        step, _multiplier = H.build(mirrored, level)
        config = StepConfig(accumulation_steps=H.ACCUMULATION, clip_norm=None)
        step.train_fn(config)(H.batches(mirrored, 1, 10), 10)
        return step.full_weights()

    with grappler_arithmetic(False):
        assert all(np.array_equal(a, b) for a, b in zip(run("optimizer"), run(None)))


@pytest.fixture(scope="module")
def unsharded_four_steps(unsharded_run) -> list[np.ndarray]:
    return unsharded_run[2]


@pytest.fixture(scope="module")
def full_four_steps_xla(mirrored) -> TrainStep:
    """Level "full" after 4 XLA-compiled steps (its trace and compilations are the slowest of
    this module, so the XLA and the checkpoint tests share it; the other-shape test saves it
    too)."""
    step, multiplier = H.build(mirrored, "full")
    H.train(step, multiplier, 1, 4, jit_compile=True)
    return step


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
def test_sharded_step_compiles_with_xla(mirrored, unsharded_four_steps, level, request):
    if level == "full":
        step = request.getfixturevalue("full_four_steps_xla")
    else:
        step, multiplier = H.build(mirrored, level)
        H.train(step, multiplier, 1, 4, jit_compile=True)
    # XLA fuses differently (as the unsharded jit_compile runs do): float tolerance.
    H.assert_weights_close(step.full_weights(), unsharded_four_steps)
    engine = step.engine
    shares = [tf.zeros([s.shard_size]) for s in engine.specs]
    update = engine._compiled["update"]
    args = (shares, shares, shares, shares, tf.constant(1e-3), tf.constant(3, tf.int64))
    hlo = update.experimental_get_compiler_ir(*args)(stage="hlo")
    entry = hlo[hlo.index("ENTRY") :]
    # One XLA computation over the replica's shares ([S] = half of each variable), no collective.
    for spec in engine.specs:
        assert f"f32[{spec.shard_size}]" in entry
    assert "all-reduce" not in hlo and "sqrt" in hlo and "power" in hlo
    if level == "full":
        # Each segment (embedding, each block, head) runs as an XLA computation.
        graph = step._train_fns[("train", H.ACCUMULATION, H.STAGES[0]["clip_norm"], True, False)]
        compiled = _xla_calls(graph.get_concrete_function(
            H.batches(mirrored, 1, 1), tf.constant(1, tf.int32)).graph.as_graph_def())  # fmt: skip
        assert compiled >= len(step.model.weight_segments()) == 2 + H.LAYERS
    else:
        gradients = engine._compiled["grads" if level == "optimizer" else "micro"]
        assert gradients.experimental_get_tracing_count() >= 1


def _xla_calls(graph_def) -> int:
    """Function calls marked for XLA compilation in a graph and its function library."""
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return sum(1 for n in nodes if n.attr["_XlaMustCompile"].b)


@pytest.mark.slow
@pytest.mark.parametrize("level", ["full"])  # the loss-scale state is the same at every level
def test_mixed_float16_loss_scaling_matches_keras(mirrored, level, tmp_path):
    """Dynamic loss scaling as Keras' LossScaleOptimizer: a too-large initial scale makes the
    first steps' gradients overflow, which skips them and halves the scale; after 3 finite
    steps the scale doubles. Same scale, same step count, the same weights to float tolerance
    (float16 tolerance at level "full", whose gradients are summed per segment)."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        runs = {}
        for name in (None, level):
            step, _multiplier = H.build(mirrored, name, loss_scale=2.0**24)
            config = StepConfig(accumulation_steps=H.ACCUMULATION, clip_norm=None)
            step.train_fn(config)(H.batches(mirrored, 1, 10), 10)
            runs[name] = step
    finally:
        keras.mixed_precision.set_global_policy("float32")
    keras_opt, state = runs[None].optimizer, runs[level].engine.state
    scale = float(keras_opt.dynamic_scale.numpy())
    iterations = int(keras_opt.iterations.numpy())
    assert 0 < iterations < 10  # some steps were skipped
    assert float(state.loss_scale.values[0].numpy()) == scale
    assert int(state.iterations.values[0].numpy()) == iterations
    want = runs[None].full_weights()
    if level == "optimizer":
        H.assert_weights_close(runs[level].full_weights(), want)
    else:  # float16 activations, and the gathered segments' gradients summed in another order
        for got, expected in zip(runs[level].full_weights(), want):
            np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-3)
    # The checkpoint has the LossScaleOptimizer's layout; Keras restores scale and counters.
    paths = {n: _checkpointer(runs[n], str(tmp_path / str(n)), mirrored).save(10) for n in runs}
    assert dict(tf.train.list_variables(paths[level])) == dict(tf.train.list_variables(paths[None]))
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        fresh, _ = H.build(mirrored, None, loss_scale=1.0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    _checkpointer(fresh, str(tmp_path / level), mirrored).restore(str(tmp_path / level))
    assert float(fresh.optimizer.dynamic_scale.numpy()) == scale
    assert int(fresh.optimizer.iterations.numpy()) == iterations
    assert int(fresh.optimizer.step_counter.numpy()) == int(state.growth_counter.values[0].numpy())


# -- checkpoints ------------------------------------------------------------------------------
def _checkpointer(step: TrainStep, directory: str, strategy) -> Checkpointer:
    objects = step.checkpoint_objects()
    return Checkpointer(
        directory, model=objects["model"], optimizer=objects["optimizer"], strategy=strategy
    )


@pytest.mark.slow
def test_sharded_checkpoints_have_the_unsharded_names_and_restore_anywhere(
    mirrored, unsharded, full_four_steps_xla, tmp_path
):
    reference, _ = unsharded
    ref_path = _checkpointer(reference, str(tmp_path / "ref"), mirrored).save(24)
    step = full_four_steps_xla
    saver = _checkpointer(step, str(tmp_path / "full"), mirrored)
    saver.write_model_config(step.model.config.to_dict())
    path = saver.save(4)
    assert dict(tf.train.list_variables(path)) == dict(tf.train.list_variables(ref_path))
    weights = step.full_weights()
    state = step.engine.state
    moments = [state.full_value(m, s).numpy() for m, s in zip(state.m, step.engine.specs)]

    # Unsharded, on one device: the Keras model and AdamW read it as their own.
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    single, _ = H.build(one, None)
    _checkpointer(single, str(tmp_path / "full"), one).restore(str(tmp_path / "full"))
    assert all(np.array_equal(a, b) for a, b in zip(single.full_weights(), weights))
    assert all(np.array_equal(a.numpy(), b) for a, b in zip(single.optimizer._momentums, moments))
    assert int(single.optimizer.iterations.numpy()) == 4
    # load_model (launch.generate's loader) reads the sharded run's checkpoint.
    loaded = hn.models.load_model(str(tmp_path / "full"))
    assert all(np.array_equal(a.numpy(), b) for a, b in zip(loaded.trainable_variables, weights))
    # An unsharded checkpoint restores into another level's shares.
    other, _ = H.build(mirrored, "gradients")
    _checkpointer(other, str(tmp_path / "ref"), mirrored).restore(str(tmp_path / "ref"))
    assert all(np.array_equal(a, b) for a, b in zip(other.full_weights(), reference.full_weights()))
    velocities = [
        other.engine.state.full_value(v, s).numpy()
        for v, s in zip(other.engine.state.v, other.engine.specs)
    ]
    assert all(
        np.array_equal(a.numpy(), b) for a, b in zip(reference.optimizer._velocities, velocities)
    )


@pytest.mark.slow
def test_a_checkpoint_of_another_shape_is_refused(mirrored, full_four_steps_xla, tmp_path):
    _checkpointer(full_four_steps_xla, str(tmp_path / "ckpt"), mirrored).save(1)
    with mirrored.scope():
        wider = H.create_model(d_ff=128)
        optimizer = make_optimizer(WarmupCosineSchedule(3e-3, 20, 2))
    other = TrainStep(wider, optimizer, mirrored, sharding="full")
    with pytest.raises(CheckpointError) as error:
        _checkpointer(other, str(tmp_path / "ckpt"), mirrored).restore(str(tmp_path / "ckpt"))
    assert "was written by a model of a different shape (shape mismatch: a tensor of shape " in str(
        error.value
    )


class _PlusOnes(keras.layers.Layer):
    """A layer without ``compute_output_shape``: called on a symbolic input, Keras infers its
    output inside a stateless scope, whose exit initialises every deferred Keras variable of the
    process (as KerasHub's Llama and Gemma layers do when their backbone is built)."""

    def build(self, input_shape):
        self.offset = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    def call(self, x):
        return x + self.offset


def test_a_model_built_after_a_storage_less_one_initialises_its_variables(mirrored):
    """Level "full" builds its model storage-less and makes reading a weight an error; those
    variables must not stay on Keras' process-wide list of variables to initialise later, or the
    next model built symbolically in the process reads their refusing initialisers and fails
    (commit bdb8690)."""
    step, _ = H.build(mirrored, "full")
    assert not any(has_storage(v) for v in step.model.weights)
    inputs = keras.Input((4,))
    other = keras.Model(inputs, _PlusOnes()(inputs))
    np.testing.assert_array_equal(other.weights[0].numpy(), np.ones(4, "float32"))
    np.testing.assert_array_equal(other(np.zeros((1, 4), "float32")), np.ones((1, 4)))
    # The storage-less model still refuses reads rather than giving its initialiser's value.
    with pytest.raises(ShardingModelError, match="has no value of its own: with sharding='full'"):
        step.model.weights[0].numpy()


@pytest.mark.slow
def test_full_level_starts_from_the_unsharded_weights_and_evaluates_alike(mirrored):
    """The shares are cut from the seeded initialisers' values: gathered, they are the
    unsharded model's initial weights, bit for bit, evaluation through the gathered segments
    gives the unsharded loss, and the exported model the unsharded logits."""
    step, _ = H.build(mirrored, "full")
    reference, _ = H.build(mirrored, None)
    assert all(np.array_equal(a, b) for a, b in zip(step.full_weights(), reference.full_weights()))
    batch = next(H.batches(mirrored, 1, 1))
    got = [float(x) for x in step.eval_fn()(batch)]
    want = [float(x) for x in reference.eval_fn()(batch)]
    assert got == want
    # The model itself holds no weights: reading one is an error, not its initial value.
    assert not any(has_storage(v) for v in step.model.weights)
    with pytest.raises(ShardingModelError, match="has no value of its own: with sharding='full'"):
        step.model.weights[0].numpy()
    # export_model gives a whole copy for inference.
    exported = step.export_model()
    ids = tf.constant(H.global_batch(1)["inputs"][:2])
    np.testing.assert_array_equal(exported(ids), reference.model(ids))
