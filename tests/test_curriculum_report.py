"""The curriculum report: a planned stage's numbers equal what training then feeds; time
arithmetic; a finished run's history; the program on a tiny config; every bad input."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import gin
import pytest

from highnoon.launch import configurables  # registers create_model
from highnoon.launch import curriculum_report as program
from highnoon.launch import flags as hn_flags
from highnoon.training import history as history_lib
from highnoon.training import report as report_lib
from highnoon.training import report_plots
from highnoon.training import run as run_lib  # registers run_training
from tests.trainer_helpers import corpus, make_trainer, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def data(tmp_path):
    return {
        "a": write_jsonl(str(tmp_path / "a.jsonl"), corpus(0, 48)),
        "b": write_jsonl(str(tmp_path / "b.jsonl"), corpus(1, 32)),
    }


@pytest.fixture(autouse=True)
def _clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_the_planned_steps_and_tokens_are_what_training_counts(tmp_path, data):
    trainer = make_trainer(
        tmp_path, eval_fraction=0.25, seq_length_warmup_steps=0.7, seq_length_warmup_start=8
    )
    trainer.add_curriculum_stage("s", [data["a"]], epochs=3)
    (plan,) = trainer.plan(epochs_per_stage=None)
    report = report_lib.stage_report(plan, samples=2)
    table = report["epochs_table"]
    assert [row["pool"] for row in table] == [plan.scheduler.pool_size(e) for e in range(3)]
    assert sum(row["added"] for row in table) == table[-1]["pool"] == plan.train_indices.size
    assert [row["steps"] for row in table] == [plan.steps_per_epoch(e) for e in range(3)]
    # size_based, easy-to-hard: each epoch adds samples at least as long as the last one's
    for before, after in itertools.pairwise(table):
        assert after["added_difficulty"][0] >= before["added_difficulty"][4]
    assert table[0]["seq_lengths"][0] == 8
    assert report["seq_length_warmup"] == {
        "steps": 10, "lengths": [8, 16, 32], "first_steps": [0, 4, 10],
    }  # fmt: skip
    stored = plan.store.features.lengths[plan.train_indices]  # bytes + EOS
    assert [len(text) + 1 for text in report["easiest"]] == sorted(stored)[:2]
    summary = trainer.train(save_checkpoints=False, eval_interval=1000)
    assert report["total_steps"] == summary["total_steps"]
    assert report["total_tokens"] == summary["tokens_seen"]
    text = report_lib.format_report([report])
    assert "stage 0 's': 3 epoch(s), 36 train / 12 held-out samples" in text
    assert f"run: {summary['total_steps']:,} steps, {summary['tokens_seen']:,} tokens" in text


def test_a_packed_stage_reports_the_steps_and_tokens_training_counts(tmp_path, data):
    trainer = make_trainer(tmp_path, eval_fraction=0.25, pack=True)
    trainer.add_curriculum_stage("s", [data["a"]], epochs=3)
    (plan,) = trainer.plan(epochs_per_stage=None)
    report = report_lib.stage_report(plan, samples=2)
    assert [row["steps"] for row in report["epochs_table"]] == [
        plan.packed_epoch(e).num_steps for e in range(3)
    ]
    summary = trainer.train(save_checkpoints=False, eval_interval=1000)
    assert report["total_steps"] == summary["total_steps"]
    assert report["total_tokens"] == summary["tokens_seen"]


def test_an_adaptive_stage_reports_its_levels_and_a_range(tmp_path, data):
    trainer = make_trainer(tmp_path, adaptive=True, min_epochs_per_stage=1)
    trainer.add_curriculum_stage("s", [data["a"]], epochs=3)
    (plan,) = trainer.plan(epochs_per_stage=None)
    report = report_lib.stage_report(plan)
    levels = report["levels"]
    assert [lv["fraction"] for lv in levels] == [0.2, 0.36, 0.52, 0.68, 0.84, 1.0]
    assert "epochs_table" not in report
    assert report["total_steps"] == plan.planned_steps() == 3 * levels[0]["steps_per_epoch"]
    # fastest growth: a level per epoch (min_epochs_per_stage=1)
    assert report["total_steps_max"] == sum(lv["steps_per_epoch"] for lv in levels[:3])
    assert "to" in report_lib.format_report([report]).splitlines()[-1]


def test_the_time_estimate_adds_each_shapes_steps_and_one_compilation():
    reports = [
        {"index": 0, "steps_by_length": {"8": 10, "32": 30}},
        {"index": 1, "steps_by_length": {"32": 5}},
    ]
    timings = {
        (0, 8): {"first_call": 2.0, "step": 0.1},
        (0, 32): {"first_call": 3.0, "step": 0.5},
        (1, 32): {"first_call": 0.5, "step": 1.0},  # first call faster than a step: no compile
    }
    estimate = report_lib.time_estimate(reports, timings)
    assert estimate["steps_seconds"] == pytest.approx(10 * 0.1 + 30 * 0.5 + 5 * 1.0)
    assert estimate["compile_seconds"] == pytest.approx(1.9 + 2.5)
    assert estimate["total_seconds"] == pytest.approx(21.0 + 4.4)


def test_a_finished_runs_history_and_plot(tmp_path, data):
    trainer = make_trainer(tmp_path, eval_fraction=0.25, eval_batches=2)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=2)
    trainer.add_curriculum_stage("second", [data["b"]], epochs=1)
    run_dir = str(tmp_path / "run")
    summary = trainer.train(checkpoint_dir=run_dir, log_interval=2, eval_interval=4)
    history = history_lib.run_history(run_dir)
    assert history["log"]["step"] == list(range(2, summary["total_steps"] + 1, 2))
    first_steps = summary["stages_completed"][0]["steps"]
    assert history["stages"] == [
        {"name": "first", "end_step": first_steps},
        {"name": "second", "end_step": summary["total_steps"]},
    ]
    assert history["log"]["stage"] == [
        "first" if step <= first_steps else "second" for step in history["log"]["step"]
    ]
    assert history["eval"]["step"] == [e["step"] for e in summary["eval"]]
    assert history["eval"]["stage"] == [e["stage"] for e in summary["eval"]]
    assert history["eval"]["by_difficulty"] == [
        e["eval_loss_by_difficulty"] for e in summary["eval"]
    ]
    # A run still training has no summary.json: the evaluations come from the summaries.
    os.remove(os.path.join(run_dir, "summary.json"))
    live = history_lib.run_history(run_dir)
    assert live["eval"]["step"] == history["eval"]["step"]
    assert live["eval"]["stage"] == history["eval"]["stage"]
    assert live["eval"]["eval_loss"] == pytest.approx(history["eval"]["eval_loss"], rel=1e-6)
    for got, want in zip(live["eval"]["by_difficulty"], history["eval"]["by_difficulty"]):
        assert got == pytest.approx(want, rel=1e-6)
    path = report_plots.plot_run(history, str(tmp_path / "run.png"))
    with open(path, "rb") as handle:
        assert handle.read(8) == PNG


def test_a_directory_without_history_is_a_clear_error(tmp_path):
    with pytest.raises(history_lib.RunHistoryError, match="holds no training history"):
        history_lib.run_history(str(tmp_path))


def _bind(tmp_path, stages: str, *extra: str) -> None:
    gin.parse_config(
        [
            "highnoon.models.create_model.name_or_config = 'highnoon-nano'",
            f"run_training.stages = {stages}",
            "Trainer.batch_size = 4",
            "Trainer.max_seq_length = 32",
            f"Trainer.data_cache_dir = '{tmp_path / 'cache'}'",
            *extra,
        ]
    )


@pytest.mark.parametrize(
    ("stages", "extra", "message"),
    [
        (
            '[{"name": "code", "datasets": ["/no/such/dir/*.jsonl"]}]',
            (),
            r"stage 'code': dataset entry '/no/such/dir/\*.jsonl' matches no files; the report "
            r"builds each stage's token store from its datasets, so they must exist",
        ),
        (
            '[{"name": "x", "datasets": ["no_such_registered_name"]}]',
            (),
            r"stage 'x': .*no_such_registered_name",
        ),
        (
            '[{"name": "s", "datasets": ["arithmetic"], "max_samples": 40, "epochs": 1}]',
            ("Trainer.seq_length_warmup_steps = 50", "Trainer.seq_length_warmup_start = 8"),
            r"seq_length_warmup_steps=50 is longer than stage 's' \(10 steps\)",
        ),
        (
            '[{"name": "s", "datasets": ["arithmetic"], "pacing": "sideways"}]',
            (),
            r"stage 's': pacing='sideways' must be one of",
        ),
    ],
)
def test_bad_configs_are_clear_report_errors(tmp_path, stages, extra, message):
    _bind(tmp_path, stages, *extra)
    with pytest.raises(program.ReportError, match=message):
        program.plan_from_gin()


@pytest.mark.slow
def test_the_program_on_a_tiny_config_and_on_its_finished_run(tmp_path, monkeypatch):
    config = tmp_path / "tiny.gin"
    config.write_text(
        "include 'models/highnoon-nano.gin'\n"
        'run_training.stages = [{"name": "sums", "datasets": ["arithmetic"], "epochs": 2}]\n'
        "Trainer.eval_interval = 5\n"
        "Trainer.log_interval = 5\n"
        "Trainer.max_samples = 160\n"
        "Trainer.batch_size = 8\n"
        "Trainer.max_seq_length = 32\n"
        "Trainer.eval_fraction = 0.2\n"
        "Trainer.seq_length_warmup_steps = 6\n"
        "Trainer.seq_length_warmup_start = 16\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT, "HIGHNOON_CACHE_DIR": str(tmp_path / "cache")}

    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "launch.curriculum_report", f"--gin_file={config}",
         f"--output={out}", "--measure_steps=1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stage 0 'sums': 2 epoch(s), 128 train / 32 held-out samples" in done.stdout
    assert "time estimate" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.txt").read_text() in done.stdout
    (stage,) = report["stages"]
    assert {t["seq_length"] for t in report["step_seconds"]} == {16, 32}
    for name in ("plan.png", "stage_0.png"):
        assert (out / name).read_bytes()[:8] == PNG
    # Trained and reported on in this process (no more program starts): what highnoon-train
    # runs (run_training with the gin config, its operative config written), then the report
    # program's make_report on the finished run, its flags at their defaults.
    run_dir = str(tmp_path / "run")
    monkeypatch.setenv("HIGHNOON_CACHE_DIR", env["HIGHNOON_CACHE_DIR"])
    hn_flags.parse_gin([str(config)])
    configurables.register_datasets()
    summary = run_lib.run_training(
        run_dir,
        config_writer=lambda: hn_flags.write_operative_config(run_dir, True),
        model_factory=configurables.create_model,
    )
    assert summary["tokens_seen"] == stage["total_tokens"]
    gin.clear_config()
    again = tmp_path / "again"
    flag_values = program.FLAGS
    was_parsed = flag_values.is_parsed()
    flag_values.mark_as_parsed()
    try:
        program.make_report(str(again), run_dir, measure_steps=0, samples=3)
    finally:
        if not was_parsed:
            flag_values.unparse_flags()
    assert (again / "run.png").read_bytes()[:8] == PNG
    history = json.loads((again / "report.json").read_text())["run"]
    assert history["eval"]["stage"] and set(history["eval"]["stage"]) == {"sums"}


def test_plots_without_matplotlib_name_the_extra(monkeypatch):
    # That the Trainer, the report, history and plot modules and the report program import
    # without matplotlib is test_architecture.py's: its probes import every module with
    # matplotlib made unimportable (in the interpreters they start for the layering anyway).
    from highnoon.utils import plotting

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(plotting.PlottingUnavailableError, match=r"pip install 'highnoon\[plot\]'"):
        plotting.pyplot()


def test_history_and_plots_import_nothing_from_training():
    """A run's history and the plots read files and draw: they depend on ``highnoon.utils``
    only, so they can move out of ``training/`` (or be used without it) unchanged."""
    import ast

    for module in (history_lib, report_plots):
        with open(module.__file__, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        imported = {
            node.module if isinstance(node, ast.ImportFrom) else alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        highnoon_imports = {name for name in imported if name and name.startswith("highnoon")}
        assert highnoon_imports and all(
            name.startswith("highnoon.utils") for name in highnoon_imports
        ), (module.__name__, sorted(highnoon_imports))
