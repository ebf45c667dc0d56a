"""This process's limit on open files, raised to what a job needs (POSIX ``RLIMIT_NOFILE``).

The stored orders' external sort keeps one file per bucket and column open while it scatters a
store (about 2 900 a strategy at 1e9 samples, and two strategies are scattered at once), above
the 1 024 many systems allow a process by default. Any process may raise its soft limit up to
its hard limit, so a job that needs more asks for it here (``ensure_open_files``); past the hard
limit it is refused before it starts, with the fix, or does less at once (``can_open_files``:
the orders then scattered one strategy at a time).
"""

from __future__ import annotations

from highnoon.utils.validation import InvalidArgumentError

SPARE_FILES = 64  # files the process holds beside the job's (libraries, logs, the store's own)


def can_open_files(count: int) -> bool:
    """Whether this process may hold ``count`` files open beside ``SPARE_FILES`` others: its
    soft limit raised to fit when below and the hard limit allows (never lowered); False, with
    nothing changed, past the hard limit. True where there are no such limits (not POSIX)."""
    try:
        import resource
    except ImportError:  # Windows: no per-process limit of this kind
        return True
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + SPARE_FILES
    if soft == resource.RLIM_INFINITY or need <= soft:
        return True
    if hard != resource.RLIM_INFINITY and need > hard:
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return True


def ensure_open_files(count: int, job: str, fix: str) -> None:
    """Let this process hold ``count`` files open for ``job`` beside ``SPARE_FILES`` others
    (``can_open_files``), or an ``InvalidArgumentError`` naming ``job``, the limit and ``fix``
    when even the hard limit is too low."""
    if can_open_files(count):
        return
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    raise InvalidArgumentError(
        f"{job} keeps {count} files open at once ({count + SPARE_FILES} with the process's "
        f"others), but this process may open at most {hard} (its hard limit on open files); "
        f"{fix}, or raise the limit (ulimit -Hn)"
    )
