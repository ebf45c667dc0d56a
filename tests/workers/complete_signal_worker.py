"""``highnoon-train`` (the real launch program, same flags) that signals itself after its last step.

Run under ``launch.local_cluster``. ``HN_SIGNAL_AFTER`` says when each task sends itself SIGTERM,
as ``task:moment`` pairs separated by commas:

  returned   as soon as ``Trainer.train`` has returned (the launch program then exports the model
             and generates its sample); the worker then waits, so only the signal can end it
  exit       at interpreter exit, after ``main`` returned (TensorFlow's shutdown still runs)

Each prints ``SIGTERM-SELF at=<moment>`` first, so a test can tell the signal was sent.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import time


def _moment() -> str | None:
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    for pair in os.environ.get("HN_SIGNAL_AFTER", "").split(","):
        index, _, moment = pair.partition(":")
        if index and int(index) == task:
            return moment
    return None


def _signal_self(moment: str) -> None:
    print(f"SIGTERM-SELF at={moment}", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    from tests.workers.train_worker import skip_unused_keras_extras

    skip_unused_keras_extras()  # the program uses none of them; Keras would import them
    moment = _moment()
    if moment == "exit":
        # Registered before the launch program's own exit hook, so it runs after it (LIFO).
        atexit.register(_signal_self, "exit")
    if moment == "returned":
        from highnoon.training import trainer as trainer_lib

        original = trainer_lib.Trainer.train

        def train(self, *args, **kwargs):
            summary = original(self, *args, **kwargs)
            _signal_self("returned")
            time.sleep(60)  # the handler ends the process; the hard timeout catches a miss
            return summary

        trainer_lib.Trainer.train = train

    from highnoon.launch import train as launch_train

    sys.argv[0] = "highnoon-train"
    launch_train.run()


if __name__ == "__main__":
    main()
