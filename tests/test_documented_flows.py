"""The README's "Training from Python" snippet and examples/complete_training.py, run as a user
would: from a working directory with relative paths (the example as a script, from the
checkout), twice (the second run resumes the finished run and returns at once), on the embedded
datasets cut small for speed. The README's main job (`highnoon-train` on the quickstart config)
is run by the wheel test in test_launch.py."""

from __future__ import annotations

import json
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


def test_the_complete_example_runs_as_a_script_in_its_own_directory_and_again_resumes(
    small_embedded_datasets, tmp_path, monkeypatch
):
    """`python examples/complete_training.py` from the checkout works in its own directory (the
    example's relative ./checkpoints lands there, not in the checkout); main() called again
    from that directory resumes the finished run and returns at once."""
    stray = os.path.join(REPO, "checkpoints")
    assert not os.path.exists(stray), f"remove {stray} (left by an earlier run) first"
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HIGHNOON_EXAMPLE_DIR", str(tmp_path / "example"))
    path = os.path.join(REPO, "examples", "complete_training.py")
    runpy.run_path(path, run_name="__main__")
    assert os.getcwd() == str(tmp_path / "example")
    assert not os.path.exists(stray)
    with open(os.path.join("checkpoints", "summary.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    assert [s["name"] for s in summary["stages_completed"]] == ["foundation", "code", "instruction"]
    assert [s["epochs"] for s in summary["stages_completed"]] == [5, 3, 2]
    again = runpy.run_path(path)["main"]()
    assert again["total_steps"] == summary["total_steps"] > 0
    assert again["checkpoint_dir"] == os.path.abspath("checkpoints")
