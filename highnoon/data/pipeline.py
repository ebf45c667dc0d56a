"""The per-host ``tf.data`` pipeline: sample indices in, fixed-shape token batches out.

``make_host_dataset(store, rows, seq_len)`` takes ``rows``, an int64 array ``[steps,
rows_per_step]`` of sample indices (this host's slice of every global batch, from the
curriculum), and yields for step ``s`` (from ``start_step`` on) a dict of int32 tensors of static
shape ``[rows_per_step, seq_len]``:

* every row is built from ``full = [bos_id] + sample`` (a stored sample ends with EOS);
  ``seq_len + 1`` tokens of it are taken, padded with ``pad_id``;
* ``inputs = row[:-1]``, ``targets = row[1:]``, ``loss_mask`` = 1 where the target is a real
  token, 0 on padding.

**Overflow** (``len(full) > seq_len + 1``): ``"truncate"`` (default) takes the first
``seq_len + 1`` tokens; ``"window"`` takes ``full[w : w + seq_len + 1]`` with
``w = keyed_hash(sample index; seed, epoch) % (len(full) - seq_len)``, so a sample shows the same
window within an epoch on every host and run, and (usually) another one the next epoch.

**Packing** (``pack=True``): the step's samples, in the order of ``rows[s]``, are packed next-fit
into ``packed_rows`` rows (default ``rows_per_step``): each sample is a segment of
``min(len(sample), seq_len)`` input/target pairs (after the overflow rule), placed in the current
row if it fits, else at the start of the next row; once the rows are full, the step's remaining
samples are dropped (deterministically; ``packing_plan`` tells which). Packed batches also carry
``positions`` (0.. within each segment, 0 on padding) and ``segment_ids`` (1.. within each row,
0 on padding); targets never cross a segment boundary, so the loss mask is 1 on every segment
position and 0 on padding. Curriculum scores come from the stored samples, before packing.

**Resume**: ``start_step`` starts at any step without reading earlier ones. Batches depend only on
(store, rows, seq_len, options), never on timing or threads.

**Distribution**: under ``strategy.distribute_datasets_from_function`` each input pipeline
yields per-replica batches, handed to its local replicas in turn; pass
``per_replica_rows(host_rows, num_local_replicas)`` (and ``start_step * num_local_replicas``).

The gather runs in numpy from the memory-mapped store inside ``tf.numpy_function`` (a host-side
Python op: fine on CPU/GPU hosts and TPU VMs, not for remote TPU-node workers).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from highnoon.data.store import TokenStore
from highnoon.utils.hashing import keyed_hash

OVERFLOW = ("truncate", "window")
_PLAIN_KEYS = ("inputs", "targets", "loss_mask")
_PACKED_KEYS = (*_PLAIN_KEYS, "positions", "segment_ids")
_TOKENS_PER_CALL = 1 << 16


def per_replica_rows(host_rows: np.ndarray, num_local_replicas: int) -> np.ndarray:
    """Split each step's host rows among local replicas: ``[steps, R*b] -> [steps*R, b]``.

    Element ``s*R + r`` holds the rows ``[r*b, (r+1)*b)`` of step ``s``, which is what replica
    ``r`` receives from ``distribute_datasets_from_function`` (batches go to local replicas in
    turn). Rows per step must divide by ``num_local_replicas``.
    """
    rows = np.asarray(host_rows, dtype=np.int64)
    replicas = int(num_local_replicas)
    if rows.ndim != 2 or replicas < 1 or rows.shape[1] % replicas:
        raise ValueError(
            f"num_local_replicas={num_local_replicas} must be >= 1 and divide the rows per step "
            f"(host_rows shape {rows.shape})"
        )
    return rows.reshape(rows.shape[0] * replicas, rows.shape[1] // replicas)


class HostBatcher:
    """Builds the numpy batch of any step; ``make_host_dataset`` wraps it in ``tf.data``."""

    def __init__(
        self,
        store: TokenStore,
        rows: np.ndarray,
        seq_len: int,
        *,
        pack: bool = False,
        packed_rows: int | None = None,
        overflow: str = "truncate",
        seed: int = 0,
        epoch: int = 0,
    ) -> None:
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] < 1 or not np.issubdtype(rows.dtype, np.integer):
            raise ValueError(
                f"rows must be a 2-D integer array [steps, rows_per_step], got shape {rows.shape} "
                f"and dtype {rows.dtype}"
            )
        if rows.size and (rows.min() < 0 or rows.max() >= store.num_samples):
            raise ValueError(
                f"rows holds sample indices in [{rows.min()}, {rows.max()}], but the store has "
                f"{store.num_samples} samples (allowed: [0, {store.num_samples}))"
            )
        if int(seq_len) < 1:
            raise ValueError(f"seq_len={seq_len} must be a positive integer")
        if overflow not in OVERFLOW:
            raise ValueError(f"overflow={overflow!r} is not allowed; use one of {OVERFLOW}")
        if packed_rows is not None and not pack:
            raise ValueError("packed_rows is only meaningful with pack=True")
        self.packed_rows = int(packed_rows if packed_rows is not None else rows.shape[1])
        if self.packed_rows < 1:
            raise ValueError(f"packed_rows={packed_rows} must be a positive integer")
        self.store = store
        self.rows = rows.astype(np.int64)
        self.seq_len = int(seq_len)
        self.pack = bool(pack)
        self.overflow = overflow
        self.seed = int(seed)
        self.epoch = int(epoch)
        tokenizer_config = store.manifest.get("tokenizer", {})
        tokenizer = store.tokenizer if tokenizer_config else None
        self.bos_id = tokenizer.bos_id if tokenizer else 1
        self.pad_id = tokenizer.pad_id if tokenizer else 0
        # a plain ndarray view of the memory map: fancy indexing skips np.memmap's overhead
        self.tokens = np.frombuffer(store.tokens, dtype=store.tokens.dtype)
        self.offsets = store.offsets
        self._arange = np.arange(self.seq_len + 1)
        self.keys = _PACKED_KEYS if self.pack else _PLAIN_KEYS

    @property
    def num_steps(self) -> int:
        return int(self.rows.shape[0])

    @property
    def batch_rows(self) -> int:
        return self.packed_rows if self.pack else int(self.rows.shape[1])

    def _windows(self, idx: np.ndarray, full_len: np.ndarray) -> np.ndarray:
        """Start of the taken window in ``full`` for every sample (0 unless ``window``)."""
        if self.overflow == "truncate":
            return np.zeros_like(full_len)
        spare = full_len - (self.seq_len + 1)  # > 0 means the sample overflows
        w = np.zeros_like(full_len)
        over = spare > 0
        if over.any():
            h = keyed_hash(idx[over], self.seed, self.epoch)
            w[over] = (h % (spare[over] + 1).astype(np.uint64)).astype(np.int64)
        return w

    def _full_tokens(self, starts: np.ndarray, k: np.ndarray) -> np.ndarray:
        """``full[k]`` for samples starting at ``starts`` (broadcast with ``k``; k=0 is BOS)."""
        positions = np.clip(starts + k - 1, 0, self.tokens.size - 1)
        tokens = np.take(self.tokens, positions).astype(np.int32)
        return np.where(k == 0, self.bos_id, tokens)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The batch of ``step`` as int32 numpy arrays ``[batch_rows, seq_len]``."""
        if not 0 <= int(step) < self.num_steps:
            raise ValueError(f"step={step} is outside [0, {self.num_steps})")
        idx = self.rows[int(step)]
        if self.pack:
            starts = self.offsets[idx]
            full_len = self.offsets[idx + 1] - starts + 1
            return self._packed(idx, starts, full_len, self._windows(idx, full_len))
        return self._plain(idx)

    def batches(self, first: int, count: int) -> dict[str, np.ndarray]:
        """Steps ``[first, first + count)`` stacked: arrays ``[count, batch_rows, seq_len]``.
        Unpacked steps are gathered in one vectorised pass."""
        if not 0 <= first < first + count <= self.num_steps:
            raise ValueError(f"steps [{first}, {first + count}) are outside [0, {self.num_steps})")
        if self.pack:
            parts = [self.batch(step) for step in range(first, first + count)]
            return {key: np.stack([p[key] for p in parts]) for key in self.keys}
        flat = self._plain(self.rows[first : first + count].reshape(-1))
        shape = (count, self.batch_rows, self.seq_len)
        return {key: value.reshape(shape) for key, value in flat.items()}

    def _plain(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Unpacked rows for the sample indices ``idx`` (one row each)."""
        starts = self.offsets[idx]
        full_len = self.offsets[idx + 1] - starts + 1
        w = self._windows(idx, full_len)
        t1 = self.seq_len + 1
        row_len = np.minimum(full_len - w, t1)
        k = w[:, None] + self._arange
        positions = starts[:, None] - 1 + k
        np.clip(positions, 0, self.tokens.size - 1, out=positions)
        row = np.take(self.tokens, positions).astype(np.int32)
        row[:, 0] = np.where(w == 0, self.bos_id, row[:, 0])
        valid = self._arange < row_len[:, None]
        row[~valid] = self.pad_id
        return {
            "inputs": row[:, :-1],
            "targets": row[:, 1:],
            "loss_mask": valid[:, 1:].astype(np.int32),
        }

    def plan(self, step: int) -> list[tuple[int, int, int, int]]:
        """Packing of ``step``: ``(sample index, row, column, segment length)`` per placed sample,
        in placement order; samples not listed were dropped."""
        idx = self.rows[int(step)]
        return [(int(idx[p]), row, col, seg) for p, row, col, seg in self.plan_from(idx)]

    def _packed(
        self, idx: np.ndarray, starts: np.ndarray, full_len: np.ndarray, w: np.ndarray
    ) -> dict[str, np.ndarray]:
        shape = (self.packed_rows, self.seq_len)
        out = {key: np.zeros(shape, dtype=np.int32) for key in _PACKED_KEYS}
        out["inputs"][:] = self.pad_id
        out["targets"][:] = self.pad_id
        placed = self.plan_from(idx)
        if not placed:
            return out
        which = np.array([p[0] for p in placed])  # position in idx
        rows = np.array([p[1] for p in placed])
        cols = np.array([p[2] for p in placed])
        segs = np.array([p[3] for p in placed])
        seg_ids = np.zeros(len(placed), dtype=np.int32)
        seg_ids[0] = 1
        for i in range(1, len(placed)):
            seg_ids[i] = 1 if rows[i] != rows[i - 1] else seg_ids[i - 1] + 1
        total = int(segs.sum())
        seg_start = np.concatenate([[0], np.cumsum(segs)[:-1]])
        local = np.arange(total) - np.repeat(seg_start, segs)  # position within the segment
        r = np.repeat(rows, segs)
        c = np.repeat(cols, segs) + local
        k = np.repeat(w[which], segs) + local
        s = np.repeat(starts[which], segs)
        out["inputs"][r, c] = self._full_tokens(s, k)
        out["targets"][r, c] = self._full_tokens(s, k + 1)
        out["loss_mask"][r, c] = 1
        out["positions"][r, c] = local
        out["segment_ids"][r, c] = np.repeat(seg_ids, segs)
        return out

    def plan_from(self, idx: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Like ``plan`` but for an index row, giving positions within it instead of indices."""
        lengths = np.minimum(self.offsets[idx + 1] - self.offsets[idx], self.seq_len)
        placed, row, col = [], 0, 0
        for position, seg in enumerate(lengths.tolist()):
            if col + seg > self.seq_len:
                row, col = row + 1, 0
            if row >= self.packed_rows:
                break
            placed.append((position, row, col, seg))
            col += seg
        return placed


def packing_plan(
    store: TokenStore, rows: np.ndarray, seq_len: int, step: int, *, packed_rows: int | None = None
) -> list[tuple[int, int, int, int]]:
    """Where ``make_host_dataset(..., pack=True)`` puts the samples of ``step``:
    ``(sample index, row, column, segment length)``; samples not listed are dropped."""
    return HostBatcher(store, rows, seq_len, pack=True, packed_rows=packed_rows).plan(step)


def make_host_dataset(
    store: TokenStore,
    rows: np.ndarray,
    seq_len: int,
    *,
    start_step: int = 0,
    pack: bool = False,
    packed_rows: int | None = None,
    overflow: str = "truncate",
    seed: int = 0,
    epoch: int = 0,
    prefetch: int | None = None,
    num_parallel_calls: int | None = None,
    steps_per_call: int | None = None,
) -> Any:
    """A ``tf.data.Dataset`` of this host's batches from ``start_step`` on (module docstring).

    ``prefetch`` defaults to ``tf.data.AUTOTUNE``; ``num_parallel_calls`` (default AUTOTUNE) runs
    several gathers at once, the output order stays deterministic. ``steps_per_call`` steps are
    built per Python call (default: about 64K tokens' worth) and unbatched again.
    """
    import tensorflow as tf

    batcher = HostBatcher(
        store, rows, seq_len, pack=pack, packed_rows=packed_rows, overflow=overflow,
        seed=seed, epoch=epoch,
    )  # fmt: skip
    if not 0 <= int(start_step) <= batcher.num_steps:
        raise ValueError(
            f"start_step={start_step} must be in [0, {batcher.num_steps}] (steps in rows)"
        )
    keys = batcher.keys
    shape = (batcher.batch_rows, batcher.seq_len)
    # Several steps per Python call amortise the per-call overhead of tf.numpy_function; the
    # chunks are unbatched again, so elements are still single steps in order.
    per_call = int(steps_per_call or max(1, _TOKENS_PER_CALL // (shape[0] * shape[1])))
    end = batcher.num_steps

    def produce(first: np.ndarray) -> list[np.ndarray]:
        count = min(int(first) + per_call, end) - int(first)
        stacked = batcher.batches(int(first), count)
        return [stacked[key] for key in keys]

    def to_dict(first: Any) -> dict[str, Any]:
        values = tf.numpy_function(produce, [first], [tf.int32] * len(keys), stateful=False)
        return {key: tf.ensure_shape(v, (None, *shape)) for key, v in zip(keys, values)}

    autotune = tf.data.AUTOTUNE
    dataset = tf.data.Dataset.range(int(start_step), end, per_call)
    dataset = dataset.map(
        to_dict,
        num_parallel_calls=autotune if num_parallel_calls is None else num_parallel_calls,
        deterministic=True,
    )
    dataset = dataset.unbatch()
    dataset = dataset.prefetch(autotune if prefetch is None else prefetch)
    # No autotuning thread: AUTOTUNE above still gives a default parallelism (bounded by the
    # cores) and a prefetch buffer that grows on demand (bench_data: same throughput), but no
    # tf.data optimisation thread, whose sleep (up to a minute) deleting the iterator at an
    # epoch's end would wait out.
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
