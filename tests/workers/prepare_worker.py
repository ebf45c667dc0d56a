"""``highnoon-prepare-data`` over a registered dataset that can stall, for the kill test.

    python prepare_worker.py MARKER STALL [prepare-data flags...]

Registers ``counted``: 400 texts of 20-200 characters (samples 7, 77, 177 empty), keyed by the
sample number only. After 250 samples it creates the file MARKER; with STALL=1 it then sleeps, so
the test can kill the preparation mid-run (its staging directory and lock left behind).
"""

from __future__ import annotations

import pathlib
import sys
import time


def samples(marker: str, stall: bool):
    for i in range(400):
        if i == 250:
            pathlib.Path(marker).touch()
            if stall:
                time.sleep(600)
        yield "" if i in (7, 77, 177) else f"sample {i} " + "xyz" * (i % 60)


def main() -> None:
    marker, stall = sys.argv[1], sys.argv[2] == "1"
    from highnoon.data.registry import register_dataset
    from highnoon.launch import prepare_data

    register_dataset("counted", lambda: samples(marker, stall))
    sys.argv = [sys.argv[0], "--datasets=counted", *sys.argv[3:]]
    prepare_data.run()


if __name__ == "__main__":
    main()
