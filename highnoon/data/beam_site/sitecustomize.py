"""Run first by the local Beam worker processes of a preparation (``beam_prepare``): their
``PYTHONPATH`` starts with this directory while the pipeline runs.

Beam imports pandas, pyarrow and boto3 whenever they are installed (for DataFrames, Arrow
schemas and S3 IO), each inside ``try: import ... except ImportError``. No step
of a preparation reading files or embedded data uses them, and they are about 40% of a worker's
start-up (BENCHMARKS.md, "Preparing a corpus on Apache Beam"), so they are marked absent here,
as the training workers mark Keras' extras absent. Any other ``sitecustomize`` on the path still
runs, after this one.
"""

import importlib.util
import os
import sys

UNUSED = ("pandas", "pyarrow", "boto3")  # not pymongo: Beam logs a warning without it
# Beam's BigQuery IO, imported by ``apache_beam.io`` inside ``try: ... except ImportError`` with
# the other Google Cloud IOs (Pub/Sub, GCS, cross-language IO), brings ``requests`` and a quarter
# to a third of what a worker spends importing; a local worker reading files or embedded data uses
# none of them (BENCHMARKS.md, "What bounds two processes")
UNUSED_BEAM = ("apache_beam.io.gcp.bigquery",)

for _name in UNUSED + UNUSED_BEAM:
    sys.modules.setdefault(_name, None)


def _run_next() -> None:
    """The ``sitecustomize`` this one hides (the next on ``sys.path``), if any."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        if os.path.abspath(entry or os.curdir) == here:
            continue
        path = os.path.join(entry or os.curdir, "sitecustomize.py")
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location("_sitecustomize_next", path)
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            return


_run_next()
