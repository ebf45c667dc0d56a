"""The launch programs as a user runs them: --help, flag checks, gin lookup and its log lines,
cluster scripts, generate's errors, worker logging, and the wheel installed outside the repo."""

from __future__ import annotations

import ast
import glob
import json
import logging
import os
import re
import shutil
import site
import subprocess
import sys

import gin
import pytest

from highnoon.launch import configurables as _configurables  # noqa: F401  (registers gin knobs)
from highnoon.launch import flags as hn_flags
from highnoon.launch import train as train_lib
from highnoon.training import run as _run_lib  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARD_TIMEOUT = 600
# The quickstart shrunk to a few seconds of training (three stages, 36 steps).
FEW_STEPS = [
    "--gin.Trainer.max_samples=48",
    "--gin.Trainer.max_seq_length=32",
    "--gin.Trainer.batch_size=8",
    "--gin.Trainer.epochs_per_stage=1",
    "--gin.run_training.sample_length=12",
    "--gin_bindings=highnoon.models.create_model.name_or_config = 'highnoon-nano'",
]


def _env(tmp_path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": ROOT,
        "HIGHNOON_CACHE_DIR": str(tmp_path / "cache"),
        "CUDA_VISIBLE_DEVICES": "-1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **extra,
    }


def _launch(module: str, *args: str, cwd: str = ROOT, env=None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env if env is not None else {**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


# -- --help ------------------------------------------------------------------------------------


def _listed_flags(help_text: str) -> list[str]:
    return sorted(set(re.findall(r"^  --(?:\[no\])?(\w+):", help_text, re.MULTILINE)))


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (
            "launch.train",
            [
                "gcp_project", "gin_bindings", "gin_file", "gin_search_paths", "log_all_workers",
                "model_dir", "strategy", "task_index", "tpu", "tpu_zone", "worker_hosts",
            ],
        ),
        (
            "launch.prepare_data",
            [
                "beam_options", "data_dir", "datasets", "gin_bindings", "gin_file",
                "gin_search_paths", "max_samples", "num_shards", "orders", "orders_only",
                "output_dir", "runner",
                "tokenizer", "train_sentencepiece_vocab", "train_tokenizer_json_vocab",
                "upgrade_stores", "verify",
            ],
        ),
        (
            "launch.generate",
            [
                "checkpoint", "max_length", "model", "prompt", "seed", "temperature", "tokenizer",
                "top_k", "top_p",
            ],
        ),
        (
            "launch.curriculum_report",
            [
                "gin_bindings", "gin_file", "gin_search_paths", "measure_steps", "model_dir",
                "output", "samples",
            ],
        ),
        ("launch.average_checkpoints", ["last", "model_dir", "output"]),
    ],
)  # fmt: skip
def test_help_lists_the_programs_own_flags(module, expected):
    """`--help` shows the program's docstring and lists exactly its flags (absl's own are left
    to --helpfull), through the repository shim and through the package module."""
    path = os.path.join(ROOT, "highnoon", *module.split(".")) + ".py"
    with open(path, encoding="utf-8") as handle:
        docstring = ast.get_docstring(ast.parse(handle.read()), clean=False)
    for name in (module, "highnoon." + module):
        proc = _launch(name, "--help")
        assert proc.returncode == 1, proc.stderr  # absl exits 1 after printing --help
        assert proc.stdout.startswith(docstring + "\nflags:\n")
        assert _listed_flags(proc.stdout) == expected
        assert proc.stdout.endswith("\nTry --helpfull to get a list of all flags.\n")


# -- flag values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "args", "message"),
    [
        (
            "launch.train",
            ["--worker_hosts=a:1,b:99999", "--task_index=0"],
            "flags worker_hosts=a:1,b:99999, task_index=0: worker_hosts[1]='b:99999' must be "
            "'host:port' with a port in [1, 65535]",
        ),
        (
            "launch.train",
            ["--worker_hosts=a:1,b:0", "--task_index=0"],
            "flags worker_hosts=a:1,b:0, task_index=0: worker_hosts[1]='b:0' must be 'host:port' "
            "with a port in [1, 65535]",
        ),
        (
            "launch.train",
            ["--worker_hosts=a:1,b:2", "--task_index=2"],
            "flags worker_hosts=a:1,b:2, task_index=2: task_index=2 is out of range for 2 "
            "worker_hosts (allowed 0..1)",
        ),
        (
            "launch.train",
            ["--task_index=0"],
            "flags worker_hosts=None, task_index=0: --worker_hosts and --task_index go together; "
            "give both",
        ),
        (
            "launch.train",
            ["--strategy=tpuv4"],
            "flag --strategy=tpuv4: unknown strategy kind 'tpuv4'; valid kinds: auto, tpu, "
            "multi_worker, mirrored, one_device, multi_worker_mirrored",
        ),
        (
            "launch.generate",
            ["--top_p=0"],
            "flag --top_p=0.0: top_p=0.0 must be a finite number in (0, 1]",
        ),
        (
            "launch.generate",
            ["--max_length=1"],
            "flag --max_length=1: max_length=1 must be an integer >= 2",
        ),
        (
            "launch.generate",
            ["--temperature=-1"],
            "flag --temperature=-1.0: temperature=-1.0 must be a finite number >= 0.0",
        ),
        (
            "launch.prepare_data",
            ["--max_samples=0"],
            "flag --max_samples=0: max_samples=0 must be an integer >= 1",
        ),
        (
            "launch.average_checkpoints",
            ["--model_dir=/nonexistent", "--output=/nonexistent.keras", "--last=0"],
            "flag --last=0: last=0 must be an integer >= 1",
        ),
    ],
)
def test_bad_flag_values_stop_at_parse_time(module, args, message):
    proc = _launch(module, *args)
    assert proc.returncode == 1
    help_hint = "Pass --helpshort or --helpfull to see help on flags."
    assert proc.stderr == f"FATAL Flags parsing error: {message}\n{help_hint}\n"


# -- gin files: lookup, shipped files, the log lines of a lookup -------------------------------


def test_gin_dir_in_a_checkout_is_the_repository_gin_directory():
    assert hn_flags.gin_dir() == os.path.join(ROOT, "gin")


def test_gin_files_are_found_from_any_directory_without_search_path_noise(
    tmp_path, monkeypatch, caplog
):
    """gin's resource reader logs an INFO and an ERROR ("Path not found: runs/quickstart.gin")
    for every search-path miss; parse_gin keeps them out of the log."""
    monkeypatch.chdir(tmp_path)  # nothing under gin/ resolves against this directory
    caplog.set_level(logging.DEBUG)
    hn_flags.parse_gin(["runs/quickstart.gin"], finalize=False)
    assert gin.query_parameter("highnoon.models.create_model.name_or_config") == "highnoon-tiny"
    lines = [record.getMessage() for record in caplog.records]
    assert not [line for line in lines if "runs/quickstart.gin" in line or "models/" in line]
    # The filter is gone after parsing: other root-logger lines still go through.
    logging.getLogger().error("still logged")
    assert caplog.records[-1].getMessage() == "still logged"


def test_a_missing_gin_file_names_every_directory_searched(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        hn_flags.parse_gin(["runs/nope.gin"], [], [str(tmp_path)], finalize=False)
    assert str(err.value) == (
        f"gin_file 'runs/nope.gin' not found as given or under any of: {tmp_path}, "
        f"{os.path.join(ROOT, 'gin')}"
    )


def test_launch_train_names_the_closest_gin_name_for_a_typo():
    """highnoon-train's path for a mistyped Trainer setting, in this process (no program start):
    the shorthand flag becomes a binding, which parse_gin refuses naming the closest setting."""
    (flag,) = hn_flags.expand_gin_shorthand(["--gin.Trainer.learning_rat=0.1"])
    assert flag == "--gin_bindings=Trainer.learning_rat=0.1"
    with pytest.raises(ValueError, match=r"'learning_rat'; did you mean 'learning_rate'\?"):
        hn_flags.parse_gin(["runs/quickstart.gin"], [flag.split("=", 1)[1]], finalize=False)


USER_GIN_FILES = {"my_data.gin"}  # examples of the user's own files, not shipped ones


def _suggested_gin_files() -> dict[str, set[str]]:
    """Every gin file a script, a docstring or a gin file tells the user to pass or include."""
    sources = [
        *glob.glob(os.path.join(ROOT, "launch", "*")),
        *glob.glob(os.path.join(ROOT, "highnoon", "launch", "*.py")),
        *glob.glob(os.path.join(ROOT, "gin", "**", "*.gin"), recursive=True),
        os.path.join(ROOT, "Makefile"),
        os.path.join(ROOT, "examples", "complete_training.py"),
    ]
    found: dict[str, set[str]] = {}
    for path in sources:
        if os.path.isdir(path):
            continue
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        names = re.findall(r"--gin_file[= ]([\w./-]+\.gin)", text)
        names += re.findall(r"^\s*include '([^']+)'", text, re.MULTILINE)
        for name in names:
            found.setdefault(name, set()).add(os.path.relpath(path, ROOT))
    return found


def test_scripts_and_docs_suggest_only_gin_files_that_exist():
    suggested = _suggested_gin_files()
    assert "runs/quickstart.gin" in suggested and "runs/pretrain.gin" in suggested
    missing = {
        name: sorted(where)
        for name, where in suggested.items()
        if name not in USER_GIN_FILES and not os.path.isfile(os.path.join(hn_flags.gin_dir(), name))
    }
    assert missing == {}


def test_gin_files_tell_users_flags_that_exist():
    """The model files' advice (`--gin_bindings='create_model.dropout = 0.1'`) works as written."""
    for path in sorted(glob.glob(os.path.join(ROOT, "gin", "**", "*.gin"), recursive=True)):
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        assert "--gin_param" not in text, path
    model_file = os.path.join(ROOT, "gin", "models", "highnoon-3b.gin")
    with open(model_file, encoding="utf-8") as handle:
        (binding,) = re.findall(r"--gin_bindings='([^']+)'", handle.read())
    (shorthand,) = hn_flags.expand_gin_shorthand(["--gin.create_model.dropout=0.1"])
    assert shorthand == "--gin_bindings=create_model.dropout=0.1"
    for bindings in ([binding], [shorthand.split("=", 1)[1]]):
        gin.clear_config()
        hn_flags.parse_gin(["models/highnoon-3b.gin"], bindings, finalize=False)
        assert gin.query_parameter("create_model.dropout") == 0.1


# -- cluster scripts -----------------------------------------------------------------------------


def test_tpu_pod_help_prints_the_usage():
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "launch", "tpu_pod.sh"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        "usage: launch/tpu_pod.sh --tpu NAME --zone ZONE --project PROJECT [--workdir DIR]\n"
    )
    assert "set -euo pipefail" not in proc.stdout and "#" not in proc.stdout
    gin_files = re.findall(r"--gin_file=([\w./-]+)", proc.stdout)
    assert gin_files == ["models/highnoon-3b.gin", "curricula/quickstart.gin", "runs/pretrain.gin"]


def test_tpu_pod_option_without_value_is_an_error():
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "launch", "tpu_pod.sh"), "--dry-run", "--tpu"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0 and "--tpu needs a value" in proc.stderr


def test_local_cluster_checks_its_arguments():
    proc = _launch("launch.local_cluster", "--num_workers=0", "--", "true")
    assert proc.returncode == 2
    assert proc.stderr == "local_cluster: num_workers=0 must be an integer >= 1\n"
    proc = _launch("launch.local_cluster", "--help")
    assert proc.returncode == 0 and "--num_workers NUM_WORKERS" in proc.stdout


# -- the train program's report ----------------------------------------------------------------


def test_report_shows_the_summary_with_eval_and_wall_time_and_the_sample_once():
    summary = {
        "total_steps": 21,
        "stages_completed": [{"name": "a", "epochs": 1, "final_loss": 2.5}],
        "tokens_seen": 5376,
        "eval": [{"step": 20, "eval_loss": 2.75, "perplexity": 15.6}],
        "wall_time_seconds": 3.5,
        "checkpoints": ["/m/ckpt-21"],
        "sample": {"prompt": "def ", "text": "def f"},
    }
    text = train_lib.report(summary)
    brief, sample = text.split("\n\nSample from the trained model:\n")
    assert json.loads(brief) == {k: summary[k] for k in train_lib.SUMMARY_KEYS}
    assert list(json.loads(brief)) == list(train_lib.SUMMARY_KEYS)
    assert sample == "def f"
    assert "Sample" not in train_lib.report({k: summary[k] for k in train_lib.SUMMARY_KEYS})


# -- generate ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_generate_with_a_bad_checkpoint_is_a_message_not_a_traceback(tmp_path):
    """The program exits 1 with the message as its last line (launched once); the message for
    each kind of bad checkpoint comes from its main (in this process)."""
    from absl.testing import flagsaver

    from highnoon.launch import generate

    hint = (
        "; pass the --model_dir of a highnoon-train run, a checkpoint prefix in it "
        "(<model_dir>/ckpt-N) or a .keras file"
    )
    proc = _launch(
        "launch.generate", f"--checkpoint={tmp_path / 'nope'}", "--prompt=hi", env=_env(tmp_path)
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    (tmp_path / "empty").mkdir()
    flag_values = hn_flags.FLAGS
    was_parsed = flag_values.is_parsed()
    flag_values.mark_as_parsed()
    try:
        for checkpoint, reason in [
            (
                tmp_path / "nope",
                "is neither a .keras file, a checkpoint directory nor a checkpoint",
            ),
            (tmp_path / "empty", "load_model: no checkpoint in directory path="),
        ]:
            with (
                flagsaver.flagsaver(checkpoint=str(checkpoint), prompt="hi"),
                pytest.raises(SystemExit) as exited,
            ):
                generate.main(["generate"])
            message = str(exited.value)
            assert message.startswith(f"generate: cannot load --checkpoint={checkpoint}: ")
            assert reason in message and message.endswith(hint)
            if checkpoint.name == "nope":
                assert last == message
    finally:
        if not was_parsed:
            flag_values.unparse_flags()


# -- worker logging ------------------------------------------------------------------------------
# What two real workers log (the chief logs, the other only warns) is asserted on the run of
# test_launch_signals.py (two workers of highnoon-train under local_cluster).


def test_worker_verbosity_quiets_only_non_chief_workers_unless_asked():
    from absl import logging as absl_logging

    flag_values = hn_flags.FLAGS
    was_parsed, before = flag_values.is_parsed(), absl_logging.get_verbosity()
    flag_values.mark_as_parsed()
    info, warning, error = absl_logging.INFO, absl_logging.WARNING, absl_logging.ERROR
    cases = [  # (chief, --log_all_workers, verbosity before, verbosity after)
        (True, False, info, info),
        (False, False, info, warning),
        (False, True, info, info),
        (False, False, error, error),  # an already quieter --verbosity stays
    ]
    try:
        for chief, all_workers, start, expected in cases:
            absl_logging.set_verbosity(start)
            flag_values.log_all_workers = all_workers
            hn_flags.set_worker_verbosity(chief)
            assert absl_logging.get_verbosity() == expected, (chief, all_workers, start)
    finally:
        flag_values.log_all_workers = False
        absl_logging.set_verbosity(before)
        if not was_parsed:
            flag_values.unparse_flags()


# -- the wheel -------------------------------------------------------------------------------------


def _run(argv: list[str], cwd, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=HARD_TIMEOUT
    )


def _offline_venv(path) -> str:
    """A venv whose site-packages also sees this interpreter's (TensorFlow is not reinstalled)
    through a plain path entry: the directories are on sys.path but their .pth files are not
    run, so the system's editable install of highnoon (a finder that maps `highnoon` and
    `launch` to a checkout) cannot answer any import."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = os.path.join(path, "bin", "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with open(os.path.join(purelib, "host_site_packages.pth"), "w", encoding="utf-8") as handle:
        handle.write("".join(p + "\n" for p in site.getsitepackages()))
    return python


@pytest.mark.slow
def test_the_wheel_trains_from_another_directory(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("highnoon", "gin", "launch"):
        shutil.copytree(os.path.join(ROOT, name), source / name, ignore=ignore)

    # pip install . (not editable): build the wheel from the source tree, then install it.
    python = _offline_venv(tmp_path / "venv")
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PYTHON") and key not in ("PIP_REQUIRE_VIRTUALENV",)
    }
    clean.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")
    pip = [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
    install = _run([*pip, "--ignore-installed", "--no-cache-dir", str(source)], tmp_path, clean)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    site_dir = tmp_path / "venv" / "lib" / "python*" / "site-packages"
    (record,) = glob.glob(str(site_dir / "highnoon-*.dist-info" / "RECORD"))
    with open(record, encoding="utf-8") as handle:
        files = [line.split(",")[0] for line in handle]
    top_level = {f.split("/")[0] for f in files if not f.startswith("../")}
    assert top_level == {"highnoon", os.path.basename(os.path.dirname(record))}
    assert "highnoon/launch/train.py" in files
    assert "highnoon/gin/runs/quickstart.gin" in files
    assert "highnoon/gin/models/highnoon-nano.gin" in files
    bin_dir = tmp_path / "venv" / "bin"
    assert all(
        (bin_dir / s).exists()
        for s in ("highnoon-train", "highnoon-generate", "highnoon-curriculum-report")
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {
        **clean,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HIGHNOON_CACHE_DIR": str(tmp_path / "cache"),
        "CUDA_VISIBLE_DEVICES": "-1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    code = (
        "import highnoon.launch.flags as f; print(f.__file__); print(f.gin_dir())\n"
        "try:\n import launch\nexcept ModuleNotFoundError:\n print('no launch')"
    )
    where = _run([python, "-c", code], elsewhere, env)
    assert where.returncode == 0, where.stderr
    module_file, gin_dir, no_launch = where.stdout.splitlines()
    site_packages = os.path.dirname(os.path.dirname(record))
    assert module_file.startswith(site_packages) and gin_dir == f"{site_packages}/highnoon/gin"
    assert no_launch == "no launch"

    # The README's main job (the quickstart config, shrunk by gin bindings) end to end.
    model_dir = tmp_path / "run"
    train = _run(
        [str(bin_dir / "highnoon-train"), "--gin_file=runs/quickstart.gin",
         f"--model_dir={model_dir}", *FEW_STEPS],
        elsewhere,
        env,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    summary = json.loads((model_dir / "summary.json").read_text())
    assert [s["name"] for s in summary["stages_completed"]] == ["foundation", "code", "instruction"]
    assert "Path not found" not in train.stderr  # gin's search-path misses stay quiet
    assert os.listdir(elsewhere) == []  # nothing written to the working directory
    # stdout: the brief summary (with eval and wall time), then the sample, once.
    brief, sample = train.stdout.split("\n\nSample from the trained model:\n")
    assert list(json.loads(brief)) == [
        "total_steps", "stages_completed", "tokens_seen", "eval", "wall_time_seconds"
    ]  # fmt: skip
    assert json.loads(brief)["wall_time_seconds"] == summary["wall_time_seconds"]
    assert sample.startswith("def ")  # the quickstart's prompt, continued
    assert "sample from the trained model" not in train.stderr  # the sample is shown once
    assert "stage 'foundation': 2 epoch(s)" in train.stderr  # the chief's progress lines
    assert "Trainer.max_samples = 48" in (model_dir / "config.gin").read_text()
    assert (model_dir / "model_config.json").exists()
    assert list((model_dir / "summaries").glob("events.out.tfevents.*"))

    # The trained checkpoint generates (greedy: deterministic) what the library generates from
    # it in this process.
    generate = _run(
        [str(bin_dir / "highnoon-generate"), f"--checkpoint={model_dir}", "--prompt=def ",
         "--max_length=12", "--temperature=0"],
        elsewhere,
        env,
    )  # fmt: skip
    assert generate.returncode == 0, generate.stderr[-3000:]
    assert generate.stdout.startswith("def ")
    from highnoon.launch.generate import load_for_generation

    model, _ = load_for_generation(str(model_dir), "highnoon-tiny")
    greedy = model.generate("def ", max_length=12, temperature=0, top_k=50, top_p=1.0, seed=0)
    assert generate.stdout == greedy + "\n"


def test_wheel_contents_declared_in_setup_py():
    """Cheap check of the packaging (the slow test above installs it): setup.py's package list
    names no top-level `launch`, maps `highnoon.gin` to gin/, and its scripts live in highnoon."""
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as handle:
        text = handle.read()
    assert '"launch"' not in text
    assert 'package_dir={"highnoon.gin": "gin"}' in text
    scripts = re.findall(r'"(highnoon-[\w-]+)=([\w.]+):(\w+)"', text)
    assert [s[0] for s in scripts] == [
        "highnoon-train",
        "highnoon-prepare-data",
        "highnoon-generate",
        "highnoon-curriculum-report",
        "highnoon-lm-eval",
        "highnoon-average-checkpoints",
    ]
    for _, module, function in scripts:
        assert module.startswith("highnoon.launch.")
        # Read, not imported: generate and prepare_data both define --tokenizer.
        with open(os.path.join(ROOT, *module.split(".")) + ".py", encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        assert function in [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]


def test_prepare_data_verify_checks_every_block(tmp_path):
    from highnoon.data import build_token_store

    clean, damaged = str(tmp_path / "clean"), str(tmp_path / "damaged")
    for path in (clean, damaged):
        build_token_store(["abc", "defg"], "byte", path, progress=False)
    tokens = os.path.join(damaged, "shard-00000-of-00001", "tokens.bin")
    with open(tokens, "r+b") as handle:
        handle.seek(3)
        handle.write(b"\xff")
    proc = _launch("launch.prepare_data", f"--verify={clean}")
    assert proc.returncode == 0, proc.stderr
    (checked,) = json.loads(proc.stdout)["verified"]
    assert (checked["path"], checked["num_samples"], checked["shards"]) == (clean, 2, 1)
    proc = _launch("launch.prepare_data", f"--verify={clean},{damaged}")
    assert proc.returncode != 0
    assert (
        f"StoreError: store {damaged!r}, shard-00000-of-00001/tokens.bin: block 0 (byte offset 0, "
        "bytes [0, 18)) has CRC32C"
    ) in proc.stderr
