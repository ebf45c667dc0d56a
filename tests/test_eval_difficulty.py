"""Evaluation by difficulty: the eval rows, their buckets, the per-bucket losses (checked against
a direct computation) in the eval event, the summary and TensorBoard."""

from __future__ import annotations

import glob

import numpy as np
import pytest
import tensorflow as tf

from highnoon.curriculum.scoring import scores_from_features
from highnoon.data import build_token_store
from highnoon.data.pipeline import HostBatcher
from highnoon.training.settings import StageSettings
from highnoon.training.stage_plan import StagePlan
from highnoon.training.step import masked_token_loss_sum
from highnoon.utils.validation import InvalidArgumentError
from tests.trainer_helpers import corpus, make_trainer, write_jsonl


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("evaldiff") / "store")
    return build_token_store(corpus(4, 200, max_len=30), "byte", path, progress=False)


def _plan(store, **settings) -> StagePlan:
    options = {"batch_size": 4, "max_seq_length": 32, "eval_fraction": 0.2}
    options.update(settings)
    return StagePlan(0, "s", StageSettings(**options), 2, store, seed=3)


def test_eval_rows_are_a_keyed_choice_of_the_held_out_set_ranked_easy_to_hard(store):
    plan = _plan(store)  # 40 held out, 8 batches of 4 evaluated
    table = plan.eval_table(max_batches=8)
    assert table.shape == (8, 4)
    rows = table.reshape(-1)
    assert set(rows) <= set(plan.eval_indices) and len(set(rows)) == 32
    lengths = store.features.lengths[rows]
    order = np.lexsort((rows, lengths))  # (score, index), the curriculum's tie-break
    np.testing.assert_array_equal(order, np.arange(32))
    # Not simply the lowest indices: the choice spans the held-out set.
    assert rows.max() > np.sort(plan.eval_indices)[31]
    np.testing.assert_array_equal(plan.eval_table(8), table)  # the same rows every time
    # Two hosts take the two halves of every batch.
    halves = [plan.eval_rows(h, 2, 8) for h in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves, axis=1), table)


def test_buckets_split_the_batches_as_equally_as_whole_batches_allow(store):
    plan = _plan(store)
    assert plan.eval_buckets(8) == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert plan.eval_buckets(7) == [(0, 1), (1, 3), (3, 5), (5, 7)]
    assert plan.eval_buckets(3) == [(0, 1), (1, 2), (2, 3)]  # fewer batches than buckets
    assert _plan(store, eval_difficulty_buckets=0).eval_buckets(8) == []
    edges = plan.eval_bucket_edges(8)
    scores = store.features.lengths[plan.eval_table(8)]
    assert edges == [float(scores[0, 0]), scores[2, 0], scores[4, 0], scores[6, 0], scores[7, 3]]
    assert edges == sorted(edges)


def test_the_bucket_scores_follow_the_setting(store):
    assert _plan(store).difficulty_strategy() == "size_based"
    assert _plan(store, curriculum_strategy=None).difficulty_strategy() == "size_based"
    assert _plan(store, curriculum_strategy="random").difficulty_strategy() == "size_based"
    mixed = _plan(store, curriculum_strategy="mixed")
    assert mixed.difficulty_strategy() == "mixed"
    np.testing.assert_array_equal(
        mixed.difficulty_scores(), scores_from_features(store.features, "mixed")
    )
    chosen = _plan(store, curriculum_strategy="mixed", eval_difficulty_strategy="difficulty_based")
    assert chosen.difficulty_strategy() == "difficulty_based"
    with pytest.raises(InvalidArgumentError, match="eval_difficulty_strategy='random'"):
        StageSettings(eval_difficulty_strategy="random")


@pytest.fixture()
def data(tmp_path):
    return {"a": write_jsonl(str(tmp_path / "a.jsonl"), corpus(0, 96, max_len=30))}


def _direct_loss(model, store, rows: np.ndarray, seq_len: int) -> tuple[float, float]:
    batch = HostBatcher(store, rows.reshape(1, -1), seq_len).batch(0)
    logits = model(tf.constant(batch["inputs"]), training=False)
    loss = masked_token_loss_sum(batch["targets"], logits, batch["loss_mask"])
    return float(loss), float(batch["loss_mask"].sum())


def test_bucket_losses_in_the_event_summary_and_tensorboard(tmp_path, data):
    trainer = make_trainer(tmp_path, eval_fraction=0.5, eval_batches=6, eval_difficulty_buckets=3)
    trainer.add_curriculum_stage("s", [data["a"]], epochs=1)
    evals = []
    trainer.add_callback(lambda e: evals.append(e) if e["event"] == "eval" else None)
    run_dir = str(tmp_path / "run")
    summary = trainer.train(checkpoint_dir=run_dir, eval_interval=1000)
    (event,) = evals  # the stage-end evaluation
    plan = trainer.plan(epochs_per_stage=None)[0]
    table = plan.eval_table(6)
    direct = [
        _direct_loss(trainer.model, plan.store, table[a:b], 32) for a, b in plan.eval_buckets(6)
    ]
    assert event["eval_loss_by_difficulty"] == pytest.approx([s / n for s, n in direct], rel=1e-5)
    assert event["eval_loss"] == pytest.approx(
        sum(s for s, _ in direct) / sum(n for _, n in direct), rel=1e-5
    )
    assert event["difficulty_edges"] == plan.eval_bucket_edges(6)
    assert event["tokens_seen"] == summary["tokens_seen"]
    assert summary["eval"][-1]["eval_loss_by_difficulty"] == event["eval_loss_by_difficulty"]
    scalars = {}
    for path in glob.glob(f"{run_dir}/summaries/events.out.tfevents.*"):
        for record in tf.compat.v1.train.summary_iterator(path):
            for value in record.summary.value:
                scalars[value.tag] = float(tf.make_ndarray(value.tensor))
    for bucket in range(3):
        assert scalars[f"eval/eval_loss_difficulty_{bucket}"] == pytest.approx(
            event["eval_loss_by_difficulty"][bucket], rel=1e-6
        )


def test_no_buckets_when_off(tmp_path, data):
    trainer = make_trainer(tmp_path, eval_fraction=0.5, eval_difficulty_buckets=0)
    trainer.add_curriculum_stage("s", [data["a"]], epochs=1)
    summary = trainer.train(save_checkpoints=False)
    assert "eval_loss_by_difficulty" not in summary["eval"][-1]
    assert "difficulty_edges" not in summary["eval"][-1]
