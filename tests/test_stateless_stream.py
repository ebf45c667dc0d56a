"""Issue 21, the stateless stream: the keyed bijection and its inverse at awkward sizes, the
held-out split in order space, order views and the scheduler on any view (no O(N) array)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from highnoon.curriculum import CurriculumScheduler, order_from_scores, scores_fingerprint
from highnoon.curriculum.heldout import HeldOutSplit, eval_count, spread_ranks
from highnoon.curriculum.order_views import IdentityOrder, PermutedOrder, SplitOrder, take
from highnoon.utils.hashing import KeyedPermutation, keyed_hash
from highnoon.utils.validation import InvalidArgumentError

SETTINGS = settings(max_examples=60, deadline=None)


# -- the keyed bijection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n", [1, 2, 3, 5, 7, 31, 127, 8191, 15, 16, 17, 63, 64, 65, 1023, 1024, 1025, 65535, 65537]
)
def test_keyed_permutation_is_a_bijection_with_its_inverse(n):
    perm = KeyedPermutation(n, "epoch", 5, 1)
    values = perm(np.arange(n))
    np.testing.assert_array_equal(np.sort(values), np.arange(n))  # onto [0, n): a bijection
    np.testing.assert_array_equal(perm.inverse(values), np.arange(n))
    np.testing.assert_array_equal(perm(perm.inverse(np.arange(n))), np.arange(n))
    # Position-wise, any shape: a host evaluates only its own positions.
    grid = np.arange(n)[::-1].reshape(-1, 1)
    np.testing.assert_array_equal(perm(grid), values[::-1].reshape(-1, 1))


@pytest.mark.parametrize("n", [2**32 + 1, 2**32 - 1, 10**9 + 7])
def test_keyed_permutation_at_sampled_positions_of_huge_sizes(n):
    perm = KeyedPermutation(n, "epoch", 0, 3)
    positions = np.concatenate(
        [np.arange(5), n - 1 - np.arange(5), (keyed_hash(np.arange(2000), "pick") % n)]
    ).astype(np.int64)
    values = perm(positions)
    assert values.min() >= 0 and values.max() < n
    np.testing.assert_array_equal(perm.inverse(values), positions)  # injective where sampled
    assert len(np.unique(values)) == len(np.unique(positions))


# -- the held-out split -------------------------------------------------------------------------


@SETTINGS
@given(
    n=st.integers(1, 3000),
    fraction=st.floats(0.0, 0.9),
    seed=st.integers(0, 2**32),
)
def test_the_split_holds_out_each_position_once_and_trains_every_other(n, fraction, seed):
    num_eval = min(int(n * fraction), n - 1)
    split = HeldOutSplit(n, num_eval, seed)
    held = split.eval_positions(np.arange(num_eval))
    trained = split.train_positions(np.arange(n - num_eval))
    assert held.size == num_eval and trained.size == n - num_eval
    np.testing.assert_array_equal(np.sort(np.concatenate([held, trained])), np.arange(n))
    assert (np.diff(held) > 0).all() and (np.diff(trained) > 0).all()  # ranks keep the order
    np.testing.assert_array_equal(np.flatnonzero(split.is_eval(np.arange(n))), held)
    # One held-out position per stratum floor(i*n/E) .. floor((i+1)*n/E).
    starts = np.arange(num_eval + 1) * n // max(num_eval, 1)
    if num_eval:
        np.testing.assert_array_equal(np.searchsorted(starts, held, side="right") - 1,
                                      np.arange(num_eval))  # fmt: skip


def test_the_split_is_keyed_and_stateless():
    a, b = HeldOutSplit(1000, 100, 1), HeldOutSplit(1000, 100, 2)
    ranks = np.arange(100)
    assert not np.array_equal(a.eval_positions(ranks), b.eval_positions(ranks))
    # The position of a rank depends on that rank alone: any subset, any shape, any order.
    some = np.array([[899, 3], [0, 450]])
    np.testing.assert_array_equal(a.train_positions(some), a.train_positions(np.arange(900))[some])
    # Offsets are the documented keyed choice: keyed_hash(i, "heldout", seed) mod size.
    expected = 10 * ranks + (keyed_hash(ranks, "heldout", 1) % np.uint64(10)).astype(np.int64)
    np.testing.assert_array_equal(a.eval_positions(ranks), expected)


def test_eval_count_is_whole_global_batches_and_leaves_one_to_train():
    assert eval_count(100, 0.1, 4) == 8
    assert eval_count(100, 0.1, 16) == 0  # floor(10 / 16) batches
    assert eval_count(40, 0.9, 8) == 32  # 8 left: one global batch trains
    assert eval_count(39, 0.9, 8) == 0  # 35 // 8 * 8 = 32 would leave 7 < 8
    assert eval_count(10**9, 0.01, 1024) == 10**7 // 1024 * 1024


@SETTINGS
@given(total=st.integers(0, 5000), share=st.floats(0.0, 1.0), bands=st.integers(1, 80))
def test_spread_ranks_are_runs_over_the_whole_range(total, share, bands):
    count = int(total * share)
    ranks = spread_ranks(count, total, bands)
    assert ranks.size == count and (np.diff(ranks) > 0).all()
    assert count == 0 or (ranks.min() == 0 and ranks.max() < total)
    runs = np.flatnonzero(np.diff(ranks) > 1).size + 1 if count else 0
    assert runs <= min(bands, count)  # few blocks of a stored order
    if count == total:
        np.testing.assert_array_equal(ranks, np.arange(total))  # all of them when they fit
    k = min(bands, count)
    if k:  # floor(b * (total - count) / k) ranks left out before run b: the whole range
        b = np.arange(k + 1)
        sizes = np.diff(b * count // k)
        starts = b[:-1] * (total - count) // k + np.cumsum(sizes) - sizes
        assert set(starts.tolist()) <= set(ranks.tolist())
        assert ranks.max() - ranks.min() + 1 >= total - (total - count) // k - 1


def test_bad_splits_are_refused_with_the_fix():
    with pytest.raises(InvalidArgumentError, match=r"num_eval=10 must be"):
        HeldOutSplit(10, 10, 0)
    with pytest.raises(InvalidArgumentError, match=r"lower eval_fraction"):
        HeldOutSplit(2**40, 2**30, 0)
    with pytest.raises(InvalidArgumentError, match=r"ranks must lie in \[0, 90\)"):
        HeldOutSplit(100, 10, 0).train_positions(np.array([90]))


# -- order views --------------------------------------------------------------------------------


def test_order_views_evaluate_only_the_positions_asked():
    order = np.array([4, 2, 0, 1, 3, 5, 9, 8, 7, 6], dtype=np.int64)
    split = HeldOutSplit(10, 3, 7)
    train = SplitOrder(order, split, "train")
    held = SplitOrder(order, split, "eval")
    assert (len(train), len(held)) == (7, 3)
    np.testing.assert_array_equal(train[np.arange(7)], order[split.train_positions(np.arange(7))])
    np.testing.assert_array_equal(held[:], order[split.eval_positions(np.arange(3))])
    np.testing.assert_array_equal(np.sort(np.concatenate([train[:], held[:]])), np.arange(10))
    np.testing.assert_array_equal(IdentityOrder(5)[np.array([[3], [1]])], [[3], [1]])
    np.testing.assert_array_equal(IdentityOrder(5)[1:4], [1, 2, 3])
    random_order = PermutedOrder(50, "random_order", 3)
    np.testing.assert_array_equal(random_order[:], KeyedPermutation(50, "random_order", 3)(
        np.arange(50)))  # fmt: skip
    with pytest.raises(InvalidArgumentError, match=r"positions must lie in \[0, 5\)"):
        IdentityOrder(5)[np.array([5])]


# -- the scheduler on an order view -------------------------------------------------------------


def _scheduler(**kwargs) -> CurriculumScheduler:
    base = dict(pacing="linear", total_epochs=4, initial_fraction=0.25, global_batch_size=8)
    return CurriculumScheduler(verbose=False, **{**base, **kwargs})


def test_an_order_view_gives_the_same_stream_as_the_scores():
    scores = (np.arange(203) * 7919 % 97).astype(np.float64)
    by_scores = _scheduler(seed=4)
    order = by_scores.prepare_curriculum_from_scores(scores)
    by_order = _scheduler(seed=4)
    by_order.prepare_curriculum_from_order(IdentityOrder(203), scores_fingerprint(scores))
    # The identity view over the order's own positions, mapped back: the same stream.
    for epoch in range(5):
        for hosts in (1, 2, 4):
            for host in range(hosts):
                np.testing.assert_array_equal(
                    order[by_order.host_epoch_indices(epoch, host, hosts)],
                    by_scores.host_epoch_indices(epoch, host, hosts),
                )
    assert by_order.fingerprint == by_scores.fingerprint
    state = by_scores.get_state()
    restored = CurriculumScheduler.from_state(state)
    with pytest.raises(InvalidArgumentError, match="does not match the restored state"):
        restored.prepare_curriculum_from_order(order, "sha256:other:203")
    restored.prepare_curriculum_from_order(order, scores_fingerprint(scores))


@SETTINGS
@given(
    n=st.integers(8, 400),
    batch=st.sampled_from([1, 2, 4, 6, 8, 12]),
    hosts=st.sampled_from([1, 2, 3]),
    fraction=st.floats(0.05, 1.0),
    seed=st.integers(0, 1000),
)
def test_every_pool_index_exactly_once_per_epoch_on_any_host_count(n, batch, hosts, fraction, seed):
    if batch % hosts or batch > n:
        return
    scheduler = _scheduler(
        pacing="constant", initial_fraction=fraction, global_batch_size=batch, seed=seed
    )
    view = PermutedOrder(n, "random_order", seed)
    scheduler.prepare_curriculum_from_order(view, f"sha256:x:{n}")
    pool = scheduler.pool_size(0)
    steps = scheduler.steps_per_epoch(0)
    parts = [scheduler.host_epoch_indices(0, h, hosts) for h in range(hosts)]
    whole = np.concatenate(parts, axis=1)
    assert whole.shape == (steps, batch) and steps * batch == pool
    np.testing.assert_array_equal(np.sort(whole.reshape(-1)), np.sort(view[np.arange(pool)]))
    # Rows of any range of steps equal the epoch's rows there, for every host.
    first, last = steps // 3, steps - steps // 4
    for h in range(hosts):
        np.testing.assert_array_equal(
            scheduler.host_range_indices(0, first, last, h, hosts), parts[h][first:last]
        )


def test_an_epoch_selection_on_an_order_view_is_the_drawn_positions_in_order():
    order = order_from_scores(np.arange(40, dtype=np.float64)[::-1].copy())
    scheduler = _scheduler(pacing="constant", initial_fraction=1.0, shuffle=False)
    scheduler.prepare_curriculum_from_order(order, "sha256:x:40")
    drawn = np.array([5, 5, 39, 0] * 10, dtype=np.int64)
    scheduler.set_epoch_selection(lambda epoch: drawn)
    expected = order[np.sort(drawn)]
    np.testing.assert_array_equal(scheduler.host_epoch_indices(0, 0, 1).reshape(-1), expected)


def test_bad_orders_are_refused():
    scheduler = _scheduler()
    with pytest.raises(InvalidArgumentError, match="must be an order view"):
        scheduler.prepare_curriculum_from_order(7, "sha256:x:1")
    with pytest.raises(InvalidArgumentError, match="larger than the data"):
        scheduler.prepare_curriculum_from_order(IdentityOrder(4), "sha256:x:4")
    with pytest.raises(InvalidArgumentError, match="must be a non-empty string"):
        scheduler.prepare_curriculum_from_order(IdentityOrder(40), "")
    assert take(IdentityOrder(3), [2, 0]).tolist() == [2, 0]
