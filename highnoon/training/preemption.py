"""Preemption: SIGTERM (or one Ctrl-C) stops every host at the same step, saved, then exits with
the restart code.

TPU VMs, spot GPU hosts and Slurm jobs at their time limit are stopped with SIGTERM and a grace
period. highnoon handles it the same way on every strategy (TensorFlow's
``PreemptionCheckpointHandler`` only logs on Cloud TPU VMs):

1. ``PreemptionWatcher`` turns SIGTERM, and a first SIGINT, into a flag (a second SIGINT aborts
   with ``KeyboardInterrupt``). It also starts the grace clock: if the run has not stopped by
   then, the process exits with the restart code without finishing its save; checkpoints are
   written atomically, so the previous one stays intact.
2. Every host call of a multi-host run also sums the hosts' flags, in the reduction that already
   sums each step's loss and token count (``TrainStep.train_fn(agree=True)``; a sum:
   ``tf.distribute`` has no max), so all hosts stop after the same call at no extra collective.
3. The loop saves a checkpoint at that step (the chief writes it), emits ``preempted`` and raises
   ``Preempted``, a ``SystemExit`` with code ``EXIT_RESTART``: an uncaught one ends the process
   with that code, which the launchers (``launch.local_cluster``, ``launch/slurm.sbatch``,
   ``launch/tpu_pod.sh``) take as "relaunch me"; the relaunched job resumes exactly.

After the last step there is nothing to stop: a ``train()`` that returned marks the process's run
complete (``run_completed``), and a signal that arrives once its watcher has finished is no
preemption. ``exit_complete_on_signal`` is what a program installs for that time (sample
generation, writing its config, interpreter shutdown): the signal ends it with success and a
line saying the run is complete, so no launcher relaunches a finished job.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from absl import logging

from highnoon.distribute.errors import EXIT_RESTART

_HANDLED = (signal.SIGTERM, signal.SIGINT)
EXIT_COMPLETE = 0  # a stop signal after the run completed: success, nothing to relaunch


class _ProcessRuns:
    """What this process's ``train()`` calls did (the signal handlers ask; see the docstring)."""

    started = False  # a PreemptionWatcher was entered
    completed = False  # the last one exited without an exception: every stage trained


_RUNS = _ProcessRuns()


def run_started() -> bool:
    """True once a ``train()`` in this process began watching for preemption signals."""
    return _RUNS.started


def run_completed() -> bool:
    """True when this process's last ``train()`` returned (its run is complete and saved)."""
    return _RUNS.completed


class Preempted(SystemExit):
    """The run stopped on a preemption signal after saving at an agreed step."""

    def __init__(self, step: int, checkpoint: str | None) -> None:
        super().__init__(EXIT_RESTART)
        self.step = step
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        saved = f"saved {self.checkpoint}" if self.checkpoint else "saving is off"
        return (
            f"preempted at the agreed step {self.step} ({saved}); exit code {EXIT_RESTART}: "
            "relaunch to resume"
        )


class PreemptionWatcher:
    """Context manager: while active, preemption signals set ``requested`` instead of killing.

    Handlers can only be installed from the main thread; elsewhere the watcher stays inert
    (``requested`` is then never set by a signal). ``grace_seconds`` bounds the time from the
    first signal to the exit.
    """

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._deadline: threading.Timer | None = None

    def __enter__(self) -> PreemptionWatcher:
        _RUNS.started, _RUNS.completed = True, False
        if threading.current_thread() is threading.main_thread():
            for signum in _HANDLED:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        # Recorded before the handlers change back, so a signal in between finds it.
        _RUNS.completed = exc_type is None
        if exc_type is None and self.requested:
            logging.warning(
                "%s arrived after the last step: the run is complete, nothing to stop or save",
                self.signal_name,
            )
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._deadline is not None:
            self._deadline.cancel()

    def request(self, reason: str) -> None:
        """Asks for a preemption stop (what a signal does; also for tests and callers)."""
        if self.requested:
            return
        self.requested = True
        self.signal_name = reason
        logging.warning(
            "%s received: stopping at the next step boundary all hosts agree on, saving there "
            "(grace period %.0f s)",
            reason,
            self.grace_seconds,
        )
        self._deadline = threading.Timer(self.grace_seconds, self._out_of_time)
        self._deadline.daemon = True
        self._deadline.start()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if signum == signal.SIGINT and self.requested:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the save
        self.request(signal.Signals(signum).name)

    def _out_of_time(self) -> None:
        logging.error(
            "the preemption grace period of %.0f s ran out before the run could stop and save; "
            "exiting with the restart code %d (the previous checkpoint is intact)",
            self.grace_seconds,
            EXIT_RESTART,
        )
        logging.flush()
        os._exit(EXIT_RESTART)


def _say_complete(program: str, signum: int) -> None:
    """The line a program prints when a stop signal finds its run complete; then exit 0."""
    sys.stderr.write(
        f"{program}: {signal.Signals(signum).name} after the run completed: the run is complete "
        f"and saved; exiting with {EXIT_COMPLETE} (success, nothing to relaunch)\n"
    )
    sys.stderr.flush()
    logging.flush()
    os._exit(EXIT_COMPLETE)


def exit_complete_on_signal(program: str, otherwise: Any) -> Any:
    """A SIGTERM/SIGINT handler for a program's time outside ``train()``: once the run completed
    it ends the process with success (``EXIT_COMPLETE``) and says so; before, it calls
    ``otherwise(signum, frame)`` (e.g. exit with the restart code: nothing saved yet)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if _RUNS.completed:
            _say_complete(program, signum)
        otherwise(signum, frame)

    return handler


def ignore_signals_at_exit() -> None:
    """From here to the end of the process a stop signal is ignored: called at interpreter
    exit after a completed run. Python restores the default action (death by the signal) of
    the handlers it installed as it shuts down, while TensorFlow's destructors may still run
    for seconds; an ignored signal stays ignored, so the finished process exits 0."""
    for signum in _HANDLED:
        signal.signal(signum, signal.SIG_IGN)
