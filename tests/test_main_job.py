"""The README's main job and the Trainer API's complete example, run for real on small data."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys

import pytest

from highnoon import data as hn_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED = ("stdlib_docs", "stdlib_code", "stdlib_instructions")

pytestmark = pytest.mark.slow


@pytest.fixture()
def small_embedded_datasets():
    """The embedded datasets under their own names, cut to a few samples for test speed."""
    for name in EMBEDDED:
        hn_data.register_dataset(name, hn_data.EmbeddedSource(name, max_samples=40))
    yield
    hn_data.register_embedded_datasets()


def test_complete_example_run_from_the_checkout_leaves_nothing_in_it(
    tmp_path, monkeypatch, small_embedded_datasets
):
    """`python examples/complete_training.py` from the repository works in its own directory:
    the example's relative ./checkpoints lands there, not in the checkout."""
    stray = os.path.join(REPO, "checkpoints")
    assert not os.path.exists(stray), f"remove {stray} (left by an earlier run) first"
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HIGHNOON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HIGHNOON_EXAMPLE_DIR", str(tmp_path / "example"))
    runpy.run_path(os.path.join(REPO, "examples", "complete_training.py"), run_name="__main__")
    assert os.getcwd() == str(tmp_path / "example")
    assert os.path.exists(tmp_path / "example" / "checkpoints" / "summary.json")
    assert not os.path.exists(stray)


def test_launch_train_runs_the_quickstart_config_end_to_end(tmp_path):
    """`python -m launch.train` with the quickstart gin file, shrunk by gin bindings."""
    model_dir = tmp_path / "run"
    env = {
        **os.environ,
        "HIGHNOON_CACHE_DIR": str(tmp_path / "cache"),
        "CUDA_VISIBLE_DEVICES": "-1",
    }
    command = [
        sys.executable,
        "-m",
        "launch.train",
        "--gin_file=runs/quickstart.gin",
        f"--model_dir={model_dir}",
        "--gin.Trainer.max_samples=48",
        "--gin.Trainer.max_seq_length=32",
        "--gin.Trainer.batch_size=8",
        "--gin.Trainer.epochs_per_stage=1",
        "--gin.run_training.sample_length=12",
        "--gin_bindings=highnoon.models.create_model.name_or_config = 'highnoon-nano'",
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((model_dir / "summary.json").read_text())
    assert [s["name"] for s in summary["stages_completed"]] == ["foundation", "code", "instruction"]
    # stdout: the brief summary (with eval and wall time), then the sample, once.
    brief, sample = result.stdout.split("\n\nSample from the trained model:\n")
    assert list(json.loads(brief)) == [
        "total_steps", "stages_completed", "tokens_seen", "eval", "wall_time_seconds"
    ]  # fmt: skip
    assert json.loads(brief)["wall_time_seconds"] == summary["wall_time_seconds"]
    assert sample.startswith("def ")  # the quickstart's prompt, continued
    assert "Path not found" not in result.stderr  # gin's search-path misses stay quiet
    assert "sample from the trained model" not in result.stderr  # the sample is shown once
    assert "stage 'foundation': 2 epoch(s)" in result.stderr  # the chief's progress lines
    config = (model_dir / "config.gin").read_text()
    assert "Trainer.max_samples = 48" in config
    assert (model_dir / "model_config.json").exists()
    assert list((model_dir / "summaries").glob("events.out.tfevents.*"))

    # The trained checkpoint generates through launch/generate.py (greedy: deterministic).
    generate = [
        sys.executable,
        "-m",
        "launch.generate",
        f"--checkpoint={model_dir}",
        "--prompt=def ",
        "--max_length=12",
        "--temperature=0",
    ]
    outputs = [
        subprocess.run(generate, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        for _ in range(2)
    ]
    assert all(o.returncode == 0 for o in outputs), outputs[0].stderr[-2000:]
    assert outputs[0].stdout == outputs[1].stdout
    assert outputs[0].stdout.startswith("def ")


def test_launch_train_names_the_closest_gin_name_for_a_typo(tmp_path):
    command = [
        sys.executable,
        "-m",
        "launch.train",
        "--gin_file=runs/quickstart.gin",
        f"--model_dir={tmp_path}",
        "--gin.Trainer.learning_rat=0.1",
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "learning_rate" in result.stderr
