"""Property tests of the determinism contract (docs/design.md, "Determinism")."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from highnoon.curriculum import (
    AdaptiveCurriculumScheduler,
    CurriculumScheduler,
    order_from_scores,
)

SETTINGS = settings(max_examples=50, deadline=None)
PACINGS = st.sampled_from(["reference", "linear", "root_p", "discrete", "exponential"])
# few distinct values so ties are common
SCORES = st.lists(
    st.sampled_from([0.0, -0.0, 1.0, 2.5, -3.0, 1e-300, 7e12]), min_size=8, max_size=120
)


def _scheduler(scores: list[float], **kwargs) -> CurriculumScheduler:
    scheduler = CurriculumScheduler(verbose=False, **kwargs)
    scheduler.prepare_curriculum_from_scores(np.array(scores, dtype=np.float64))
    return scheduler


@SETTINGS
@given(scores=SCORES, force_packed=st.booleans())
def test_order_is_a_permutation_with_index_tie_break(
    scores: list[float], force_packed: bool
) -> None:
    array = np.array(scores, dtype=np.float64)
    order = order_from_scores(array, composite_min=0 if force_packed else 1 << 30)
    assert sorted(order.tolist()) == list(range(len(scores)))
    keys = [(scores[i] + 0.0, i) for i in order]
    assert keys == sorted(keys)  # (score, index) non-decreasing: ties by index
    assert np.array_equal(order, order_from_scores(array.copy()))


@SETTINGS
@given(values=st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=300))
def test_packed_order_equals_stable_argsort(values: list[float]) -> None:
    array = np.array(values, dtype=np.float64)
    assert np.array_equal(
        order_from_scores(array, composite_min=0), np.argsort(array, kind="stable")
    )


@SETTINGS
@given(
    scores=SCORES,
    pacing=PACINGS,
    g=st.sampled_from([1, 2, 4, 8]),
    c0=st.sampled_from([0.05, 0.2, 0.5, 1.0]),
)
def test_pools_nested_growing_whole_batches(
    scores: list[float], pacing: str, g: int, c0: float
) -> None:
    if g > len(scores):
        g = 1
    scheduler = _scheduler(
        scores,
        pacing=pacing,
        global_batch_size=g,
        initial_fraction=c0,
        warmup_epochs=2,
        stage_increment_epochs=3,
        total_epochs=None if pacing == "reference" else 12,
    )
    previous: set[int] = set()
    for epoch in range(0, 16):
        pool = scheduler.get_current_subset_indices(epoch)
        assert pool.dtype == np.int64 and pool.size % g == 0 and pool.size >= g
        assert len(set(pool.tolist())) == pool.size
        members = set(pool.tolist())
        assert previous <= members  # nested and growing
        assert members == set(scheduler.order[: pool.size].tolist())  # the easiest n
        previous = members
    assert len(previous) == len(scores) // g * g


@SETTINGS
@given(scores=SCORES, seed=st.integers(0, 2**40), epoch=st.integers(0, 100))
def test_host_slices_disjoint_equal_and_host_count_invariant(
    scores: list[float], seed: int, epoch: int
) -> None:
    scores = (scores * 3)[: max(8, len(scores))]
    scheduler = _scheduler(scores, global_batch_size=8, seed=seed)
    single = scheduler.host_epoch_indices(epoch, 0, 1)
    assert single.shape == (scheduler.steps_per_epoch(epoch), 8)
    for hosts in (1, 2, 4, 8):
        parts = [scheduler.host_epoch_indices(epoch, h, hosts) for h in range(hosts)]
        assert all(p.shape == (single.shape[0], 8 // hosts) for p in parts)
        joined = np.concatenate(parts, axis=1)
        assert np.array_equal(joined, single)  # same union (and order) per step for every H
        flat = joined.reshape(-1)
        assert len(set(flat.tolist())) == flat.size  # disjoint
    assert np.array_equal(single, scheduler.host_epoch_indices(epoch, 0, 1))  # stateless


@SETTINGS
@given(
    seed=st.integers(0, 1000),
    losses=st.lists(st.floats(0.1, 10.0), min_size=4, max_size=20),
    split=st.integers(1, 3),
)
def test_state_round_trip_continues_identical_stream(
    seed: int, losses: list[float], split: int
) -> None:
    scores = np.arange(64, dtype=np.float64) % 7
    kwargs = {
        "seed": seed,
        "global_batch_size": 4,
        "min_epochs_per_stage": 1,
        "max_epochs_per_stage": 3,
    }
    original = AdaptiveCurriculumScheduler(verbose=False, **kwargs)
    original.prepare_curriculum_from_scores(scores)
    for epoch, loss in enumerate(losses[:split]):
        original.update_with_loss(epoch, loss)
    state = json.loads(json.dumps(original.get_state()))
    restored = AdaptiveCurriculumScheduler.from_state(state, scores=scores)
    for epoch, loss in enumerate(losses[split:], start=split):
        assert restored.update_with_loss(epoch, loss) == original.update_with_loss(epoch, loss)
        assert np.array_equal(
            restored.host_epoch_indices(epoch + 1, 1, 2),
            original.host_epoch_indices(epoch + 1, 1, 2),
        )
    assert restored.get_state() == original.get_state()


@SETTINGS
@given(losses=st.lists(st.floats(0.5, 5.0), min_size=3, max_size=12))
def test_adaptive_advance_changes_the_pool(losses: list[float]) -> None:
    scheduler = AdaptiveCurriculumScheduler(
        verbose=False, min_epochs_per_stage=1, max_epochs_per_stage=2
    )
    scheduler.prepare_curriculum_from_scores(np.arange(50, dtype=np.float64))
    for epoch, loss in enumerate(losses):
        before = scheduler.get_current_subset_indices(epoch + 1)
        advanced = scheduler.update_with_loss(epoch, loss)
        after = scheduler.get_current_subset_indices(epoch + 1)
        if advanced:
            assert after.size > before.size and set(before.tolist()) < set(after.tolist())
        else:
            assert np.array_equal(before, after)
    assert scheduler.advance_epochs  # max_epochs_per_stage=2 forces progress


_CHILD = """
import json, sys
import numpy as np
from highnoon.curriculum import CurriculumScheduler
s = CurriculumScheduler(verbose=False, global_batch_size=4, seed=11, strategy="difficulty_based")
s.prepare_curriculum([[i % 7, i % 3, i % 5][: 1 + i % 3] for i in range(40)])
out = {"order": s.order.tolist(), "epoch": s.host_epoch_indices(30, 1, 2).tolist(),
       "tf": "tensorflow" in sys.modules}
print(json.dumps(out))
"""


def test_same_stream_in_fresh_subprocess_without_tensorflow() -> None:
    exec_globals: dict = {}
    code = _CHILD.replace("print(json.dumps(out))", "")
    exec(compile(code, "<child>", "exec"), exec_globals)  # same code in this process
    result = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, timeout=120
    )
    child = json.loads(result.stdout)
    assert child["tf"] is False  # the curriculum engine is numpy only
    assert child["order"] == exec_globals["out"]["order"]
    assert child["epoch"] == exec_globals["out"]["epoch"]
