"""Packing that drops nothing: an epoch's sample stream -> rows -> steps of a fixed row count.

numpy only, lengths only (docs/design.md, "Packing"). Every host computes the same packing of
the *global* stream, so what global step ``k`` trains on does not depend on the host count.

**Segments.** A stored sample of ``L`` tokens (ending with EOS) becomes one segment of
``min(L, seq_len)`` input/target pairs: ``[BOS] + sample`` after the overflow rule (``truncate``
or ``window``, ``highnoon.data.pipeline``) gives at most ``seq_len + 1`` tokens. A segment never
spans two rows and no sample is dropped; what the overflow rule cuts off a long sample is not
trained, exactly as without packing.

**Rows.** The stream (sample indices in visiting order) is cut into windows of ``window``
consecutive samples (default ``packing_window``: at least 512 samples and about 64 rows' worth
of tokens); each window is packed by first-fit decreasing (FFD): samples by decreasing segment
length, ties to the earlier stream position, each into the first row with room (at most 11/9 of
the optimal row count + 6/9, Dosa 2007). Windows keep the packing local to the stream (a sample
is trained near where the curriculum put it) and let all windows of an epoch be packed in one
vectorised pass. A window's rows are then ordered by their earliest sample's stream position
and, inside a row, segments are laid out in stream order; the epoch's rows are the windows' rows
back to back. With every sample exactly ``seq_len`` long, row ``r`` is stream sample ``r``:
packing changes nothing.

**Steps.** Step ``k`` of the epoch is rows ``[k * R, (k + 1) * R)``, ``R = rows_per_step`` (the
global rows of one optimizer step: batch size x accumulation); the last step's missing rows are
empty (loss mask 0). Host ``h`` of ``H`` feeds rows ``[h * R / H, (h + 1) * R / H)`` of each step.
Segments are separated by ``segment_ids`` (attention) and ``positions`` restart per segment, so
the loss (token sum / global token count) does not depend on which row a sample sits in.

**Cost.** One FFD pass over an epoch costs ``O(samples x rows per window)`` numpy element
operations in ``window`` vectorised iterations; ``PackedEpoch`` keeps 16 bytes per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from highnoon.utils.validation import (
    InvalidArgumentError,
    check_int,
    check_positive_int,
    check_sample_indices,
)

# FFD windows: at least MIN_WINDOW samples and about ROWS_PER_WINDOW rows' worth of tokens, so
# that short samples at a long seq_len still see enough rows to fill; measured on stdlib_docs
# lengths (bench/bench_packing.py --planning-only), more rows per window gain under 1% of fill
# and cost time in proportion.
MIN_WINDOW = 512
ROWS_PER_WINDOW = 64


def stored_lengths(store) -> np.ndarray:
    """Tokens of every stored sample (EOS included), int64 ``[num_samples]``: lengths only, no
    token is read."""
    return np.asarray(store.features.lengths, dtype=np.int64)


def segment_lengths(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """Input/target pairs a sample of ``lengths`` stored tokens gives at ``seq_len``:
    ``min(length, seq_len)`` (the overflow rules keep at most ``seq_len`` pairs)."""
    seq_len = check_positive_int("seq_len", seq_len)
    return np.minimum(np.asarray(lengths, dtype=np.int64), seq_len)


def _check_stream(stream: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    stream = check_sample_indices(
        "stream", stream, lengths.size, shape="of sample indices", owner="lengths"
    )
    if stream.size and lengths[stream].min() < 1:
        raise InvalidArgumentError(
            "every streamed sample must have at least one token (stored with EOS)"
        )
    return stream


def packing_window(segments: np.ndarray, seq_len: int) -> int:
    """The default window for these segment lengths: ``max(MIN_WINDOW, ceil(ROWS_PER_WINDOW x
    seq_len / mean segment length))`` samples, in integer arithmetic (the same on every host)."""
    segments = np.asarray(segments, dtype=np.int64)
    total = int(segments.sum())
    if total == 0:
        return MIN_WINDOW
    return max(MIN_WINDOW, -(-ROWS_PER_WINDOW * int(seq_len) * segments.size // total))


def first_fit_decreasing(
    segments: np.ndarray, seq_len: int, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """FFD of consecutive windows of ``segments`` (lengths in ``[1, seq_len]``, stream order).

    Returns ``(window_row, rows_per_window)``: every sample's row within its window (rows
    numbered in the order FFD opens them) and every window's row count.

    Exactly FFD, computed for all windows at once. Samples longer than ``seq_len / 2`` cannot
    share a row with each other, so FFD opens one row per such sample, in order: they are placed
    without a search (full-length ones get rows no other sample can enter, so those rows leave
    the search too). The remaining samples are placed longest first, iteration ``j`` placing the
    ``j``-th of every window: the Python loop runs at most ``window`` times.
    """
    segments = np.asarray(segments, dtype=np.int64)
    window = check_positive_int("window", window)
    n = segments.size
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if segments.min() < 1 or segments.max() > seq_len:
        raise InvalidArgumentError(f"segment lengths must lie in [1, seq_len={seq_len}]")
    window = min(window, n)  # one window of everything either way
    windows = -(-n // window)
    padded = np.zeros(windows * window, dtype=np.int64)  # 0: no sample (the last window's tail)
    padded[:n] = segments
    grid = padded.reshape(windows, window)
    # Decreasing length, ties to the earlier stream position (a stable sort of -length).
    order = np.argsort(-grid, axis=1, kind="stable")
    sizes = np.take_along_axis(grid, order, axis=1)
    full = (sizes == seq_len).sum(axis=1)  # rows [0, full): one full-length sample each
    large = (2 * sizes > seq_len).sum(axis=1)  # rows [full, large): one sample > seq_len / 2
    rows = np.zeros_like(sizes)
    rank = np.broadcast_to(np.arange(window), sizes.shape)
    rows[:] = np.where(rank < large[:, None], rank, 0)
    # The search covers rows from `full` on: column k of `remaining` is row full + k.
    dtype = np.int16 if seq_len < 2**15 else np.int32 if seq_len < 2**31 else np.int64
    open_large = large - full
    rest_tokens = grid.sum(axis=1) - full * seq_len
    capacity = max(int(open_large.max()), int(-(-rest_tokens.max() // seq_len))) + 2
    remaining = np.full((windows, capacity), seq_len, dtype=dtype)
    k = np.arange(capacity)
    ahead = k[None, :] < open_large[:, None]
    taken = np.take_along_axis(sizes, np.minimum(full[:, None] + k, window - 1), axis=1)
    remaining[ahead] -= taken[ahead].astype(dtype)
    small = window - large  # samples <= seq_len / 2 (and the last window's empty tail)
    every = np.arange(windows)
    for j in range(int(small.max())):
        at = np.minimum(large + j, window - 1)
        size = np.where(j < small, sizes[every, at], 0)  # 0 fits anywhere, changes nothing
        fits = remaining >= size[:, None].astype(dtype)
        row = fits.argmax(axis=1)
        none = ~fits[every, row]
        if none.any():  # every row is too full: add rows; the first new one takes the sample
            spare = np.full((windows, capacity), seq_len, dtype=dtype)
            remaining = np.concatenate([remaining, spare], axis=1)
            row[none] = capacity
            capacity *= 2
        remaining[every, row] -= size.astype(dtype)
        live = j < small
        rows[every[live], at[live]] = full[live] + row[live]
    used = full + (remaining < seq_len).sum(axis=1)  # first fit opens rows in index order
    window_row = np.empty_like(rows)
    np.put_along_axis(window_row, order, rows, axis=1)
    return window_row.reshape(-1)[:n], used.astype(np.int64)


def packed_row_count(
    stream: np.ndarray, lengths: np.ndarray, seq_len: int, window: int | None = None
) -> int:
    """Rows the packing of ``stream`` needs (what ``pack_epoch`` would produce), e.g. to plan an
    epoch's steps ahead: ``ceil(rows / rows_per_step)``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    stream = _check_stream(stream, lengths)
    seg = segment_lengths(lengths[stream], seq_len)
    window = packing_window(seg, seq_len) if window is None else window
    _, used = first_fit_decreasing(seg, seq_len, window)
    return int(used.sum())


@dataclass(frozen=True)
class StepCounts:
    """What the steps of an epoch hold, per step (int64 arrays ``[steps]``), the same on every
    host: ``samples`` trained, ``tokens`` real target tokens (the loss-mask sum), ``slots`` token
    positions computed (rows x seq_len, padding included)."""

    samples: np.ndarray
    tokens: np.ndarray
    slots: np.ndarray

    @property
    def padding_fraction(self) -> np.ndarray:
        """Per step: the share of computed positions that are padding."""
        return 1.0 - self.tokens / np.maximum(self.slots, 1)

    def total(self, first: int = 0, last: int | None = None) -> dict[str, int | float]:
        """Sums over steps ``[first, last)``: samples, tokens, slots and the padding fraction."""
        samples = int(self.samples[first:last].sum())
        tokens = int(self.tokens[first:last].sum())
        slots = int(self.slots[first:last].sum())
        return {
            "samples": samples,
            "tokens": tokens,
            "slots": slots,
            "padding_fraction": 1.0 - tokens / slots if slots else 0.0,
        }


def batch_counts(table: np.ndarray, lengths: np.ndarray, seq_len: int) -> StepCounts:
    """Counts of unpacked global batches ``table`` ``[steps, G]`` (one sample per row)."""
    table = np.asarray(table, dtype=np.int64)
    if table.ndim != 2:
        raise InvalidArgumentError(
            f"table must be 2-D [steps, global_batch], got shape {table.shape}"
        )
    return row_counts(np.asarray(lengths, dtype=np.int64)[table], seq_len)


def row_counts(row_lengths: np.ndarray, seq_len: int) -> StepCounts:
    """Counts of unpacked global batches given their rows' stored lengths ``[steps, G]`` (one
    sample per row): what ``batch_counts`` computes, from just the rows asked about."""
    row_lengths = np.asarray(row_lengths, dtype=np.int64)
    tokens = segment_lengths(row_lengths, seq_len).sum(axis=1)
    steps, batch = row_lengths.shape
    return StepCounts(
        samples=np.full(steps, batch, dtype=np.int64),
        tokens=tokens.astype(np.int64),
        slots=np.full(steps, batch * int(seq_len), dtype=np.int64),
    )


@dataclass(frozen=True)
class PackedEpoch:
    """The packing of one epoch's stream (module docstring). Segments are held row by row, in
    column order: segment ``i`` is sample ``sample[i]`` (int64) at column ``column[i]`` with
    ``length[i]`` pairs (int32); row ``r`` holds segments ``[row_ptr[r], row_ptr[r + 1])``.
    16 bytes per sample and 8 per row."""

    seq_len: int
    rows_per_step: int
    sample: np.ndarray
    column: np.ndarray
    length: np.ndarray
    row_ptr: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.row_ptr.size - 1)

    @property
    def num_steps(self) -> int:
        return -(-self.num_rows // self.rows_per_step)

    @property
    def num_samples(self) -> int:
        return int(self.sample.size)

    def host_rows(self, num_hosts: int) -> int:
        """Rows host ``h`` feeds per step: ``rows_per_step / num_hosts``."""
        num_hosts = check_positive_int("num_hosts", num_hosts)
        if self.rows_per_step % num_hosts:
            raise InvalidArgumentError(
                f"rows_per_step={self.rows_per_step} does not divide by num_hosts={num_hosts}; "
                "the packed rows of a step are split evenly among hosts"
            )
        return self.rows_per_step // num_hosts

    def plan(self, step: int) -> list[tuple[int, int, int, int]]:
        """``(sample index, row within the step, column, segment length)`` of every sample of
        ``step`` (all hosts), in row order."""
        step = check_int("step", step, minimum=0, maximum=self.num_steps - 1)
        first = min(step * self.rows_per_step, self.num_rows)
        last = min(first + self.rows_per_step, self.num_rows)
        lo, hi = int(self.row_ptr[first]), int(self.row_ptr[last])
        rows = np.repeat(np.arange(last - first), np.diff(self.row_ptr[first : last + 1]))
        return [
            (int(s), int(r), int(c), int(n))
            for s, r, c, n in zip(self.sample[lo:hi], rows, self.column[lo:hi], self.length[lo:hi])
        ]

    def step_samples(self, first: int, last: int) -> np.ndarray:
        """Sample indices trained in steps ``[first, last)``, in row order."""
        lo = self.row_ptr[min(first * self.rows_per_step, self.num_rows)]
        hi = self.row_ptr[min(last * self.rows_per_step, self.num_rows)]
        return self.sample[lo:hi]

    def counts(self) -> StepCounts:
        """Per-step samples, real tokens and computed slots (``rows_per_step x seq_len``)."""
        steps = self.num_steps
        bounds = np.minimum(np.arange(steps + 1) * self.rows_per_step, self.num_rows)
        seg_bounds = self.row_ptr[bounds]
        cum_tokens = np.concatenate([[0], np.cumsum(self.length, dtype=np.int64)])
        return StepCounts(
            samples=np.diff(seg_bounds).astype(np.int64),
            tokens=np.diff(cum_tokens[seg_bounds]).astype(np.int64),
            slots=np.full(steps, self.rows_per_step * self.seq_len, dtype=np.int64),
        )


def pack_epoch(
    stream: np.ndarray,
    lengths: np.ndarray,
    seq_len: int,
    rows_per_step: int,
    *,
    window: int | None = None,
) -> PackedEpoch:
    """Pack the global ``stream`` (sample indices in visiting order; ``lengths[i]`` = stored
    tokens of sample ``i``, e.g. ``stored_lengths(store)``) into steps of ``rows_per_step`` rows
    of ``seq_len`` (module docstring). Deterministic: a function of its arguments only."""
    lengths = np.asarray(lengths, dtype=np.int64)
    stream = _check_stream(stream, lengths)
    seq_len = check_positive_int("seq_len", seq_len)
    rows_per_step = check_positive_int("rows_per_step", rows_per_step)
    seg = segment_lengths(lengths[stream], seq_len)
    window = packing_window(seg, seq_len) if window is None else window
    window = check_positive_int("window", window)
    window_row, used = first_fit_decreasing(seg, seq_len, window)
    n = stream.size
    position = np.arange(n, dtype=np.int64)
    which = position // window
    # Row key inside its window: the earliest stream position among the row's samples. Rows of
    # a window are ordered by it; windows follow each other.
    row_base = np.concatenate([[0], np.cumsum(used)])
    local = row_base[which] + window_row  # provisional global row id
    first_pos = np.full(int(row_base[-1]), n, dtype=np.int64)
    np.minimum.at(first_pos, local, position)
    rank = np.empty_like(first_pos)
    # Windows are contiguous in both ids and positions, so one global sort orders both.
    rank[np.argsort(first_pos, kind="stable")] = np.arange(first_pos.size)
    row_of = rank[local]
    order = np.lexsort((position, row_of))  # by row, then stream position
    row = row_of[order]
    length = seg[order]
    row_ptr = np.zeros(first_pos.size + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=first_pos.size), out=row_ptr[1:])
    ends = np.cumsum(length)
    column = ends - length - (np.concatenate([[0], ends])[row_ptr[:-1]])[row]
    return PackedEpoch(
        seq_len=seq_len,
        rows_per_step=rows_per_step,
        sample=stream[order],
        column=column.astype(np.int32),
        length=length.astype(np.int32),
        row_ptr=row_ptr,
    )
