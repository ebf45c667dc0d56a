"""`python -m launch.curriculum_report` in a checkout runs `highnoon.launch.curriculum_report`
(see its docstring)."""

from highnoon.launch.curriculum_report import run

if __name__ == "__main__":
    run()
