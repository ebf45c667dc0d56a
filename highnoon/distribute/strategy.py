"""`create_strategy`: build the tf.distribute strategy from a small spec.

Create the strategy first thing in the process: TensorFlow requires collective ops to be
configured before any other TF work ("Collective ops must be configured at program startup").
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import Any

from highnoon.distribute import cluster
from highnoon.distribute.bounded import JoinWatchdog, probe_address
from highnoon.distribute.errors import TPUUnreachableError
from highnoon.distribute.rendezvous import wait_for_peers
from highnoon.utils.validation import InvalidArgumentError, check_host_port

# A grpc:// TPU address is first probed with a TCP connect this long (at most): an address where
# nothing listens fails in seconds instead of after tpu_timeout_seconds.
TPU_PROBE_SECONDS = 5.0


def _num_gpus() -> int:
    import tensorflow as tf

    return len(tf.config.list_physical_devices("GPU"))


def create_strategy(
    kind: str = "auto",
    tpu: str | None = None,
    tpu_zone: str | None = None,
    gcp_project: str | None = None,
    *,
    num_gpus: int | None = None,
    devices: Sequence[str] | None = None,
    worker_hosts: str | None = None,
    task_index: int | None = None,
    peer_timeout_seconds: float = 300.0,
    collective_timeout_seconds: float | None = 600.0,
    tpu_timeout_seconds: float = 120.0,
) -> Any:
    """Create a `tf.distribute.Strategy`.

    Args:
      kind: `auto`, `tpu`, `multi_worker` (alias `multi_worker_mirrored`), `mirrored` or
        `one_device`. `auto` picks TPU when `tpu` is given or this is a TPU VM, multi-worker
        when TF_CONFIG/Slurm/`worker_hosts` describe several tasks, mirrored with several GPUs,
        else one device (see `cluster.decide_strategy_kind`).
      tpu: `local` (TPU VM), `grpc://host:port`, or a Cloud TPU name.
      tpu_zone, gcp_project: where a named TPU lives (default: the GCE VM's own).
      num_gpus: GPUs to use (default: all visible).
      devices: explicit device list for `mirrored` (e.g. two logical CPUs in tests).
      worker_hosts, task_index: comma-separated `host:port` list and this task's index; written
        to TF_CONFIG before the strategy is built (Model Garden convention).
      peer_timeout_seconds: how long a multi-worker task waits for its peers before it fails
        with an error naming the missing ones. The wait happens in Python first
        (`rendezvous.wait_for_peers`: a `MissingPeersError`; SIGTERM ends the worker at once),
        then TF joins the peers found, bounded again by this deadline (the join watchdog kills
        the worker: exit status 137).
      collective_timeout_seconds: per-collective timeout for multi-worker all-reduces; a peer
        that hangs longer makes the step fail (see `peer_failure_guard`). None: no timeout.
      tpu_timeout_seconds: deadline for connecting to and initialising the TPU system.
    """
    if not peer_timeout_seconds or peer_timeout_seconds <= 0:
        raise InvalidArgumentError(
            f"peer_timeout_seconds must be > 0, got {peer_timeout_seconds!r}"
        )
    if collective_timeout_seconds is not None and collective_timeout_seconds <= 0:
        raise InvalidArgumentError(
            f"collective_timeout_seconds must be > 0 or None, got {collective_timeout_seconds!r}"
        )
    if num_gpus is not None and (isinstance(num_gpus, bool) or num_gpus < 0):
        raise InvalidArgumentError(f"num_gpus must be a non-negative int or None, got {num_gpus!r}")
    name = cluster.canonical_kind(kind)
    if (worker_hosts is None) != (task_index is None):
        raise InvalidArgumentError(
            f"worker_hosts and task_index go together, got worker_hosts={worker_hosts!r}, "
            f"task_index={task_index!r}"
        )
    if worker_hosts is not None:
        cluster.set_tf_config(worker_hosts, task_index)  # validates both
        if name == "auto":
            name = "multi_worker"
    gpus = _num_gpus() if num_gpus is None else num_gpus
    name = cluster.decide_strategy_kind(name, tpu=tpu, num_gpus=gpus)

    import tensorflow as tf

    if name == "tpu":
        return _tpu_strategy(tpu, tpu_zone, gcp_project, tpu_timeout_seconds)
    if name == "multi_worker":
        return _multi_worker_strategy(gpus, peer_timeout_seconds, collective_timeout_seconds)
    if name == "mirrored":
        if devices is not None:
            return tf.distribute.MirroredStrategy(devices=list(devices))
        if gpus > 0:
            return tf.distribute.MirroredStrategy(devices=[f"/gpu:{i}" for i in range(gpus)])
        return tf.distribute.MirroredStrategy()
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus > 0 else "/cpu:0")


# --- multi-worker ----------------------------------------------------------------------------


def _multi_worker_strategy(
    gpus: int, peer_timeout_seconds: float, collective_timeout_seconds: float | None
) -> Any:
    import tensorflow as tf

    resolver_lib = tf.distribute.cluster_resolver
    tf_config = cluster.read_tf_config()
    tasks = cluster.collective_tasks(tf_config)
    if tasks:
        resolver = resolver_lib.TFConfigClusterResolver()
    elif cluster.in_multi_task_slurm():
        resolver = resolver_lib.SlurmClusterResolver()
        spec = resolver.cluster_spec().as_dict()
        tasks = cluster.collective_tasks({"cluster": spec})
    else:  # one worker, no cluster: MWMS still works locally
        resolver = resolver_lib.TFConfigClusterResolver()
    own = (resolver.task_type, resolver.task_id)
    peers = [t for t in tasks if (t[0], t[1]) != own]
    for task_type, index, address in tasks:
        check_host_port(f"TF_CONFIG cluster {task_type}[{index}]", address)
    own_task = next((t for t in tasks if (t[0], t[1]) == own), None)
    waited = None
    if own_task is not None and peers:
        waited = wait_for_peers(own_task, peers, peer_timeout_seconds)

    implementation = (
        tf.distribute.experimental.CommunicationImplementation.NCCL
        if gpus > 0
        else tf.distribute.experimental.CommunicationImplementation.RING
    )
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=implementation, timeout_seconds=collective_timeout_seconds
    )
    with JoinWatchdog(peers, peer_timeout_seconds):
        if waited is not None:
            sys.stderr.write(
                f"highnoon.distribute: all {len(peers)} peer(s) reached in {waited:.1f} s; "
                "joining the TensorFlow cluster\n"
            )
        sys.stderr.flush()
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=resolver, communication_options=options
        )
        # Joining finishes on first use of the context; keep it under the deadline.
        tf.constant(0)
    return strategy


# --- TPU -------------------------------------------------------------------------------------


def _tpu_strategy(
    tpu: str | None, zone: str | None, project: str | None, timeout_seconds: float
) -> Any:
    import tensorflow as tf

    if not tpu:
        if not cluster.tpu_vm_present():
            raise TPUUnreachableError(
                "no TPU was reachable: --tpu was not given and this machine is not a TPU VM "
                "(no /dev/accel* or TPU /dev/vfio devices). Pass --tpu=local on a TPU VM, "
                "--tpu=grpc://HOST:8470, or --tpu=NAME --tpu_zone=ZONE --gcp_project=PROJECT."
            )
        tpu = "local"
    kwargs = cluster.tpu_resolver_kwargs(tpu, zone, project)
    if kwargs["tpu"].startswith("grpc://"):
        address = kwargs["tpu"][len("grpc://") :]
        probe = min(TPU_PROBE_SECONDS, timeout_seconds)
        if not probe_address(address, timeout=probe):
            raise TPUUnreachableError(
                f"no TPU was reachable at {tpu!r}: nothing accepted a connection at {address} "
                f"within {probe:g} s; check the address and that the TPU is running (its gRPC "
                "port is usually 8470)"
            )
    is_name = kwargs["tpu"] != "local" and not kwargs["tpu"].startswith("grpc://")
    if is_name and not (zone and project) and not cluster.on_google_cloud():
        # Resolving a name would ask the GCE metadata server for zone/project, which off
        # Google Cloud waits on the network for a long time. Fail fast instead.
        raise TPUUnreachableError(
            f"no TPU was reachable at {tpu!r}: this machine is not a Google Cloud VM, so the "
            "TPU's zone and project cannot be discovered; pass --tpu_zone and --gcp_project, "
            "or run on the TPU VM with --tpu=local."
        )

    outcome: dict[str, Any] = {}

    def connect() -> None:
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(**kwargs)
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            outcome["resolver"] = resolver
        except BaseException as err:  # reported in the caller's thread
            outcome["error"] = err

    # TF's connect/initialise can block for minutes on an unreachable address.
    thread = threading.Thread(target=connect, name="highnoon-tpu-connect", daemon=True)
    thread.start()
    thread.join(timeout_seconds)
    if thread.is_alive():
        raise TPUUnreachableError(
            f"no TPU was reachable at {tpu!r}: connecting did not finish within "
            f"{timeout_seconds:g} s (tpu_timeout_seconds)"
        )
    if "error" in outcome:
        err = outcome["error"]
        first = (str(err).strip().splitlines() or [""])[0][:300]
        raise TPUUnreachableError(
            f"no TPU was reachable at {tpu!r}: {type(err).__name__}: {first}"
        ) from err
    return tf.distribute.TPUStrategy(outcome["resolver"])
