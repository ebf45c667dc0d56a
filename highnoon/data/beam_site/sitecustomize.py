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


def _exit_without_teardown() -> None:
    """Registered first, so run last at exit: a Beam worker that ended cleanly leaves at once.
    By then its bundles are done and reported and its logs flushed (the runner closed its
    control stream, the other exit handlers ran); what is left is the interpreter's teardown of
    about 1300 modules, 0.3-0.5 s a worker, which the runner waits for one worker after the
    other (BENCHMARKS.md, "What bounds two processes"). ``multiprocessing``'s children leave
    the same way. A worker that failed (an uncaught exception, recorded in ``sys.last_value``)
    exits as Python would, with its status."""
    if getattr(sys, "last_value", None) is not None:
        return
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.flush()
    os._exit(0)


if "CONTROL_API_SERVICE_DESCRIPTOR" in os.environ:  # a Beam SDK worker (what the runner sets)
    import atexit

    atexit.register(_exit_without_teardown)


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
