"""highnoon.launch.prepare_data end to end (via the launch/ shim); prepare_datasets in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
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


def _prepare(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launch.prepare_data", *flags],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip


def _orders_in(path: str) -> list[str]:
    folder = os.path.join(path, "orders")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


@pytest.mark.slow
def test_prepare_writes_the_orders_after_the_store_and_orders_only_adds_them(tmp_path):
    """``--orders`` (one process here; the Beam runner's stores take the same step in the
    launching process) writes each store's orders, equal to the in-memory order; ``--orders=``
    writes none; ``--orders_only`` adds orders to a store prepared earlier, keeping fresh ones."""
    from highnoon.curriculum.order import order_from_scores
    from highnoon.curriculum.scoring import scores_from_features
    from highnoon.curriculum.stored_order import open_stored_order

    out = str(tmp_path / "out")
    done = _prepare("--datasets=arithmetic", f"--output_dir={out}", "--runner=none",
                    "--gin_bindings=prepare_datasets.max_samples=40",
                    "--orders=size_based,mixed")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (item,) = json.loads(done.stdout)["datasets"]
    assert item["orders"] == ["size_based", "mixed"]
    store = TokenStore.open(item["path"])
    assert _orders_in(store.path) == [
        f"{s}.{e}"
        for s in ("mixed", "size_based")
        for e in ("bin", "crc32c", "json", "lengths.bin", "lengths.crc32c")
    ]
    for strategy in ("size_based", "mixed"):
        expected = order_from_scores(scores_from_features(store.features, strategy))
        stored = open_stored_order(store, strategy)
        assert stored[:].tolist() == expected.tolist()
        assert stored.lengths[:].tolist() == store.features.lengths[expected].tolist()
    mixed_json = os.path.join(store.path, "orders", "mixed.json")
    before = os.stat(mixed_json).st_mtime_ns

    added = _prepare(f"--orders_only={store.path}", "--orders=difficulty_based,mixed")
    assert added.returncode == 0, added.stderr[-2000:]
    (report,) = json.loads(added.stdout)["orders"]
    assert report == {"path": store.path, "orders": ["difficulty_based", "mixed"],
                      "written": ["difficulty_based"]}  # fmt: skip
    assert os.stat(mixed_json).st_mtime_ns == before  # fresh: kept

    none = str(tmp_path / "none")
    done = _prepare("--datasets=arithmetic", f"--output_dir={none}", "--runner=none",
                    "--gin_bindings=prepare_datasets.max_samples=5", "--orders=")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (item,) = json.loads(done.stdout)["datasets"]
    assert item["orders"] == [] and _orders_in(item["path"]) == []

    refused = _prepare(f"--orders_only={store.path}", "--orders=random")
    assert refused.returncode != 0
    assert "strategy='random' cannot be stored" in refused.stderr


def test_upgrade_stores_rewrites_a_format_2_store_and_stamps_its_orders(tmp_path):
    """``--upgrade_stores`` (the program ``as_format_2``'s stores meet in the field): format 3,
    the same samples, the orders stamped with the new fingerprint and still read."""
    from highnoon.curriculum.stored_order import open_stored_order, write_orders
    from tests.remote_store_helpers import as_format_2, write_store

    path = as_format_2(write_store(str(tmp_path / "s"), np.arange(300) % 9 + 1, num_shards=2))
    write_orders(path, ("size_based",))
    before = TokenStore.open(path)
    samples = before.samples(range(300))
    order = open_stored_order(before, "size_based")[:].tolist()
    done = _prepare(f"--upgrade_stores={path}")
    assert done.returncode == 0, done.stderr[-2000:]
    (report,) = json.loads(done.stdout)["upgraded"]
    after = TokenStore.open(path)
    assert (report["upgraded"], report["orders"], report["fingerprint"]) == (
        2,
        ["size_based"],
        after.fingerprint,
    )
    assert report["old_fingerprint"] == before.fingerprint != after.fingerprint
    assert after.manifest["format_version"] == 3
    for a, b in zip(after.samples(range(300)), samples, strict=True):
        np.testing.assert_array_equal(a, b)
    assert open_stored_order(after, "size_based")[:].tolist() == order


def test_store_modes_stop_on_a_bad_store_with_its_message_not_a_traceback(tmp_path):
    """``--verify``, ``--orders_only`` and ``--upgrade_stores`` on a path holding no store:
    exit status 1 and the store's message on stderr, no traceback."""
    missing = str(tmp_path / "no-store")
    for flag in ("--verify", "--orders_only", "--upgrade_stores"):
        done = _prepare(f"{flag}={missing}")
        assert done.returncode == 1, (flag, done.stderr[-2000:])
        assert f"highnoon-prepare-data: StoreError: path={missing!r} does not exist" in (
            done.stderr
        ), flag
        assert "Traceback" not in done.stderr, flag
