"""Who am I in the cluster: host id/count for input sharding, chief/worker roles, write dirs."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, NamedTuple

from highnoon.utils.hashing import sha256_hex
from highnoon.utils.validation import InvalidArgumentError


class TaskInfo(NamedTuple):
    """This process's task in the cluster. Single-process strategies report ("worker", 0)."""

    task_type: str
    task_id: int


def input_host_info(input_context: Any | None) -> tuple[int, int]:
    """(host_id, num_hosts) for input sharding, from a `tf.distribute.InputContext`.

    Uses `input_pipeline_id`/`num_input_pipelines`: correct under MultiWorkerMirroredStrategy
    (one pipeline per worker) and under TPUStrategy, where one Python client builds one pipeline
    per TPU host. No context (plain single-device use) means (0, 1).
    """
    if input_context is None:
        return 0, 1
    host_id = int(input_context.input_pipeline_id)
    num_hosts = int(input_context.num_input_pipelines)
    if num_hosts < 1 or not 0 <= host_id < num_hosts:
        raise InvalidArgumentError(
            f"input context has input_pipeline_id={host_id}, num_input_pipelines={num_hosts}; "
            "expected 0 <= id < count"
        )
    return host_id, num_hosts


def _resolver(strategy: Any) -> Any | None:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return None
    # TPUStrategy: one client drives every TPU host; it is the chief.
    if type(resolver).__name__ == "TPUClusterResolver":
        return None
    return resolver


def task_info(strategy: Any) -> TaskInfo:
    """(task_type, task_id) of this process, from the strategy's cluster resolver."""
    resolver = _resolver(strategy)
    task_type = getattr(resolver, "task_type", None) if resolver is not None else None
    if not task_type:
        return TaskInfo("worker", 0)
    return TaskInfo(str(task_type), int(resolver.task_id or 0))


def is_chief(strategy: Any) -> bool:
    """True for the task that writes model_dir: `chief`, else worker 0 when there is no chief."""
    resolver = _resolver(strategy)
    info = task_info(strategy)
    if resolver is None or info.task_type == "chief":
        return True
    try:
        jobs = resolver.cluster_spec().jobs
    except Exception:  # a resolver without a spec: single task
        jobs = []
    if "chief" in jobs:
        return False
    return info.task_type == "worker" and info.task_id == 0


def num_hosts(strategy: Any) -> int:
    """Processes that run this job's training loop (chief + workers); 1 without a cluster."""
    resolver = _resolver(strategy)
    if resolver is None:
        return 1
    try:
        spec = resolver.cluster_spec().as_dict()
    except Exception:  # a resolver without a spec: single task
        return 1
    return max(sum(len(spec.get(job, ())) for job in ("chief", "worker")), 1)


def write_dir(model_dir: str, strategy: Any) -> str:
    """Where this task writes checkpoints and summaries.

    The chief writes to `model_dir`. Every other worker must still take part in checkpoint saves
    (reading synced variables all-reduces), so it writes to its own local temporary directory,
    removed afterwards with `cleanup_write_dir` (as Model Garden's train_lib does).
    """
    if not model_dir:
        raise InvalidArgumentError(f"model_dir must be a non-empty path, got {model_dir!r}")
    if is_chief(strategy):
        return model_dir
    info = task_info(strategy)
    key = sha256_hex(os.path.abspath(model_dir), chars=10)
    name = f"highnoon-{info.task_type}-{info.task_id}-{key}-{os.getpid()}"
    return os.path.join(tempfile.gettempdir(), name)


def cleanup_write_dir(path: str, model_dir: str) -> None:
    """Remove a non-chief worker's temporary write dir; never touches `model_dir` itself."""
    if os.path.abspath(path) == os.path.abspath(model_dir):
        return
    shutil.rmtree(path, ignore_errors=True)
