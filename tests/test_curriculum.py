"""CurriculumScheduler / AdaptiveCurriculumScheduler / create_curriculum_batches: exact
behaviour on small hand-checked data, and every bad input named in the error."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from highnoon.curriculum import (
    AdaptiveCurriculumScheduler,
    CurriculumScheduler,
    create_curriculum_batches,
    order_from_scores,
    scores_fingerprint,
)
from highnoon.curriculum import order as order_module
from highnoon.curriculum.scoring import scores_from_features
from highnoon.data.features import features_from_samples
from highnoon.utils.hashing import KeyedPermutation


def _prepared(n: int = 100, **kwargs) -> CurriculumScheduler:
    scheduler = CurriculumScheduler(verbose=False, **kwargs)
    scheduler.prepare_curriculum_from_scores(np.arange(n, 0, -1, dtype=np.float64))
    return scheduler


# -- scores -------------------------------------------------------------------------------------


def test_size_based_scores_of_every_sample_form() -> None:
    scheduler = CurriculumScheduler(verbose=False)
    samples = ["aaa", "b", [1, 2, 3, 4], np.array([7, 8]), {"tokens": [1]}, {"text": "héé"}]
    scores = scheduler.compute_complexity_scores(samples)
    assert scores.dtype == np.float64
    assert scores.tolist() == [3.0, 1.0, 4.0, 2.0, 1.0, 5.0]  # "héé" is 5 UTF-8 bytes


def test_explicit_complexity_wins() -> None:
    scheduler = CurriculumScheduler(verbose=False)
    samples = [{"text": "aaaa", "complexity": 0.5}, "bb", {"complexity": 7}]
    assert scheduler.compute_complexity_scores(samples).tolist() == [0.5, 2.0, 7.0]
    assert scheduler.compute_complexity_scores([{"complexity": 2}, {"complexity": 1}]).tolist() == [
        2.0,
        1.0,
    ]


def test_difficulty_matches_hand_computation() -> None:
    scheduler = CurriculumScheduler(strategy="difficulty_based", verbose=False)
    scores = scheduler.compute_complexity_scores([[0, 0], [0, 1]])
    # unigram p(0) = 3/4, p(1) = 1/4; rarity = mean -log p
    r0 = math.log(4 / 3)
    r1 = (math.log(4 / 3) + math.log(4)) / 2
    assert scores[0] == pytest.approx(0.7 * r0 / r1 + 0.3, abs=1e-6)
    assert scores[1] == 1.0


@pytest.mark.parametrize("strategy", ["size_based", "difficulty_based", "mixed"])
def test_scores_bit_identical_to_scoring_features(strategy: str) -> None:
    rng = np.random.default_rng(3)
    samples = [rng.integers(0, 50, rng.integers(1, 30)).tolist() for _ in range(40)]
    expected = scores_from_features(features_from_samples(samples), strategy)
    got = CurriculumScheduler(strategy=strategy, verbose=False).compute_complexity_scores(samples)
    assert got.tobytes() == expected.tobytes()


def test_custom_scorers() -> None:
    samples = ["a", "bbb", "cc"]
    by_strategy = CurriculumScheduler(strategy=lambda s: -len(s), verbose=False)
    assert by_strategy.strategy == "custom"
    assert by_strategy.prepare_curriculum(samples).tolist() == [1, 2, 0]
    by_kwarg = CurriculumScheduler(scorer=lambda s: s.count("c"), verbose=False)
    assert by_kwarg.compute_complexity_scores(samples).tolist() == [0.0, 0.0, 2.0]
    plain = CurriculumScheduler(verbose=False)
    assert plain.compute_complexity_scores(samples, strategy=len).tolist() == [1.0, 3.0, 2.0]
    mixed = scores_from_features(features_from_samples(samples), "mixed")
    assert plain.compute_complexity_scores(samples, strategy="mixed").tolist() == mixed.tolist()


def test_prepare_curriculum_ties_by_index() -> None:
    scheduler = CurriculumScheduler(verbose=False)
    order = scheduler.prepare_curriculum(["ccc", "a", "bb", "a", "bb"])
    assert order.dtype == np.int64
    assert order.tolist() == [1, 3, 2, 4, 0]
    assert scheduler.prepare_curriculum_from_scores([2.0, -0.0, 0.0, 1.0]).tolist() == [1, 2, 3, 0]


@pytest.mark.parametrize("sort_chunk", [None, 37])
def test_order_from_scores_packed_paths_equal_stable_argsort(sort_chunk, monkeypatch) -> None:
    """Whole, and with the keys prepared 37 at a time (every pass crosses chunk edges)."""
    if sort_chunk is not None:
        monkeypatch.setattr(order_module, "_SORT_CHUNK", sort_chunk)
    rng = np.random.default_rng(0)
    cases = [
        rng.random(5000),  # needs the collision fix-up
        rng.integers(0, 7, 5000).astype(np.float64),  # exact packed path, many ties
        rng.normal(size=3000) * 10.0 ** rng.integers(-300, 300, 3000),
        np.round(rng.random(4000), 2) * 1e-9 + 1.0,
        np.full(100, 3.5),
        rng.integers(1024, 2048, 5000).astype(np.float64),  # 16-bit ranks: the radix path
        1.0 + rng.integers(0, 1000, 5000) * 2.0**-40,  # shared trailing zeros, then radix
    ]
    for scores in cases:
        got = order_from_scores(scores, composite_min=0)
        assert np.array_equal(got, np.argsort(scores, kind="stable"))


def test_fingerprint() -> None:
    scheduler = _prepared(10)
    assert scheduler.fingerprint == scores_fingerprint(np.arange(10, 0, -1, dtype=np.float64))
    assert scheduler.fingerprint.startswith("sha256:") and scheduler.fingerprint.endswith(":10")
    assert scores_fingerprint(np.zeros(3)) != scores_fingerprint(np.zeros(4))


# -- pools and epochs ---------------------------------------------------------------------------


def test_stage_info_with_the_default_warmup_staircase() -> None:
    scheduler = _prepared(100)
    rows = []
    for epoch in (0, 10, 30, 50, 70, 90):
        info = scheduler.get_stage_info(epoch)
        rows.append((info["current_stage"], info["fraction"], info["num_samples"]))
    assert rows == [
        (0, 0.2, 20),
        (1, 0.36, 36),
        (2, 0.52, 52),
        (3, 0.68, 68),
        (4, 0.84, 84),
        (5, 1.0, 100),
    ]
    info = scheduler.get_stage_info(10)
    assert (
        info["steps_per_epoch"] == 36
        and info["pacing"] == "warmup_staircase"
        and info["epoch"] == 10
    )


def test_stage_info_follows_last_epoch() -> None:
    scheduler = _prepared(100)
    scheduler.get_current_subset_indices(30)
    assert scheduler.get_stage_info()["current_stage"] == 2
    unprepared = CurriculumScheduler(verbose=False).get_stage_info()
    assert unprepared["current_stage"] == 0 and unprepared["num_samples"] is None


def test_subset_indices_sorted_without_shuffle() -> None:
    scheduler = _prepared(100, shuffle=False)
    # scores 100..1: the easiest are the highest indices
    assert scheduler.get_current_subset_indices(0).tolist() == list(range(99, 79, -1))


def test_subset_indices_shuffled_statelessly() -> None:
    scheduler = _prepared(100, seed=5)
    first = scheduler.get_current_subset_indices(3)
    assert first.dtype == np.int64
    assert sorted(first.tolist()) == list(range(80, 100))
    scheduler.get_current_subset_indices(4)
    assert np.array_equal(scheduler.get_current_subset_indices(3), first)
    assert not np.array_equal(scheduler.get_current_subset_indices(4), first)
    other_seed = _prepared(100, seed=6).get_current_subset_indices(3)
    assert not np.array_equal(other_seed, first)


def test_pool_whole_global_batches() -> None:
    scheduler = _prepared(100, global_batch_size=8)
    assert [scheduler.pool_size(e) for e in (0, 10, 90)] == [16, 32, 96]
    assert scheduler.steps_per_epoch(10) == 4
    assert scheduler.get_current_subset_indices(0).size == 16


def test_packed_epoch_stream_is_the_exposed_pool() -> None:
    scheduler = _prepared(100, global_batch_size=8, seed=2)  # epoch 0: fraction 0.2
    assert (scheduler.exposed_size(0), scheduler.pool_size(0)) == (20, 16)
    stream = scheduler.epoch_stream(0)
    assert sorted(stream.tolist()) == sorted(scheduler.order[:20].tolist())
    positions = KeyedPermutation(20, "epoch", 2, 0)(np.arange(20))
    assert stream.tolist() == scheduler.order[positions].tolist()
    assert (scheduler.samples_dropped(0, pack=False), scheduler.samples_dropped(0, True)) == (4, 0)
    # whole batches: the packed stream is the unpacked epoch, batch after batch
    assert (scheduler.exposed_size(90), scheduler.pool_size(90)) == (100, 96)
    whole = _prepared(96, global_batch_size=8, seed=2)
    assert whole.exposed_size(90) == whole.pool_size(90) == 96
    assert np.array_equal(whole.epoch_stream(90), whole.host_epoch_indices(90, 0, 1).reshape(-1))
    unshuffled = _prepared(100, global_batch_size=8, shuffle=False)
    assert unshuffled.epoch_stream(0).tolist() == unshuffled.order[:20].tolist()


def test_keyed_permutation_is_bijection() -> None:
    for n in (1, 2, 3, 17, 1000, 4099):
        perm = KeyedPermutation(n, 1, 2)
        values = perm(np.arange(n))
        assert np.array_equal(np.sort(values), np.arange(n))
        assert np.array_equal(perm(np.arange(n)[::-1]), values[::-1])  # position-wise
    assert not np.array_equal(KeyedPermutation(1000, 1, 2)(np.arange(1000)), np.arange(1000))


# -- sharding -----------------------------------------------------------------------------------


def test_host_slices_compose_the_global_batch() -> None:
    scheduler = _prepared(100, global_batch_size=8, seed=3)
    whole = scheduler.host_epoch_indices(10, 0, 1)
    assert whole.shape == (4, 8) and whole.dtype == np.int64
    assert np.array_equal(whole.reshape(-1), scheduler.get_current_subset_indices(10))
    halves = [scheduler.host_epoch_indices(10, h, 2) for h in range(2)]
    assert all(h.shape == (4, 4) for h in halves)
    assert np.array_equal(np.concatenate(halves, axis=1), whole)
    for step in range(4):
        assert np.array_equal(scheduler.host_batch_indices(10, step, 1, 2), halves[1][step])
    assert scheduler.host_batch_indices(10, 0, 0, 1, global_batch_size=4).tolist() == (
        whole[0, :4].tolist()
    )


def test_step_pacing_grows_within_an_epoch() -> None:
    scheduler = _prepared(
        64, pacing="linear", total_steps=16, initial_fraction=0.25, global_batch_size=8, seed=1
    )
    assert scheduler.steps_per_epoch(0) == 8
    order = scheduler.order
    rows = scheduler.host_epoch_indices(0, 0, 1)
    assert rows.shape == (8, 8)
    for step in range(8):
        pool = scheduler.pool_size(0, step)
        assert pool == (16 + (48 * step // 16)) // 8 * 8
        assert set(rows[step].tolist()) <= set(order[:pool].tolist())
    assert set(scheduler.host_epoch_indices(2, 0, 1).reshape(-1).tolist()) == set(range(64))
    assert scheduler.get_stage_info(0)["time_axis"] == "step"


# -- adaptive -----------------------------------------------------------------------------------


def _adaptive(**kwargs) -> AdaptiveCurriculumScheduler:
    scheduler = AdaptiveCurriculumScheduler(verbose=False, **kwargs)
    scheduler.prepare_curriculum_from_scores(np.arange(100, dtype=np.float64))
    return scheduler


def test_adaptive_advances_on_plateau_after_min_epochs() -> None:
    scheduler = _adaptive(min_epochs_per_stage=2, max_epochs_per_stage=10, plateau_window=1)
    decisions = [scheduler.update_with_loss(e, loss) for e, loss in enumerate([10.0, 9.5, 9.4])]
    # epoch 1 plateaus (5% < 10%) but only epoch 1 done... 2 epochs done at epoch 1 -> advance
    assert decisions == [False, True, False]
    assert scheduler.advance_epochs == [1]
    assert scheduler.get_current_subset_indices(1).size == 20  # the advance applies after epoch 1
    assert sorted(scheduler.get_current_subset_indices(2).tolist()) == list(range(36))


def test_adaptive_waits_while_improving_and_forces_at_max() -> None:
    scheduler = _adaptive(min_epochs_per_stage=2, max_epochs_per_stage=4)
    losses = [10.0, 5.0, 2.5, 1.25, 0.6, 0.3]
    decisions = [scheduler.update_with_loss(e, loss) for e, loss in enumerate(losses)]
    assert decisions == [False, False, False, True, False, False]
    assert scheduler.advance_epochs == [3]
    assert scheduler.get_stage_info(4)["current_stage"] == 1


@pytest.mark.parametrize("prepared", [True, False])
def test_adaptive_stage_info_reports_the_new_stage_after_an_advance(prepared: bool) -> None:
    """The documented adaptive loop calls update_with_loss, then get_stage_info(), with or without
    prepare_curriculum: an advance at epoch e is the stage of epoch e + 1."""
    kwargs = {"min_epochs_per_stage": 1, "max_epochs_per_stage": 2, "num_stages": 3}
    scheduler = (
        _adaptive(**kwargs) if prepared else AdaptiveCurriculumScheduler(verbose=False, **kwargs)
    )
    seen = []
    for epoch, loss in enumerate([10.0, 9.9, 5.0, 4.99, 4.98, 4.97]):
        advanced = scheduler.update_with_loss(epoch, loss)
        info = scheduler.get_stage_info()
        seen.append((advanced, info["current_stage"], info["epoch"]))
    # epoch 1 plateaus (1% < 10%): stage 1 from epoch 2; a stage's first epoch has no loss to
    # compare with; epochs 3 and 5 plateau (and reach max_epochs_per_stage): stages 2 and 3.
    expected = [(False, 0, 0), (True, 1, 2), (False, 1, 2), (True, 2, 4), (False, 2, 4)]
    assert seen == [*expected, (True, 3, 6)]
    assert scheduler.get_stage_info()["fraction"] == scheduler.pacing.stage_fraction(3)
    assert (scheduler.get_stage_info()["num_samples"] is None) is not prepared


def test_adaptive_window_and_last_stage() -> None:
    scheduler = _adaptive(
        num_stages=1, min_epochs_per_stage=1, max_epochs_per_stage=3, plateau_window=2
    )
    # window 2: compares with the loss two updates back; 10 -> 9.5 -> 9.0 is 10% over two epochs
    assert scheduler.update_with_loss(0, 10.0) is False
    assert scheduler.update_with_loss(1, 9.5) is True  # w = 1: 5% < 10%
    assert scheduler.update_with_loss(2, 1.0) is False  # already at the last stage
    assert scheduler.get_current_subset_indices(2).size == 100


def test_adaptive_state_round_trip_continues_identically() -> None:
    scores = np.arange(100, dtype=np.float64)
    original = _adaptive(
        min_epochs_per_stage=1, max_epochs_per_stage=3, seed=9, global_batch_size=4
    )
    for epoch, loss in enumerate([5.0, 4.0, 3.9]):
        original.update_with_loss(epoch, loss)
    state = json.loads(json.dumps(original.get_state()))
    restored = AdaptiveCurriculumScheduler.from_state(state, scores=scores)
    assert restored.advance_epochs == original.advance_epochs == [2]
    assert restored.fingerprint == original.fingerprint
    for epoch, loss in zip(range(3, 12), [3.8, 3.0, 2.9, 2.8, 2.0, 1.0, 0.99, 0.5, 0.4]):
        assert restored.update_with_loss(epoch, loss) == original.update_with_loss(epoch, loss)
        for host in range(2):
            assert np.array_equal(
                restored.host_epoch_indices(epoch + 1, host, 2),
                original.host_epoch_indices(epoch + 1, host, 2),
            )
    assert restored.get_state() == original.get_state()


def test_state_round_trip_plain_and_fingerprint_mismatch() -> None:
    scheduler = _prepared(50, pacing="root_p", total_epochs=7, seed=4, global_batch_size=2)
    state = json.loads(json.dumps(scheduler.get_state()))
    restored = CurriculumScheduler.from_state(state, scores=np.arange(50, 0, -1, dtype=np.float64))
    assert np.array_equal(
        restored.host_epoch_indices(3, 1, 2), scheduler.host_epoch_indices(3, 1, 2)
    )
    with pytest.raises(ValueError, match="fingerprint"):
        CurriculumScheduler.from_state(state, scores=np.arange(50, dtype=np.float64))
    later = CurriculumScheduler.from_state(state)
    with pytest.raises(ValueError, match="fingerprint"):
        later.prepare_curriculum_from_scores(np.zeros(50))
    with pytest.raises(ValueError, match=r"state\['params'\]"):
        _prepared(50, seed=5).load_state(state)


# -- batches ------------------------------------------------------------------------------------


def test_create_curriculum_batches_arrays() -> None:
    inputs = np.arange(10) * 10
    labels = np.arange(10)
    batches = create_curriculum_batches(
        molecules=inputs,
        labels=labels,
        curriculum_indices=[9, 0, 1, 2, 3],
        batch_size=2,
        shuffle=False,
    )
    assert [(b[0].tolist(), b[1].tolist()) for b in batches] == [
        ([90, 0], [9, 0]),
        ([10, 20], [1, 2]),
        ([30], [3]),
    ]
    dropped = create_curriculum_batches(
        molecules=inputs, labels=None, batch_size=4, shuffle=False, drop_remainder=True
    )
    assert [b[0].tolist() for b in dropped] == [[0, 10, 20, 30], [40, 50, 60, 70]]
    assert all(b[1] is None for b in dropped)


def test_create_curriculum_batches_shuffle_deterministic() -> None:
    data = [f"s{i}" for i in range(20)]
    first = create_curriculum_batches(molecules=data, labels=list(range(20)), batch_size=6, seed=1)
    again = create_curriculum_batches(molecules=data, labels=list(range(20)), batch_size=6, seed=1)
    other = create_curriculum_batches(molecules=data, labels=list(range(20)), batch_size=6, seed=2)
    assert first == again and first != other
    assert isinstance(first[0][0], list)
    flat = [x for batch, _ in first for x in batch]
    assert sorted(flat) == sorted(data) and flat != data
    assert all(f"s{label}" == x for batch, labels in first for x, label in zip(batch, labels))


# -- logging ------------------------------------------------------------------------------------


def test_verbose_logs_stage_changes_only(caplog: pytest.LogCaptureFixture) -> None:
    scheduler = CurriculumScheduler(verbose=True)
    scheduler.prepare_curriculum_from_scores(np.arange(100, dtype=np.float64))
    with caplog.at_level(logging.INFO, logger="highnoon.curriculum"):
        for epoch in (0, 1, 10, 11):
            scheduler.get_current_subset_indices(epoch)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "curriculum stage 0/5 at epoch 0: fraction 0.2000, 20 of 100 samples",
        "curriculum stage 1/5 at epoch 10: fraction 0.3600, 36 of 100 samples",
    ]
    caplog.clear()
    quiet = _prepared(100)
    with caplog.at_level(logging.INFO, logger="highnoon.curriculum"):
        quiet.get_current_subset_indices(10)
    assert caplog.records == []


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"strategy": "by_magic"}, "strategy='by_magic'"),
        ({"strategy": "custom"}, "strategy='custom'"),
        ({"initial_fraction": 0.0}, "initial_fraction=0.0"),
        ({"initial_fraction": 1.2}, r"initial_fraction=1.2 must be a finite number in \(0, 1\]"),
        ({"num_stages": 0}, "num_stages=0"),
        ({"warmup_epochs": -2}, "warmup_epochs=-2"),
        ({"pacing": "sigmoid"}, "pacing='sigmoid'"),
        ({"pacing_options": {"q": 1}, "pacing": "root_p"}, "pacing_options"),
        ({"global_batch_size": 0}, "global_batch_size=0"),
        ({"seed": 1.5}, "seed=1.5"),
        ({"scorer": 3}, "scorer=3"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        CurriculumScheduler(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"loss_threshold_for_progression": -0.1}, "loss_threshold_for_progression=-0.1"),
        ({"min_epochs_per_stage": 0}, "min_epochs_per_stage=0"),
        ({"min_epochs_per_stage": 5, "max_epochs_per_stage": 4}, "max_epochs_per_stage=4"),
        ({"total_steps": 100, "pacing": "linear"}, "total_steps=100"),
    ],
)
def test_bad_adaptive_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        AdaptiveCurriculumScheduler(**kwargs)


def test_bad_samples_and_scores() -> None:
    scheduler = CurriculumScheduler(verbose=False)
    with pytest.raises(ValueError, match=r"samples=\[\] is empty"):
        scheduler.prepare_curriculum([])
    with pytest.raises(ValueError, match=r"scores=\[\] is empty"):
        scheduler.prepare_curriculum_from_scores([])
    with pytest.raises(ValueError, match=r"scores\[1\]=nan is not finite"):
        scheduler.prepare_curriculum_from_scores([1.0, float("nan")])
    with pytest.raises(ValueError, match=r"scores\[0\]=inf is not finite"):
        scheduler.prepare_curriculum_from_scores([np.inf, 1.0])
    with pytest.raises(ValueError, match=r"scores\[0\]=nan"):
        CurriculumScheduler(scorer=lambda s: float("nan"), verbose=False).prepare_curriculum(["a"])
    with pytest.raises(ValueError, match="scores must be a 1-D array"):
        scheduler.prepare_curriculum_from_scores(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="strategy='nope'"):
        scheduler.compute_complexity_scores(["a"], strategy="nope")
    with pytest.raises(ValueError, match="'tokens' or 'text'"):
        scheduler.compute_complexity_scores([{"label": 1}])
    big = CurriculumScheduler(global_batch_size=8, verbose=False)
    with pytest.raises(ValueError, match="global_batch_size=8 is larger than the data"):
        big.prepare_curriculum_from_scores(np.zeros(5))


def test_bad_epochs_hosts_and_steps() -> None:
    scheduler = _prepared(100, global_batch_size=8)
    with pytest.raises(ValueError, match="epoch=-1"):
        scheduler.get_current_subset_indices(-1)
    with pytest.raises(ValueError, match="epoch=-1"):
        scheduler.get_stage_info(-1)
    with pytest.raises(ValueError, match=r"host_id=2 must be an integer in \[0, 1\]"):
        scheduler.host_epoch_indices(0, 2, 2)
    with pytest.raises(ValueError, match="host_id=-1"):
        scheduler.host_batch_indices(0, 0, -1, 2)
    with pytest.raises(ValueError, match="num_hosts=0"):
        scheduler.host_epoch_indices(0, 0, 0)
    with pytest.raises(ValueError, match="global_batch_size=8 does not divide by num_hosts=3"):
        scheduler.host_epoch_indices(0, 0, 3)
    with pytest.raises(ValueError, match=r"step=2 must be an integer in \[0, 1\]"):
        scheduler.host_batch_indices(0, 2, 0, 1)
    with pytest.raises(ValueError, match="global_batch_size=200 is larger than the data"):
        scheduler.host_batch_indices(0, 0, 0, 1, global_batch_size=200)
    with pytest.raises(ValueError, match="not prepared"):
        CurriculumScheduler(verbose=False).get_current_subset_indices(0)


def test_bad_adaptive_updates() -> None:
    scheduler = _adaptive()
    scheduler.update_with_loss(3, 1.0)
    with pytest.raises(ValueError, match="epoch=3 must be greater"):
        scheduler.update_with_loss(3, 1.0)
    with pytest.raises(ValueError, match="current_loss=nan"):
        scheduler.update_with_loss(4, float("nan"))
    with pytest.raises(ValueError, match="epoch=-1"):
        scheduler.update_with_loss(-1, 1.0)


def test_a_batch_larger_than_the_selection_is_one_short_batch() -> None:
    data = np.arange(5)
    (only,) = create_curriculum_batches(molecules=data, labels=data * 10, batch_size=6)
    assert sorted(only[0].tolist()) == [0, 1, 2, 3, 4]
    assert (only[1] == only[0] * 10).all()
    assert create_curriculum_batches(molecules=data, batch_size=6, drop_remainder=True) == []


def test_bad_batches_arguments() -> None:
    data = np.arange(5)
    with pytest.raises(ValueError, match="batch_size=4.0 must be an integer >= 1"):
        create_curriculum_batches(molecules=data, batch_size=4.0)
    with pytest.raises(ValueError, match="batch_size=0"):
        create_curriculum_batches(molecules=data, batch_size=0)
    with pytest.raises(ValueError, match="molecules=None"):
        create_curriculum_batches(labels=data)
    with pytest.raises(ValueError, match="labels has 3 entries"):
        create_curriculum_batches(molecules=data, labels=[1, 2, 3])
    with pytest.raises(ValueError, match=r"curriculum_indices must lie in \[0, 4\]"):
        create_curriculum_batches(molecules=data, curriculum_indices=[0, 5])
    with pytest.raises(ValueError, match="curriculum_indices is empty"):
        create_curriculum_batches(molecules=data, curriculum_indices=[])
