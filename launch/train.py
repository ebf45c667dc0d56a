"""`python -m launch.train` in a checkout runs `highnoon.launch.train` (see its docstring)."""

from highnoon.launch.train import run

if __name__ == "__main__":
    run()
