"""The `random` curriculum strategy: a growing pool in a keyed random order (the control arm of
Wu, Dyer, Neyshabur 2021). Deterministic, host-count independent, paced like easy-to-hard."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from highnoon.curriculum import CurriculumScheduler, random_scores
from highnoon.curriculum.scoring import scores_from_features
from highnoon.data import build_token_store
from highnoon.data.features import features_from_samples
from highnoon.training.settings import StageSettings
from highnoon.training.stage_plan import StagePlan
from tests.trainer_helpers import corpus


def test_random_scores_are_a_keyed_function_of_the_index():
    indices = np.arange(1000)
    scores = random_scores(indices, seed=7)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, random_scores(indices, seed=7))
    np.testing.assert_array_equal(random_scores(indices[500:], 7), scores[500:])  # per sample
    assert not np.array_equal(scores, random_scores(indices, seed=8))
    assert len(np.unique(scores)) == 1000
    assert scores.max() < 2.0**53  # exact integers in float64
    # No relation to the index: the order is a shuffle, not the identity or its reverse.
    order = np.argsort(scores, kind="stable")
    assert abs(np.corrcoef(order, indices)[0, 1]) < 0.2


def test_the_scheduler_and_the_store_features_agree():
    samples = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10]]
    scheduler = CurriculumScheduler(strategy="random", seed=11, verbose=False)
    np.testing.assert_array_equal(
        scheduler.compute_complexity_scores(samples), random_scores(np.arange(4), 11)
    )
    features = features_from_samples([np.array(s) for s in samples])
    np.testing.assert_array_equal(
        scores_from_features(features, "random", seed=11), random_scores(np.arange(4), 11)
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("random") / "store")
    return build_token_store(corpus(2, 400, max_len=40), "byte", path, progress=False)


def _plan(store, strategy, seed=0) -> StagePlan:
    settings = StageSettings(
        batch_size=8, eval_fraction=0.1, curriculum_strategy=strategy, initial_fraction=0.25
    )
    return StagePlan(0, "s", settings, 4, store, seed=seed)


def test_the_pool_grows_on_the_same_pacing_as_easy_to_hard(store):
    random_plan, size_plan = _plan(store, "random"), _plan(store, "size_based")
    for epoch in range(4):
        assert random_plan.steps_per_epoch(epoch) == size_plan.steps_per_epoch(epoch)
        assert random_plan.fraction(epoch) == size_plan.fraction(epoch)


def test_the_random_pool_spans_the_difficulty_range_and_is_deterministic(store):
    plan = _plan(store, "random")
    first = plan.host_rows(0, 0, 1)
    lengths = store.features.lengths
    easy_pool = _plan(store, "size_based").host_rows(0, 0, 1)
    # Easy-to-hard starts with the shortest quarter; the random pool's lengths look like all data.
    assert lengths[easy_pool].max() <= np.quantile(lengths[plan.train_indices], 0.3)
    assert lengths[first].max() > np.quantile(lengths[plan.train_indices], 0.9)
    np.testing.assert_array_equal(_plan(store, "random").host_rows(0, 0, 1), first)
    # The same global batches on 1, 2 and 4 hosts; another seed is another order.
    for epoch in range(4):
        whole = plan.host_rows(epoch, 0, 1)
        for hosts in (2, 4):
            parts = [plan.host_rows(epoch, h, hosts) for h in range(hosts)]
            np.testing.assert_array_equal(np.concatenate(parts, axis=1), whole)
    assert not np.array_equal(_plan(store, "random", seed=1).host_rows(0, 0, 1), first)
    # Nested pools: every epoch's pool holds the previous one's samples.
    pools = [set(plan.host_rows(e, 0, 1).reshape(-1)) for e in range(4)]
    assert all(a <= b for a, b in itertools.pairwise(pools))
