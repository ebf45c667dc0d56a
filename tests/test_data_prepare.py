"""highnoon.launch.prepare_data end to end (via the launch/ shim); prepare_datasets in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from highnoon.data import TokenStore, prepare_datasets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_prepare_datasets_builds_reusable_stores(tmp_path):
    index = prepare_datasets(
        ["arithmetic"], str(tmp_path), max_samples=7, progress=False, runner="none"
    )
    (item,) = index["datasets"]
    assert item["num_samples"] == 7
    assert json.loads((tmp_path / "datasets.json").read_text()) == index
    assert TokenStore.open(item["path"], verify=True).fingerprint == item["fingerprint"]
    with pytest.raises(ValueError, match="no_such"):
        prepare_datasets(["no_such"], str(tmp_path), progress=False, runner="none")


def test_launcher_with_gin_registered_dataset(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"body": "one"}\n{"body": "two"}\n')
    gin_file = tmp_path / "data.gin"
    gin_file.write_text(
        f'register_datasets.mapping = {{"mine": {{"source": "{tmp_path / "t.jsonl"}", '
        '"text_field": "body"}}\n'
    )
    out = subprocess.run(
        [
            sys.executable, "-m", "launch.prepare_data", "--datasets=mine,brackets",
            f"--output_dir={tmp_path / 'out'}", f"--gin_file={gin_file}",
            "--gin_bindings=prepare_datasets.max_samples=5", "--runner=none",
        ],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    index = json.loads((tmp_path / "out" / "datasets.json").read_text())
    assert [d["entry"] for d in index["datasets"]] == ["mine", "brackets"]
    assert [d["num_samples"] for d in index["datasets"]] == [2, 5]
    assert index["tokenizer"] == {"type": "byte"}
