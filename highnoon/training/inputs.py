"""The input side of a step: a stage's rows as a (distributed) dataset.

Every host turns its own rows of each global batch into a ``tf.data`` pipeline of fixed-shape
batches, split into its local replicas' consecutive shares, so replica ``r`` of host ``h`` always
sees the same rows for a given global step whatever the host count (docs/design.md,
"Determinism"). Training rows come from the curriculum call by call (``StagePlan.host_rows_at``
through a ``StepRows``: a pipeline call computes only its own steps' rows) or, with
packing, from the epoch's ``PackedStream`` (``StagePlan.packed_stream``: windows packed as a
pipeline call reaches them); evaluation rows are the stage's
held-out samples, never packed (a per-token loss does not need it).
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from highnoon import data as hn_data
from highnoon.training.stage_plan import StagePlan

HostDatasetFn = Callable[[int, int], tf.data.Dataset]  # (host_id, num_hosts) -> host batches


def training_dataset(
    strategy: tf.distribute.Strategy,
    plan: StagePlan,
    *,
    epoch: int,
    start_step: int = 0,
    end: int | None = None,
    seq_length: int | None = None,
):
    """The stage's training batches of ``epoch``, steps ``[start_step, end)``, as rows of
    ``seq_length`` tokens (default: the stage's ``max_seq_length``; the sequence-length warm-up
    feeds shorter rows in segments of one length). Packed epochs always use full rows (the
    settings refuse packing with a warm-up) and run until their stream ends (``end`` unused:
    the loop stops asking for steps there)."""
    s = plan.settings
    seq_length = s.max_seq_length if seq_length is None else seq_length

    def host_dataset(host_id: int, num_hosts: int) -> tf.data.Dataset:
        if s.pack:
            return hn_data.make_packed_host_dataset(
                plan.store,
                plan.packed_stream(epoch),
                host_id=host_id,
                num_hosts=num_hosts,
                start_step=start_step,
                overflow=s.overflow,
                seed=plan.seed,
                epoch=epoch,
            )
        steps = plan.steps_per_epoch(epoch) if end is None else end
        rows = hn_data.StepRows(  # each pipeline call computes its own steps' rows only
            num_steps=steps,
            rows_per_step=s.global_batch_size // num_hosts,
            rows_at=lambda first, last: plan.host_rows_at(epoch, first, last, host_id, num_hosts),
        )
        return hn_data.make_host_dataset(
            plan.store,
            rows,
            seq_length,
            start_step=start_step,
            overflow=s.overflow,
            seed=plan.seed,
            epoch=epoch,
        )

    return _distribute(strategy, host_dataset)


def eval_dataset(strategy: tf.distribute.Strategy, plan: StagePlan, max_batches: int):
    """The stage's held-out batches (at most ``max_batches``, unpacked)."""
    s = plan.settings

    def host_dataset(host_id: int, num_hosts: int) -> tf.data.Dataset:
        return hn_data.make_host_dataset(
            plan.store,
            plan.eval_rows(host_id, num_hosts, max_batches),
            s.max_seq_length,
            overflow=s.overflow,
            seed=plan.seed,
        )

    return _distribute(strategy, host_dataset)


def _distribute(strategy: tf.distribute.Strategy, host_dataset: HostDatasetFn):
    """Each host's batches split among its local replicas, as ``strategy`` consumes them.

    One replica: the host pipeline feeds the step directly. ``tf.distribute`` would wrap it in a
    MultiDeviceIterator whose inner datasets run tf.data's autotuning thread, and deleting such
    an iterator at an epoch's end can block for that thread's sleep (seconds to a minute,
    growing with the epoch; BENCHMARKS.md).
    """

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        host_id, num_hosts = context.input_pipeline_id, context.num_input_pipelines
        local_replicas = context.num_replicas_in_sync // num_hosts
        if local_replicas == 1:  # the host's batch is the replica's: no reshape, no unbatch
            return host_dataset(host_id, num_hosts)
        # One host step [rows, T] -> its local replicas' consecutive shares.
        return (
            host_dataset(host_id, num_hosts)
            .map(
                lambda batch: {
                    k: tf.reshape(v, [local_replicas, -1, *v.shape[1:]]) for k, v in batch.items()
                }
            )
            .unbatch()
        )

    if feeds_host_dataset(strategy):
        return dataset_fn(tf.distribute.InputContext(1, 0, 1))
    options = tf.distribute.InputOptions(experimental_fetch_to_device=True)
    return strategy.distribute_datasets_from_function(dataset_fn, options)


def feeds_host_dataset(strategy: tf.distribute.Strategy) -> bool:
    """Whether ``strategy``'s step reads the host pipeline itself (one replica, not a TPU): no
    ``tf.distribute`` input wrapper, so the pipeline can be built on any thread
    (``TrainStepRunner.prepare`` builds the next segment's while a call runs)."""
    return strategy.num_replicas_in_sync == 1 and not isinstance(
        strategy, tf.distribute.TPUStrategy
    )
