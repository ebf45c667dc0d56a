"""Packing on demand (issue 21): ``PackedStream`` packs an epoch window by window from a
cursor and gives exactly ``pack_epoch``'s rows; the scheduler's stream by position; the
batches of 1, 2 and 3 hosts; the cursor resume; the O(1) window and the step estimate."""

from __future__ import annotations

import numpy as np
import pytest

from highnoon.curriculum import AdaptiveCurriculumScheduler, CurriculumScheduler
from highnoon.data import PackedBatcher, build_token_store, pack_epoch, packing, stored_lengths
from highnoon.data.packing import (
    PackedStream,
    PackingCursor,
    estimate_packed_rows,
    store_packing_window,
)
from highnoon.utils.validation import InvalidArgumentError

SEQ = 16
N = 150


def sample_lengths(n: int) -> np.ndarray:
    """1..40 tokens before EOS (some longer than SEQ), a fixed pseudo-random pattern."""
    return 1 + (np.arange(n) * 37 + 11) % 40


def stream_of(stream: np.ndarray, lengths: np.ndarray, rows: int, window: int, **kw):
    return PackedStream(
        stream.size,
        lambda a, b: stream[a:b],
        lambda idx: lengths[idx],
        SEQ,
        rows,
        window,
        **kw,
    )


def assert_same_rows(got, want) -> None:
    for name in ("sample", "column", "length", "row_ptr"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)


@pytest.mark.parametrize("size", [1, 2, 7, 64, 65, 333])
@pytest.mark.parametrize("window", [1, 5, 16, 64, 1000])
@pytest.mark.parametrize("rows", [1, 3, 6])
def test_a_stream_packed_by_windows_is_pack_epoch_and_resumes_from_any_step(
    size, window, rows
) -> None:
    """Property over sizes, windows and rows per step: the rows are ``pack_epoch``'s, the
    epoch's steps are known once the stream ends, and restarting from the cursor of every
    step (a fresh ``PackedStream``, as a resumed process makes) continues exactly."""
    rng = np.random.default_rng(size * 1000 + window * 10 + rows)
    lengths = rng.integers(1, 3 * SEQ, size=400)
    stream = rng.choice(400, size=size, replace=False)
    want = pack_epoch(stream, lengths, SEQ, rows, window=window)
    whole = stream_of(stream, lengths, rows, window)
    assert whole.total_rows() is None or whole.num_windows == 0
    assert_same_rows(whole.row_table(0, want.num_rows + 5), want)
    assert whole.total_rows() == want.num_rows
    assert whole.steps_available(0, want.num_steps + 3) == want.num_steps
    np.testing.assert_array_equal(whole.step_counts(0, want.num_steps).tokens, want.counts().tokens)
    step, trained = 0, []
    cursor = PackingCursor()
    while True:
        resumed = stream_of(stream, lengths, rows, window, cursor=cursor)
        count = resumed.steps_available(step, 2)
        if count == 0:
            break
        table = resumed.row_table(step * rows, (step + count) * rows)
        trained.append(table.sample)
        step += count
        cursor = resumed.cursor_at(step)
        assert cursor.step == step
    assert step == want.num_steps
    np.testing.assert_array_equal(np.concatenate(trained), want.sample)
    assert (cursor.window, cursor.row) == (whole.num_windows, want.num_rows)  # past the end


def test_the_cursor_names_the_window_holding_the_step_and_reads_nothing_before_it() -> None:
    lengths = sample_lengths(N)
    stream = np.arange(N)
    want = pack_epoch(stream, lengths, SEQ, 2, window=10)
    asked = []

    def stream_range(first, last):
        asked.append((first, last))
        return stream[first:last]

    full = stream_of(stream, lengths, 2, 10)
    cursor = full.cursor_at(7)
    begins = np.concatenate([[0], np.cumsum([full._table(w).num_rows for w in range(15)])])
    assert begins[cursor.window] <= 14 < begins[cursor.window + 1]
    assert cursor == PackingCursor(cursor.window, int(begins[cursor.window]), 7)
    resumed = PackedStream(N, stream_range, lambda i: lengths[i], SEQ, 2, 10, cursor=cursor)
    assert_same_rows(resumed.row_table(14, 18), want.row_table(14, 18))
    assert min(first for first, _ in asked) == cursor.window * 10
    with pytest.raises(InvalidArgumentError, match="lies before the packing cursor"):
        resumed.row_table(cursor.row - 1, cursor.row)


def test_bad_streams_and_cursors_are_refused() -> None:
    lengths = np.array([3, 0, 2])
    with pytest.raises(InvalidArgumentError, match="at least one token"):
        stream_of(np.arange(3), lengths, 1, 2).row_table(0, 4)
    with pytest.raises(InvalidArgumentError, match="cursor.window"):
        stream_of(np.arange(3), lengths, 1, 2, cursor=PackingCursor(3, 0, 0))
    short = PackedStream(4, lambda a, b: np.arange(a, b - 1), lambda i: i + 1, SEQ, 1, 4)
    with pytest.raises(InvalidArgumentError, match=r"stream positions \[0, 4\) gave \(3,\)"):
        short.row_table(0, 1)


def test_the_window_comes_from_the_store_figures() -> None:
    # 64 rows of 512 at a mean of 20 stored tokens: 1639 samples (integer ceiling).
    assert store_packing_window(1000, 20_000, 512) == 1639
    assert store_packing_window(1000, 10**9, 512) == packing.MIN_WINDOW
    assert store_packing_window(0, 0, 512) == packing.MIN_WINDOW
    with pytest.raises(InvalidArgumentError, match="seq_len"):
        store_packing_window(10, 10, 0)


def test_the_step_estimate_is_exact_for_few_windows_and_close_for_many() -> None:
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 3 * SEQ, size=20_000)
    stream = rng.permutation(20_000)

    def estimate(size, samples):
        return estimate_packed_rows(
            size, lambda a, b: stream[a:b], lambda i: lengths[i], SEQ, 64, samples
        )

    for size in (0, 1, 63, 64, 65, 64 * 16 + 5):
        want = pack_epoch(stream[:size], lengths, SEQ, 1, window=64).num_rows if size else 0
        assert estimate(size, 16) == want
    want = pack_epoch(stream, lengths, SEQ, 1, window=64).num_rows
    assert estimate(20_000, 16) == estimate(20_000, 16)  # deterministic
    assert abs(estimate(20_000, 16) - want) / want < 0.02
    assert estimate(20_000, 16) != want  # sampled, not packed: an estimate


# -- the stream by position ------------------------------------------------------------


def _schedulers():
    common = {"verbose": False, "global_batch_size": 8, "seed": 5}
    linear = CurriculumScheduler(pacing="linear", total_epochs=3, initial_fraction=0.3, **common)
    stepped = CurriculumScheduler(pacing="linear", total_steps=40, initial_fraction=0.3, **common)
    adaptive = AdaptiveCurriculumScheduler(initial_fraction=0.3, num_stages=3, **common)
    fixed = CurriculumScheduler(pacing="constant", initial_fraction=1.0, shuffle=False, **common)
    for s in (linear, stepped, adaptive, fixed):
        s.prepare_curriculum_from_scores(sample_lengths(N).astype(np.float64))
    return linear, stepped, adaptive, fixed


@pytest.mark.parametrize("which", range(4))
def test_the_stream_by_position_is_the_whole_stream_cut(which) -> None:
    sched = _schedulers()[which]
    for epoch in range(3):
        size = sched.epoch_stream_size(epoch)
        whole = sched.epoch_stream(epoch)
        assert whole.size == size
        if which != 1:  # step pacing wraps around its pool: repeats are its rule
            assert sorted(set(whole.tolist())) == sorted(whole.tolist())  # once each
        for first, last in [(0, 0), (0, 1), (3, 17), (size - 5, size), (8, 16), (7, 9)]:
            np.testing.assert_array_equal(
                sched.epoch_stream_range(epoch, first, last), whole[first:last]
            )
    assert sched.epoch_stream(0).size == (144 if which == 1 else sched.exposed_size(0))  # 18 x 8
    with pytest.raises(InvalidArgumentError, match="last"):
        sched.epoch_stream_range(0, 0, sched.epoch_stream_size(0) + 1)


# -- hosts -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    samples = [np.full(length, 3 + i) for i, length in enumerate(sample_lengths(N))]
    return build_token_store(
        samples, "byte", str(tmp_path_factory.mktemp("ps") / "s"), progress=False
    )


@pytest.mark.parametrize("hosts", [1, 2, 3])
def test_every_host_count_feeds_the_same_global_rows_and_every_sample_once(store, hosts) -> None:
    """Each host's batches of a ``PackedStream`` joined over hosts are the one-host batches of
    ``pack_epoch``'s rows; the epoch's segments hold every streamed sample exactly once."""
    sched = _schedulers()[0]
    lengths = stored_lengths(store)
    rows = 6
    for epoch in (0, 2):
        stream = sched.epoch_stream(epoch)
        want = pack_epoch(stream, lengths, SEQ, rows, window=12)
        whole = PackedBatcher(store, want, seed=3, epoch=epoch, overflow="window")
        per_host = []
        for h in range(hosts):
            packed = PackedStream(
                stream.size,
                lambda a, b, e=epoch: sched.epoch_stream_range(e, a, b),
                lambda idx: store.features_at(idx).lengths,
                SEQ,
                rows,
                12,
            )
            batcher = PackedBatcher(
                store, packed, host_id=h, num_hosts=hosts, seed=3, epoch=epoch, overflow="window"
            )
            assert batcher.num_steps >= want.num_steps
            per_host.append(batcher.batches(0, want.num_steps))
        expected = whole.batches(0, want.num_steps)
        for key, value in expected.items():
            np.testing.assert_array_equal(np.concatenate([p[key] for p in per_host], 1), value)
        segments = expected["segment_ids"]
        first_tokens = expected["inputs"][:, :, 1:][
            (segments[:, :, 1:] != 0) & (expected["positions"][:, :, 1:] == 1)
        ]
        assert sorted((first_tokens - 3).tolist()) == sorted(stream.tolist())


def test_a_cursor_saved_on_one_host_resumes_on_three(store) -> None:
    """The cursor is global: one host's cursor at step k, read by three hosts' fresh streams,
    gives the one-host batches of steps k on."""
    sched = _schedulers()[0]
    stream = sched.epoch_stream(2)
    want = pack_epoch(stream, stored_lengths(store), SEQ, 6, window=12)

    def fresh(cursor=None):
        return PackedStream(
            stream.size,
            lambda a, b: sched.epoch_stream_range(2, a, b),
            lambda idx: store.features_at(idx).lengths,
            SEQ,
            6,
            12,
            cursor=cursor,
        )

    one = fresh()
    PackedBatcher(store, one, seed=3, epoch=2).batches(0, 5)
    cursor = one.cursor_at(5)
    assert cursor.window > 0
    rest = want.num_steps - 5
    expected = PackedBatcher(store, want, seed=3, epoch=2).batches(5, rest)
    hosts = [
        PackedBatcher(store, fresh(cursor), host_id=h, num_hosts=3, seed=3, epoch=2).batches(
            5, rest
        )
        for h in range(3)
    ]
    for key, value in expected.items():
        np.testing.assert_array_equal(np.concatenate([b[key] for b in hosts], 1), value)


def test_lengths_at_reads_the_lengths_of_those_samples(store) -> None:
    idx = np.array([5, 0, 149, 5, 77])
    np.testing.assert_array_equal(store.lengths_at(idx), store.features_at(idx).lengths)
    np.testing.assert_array_equal(store.lengths_at(idx), stored_lengths(store)[idx])
    assert store.lengths_at(np.zeros(0, np.int64)).shape == (0,)
    with pytest.raises(
        IndexError, match=r"sample indices must be in \[0, 150\), got values in \[150, 150\]"
    ):
        store.lengths_at(np.array([150]))


def test_a_checkpoint_whose_cursor_and_step_disagree_is_refused() -> None:
    from types import SimpleNamespace

    from highnoon.training.controller import Controller, Intervals, LoopOptions
    from highnoon.training.position import DataPosition

    position = DataPosition(epoch=1, step_in_epoch=2)
    position.packing_cursor = PackingCursor(1, 4, 3).to_json()
    loop = Controller(
        runner=None, evaluator=None, checkpointer=None, events=None, goodput=None,
        watcher=None, options=LoopOptions(Intervals(1, 1, 1)), position=position,
    )  # fmt: skip
    begun = []
    plan = SimpleNamespace(begin_packed_epoch=lambda epoch, cursor: begun.append(cursor))
    with pytest.raises(
        ValueError,
        match=r"the checkpoint's packing cursor is at step 3 of epoch 1 but its data position at "
        r"step 2; the checkpoint is inconsistent, resume from an earlier one",
    ):
        loop._begin_packed_epoch(plan)
    position.step_in_epoch = 3
    loop._begin_packed_epoch(plan)
    assert begun == [PackingCursor(1, 4, 3)]
    position.next_epoch(0.0)  # a new epoch packs from its start
    assert position.packing_cursor is None
