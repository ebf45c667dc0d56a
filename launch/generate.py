"""`python -m launch.generate` in a checkout runs `highnoon.launch.generate`."""

from highnoon.launch.generate import run

if __name__ == "__main__":
    run()
