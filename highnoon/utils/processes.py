"""Who owns a file: this process's identity and whether another process is still alive.

Used by the run lock (``highnoon/training/run_lock.py``) and the cleanup of temporaries left by
killed processes (``highnoon/data/store.py``): something may only be removed or taken over when
its owner is known to be gone. The answer is conservative: a process on another host, or one
this process cannot inspect, counts as alive.

A process is named by ``(host, pid, start)``: ``start`` is its start time in clock ticks since
boot (``/proc/<pid>/stat`` field 22, Linux), which tells a live owner from an unrelated process
that reused its pid. Where ``/proc`` is missing, ``start`` is None and the pid alone decides.
"""

from __future__ import annotations

import functools
import os
import socket

from highnoon.utils.hashing import sha256_hex


@functools.cache
def hostname() -> str:
    """This machine's host name (as other hosts of a cluster usually know it)."""
    return socket.gethostname()


@functools.cache
def host_key() -> str:
    """8 hex digits naming this host, short enough for file names."""
    return sha256_hex(hostname(), chars=8)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    # "pid (comm) state ...": comm may hold spaces and parentheses, so split after the last ")".
    return text[text.rfind(")") + 2 :].split()


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot, or None if unknown."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def pid_alive(pid: int, start: int | None = None) -> bool:
    """Whether process ``pid`` (on this host) still runs.

    A zombie (exited, not yet reaped) is dead. With ``start`` (see ``process_start``), a live pid
    whose start time differs is a different process that reused the pid: dead as well.
    """
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    fields = _stat_fields(pid)
    if fields is None:
        return True  # no /proc: the signal test is all there is
    if fields[0] in ("Z", "X"):
        return False
    return start is None or int(fields[19]) == int(start)


def owner_alive(host: str, pid: int, start: int | None = None) -> bool:
    """Whether the process ``pid`` on ``host`` may still run: always True for another host."""
    if host != hostname():
        return True
    return pid_alive(pid, start)
