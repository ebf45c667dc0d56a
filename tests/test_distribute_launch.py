"""highnoon.launch.flags (gin parsing, shorthand, --help, flag checks), tpu_pod.sh, TPU fails fast."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import gin
import pytest

from highnoon.launch import flags as hn_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@gin.configurable
def hn_launch_test_fn(learning_rate: float = 1.0, batch_size: int = 2) -> tuple[float, int]:
    return learning_rate, batch_size


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_gin_shorthand_expansion():
    argv = [
        "prog",
        "--gin.Trainer.learning_rate=3e-4",
        "--model_dir=/m",
        "--gin.a.b='x=y'",
        "--",
        "--gin.untouched=1",
    ]
    assert hn_flags.expand_gin_shorthand(argv) == [
        "prog",
        "--gin_bindings=Trainer.learning_rate=3e-4",
        "--model_dir=/m",
        "--gin_bindings=a.b='x=y'",
        "--",
        "--gin.untouched=1",
    ]
    with pytest.raises(Exception, match=r"'--gin.a.b' needs a value"):
        hn_flags.expand_gin_shorthand(["prog", "--gin.a.b"])


def test_later_gin_file_and_bindings_win(tmp_path):
    (tmp_path / "base.gin").write_text(
        "hn_launch_test_fn.learning_rate = 0.1\nhn_launch_test_fn.batch_size = 8\n"
    )
    (tmp_path / "over.gin").write_text("hn_launch_test_fn.learning_rate = 0.2\n")
    hn_flags.parse_gin(["base.gin", "over.gin"], [], [str(tmp_path)], finalize=False)
    assert hn_launch_test_fn() == (0.2, 8)
    gin.clear_config()
    hn_flags.parse_gin(
        ["base.gin", "over.gin"],
        ["hn_launch_test_fn.batch_size = 16"],
        [str(tmp_path)],
        finalize=False,
    )
    assert hn_launch_test_fn() == (0.2, 16)


def test_unknown_gin_names_suggest_closest():
    with pytest.raises(ValueError, match=r"did you mean 'hn_launch_test_fn'\?"):
        hn_flags.parse_gin([], ["hn_launch_tset_fn.learning_rate = 1"], finalize=False)
    with pytest.raises(
        ValueError,
        match=r"has no parameter 'learnig_rate'; did you mean "
        r"'learning_rate'\?",
    ):
        hn_flags.parse_gin([], ["hn_launch_test_fn.learnig_rate = 1"], finalize=False)
    with pytest.raises(FileNotFoundError, match=r"gin_file 'nope.gin' not found"):
        hn_flags.parse_gin(["nope.gin"], [], finalize=False)


@pytest.mark.parametrize(
    ("binding", "problem"),
    [
        ("hn_launch_test_fn.learning_rate = (1", "EOF in multi-line statement (an unclosed "
         "bracket or quote?)"),
        ("hn_launch_test_fn.learning_rate = 'x", "Unable to parse value at character 35"),
        ("hn_launch_test_fn.batch_size = 1 2", "Expected newline at character 34"),
    ],
)  # fmt: skip
def test_a_malformed_gin_binding_is_named_with_its_problem_and_nothing_is_bound(binding, problem):
    good = "hn_launch_test_fn.batch_size = 16"
    with pytest.raises(ValueError) as caught:
        hn_flags.parse_gin([], [good, binding], finalize=False)
    assert str(caught.value) == (
        f"--gin_bindings={binding!r} is not valid gin: {problem}; a binding reads "
        "'configurable.parameter = value' with a Python literal value (quote strings: "
        "--gin.Trainer.name=\"'run'\")"
    )
    assert hn_launch_test_fn() == (1.0, 2)  # refused before gin applied the good one


def test_a_gin_file_with_an_unclosed_bracket_is_named(tmp_path):
    path = tmp_path / "broken.gin"
    path.write_text("hn_launch_test_fn.batch_size = 1\nhn_launch_test_fn.learning_rate = [1,\n")
    with pytest.raises(ValueError) as caught:
        hn_flags.parse_gin([str(path)], [], finalize=False)
    assert str(caught.value) == f"{path} is not valid gin: EOF in multi-line statement"


def test_write_operative_config_chief_only(tmp_path):
    hn_flags.parse_gin([], ["hn_launch_test_fn.batch_size = 4"], finalize=False)
    hn_launch_test_fn()
    assert hn_flags.write_operative_config(str(tmp_path / "w"), is_chief=False) is None
    assert not (tmp_path / "w").exists()
    path = hn_flags.write_operative_config(str(tmp_path / "m"), is_chief=True)
    assert path == str(tmp_path / "m" / "config.gin")
    assert "hn_launch_test_fn.batch_size = 4" in Path(path).read_text()
    assert os.listdir(tmp_path / "m") == ["config.gin"]  # no temp file left behind


def test_tpu_pod_dry_run_prints_gcloud_command():
    proc = subprocess.run(
        [
            "bash",
            os.path.join(ROOT, "launch", "tpu_pod.sh"),
            "--tpu",
            "pod1",
            "--zone",
            "us-central2-b",
            "--project",
            "proj",
            "--workdir",
            "/srv/hn",
            "--dry-run",
            "--",
            "python",
            "-m",
            "launch.train",
            "--gin.Trainer.name='a b'",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[:11] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "pod1",
        "--zone",
        "us-central2-b",
        "--project",
        "proj",
        "--worker=all",
    ]
    assert argv[11] == "--command"
    remote = shlex.split(argv[12])
    # cd DIR && for attempt in $(seq 0 3); do COMMAND; ... (relaunched on exit code 42)
    assert remote[:3] == ["cd", "/srv/hn", "&&"] and remote[3:6] == ["for", "attempt", "in"]
    command = remote[remote.index("do") + 1 :]
    assert command[:4] == ["python", "-m", "launch.train", "--gin.Trainer.name='a b';"]


def test_tpu_pod_requires_zone():
    env = {k: v for k, v in os.environ.items() if k not in ("TPU_ZONE", "GCP_PROJECT")}
    proc = subprocess.run(
        [
            "bash",
            os.path.join(ROOT, "launch", "tpu_pod.sh"),
            "--tpu",
            "p",
            "--dry-run",
            "--",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert proc.returncode == 2 and "--zone is required" in proc.stderr


@pytest.mark.slow
def test_strategy_tpu_flag_without_tpu_fails_fast():
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tests", "workers", "tpu_flags_worker.py"),
            "--strategy=tpu",
            "--tpu=my-tpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "TPUUnreachableError: no TPU was reachable at 'my-tpu'" in proc.stderr
