"""`python -m launch.evaluate` in a checkout runs `highnoon.launch.evaluate` (highnoon-lm-eval)."""

from highnoon.launch.evaluate import run

if __name__ == "__main__":
    run()
