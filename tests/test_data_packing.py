"""Packing that drops nothing (highnoon.data.packing + the packed pipeline), driven directly:
exact FFD, every pool sample once per epoch, host-count independence, exact resume, long
samples, full-length samples, counts, and packed loss = unpacked loss on a real model."""

from __future__ import annotations

import numpy as np
import pytest

from highnoon.curriculum import AdaptiveCurriculumScheduler, CurriculumScheduler
from highnoon.data import (
    PackedBatcher,
    batch_counts,
    build_token_store,
    make_packed_host_dataset,
    pack_epoch,
    packed_row_count,
    stored_lengths,
)
from highnoon.data.packing import first_fit_decreasing
from highnoon.data.pipeline import HostBatcher

tf = pytest.importorskip("tensorflow")

SEQ = 16
N = 120  # samples; sample i is the token 3 + i repeated, so a segment names its sample


def sample_lengths(n: int) -> np.ndarray:
    """1..40 tokens before EOS (some longer than SEQ), a fixed pseudo-random pattern."""
    return 1 + (np.arange(n) * 37 + 11) % 40


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    samples = [np.full(length, 3 + i) for i, length in enumerate(sample_lengths(N))]
    return build_token_store(
        samples, "byte", str(tmp_path_factory.mktemp("pk") / "s"), progress=False
    )


def reference_ffd(sizes: list[int], capacity: int) -> tuple[list[int], int]:
    """Textbook first-fit decreasing (ties to the lower position): row of every item, rows."""
    rows, remaining = [0] * len(sizes), []
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        for r, room in enumerate(remaining):
            if room >= sizes[i]:
                remaining[r] -= sizes[i]
                rows[i] = r
                break
        else:
            remaining.append(capacity - sizes[i])
            rows[i] = len(remaining) - 1
    return rows, len(remaining)


def decode(batch: dict[str, np.ndarray]) -> list[int]:
    """Sample index of every segment of a packed batch, row by row."""
    found = []
    for inputs, segments in zip(batch["inputs"], batch["segment_ids"]):
        for segment in range(1, int(segments.max()) + 1):
            tokens = inputs[segments == segment]
            assert tokens[0] == 1  # BOS starts every segment
            found.append(int(tokens[1]) - 3 if tokens.size > 1 else -1)
    return found


def epoch_batches(store, packed, **kwargs) -> list[dict[str, np.ndarray]]:
    return list(make_packed_host_dataset(store, packed, **kwargs).as_numpy_iterator())


# -- first-fit decreasing ----------------------------------------------------------------------


def test_ffd_is_textbook_first_fit_decreasing_in_every_window() -> None:
    rng = np.random.Generator(np.random.PCG64(7))
    for trial in range(150):
        capacity = int(rng.integers(1, 48))
        n, window = int(rng.integers(1, 200)), int(rng.integers(1, 70))
        sizes = rng.integers(1, capacity + 1, n)
        if trial % 3 == 0:  # many full-length and > capacity/2 items
            sizes = np.maximum(sizes, capacity - rng.integers(0, 3, n)).clip(1, capacity)
        window_row, used = first_fit_decreasing(sizes, capacity, window)
        for w in range(-(-n // window)):
            part = sizes[w * window : (w + 1) * window].tolist()
            rows, count = reference_ffd(part, capacity)
            assert window_row[w * window : (w + 1) * window].tolist() == rows
            assert used[w] == count


def test_pack_epoch_layout_exact() -> None:
    lengths = np.array([5, 9, 3, 10, 2, 6])  # stored lengths; seq_len 10
    packed = pack_epoch(np.array([3, 1, 0, 2, 5, 4]), lengths, 10, 2)
    # FFD: 10 (pos 0) | 9 (pos 1) | 6 (pos 4) + 3 (pos 3) | 5 (pos 2) + 2 (pos 5); rows by first pos
    assert packed.num_rows == 4 and packed.num_steps == 2
    assert packed.plan(0) == [(3, 0, 0, 10), (1, 1, 0, 9)]
    assert packed.plan(1) == [(0, 0, 0, 5), (4, 0, 5, 2), (2, 1, 0, 3), (5, 1, 3, 6)]
    assert packed_row_count(np.array([3, 1, 0, 2, 5, 4]), lengths, 10) == 4
    counts = packed.counts()
    assert counts.samples.tolist() == [2, 4]
    assert counts.tokens.tolist() == [19, 16]
    assert counts.slots.tolist() == [20, 20]
    np.testing.assert_allclose(counts.padding_fraction, [0.05, 0.2])
    assert counts.total() == {"samples": 6, "tokens": 35, "slots": 40, "padding_fraction": 0.125}


def test_window_bounds_the_packing() -> None:
    lengths = np.array([6, 6, 4, 4])
    assert packed_row_count(np.arange(4), lengths, 10, window=4) == 2  # 6+4, 6+4
    assert packed_row_count(np.arange(4), lengths, 10, window=2) == 3  # 6 | 6 ; 4+4


def test_bad_arguments() -> None:
    lengths = np.array([3, 4])
    with pytest.raises(ValueError, match=r"stream holds sample indices in \[0, 2\]"):
        pack_epoch(np.array([0, 2]), lengths, 4, 1)
    with pytest.raises(ValueError, match="stream must be a 1-D integer array"):
        pack_epoch(np.array([[0]]), lengths, 4, 1)
    with pytest.raises(ValueError, match="every streamed sample must have at least one token"):
        pack_epoch(np.array([0]), np.array([0]), 4, 1)
    with pytest.raises(ValueError, match="rows_per_step=0 must be an integer >= 1"):
        pack_epoch(np.array([0]), lengths, 4, 0)
    with pytest.raises(ValueError, match="seq_len=0 must be an integer >= 1"):
        pack_epoch(np.array([0]), lengths, 0, 1)
    with pytest.raises(ValueError, match="window=0 must be an integer >= 1"):
        pack_epoch(np.array([0]), lengths, 4, 1, window=0)
    with pytest.raises(ValueError, match="step=1 must be an integer in"):
        pack_epoch(np.array([0]), lengths, 4, 1).plan(1)


# -- the packed epoch through the pipeline -------------------------------------------------------


def scheduler(num_samples: int = N, **kwargs) -> CurriculumScheduler:
    options = {"pacing": "linear", "total_epochs": 3, "initial_fraction": 0.3, "seed": 5}
    s = CurriculumScheduler(verbose=False, global_batch_size=8, **{**options, **kwargs})
    s.prepare_curriculum_from_scores(sample_lengths(num_samples).astype(np.float64))
    return s


def test_every_pool_sample_appears_exactly_once_per_epoch(store) -> None:
    """Through the batches themselves: each segment's tokens name its sample."""
    sched = scheduler()
    lengths = stored_lengths(store)
    for epoch in range(4):
        stream = sched.epoch_stream(epoch)
        assert stream.size == sched.exposed_size(epoch)  # not rounded to whole batches
        packed = pack_epoch(stream, lengths, SEQ, 4, window=16)
        seen = [i for batch in epoch_batches(store, packed) for i in decode(batch)]
        assert sorted(seen) == sorted(stream.tolist())
        assert len(set(seen)) == len(seen)
        plans = [row for step in range(packed.num_steps) for row in packed.plan(step)]
        assert [p[0] for p in plans] == seen  # the plan is what the batches hold
        assert sched.samples_dropped(epoch, pack=True) == 0
    assert sched.exposed_size(0) == 36 and sched.pool_size(0) == 32
    assert sched.samples_dropped(0, pack=False) == 4


def test_one_and_two_hosts_feed_the_same_global_rows(store) -> None:
    packed = pack_epoch(scheduler().epoch_stream(1), stored_lengths(store), SEQ, 4, window=16)
    one = epoch_batches(store, packed, seed=3, epoch=1, overflow="window")
    hosts = [
        epoch_batches(store, packed, host_id=h, num_hosts=2, seed=3, epoch=1, overflow="window")
        for h in (0, 1)
    ]
    assert len(one) == len(hosts[0]) == len(hosts[1]) == packed.num_steps
    for step, whole in enumerate(one):
        for key, value in whole.items():
            joined = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
            np.testing.assert_array_equal(joined, value)


def test_exact_resume_mid_epoch(store) -> None:
    state = scheduler().get_state()
    full = epoch_batches(
        store, pack_epoch(scheduler().epoch_stream(2), stored_lengths(store), SEQ, 2)
    )
    # a restarted process: a new scheduler from the saved state, the packing recomputed
    again = CurriculumScheduler.from_state(state, sample_lengths(N).astype(np.float64))
    packed = pack_epoch(again.epoch_stream(2), stored_lengths(store), SEQ, 2)
    start = packed.num_steps // 2
    resumed = epoch_batches(store, packed, start_step=start)
    assert len(resumed) == len(full) - start > 0
    for a, b in zip(full[start:], resumed):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("overflow", ["truncate", "window"])
def test_a_sample_longer_than_seq_len_keeps_the_overflow_rule(store, overflow) -> None:
    """A packed long sample is exactly its unpacked row (the first or the keyed window)."""
    long = np.flatnonzero(sample_lengths(N) > SEQ)[:5]
    lengths = stored_lengths(store)
    packed = pack_epoch(long, lengths, SEQ, long.size)
    plain = HostBatcher(store, long[None, :], SEQ, overflow=overflow, seed=9, epoch=4).batch(0)
    got = PackedBatcher(store, packed, overflow=overflow, seed=9, epoch=4).batch(0)
    assert [p[3] for p in packed.plan(0)] == [SEQ] * long.size  # a full row each
    for key in plain:
        np.testing.assert_array_equal(got[key], plain[key])
    np.testing.assert_array_equal(got["positions"], np.tile(np.arange(SEQ), (long.size, 1)))
    np.testing.assert_array_equal(got["segment_ids"], 1)


def test_full_length_samples_pack_to_the_unpacked_batches(tmp_path) -> None:
    samples = [np.full(SEQ - 1, 3 + i) for i in range(32)]  # + EOS: exactly SEQ tokens
    full = build_token_store(samples, "byte", str(tmp_path / "full"), progress=False)
    sched = scheduler(32, initial_fraction=1.0, pacing="constant")
    table = sched.host_epoch_indices(0, 0, 1)
    np.testing.assert_array_equal(sched.epoch_stream(0), table.reshape(-1))
    packed = pack_epoch(sched.epoch_stream(0), stored_lengths(full), SEQ, table.shape[1])
    plain = HostBatcher(full, table, SEQ)
    batches = epoch_batches(full, packed)
    assert len(batches) == table.shape[0]
    for step, batch in enumerate(batches):
        reference = plain.batch(step)
        for key in reference:
            np.testing.assert_array_equal(batch[key], reference[key])
        np.testing.assert_array_equal(batch["segment_ids"], 1)
    assert packed.counts().total()["padding_fraction"] == 0.0


def test_adaptive_and_step_pacing_streams() -> None:
    adaptive = AdaptiveCurriculumScheduler(
        min_epochs_per_stage=1, verbose=False, global_batch_size=8, num_stages=2,
        initial_fraction=0.3, seed=1,
    )  # fmt: skip
    adaptive.prepare_curriculum_from_scores(sample_lengths(N).astype(np.float64))
    assert adaptive.epoch_stream(0).size == 36  # stage 0: 0.3 * 120, not rounded to 32
    adaptive.update_with_loss(0, 1.0)
    adaptive.update_with_loss(1, 1.0)  # plateau: advance to stage 1 from epoch 2
    assert adaptive.epoch_stream(2).size == 78  # 0.65 * 120
    stepped = scheduler(pacing="linear", total_epochs=None, total_steps=30)
    np.testing.assert_array_equal(
        stepped.epoch_stream(0), stepped.host_epoch_indices(0, 0, 1).reshape(-1)
    )
    assert stepped.samples_dropped(0, pack=True) == stepped.samples_dropped(0, pack=False) == 0


def test_unpacked_batch_counts(store) -> None:
    table = np.array([[0, 1], [2, 3]])
    counts = batch_counts(table, stored_lengths(store), SEQ)
    expected = np.minimum(sample_lengths(4) + 1, SEQ)  # + EOS, capped at SEQ pairs
    assert counts.tokens.tolist() == [expected[:2].sum(), expected[2:].sum()]
    assert counts.samples.tolist() == [2, 2] and counts.slots.tolist() == [2 * SEQ, 2 * SEQ]


# -- the loss does not see the grouping ---------------------------------------------------------


def test_packed_loss_and_gradients_equal_unpacked_on_a_real_model(store) -> None:
    from highnoon.models import create_model
    from highnoon.training.step import masked_token_loss_sum

    model = create_model("highnoon-nano", max_seq_length=SEQ)
    model.build()
    idx = np.arange(10)  # short and long samples: several segments share rows
    packed = pack_epoch(idx, stored_lengths(store), SEQ, 10)
    assert packed.num_rows < idx.size
    got = PackedBatcher(store, packed).batch(0)
    plain = HostBatcher(store, idx[None, :], SEQ).batch(0)

    def loss_and_grads(batch, **extra):
        with tf.GradientTape() as tape:
            logits = model(batch["inputs"], training=False, **extra)
            loss = masked_token_loss_sum(batch["targets"], logits, batch["loss_mask"])
        return loss, tape.gradient(loss, model.trainable_variables)

    packed_loss, packed_grads = loss_and_grads(
        got, positions=got["positions"], segment_ids=got["segment_ids"]
    )
    plain_loss, plain_grads = loss_and_grads(plain)
    assert got["loss_mask"].sum() == plain["loss_mask"].sum()
    np.testing.assert_allclose(packed_loss.numpy(), plain_loss.numpy(), rtol=1e-5)
    for a, b in zip(packed_grads, plain_grads):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    leaky, _ = loss_and_grads(got, positions=got["positions"])  # without segment masking
    assert not np.isclose(leaky.numpy(), plain_loss.numpy(), rtol=1e-5, atol=0.0)
