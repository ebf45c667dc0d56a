"""Errors and process exit codes of highnoon.distribute."""

from __future__ import annotations

# Exit codes a worker uses when it ends itself with os._exit (TF may hang on a normal exit
# once a peer is gone, so these paths never run Python's shutdown).
# TF's join outlasted the deadline (or a signal came while joining): the join watchdog SIGKILLs
# the worker (128 + 9). A peer missing already at the rendezvous raises MissingPeersError.
EXIT_MISSING_PEERS = 137
EXIT_PEER_FAILURE = 76  # a peer died or hung mid-run
# A preempted run that saved at a step every host agreed on (or was stopped before training
# began): relaunch it. 42 is also what TensorFlow's PreemptionCheckpointHandler exits with.
EXIT_RESTART = 42


class DistributeError(RuntimeError):
    """Base class of the cluster errors below."""


class MissingPeersError(DistributeError):
    """Peers did not join the cluster within the deadline."""


class PeerFailureError(DistributeError):
    """A peer died, hung or became unreachable while collectives were running."""


class TPUUnreachableError(DistributeError):
    """No TPU could be reached at the requested address/name."""


class ConfigMismatchError(ValueError):
    """Hosts disagree on a part (config, data, curriculum, ...) that must be identical."""
