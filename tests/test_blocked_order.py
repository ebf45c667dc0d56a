"""The blocked epoch order of packed stages (issue 21): ``BlockedPermutation`` is a bijection
that keeps a shuffle window's values in a few chunks, equals the plain keyed permutation when
the pool is one window, and a packed ``StagePlan`` reads its samples and lengths a window at a
time from the stored order's lengths column; hosts agree and resume exactly."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from highnoon.curriculum import packed_order
from highnoon.curriculum.stored_order import write_orders
from highnoon.data import PackedBatcher, build_token_store, pack_epoch, packing, stored_lengths
from highnoon.data.store import TokenStore
from highnoon.training.settings import StageSettings
from highnoon.training.stage_plan import StagePlan
from highnoon.utils.blocked_permutation import BlockedPermutation
from highnoon.utils.hashing import KeyedPermutation
from highnoon.utils.validation import InvalidArgumentError
from tests.trainer_helpers import corpus

AWKWARD = [1, 2, 3, 5, 7, 8, 9, 13, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65, 97, 127,
           128, 129, 255, 256, 257, 1021]  # fmt: skip


@pytest.mark.parametrize("chunk, window_chunks", [(4, 3), (1, 1), (5, 1), (3, 4), (16, 2)])
def test_the_blocked_permutation_is_a_bijection_for_awkward_sizes(chunk, window_chunks) -> None:
    sizes = AWKWARD if chunk * window_chunks > 1 else AWKWARD[:20]  # a window per value: slow
    for n in sizes:
        perm = BlockedPermutation(n, chunk, window_chunks, "epoch", 7, 2)
        values = perm(np.arange(n))
        np.testing.assert_array_equal(np.sort(values), np.arange(n), err_msg=f"n={n}")
        starts = [perm.window_start(w) for w in range(perm.num_windows)]
        assert starts[0] == 0 and starts[-1] + perm.window_size(perm.num_windows - 1) == n
        for w in range(perm.num_windows):
            lo, hi = starts[w], starts[w] + perm.window_size(w)
            window, index = perm.locate(np.arange(lo, hi))
            assert (window == w).all()
            own = perm.window_values(w)
            np.testing.assert_array_equal(own[index], values[lo:hi])
            np.testing.assert_array_equal(np.sort(index), np.arange(hi - lo))
            # a window's values come from at most window_chunks chunks
            assert np.unique(own // chunk).size <= window_chunks


def test_one_window_is_exactly_the_plain_keyed_permutation() -> None:
    for n in (1, 2, 11, 12, 100):
        blocked = BlockedPermutation(n, 4, 25, "epoch", 3, 1)  # 4 x 25 = 100 >= n
        assert blocked.single and blocked.num_windows == 1
        plain = KeyedPermutation(n, "epoch", 3, 1)
        np.testing.assert_array_equal(blocked(np.arange(n)), plain(np.arange(n)))
    assert not BlockedPermutation(101, 4, 25, "epoch", 3, 1).single


def test_the_short_chunk_takes_a_keyed_place_and_epochs_differ() -> None:
    places = set()
    for epoch in range(12):
        perm = BlockedPermutation(43, 4, 3, "epoch", 0, epoch)  # 11 chunks, the last of 3
        places.add(perm.short_at)
        assert perm.window_size(perm.short_at // 3) == 4 * min(3, 11 - perm.short_at // 3 * 3) - 1
    assert len(places) > 3  # not always last
    a, b = (BlockedPermutation(43, 4, 3, "epoch", 0, e)(np.arange(43)) for e in (0, 1))
    assert not np.array_equal(a, b)


def test_a_large_blocked_permutation_evaluated_at_sampled_positions() -> None:
    n = (1 << 32) + 1
    perm = BlockedPermutation(n, 1024, 256, "epoch", 1, 0)
    rng = np.random.default_rng(0)
    sampled = np.unique(rng.integers(0, n, size=2000))
    values = perm(sampled)
    assert values.min() >= 0 and values.max() < n
    assert np.unique(values).size == sampled.size  # distinct positions, distinct values
    # one whole window (the one holding the short chunk, and the last) maps onto its values
    for w in (perm.short_at // 256, perm.num_windows - 1, 5):
        lo = perm.window_start(w)
        got = perm(np.arange(lo, lo + perm.window_size(w)))
        np.testing.assert_array_equal(np.sort(got), np.sort(perm.window_values(w)))
        assert np.unique(got // 1024).size <= 256
    with pytest.raises(InvalidArgumentError, match=r"positions must lie in \[0, 4294967297\)"):
        perm(np.array([n]))


# -- packed stages ---------------------------------------------------------------------------

N = 300
SEQ = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("blocked") / "s")
    build_token_store(corpus(5, N, min_len=1, max_len=12), "byte", path, progress=False)
    write_orders(path, ["size_based"])
    return TokenStore.open(path)


@pytest.fixture()
def small_blocks(monkeypatch):
    """Chunks of 4 ranks in windows of 5 chunks (20 samples: an epoch spans many windows);
    packing windows of 8 samples."""
    monkeypatch.setattr(packed_order, "CHUNK_SAMPLES", 4)
    monkeypatch.setattr(packed_order, "WINDOW_CHUNKS", 5)
    monkeypatch.setattr(packing, "MIN_WINDOW", 8)
    monkeypatch.setattr(packing, "ROWS_PER_WINDOW", 2)


def _plan(store, **settings) -> StagePlan:
    options = {"batch_size": 6, "max_seq_length": SEQ, "eval_fraction": 0.1, "pack": True,
               "curriculum_strategy": "size_based", "pacing": "linear", "initial_fraction": 0.5}  # fmt: skip
    options.update(settings)
    return StagePlan(0, "s", StageSettings(**options), 3, store, seed=4)


def test_a_packed_epoch_visits_its_pool_once_in_blocks_with_the_stored_lengths(
    store, small_blocks, monkeypatch
) -> None:
    plan = _plan(store)
    lengths = stored_lengths(store)
    # the lengths come from the order's column: the store's lengths file is never read
    monkeypatch.setattr(TokenStore, "lengths_at", None)
    sched = plan.scheduler
    for epoch in range(3):
        size = plan.epoch_stream_size(epoch)
        pool = set(plan.train_order[np.arange(size)].tolist())
        samples, got = sched.epoch_stream_items(epoch, 0, size)
        assert sorted(samples.tolist()) == sorted(pool)  # every pool sample exactly once
        np.testing.assert_array_equal(got, lengths[samples])
        # each shuffle window of 20 positions reads 5 runs of 4 consecutive ranks
        perm = packed_order.packed_permutation(size, sched.seed, epoch)
        ranks = perm(np.arange(size))
        for w in range(perm.num_windows):
            lo = perm.window_start(w)
            assert np.unique(ranks[lo : lo + perm.window_size(w)] // 4).size <= 5
        for first, last in [(0, 1), (5, 27), (size - 3, size)]:
            np.testing.assert_array_equal(sched.epoch_stream_range(epoch, first, last),
                                          samples[first:last])  # fmt: skip
    assert plan.epoch_stream_size(2) > 20 * 5  # many windows really occur


def test_a_pool_of_one_window_keeps_the_unpacked_keyed_order(store) -> None:
    plan = _plan(store, initial_fraction=1.0, pacing="constant")
    size = plan.epoch_stream_size(1)
    assert size <= packed_order.CHUNK_SAMPLES * packed_order.WINDOW_CHUNKS
    expected = plan.train_order[KeyedPermutation(size, "epoch", plan.scheduler.seed, 1)(
        np.arange(size))]  # fmt: skip
    np.testing.assert_array_equal(plan.epoch_stream(1), expected)


@pytest.mark.parametrize("hosts", [1, 2, 3])
def test_packed_global_batches_are_the_same_on_one_two_and_three_hosts(
    store, small_blocks, hosts
) -> None:
    plan = _plan(store)
    epoch = 2
    want = pack_epoch(plan.epoch_stream(epoch), stored_lengths(store), SEQ, 6,
                      window=plan.packing_window)  # fmt: skip
    expected = PackedBatcher(store, want, seed=3, epoch=epoch).batches(0, want.num_steps)
    per_host = []
    for h in range(hosts):
        stream = _plan(store).begin_packed_epoch(epoch)  # a fresh process per host
        batcher = PackedBatcher(store, stream, host_id=h, num_hosts=hosts, seed=3, epoch=epoch)
        per_host.append(batcher.batches(0, want.num_steps))
    for key, value in expected.items():
        np.testing.assert_array_equal(np.concatenate([p[key] for p in per_host], 1), value)


def test_a_cursor_saved_mid_epoch_on_one_host_resumes_exactly_on_two(store, small_blocks) -> None:
    epoch = 1
    one = _plan(store).begin_packed_epoch(epoch)
    PackedBatcher(store, one, seed=3, epoch=epoch).batches(0, 6)
    cursor = one.cursor_at(6)
    assert cursor.window > 0
    whole = _plan(store)
    want = whole.packed_epoch(epoch)
    rest = want.num_steps - 6
    expected = PackedBatcher(store, want, seed=3, epoch=epoch).batches(6, rest)
    resumed = [
        PackedBatcher(store, _plan(store).begin_packed_epoch(epoch, cursor), host_id=h,
                      num_hosts=2, seed=3, epoch=epoch).batches(6, rest)
        for h in range(2)
    ]  # fmt: skip
    for key, value in expected.items():
        np.testing.assert_array_equal(np.concatenate([b[key] for b in resumed], 1), value)


def test_an_order_without_its_lengths_column_gives_the_same_stream_and_warns(
    tmp_path, store, small_blocks, caplog
) -> None:
    import json
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(store.path, copy)
    meta_path = copy / "orders" / "size_based.json"
    meta = json.loads(meta_path.read_text())
    del meta["lengths_dtype"], meta["lengths_crc32c_sha256"]
    meta_path.write_text(json.dumps({**meta, "format": "highnoon.order/2"}))
    (copy / "orders" / "size_based.lengths.bin").unlink()
    with caplog.at_level(logging.WARNING, logger="highnoon.training"):
        old = _plan(TokenStore.open(str(copy)))
    assert "has no lengths column (highnoon.order/2)" in caplog.text
    assert "--orders_only=" in caplog.text
    new = _plan(store)
    for epoch in range(3):
        np.testing.assert_array_equal(old.epoch_stream(epoch), new.epoch_stream(epoch))
        assert old.estimated_epoch_steps(epoch) == new.estimated_epoch_steps(epoch)


def test_a_packed_mixture_reads_each_drawn_sample_once_with_its_length(
    tmp_path, small_blocks
) -> None:
    from highnoon.data import prepare_stage_store
    from tests.trainer_helpers import write_jsonl

    entries = [(write_jsonl(str(tmp_path / "a.jsonl"), corpus(1, 150, max_len=10)), 0.7),
               (write_jsonl(str(tmp_path / "b.jsonl"), corpus(2, 40, max_len=10)), 0.3)]  # fmt: skip
    store = prepare_stage_store(entries, "byte", str(tmp_path / "cache"), progress=False)
    settings = StageSettings(batch_size=6, max_seq_length=SEQ, pack=True, eval_fraction=0.1,
                             curriculum_strategy="size_based", initial_fraction=1.0,
                             pacing="constant")  # fmt: skip
    plan = StagePlan(0, "mix", settings, 2, store, seed=1, datasets=entries)
    lengths = stored_lengths(store)
    for epoch in range(2):
        size = plan.epoch_stream_size(epoch)
        assert size > 20 * 2  # several shuffle windows
        samples, got = plan.scheduler.epoch_stream_items(epoch, 0, size)
        drawn = plan.scheduler.order_at(epoch)[np.arange(size)]
        assert sorted(samples.tolist()) == sorted(drawn.tolist())  # the draw, permuted
        np.testing.assert_array_equal(got, lengths[samples])


def test_an_unpacked_stage_never_opens_the_lengths_column(store) -> None:
    plan = _plan(store, pack=False)
    plan.host_rows_at(1, 0, 2, 0, 1)
    assert "lengths" not in vars(plan.order)  # its checksums were never read
    packed = _plan(store)
    packed.packed_stream(0).row_table(0, 6)
    assert vars(packed.order)["lengths"] is not None


@pytest.fixture()
def window_reads(monkeypatch) -> list:
    """Every shuffle window read (``BlockedPermutation.window_values``), as (epoch, window)."""
    reads = []
    real = BlockedPermutation.window_values

    def counted(self, w):
        reads.append((self.parts[-1], w))
        return real(self, w)

    monkeypatch.setattr(BlockedPermutation, "window_values", counted)
    return reads


def test_the_window_the_estimate_read_serves_the_epochs_first_steps(
    store, small_blocks, window_reads
) -> None:
    reads = window_reads
    plan = _plan(store)  # the horizon estimate reads each epoch's first window
    assert {(e, 0) for e in range(3)} <= set(reads)
    plan.begin_packed_epoch(0).row_table(0, 6)
    assert reads.count((0, 0)) == 1  # read once, for the estimate and the first steps


def test_windows_are_kept_while_their_order_and_lengths_are_the_schedulers(
    store, small_blocks, window_reads
) -> None:
    reads = window_reads
    plan = _plan(store)
    sched = plan.scheduler
    samples, lengths = sched.epoch_stream_items(0, 0, 7)
    before = len(reads)
    sched.set_order_lengths(plan.train_lengths)  # the same view again: the window stays
    got = sched.epoch_stream_items(0, 0, 7)
    assert len(reads) == before
    np.testing.assert_array_equal(got[0], samples)
    np.testing.assert_array_equal(got[1], lengths)
    # another lengths view: the window is read again, through it
    other = np.arange(len(plan.train_lengths), dtype=np.int64) * 3 + 1
    sched.set_order_lengths(other)
    got = sched.epoch_stream_items(0, 0, 7)
    assert len(reads) == before + 1
    ranks = packed_order.packed_permutation(plan.epoch_stream_size(0), sched.seed, 0)(np.arange(7))
    np.testing.assert_array_equal(got[0], samples)
    np.testing.assert_array_equal(got[1], other[ranks])
    sched.set_order_lengths(plan.train_lengths)  # back: the old window was dropped, read again
    got = sched.epoch_stream_items(0, 0, 7)
    assert len(reads) == before + 2
    np.testing.assert_array_equal(got[1], lengths)
