"""Bounded waits: no worker hangs forever on a peer that never came or died.

TensorFlow blocks forever in the MultiWorkerMirroredStrategy constructor while peers are
missing, holding the GIL and swallowing SIGTERM (see `rendezvous.py`, which does the waiting
in Python first); only SIGKILL ends it. `JoinWatchdog` guards the TF join itself with a small
helper process that, past the deadline, probes each peer's address, prints which tasks are
missing and SIGKILLs the worker; it also turns a SIGTERM/SIGINT/SIGHUP sent to the worker's
process group (`timeout`, Ctrl-C, a closed terminal) into an immediate end of the worker with a
message, instead of dying with the group and leaving the worker hanging. `peer_failure_guard`
turns the errors TF raises when a peer dies mid-run into one clear `PeerFailureError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence

from highnoon.distribute.errors import EXIT_PEER_FAILURE, PeerFailureError
from highnoon.utils.validation import InvalidArgumentError

Task = tuple[str, int, str]  # (task_type, task_index, "host:port")


def probe_address(address: str, timeout: float = 1.0) -> bool:
    """True when something accepts a TCP connection at `host:port` within `timeout` seconds."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # IPv6 literal
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def missing_peers_message(
    peers: Sequence[Task], deadline_seconds: float, reachable: Sequence[bool]
) -> str:
    """The error text naming the peers that did not join (unreachable ones first)."""
    down = [f"{t}:{i} at {a}" for (t, i, a), ok in zip(peers, reachable) if not ok]
    up = [f"{t}:{i} at {a}" for (t, i, a), ok in zip(peers, reachable) if ok]
    lines = [f"cluster did not form within {deadline_seconds:g} s (peer_timeout_seconds)."]
    if down:
        lines.append("missing peers (nothing listening): " + ", ".join(down))
    if up:
        lines.append(
            "listening but not joined: " + ", ".join(up) + " (check that every task runs the "
            "same TF_CONFIG cluster and that its own task index is unique)"
        )
    lines.append("start every task of the cluster, or lower the task count, then relaunch.")
    return "\n".join(lines)


# The watchdog runs in a separate, tiny process: the MWMS constructor holds the GIL while it
# blocks in C++, so a Python thread (or signal handler) in the worker itself never gets to run.
# It shares the worker's process group, so a signal sent to the whole group reaches it; TF in
# the worker records SIGTERM and carries on, so the helper ends the worker instead.
_WATCHDOG_SOURCE = r"""
import json, os, select, signal, sys
cfg = json.loads(sys.argv[1])

def stop(signum, frame):
    if select.select([sys.stdin], [], [], 0)[0]:  # the join just finished: not ours to act on
        os._exit(0)
    name = signal.Signals(signum).name
    sys.stderr.write(
        "highnoon.distribute: ERROR: received " + name + " while joining the cluster (the "
        "worker cannot act on it inside TensorFlow's join); ending it (pid "
        + str(cfg["parent"]) + ")\n"
    )
    sys.stderr.flush()
    os.kill(cfg["parent"], signal.SIGKILL)
    os._exit(0)

for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, stop)
sys.stdout.write("armed\n")
sys.stdout.flush()
ready, _, _ = select.select([sys.stdin], [], [], cfg["deadline"])
if ready:  # "done" or EOF (the worker finished or died): nothing to do
    sys.exit(0)
sys.path.insert(0, cfg["path"])
from highnoon.distribute.bounded import missing_peers_message, probe_address
peers = [tuple(p) for p in cfg["peers"]]
reachable = [probe_address(a, cfg["probe_timeout"]) for _, _, a in peers]
ready, _, _ = select.select([sys.stdin], [], [], 0)
if ready:  # joined while probing
    sys.exit(0)
message = missing_peers_message(peers, cfg["deadline"], reachable)
sys.stderr.write("highnoon.distribute: ERROR: MissingPeersError: " + message + "\n")
sys.stderr.flush()
os.kill(cfg["parent"], signal.SIGKILL)
"""
_ARM_SECONDS = 60.0  # how long __enter__ waits for the helper to install its handlers


class JoinWatchdog:
    """Context manager: kill this process if the body (cluster join) outlasts the deadline.

    A helper process waits `deadline_seconds`; if the body has not finished by then it probes
    each peer's address, prints which tasks are missing to this process's stderr and ends this
    process with SIGKILL (exit status 137 / -9): TF ignores SIGTERM there and holds the GIL, so
    nothing gentler works. SIGTERM, SIGINT or SIGHUP reaching the helper (signals sent to the
    process group) end this process the same way at once, with a message naming the signal.
    `__enter__` returns once the helper is armed. Usage::

        with JoinWatchdog(peers, deadline_seconds=300):
            strategy = tf.distribute.MultiWorkerMirroredStrategy(...)
    """

    def __init__(
        self, peers: Sequence[Task], deadline_seconds: float, *, probe_timeout: float = 1.0
    ) -> None:
        if not deadline_seconds > 0:
            raise InvalidArgumentError(
                f"peer_timeout_seconds must be > 0, got {deadline_seconds!r}"
            )
        self.peers = [(str(t), int(i), str(a)) for t, i, a in peers]
        self.deadline_seconds = float(deadline_seconds)
        self.probe_timeout = probe_timeout
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> JoinWatchdog:
        if not self.peers:  # a single task has nobody to wait for
            return self
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
        config = {
            "deadline": self.deadline_seconds,
            "peers": self.peers,
            "parent": os.getpid(),
            "probe_timeout": self.probe_timeout,
            "path": package_root,
        }
        sys.stderr.flush()
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG_SOURCE, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], _ARM_SECONDS)
        armed = bool(ready) and self._proc.stdout.readline() == b"armed\n"
        self._proc.stdout.close()
        if not armed:  # a helper that cannot start must not block the join; say so
            sys.stderr.write(
                "highnoon.distribute: WARNING: the join watchdog did not start; joining "
                "without a deadline\n"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()  # EOF: the helper exits
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _peer_error_types() -> tuple[type[BaseException], ...]:
    import tensorflow as tf

    return (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.AbortedError,
        tf.errors.CancelledError,
    )


def _is_peer_failure(err: BaseException) -> bool:
    """Whether a TF error comes from a lost peer (collectives, heartbeats, coordination)."""
    if isinstance(err, _peer_error_types()):
        return True
    import tensorflow as tf

    # Some TF versions surface an aborted collective as InternalError with these markers.
    text = str(err)
    return isinstance(err, tf.errors.InternalError) and any(
        marker in text
        for marker in ("Collective ops is aborted", "coordination service", "heartbeat")
    )


_KEYWORDS = (
    "peer",
    "unavailable",
    "unreachable",
    "connection",
    "heartbeat",
    "timed out",
    "deadline",
    "abort",
    "cancel",
    "collective",
)


def _informative_line(text: str) -> str:
    """The first line of a TF error that says something about the failure (TF's first line is
    often just "Graph execution error:")."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in lines:
        low = line.lower()
        if any(k in low for k in _KEYWORDS) and not low.startswith("detected at node"):
            return line[:300]
    return (lines or [""])[0][:300]


def peer_failure_message(err: BaseException) -> str:
    """The clear error text for a TF error caused by a lost peer."""
    first = _informative_line(str(err))
    return (
        "peer failure: another task of the cluster died, hung or became unreachable during a "
        f"collective ({type(err).__name__}: {first}). This worker stops without writing further "
        "state; relaunch the whole job (it resumes from the last complete checkpoint)."
    )


@contextlib.contextmanager
def peer_failure_guard(
    *, exit_process: bool = True, exit_code: int = EXIT_PEER_FAILURE
) -> Iterator[None]:
    """Turn TF's errors from a lost peer into a clear `PeerFailureError`.

    With `exit_process=True` (the default for training loops) the message goes to stderr and the
    process ends at once with `exit_code` via `os._exit`: nothing half-done is written by
    `finally`/atexit handlers, and TF's shutdown (which can block on the dead peer) is skipped.
    With `exit_process=False` the `PeerFailureError` is raised instead. Other errors pass through.
    """
    try:
        yield
    except Exception as err:
        if not _is_peer_failure(err):
            raise
        message = peer_failure_message(err)
        if not exit_process:
            raise PeerFailureError(message) from err
        sys.stdout.flush()
        sys.stderr.write(f"highnoon.distribute: ERROR: PeerFailureError: {message}\n")
        sys.stderr.flush()
        os._exit(exit_code)
