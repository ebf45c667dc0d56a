"""Cluster facts from the environment: TF_CONFIG, Slurm, TPU VMs. Pure Python, no TensorFlow.

Everything here reads an explicit environment mapping (default `os.environ`) and the local
filesystem only, so the strategy decision can be tested with a fake environment and never
touches the network.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
from collections.abc import Mapping, MutableMapping
from typing import Any

from highnoon.utils.validation import (
    InvalidArgumentError,
    InvalidDataError,
    check_host_port,
    check_int,
)

STRATEGY_KINDS = ("auto", "tpu", "multi_worker", "mirrored", "one_device")
# Accepted spellings -> canonical kind.
_ALIASES = {"multi_worker_mirrored": "multi_worker"}
# Task types that take part in MultiWorkerMirroredStrategy's collectives.
_COLLECTIVE_JOBS = ("chief", "worker")


def canonical_kind(kind: str) -> str:
    """Return the canonical strategy kind for `kind`, or raise ValueError listing valid kinds."""
    if not isinstance(kind, str):
        raise InvalidArgumentError(f"strategy kind must be a string, got {kind!r}")
    name = kind.strip().lower()
    name = _ALIASES.get(name, name)
    if name not in STRATEGY_KINDS:
        valid = ", ".join([*STRATEGY_KINDS, *_ALIASES])
        raise InvalidArgumentError(f"unknown strategy kind {kind!r}; valid kinds: {valid}")
    return name


# --- TF_CONFIG -------------------------------------------------------------------------------


def tf_config_from_worker_hosts(worker_hosts: str, task_index: int) -> dict[str, Any]:
    """Build a TF_CONFIG dict from a comma-separated `host:port` list and this task's index.

    Same convention as Model Garden's `--worker_hosts`/`--task_index`: every entry is a worker,
    worker 0 is the chief.
    """
    if not isinstance(worker_hosts, str) or not worker_hosts.strip():
        raise InvalidArgumentError(
            f"worker_hosts must be a comma-separated list of host:port, got {worker_hosts!r}"
        )
    hosts = [h.strip() for h in worker_hosts.split(",")]
    for i, host in enumerate(hosts):
        check_host_port(f"worker_hosts[{i}]", host)
    if len(set(hosts)) != len(hosts):
        raise InvalidArgumentError(f"worker_hosts has duplicate entries: {worker_hosts!r}")
    check_int("task_index", task_index)
    if not 0 <= task_index < len(hosts):
        raise InvalidArgumentError(
            f"task_index={task_index} is out of range for {len(hosts)} worker_hosts "
            f"(allowed 0..{len(hosts) - 1})"
        )
    return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": task_index}}


def set_tf_config(
    worker_hosts: str, task_index: int, env: MutableMapping[str, str] | None = None
) -> dict[str, Any]:
    """Write TF_CONFIG for `worker_hosts`/`task_index` into `env` (default os.environ).

    Must run before the strategy is created. Returns the dict written.
    """
    config = tf_config_from_worker_hosts(worker_hosts, task_index)
    target = os.environ if env is None else env
    target["TF_CONFIG"] = json.dumps(config)
    return config


def read_tf_config(env: Mapping[str, str] | None = None) -> dict[str, Any] | None:
    """Parse TF_CONFIG from `env`; None when unset or empty. Raises ValueError if malformed."""
    raw = (os.environ if env is None else env).get("TF_CONFIG", "")
    if not raw.strip():
        return None
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise InvalidDataError(f"TF_CONFIG is not valid JSON ({err}): {raw[:200]!r}") from err
    if not isinstance(config, dict):
        raise InvalidDataError(f"TF_CONFIG must be a JSON object, got {raw[:200]!r}")
    return config


def collective_tasks(tf_config: Mapping[str, Any] | None) -> list[tuple[str, int, str]]:
    """The (task_type, index, address) of every chief/worker task in a TF_CONFIG dict."""
    if not tf_config:
        return []
    cluster = tf_config.get("cluster") or {}
    tasks = []
    for job in _COLLECTIVE_JOBS:
        addresses = cluster.get(job) or []
        if isinstance(addresses, dict):  # sparse form {index: address}
            items = sorted((int(k), v) for k, v in addresses.items())
        else:
            items = list(enumerate(addresses))
        tasks.extend((job, index, address) for index, address in items)
    return tasks


# --- Slurm -----------------------------------------------------------------------------------


def slurm_num_tasks(env: Mapping[str, str] | None = None) -> int:
    """How many tasks the current Slurm step (or job) runs; 0 outside Slurm.

    Prefers the step's task count (set inside `srun`), then the job's; falls back to the node
    count when no task count is set.
    """
    env = os.environ if env is None else env
    for name in ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_JOB_NUM_NODES"):
        value = env.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 0


def in_multi_task_slurm(env: Mapping[str, str] | None = None) -> bool:
    """True when Slurm describes more than one task and this process is one of them."""
    env = os.environ if env is None else env
    return "SLURM_PROCID" in env and slurm_num_tasks(env) > 1


# --- TPU -------------------------------------------------------------------------------------


def tpu_vm_present(env: Mapping[str, str] | None = None, dev_root: str = "/dev") -> bool:
    """Cheap, network-free guess whether this machine is a TPU VM.

    - `/dev/accel*` exists (TPU v2-v4 VMs expose their chips as accel devices), or
    - `/dev/vfio/<n>` exists (v5e/v5p/v6e chips are VFIO devices) AND there is other TPU
      evidence: an environment variable starting with `TPU_` (e.g. TPU_ACCELERATOR_TYPE,
      TPU_WORKER_ID, TPU_NAME) or the `libtpu` package is importable. VFIO alone is not enough
      because other passthrough devices use it too.
    """
    env = os.environ if env is None else env
    if glob.glob(os.path.join(dev_root, "accel*")):
        return True
    vfio = [p for p in glob.glob(os.path.join(dev_root, "vfio", "*")) if p[-1:].isdigit()]
    if not vfio:
        return False
    if any(k.startswith("TPU_") for k in env):
        return True
    return importlib.util.find_spec("libtpu") is not None


def tpu_resolver_kwargs(
    tpu: str | None, zone: str | None = None, project: str | None = None
) -> dict[str, Any]:
    """Map the user's (tpu, zone, project) onto `TPUClusterResolver` keyword arguments.

    `tpu` may be `local` (a TPU VM's own chips; no network call), a `grpc://host:port` address
    (zone/project are not used and are dropped), or a Cloud TPU name (looked up through the Cloud
    TPU API; zone/project default to the GCE VM's own when omitted).
    """
    if tpu is None or not str(tpu).strip():
        raise InvalidArgumentError(
            f"tpu must be 'local', a grpc://host:port address or a Cloud TPU name, got {tpu!r}"
        )
    tpu = str(tpu).strip()
    if tpu == "local":
        return {"tpu": tpu}
    if tpu.startswith("grpc://"):
        try:
            check_host_port("tpu", tpu[len("grpc://") :])
        except InvalidArgumentError:
            raise InvalidArgumentError(
                f"tpu={tpu!r} must be grpc://host:port with a port in [1, 65535]"
            ) from None
        return {"tpu": tpu}
    kwargs: dict[str, Any] = {"tpu": tpu}
    if zone:
        kwargs["zone"] = zone
    if project:
        kwargs["project"] = project
    return kwargs


def on_google_cloud(dmi_path: str = "/sys/class/dmi/id/product_name") -> bool:
    """True on a Google Cloud VM, read from the local DMI product name (no network)."""
    try:
        with open(dmi_path, encoding="utf-8") as f:
            return "google" in f.read().lower()
    except OSError:
        return False


# --- the auto decision -----------------------------------------------------------------------


def decide_strategy_kind(
    kind: str = "auto",
    *,
    tpu: str | None = None,
    env: Mapping[str, str] | None = None,
    num_gpus: int = 0,
    tpu_present: bool | None = None,
) -> str:
    """Resolve `kind` (possibly `auto`) to a concrete strategy kind without creating anything.

    `auto` picks, in order: `tpu` when `tpu` is given or a TPU VM is detected
    (`tpu_vm_present`); `multi_worker` when TF_CONFIG lists more than one chief/worker task or
    Slurm runs more than one task; `mirrored` with more than one GPU; else `one_device`.
    """
    name = canonical_kind(kind)
    if name != "auto":
        return name
    env = os.environ if env is None else env
    if tpu:
        return "tpu"
    if tpu_present is None:
        tpu_present = tpu_vm_present(env)
    if tpu_present:
        return "tpu"
    if len(collective_tasks(read_tf_config(env))) > 1 or in_multi_task_slurm(env):
        return "multi_worker"
    if num_gpus > 1:
        return "mirrored"
    return "one_device"
