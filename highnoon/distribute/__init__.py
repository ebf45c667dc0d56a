"""Distribution: strategy creation, cluster facts, the pre-join rendezvous, bounded waits,
cross-host consistency.

Names are imported lazily (PEP 562) so the pure parts (`tf_config_from_worker_hosts`, the
strategy decision) do not import TensorFlow.
"""

from __future__ import annotations

from highnoon.utils.lazy import lazy_getattr

_EXPORTS = {
    "create_strategy": "highnoon.distribute.strategy",
    "verify_consistent": "highnoon.distribute.consistency",
    "fingerprint": "highnoon.distribute.consistency",
    "ConfigMismatchError": "highnoon.distribute.errors",
    "PeerFailureError": "highnoon.distribute.errors",
    "MissingPeersError": "highnoon.distribute.errors",
    "TPUUnreachableError": "highnoon.distribute.errors",
    "DistributeError": "highnoon.distribute.errors",
    "EXIT_MISSING_PEERS": "highnoon.distribute.errors",
    "EXIT_PEER_FAILURE": "highnoon.distribute.errors",
    "peer_failure_guard": "highnoon.distribute.bounded",
    "JoinWatchdog": "highnoon.distribute.bounded",
    "wait_for_peers": "highnoon.distribute.rendezvous",
    "input_host_info": "highnoon.distribute.hosts",
    "is_chief": "highnoon.distribute.hosts",
    "task_info": "highnoon.distribute.hosts",
    "TaskInfo": "highnoon.distribute.hosts",
    "write_dir": "highnoon.distribute.hosts",
    "cleanup_write_dir": "highnoon.distribute.hosts",
    "tf_config_from_worker_hosts": "highnoon.distribute.cluster",
    "set_tf_config": "highnoon.distribute.cluster",
    "decide_strategy_kind": "highnoon.distribute.cluster",
    "tpu_resolver_kwargs": "highnoon.distribute.cluster",
    "tpu_vm_present": "highnoon.distribute.cluster",
    "STRATEGY_KINDS": "highnoon.distribute.cluster",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr("highnoon.distribute", _EXPORTS, globals())


def __dir__() -> list[str]:
    return sorted(__all__)
