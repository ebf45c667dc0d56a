"""Averaging a run's last K checkpoints: the mean of exactly the weights each checkpoint saved
(recorded here when it was written), K=1 the newest checkpoint bit for bit, float32 sums for
bfloat16 weights, exports that load and generate like the average, and every bad input refused
by name before anything is read. A sharded run's checkpoints average as they load
(test_trainer_sharding.py, on its "full" run)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import highnoon as hn
from highnoon.data import load_tokenizer
from highnoon.models import load_model
from highnoon.models.restore import model_variables
from highnoon.training import averaged_model, export_average  # the public names
from highnoon.training.assembly import model_config
from highnoon.training.checkpoint_average import average_checkpoints, last_checkpoints
from highnoon.training.run_dir import RunDir
from highnoon.utils.validation import InvalidArgumentError, InvalidArgumentTypeError

STEPS = (2, 4, 6, 8)  # the checkpoints the fixture run keeps, oldest first


def _save_run(path: str, model, steps, seed: int) -> list[dict[str, np.ndarray]]:
    """A run directory as the Trainer leaves it (model_config.json, tokenizer, ckpt-N), with
    distinct random weights per checkpoint; returns the weights each checkpoint saved."""
    run_dir = RunDir(path)
    run_dir.write_model_config(model_config(model))
    run_dir.write_tokenizer(load_tokenizer("byte"))
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), path, max_to_keep=9)
    rng = np.random.default_rng(seed)
    variables = model_variables(model)
    saved = []
    for step in steps:
        for variable in variables.values():
            variable.assign(rng.normal(0.0, 0.05, variable.shape).astype(np.float32))
        saved.append({p: variable.numpy() for p, variable in variables.items()})
        manager.save(checkpoint_number=step)
    return saved


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("avg") / "run")
    model = hn.create_model("highnoon-nano", max_seq_length=32)
    model.build()
    return path, _save_run(path, model, STEPS, seed=0)


def mean_weights(saved: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The mean computed here: float32 sums, oldest first, then one division."""
    mean = {}
    for path in saved[0]:
        total = np.zeros_like(saved[0][path], dtype=np.float32)
        for weights in saved:
            total += weights[path]
        mean[path] = total / np.float32(len(saved))
    return mean


def assert_weights_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for path in want:
        np.testing.assert_array_equal(got[path], want[path], err_msg=path)


@pytest.mark.parametrize("last", [1, 2, 4])
def test_the_average_is_the_mean_of_the_last_checkpoints(run, last):
    path, saved = run
    average = average_checkpoints(path, last)
    assert [os.path.basename(p) for p in average.checkpoints] == [
        f"ckpt-{s}" for s in STEPS[-last:]
    ]
    assert average.step == STEPS[-1]
    assert_weights_equal(average.weights, mean_weights(saved[-last:]))
    for path_, value in average.weights.items():
        float64_mean = np.mean([w[path_].astype(np.float64) for w in saved[-last:]], axis=0)
        np.testing.assert_allclose(value, float64_mean, rtol=1e-5, atol=1e-8, err_msg=path_)
    if last == 1:  # the newest checkpoint, bit for bit
        for path_, value in average.weights.items():
            np.testing.assert_array_equal(value, saved[-1][path_])


def test_the_average_is_deterministic(run):
    path, _ = run
    first, second = average_checkpoints(path, 3), average_checkpoints(path, 3)
    for name in first.weights:
        assert first.weights[name].tobytes() == second.weights[name].tobytes()


def test_bfloat16_weights_are_summed_in_float32(tmp_path):
    """256 + 1 + 1 + 1 in bfloat16 stays 256 at every step (8 bits of mantissa): a bfloat16
    sum gives 64; the float32 sum 259 / 4 = 64.75 rounds to bfloat16 65."""
    module = tf.Module()
    module.w = tf.Variable(tf.zeros([3], tf.bfloat16))
    module.count = tf.Variable(0, dtype=tf.int64)  # not floating: the newest value
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=module), str(tmp_path), max_to_keep=4
    )
    for step, value in enumerate([256.0, 1.0, 1.0, 1.0], start=1):
        module.w.assign(tf.fill([3], tf.constant(value, tf.bfloat16)))
        module.count.assign(step * 10)
        manager.save(checkpoint_number=step)
    average = average_checkpoints(str(tmp_path), 4)
    w = average.weights["model/w"]
    assert w.dtype == tf.bfloat16.as_numpy_dtype
    assert w.astype(np.float32).tolist() == [65.0, 65.0, 65.0]
    assert average.weights["model/count"] == 40


def test_the_exported_checkpoint_loads_and_generates_like_the_average(run, tmp_path):
    path, saved = run
    mean = mean_weights(saved[-3:])
    written = export_average(path, 3, str(tmp_path / "avg"))
    assert written == str(tmp_path / "avg" / "ckpt-8")
    record = json.loads((tmp_path / "avg" / "average.json").read_text())
    assert record == {"model_dir": path, "last": 3, "checkpoints": ["ckpt-4", "ckpt-6", "ckpt-8"]}
    assert (tmp_path / "avg" / "highnoon_tokenizer.json").exists()
    loaded = load_model(str(tmp_path / "avg"))
    assert_weights_equal({p: v.numpy() for p, v in model_variables(loaded).items()}, mean)
    reference = hn.create_model("highnoon-nano", max_seq_length=32)  # built here, independently
    reference.build()
    for p, variable in model_variables(reference).items():
        variable.assign(mean[p])
    newest = load_model(path)
    prompt = "abc"
    text = loaded.generate(prompt, max_length=16, temperature=0.0, jit_compile=False)
    assert text == reference.generate(prompt, max_length=16, temperature=0.0, jit_compile=False)
    assert text.startswith(prompt) and len(text) > len(prompt)
    assert text != newest.generate(prompt, max_length=16, temperature=0.0, jit_compile=False)


def test_the_exported_keras_file_loads_with_the_average(run, tmp_path):
    path, saved = run
    written = export_average(path, 2, str(tmp_path / "avg2.keras"))
    assert written == str(tmp_path / "avg2.keras")
    loaded = load_model(written)
    model = averaged_model(path, 2)
    assert_weights_equal(
        {p: v.numpy() for p, v in model_variables(model).items()}, mean_weights(saved[-2:])
    )
    got, expected = loaded.get_weights(), model.get_weights()
    assert len(got) == len(expected) == len(saved[0])
    for value, want in zip(got, expected):
        np.testing.assert_array_equal(value, want)
    assert loaded.generate(
        "ab", max_length=10, temperature=0.0, jit_compile=False
    ) == model.generate("ab", max_length=10, temperature=0.0, jit_compile=False)


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "error", "message"),
    [
        (0, InvalidArgumentError, "last=0 must be an integer >= 1"),
        (-2, InvalidArgumentError, "last=-2 must be an integer >= 1"),
        (True, InvalidArgumentTypeError, "last=True must be an integer >= 1 (got bool)"),
        (2.0, InvalidArgumentTypeError, "last=2.0 must be an integer >= 1 (got float)"),
    ],
)
def test_a_bad_last_is_refused(run, last, error, message):
    with pytest.raises(error) as caught:
        average_checkpoints(run[0], last)
    assert str(caught.value) == message


def test_more_checkpoints_than_the_run_keeps_names_max_checkpoints_to_keep(run, tmp_path):
    path, _ = run
    with pytest.raises(InvalidArgumentError) as caught:
        export_average(path, 5, str(tmp_path / "out"))
    assert str(caught.value) == (
        f"last=5 but {path} keeps 4 checkpoint(s) (ckpt-2, ckpt-4, ckpt-6, ckpt-8); pass "
        "last <= 4, or train with max_checkpoints_to_keep >= 5 (a run keeps only that many "
        "newest checkpoints)"
    )
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_directory_without_checkpoints_is_refused(tmp_path):
    for path in (tmp_path / "empty", tmp_path / "missing"):
        if path.name == "empty":
            path.mkdir()
        with pytest.raises(InvalidArgumentError) as caught:
            average_checkpoints(str(path), 1)
        assert str(caught.value) == (
            f"model_dir={str(path)!r} holds no checkpoint; pass the directory a run saved its "
            "checkpoints in (highnoon-train --model_dir, Trainer.train(checkpoint_dir=...))"
        )


def test_a_checkpoint_prefix_is_not_a_model_dir(run):
    prefix = os.path.join(run[0], "ckpt-8")
    with pytest.raises(InvalidArgumentError) as caught:
        average_checkpoints(prefix, 1)
    assert str(caught.value) == (
        f"model_dir={prefix!r} is a checkpoint prefix; pass the run's directory (its last "
        "checkpoints are averaged)"
    )


def test_checkpoints_of_different_model_shapes_are_refused(tmp_path):
    path = str(tmp_path / "run")
    small = hn.create_model("highnoon-nano", max_seq_length=32)
    small.build()
    _save_run(path, small, (1, 2), seed=1)
    wider = hn.create_model("highnoon-nano", max_seq_length=32, vocab_size=300)
    wider.build()
    _save_run(path, wider, (3,), seed=2)
    assert [os.path.basename(p) for p in last_checkpoints(path, 1)] == ["ckpt-3"]
    with pytest.raises(InvalidArgumentError) as caught:
        average_checkpoints(path, 2)
    message = str(caught.value)
    assert message.startswith(
        f"{path}/ckpt-2 and {path}/ckpt-3 hold different models (model/embedding [259, "
    )
    assert "vs [300, " in message
    assert message.endswith(
        f"); average checkpoints of one model: pass a smaller last, or move the other model's "
        f"checkpoints out of {path}"
    )


def test_an_unreadable_checkpoint_is_refused_before_averaging(run, tmp_path):
    path = str(tmp_path / "run")
    shutil.copytree(run[0], path)
    with open(os.path.join(path, "ckpt-4.index"), "wb") as handle:
        handle.write(b"not an index")
    assert len(last_checkpoints(path, 2)) == 2  # the newer two are fine
    with pytest.raises(InvalidArgumentError) as caught:
        average_checkpoints(path, 3)
    assert str(caught.value).startswith(f"checkpoint {path}/ckpt-4 is unreadable (")
    assert str(caught.value).endswith(
        "); average fewer checkpoints (a smaller last) or remove the damaged one"
    )
    # a damaged value (its CRC fails) is found when the values are read
    data = os.path.join(path, "ckpt-8.data-00000-of-00001")
    with open(data, "r+b") as handle:
        middle = os.path.getsize(data) // 2  # a model value (the object graph is last)
        handle.seek(middle)
        byte = handle.read(1)
        handle.seek(middle)
        handle.write(bytes([byte[0] ^ 0xFF]))
    assert len(last_checkpoints(path, 1)) == 1
    with pytest.raises(InvalidArgumentError) as caught:
        average_checkpoints(path, 1)
    assert str(caught.value).startswith(f"checkpoint {path}/ckpt-8 is unreadable (")
    # a truncated data file (it holds the object graph too) is found by the checks as well
    data = os.path.join(path, "ckpt-6.data-00000-of-00001")
    with open(data, "r+b") as handle:
        handle.truncate(64)
    assert len(last_checkpoints(path, 1)) == 1
    with pytest.raises(InvalidArgumentError) as caught:
        last_checkpoints(path, 2)
    assert str(caught.value).startswith(f"checkpoint {path}/ckpt-6 is unreadable (")
    assert str(caught.value).endswith(
        "); average fewer checkpoints (a smaller last) or remove the damaged one"
    )


def test_outputs_that_would_mix_with_checkpoints_are_refused(run, tmp_path):
    path, _ = run
    with pytest.raises(InvalidArgumentError) as caught:
        export_average(path, 2, path + "/")
    assert str(caught.value) == (
        f"output={path + '/'!r} is the run's model_dir: a resume would take the average for the "
        "run's newest checkpoint; pass a new directory or a .keras file"
    )
    export_average(path, 1, str(tmp_path / "avg"))
    with pytest.raises(InvalidArgumentError) as caught:
        export_average(path, 2, str(tmp_path / "avg"))
    assert str(caught.value) == (
        f"output={str(tmp_path / 'avg')!r} already holds checkpoints (ckpt-8); pass a new "
        "directory or a .keras file"
    )


# -- the console script ---------------------------------------------------


@pytest.mark.slow
def test_the_console_script_writes_the_average_and_refuses_with_a_message(run, tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "CUDA_VISIBLE_DEVICES": "-1"}
    path, saved = run

    def launch(*args):
        return subprocess.run(
            [sys.executable, "-m", "launch.average_checkpoints", f"--model_dir={path}", *args],
            cwd=root, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    output = str(tmp_path / "avg")
    done = launch("--last=2", f"--output={output}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == os.path.join(output, "ckpt-8") + "\n"
    loaded = load_model(output)
    assert_weights_equal(
        {p: v.numpy() for p, v in model_variables(loaded).items()}, mean_weights(saved[-2:])
    )

    refused = launch("--last=7", f"--output={tmp_path / 'other'}")
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"average_checkpoints: last=7 but {path} keeps 4 checkpoint(s) (ckpt-2, ckpt-4, "
        "ckpt-6, ckpt-8); pass last <= 4, or train with max_checkpoints_to_keep >= 7 (a run "
        "keeps only that many newest checkpoints)"
    )
    assert not (tmp_path / "other").exists()


def test_a_kerashub_run_exports_its_average_as_the_kerashub_model(tmp_path):
    """A KerasHub CausalLM is checkpointed through its wrapper (models/kerashub.py): the
    average is assigned through the same paths and loads back as the KerasHub model."""
    keras_hub = pytest.importorskip("keras_hub")
    from highnoon.models import contract, kerashub

    backbone = dict(num_layers=1, num_heads=2, hidden_dim=32, intermediate_dim=64,
                    max_sequence_length=32, dropout=0.0, vocabulary_size=259)  # fmt: skip
    network = contract.adapt(kerashub.causal_lm("GPT2CausalLM", backbone=backbone))
    path = str(tmp_path / "run")
    saved = _save_run(path, network, (1, 2, 3), seed=3)
    export_average(path, 2, str(tmp_path / "avg"))
    loaded = load_model(str(tmp_path / "avg"))
    assert type(loaded) is keras_hub.models.GPT2CausalLM
    got = {p: v.numpy() for p, v in model_variables(contract.adapt(loaded)).items()}
    assert_weights_equal(got, mean_weights(saved[-2:]))
