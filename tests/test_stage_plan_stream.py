"""Issue 21: a stage's stream from its order, stateless. The documented rule recomputed from its
parts, the stored order giving the same stream as the in-memory one, 1/2/3 hosts seeing the same
global batches call by call, and eval rows and step counts from the rows asked for only."""

from __future__ import annotations

import numpy as np
import pytest

from highnoon.curriculum import order_from_scores, scores_from_features
from highnoon.curriculum.heldout import HeldOutSplit, eval_count
from highnoon.curriculum.stored_order import StoredOrder, write_orders
from highnoon.data import TokenStore, build_token_store
from highnoon.data.packing import batch_counts
from highnoon.training.settings import StageSettings
from highnoon.training.stage_plan import StagePlan
from highnoon.utils.hashing import KeyedPermutation, derive_seed
from tests.trainer_helpers import corpus


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("stream") / "store")
    build_token_store(corpus(3, 317, max_len=30), "byte", path, progress=False)
    return path


def _plan(store, strategy="difficulty_based", seed=5, index=1, epochs=4, **overrides):
    options = dict(
        batch_size=6,
        max_seq_length=24,
        eval_fraction=0.1,
        curriculum_strategy=strategy,
        pacing="linear",
        initial_fraction=0.3,
        **overrides,
    )
    return StagePlan(index, "s", StageSettings(**options), epochs, store, seed=seed)


def test_the_stream_follows_the_documented_rule(store_path):
    """Order of the whole store's scores -> split in order space -> pools of training ranks ->
    the epoch's keyed bijection -> global batch k = permuted positions [k*G, (k+1)*G)."""
    store = TokenStore.open(store_path)
    plan = _plan(store)
    n = store.num_samples
    order = order_from_scores(scores_from_features(store.features, "difficulty_based"))
    split = HeldOutSplit(n, eval_count(n, 0.1, 6), derive_seed(5, "eval", 1))
    assert split.num_eval == 30  # floor(31.7) = 31, rounded down to whole batches of 6
    train = order[split.train_positions(np.arange(split.num_train))]
    stage_seed = derive_seed(5, "stage", 1)
    for epoch in range(4):
        pool = plan.scheduler.pool_size(epoch)
        positions = KeyedPermutation(pool, "epoch", stage_seed, epoch)(np.arange(pool))
        expected = train[positions].reshape(-1, 6)
        np.testing.assert_array_equal(plan.host_rows(epoch, 0, 1), expected)
    np.testing.assert_array_equal(
        plan.eval_indices, np.sort(order[split.eval_positions(np.arange(30))])
    )


def test_a_stored_order_gives_the_same_stream_as_the_in_memory_order(store_path, tmp_path):
    import shutil

    copy = str(tmp_path / "store")
    shutil.copytree(store_path, copy)
    in_memory = {s: _plan(TokenStore.open(copy), s) for s in ("size_based", "mixed")}
    write_orders(copy, ("size_based", "mixed"))
    for strategy, before in in_memory.items():
        after = _plan(TokenStore.open(copy), strategy)
        assert isinstance(after.order, StoredOrder) and isinstance(before.order, np.ndarray)
        assert after.scheduler.fingerprint == before.scheduler.fingerprint
        assert after.stream_fingerprint() == before.stream_fingerprint()
        for epoch in range(4):
            for hosts in (1, 2, 3):
                for host in range(hosts):
                    np.testing.assert_array_equal(
                        after.host_rows(epoch, host, hosts), before.host_rows(epoch, host, hosts)
                    )
        np.testing.assert_array_equal(after.eval_table(4), before.eval_table(4))
        assert after.eval_bucket_edges(4) == before.eval_bucket_edges(4)


@pytest.mark.parametrize("strategy", [None, "random", "size_based", "mixed"])
def test_hosts_see_the_same_global_batches_call_by_call(store_path, strategy):
    store = TokenStore.open(store_path)
    plan = _plan(store, strategy)
    for epoch in range(4):
        whole = plan.host_rows(epoch, 0, 1)
        steps = whole.shape[0]
        assert steps == plan.steps_per_epoch(epoch)
        calls = [(0, 1), (1, 4), (4, steps)]  # a resume mid-epoch starts at any step
        for hosts in (1, 2, 3):
            for first, last in calls:
                parts = [plan.host_rows_at(epoch, first, last, h, hosts) for h in range(hosts)]
                np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole[first:last])
        # Every pool sample once (the pool: the easiest training ranks).
        pool = plan.scheduler.pool_size(epoch)
        np.testing.assert_array_equal(np.sort(whole.reshape(-1)), np.sort(plan.train_order[:pool]))
    held = set(plan.eval_indices.tolist())
    assert not held & set(plan.train_indices.tolist())
    assert len(held) + plan.train_indices.size == store.num_samples


def test_step_totals_and_eval_rows_come_from_the_rows_asked(store_path):
    store = TokenStore.open(store_path)
    plan = _plan(store, seq_length_warmup_steps=0)
    counts = batch_counts(plan.host_rows(2, 0, 1), store.features.lengths, 16)
    for first, last in [(0, 1), (2, 5), (0, plan.steps_per_epoch(2))]:
        assert plan.step_totals(2, first, last, 16) == counts.total(first, last)
        step_tokens = counts.tokens[first:last].astype(np.float32)  # as the step reduces them
        assert plan.step_totals(2, first, last, 16, step_tokens) == counts.total(first, last)
    # The curriculum's own difficulty (ranks already in order) and another one (scored).
    for held in (plan, _plan(store, eval_difficulty_strategy="size_based")):
        table = held.eval_table(3)  # 3 batches of 6 of the 30 held-out samples
        ranks = np.arange(18) * 30 // 18  # 18 runs of one rank each, evenly spread
        picked = np.sort(held.held_out[ranks])
        scores = held.difficulty_scores()
        np.testing.assert_array_equal(
            table.reshape(-1), picked[np.lexsort((picked, scores[picked]))]
        )  # by (difficulty score, index)
        np.testing.assert_array_equal(held.difficulty_of(table), scores[table])
