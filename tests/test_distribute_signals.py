"""A worker waiting for its peers stops at once when told to, and no probe hangs.

* SIGTERM to a worker waiting for a missing peer ends it at once, naming the missing peer
  (TensorFlow's own SIGTERM handler would swallow it inside the MWMS join);
* a SIGTERM sent to the worker's whole process group while TensorFlow joins (``timeout``,
  Ctrl-C) no longer kills the join watchdog silently: the watchdog ends the worker with a message;
* a ``grpc://`` TPU address where nothing listens fails within seconds, not tpu_timeout_seconds;
* the rendezvous itself, in-process: meeting, the deadline message, a port already in use.

Every subprocess runs under a hard kill timeout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from highnoon.distribute.errors import DistributeError, MissingPeersError
from highnoon.distribute.rendezvous import wait_for_peers
from highnoon.launch.local_cluster import free_ports, worker_tf_configs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = [sys.executable, os.path.join(ROOT, "tests", "workers", "mwms_worker.py")]
HARD_TIMEOUT = 120
MARKER_TIMEOUT = 60  # waiting for a progress line; on failure the test still signals and fails


class _Worker:
    """A worker process whose stderr lines are collected by a thread."""

    def __init__(self, env: dict[str, str], *, new_session: bool = False) -> None:
        self.proc = subprocess.Popen(
            [*WORKER, "train"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for_line(self, text: str) -> bool:
        deadline = time.monotonic() + MARKER_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(text in line for line in self.lines):
                return True
            time.sleep(0.05)
        return False

    def finish(self) -> tuple[int | None, str]:
        """Wait for the exit (SIGKILL at the hard timeout); (returncode or None, stderr)."""
        try:
            code = self.proc.wait(timeout=HARD_TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            with_group = os.getpgid(self.proc.pid) == self.proc.pid
            if with_group:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait(timeout=HARD_TIMEOUT)
        self._reader.join(timeout=HARD_TIMEOUT)
        return code, "".join(self.lines)


def _env(tf_config: dict, **extra: str) -> dict[str, str]:
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        TF_CPP_MIN_LOG_LEVEL="1",
        CUDA_VISIBLE_DEVICES="-1",
        TF_CONFIG=json.dumps(tf_config),
    )
    env.update(extra)
    return env


@pytest.mark.multiprocess
@pytest.mark.slow
def test_sigterm_while_waiting_for_a_peer_exits_at_once_naming_it():
    ports = free_ports(2)
    worker = _Worker(_env(worker_tf_configs(ports)[0], HN_PEER_TIMEOUT="90"))
    started = worker.wait_for_line("waiting up to 90 s (peer_timeout_seconds) for 1 peer(s)")
    time.sleep(0.5)  # well inside the wait
    worker.proc.send_signal(signal.SIGTERM)  # to the worker alone, as `kill PID` or k8s do
    code, stderr = worker.finish()
    assert started, stderr
    assert code == -signal.SIGTERM, stderr
    assert (
        f"highnoon.distribute: worker:0 at 127.0.0.1:{ports[0]} received SIGTERM while waiting "
        f"for its peers to join (still missing: worker:1 at 127.0.0.1:{ports[1]}); exiting "
        "without joining the cluster."
    ) in stderr
    assert "MissingPeersError" not in stderr


@pytest.mark.multiprocess
@pytest.mark.slow
def test_group_sigterm_during_the_tensorflow_join_ends_the_worker_via_the_watchdog():
    """The test plays worker 1 in the rendezvous and then never starts TensorFlow, so worker 0
    passes the rendezvous and blocks in TF's join, where TF swallows SIGTERM."""
    ports = free_ports(2)
    worker = _Worker(_env(worker_tf_configs(ports)[0], HN_PEER_TIMEOUT="90"), new_session=True)
    peer = threading.Thread(
        target=wait_for_peers,
        args=(("worker", 1, f"127.0.0.1:{ports[1]}"), [("worker", 0, f"127.0.0.1:{ports[0]}")], 90),
        daemon=True,
    )
    peer.start()
    joining = worker.wait_for_line("joining the TensorFlow cluster")
    time.sleep(1.0)  # let TF enter the join (it installs its SIGTERM handler there)
    os.killpg(worker.proc.pid, signal.SIGTERM)  # the whole group, as `timeout` does
    code, stderr = worker.finish()
    assert joining, stderr
    assert code == -signal.SIGKILL, stderr
    assert (
        "highnoon.distribute: ERROR: received SIGTERM while joining the cluster (the worker "
        f"cannot act on it inside TensorFlow's join); ending it (pid {worker.proc.pid})"
    ) in stderr
    assert "READY" not in stderr


@pytest.mark.multiprocess
def test_grpc_tpu_address_with_nothing_listening_fails_fast():
    (port,) = free_ports(1)
    script = (
        "import sys\n"
        "from highnoon.distribute import create_strategy\n"
        "try:\n"
        f"    create_strategy('tpu', tpu='grpc://127.0.0.1:{port}', num_gpus=0)\n"
        "except Exception as err:\n"
        "    print(f'{type(err).__name__}: {err}', file=sys.stderr)\n"
        "    sys.exit(3)\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
    # 60 s is far below the 120 s tpu_timeout_seconds default a hanging connect would take.
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3, proc.stderr
    assert (
        f"TPUUnreachableError: no TPU was reachable at 'grpc://127.0.0.1:{port}': nothing "
        f"accepted a connection at 127.0.0.1:{port} within 5 s"
    ) in proc.stderr


def test_grpc_tpu_address_with_a_bad_port_is_refused():
    from highnoon.distribute import cluster
    from highnoon.utils.validation import InvalidArgumentError

    with pytest.raises(
        InvalidArgumentError,
        match=r"tpu='grpc://host:99999' must be grpc://host:port with a port in \[1, 65535\]",
    ):
        cluster.tpu_resolver_kwargs("grpc://host:99999")


# --- the rendezvous in-process ------------------------------------------------------------------


def test_rendezvous_meets_peers_started_in_any_order():
    ports = free_ports(3)
    tasks = [("worker", i, f"127.0.0.1:{p}") for i, p in enumerate(ports)]
    results: dict[int, object] = {}

    def run(i: int) -> None:
        try:
            results[i] = wait_for_peers(tasks[i], tasks, 60, poll_seconds=0.05)
        except BaseException as err:  # reported below
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in (2, 0)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)  # the last task starts late: the others retry until it listens
    run(1)
    for thread in threads:
        thread.join(timeout=HARD_TIMEOUT)
    assert sorted(results) == [0, 1, 2]
    assert all(isinstance(v, float) for v in results.values()), results
    for port in ports:  # every port is free again for TensorFlow
        with socket.create_server(("127.0.0.1", port)):
            pass


def test_rendezvous_deadline_names_the_missing_peers():
    ports = free_ports(3)
    own = ("worker", 0, f"127.0.0.1:{ports[0]}")
    # worker 1 listens but is not a rendezvous (another program on its port)
    other = socket.create_server(("127.0.0.1", ports[1]))
    try:
        peers = [("worker", 1, f"127.0.0.1:{ports[1]}"), ("worker", 2, f"127.0.0.1:{ports[2]}")]
        with pytest.raises(MissingPeersError) as info:
            wait_for_peers(own, peers, 0.5, poll_seconds=0.05)
    finally:
        other.close()
    assert str(info.value).splitlines() == [
        "cluster did not form within 0.5 s (peer_timeout_seconds).",
        f"missing peers (nothing listening): worker:2 at 127.0.0.1:{ports[2]}",
        f"listening but not joined: worker:1 at 127.0.0.1:{ports[1]} (check that every task runs "
        "the same TF_CONFIG cluster and that its own task index is unique)",
        "start every task of the cluster, or lower the task count, then relaunch.",
    ]


def test_rendezvous_port_in_use_is_a_clear_error():
    ports = free_ports(2)
    busy = socket.create_server(("", ports[0]))
    try:
        with pytest.raises(DistributeError, match=f"port {ports[0]} is already in use on this"):
            wait_for_peers(
                ("worker", 0, f"127.0.0.1:{ports[0]}"),
                [("worker", 1, f"127.0.0.1:{ports[1]}")],
                5,
            )
    finally:
        busy.close()
