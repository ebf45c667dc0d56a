"""The launch programs refuse bad inputs with a message naming the flag, and reading a model_dir
runs no code it names."""

from __future__ import annotations

import os
import subprocess
import sys

from highnoon.launch import flags as hn_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(module: str, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=env or dict(os.environ, PYTHONPATH=ROOT),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_model_dir_and_output_dir_naming_a_file_are_refused_naming_the_flag(tmp_path):
    existing = tmp_path / "a_file"
    existing.write_text("")
    done = _launch("highnoon.launch.train", f"--model_dir={existing}")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"--model_dir={str(existing)!r} must be a directory, but a file is in the way; pass a "
        "directory path for --model_dir"
    )
    data = tmp_path / "a.jsonl"
    data.write_text('{"text": "hello"}\n')
    done = _launch("highnoon.launch.prepare_data", f"--datasets={data}", f"--output_dir={existing}")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"output_dir={str(existing)!r} must be a directory, but a file is in the way"
    )
    assert "Traceback" not in done.stderr and "FileExistsError" not in done.stderr


def test_config_without_code_drops_imports_and_includes_only():
    text = (
        "import evil.module\n"
        "from other import thing as alias\n"
        "include 'more.gin'\n"
        "Trainer.batch_size = 4\n"
        'run_training.sample_prompt = """\n'
        "import not_a_statement\n"
        '"""\n'
    )
    kept, removed = hn_flags.config_without_code(text)
    assert removed == ["import evil.module", "from other import thing as alias",
                       "include 'more.gin'"]  # fmt: skip
    assert kept == (
        'Trainer.batch_size = 4\nrun_training.sample_prompt = """\nimport not_a_statement\n"""\n'
    )


def test_the_report_on_a_model_dir_runs_none_of_its_config_imports(tmp_path):
    """A model_dir received from someone else: its config.gin imports a module that would run
    code. The report names the lines it did not run and refuses the binding only that module
    registers; the module never ran."""
    modules = tmp_path / "modules"
    modules.mkdir()
    marker = tmp_path / "ran"
    (modules / "payload.py").write_text(
        "import gin\n"
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "@gin.configurable\n"
        "def payload_fn(x=0):\n"
        "    return x\n"
    )
    model_dir = tmp_path / "received"
    model_dir.mkdir()
    config = model_dir / "config.gin"
    config.write_text("import payload\n\npayload_fn.x = 1\nTrainer.batch_size = 4\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, str(modules)]))
    done = _launch(
        "highnoon.launch.curriculum_report",
        f"--model_dir={model_dir}",
        f"--output={tmp_path / 'report'}",
        "--measure_steps=0",
        env=env,
    )
    assert not marker.exists()
    assert done.returncode == 1, done.stderr[-2000:]
    assert (
        f"{config}: not running its 1 import/include line(s) (import payload): reading a "
        "model_dir runs no code it names; pass --gin_file to plan from config files you trust"
    ) in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"{config}: unknown gin configurable 'payload_fn' (is the module that defines it "
        "imported?) (its import lines are not run when a model_dir is read; pass the run's "
        "--gin_file(s) if you trust them)"
    )
