"""One preparation per output directory: ``highnoon-prepare-data`` holds
``<output_dir>/prepare.lock`` for its whole run (docs/design.md, "Preparation on Apache Beam").

The run lock's mechanism (``training/run_lock.py``: ``flock`` for a local directory, a lease
with a heartbeat on ``gs://``) with its own file and message: a second preparation into the same
directory refuses, naming the first; the lock of a killed one is taken over with a warning.
"""

from __future__ import annotations

from typing import Any

from absl import logging

from highnoon.training.run_lock import RunLock, describe_holder

LOCK_FILE = "prepare.lock"


class PrepareLock(RunLock):
    """One preparation per output directory: ``RunLock``'s flock (local) or lease (``gs://``)
    on ``<output_dir>/prepare.lock``; the second preparation refuses, naming the first."""

    def __init__(self, output_dir: str, **options: Any) -> None:
        super().__init__(output_dir, **options)
        self.path = self.model_dir.rstrip("/") + "/" + LOCK_FILE

    def _locked_message(self, holder: dict[str, Any] | None) -> str:
        who = describe_holder(holder) if holder else "another process (details not written yet)"
        return (
            f"output_dir={self.model_dir!r} is being written by another preparation ({who}; "
            f"lock file {self.path}). Two preparations into one directory would mix their "
            "shards: wait for it to finish or stop it, or use another output_dir"
        )

    def _warn_takeover(self, previous: dict[str, Any], reason: str) -> None:
        who = describe_holder(previous) if previous else "an unknown preparation"
        logging.warning(
            "output_dir=%r: taking over the lock of a preparation that is gone (%s): %s; its "
            "incomplete stores are prepared again",
            self.model_dir,
            who,
            reason,
        )
