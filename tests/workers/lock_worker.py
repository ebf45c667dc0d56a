"""A process that takes the run lock of a model_dir, for the multi-process lock tests.

    python lock_worker.py MODEL_DIR MODE

MODE is a ``RunLock`` mode (``flock``/``lease``): acquire, print "HELD <pid>", keep the lock
until stdin closes, release, print "RELEASED"; if the lock is held elsewhere print the error to
stderr and exit 3. The contender is the test process itself.
"""

from __future__ import annotations

import sys

from highnoon.training.run_lock import ModelDirLockedError, RunLock


def main() -> None:
    model_dir, mode = sys.argv[1:3]
    lock = RunLock(
        model_dir, mode=mode, lease_seconds=30.0, heartbeat_seconds=0.5, settle_seconds=0.2
    )
    try:
        lock.acquire()
    except ModelDirLockedError as err:
        print(f"ModelDirLockedError: {err}", file=sys.stderr, flush=True)
        sys.exit(3)
    try:
        print(f"HELD {lock.record['pid']}", flush=True)
        sys.stdin.read()  # until the test closes stdin (or kills this process)
    finally:
        lock.release()
    print("RELEASED", flush=True)


if __name__ == "__main__":
    main()
