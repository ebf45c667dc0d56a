"""HighNoonLM forward pass: shapes, causality, packing, init, save/load, training, XLA, precision."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from highnoon.models import (
    ModelDoesNotFitError,
    create_model,
    get_preset,
    load_model,
    save_model_config,
)
from highnoon.training.step import StepConfig, TrainStep, masked_token_loss_sum


def _ids(batch: int, seq: int, seed: int = 0, vocab: int = 259) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, size=(batch, seq)).astype(np.int32)


@pytest.fixture(scope="module")
def nano():
    model = create_model("highnoon-nano")
    model.build()
    return model


def test_logits_shape_dtype_and_parameter_count(nano):
    logits = nano(_ids(2, 16))
    assert logits.shape == (2, 16, 259)
    assert logits.dtype == tf.float32
    assert nano.count_params() == nano.config.num_parameters() == 115_200


@pytest.mark.parametrize(
    "name, overrides",
    [("highnoon-tiny", {}), ("highnoon-nano", {"tie_embeddings": False, "num_kv_heads": 1})],
)
def test_count_params_matches_formula_after_building(name, overrides):
    model = create_model(name, **overrides)
    model.build()
    assert model.count_params() == model.config.num_parameters()
    shapes = sorted(tuple(w.shape) for w in model.weights)
    assert shapes == sorted(s for _, s in model.config.weight_shapes())


def test_changing_a_future_token_never_changes_an_earlier_logit(nano):
    ids = _ids(1, 12)
    changed = ids.copy()
    changed[0, 7] = (changed[0, 7] + 1 - 3) % 256 + 3
    before, after = nano(ids).numpy(), nano(changed).numpy()
    np.testing.assert_allclose(before[:, :7], after[:, :7], atol=1e-6)
    assert np.abs(before[:, 7:] - after[:, 7:]).max() > 1e-4


def test_packed_row_equals_its_samples_run_separately(nano):
    a, b = _ids(1, 5, seed=1), _ids(1, 7, seed=2)
    packed = np.concatenate([a, b], axis=1)
    segment_ids = np.array([[0] * 5 + [1] * 7], np.int32)
    positions = np.array([list(range(5)) + list(range(7))], np.int32)
    logits = nano(packed, positions=positions, segment_ids=segment_ids).numpy()
    np.testing.assert_allclose(logits[:, :5], nano(a).numpy(), atol=1e-5)
    np.testing.assert_allclose(logits[:, 5:], nano(b).numpy(), atol=1e-5)
    # without segment ids the second sample sees the first one
    leaky = nano(packed, positions=positions).numpy()
    assert np.abs(leaky[:, 5:] - nano(b).numpy()).max() > 1e-4


def test_segment_ids_block_cross_segment_attention(nano):
    ids = _ids(1, 10)
    segment_ids = np.array([[0] * 4 + [1] * 6], np.int32)
    changed = ids.copy()
    changed[0, :4] = _ids(1, 4, seed=9)
    before = nano(ids, segment_ids=segment_ids).numpy()
    after = nano(changed, segment_ids=segment_ids).numpy()
    np.testing.assert_allclose(before[:, 4:], after[:, 4:], atol=1e-6)
    assert np.abs(before[:, :4] - after[:, :4]).max() > 1e-4


def test_rotary_positions_are_relative(nano):
    ids = _ids(1, 8)
    shifted = np.arange(8, dtype=np.int32)[None] + 11
    np.testing.assert_allclose(nano(ids, positions=shifted).numpy(), nano(ids).numpy(), atol=1e-4)
    reversed_positions = np.arange(8, dtype=np.int32)[None, ::-1].copy()
    assert np.abs(nano(ids, positions=reversed_positions).numpy() - nano(ids).numpy()).max() > 1e-3


def test_initial_weights_depend_on_config_only():
    first, second = create_model("highnoon-nano"), create_model("highnoon-nano")
    other = create_model("highnoon-nano", init_seed=1)
    for m in (first, second, other):
        m.build()
    for w1, w2 in zip(first.weights, second.weights):
        np.testing.assert_array_equal(w1.numpy(), w2.numpy())
    assert not np.array_equal(first.weights[0].numpy(), other.weights[0].numpy())
    q0 = first.block_0.attn.q.kernel.numpy()
    q1 = first.block_1.attn.q.kernel.numpy()
    assert not np.array_equal(q0, q1)  # every weight has its own seed
    assert abs(float(q0.std()) - 0.02) < 0.002


def test_dropout_only_in_training():
    model = create_model("highnoon-nano", dropout=0.5)
    ids = _ids(2, 8)
    np.testing.assert_array_equal(model(ids).numpy(), model(ids, training=False).numpy())
    assert np.abs(model(ids, training=True).numpy() - model(ids).numpy()).max() > 1e-3


def test_keras_save_and_load_round_trip(nano, tmp_path):
    path = str(tmp_path / "nano.keras")
    nano.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.config == nano.config
    ids = _ids(2, 9)
    np.testing.assert_array_equal(loaded(ids).numpy(), nano(ids).numpy())
    assert load_model(path).config == nano.config


def test_tf_checkpoint_round_trip(tmp_path):
    model = create_model("highnoon-nano", init_seed=5)
    model.build()
    step = tf.Variable(3, dtype=tf.int64)
    prefix = tf.train.Checkpoint(model=model, step=step).save(str(tmp_path / "ckpt"))
    save_model_config(model.config, str(tmp_path))
    ids = _ids(2, 9)
    for path in (str(tmp_path), prefix):
        restored = load_model(path)
        assert restored.config == model.config
        np.testing.assert_array_equal(restored(ids).numpy(), model(ids).numpy())
    # a fresh model with another seed really differs, so the equality above is the restore
    assert np.abs(create_model("highnoon-nano")(ids).numpy() - model(ids).numpy()).max() > 1e-3


def test_load_model_reads_a_non_local_model_dir(tmp_path):
    """A checkpoint, model_config.json and a .keras file on ram:// (gs:// in production)."""
    model = create_model("highnoon-nano", init_seed=6)
    model.build()
    run = f"ram://hn-load-{os.getpid()}-{tmp_path.name}"
    prefix = tf.train.Checkpoint(model=model).save(f"{run}/ckpt")
    save_model_config(model.config, run)
    model.save(f"{run}/nano.keras")
    ids = _ids(2, 9)
    for path in (run, prefix, f"{run}/nano.keras"):
        restored = load_model(path)
        assert restored.config == model.config
        np.testing.assert_array_equal(restored(ids).numpy(), model(ids).numpy())


def test_load_model_errors(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint in directory"):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        load_model(str(tmp_path / "missing.keras"))
    model = create_model("highnoon-nano")
    model.build()
    prefix = tf.train.Checkpoint(weights=model.block_0).save(str(tmp_path / "ckpt"))
    save_model_config(model.config, str(tmp_path))
    with pytest.raises(ValueError, match="does not hold the weights of the model"):
        load_model(prefix)
    bare = tmp_path / "bare"
    tf.train.Checkpoint(model=model).save(str(bare / "ckpt"))
    with pytest.raises(
        ValueError,
        match=r"bare/model_config.json does not exist; a checkpoint is loaded with the model "
        r"config saved beside it",
    ):
        load_model(str(bare))


def _trained_checkpoint(directory: str):
    """A nano model's checkpoint as a Trainer writes it (model, optimizer with moments, step),
    with model_config.json beside it; returns the model."""
    model = create_model("highnoon-nano", init_seed=4)
    model.build()
    optimizer = keras.optimizers.AdamW(1e-3)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(model(_ids(1, 6)))
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                  model.trainable_variables))  # fmt: skip
    step = tf.Variable(1, dtype=tf.int64)
    tf.train.Checkpoint(model=model, optimizer=optimizer, step=step).save(f"{directory}/ckpt")
    save_model_config(model.config, directory)
    return model


def _edit_config(directory: str, **changes) -> None:
    path = os.path.join(directory, "model_config.json")
    with open(path, encoding="utf-8") as handle:
        fields = json.load(handle)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({**fields, **changes}, handle)


def test_load_model_refuses_a_config_that_disagrees_with_its_checkpoint(tmp_path, monkeypatch):
    """As a user meets it: a run in ./checkpoints, its model_config.json edited afterwards."""
    monkeypatch.chdir(tmp_path)
    model = _trained_checkpoint("./checkpoints")
    ids = _ids(2, 9)
    np.testing.assert_array_equal(load_model("./checkpoints")(ids).numpy(), model(ids).numpy())

    _edit_config("./checkpoints", num_layers=1)  # block 1's weights would be dropped
    with pytest.raises(ValueError) as err:
        load_model("./checkpoints")
    message = str(err.value)
    assert message.startswith(
        "load_model: ./checkpoints/model_config.json disagrees with checkpoint "
        "'./checkpoints/ckpt-1': checkpoint values the model would not consume: "
        "model/block_1/attn/k/kernel [64, 32], model/block_1/attn/o/kernel [64, 64], "
    )
    assert "... (9 in all); the checkpoint implies num_layers=2 where the config says " in message
    assert "num_layers=1. Use the model_config.json the run wrote" in message

    _edit_config("./checkpoints", num_layers=3)  # a block the checkpoint has no values for
    with pytest.raises(ValueError, match=r"model weights the checkpoint holds no value for: "
                       r"model/block_2/attn/k/kernel \[64, 32\]"):  # fmt: skip
        load_model("./checkpoints")

    _edit_config("./checkpoints", num_layers=2, d_model=32)  # TF's raw shape error before
    with pytest.raises(ValueError) as err:
        load_model("./checkpoints/ckpt-1")
    message = str(err.value)
    assert (
        "checkpoint values that do not fit the model's weights: model/block_0/attn/k/kernel "
        "[64, 32] vs model weight [32, 16]," in message
    )
    assert "(20 in all); the checkpoint implies d_model=64 where the config says d_model=32" in (
        message
    )
    assert message.startswith("load_model: ./checkpoints/model_config.json disagrees with")


def test_load_model_checks_the_memory_plan_before_building(tmp_path, monkeypatch):
    _trained_checkpoint(str(tmp_path))
    _edit_config(str(tmp_path), vocab_size=10**9)

    def no_build(self, input_shape=None):
        raise AssertionError("the model was built")

    monkeypatch.setattr("highnoon.models.transformer.HighNoonLM.build", no_build)
    with pytest.raises(ModelDoesNotFitError) as err:
        load_model(str(tmp_path), device_memory_gib=64)
    assert str(err.value) == (
        f"{tmp_path}/model_config.json describes a model of 64,000,098,624 parameters whose "
        "float32 weights need 238.4 GiB, but the device (device_memory_gib) has 64.0 GiB "
        "(57.6 GiB usable at headroom=0.9); the embedding (vocab_size=1000000000 x d_model=64) "
        "takes 238.4 GiB: check those settings against the checkpoint"
    )
    # without the setting the check is against this machine's physical memory
    monkeypatch.setattr("highnoon.models.factory.host_memory_bytes", lambda: 16 * 1024**3)
    with pytest.raises(
        ModelDoesNotFitError, match=r"need 238.4 GiB, but this machine has 16.0 GiB"
    ):
        load_model(str(tmp_path))
    with pytest.raises(ValueError, match=r"device_memory_gib=nan must be a finite number > 0"):
        load_model(str(tmp_path), device_memory_gib=float("nan"))


def test_load_model_refuses_invalid_json_naming_the_file(tmp_path):
    _trained_checkpoint(str(tmp_path))
    (tmp_path / "model_config.json").write_text('{"d_model": 64,')
    with pytest.raises(ValueError) as err:
        load_model(str(tmp_path))
    assert str(err.value).startswith(
        f"{tmp_path}/model_config.json is not valid JSON (Expecting property name enclosed in "
        "double quotes at line 1 column 16)"
    )


def test_load_weights_builds_an_unbuilt_model_and_loads_exactly(tmp_path):
    """The documented flow: create_model(name).load_weights(file) on a fresh, unbuilt model."""
    saved = create_model("highnoon-nano", init_seed=8)
    saved.build()
    path = str(tmp_path / "x.weights.h5")
    saved.save_weights(path)
    fresh = create_model("highnoon-nano")  # another init seed: different initial weights
    assert not fresh.built
    fresh.load_weights(path)
    assert fresh.built
    for mine, theirs in zip(fresh.weights, saved.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    ids = _ids(2, 9)
    np.testing.assert_array_equal(fresh(ids).numpy(), saved(ids).numpy())
    assert fresh.embedding_dim == 64 == fresh.config.d_model


@pytest.mark.slow
def test_training_steps_lower_the_loss_under_xla():
    """The real training step (one XLA computation on one device) learns a counting pattern."""
    model = create_model("highnoon-nano")
    model.build()
    starts = np.random.default_rng(0).integers(3, 259, size=(4, 1))
    tokens = ((starts + np.arange(33)[None, :]) % 256 + 3).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": np.ones((4, 32))}
    logits = model(batch["inputs"])
    initial = float(masked_token_loss_sum(batch["targets"], logits, batch["loss_mask"])) / 128
    assert abs(initial - np.log(259)) < 0.3  # small init: near-uniform predictions
    optimizer = keras.optimizers.AdamW(1e-2)
    optimizer.build(model.trainable_variables)
    step = TrainStep(model, optimizer, tf.distribute.get_strategy())
    train = step.train_fn(StepConfig(clip_norm=None, jit_compile=True))
    losses, _ = train(iter(tf.data.Dataset.from_tensors(batch).repeat()), 15)
    assert abs(float(losses[0]) - initial) < 1e-3  # the compiled step computes the same loss
    assert float(losses[-1]) < 0.5 * initial


def test_xla_forward_matches_eager(nano):
    ids = _ids(2, 16)
    compiled = tf.function(lambda x: nano(x), jit_compile=True)
    np.testing.assert_allclose(compiled(ids).numpy(), nano(ids).numpy(), atol=1e-4)
    hlo = compiled.experimental_get_compiler_ir(tf.constant(ids))(stage="hlo")
    assert "HloModule" in hlo


@pytest.fixture
def policy():
    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)

    yield set_policy
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    "name, dtype", [("mixed_bfloat16", "bfloat16"), ("mixed_float16", "float16")]
)
def test_mixed_precision_gives_float32_logits(policy, name, dtype):
    reference = create_model("highnoon-nano")
    ids = _ids(2, 12)
    expected = reference(ids).numpy()
    policy(name)
    model = create_model("highnoon-nano")
    logits, cache = model.forward(tf.constant(ids))
    assert logits.dtype == tf.float32
    assert cache[0][0].dtype == dtype  # the blocks really compute in the low precision
    assert all(w.dtype == "float32" for w in model.weights)  # variables stay float32
    np.testing.assert_allclose(logits.numpy(), expected, atol=0.05)
    with tf.GradientTape() as tape:
        loss = masked_token_loss_sum(ids, model(ids, training=True), np.ones(ids.shape))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None and g.dtype == tf.float32 for g in grads)


def test_model_needs_static_sequence_length(nano):
    fn = tf.function(lambda x: nano(x), input_signature=[tf.TensorSpec([None, None], tf.int32)])
    with pytest.raises(ValueError, match="static sequence length"):
        fn(_ids(1, 4))


def test_an_argument_error_raised_while_tracing_keeps_its_class(nano):
    """AutoGraph re-raises errors from traced code; highnoon's errors come back as themselves
    (not as StagingError), so callers can catch what they were promised."""
    from highnoon.utils.validation import InvalidArgumentError

    fn = tf.function(lambda x: nano(x), input_signature=[tf.TensorSpec([None, None], tf.int32)])
    with pytest.raises(InvalidArgumentError, match="static sequence length"):
        fn(_ids(1, 4))


def test_model_config_property_and_get_config(nano):
    config = nano.get_config()
    assert config["config"] == get_preset("highnoon-nano").to_dict()
    assert type(nano).from_config(config).config == nano.config
    assert os.path.basename(nano.name) == nano.name
