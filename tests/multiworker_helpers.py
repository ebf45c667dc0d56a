"""Helpers for the multi-process Trainer tests: run specs, clusters and their outcomes.

Each cluster runs ``tests/workers/train_worker.py`` (the real ``Trainer`` on a one-block nano
model and tiny JSONL data) under ``highnoon.launch.local_cluster`` with a hard kill timeout.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Any

import numpy as np

from highnoon.launch.local_cluster import ClusterResult, run_local_cluster
from highnoon.models import get_preset
from tests.trainer_helpers import corpus, write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "train_worker.py")
HARD_TIMEOUT = 150  # seconds per run of a cluster; a hang is killed and fails the test
# 2 stages: "first" 2 epochs (size-based curriculum, linear pacing: 2 + 10 steps), "second" 1
# epoch with its own learning rate (6 steps). Global batch 4, checkpoints every 4 steps.
TOTAL_STEPS = 18
STEPS_PER_EPOCH = {(0, 0): 2, (0, 1): 10, (1, 0): 6}
# The nano model with one block: what these runs show (curricula, resumes, preemption, hosts)
# does not depend on depth, and each worker traces its step in about 60% of two blocks' time.
LAYERS = 1
MODEL = get_preset("highnoon-nano").replace(num_layers=LAYERS)
# Float tolerance between runs whose all-reduces sum in a different order (same as the
# in-process parity tests).
RTOL, ATOL = 1e-4, 5e-5


def make_workdir(root) -> dict[str, str]:
    """Data and token-store cache shared by the runs of a test module, under ``root``."""
    return {
        "root": str(root),
        "a": write_jsonl(str(root / "a.jsonl"), corpus(0, 40)),
        "b": write_jsonl(str(root / "b.jsonl"), corpus(1, 24)),
        "cache": str(root / "cache"),
    }


def write_spec(
    workdir: dict[str, str],
    name: str,
    checkpoint_dir: str | None = None,
    batch_size: int = 4,
    trainer_extra: dict[str, Any] | None = None,
    **extra,
) -> str:
    """Writes one run's worker spec; returns its path. The run's outputs go to ``<name>/out``."""
    run_dir = os.path.join(workdir["root"], name)
    os.makedirs(os.path.join(run_dir, "out"))
    spec = {
        "stages": [
            ["first", [workdir["a"]], 2, {}],
            ["second", [workdir["b"]], 1, {"learning_rate": 1e-3}],
        ],
        "trainer": {
            "learning_rate": 3e-3,
            "batch_size": batch_size,
            "max_seq_length": 32,
            "seed": 7,
            "data_cache_dir": workdir["cache"],
            "verbose": False,
            "eval_fraction": 0.0,
            "deterministic_ops": True,
            "write_summaries": False,
            "curriculum_strategy": "size_based",  # the Trainer's default is none
            **(trainer_extra or {}),
        },
        "seq": 32,
        "layers": LAYERS,
        "checkpoint_dir": checkpoint_dir or os.path.join(run_dir, "ckpt"),
        "out_dir": os.path.join(run_dir, "out"),
        "checkpoint_interval": 4,
        **extra,
    }
    path = os.path.join(run_dir, "spec.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(spec, handle)
    return path


def run_cluster(
    spec: str,
    num_workers: int,
    *,
    worker_env: list[dict[str, str]] | None = None,
    timeout: float = HARD_TIMEOUT,
    **kwargs,
) -> ClusterResult:
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="1")
    return run_local_cluster(
        [sys.executable, WORKER, spec],
        num_workers,
        timeout=timeout,
        env=env,
        extra_env_per_worker=worker_env,
        echo=lambda line: None,
        cwd=ROOT,
        **kwargs,
    )


class Outcome:
    """One worker's outputs: final weights, fed rows and events."""

    def __init__(self, spec: str, task: int) -> None:
        with open(spec, encoding="utf-8") as handle:
            out_dir = json.load(handle)["out_dir"]
        base = os.path.join(out_dir, f"worker{task}")
        with np.load(base + ".npz") as arrays:
            self.arrays = {key: arrays[key] for key in arrays.files}
        with open(base + ".json", encoding="utf-8") as handle:
            self.facts: dict[str, Any] = json.load(handle)
        self.weights = [self.arrays[k] for k in sorted(self.arrays) if k.startswith("w")]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.facts["events"] if e["event"] == name]

    def logged_steps(self) -> list[int]:
        return [e["step"] for e in self.events("log")]

    def rows(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.arrays.items() if k.startswith("rows_")}


def write_runs(specs: list[str]) -> str:
    """One worker spec file listing the runs of ``specs`` (trained in that order by one
    cluster), beside the first run's own spec; returns its path."""
    runs = []
    for spec in specs:
        with open(spec, encoding="utf-8") as handle:
            runs.append(json.load(handle))
    path = os.path.join(os.path.dirname(specs[0]), "runs.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(runs, handle)
    return path


def run_ok(spec: str, num_workers: int) -> list[Outcome]:
    return run_ok_together([spec], num_workers)[0]


def run_ok_together(specs: list[str], num_workers: int) -> list[list[Outcome]]:
    """The runs of ``specs`` one after the other in one cluster of ``num_workers`` (one cluster
    start instead of one per run: each worker imports TensorFlow and joins the strategy once);
    returns each run's outcomes, one per worker."""
    path = specs[0] if len(specs) == 1 else write_runs(specs)
    result = run_cluster(path, num_workers, timeout=HARD_TIMEOUT * len(specs))
    assert result.exit_codes == [0] * num_workers, result.outputs
    found = []
    for spec in specs:
        outcomes = [Outcome(spec, task) for task in range(num_workers)]
        assert [o.facts["replicas"] for o in outcomes] == [num_workers] * num_workers
        found.append(outcomes)
    return found


def assert_weights_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want) == len(MODEL.weight_shapes())
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL)


def assert_bitwise_equal(outcomes: list[Outcome]) -> None:
    first = outcomes[0].weights
    for other in outcomes[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(first, other.weights))


def assert_hosts_split_the_global_batch(outcomes: list[Outcome], single: Outcome) -> None:
    """Every step: worker 0's rows, then worker 1's, ... are exactly the one-worker global batch
    (each host feeds 2 rows a step)."""
    per_host = [o.rows() for o in outcomes]
    for key, want in single.rows().items():
        assert [p[key].shape for p in per_host] == [(want.shape[0], 2)] * len(outcomes)
        np.testing.assert_array_equal(np.concatenate([p[key] for p in per_host], axis=1), want)


def fed_steps(rows: np.ndarray, key: str, logged: list[int]) -> np.ndarray:
    """The part of a recorded pipeline ``rows`` table that was really stepped through."""
    stage, epoch = (int(x) for x in re.match(r"rows_s(\d+)_e(\d+)_from", key).groups())
    first = sum(n for (s, e), n in STEPS_PER_EPOCH.items() if (s, e) < (stage, epoch))
    start = int(key.rsplit("from", 1)[1])
    done = sum(
        1 for step in logged if first + start < step <= first + STEPS_PER_EPOCH[stage, epoch]
    )
    return rows[:done]


def global_rows(runs: list[list[Outcome]]) -> dict[int, np.ndarray]:
    """Global step -> the global batch's store rows, hosts concatenated in task order, over one
    or more consecutive runs (a stop and its resume)."""
    table: dict[int, np.ndarray] = {}
    for outcomes in runs:
        logged = outcomes[0].logged_steps()
        for key in outcomes[0].rows():
            stage, epoch, start = (int(x) for x in re.findall(r"\d+", key))
            first = sum(n for (s, e), n in STEPS_PER_EPOCH.items() if (s, e) < (stage, epoch))
            parts = [fed_steps(o.rows()[key], key, logged) for o in outcomes]
            batch = np.concatenate(parts, axis=1)
            for i, row in enumerate(batch):
                step = first + start + i + 1
                assert step not in table, f"step {step} fed twice"
                table[step] = row
    return table
