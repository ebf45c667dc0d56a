"""`--strategy=tpu --tpu=NAME` through highnoon.launch.flags without a TPU: must fail fast."""

from __future__ import annotations

import sys

from highnoon.launch import flags as hn_flags


def main(argv: list[str]) -> None:
    del argv
    try:
        hn_flags.strategy_from_flags(tpu_timeout_seconds=20)
    except Exception as err:
        print(f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)
        sys.exit(3)
    print("UNEXPECTED: got a TPU strategy")


if __name__ == "__main__":
    hn_flags.run(main)
