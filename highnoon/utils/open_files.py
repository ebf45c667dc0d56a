"""This process's limit on open files, raised to what a job needs (POSIX ``RLIMIT_NOFILE``).

The stored orders' external sort keeps one file per bucket and column open while it scatters a
store (about 2 900 at 1e9 samples), above the 1 024 many systems allow a process by default.
Any process may raise its soft limit up to its hard limit, so a job that needs more asks for it
here; past the hard limit it is refused before it starts, with the fix.
"""

from __future__ import annotations

from highnoon.utils.validation import InvalidArgumentError

SPARE_FILES = 64  # files the process holds beside the job's (libraries, logs, the store's own)


def ensure_open_files(count: int, job: str, fix: str) -> None:
    """Let this process hold ``count`` files open for ``job`` beside ``SPARE_FILES`` others:
    its soft limit raised to fit when below (never lowered), or an ``InvalidArgumentError``
    naming ``job``, the limit and ``fix`` when even the hard limit is too low. Nothing is
    checked where there are no such limits (not POSIX)."""
    try:
        import resource
    except ImportError:  # Windows: no per-process limit of this kind
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + SPARE_FILES
    if soft == resource.RLIM_INFINITY or need <= soft:
        return
    if hard != resource.RLIM_INFINITY and need > hard:
        raise InvalidArgumentError(
            f"{job} keeps {count} files open at once ({need} with the process's others), but "
            f"this process may open at most {hard} (its hard limit on open files); {fix}, or "
            "raise the limit (ulimit -Hn)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
