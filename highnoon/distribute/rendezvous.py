"""Meet the cluster's peers in Python before TensorFlow joins them, so signals still work.

What TensorFlow does (TF 2.21, checked): the ``MultiWorkerMirroredStrategy`` constructor blocks
in C++ until every peer has joined, holding the GIL, so no Python code (thread or signal
handler) of the worker runs; and while joining TF installs its preemption notifier's SIGTERM
handler (``std::signal``), which only records the signal ("SIGTERM caught at ...") and carries
on. A worker waiting there for a peer that never comes ignores SIGTERM (``timeout``, Slurm's
``scancel``, TPU maintenance) until SIGKILL. Blocking SIGTERM before the join does not help
either: a thread TF starts at import keeps it unblocked and receives it.

So the waiting happens here first. Every task of the cluster listens on its own cluster port
(the one TF binds next) and tells every peer "I am here" with a one-line TCP hello
(``highnoon-rendezvous/1 <task_type> <index>``). A task is done when it has delivered its hello
to every peer and received every peer's; it then closes the port and TF joins at once, since
everyone is up. Done-ness is symmetric: a task closes its port only after all peers' hellos to
it have arrived, so no peer's hello can be lost.

During the wait:

* SIGTERM ends the worker at once: a message naming the peers still missing, then the signal's
  default action (exit status -15 / 143), or the previous Python handler if one was installed.
* Past ``deadline_seconds`` a ``MissingPeersError`` names the peers that never arrived
  (nothing listening) and those that listen but never said hello (another program on the port,
  or a task of a different job).
* Connection refused and unresolvable host names are retried: peers start in any order.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from highnoon.distribute.errors import DistributeError, MissingPeersError

Task = tuple[str, int, str]  # (task_type, task_index, "host:port")

PROTOCOL = "highnoon-rendezvous/1"
_MAX_LINE = 256


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _name(task: Task) -> str:
    return f"{task[0]}:{task[1]} at {task[2]}"


def _names(tasks: Sequence[Task], limit: int = 8) -> str:
    shown = ", ".join(_name(t) for t in tasks[:limit])
    return shown + (f" and {len(tasks) - limit} more" if len(tasks) > limit else "")


def _listen(own: Task) -> socket.socket:
    _, port = split_address(own[2])
    dual = socket.has_dualstack_ipv6()
    try:
        server = socket.create_server(
            ("", port),
            family=socket.AF_INET6 if dual else socket.AF_INET,
            dualstack_ipv6=dual,
            backlog=128,
        )
    except OSError as err:
        if err.errno != errno.EADDRINUSE:
            raise
        raise DistributeError(
            f"{_name(own)}: port {port} is already in use on this host, so TensorFlow could "
            "not serve this task there either; stop the process using it (a previous run of "
            "this job?) or give this task another port"
        ) from err
    server.setblocking(False)
    return server


class _Terminated(BaseException):
    """Raised from the SIGTERM handler to leave the wait."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[Any]:
    """Within the block SIGTERM raises ``_Terminated``; yields the previous handler.

    Not installed off the main thread, or when the current handler is not Python's (SIG_IGN
    stays ignored; a handler installed from C is left alone).
    """
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is None or previous == signal.SIG_IGN:
        yield None
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, handler)
    try:
        yield previous
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Rendezvous:
    """The state of one wait: our listener, hellos received, hellos delivered."""

    def __init__(self, own: Task, peers: Sequence[Task], poll_seconds: float) -> None:
        self.own = own
        self.peers = list(peers)
        self.poll_seconds = poll_seconds
        self.hello = f"{PROTOCOL} {own[0]} {own[1]}\n".encode()
        self.heard: set[tuple[str, int]] = set()
        self.delivered: set[tuple[str, int]] = set()
        self.next_try = {(t[0], t[1]): 0.0 for t in self.peers}
        self.selector = selectors.DefaultSelector()
        self.server = _listen(own)
        self.selector.register(self.server, selectors.EVENT_READ, ("accept", None))

    @property
    def missing(self) -> list[Task]:
        return [
            t
            for t in self.peers
            if (t[0], t[1]) not in self.heard or (t[0], t[1]) not in self.delivered
        ]

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()
        self.selector.close()

    def _connect(self, task: Task, now: float) -> None:
        key = (task[0], task[1])
        self.next_try[key] = now + self.poll_seconds
        host, port = split_address(task[2])
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return  # not resolvable yet (DNS of a starting job): retried
        family, kind, proto, _, addr = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        code = sock.connect_ex(addr)
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return
        self.selector.register(sock, selectors.EVENT_WRITE, ("connect", key))

    def _on_connected(self, sock: socket.socket, key: tuple[str, int]) -> None:
        self.selector.unregister(sock)
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                sock.sendall(self.hello)  # a few bytes: fits the send buffer of a fresh socket
                self.delivered.add(key)
        except OSError:
            pass  # refused/reset: retried after poll_seconds
        finally:
            sock.close()

    def _on_readable(self, sock: socket.socket, buffer: bytearray) -> None:
        try:
            data = sock.recv(_MAX_LINE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buffer += data
        if data and b"\n" not in buffer and len(buffer) < _MAX_LINE:
            return
        self.selector.unregister(sock)
        sock.close()
        parts = bytes(buffer).split(b"\n", 1)[0].decode("ascii", "replace").split()
        if len(parts) == 3 and parts[0] == PROTOCOL and parts[2].isdigit():
            key = (parts[1], int(parts[2]))
            if key in self.next_try:
                self.heard.add(key)
        # anything else (a peer's TensorFlow already dialling in, a port scanner): dropped

    def step(self, now: float, timeout: float) -> None:
        for task in self.peers:
            key = (task[0], task[1])
            if key not in self.delivered and self.next_try[key] <= now and not self._pending(key):
                self._connect(task, now)
        for selector_key, _ in self.selector.select(timeout):
            kind, data = selector_key.data
            if kind == "accept":
                with contextlib.suppress(BlockingIOError, OSError):
                    conn, _ = self.server.accept()
                    conn.setblocking(False)
                    self.selector.register(conn, selectors.EVENT_READ, ("read", bytearray()))
            elif kind == "connect":
                self._on_connected(selector_key.fileobj, data)
            else:
                self._on_readable(selector_key.fileobj, data)

    def _pending(self, key: tuple[str, int]) -> bool:
        return any(k.data == ("connect", key) for k in self.selector.get_map().values())


def wait_for_peers(
    own: Task,
    peers: Sequence[Task],
    deadline_seconds: float,
    *,
    poll_seconds: float = 0.25,
    clock: Any = time.monotonic,
) -> float:
    """Block until every peer's rendezvous reached this one and this one reached theirs.

    Returns the seconds waited. Raises ``MissingPeersError`` past ``deadline_seconds``; SIGTERM
    ends the process (module docstring). The listening port is closed on return, before
    TensorFlow binds it.
    """
    peers = [p for p in peers if (p[0], p[1]) != (own[0], own[1])]
    if not peers:
        return 0.0
    start = clock()
    state = _Rendezvous(own, peers, poll_seconds)
    sys.stderr.write(
        f"highnoon.distribute: {_name(own)} waiting up to {deadline_seconds:g} s "
        f"(peer_timeout_seconds) for {len(peers)} peer(s): {_names(peers)}\n"
    )
    sys.stderr.flush()
    try:
        with _sigterm_raises() as previous:
            try:
                while state.missing:
                    now = clock()
                    left = start + deadline_seconds - now
                    if left <= 0:
                        raise MissingPeersError(_deadline_message(state, deadline_seconds))
                    state.step(now, min(poll_seconds, left))
            except _Terminated:
                missing = state.missing
                state.close()
                sys.stdout.flush()
                sys.stderr.write(
                    f"highnoon.distribute: {_name(own)} received SIGTERM while waiting for its "
                    f"peers to join (still missing: {_names(missing)}); exiting without joining "
                    "the cluster.\n"
                )
                sys.stderr.flush()
                signal.signal(signal.SIGTERM, previous)
                signal.raise_signal(signal.SIGTERM)  # the default action ends the process here
                raise DistributeError(
                    "interrupted by SIGTERM while waiting for peers to join the cluster"
                ) from None
    finally:
        state.close()
    return clock() - start


def _deadline_message(state: _Rendezvous, deadline_seconds: float) -> str:
    from highnoon.distribute.bounded import missing_peers_message

    # Reachable: we delivered our hello (something of ours listens there) but never heard back.
    reachable = [(t[0], t[1]) in state.delivered for t in state.missing]
    return missing_peers_message(state.missing, deadline_seconds, reachable)
