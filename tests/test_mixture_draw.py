"""Mixtures on demand (rule ``shares/2``): the interleave and the draw evaluated at positions
equal an in-memory reference; each pool sample's multiplicity; a mixed stage's rows are the
same for 1, 2 and 3 hosts, read at their positions only; counts per dataset from the shares;
schedules; a checkpoint of the previous rule is refused."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from highnoon.curriculum.order_views import ComposedOrder, ConcatOrder
from highnoon.data import prepare_stage_store
from highnoon.data.mixture_draw import (
    MixtureDraw,
    apportion,
    interleave_at,
    interleave_prefix,
    interleave_rank,
)
from highnoon.data.mixture_schedule import MixtureSchedule
from highnoon.data.stage_data import MIXING_RULE
from highnoon.training.position import DataPosition
from highnoon.training.resume import DataChangedError, reconcile
from highnoon.training.settings import StageSettings
from highnoon.training.stage_plan import StagePlan
from highnoon.utils.hashing import KeyedPermutation
from highnoon.utils.validation import InvalidArgumentError
from tests.trainer_helpers import corpus, write_jsonl

COUNTS = [[1], [3, 0, 2], [7, 7], [5, 1, 9], [13, 2, 29, 4], [1, 1, 1], [64, 27, 8]]


def _reference_merge(counts):
    """(source, j) of every item, sorted by (exact key, source): the rule, materialised."""
    items = sorted(
        (Fraction(2 * j + 1, 2 * c), i, j) for i, c in enumerate(counts) for j in range(c)
    )
    return [i for _, i, _ in items], [j for _, _, j in items]


@pytest.mark.parametrize("counts", COUNTS)
def test_the_interleave_at_positions_is_the_sorted_merge(counts):
    sources, js = _reference_merge(counts)
    total = sum(counts)
    whole = interleave_at(counts, np.arange(total))
    assert whole[0].tolist() == sources and whole[1].tolist() == js
    for q in range(total):  # one position at a time: the same
        source, j = interleave_at(counts, [q])
        assert (int(source[0]), int(j[0])) == (sources[q], js[q])
    assert interleave_rank(counts, sources, js).tolist() == list(range(total))
    for n in range(total + 1):
        assert interleave_prefix(counts, n) == [sources[:n].count(i) for i in range(len(counts))]


def test_bad_positions_and_counts_are_refused():
    with pytest.raises(InvalidArgumentError, match=r"positions must lie in \[0, 5\); got"):
        interleave_at([2, 3], [5])
    with pytest.raises(
        InvalidArgumentError, match=r"counts=\[-1\] must be >= 0 and sum to at most"
    ):
        interleave_at([-1], [0])
    with pytest.raises(InvalidArgumentError, match="source 1 of the mixture has an empty pool"):
        MixtureDraw([3, 0], [2, 2], [0, 0], [0, 3], seed=0)
    with pytest.raises(InvalidArgumentError, match=r"weights=\[0, 0\] must sum to more than 0"):
        apportion(4, [0, 0])


def _reference_draw(pools, counts, starts, offsets, seed):
    """The epoch built in memory: whole passes, then the window of each keyed permutation,
    merged by (key, source)."""
    chosen = []
    for i, (pool, count, start) in enumerate(zip(pools, counts, starts)):
        passes, rest = divmod(count, pool) if pool else (0, 0)
        window = (start + np.arange(rest)) % pool if pool else np.zeros(0, np.int64)
        perm = KeyedPermutation(pool, "mixture", seed, i)(window) if rest else window
        chosen.append(np.concatenate([np.tile(np.arange(pool), passes), perm]) + offsets[i])
    sources, js = _reference_merge(counts)
    return np.array([chosen[i][j] for i, j in zip(sources, js)], dtype=np.int64)


@pytest.mark.parametrize(
    "pools, counts, starts",
    [
        ([5, 3, 8], [12, 3, 5], [0, 2, 7]),
        ([1, 10], [4, 4], [0, 9]),
        ([7, 2, 4], [0, 9, 1], [3, 1, 0]),
    ],
)
def test_the_draw_at_positions_equals_the_epoch_built_in_memory(pools, counts, starts):
    offsets = np.cumsum([0, *pools])[:-1].tolist()
    draw = MixtureDraw(pools, counts, starts, offsets, seed=3)
    expected = _reference_draw(pools, counts, starts, offsets, seed=3)
    assert len(draw) == sum(counts)
    np.testing.assert_array_equal(draw[:], expected)
    np.testing.assert_array_equal([int(draw[[q]][0]) for q in range(len(draw))], expected)
    np.testing.assert_array_equal(draw[np.array([[4, 0], [1, 1]])], expected[[[4, 0], [1, 1]]])
    for i, (pool, count) in enumerate(zip(pools, counts)):  # floor or ceil of c_i / P_i each
        seen = np.bincount(expected[(expected >= offsets[i]) & (expected < offsets[i] + pool)]
                           - offsets[i], minlength=pool)  # fmt: skip
        assert seen.sum() == count and set(seen.tolist()) <= {count // pool, -(-count // pool)}


@pytest.fixture
def mixed(tmp_path):
    """Three sources of 70, 23 and 41 varied samples, weighted 0.5 / 0.3 / 0.2."""
    entries = []
    for seed, (name, size, weight) in enumerate((("a", 70, 0.5), ("b", 23, 0.3), ("c", 41, 0.2))):
        path = write_jsonl(str(tmp_path / f"{name}.jsonl"), corpus(seed, size))
        entries.append((path, weight))
    store = prepare_stage_store(entries, "byte", str(tmp_path / "cache"), progress=False)
    return store, entries


def _plan(store, entries, epochs=4, **settings):
    options = {
        "batch_size": 6,
        "max_seq_length": 16,
        "eval_fraction": 0.1,
        "curriculum_strategy": "size_based",
        "pacing": "linear",
        "initial_fraction": 0.4,
        **settings,
    }
    return StagePlan(0, "mix", StageSettings(**options), epochs, store, 5, datasets=entries)


def _per_source(store, rows):
    bounds = np.cumsum([part.num_samples for part in store.parts])[:-1]
    return np.bincount(np.searchsorted(bounds, rows, side="right"), minlength=3).tolist()


def test_a_mixed_curriculum_stage_feeds_the_same_global_batches_on_1_2_and_3_hosts(mixed):
    store, entries = mixed
    plan = _plan(store, entries)
    for epoch in range(4):
        whole = plan.host_rows(epoch, 0, 1)
        for hosts in (2, 3):
            own = [_plan(store, entries) for _ in range(hosts)]  # each host plans on its own
            parts = [p.host_rows(epoch, h, hosts) for h, p in enumerate(own)]
            np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
            steps = whole.shape[0]
            for h, p in enumerate(own):  # any call's range equals the epoch's rows there
                np.testing.assert_array_equal(
                    p.host_rows_at(epoch, 1, steps, h, hosts), parts[h][1:steps]
                )
        # the epoch trains each source's count of the draw's first pool_size positions, and
        # each source only from its pool (its easiest training samples)
        counted = plan.epoch_samples_per_dataset(epoch)
        assert list(counted.values()) == _per_source(store, whole.ravel())
        pools = plan.mixture_shares(epoch)[0]
        firsts = np.cumsum([0] + [split.num_train for split in plan.splits])
        allowed = set(
            np.concatenate(
                [plan.train_order[np.arange(f, f + p)] for f, p in zip(firsts, pools)]
            ).tolist()
        )
        assert set(whole.ravel().tolist()) <= allowed
    assert plan.mixture_shares(3)[0] == [split.num_train for split in plan.splits]  # last: all


def test_a_packed_mixed_stage_counts_every_exposed_sample(mixed):
    store, entries = mixed
    plan = _plan(store, entries, epochs=2, pack=True)
    for epoch in range(2):
        stream = plan.epoch_stream(epoch)
        assert stream.size == plan.scheduler.exposed_size(epoch)
        assert list(plan.epoch_samples_per_dataset(epoch).values()) == _per_source(store, stream)
        assert plan.mixture_shares(epoch)[1] == _per_source(store, stream)


def test_eval_rows_are_the_sources_held_out_samples_together(mixed):
    store, entries = mixed
    plan = _plan(store, entries)
    assert [split.num_eval for split in plan.splits] == [7, 2, 4]  # floor(n_i * 0.1) each
    held = set(plan.eval_indices.tolist())
    assert len(held) == 13 and not held & set(plan.train_indices.tolist())
    assert _per_source(store, plan.eval_indices) == [7, 2, 4]
    table = plan.eval_table(max_batches=2)
    assert table.shape == (2, 6) and set(table.ravel().tolist()) <= held
    # each source on its own scale: rows by their quantile in their source's held-out set
    firsts = np.cumsum([0] + [split.num_eval for split in plan.splits])
    rank_of = {int(plan.held_out[[r]][0]): r for r in range(plan.num_eval)}
    ranks = np.array([rank_of[int(x)] for x in table.ravel()])
    source = np.searchsorted(firsts, ranks, side="right") - 1
    keys = [
        Fraction(2 * int(r - firsts[i]) + 1, 2 * plan.splits[i].num_eval)
        for r, i in zip(ranks, source)
    ]
    assert list(zip(keys, source)) == sorted(zip(keys, source))
    other = _plan(store, entries, eval_difficulty_strategy="difficulty_based")
    scores = other.difficulty_of(other.eval_table(max_batches=2)).ravel()
    assert np.all(np.diff(scores) >= 0)  # another strategy: by its scores, read per source
    np.testing.assert_array_equal(
        scores, other.difficulty_scores()[other.eval_table(max_batches=2).ravel()]
    )


class _Counting:
    """An order view that counts the positions read through it."""

    read = 0

    def __init__(self, view):
        self.view = view

    def __len__(self):
        return len(self.view)

    def __getitem__(self, key):
        values = self.view[key]
        _Counting.read += np.size(values)
        return values


def test_a_hosts_call_reads_the_sources_orders_at_its_rows_only(mixed, monkeypatch):
    store, entries = mixed
    order_of = StagePlan._order_of
    monkeypatch.setattr(
        StagePlan,
        "_order_of",
        lambda self, s, *k: (_Counting(order_of(self, s, *k)[0]), *order_of(self, s, *k)[1:]),
    )
    plan = _plan(store, entries)
    _Counting.read = 0
    rows = plan.host_rows_at(2, 1, 3, 1, 3)
    assert rows.shape == (2, 2) and _Counting.read == rows.size
    assert plan.samples_per_dataset() and _Counting.read == rows.size  # counts: no order read


def test_a_scheduled_mixture_draws_each_epochs_shares(mixed):
    store, entries = mixed
    names = [path for path, _ in entries]
    cache = store.parts[0].path.rsplit("/sources/", 1)[0]
    store = prepare_stage_store(names, "byte", cache, progress=False)  # unweighted
    schedule = MixtureSchedule(((1.0, 0.0, 1.0), (0.0, 1.0, 1.0)))
    settings = StageSettings(batch_size=6, max_seq_length=16, eval_fraction=0.1)
    plan = StagePlan(0, "mix", settings, 3, store, 5, datasets=names, mixture_schedule=schedule)
    total = plan.scheduler.exposed_size(0)
    assert [plan.mixture_shares(e)[1] for e in range(3)] == [
        apportion(total, w) for w in ([1, 0, 1], [0.5, 0.5, 1], [0, 1, 1])
    ]
    # b's window in epoch 2 starts where epoch 1's ended
    pools, _, starts = plan.mixture_shares(2)
    assert starts[1] == plan.mixture_shares(1)[1][1] % pools[1]
    for epoch in range(3):
        rows = plan.host_rows(epoch, 0, 1).ravel()
        assert list(plan.epoch_samples_per_dataset(epoch).values()) == _per_source(store, rows)


def test_a_checkpoint_of_the_shares_1_rule_is_refused_and_allow_change_restarts(mixed):
    store, entries = mixed
    plan = _plan(store, entries)
    stream = json.loads(plan.stream_fingerprint()["stream"])
    assert stream["mixture"]["rule"] == "shares/2" == MIXING_RULE
    old = {**stream, "mixture": {**stream["mixture"], "rule": "shares/1"}}
    saved = {**plan.stream_fingerprint(), "stream": json.dumps(old, sort_keys=True)}
    position = DataPosition(epoch=1, step_in_epoch=2, global_step=9)
    position.stage_fingerprints["0"] = saved
    with pytest.raises(DataChangedError, match=r"mixture: .*'shares/1'.* -> .*'shares/2'"):
        reconcile(position, [plan], allow_change=False)
    reconcile(position, [plan], allow_change=True)
    assert position.data_changes[0]["changed"] == ["stream"]


def test_concatenated_and_composed_order_views_read_only_their_positions():
    first, second = np.array([4, 0, 2]), np.array([1, 0])
    view = ConcatOrder([first, second], [10, 20])
    assert len(view) == 5 and view[:].tolist() == [14, 10, 12, 21, 20]
    assert view[np.array([[4, 0], [2, 3]])].tolist() == [[20, 14], [12, 21]]
    with pytest.raises(InvalidArgumentError, match=r"positions must lie in \[0, 5\)"):
        view[[5]]
    composed = ComposedOrder(view, np.array([3, 3, 0]))
    assert len(composed) == 3 and composed[:].tolist() == [21, 21, 14]
