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

**Packing**: ``make_packed_host_dataset(store, packed, host_id=, num_hosts=)`` feeds this host's
share of the rows of a ``PackedEpoch`` (``highnoon.data.packing``: the epoch's *global* stream
packed by first-fit decreasing, nothing dropped): step ``s`` is rows ``[s*R + h*R/H, s*R +
(h+1)*R/H)`` of the packing, ``R`` rows per step over ``H`` hosts. Each segment holds
``length`` input/target pairs of one sample (after the overflow rule) at its column; packed
batches also carry ``positions`` (0.. within each segment, 0 on padding) and ``segment_ids``
(1.. within each row, 0 on padding); targets never cross a segment boundary, so the loss mask
is 1 on every segment position and 0 on padding. Curriculum scores come from the stored
samples, before packing.

**Resume**: ``start_step`` starts at any step without reading earlier ones. Batches depend only on
(store, rows or packing, seq_len, options), never on timing or threads.

**Distribution**: under ``strategy.distribute_datasets_from_function`` each input pipeline
yields per-replica batches, handed to its local replicas in turn; pass
``per_replica_rows(host_rows, num_local_replicas)`` (and ``start_step * num_local_replicas``).

The gather runs in numpy from the store (read in place: a memory map locally, range reads
remotely; every position is clipped to its own sample, so only the rows' samples are read) inside ``tf.numpy_function`` (a host-side
Python op: fine on CPU/GPU hosts and TPU VMs, not for remote TPU-node workers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from highnoon.data.packing import PackedEpoch, PackedStream
from highnoon.data.store import TokenStore
from highnoon.utils.hashing import keyed_hash
from highnoon.utils.validation import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    check_choice,
    check_int,
    check_positive_int,
    check_sample_indices,
)

OVERFLOW = ("truncate", "window")
_PLAIN_KEYS = ("inputs", "targets", "loss_mask")
_PACKED_KEYS = (*_PLAIN_KEYS, "positions", "segment_ids")
# Tokens built per Python call. A call costs 1-2 ms besides its rows (tf.numpy_function, its
# dict, the unbatch); a store read in place pays more per call (offsets and CRC look-ups,
# locks), so it builds 4x more: its cold pipeline went from 0.72x the memory map's at 128K a
# call to 0.82-0.91x at 256K. A memory-mapped store gains within the noise from larger calls
# (0.92-1.31x at 256K), and the quickstart, which starts many short pipelines, lost 6-16% at
# 256K (BENCHMARKS.md, "Tokens per call").
_TOKENS_PER_CALL = 1 << 16
_TOKENS_PER_CALL_IN_PLACE = 1 << 18
# A store read in place fetches this many calls ahead of the one being built (the first ones
# at the start): tf.data's parallel map builds about as many calls at once as there are cores,
# so the call after those is the first whose reads can overlap (BENCHMARKS.md, "Input
# throughput").
_CALLS_AHEAD = 2


def per_replica_rows(host_rows: np.ndarray, num_local_replicas: int) -> np.ndarray:
    """Split each step's host rows among local replicas: ``[steps, R*b] -> [steps*R, b]``.

    Element ``s*R + r`` holds the rows ``[r*b, (r+1)*b)`` of step ``s``, which is what replica
    ``r`` receives from ``distribute_datasets_from_function`` (batches go to local replicas in
    turn). Rows per step must divide by ``num_local_replicas``.
    """
    rows = np.asarray(host_rows, dtype=np.int64)
    replicas = int(num_local_replicas)
    if rows.ndim != 2 or replicas < 1 or rows.shape[1] % replicas:
        raise InvalidArgumentError(
            f"num_local_replicas={num_local_replicas} must be >= 1 and divide the rows per step "
            f"(host_rows shape {rows.shape})"
        )
    return rows.reshape(rows.shape[0] * replicas, rows.shape[1] // replicas)


@dataclass(frozen=True)
class StepRows:
    """A host's rows computed on demand, call by call: ``rows_at(first, last)`` returns the
    int64 sample indices ``[last - first, rows_per_step]`` of steps ``[first, last)`` of
    ``num_steps``. ``make_host_dataset`` accepts it wherever it accepts a rows array, so a
    pipeline holds only the rows of the steps it is building (a billion-sample epoch costs a
    host one call's rows)."""

    num_steps: int
    rows_per_step: int
    rows_at: Callable[[int, int], np.ndarray]


class _Gather:
    """Reads ``[BOS] + sample`` tokens from the store (``TokenStore.read_tokens``: in place,
    verified per block), with the overflow rule."""

    def __init__(self, store: TokenStore, seq_len: int, overflow: str, seed: int, epoch: int):
        self.store = store
        self.seq_len = check_positive_int("seq_len", seq_len)
        self.overflow = check_choice("overflow", overflow, OVERFLOW)
        self.seed = check_int("seed", seed)
        self.epoch = check_int("epoch", epoch, minimum=0)
        tokenizer_config = store.manifest.get("tokenizer", {})
        tokenizer = store.tokenizer if tokenizer_config else None
        self.bos_id = tokenizer.bos_id if tokenizer else 1
        self.pad_id = tokenizer.pad_id if tokenizer else 0

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

    def _read(self, positions: np.ndarray, ends: np.ndarray, samples: np.ndarray) -> np.ndarray:
        """int32 ids at store ``positions`` (each at or after its sample's start), each kept
        inside its sample (``ends``: its last id, broadcast): a position past it (padding)
        reads the sample's last id, which the caller overwrites, so no byte beyond the rows'
        samples is fetched. ``samples`` (broadcast): the sample of each position, so a store
        read in place needs no search for it."""
        np.minimum(positions, ends, out=positions)
        return self.store.read_tokens(positions, samples=samples).astype(np.int32)

    def prefetch(self, first: int, count: int) -> None:
        """Fetch the samples of steps ``[first, first + count)`` into the block cache on the
        process' prefetch threads (a store read in place; a memory map needs nothing). Whole
        samples: a sample is what an in-place store reads and checks. The batches do not
        change."""
        count = min(count, self.num_steps - first)
        if count <= 0 or first < 0 or not self.store.reads_ahead_now:
            return
        self.store.prefetch_samples(self._step_samples(first, count))

    def _full_tokens(
        self, samples: np.ndarray, starts: np.ndarray, lengths: np.ndarray, k: np.ndarray
    ) -> np.ndarray:
        """``full[k]`` for ``samples`` at ``starts`` of ``lengths`` stored ids (k=0 is BOS)."""
        tokens = self._read(starts + np.maximum(k - 1, 0), starts + lengths - 1, samples)
        return np.where(k == 0, self.bos_id, tokens)


class HostBatcher(_Gather):
    """Builds the numpy batch of any step; ``make_host_dataset`` wraps it in ``tf.data``."""

    keys = _PLAIN_KEYS

    def __init__(
        self,
        store: TokenStore,
        rows: np.ndarray,
        seq_len: int,
        *,
        pack: bool = False,
        overflow: str = "truncate",
        seed: int = 0,
        epoch: int = 0,
    ) -> None:
        if pack:
            raise InvalidArgumentError(
                "pack=True: per-host rows cannot be packed without dropping or host-dependent "
                "batches; pack the epoch's global stream with highnoon.data.pack_epoch and feed "
                "it with make_packed_host_dataset (docs/design.md, 'Packing')"
            )
        super().__init__(store, seq_len, overflow, seed, epoch)
        if isinstance(rows, StepRows):
            self._steps = check_int("rows.num_steps", rows.num_steps, minimum=0)
            self._width = check_int("rows.rows_per_step", rows.rows_per_step, minimum=1)
            self._rows_at = rows.rows_at
        else:
            table = self._checked(rows).copy()  # the caller's array may change later
            self._steps, self._width = table.shape
            self._rows_at = lambda first, last: table[first:last]
        self._arange = np.arange(self.seq_len + 1)

    def _checked(self, rows: Any) -> np.ndarray:
        return check_sample_indices(
            "rows",
            rows,
            self.store.num_samples,
            ndim=2,
            shape="[steps, rows_per_step]",
            owner="the store",
        )

    def _rows(self, first: int, last: int) -> np.ndarray:
        """Rows of steps ``[first, last)``, checked (a ``StepRows`` is asked only for these)."""
        rows = self._checked(self._rows_at(first, last))
        if rows.shape != (last - first, self._width):
            raise InvalidArgumentError(
                f"rows of steps [{first}, {last}) have shape {rows.shape}; expected "
                f"{(last - first, self._width)}"
            )
        return rows

    @property
    def num_steps(self) -> int:
        return int(self._steps)

    @property
    def batch_rows(self) -> int:
        return int(self._width)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """The batch of ``step`` as int32 numpy arrays ``[batch_rows, seq_len]``."""
        step = check_int("step", step, minimum=0, maximum=self.num_steps - 1)
        return self._plain(self._rows(step, step + 1)[0])

    def batches(self, first: int, count: int) -> dict[str, np.ndarray]:
        """Steps ``[first, first + count)`` stacked: arrays ``[count, batch_rows, seq_len]``,
        gathered in one vectorised pass."""
        _check_span(first, count, self.num_steps)
        flat = self._plain(self._rows(first, first + count).reshape(-1))
        shape = (count, self.batch_rows, self.seq_len)
        return {key: value.reshape(shape) for key, value in flat.items()}

    def _step_samples(self, first: int, count: int) -> np.ndarray:
        """The samples of steps ``[first, first + count)`` (``prefetch``)."""
        return self._rows(first, first + count).reshape(-1)

    def _plain(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Unpacked rows for the sample indices ``idx`` (one row each)."""
        starts, stored = self.store.sample_bounds(idx)
        full_len = stored + 1
        w = self._windows(idx, full_len)
        t1 = self.seq_len + 1
        row_len = np.minimum(full_len - w, t1)
        k = w[:, None] + self._arange
        positions = starts[:, None] - 1 + k
        positions[:, 0] = np.maximum(positions[:, 0], starts)  # only k = 0 (BOS) is before it
        row = self._read(positions, (starts + stored - 1)[:, None], idx[:, None])
        row[:, 0] = np.where(w == 0, self.bos_id, row[:, 0])
        valid = self._arange < row_len[:, None]
        row[~valid] = self.pad_id
        return {
            "inputs": row[:, :-1],
            "targets": row[:, 1:],
            "loss_mask": valid[:, 1:].astype(np.int32),
        }


class PackedBatcher(_Gather):
    """This host's rows of a ``PackedEpoch`` or a ``PackedStream`` (packed window by window
    as its steps are asked for), step by step (``make_packed_host_dataset``). A stream's steps
    past its end (its ``max_steps`` bound the range) are empty rows, never trained."""

    keys = _PACKED_KEYS

    def __init__(
        self,
        store: TokenStore,
        packed: PackedEpoch | PackedStream,
        *,
        host_id: int = 0,
        num_hosts: int = 1,
        overflow: str = "truncate",
        seed: int = 0,
        epoch: int = 0,
    ) -> None:
        if not isinstance(packed, PackedEpoch | PackedStream):
            raise InvalidArgumentTypeError(
                f"packed must be a PackedEpoch (highnoon.data.pack_epoch) or a PackedStream, "
                f"got {type(packed).__name__}"
            )
        super().__init__(store, packed.seq_len, overflow, seed, epoch)
        whole = isinstance(packed, PackedEpoch)
        if whole and packed.sample.size and packed.sample.max() >= store.num_samples:
            raise InvalidArgumentError(
                f"the packing holds sample index {packed.sample.max()}, but the store has "
                f"{store.num_samples} samples; pack with this store's lengths"
            )
        self.packed = packed
        self.num_hosts = check_positive_int("num_hosts", num_hosts)
        self.host_id = check_int("host_id", host_id, minimum=0, maximum=self.num_hosts - 1)
        if packed.rows_per_step % self.num_hosts:
            raise InvalidArgumentError(
                f"rows_per_step={packed.rows_per_step} does not divide by "
                f"num_hosts={self.num_hosts}; the packed rows of a step are split evenly among "
                "hosts"
            )
        self.batch_rows = packed.rows_per_step // self.num_hosts
        self._num_steps = packed.num_steps if whole else packed.max_steps

    @property
    def num_steps(self) -> int:
        return self._num_steps

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This host's rows of ``step`` as int32 numpy arrays ``[batch_rows, seq_len]``."""
        step = check_int("step", step, minimum=0, maximum=self.num_steps - 1)
        return {key: value[0] for key, value in self.batches(step, 1).items()}

    def _segments(self, first: int, count: int) -> tuple[Any, ...]:
        """(the steps' rows as a packing of their own, this host's rows of it, each row's
        first segment, each segment's output row, segment ids) of steps ``[first, first +
        count)``; rows past the end are empty."""
        per_host, r = self.batch_rows, self.packed.rows_per_step
        p = self.packed.row_table(first * r, (first + count) * r)  # every host's rows
        steps = np.arange(count, dtype=np.int64)
        rows = steps[:, None] * r + self.host_id * per_host + np.arange(per_host)
        rows = np.minimum(rows.reshape(-1), p.num_rows)
        lo = p.row_ptr[rows]
        hi = p.row_ptr[np.minimum(rows + 1, p.num_rows)]
        count_in_row = hi - lo
        out_row = np.repeat(np.arange(rows.size), count_in_row)
        seg = np.arange(out_row.size) + np.repeat(lo - (np.cumsum(count_in_row) - count_in_row),
                                                  count_in_row)  # fmt: skip
        return p, rows, lo, out_row, seg

    def _step_samples(self, first: int, count: int) -> np.ndarray:
        """The samples of the segments of steps ``[first, first + count)`` (``prefetch``)."""
        p, *_, seg = self._segments(first, count)
        return p.sample[seg]

    def batches(self, first: int, count: int) -> dict[str, np.ndarray]:
        """Steps ``[first, first + count)`` stacked: arrays ``[count, batch_rows, seq_len]``."""
        _check_span(first, count, self.num_steps)
        per_host = self.batch_rows
        p, rows, lo, out_row, seg = self._segments(first, count)
        shape = (rows.size, self.seq_len)
        out = {key: np.zeros(shape, dtype=np.int32) for key in _PACKED_KEYS}
        out["inputs"][:] = self.pad_id
        out["targets"][:] = self.pad_id
        if seg.size:
            idx, lengths = p.sample[seg], p.length[seg].astype(np.int64)
            starts, stored = self.store.sample_bounds(idx)
            full_len = stored + 1
            w = self._windows(idx, full_len)
            seg_start = np.cumsum(lengths) - lengths
            local = np.arange(int(lengths.sum())) - np.repeat(seg_start, lengths)
            r = np.repeat(out_row, lengths)
            c = np.repeat(p.column[seg], lengths) + local
            k = np.repeat(w, lengths) + local
            s, n = np.repeat(starts, lengths), np.repeat(stored, lengths)
            which = np.repeat(idx, lengths)
            out["inputs"][r, c] = self._full_tokens(which, s, n, k)
            out["targets"][r, c] = self._full_tokens(which, s, n, k + 1)
            out["loss_mask"][r, c] = 1
            out["positions"][r, c] = local
            out["segment_ids"][r, c] = np.repeat(seg - lo[out_row] + 1, lengths)
        return {key: value.reshape(count, per_host, self.seq_len) for key, value in out.items()}


def _check_span(first: int, count: int, num_steps: int) -> None:
    if not 0 <= first < first + count <= num_steps:
        raise InvalidArgumentError(f"steps [{first}, {first + count}) are outside [0, {num_steps})")


def packing_plan(packed: PackedEpoch, step: int) -> list[tuple[int, int, int, int]]:
    """Where the samples of ``step`` sit: ``(sample index, row within the step, column, segment
    length)``, row by row (``PackedEpoch.plan``). Every sample of the stream is in exactly one
    step's plan."""
    return packed.plan(step)


def make_host_dataset(
    store: TokenStore,
    rows: np.ndarray | StepRows,
    seq_len: int,
    *,
    start_step: int = 0,
    pack: bool = False,
    overflow: str = "truncate",
    seed: int = 0,
    epoch: int = 0,
    prefetch: int | None = None,
    num_parallel_calls: int | None = None,
    steps_per_call: int | None = None,
) -> Any:
    """A ``tf.data.Dataset`` of this host's unpacked batches from ``start_step`` on (module
    docstring). ``pack=True`` is an error: use ``make_packed_host_dataset``.

    ``prefetch`` defaults to ``tf.data.AUTOTUNE``; ``num_parallel_calls`` (default AUTOTUNE) runs
    several gathers at once, the output order stays deterministic. ``steps_per_call`` steps are
    built per Python call (default: about 64K tokens' worth, 256K for a store read in place)
    and unbatched again.
    """
    batcher = HostBatcher(
        store, rows, seq_len, pack=pack, overflow=overflow, seed=seed, epoch=epoch
    )
    return _dataset(batcher, start_step, prefetch, num_parallel_calls, steps_per_call)


def make_packed_host_dataset(
    store: TokenStore,
    packed: PackedEpoch | PackedStream,
    *,
    host_id: int = 0,
    num_hosts: int = 1,
    start_step: int = 0,
    overflow: str = "truncate",
    seed: int = 0,
    epoch: int = 0,
    prefetch: int | None = None,
    num_parallel_calls: int | None = None,
    steps_per_call: int | None = None,
) -> Any:
    """A ``tf.data.Dataset`` of host ``host_id``'s rows of every step of ``packed`` from
    ``start_step`` on: dicts of int32 ``[rows_per_step / num_hosts, seq_len]`` with
    ``positions`` and ``segment_ids`` (module docstring). Options as ``make_host_dataset``."""
    batcher = PackedBatcher(
        store, packed, host_id=host_id, num_hosts=num_hosts, overflow=overflow, seed=seed,
        epoch=epoch,
    )  # fmt: skip
    return _dataset(batcher, start_step, prefetch, num_parallel_calls, steps_per_call)


def _dataset(
    batcher: HostBatcher | PackedBatcher,
    start_step: int,
    prefetch: int | None,
    num_parallel_calls: int | None,
    steps_per_call: int | None,
) -> Any:
    import tensorflow as tf

    start_step = check_int("start_step", start_step, minimum=0, maximum=batcher.num_steps)
    keys = batcher.keys
    shape = (batcher.batch_rows, batcher.seq_len)
    # Several steps per Python call amortise the per-call overhead of tf.numpy_function; the
    # chunks are unbatched again, so elements are still single steps in order.
    tokens = _TOKENS_PER_CALL_IN_PLACE if batcher.store.reads_in_place else _TOKENS_PER_CALL
    per_call = int(steps_per_call or max(1, tokens // (shape[0] * shape[1])))
    end = batcher.num_steps

    ahead = batcher.store.reads_ahead  # read the next call's bytes while this one trains

    def produce(first: np.ndarray) -> list[np.ndarray]:
        if ahead:  # past the calls the parallel map may be building already
            batcher.prefetch(int(first) + _CALLS_AHEAD * per_call, per_call)
        count = min(int(first) + per_call, end) - int(first)
        stacked = batcher.batches(int(first), count)
        return [stacked[key] for key in keys]

    if ahead:
        for call in range(_CALLS_AHEAD):
            batcher.prefetch(start_step + call * per_call, per_call)

    def to_dict(first: Any) -> dict[str, Any]:
        values = tf.numpy_function(produce, [first], [tf.int32] * len(keys), stateful=False)
        return {key: tf.ensure_shape(v, (None, *shape)) for key, v in zip(keys, values)}

    autotune = tf.data.AUTOTUNE
    dataset = tf.data.Dataset.range(start_step, end, per_call)
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
