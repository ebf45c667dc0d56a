"""Host pipeline: exact batches for given indices, overflow rules, packing, resume, replicas."""

from __future__ import annotations

import numpy as np
import pytest

from highnoon.data import (
    build_token_store,
    make_host_dataset,
    make_packed_host_dataset,
    pack_epoch,
    packing_plan,
    per_replica_rows,
    stored_lengths,
)
from highnoon.data.pipeline import HostBatcher, PackedBatcher
from highnoon.utils.hashing import keyed_hash

tf = pytest.importorskip("tensorflow")

# stored samples (EOS=2 appended): [10,11,2], [20,21,22,2], [30,31,32,33,34,35,2]
SAMPLES = [np.array([10, 11]), np.array([20, 21, 22]), np.arange(30, 36)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pipe") / "store")
    return build_token_store(SAMPLES, "byte", path, progress=False)


def as_numpy(dataset):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset]


def test_exact_truncated_batches(store):
    rows = np.array([[0, 2], [1, 0]])
    batches = as_numpy(make_host_dataset(store, rows, seq_len=4))
    assert len(batches) == 2
    first = batches[0]
    assert sorted(first) == ["inputs", "loss_mask", "targets"]
    assert all(v.dtype == np.int32 and v.shape == (2, 4) for v in first.values())
    np.testing.assert_array_equal(first["inputs"], [[1, 10, 11, 2], [1, 30, 31, 32]])
    np.testing.assert_array_equal(first["targets"], [[10, 11, 2, 0], [30, 31, 32, 33]])
    np.testing.assert_array_equal(first["loss_mask"], [[1, 1, 1, 0], [1, 1, 1, 1]])
    second = batches[1]
    np.testing.assert_array_equal(second["inputs"], [[1, 20, 21, 22], [1, 10, 11, 2]])
    np.testing.assert_array_equal(second["targets"], [[20, 21, 22, 2], [10, 11, 2, 0]])
    np.testing.assert_array_equal(second["loss_mask"], [[1, 1, 1, 1], [1, 1, 1, 0]])


def test_static_shapes(store):
    dataset = make_host_dataset(store, np.zeros((3, 2), np.int64), seq_len=5)
    assert dataset.element_spec["inputs"].shape == (2, 5)


def test_pipeline_runs_without_the_autotune_thread(store):
    """tf.data's autotuning thread is off: deleting an iterator would otherwise wait out its
    sleep (up to a minute) at every epoch end. The batches are the same (tests above); the
    throughput too (bench/bench_data.py)."""
    dataset = make_host_dataset(store, np.zeros((3, 2), np.int64), seq_len=5)
    assert dataset.options().autotune.enabled is False
    assert len(as_numpy(dataset)) == 3


def test_window_overflow_follows_the_keyed_rule(store):
    full = np.array([1, 30, 31, 32, 33, 34, 35, 2])
    for seed, epoch in [(0, 0), (3, 1), (7, 2)]:
        batch = HostBatcher(store, np.array([[2]]), 4, overflow="window", seed=seed, epoch=epoch)
        w = int(keyed_hash(np.array([2]), seed, epoch)[0] % np.uint64(4))
        got = batch.batch(0)
        np.testing.assert_array_equal(got["inputs"][0], full[w : w + 4])
        np.testing.assert_array_equal(got["targets"][0], full[w + 1 : w + 5])
        np.testing.assert_array_equal(got["loss_mask"][0], [1, 1, 1, 1])
    windows = {
        int(keyed_hash(np.array([2]), 0, e)[0] % np.uint64(4)) for e in range(8)
    }  # the window moves between epochs
    assert len(windows) > 1
    short = HostBatcher(store, np.array([[0]]), 4, overflow="window", seed=5).batch(0)
    np.testing.assert_array_equal(short["inputs"][0], [1, 10, 11, 2])


def test_packing_exact(store):
    # stored lengths 3, 4, 7: FFD puts 7 in a row of its own and 4 + 3 together; rows follow
    # their earliest stream position, segments stream order inside a row
    packed = pack_epoch(np.array([0, 1, 2]), stored_lengths(store), 8, 2)
    (batch,) = as_numpy(make_packed_host_dataset(store, packed))
    assert sorted(batch) == ["inputs", "loss_mask", "positions", "segment_ids", "targets"]
    np.testing.assert_array_equal(
        batch["inputs"], [[1, 10, 11, 1, 20, 21, 22, 0], [1, 30, 31, 32, 33, 34, 35, 0]]
    )
    np.testing.assert_array_equal(
        batch["targets"], [[10, 11, 2, 20, 21, 22, 2, 0], [30, 31, 32, 33, 34, 35, 2, 0]]
    )
    np.testing.assert_array_equal(
        batch["positions"], [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 5, 6, 0]]
    )
    np.testing.assert_array_equal(
        batch["segment_ids"], [[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1, 0]]
    )
    np.testing.assert_array_equal(
        batch["loss_mask"], [[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1, 0]]
    )
    assert packing_plan(packed, 0) == [(0, 0, 0, 3), (1, 0, 3, 4), (2, 1, 0, 7)]
    # one row per step: the third sample goes to a second step, nothing is dropped
    one = pack_epoch(np.array([0, 1, 2]), stored_lengths(store), 8, 1)
    assert one.num_steps == 2
    assert [packing_plan(one, s) for s in (0, 1)] == [[(0, 0, 0, 3), (1, 0, 3, 4)], [(2, 0, 0, 7)]]
    first, second = as_numpy(make_packed_host_dataset(store, one))
    np.testing.assert_array_equal(first["inputs"], [[1, 10, 11, 1, 20, 21, 22, 0]])
    np.testing.assert_array_equal(second["inputs"], [[1, 30, 31, 32, 33, 34, 35, 0]])


def test_packing_truncates_long_samples_to_a_row(store):
    packed = pack_epoch(np.array([2, 0]), stored_lengths(store), 4, 2)
    batch = PackedBatcher(store, packed).batch(0)
    np.testing.assert_array_equal(batch["inputs"], [[1, 30, 31, 32], [1, 10, 11, 0]])
    np.testing.assert_array_equal(batch["targets"], [[30, 31, 32, 33], [10, 11, 2, 0]])
    np.testing.assert_array_equal(batch["segment_ids"], [[1, 1, 1, 1], [1, 1, 1, 0]])


def test_packed_last_step_is_padded_with_empty_rows(store):
    packed = pack_epoch(np.array([2, 0, 1]), stored_lengths(store), 7, 4)  # 2 rows, 4 per step
    batch = PackedBatcher(store, packed).batch(0)
    assert batch["inputs"].shape == (4, 7)
    np.testing.assert_array_equal(batch["loss_mask"].sum(axis=1), [7, 7, 0, 0])
    np.testing.assert_array_equal(batch["inputs"][2:], 0)
    np.testing.assert_array_equal(batch["segment_ids"][2:], 0)


def test_start_step_resumes_exactly_and_runs_repeat(store):
    rng = np.random.Generator(np.random.PCG64(0))
    rows = rng.integers(0, 3, size=(6, 4))
    full = as_numpy(make_host_dataset(store, rows, seq_len=5, overflow="window", seed=1))
    again = as_numpy(make_host_dataset(store, rows, seq_len=5, overflow="window", seed=1))
    resumed = as_numpy(make_host_dataset(store, rows, 5, start_step=4, overflow="window", seed=1))
    assert len(resumed) == 2
    for a, b in zip(full, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    for a, b in zip(full[4:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert as_numpy(make_host_dataset(store, rows, 5, start_step=6)) == []


def test_per_replica_rows():
    rows = np.arange(12).reshape(2, 6)
    np.testing.assert_array_equal(
        per_replica_rows(rows, 2), [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    )
    with pytest.raises(ValueError, match="num_local_replicas=4"):
        per_replica_rows(rows, 4)


def test_bad_arguments(store):
    with pytest.raises(ValueError, match=r"sample indices in \[0, 3\]"):
        make_host_dataset(store, np.array([[0, 3]]), 4)
    with pytest.raises(ValueError, match="rows must be a 2-D integer array"):
        make_host_dataset(store, np.array([0, 1]), 4)
    with pytest.raises(ValueError, match="seq_len=0"):
        make_host_dataset(store, np.array([[0]]), 0)
    with pytest.raises(ValueError, match="overflow='wrap'"):
        make_host_dataset(store, np.array([[0]]), 4, overflow="wrap")
    with pytest.raises(ValueError, match="start_step=2"):
        make_host_dataset(store, np.array([[0]]), 4, start_step=2)
    with pytest.raises(ValueError, match="pack=True: per-host rows cannot be packed"):
        make_host_dataset(store, np.array([[0]]), 4, pack=True)
    packed = pack_epoch(np.array([0, 1, 2]), stored_lengths(store), 4, 3)
    with pytest.raises(ValueError, match="rows_per_step=3 does not divide by num_hosts=2"):
        make_packed_host_dataset(store, packed, host_id=0, num_hosts=2)
    with pytest.raises(ValueError, match="host_id=2 must be an integer in"):
        make_packed_host_dataset(store, packed, host_id=2, num_hosts=1)
    with pytest.raises(ValueError, match="the packing holds sample index 5"):
        make_packed_host_dataset(store, pack_epoch(np.array([5]), np.ones(6, np.int64), 4, 1))


def test_distribute_datasets_from_function(store, mirrored):
    """Two logical CPUs (tests/conftest.py), MirroredStrategy: replica r gets rows
    [r*b, (r+1)*b) of every step."""
    if len(tf.config.list_logical_devices("CPU")) < 2:
        pytest.skip("needs the two logical CPU devices configured by conftest")
    strategy = mirrored
    host_rows = np.array([[0, 1, 2, 0], [2, 2, 1, 1]])

    def dataset_fn(ctx):
        rows = per_replica_rows(host_rows, strategy.num_replicas_in_sync)
        return make_host_dataset(store, rows, 3)

    seen = []
    for batch in strategy.distribute_datasets_from_function(dataset_fn):
        parts = strategy.experimental_local_results(batch["inputs"])
        seen.append([p.numpy()[:, 1].tolist() for p in parts])
    assert seen == [[[10, 20], [30, 10]], [[30, 30], [20, 20]]]


def test_steps_per_call_does_not_change_batches(store):
    rows = np.random.Generator(np.random.PCG64(3)).integers(0, 3, size=(5, 2))
    packed = pack_epoch(rows.reshape(-1), stored_lengths(store), 6, 2)
    for make in (
        lambda n: make_host_dataset(store, rows, 6, steps_per_call=n),
        lambda n: make_packed_host_dataset(store, packed, steps_per_call=n),
    ):
        one, three = as_numpy(make(1)), as_numpy(make(3))
        assert len(one) == len(three) > 1
        for a, b in zip(one, three):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
