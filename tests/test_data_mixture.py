"""Mixture weights are shares of each epoch: counts, per-epoch draws, hosts, fingerprints, each
source's own order, split and pools (rule ``shares/2``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from highnoon.data import prepare_stage_store, register_dataset, unregister_dataset
from highnoon.data.mixture_draw import apportion
from highnoon.training.settings import StageSettings
from highnoon.training.stage_plan import StagePlan
from tests.trainer_helpers import make_trainer, write_jsonl

SIZES = {"a": 960, "b": 96, "c": 480}  # the issue's example
WEIGHTS = [("a", 0.5), ("b", 0.3), ("c", 0.2)]


@pytest.fixture
def sources(tmp_path):
    """The datasets ``a``, ``b``, ``c`` registered over JSONL files of tiny distinct samples."""
    for name, size in SIZES.items():
        path = write_jsonl(str(tmp_path / f"{name}.jsonl"), [f"{name}{i}" for i in range(size)])
        register_dataset(name, path)
    yield tmp_path
    for name in SIZES:
        unregister_dataset(name)


def _store(tmp_path, weights=WEIGHTS):
    return prepare_stage_store(weights, "byte", str(tmp_path / "cache"), progress=False)


def _plan(store, seed=0, epochs=3, datasets=WEIGHTS, **settings):
    options = {"batch_size": 8, "max_seq_length": 8, "eval_fraction": 0.0, **settings}
    return StagePlan(0, "mix", StageSettings(**options), epochs, store, seed, datasets=datasets)


def _per_source(rows: np.ndarray) -> list[int]:
    """Samples per source of store indices (the store holds a, b, c in that order)."""
    return np.bincount(np.searchsorted([960, 1056], rows, side="right"), minlength=3).tolist()


def test_counts_are_largest_remainder_shares_of_the_sources_total():
    assert apportion(1536, [0.5, 0.3, 0.2]) == [768, 461, 307]  # of 960 + 96 + 480
    assert apportion(10, [1.0, 1.0]) == [5, 5]  # equal weights: equal shares
    assert apportion(11, [1.0, 1.0, 1.0]) == [4, 4, 3]  # ties to the earlier entry
    for sizes, weights in [([7, 3, 11], [0.1, 0.6, 0.3]), ([1, 1000], [2.0, 1.0])]:
        counts = apportion(sum(sizes), weights)
        targets = np.array(weights) / sum(weights) * sum(sizes)
        assert sum(counts) == sum(sizes)
        assert np.all(np.abs(np.array(counts) - targets) < 1)


def test_the_issues_mixture_trains_each_source_by_its_share(sources):
    trainer = make_trainer(sources, curriculum_strategy=None, batch_size=8, max_seq_length=8)
    trainer.add_curriculum_stage("mix", WEIGHTS, epochs=2)
    (plan,) = trainer.plan()
    assert plan.steps_per_epoch(0) == 1536 // 8
    for epoch in range(2):
        assert _per_source(plan.host_rows(epoch, 0, 1).ravel()) == [768, 461, 307]
    assert plan.samples_per_dataset() == {"a": 2 * 768, "b": 2 * 461, "c": 2 * 307}


def test_a_large_source_is_subsampled_differently_each_epoch_and_a_small_one_repeats(sources):
    plan = _plan(_store(sources), curriculum_strategy=None)
    epochs = [np.sort(plan.host_rows(e, 0, 1).ravel()) for e in range(2)]
    a0, a1 = (set(rows[rows < 960].tolist()) for rows in epochs)
    assert len(a0) == len(a1) == 768  # no sample of a twice within an epoch
    assert a0 != a1 and a0 | a1 == set(range(960))  # the next epoch starts with the unseen
    for rows in epochs:
        b = np.bincount(rows[(rows >= 960) & (rows < 1056)] - 960, minlength=96)
        assert sorted(set(b.tolist())) == [4, 5] and b.sum() == 461  # 4 passes + 77 samples
    # unshuffled, the sources are spread evenly: every global batch of 8 holds 4 samples of a
    rows = _plan(_store(sources), curriculum_strategy=None, shuffle=False).host_rows(0, 0, 1)
    assert set((rows < 960).sum(axis=1).tolist()) == {4}


def test_the_draw_is_the_same_for_any_host_count_and_keyed_by_the_seed(sources):
    store = _store(sources)
    curriculum = {"curriculum_strategy": "size_based", "pacing": "linear"}
    plan = _plan(store, **curriculum)
    hosts = [_plan(store, **curriculum) for _ in range(2)]  # each host plans on its own
    for epoch in range(3):
        whole = plan.host_rows(epoch, 0, 1)
        halves = [host.host_rows(epoch, h, 2) for h, host in enumerate(hosts)]
        np.testing.assert_array_equal(np.concatenate(halves, axis=1), whole)
    assert not np.array_equal(_plan(store, seed=1).mixture_draw(0)[:], plan.mixture_draw(0)[:])
    # pools per source: epoch 0 trains each source's easiest P_i training samples only
    pools, counts, _ = plan.mixture_shares(0)
    assert sum(counts) == plan.scheduler.exposed_size(0) < 1536
    assert pools == [round(sum(counts) * n / 1536) for n in SIZES.values()]
    rows = plan.host_rows(0, 0, 1).ravel()
    firsts = np.cumsum([0, *SIZES.values()])
    for i, pool in enumerate(pools):
        ranks = np.arange(firsts[i], firsts[i] + pool)  # source i's first training ranks
        mine = rows[(rows >= firsts[i]) & (rows < firsts[i + 1])]
        assert set(mine.tolist()) <= set(plan.train_order[ranks].tolist())
        easiest = plan.store.parts[i].features_at(plan.train_order[ranks] - firsts[i]).lengths
        assert easiest.max() <= plan.store.features_at(mine).lengths.max()


def test_a_packed_mixed_epoch_holds_every_drawn_sample(sources):
    plan = _plan(_store(sources), curriculum_strategy=None, pack=True, epochs=1)
    assert _per_source(plan.epoch_stream(0)) == [768, 461, 307]
    assert plan.samples_per_dataset() == {"a": 768, "b": 461, "c": 307}


def test_the_stream_fingerprint_names_the_rule_and_the_weights(sources):
    store = _store(sources)
    stream = json.loads(_plan(store).stream_fingerprint()["stream"])
    assert stream["mixture"] == {
        "rule": "shares/2",
        "weights": [0.5, 0.3, 0.2],
        "part_counts": [960, 96, 480],
    }
    reweighted = _store(sources, [("a", 0.2), ("b", 0.3), ("c", 0.5)])
    assert reweighted.fingerprint == store.fingerprint  # the same samples, once each
    before, after = (_plan(s).stream_fingerprint() for s in (store, reweighted))
    assert before["data"] == after["data"] and before["stream"] != after["stream"]
    single = prepare_stage_store("a", "byte", str(sources / "cache"), progress=False)
    assert "mixture" not in json.loads(_plan(single, datasets=["a"]).stream_fingerprint()["stream"])


def test_each_source_holds_out_its_own_share_and_a_one_sample_source_keeps_it(tmp_path):
    write_jsonl(str(tmp_path / "big.jsonl"), [f"s{i}" for i in range(40)])
    write_jsonl(str(tmp_path / "one.jsonl"), ["only"])
    entries = [(str(tmp_path / "big.jsonl"), 0.5), (str(tmp_path / "one.jsonl"), 0.5)]
    store = prepare_stage_store(entries, "byte", str(tmp_path / "cache"), progress=False)
    plan = _plan(store, 0, 1, entries, eval_fraction=0.5)
    assert [split.num_eval for split in plan.splits] == [20, 0]  # floor(n_i / 2), one kept
    assert plan.num_eval == 20 and set(plan.eval_indices.tolist()) < set(range(40))
    # 21 training samples: 2 steps of 8, half each; the one sample repeats to its share
    assert plan.samples_per_dataset() == {entries[0][0]: 8, entries[1][0]: 8}
    rows = plan.host_rows(0, 0, 1).ravel()
    assert (rows == 40).sum() == 8 and set(rows[rows < 40].tolist()) <= set(
        plan.train_order[np.arange(20)].tolist()
    )


def test_unweighted_entries_are_a_concatenation_and_a_mix_of_both_is_refused(sources):
    store = _store(sources, ["a", "b", "c"])
    assert store.manifest["mixing"]["weights"] is None
    plan = _plan(store, datasets=["a", "b", "c"], curriculum_strategy=None, epochs=1)
    assert np.array_equal(np.sort(plan.host_rows(0, 0, 1).ravel()), np.arange(1536))
    assert plan.samples_per_dataset() == {"a": 960, "b": 96, "c": 480}
    trainer = make_trainer(sources)
    with pytest.raises(
        ValueError,
        match=r"stage 'x': datasets=\[\('a', 0.5\), 'b'\] mixes "
        r"\(entry, weight\) tuples with unweighted entries \['b'\]; give every",
    ):
        trainer.add_curriculum_stage("x", [("a", 0.5), "b"])
    with pytest.raises(ValueError, match=r"datasets=\[\('a', 0.5\), 'b'\] mixes"):
        _store(sources, [("a", 0.5), "b"])
