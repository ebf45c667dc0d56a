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
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

from absl import logging

from highnoon.distribute.errors import EXIT_RESTART

_HANDLED = (signal.SIGTERM, signal.SIGINT)


class Preempted(SystemExit):
    """The run stopped on a preemption signal after saving at an agreed step."""

    def __init__(self, step: int, checkpoint: str | None) -> None:
        super().__init__(EXIT_RESTART)
        self.step = step
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        saved = f"saved {self.checkpoint}" if self.checkpoint else "saving is off"
        return f"preempted at step {self.step} ({saved}); exit code {EXIT_RESTART}: relaunch"


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
        if threading.current_thread() is threading.main_thread():
            for signum in _HANDLED:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info: Any) -> None:
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
