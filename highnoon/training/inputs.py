"""The input side of a step: a stage's host rows as a (distributed) dataset.

Every host turns its own rows of each global batch (``StagePlan.host_rows``) into a ``tf.data``
pipeline of fixed-shape batches, split into its local replicas' consecutive shares, so replica
``r`` of host ``h`` always sees the same rows for a given global step whatever the host count
(docs/design.md, "Determinism").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from highnoon import data as hn_data
from highnoon.training.stage_plan import StagePlan

RowsFn = Callable[[int, int], np.ndarray]  # (host_id, num_hosts) -> [steps, rows] indices


def stage_dataset(
    strategy: tf.distribute.Strategy,
    plan: StagePlan,
    rows_fn: RowsFn,
    *,
    epoch: int,
    start_step: int = 0,
    seq_length: int | None = None,
):
    """The dataset (or distributed dataset) feeding ``plan``'s rows from ``start_step`` on, as
    rows of ``seq_length`` tokens (default: the stage's ``max_seq_length``).

    One replica: the host pipeline feeds the step directly. ``tf.distribute`` would wrap it in a
    MultiDeviceIterator whose inner datasets run tf.data's autotuning thread, and deleting such
    an iterator at an epoch's end can block for that thread's sleep (seconds to a minute,
    growing with the epoch; BENCHMARKS.md).
    """
    settings = plan.settings
    seq_length = settings.max_seq_length if seq_length is None else seq_length

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        host_id, num_hosts = context.input_pipeline_id, context.num_input_pipelines
        local_replicas = context.num_replicas_in_sync // num_hosts
        dataset = hn_data.make_host_dataset(
            plan.store,
            rows_fn(host_id, num_hosts),
            seq_length,
            start_step=start_step,
            pack=settings.pack,
            overflow=settings.overflow,
            seed=plan.seed,
            epoch=epoch,
        )
        # One host step [G/H, T] -> its local replicas' consecutive shares.
        return dataset.map(
            lambda batch: {
                k: tf.reshape(v, [local_replicas, -1, *v.shape[1:]]) for k, v in batch.items()
            }
        ).unbatch()

    if strategy.num_replicas_in_sync == 1 and not isinstance(strategy, tf.distribute.TPUStrategy):
        return dataset_fn(tf.distribute.InputContext(1, 0, 1))
    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return strategy.distribute_datasets_from_function(dataset_fn, options)
