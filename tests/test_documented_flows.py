"""The README's "Training from Python" snippet and examples/complete_training.py, run as a user
would: from a working directory with relative paths, twice (the second run resumes the finished
run and returns at once), on the embedded datasets cut small for speed."""

from __future__ import annotations

import os
import re
import runpy

import pytest

from highnoon import data as hn_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED = ("stdlib_docs", "stdlib_code", "stdlib_instructions")

pytestmark = pytest.mark.slow


@pytest.fixture()
def small_embedded_datasets(tmp_path, monkeypatch):
    """The embedded datasets under their own names, cut to a few samples; a fresh cache and
    working directory."""
    for name in EMBEDDED:
        hn_data.register_dataset(name, hn_data.EmbeddedSource(name, max_samples=40))
    monkeypatch.setenv("HIGHNOON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    yield
    hn_data.register_embedded_datasets()


def readme_snippet() -> str:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    section = readme.split("## Training from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_snippet_runs_twice_from_a_relative_directory(small_embedded_datasets):
    code = readme_snippet()
    assert 'checkpoint_dir="./checkpoints"' in code
    first: dict = {}
    exec(compile(code, "README.md", "exec"), first)
    summary = first["summary"]
    assert [s["name"] for s in summary["stages_completed"]] == ["foundation", "code", "instruction"]
    assert os.path.exists("checkpoints/summary.json")
    second: dict = {}
    exec(compile(code, "README.md", "exec"), second)
    assert second["summary"]["total_steps"] == summary["total_steps"]
    assert second["summary"]["checkpoint_dir"] == os.path.abspath("checkpoints")


def test_the_complete_example_runs_twice_from_a_relative_directory(small_embedded_datasets):
    path = os.path.join(REPO, "examples", "complete_training.py")
    summary = runpy.run_path(path)["main"]()
    assert [s["name"] for s in summary["stages_completed"]] == ["foundation", "code", "instruction"]
    assert [s["epochs"] for s in summary["stages_completed"]] == [5, 3, 2]
    again = runpy.run_path(path)["main"]()
    assert again["total_steps"] == summary["total_steps"] > 0
    assert os.path.exists(os.path.join("checkpoints", "summary.json"))
