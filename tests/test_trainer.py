"""The Trainer: API contract, events, checkpoints and exact resume, bad input."""

from __future__ import annotations

import glob
import inspect
import json
import os

import numpy as np
import pytest
import tensorflow as tf

import highnoon as hn
from highnoon.training.checkpointing import CheckpointError, DataPosition
from highnoon.training.step import StepConfig
from highnoon.training.trainer import CurriculumStage, NonFiniteLossError, Trainer
from tests.trainer_helpers import corpus, make_trainer, nano_model, write_jsonl


@pytest.fixture()
def data(tmp_path):
    """Two small JSONL datasets of varied sample length."""
    return {
        "a": write_jsonl(str(tmp_path / "a.jsonl"), corpus(0, 48)),
        "b": write_jsonl(str(tmp_path / "b.jsonl"), corpus(1, 32)),
    }


def weights_of(model) -> list[np.ndarray]:
    return [w.numpy() for w in model.weights]


# -- the public API contract ---------------------------------------------------------------
def test_signatures_and_defaults_match_the_public_api():
    init = inspect.signature(Trainer.__init__).parameters
    assert [(n, init[n].default) for n in list(init)[2:6]] == [
        ("learning_rate", 1e-4),
        ("batch_size", 8),
        ("max_seq_length", 2048),
        ("gradient_accumulation_steps", 1),
    ]
    train = inspect.signature(Trainer.train).parameters
    assert {n: p.default for n, p in train.items() if n != "self"} == {
        "epochs_per_stage": 10,
        "save_checkpoints": True,
        "checkpoint_dir": None,
        "checkpoint_interval": 1000,
        "log_interval": 100,
        "eval_interval": 500,
        "resume_from": None,
    }
    stage = inspect.signature(Trainer.add_curriculum_stage).parameters
    assert stage["epochs"].default is None and stage["weight"].default == 1.0
    assert hn.Trainer is Trainer
    from highnoon.training import Trainer as FromTraining

    assert FromTraining is Trainer
    stage = CurriculumStage("foundation", ["d1", "d2"], 10, 1.0, {"learning_rate": 5e-5})
    assert stage.config_overrides == {"learning_rate": 5e-5}


def test_train_runs_stages_emits_events_and_returns_summary(tmp_path, data):
    trainer = make_trainer(tmp_path, eval_fraction=0.25)
    assert trainer.add_curriculum_stage("first", [data["a"]], epochs=2) is trainer
    trainer.add_curriculum_stage("second", data["b"], epochs=1, weight=2.0, learning_rate=1e-3)
    events = []
    trainer.add_callback(events.append)
    summary = trainer.train(
        checkpoint_dir=str(tmp_path / "run"), checkpoint_interval=5, log_interval=2, eval_interval=4
    )
    names = [e["event"] for e in events]
    assert names[0] == "train_begin" and names[-1] == "train_end"
    assert names.count("stage_begin") == 2 and names.count("stage_complete") == 2
    epoch_ends = [(e["stage"], e["epoch"]) for e in events if e["event"] == "epoch_end"]
    assert epoch_ends == [("first", 0), ("first", 1), ("second", 0)]
    for event in events:
        if event["event"] == "epoch_end":
            assert np.isfinite(event["loss"])
        if event["event"] == "log":
            assert event["step"] % 2 == 0
            assert {"loss", "learning_rate", "tokens_per_second", "curriculum_fraction"} <= set(
                event
            )
            assert 0 < event["curriculum_fraction"] <= 1
        if event["event"] == "eval":
            assert event["perplexity"] == pytest.approx(np.exp(event["eval_loss"]))
    saved = [e for e in events if e["event"] == "checkpoint_saved"]
    assert saved and os.path.exists(saved[-1]["path"] + ".index")
    kept = glob.glob(str(tmp_path / "run" / "ckpt-*.index"))
    assert len(kept) == min(3, len(saved))  # max_checkpoints_to_keep
    assert summary["total_steps"] == events[0]["total_steps"] > 0
    assert [s["name"] for s in summary["stages_completed"]] == ["first", "second"]
    assert [s["epochs"] for s in summary["stages_completed"]] == [2, 1]
    assert all(np.isfinite(s["final_loss"]) for s in summary["stages_completed"])
    assert summary["tokens_seen"] > 0 and summary["eval"]
    with open(tmp_path / "run" / "summary.json") as handle:
        assert json.load(handle)["total_steps"] == summary["total_steps"]
    assert glob.glob(str(tmp_path / "run" / "summaries" / "events.out.tfevents.*"))


def test_the_second_stage_uses_its_weighted_learning_rate(tmp_path, data):
    trainer = make_trainer(tmp_path, lr_schedule="constant", warmup_steps=0)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=1)
    trainer.add_curriculum_stage("second", [data["b"]], epochs=1, weight=2.0, learning_rate=1e-3)
    logs = []
    trainer.add_callback(lambda e: logs.append(e) if e["event"] == "log" else None)
    trainer.train(save_checkpoints=False, log_interval=1)
    rates = {e["stage"]: e["learning_rate"] for e in logs}
    assert rates["first"] == pytest.approx(3e-3)
    assert rates["second"] == pytest.approx(2e-3)  # 1e-3 override x weight 2


# -- exact resume ---------------------------------------------------------------------------
class _StopAt(Exception):
    pass


def _two_stage_trainer(tmp_path, data, model):
    trainer = make_trainer(tmp_path, model=model)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=2)
    trainer.add_curriculum_stage("second", [data["b"]], epochs=2, weight=1.5)
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("stop_step", [5, 14])  # inside stage one; inside stage two
def test_interrupted_and_resumed_run_ends_bit_identical(tmp_path, data, stop_step):
    reference = _two_stage_trainer(tmp_path, data, nano_model())
    expected_summary = reference.train(checkpoint_dir=str(tmp_path / "full"), log_interval=1)
    expected = weights_of(reference.model)
    assert expected_summary["total_steps"] > stop_step

    def stop(event):
        if event["event"] == "log" and event["step"] == stop_step:
            raise _StopAt()

    interrupted = _two_stage_trainer(tmp_path, data, nano_model())
    interrupted.add_callback(stop)
    with pytest.raises(_StopAt):
        interrupted.train(checkpoint_dir=str(tmp_path / "cut"), log_interval=1)
    assert os.path.exists(tmp_path / "cut" / f"ckpt-{stop_step}.index")  # final checkpoint

    resumed = _two_stage_trainer(tmp_path, data, nano_model())
    summary = resumed.train(checkpoint_dir=str(tmp_path / "cut"), log_interval=1)
    assert summary["total_steps"] == expected_summary["total_steps"]
    assert summary["stages_completed"] == expected_summary["stages_completed"]
    for got, want in zip(weights_of(resumed.model), expected):
        np.testing.assert_array_equal(got, want)


def test_several_steps_per_call_train_the_same_and_trace_once(tmp_path, data):
    """steps_per_call=3 runs three optimizer steps per host call; an epoch whose length does not
    divide by 3 ends with a shorter call, which reuses the same compiled function."""
    results = {}
    for per_call in (1, 3):
        trainer = make_trainer(tmp_path, steps_per_call=per_call)
        trainer.add_curriculum_stage("first", [data["a"]], epochs=2)
        epoch_ends = []
        trainer.add_callback(
            lambda e, ends=epoch_ends: ends.append(e["step"]) if e["event"] == "epoch_end" else None
        )
        summary = trainer.train(save_checkpoints=False, log_interval=100)
        results[per_call] = (summary["total_steps"], weights_of(trainer.model))
    lengths = np.diff([0, *epoch_ends])
    assert np.any(lengths % 3 != 0), f"epoch lengths {lengths} give no shorter call"
    assert results[3][0] == results[1][0]
    for got, want in zip(results[3][1], results[1][1]):
        np.testing.assert_array_equal(got, want)
    (train_fn,) = [f for key, f in trainer._step._train_fns.items() if key[0] == "train"]
    assert train_fn.experimental_get_tracing_count() == 1


@pytest.mark.slow
def test_save_and_load_continue_where_training_stopped(tmp_path, data):
    reference = _two_stage_trainer(tmp_path, data, nano_model())
    reference.train(save_checkpoints=False)
    expected = weights_of(reference.model)

    def stop(event):
        if event["event"] == "stage_complete":
            raise _StopAt()

    first = _two_stage_trainer(tmp_path, data, nano_model())
    first.add_callback(stop)
    with pytest.raises(_StopAt):
        first.train(save_checkpoints=False)
    first.save(str(tmp_path / "saved"))
    with open(tmp_path / "saved" / "trainer.json") as handle:
        state = json.load(handle)
    assert [s["name"] for s in state["stages"]] == ["first", "second"]
    assert state["stages"][1]["weight"] == 1.5

    loaded = Trainer.load(str(tmp_path / "saved"), nano_model())
    summary = loaded.train(save_checkpoints=False)
    assert [s["name"] for s in summary["stages_completed"]] == ["first", "second"]
    for got, want in zip(weights_of(loaded.model), expected):
        np.testing.assert_array_equal(got, want)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(tmp_path, data, caplog):
    run_dir = str(tmp_path / "run")
    trainer = make_trainer(tmp_path)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=1)
    trainer.train(checkpoint_dir=run_dir, checkpoint_interval=4)
    prefixes = sorted(
        (p[: -len(".index")] for p in glob.glob(os.path.join(run_dir, "ckpt-*.index"))),
        key=lambda p: int(p.rsplit("-", 1)[1]),
    )
    assert len(prefixes) >= 2
    newest = prefixes[-1]
    for shard in glob.glob(newest + ".data-*"):
        with open(shard, "r+b") as handle:
            handle.truncate(8)
    again = make_trainer(tmp_path)
    again.add_curriculum_stage("first", [data["a"]], epochs=1)
    from highnoon.training.checkpointing import Checkpointer

    again._build(None)
    checkpointer = Checkpointer(
        run_dir, model=again.model, optimizer=again._optimizer, strategy=again.strategy
    )
    restored = checkpointer.restore(run_dir)
    assert restored == prefixes[-2]
    assert all(os.path.exists(p + ".index") for p in prefixes)  # nothing deleted


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"learning_rate": 0.0}, "learning_rate=0.0"),
        ({"batch_size": -2}, "batch_size=-2"),
        ({"max_seq_length": 0}, "max_seq_length=0"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps=0"),
        ({"mixed_precision": "fp8"}, "mixed_precision='fp8'"),
    ],
)
def test_invalid_settings_are_rejected_with_the_fix(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        make_trainer(tmp_path, **kwargs)


def test_stage_validation_happens_when_the_stage_is_added(tmp_path, data):
    trainer = make_trainer(tmp_path)
    trainer.add_curriculum_stage("first", [data["a"]])
    with pytest.raises(ValueError, match="already exists"):
        trainer.add_curriculum_stage("first", [data["b"]])
    with pytest.raises(ValueError, match="unknown config override.*'learning_rat'"):
        trainer.add_curriculum_stage("x", [data["b"]], learning_rat=1e-3)
    with pytest.raises(ValueError, match="no_such_dataset"):
        trainer.add_curriculum_stage("y", ["no_such_dataset"])
    with pytest.raises(ValueError, match="batch_size=0"):
        trainer.add_curriculum_stage("z", [data["b"]], batch_size=0)
    with pytest.raises(ValueError, match="datasets is empty"):
        trainer.add_curriculum_stage("w", [])
    assert [s.name for s in trainer.stages] == ["first"]


def test_train_without_stages_or_with_a_missing_resume_path(tmp_path, data):
    trainer = make_trainer(tmp_path)
    with pytest.raises(ValueError, match="no curriculum stages"):
        trainer.train()
    trainer.add_curriculum_stage("first", [data["a"]])
    with pytest.raises(ValueError, match="resume_from=.*holds no checkpoint"):
        trainer.train(resume_from=str(tmp_path / "nothing"))


def test_batch_that_does_not_divide_across_replicas(tmp_path, data, mirrored):
    strategy = mirrored
    trainer = make_trainer(tmp_path, batch_size=3, strategy=strategy)
    trainer.add_curriculum_stage("first", [data["a"]])
    with pytest.raises(ValueError, match="batch_size=3 does not divide across 2 replicas"):
        trainer.train(save_checkpoints=False)


def test_resuming_with_a_different_model_shape_is_a_clear_error(tmp_path, data):
    run_dir = str(tmp_path / "run")
    trainer = make_trainer(tmp_path)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=1)
    trainer.train(checkpoint_dir=run_dir)
    other = make_trainer(tmp_path, model=hn.create_model("highnoon-nano", d_model=96))
    other.add_curriculum_stage("first", [data["a"]], epochs=2)
    with pytest.raises(CheckpointError, match="different model.*d_model"):
        other.train(checkpoint_dir=run_dir)


def test_refusing_to_resume_an_existing_run(tmp_path, data):
    run_dir = str(tmp_path / "run")
    trainer = make_trainer(tmp_path)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=1)
    trainer.train(checkpoint_dir=run_dir)
    again = make_trainer(tmp_path, resume_existing=False)
    again.add_curriculum_stage("first", [data["a"]], epochs=1)
    with pytest.raises(ValueError, match="already holds a run"):
        again.train(checkpoint_dir=run_dir)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data):
    run_dir = str(tmp_path / "run")
    trainer = make_trainer(tmp_path)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=2)

    def poison(event):
        if event["event"] == "checkpoint_saved" and event["step"] == 4:
            trainer.model.weights[0].assign(tf.fill(trainer.model.weights[0].shape, np.nan))

    trainer.add_callback(poison)
    with pytest.raises(NonFiniteLossError, match="at step 5.*last good checkpoint"):
        trainer.train(checkpoint_dir=run_dir, checkpoint_interval=4)
    latest = tf.train.latest_checkpoint(run_dir)
    assert latest.endswith("ckpt-4")


# -- XLA and mixed precision ----------------------------------------------------------------
def test_xla_compiled_step_trains_and_matches_the_plain_step(tmp_path, data):
    """The gradient computation a TPU would run compiles with XLA on this CPU (static shapes)."""
    results = {}
    for jit in (False, True):
        trainer = make_trainer(tmp_path, jit_compile=jit, clip_norm=None)
        trainer.add_curriculum_stage("first", [data["a"]], epochs=1)
        summary = trainer.train(save_checkpoints=False)
        results[jit] = (summary, weights_of(trainer.model))
    step = trainer._step.engine
    config = StepConfig(accumulation_steps=1, clip_norm=1.0, jit_compile=True)
    batch = {key: tf.zeros([4, 32], tf.int32) for key in ("inputs", "targets", "loss_mask")}
    # One replica: gradients, clipping and the AdamW update are one XLA computation.
    update = step._compiled("update", step._update_one_replica, config)
    hlo = update.experimental_get_compiler_ir(batch, tf.constant(1.0), 1, 1.0)(stage="hlo")
    assert "HloModule" in hlo and " dot(" in hlo and " sqrt(" in hlo  # matmuls and Adam's sqrt
    # Several replicas: the gradients alone (the update runs after the all-reduce).
    hlo = step._gradient_fn(config).experimental_get_compiler_ir(batch, tf.constant(1.0), 1)(
        stage="hlo"
    )
    assert "HloModule" in hlo and " sqrt(" not in hlo
    assert results[True][0]["total_steps"] == results[False][0]["total_steps"]
    for got, want in zip(results[True][1], results[False][1]):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_mixed_bfloat16_training_keeps_float32_weights_and_finite_loss(tmp_path, data):
    import keras

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = nano_model()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    trainer = make_trainer(tmp_path, model=model, mixed_precision="mixed_bfloat16")
    trainer.add_curriculum_stage("first", [data["a"]], epochs=1)
    summary = trainer.train(save_checkpoints=False)
    assert np.isfinite(summary["stages_completed"][0]["final_loss"])
    assert all(w.dtype == "float32" for w in trainer.model.trainable_weights)
    with pytest.raises(ValueError, match="mixed_precision='mixed_bfloat16'.*set_global_policy"):
        make_trainer(tmp_path, mixed_precision="mixed_bfloat16")


def test_adaptive_curriculum_advances_on_the_reduced_loss_and_grows_the_pool(tmp_path, data):
    # Threshold 1.0: any epoch that does not halve the loss counts as a plateau, so the pool
    # must grow after each min_epochs_per_stage epoch; the decisions are checkpointed.
    trainer = make_trainer(
        tmp_path,
        adaptive=True,
        loss_threshold_for_progression=1.0,
        min_epochs_per_stage=1,
        max_epochs_per_stage=2,
        initial_fraction=0.25,
        pacing="reference",
    )
    trainer.add_curriculum_stage("first", [data["a"]], epochs=4)
    epochs, fractions = [], {}
    trainer.add_callback(lambda e: epochs.append(e) if e["event"] == "epoch_end" else None)
    trainer.add_callback(
        lambda e: (
            fractions.setdefault(e["epoch"], e["curriculum_fraction"])
            if e["event"] == "log"
            else None
        )
    )
    trainer.train(checkpoint_dir=str(tmp_path / "run"), log_interval=1)
    assert any(e["curriculum_advanced"] for e in epochs)
    assert fractions[0] < fractions[max(fractions)]
    restored = DataPosition.from_json(
        tf.train.load_checkpoint(str(tmp_path / "run"))
        .get_tensor("position/.ATTRIBUTES/py_state")
        .decode()
    )
    assert restored.curriculum_states["0"]["decisions"]


def test_mixed_float16_clips_the_true_gradients_whatever_the_loss_scale():
    """Loss-scaled gradients are clipped at clip_norm * scale, so the update does not depend on
    the loss scale (clipping the scaled gradients at clip_norm would clip 2^15 times harder)."""
    import keras

    from highnoon.training.step import StepConfig, TrainStep

    batch = {
        "inputs": np.arange(64, dtype=np.int32).reshape(4, 16) % 200 + 3,
        "targets": (np.arange(64, dtype=np.int32).reshape(4, 16) + 1) % 200 + 3,
        "loss_mask": np.ones((4, 16), np.float32),
    }
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        results = []
        for scale in (1.0, 2.0**15):
            keras.utils.set_random_seed(0)
            model = hn.create_model("highnoon-nano", max_seq_length=16)
            model.build()
            optimizer = keras.optimizers.LossScaleOptimizer(
                keras.optimizers.SGD(0.1), initial_scale=scale, dynamic_growth_steps=10**6
            )
            optimizer.build(model.trainable_variables)
            step = TrainStep(model, optimizer, tf.distribute.get_strategy())
            train = step.train_fn(StepConfig(clip_norm=0.01))
            train(iter(tf.data.Dataset.from_tensors(batch).repeat()), 1)
            results.append([w.numpy() for w in model.trainable_variables])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
