"""`python -m launch.prepare_data` in a checkout runs `highnoon.launch.prepare_data`."""

from highnoon.launch.prepare_data import run

if __name__ == "__main__":
    run()
