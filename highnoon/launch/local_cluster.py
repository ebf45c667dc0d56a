"""Run the same command as N workers of a cluster on 127.0.0.1.

    python -m highnoon.launch.local_cluster --num_workers=2 --timeout=600 -- \\
        highnoon-train --gin_file=runs/quickstart.gin --model_dir=/tmp/hn

(In a checkout, `python -m launch.local_cluster -- python -m launch.train ...` is the same.)

Each worker gets a free port, its own TF_CONFIG and `CUDA_VISIBLE_DEVICES=-1`, and runs in its
own process group. Output lines are prefixed with `[worker i]`. When one worker fails, all the
others are killed with SIGKILL (a TF worker waiting on a dead peer ignores SIGTERM); so are all
of them when `--timeout` passes. The exit code is the first failure's (0 when all succeed, 124
on timeout).

Preemption: a worker that exits with the restart code (42, a preempted run that saved at a step
every worker agreed on) gives the others `--restart_grace` seconds to finish their own save and
exit; then, up to `--max_restarts` times, the whole job is relaunched (new ports, same command)
and resumes from its checkpoint. Any other failure is not relaunched. A SIGTERM to this launcher
is passed on to every worker (they save and exit 42) and the launcher exits 42 itself, so an
outer scheduler can relaunch it; when every worker exits 0 instead (the signal came after the
last step: `highnoon-train` then says the run is complete), the launcher exits 0 too. A job whose
workers all exit 0 is never relaunched.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from highnoon.distribute.errors import EXIT_RESTART
from highnoon.utils import validation

EXIT_TIMEOUT = 124


@dataclasses.dataclass
class ClusterResult:
    """What happened to each worker."""

    exit_codes: list[int | None]  # None: never finished (should not happen after kill)
    outputs: list[str]  # each worker's combined stdout+stderr, unprefixed
    first_failure: int | None  # index of the first worker seen failing
    timed_out: bool
    elapsed_seconds: float

    @property
    def exit_code(self) -> int:
        """The job's exit code: first failure's code, EXIT_TIMEOUT on timeout, else 0."""
        if self.first_failure is not None:
            code = self.exit_codes[self.first_failure]
            # A signal death (negative) maps to the shell convention 128 + signal.
            return 128 - code if code is not None and code < 0 else int(code or 1)
        return EXIT_TIMEOUT if self.timed_out else 0


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def worker_tf_configs(ports: Sequence[int]) -> list[dict]:
    """One TF_CONFIG per worker of a cluster of `127.0.0.1:port` workers."""
    hosts = [f"127.0.0.1:{p}" for p in ports]
    return [
        {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}
        for i in range(len(hosts))
    ]


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def run_local_cluster(
    command: Sequence[str],
    num_workers: int,
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    extra_env_per_worker: Sequence[Mapping[str, str]] | None = None,
    echo: Callable[[str], None] | None = None,
    cwd: str | None = None,
    grace: float = 0.0,
    restart_grace: float = 120.0,
    stop: threading.Event | None = None,
) -> ClusterResult:
    """Start `num_workers` copies of `command` as a local cluster and wait for them.

    Args:
      command: argv of each worker.
      num_workers: how many workers (>= 1).
      timeout: seconds after which every worker is killed (None: no limit).
      env: base environment (default: this process's).
      extra_env_per_worker: per-worker additions, one mapping per worker.
      echo: called with each prefixed output line (default: print to stdout).
      cwd: working directory of the workers.
      grace: seconds the other workers get to exit by themselves after the first failure
        (e.g. to print their own error) before they are killed.
      restart_grace: the same when the first failure is the restart code: the others are
        saving the agreed step.
      stop: when set (e.g. by a SIGTERM to the launcher), every worker gets SIGTERM once.
    """
    if not command:
        raise validation.InvalidArgumentError("command must be a non-empty argv list")
    validation.check_positive_int("num_workers", num_workers)
    validation.check_positive_float("timeout", timeout, allow_none=True)
    validation.check_float("grace", grace, minimum=0.0)
    validation.check_float("restart_grace", restart_grace, minimum=0.0)
    if extra_env_per_worker is not None and len(extra_env_per_worker) != num_workers:
        raise validation.InvalidArgumentError(
            f"extra_env_per_worker has {len(extra_env_per_worker)} entries, "
            f"expected num_workers={num_workers}"
        )
    if echo is None:

        def echo(line: str) -> None:
            sys.stdout.write(line)
            sys.stdout.flush()

    base = dict(os.environ if env is None else env)
    configs = worker_tf_configs(free_ports(num_workers))
    outputs: list[list[str]] = [[] for _ in range(num_workers)]
    echo_lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    readers = []
    start = time.monotonic()

    def pump(i: int, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            if not line.endswith("\n"):
                line += "\n"
            outputs[i].append(line)
            with echo_lock:
                echo(f"[worker {i}] {line}")

    try:
        for i in range(num_workers):
            worker_env = dict(base)
            worker_env.update(
                TF_CONFIG=json.dumps(configs[i]), CUDA_VISIBLE_DEVICES="-1", PYTHONUNBUFFERED="1"
            )
            if extra_env_per_worker is not None:
                worker_env.update(extra_env_per_worker[i])
            proc = subprocess.Popen(
                list(command),
                env=worker_env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: kill takes its children too
            )
            procs.append(proc)
            thread = threading.Thread(target=pump, args=(i, proc), daemon=True)
            thread.start()
            readers.append(thread)

        first_failure = None
        failed_at = 0.0
        timed_out = False
        forwarded = False
        while True:
            now = time.monotonic()
            codes = [p.poll() for p in procs]
            for i, code in enumerate(codes):
                if code not in (None, 0) and first_failure is None:
                    first_failure, failed_at = i, now
            if all(c is not None for c in codes):
                break
            # A preempted worker's peers are saving the same step: let them finish.
            wait = restart_grace if codes[first_failure or 0] == EXIT_RESTART else grace
            if first_failure is not None and now - failed_at >= wait:
                break
            if timeout is not None and now - start > timeout:
                timed_out = True
                break
            if stop is not None and stop.is_set() and not forwarded:
                forwarded = True
                for proc in procs:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.poll() is None:
                _kill_group(proc)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for thread in readers:
            thread.join(timeout=5)

    return ClusterResult(
        exit_codes=[p.returncode for p in procs],
        outputs=["".join(lines) for lines in outputs],
        first_failure=first_failure,
        timed_out=timed_out,
        elapsed_seconds=time.monotonic() - start,
    )


def run_with_restarts(
    command: Sequence[str],
    num_workers: int,
    *,
    max_restarts: int = 0,
    echo: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
    **kwargs,
) -> list[ClusterResult]:
    """``run_local_cluster``, relaunched while the job exits with the restart code (at most
    ``max_restarts`` times); returns every attempt's result, the last one decides."""
    validation.check_int("max_restarts", max_restarts, minimum=0)
    say = echo or (lambda line: sys.stderr.write(line))
    attempts: list[ClusterResult] = []
    while True:
        result = run_local_cluster(command, num_workers, echo=echo, stop=stop, **kwargs)
        attempts.append(result)
        restarts = len(attempts) - 1
        if result.exit_code != EXIT_RESTART or (stop is not None and stop.is_set()):
            return attempts
        if restarts >= max_restarts:
            say(f"local_cluster: preempted again; --max_restarts={max_restarts} reached\n")
            return attempts
        say(f"local_cluster: job preempted (exit {EXIT_RESTART}); relaunch {restarts + 1} of "
            f"{max_restarts}\n")  # fmt: skip


PROG = "python -m highnoon.launch.local_cluster"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [--num_workers=N] [--timeout=S] [--grace=S] [--max_restarts=K] -- CMD ...",
        description="Run CMD as N workers of a cluster on 127.0.0.1 (see the module docstring).",
    )
    parser.add_argument("--num_workers", type=int, default=2, help="workers to start (>= 1)")
    parser.add_argument("--timeout", type=float, default=None, help="hard kill after S seconds")
    parser.add_argument(
        "--grace", type=float, default=0.0, help="seconds others may finish after a failure"
    )
    parser.add_argument(
        "--max_restarts",
        type=int,
        default=0,
        help=f"relaunch the job up to K times when it exits with {EXIT_RESTART} (preempted)",
    )
    parser.add_argument(
        "--restart_grace",
        type=float,
        default=120.0,
        help="seconds a preempted job's other workers get to save and exit",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if "--" not in argv:
        if {"-h", "--help"} & set(argv):
            parser.print_help()
            return 0
        print(f"usage: {parser.usage}\nlocal_cluster: no command after --", file=sys.stderr)
        return 2
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        attempts = run_with_restarts(
            command,
            args.num_workers,
            max_restarts=args.max_restarts,
            stop=stop,
            timeout=args.timeout,
            grace=args.grace,
            restart_grace=args.restart_grace,
        )
    except ValueError as err:
        print(f"local_cluster: {err}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    result = attempts[-1]
    if stop.is_set() and result.exit_code == 0:  # the run had completed: nothing to relaunch
        print(
            "local_cluster: SIGTERM: passed on to the workers; every worker exited 0, the run is "
            "complete: exit 0",
            file=sys.stderr,
        )
        return 0
    if stop.is_set():
        print("local_cluster: SIGTERM: passed on to the workers", file=sys.stderr)
        return EXIT_RESTART
    if result.timed_out:
        print(
            f"local_cluster: timed out after {args.timeout:g} s; killed all workers",
            file=sys.stderr,
        )
    elif result.first_failure is not None:
        print(
            f"local_cluster: worker {result.first_failure} failed with exit code "
            f"{result.exit_codes[result.first_failure]}; killed the others",
            file=sys.stderr,
        )
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
