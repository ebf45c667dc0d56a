"""Test-session setup shared by every test module.

Two logical CPU devices are configured before TensorFlow initialises, so a 2-replica
``MirroredStrategy`` can run in-process (docs/design.md, "Distribution"). Tests that do not ask for it
still run on ``/cpu:0`` exactly as before.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")


def _configure_logical_cpus() -> None:
    try:
        import tensorflow as tf
    except ImportError:  # numpy-only test runs
        return
    cpus = tf.config.list_physical_devices("CPU")
    # RuntimeError: already initialised (e.g. a plugin touched TF first); keep one device.
    with contextlib.suppress(RuntimeError):
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
        )


_configure_logical_cpus()

# At exit the interpreter collects every object cycle before it stops: after a session of traced
# TensorFlow functions that is their graphs' millions of Python wrappers (about 15 s after
# test_sharding.py alone, more after the whole suite), spent on memory the process is about to
# give back whole. Frozen objects are left out of that collection. atexit runs only when the
# interpreter exits, so a caller of pytest.main keeps its collector as it was until then.
atexit.register(gc.freeze)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def mirrored():
    """One 2-replica MirroredStrategy over the two logical CPUs for the whole session.

    Every strategy object numbers its collectives from the same start, and the process has one
    collective executor: two strategies over the same devices would give different collectives
    the same instance key ("Collective instance N expected type ... but got type ..."). So tests
    share this one.
    """
    import tensorflow as tf

    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs the two logical CPU devices configured above")
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
