"""`python -m launch.average_checkpoints` in a checkout runs
`highnoon.launch.average_checkpoints`."""

from highnoon.launch.average_checkpoints import run

if __name__ == "__main__":
    run()
