"""Packing through the Trainer: nothing dropped, counts that match the packing, exact resume,
and no change when every sample fills a row. The 1- vs 2-worker proof is in
test_trainer_multiworker.py."""

from __future__ import annotations

import numpy as np
import pytest

from highnoon.data.packing import segment_lengths
from tests.trainer_helpers import assert_exact_resume, corpus, make_trainer, nano_model, write_jsonl


@pytest.fixture()
def data(tmp_path):
    return write_jsonl(str(tmp_path / "a.jsonl"), corpus(0, 96, min_len=2, max_len=12))


def _weights(model) -> list[np.ndarray]:
    return [w.numpy() for w in model.weights]


def test_a_packed_stage_trains_every_exposed_sample_once_per_epoch(tmp_path, data):
    trainer = make_trainer(tmp_path, pack=True, max_seq_length=32)
    trainer.add_curriculum_stage("only", [data], epochs=3)
    events = []
    trainer.add_callback(events.append)
    summary = trainer.train(save_checkpoints=False, log_interval=1)
    # Recompute what each epoch exposes and how it packs, from the store and the curriculum.
    plan = trainer._plans[0]
    streams = [plan.epoch_stream(epoch) for epoch in range(3)]
    for epoch, stream in enumerate(streams):
        packed = plan.packed_epoch(epoch)
        assert sorted(packed.sample.tolist()) == sorted(stream.tolist())  # each exactly once
    (stage,) = summary["stages_completed"]
    assert stage["samples_seen"] == sum(s.size for s in streams)
    assert stage["samples_dropped"] == 0
    assert stage["tokens_seen"] == summary["tokens_seen"]  # the step's own token count agrees
    lengths = segment_lengths(plan.lengths, 32)
    assert stage["tokens_seen"] == sum(int(lengths[s].sum()) for s in streams)
    assert 0.0 <= stage["padding_fraction"] < 0.2
    (complete,) = [e for e in events if e["event"] == "stage_complete"]
    assert complete["metrics"]["samples_seen"] == stage["samples_seen"]
    logs = [e for e in events if e["event"] == "log"]
    assert all(0.0 <= e["padding_fraction"] < 1.0 for e in logs)
    assert (
        len(logs) == summary["total_steps"] == sum(plan.packed_epoch(e).num_steps for e in range(3))
    )


def test_unpacked_counts_report_the_padding_and_the_dropped_remainder(tmp_path):
    data = write_jsonl(str(tmp_path / "b.jsonl"), corpus(0, 98, min_len=2, max_len=12))
    trainer = make_trainer(tmp_path, max_seq_length=32, initial_fraction=0.3)
    trainer.add_curriculum_stage("only", [data], epochs=2)
    summary = trainer.train(save_checkpoints=False)
    (stage,) = summary["stages_completed"]
    plan = trainer._plans[0]
    dropped = sum(plan.samples_dropped(e) for e in range(2))
    assert stage["samples_dropped"] == dropped == 1 + 2  # pools are whole global batches of 4
    assert stage["samples_seen"] == 4 * summary["total_steps"]
    fed = [plan.host_rows(e, 0, 1).reshape(-1) for e in range(2)]
    real = sum(int(segment_lengths(plan.lengths[rows], 32).sum()) for rows in fed)
    assert stage["tokens_seen"] == real == summary["tokens_seen"]
    assert stage["padding_fraction"] == pytest.approx(1 - real / (stage["samples_seen"] * 32))


@pytest.mark.slow
def test_a_packed_run_interrupted_mid_epoch_resumes_bit_identically(tmp_path, data):
    def trainer(model):
        t = make_trainer(tmp_path, model=model, pack=True, max_seq_length=32)
        t.add_curriculum_stage("only", [data], epochs=3)
        return t

    assert_exact_resume(trainer, tmp_path, 5)


def test_packing_changes_nothing_when_every_sample_fills_a_row(tmp_path):
    # Byte tokenizer: a text of 31 bytes is 31 tokens + EOS = 32, one full row of 32 pairs.
    texts = [("abcdefghij" * 4)[i % 7 : i % 7 + 31] for i in range(48)]
    path = write_jsonl(str(tmp_path / "full.jsonl"), texts)
    results = []
    for pack in (False, True):
        trainer = make_trainer(
            tmp_path, model=nano_model(), pack=pack, max_seq_length=32, curriculum_strategy=None
        )
        trainer.add_curriculum_stage("only", [path], epochs=2)
        summary = trainer.train(save_checkpoints=False)
        results.append((summary, _weights(trainer.model)))
    (plain, plain_weights), (packed, packed_weights) = results
    assert plain["total_steps"] == packed["total_steps"]
    assert plain["stages_completed"][0]["padding_fraction"] == 0.0
    assert packed["stages_completed"][0]["padding_fraction"] == 0.0
    for got, want in zip(packed_weights, plain_weights):
        np.testing.assert_array_equal(got, want)
