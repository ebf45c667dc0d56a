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

**On demand.** A run does not pack whole epochs (docs/design.md, "Packing on demand"):
``PackedStream`` packs the windows of the rows asked for, from a ``PackingCursor`` on, with
exactly ``pack_epoch``'s rows; the window comes from the store's figures
(``store_packing_window``, O(1)) and the steps of an epoch, known only when its stream ends, are
estimated for the schedule from a few windows (``estimate_packed_rows``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
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
# PackedStream: windows packed per FFD pass at least (a pass costs about as much for one window
# as for many: its loop runs once per sample of a window) and at most; packed windows it keeps
# (in samples) for the batches asked about again.
GROUP_WINDOWS = 16
MAX_GROUP_WINDOWS = 1024
CACHE_SAMPLES = 1 << 22


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


def _window_for(samples: int, tokens: int, seq_len: int) -> int:
    """``max(MIN_WINDOW, ceil(ROWS_PER_WINDOW x seq_len x samples / tokens))``, integers only."""
    if tokens <= 0:
        return MIN_WINDOW
    return max(MIN_WINDOW, -(-ROWS_PER_WINDOW * int(seq_len) * int(samples) // int(tokens)))


def packing_window(segments: np.ndarray, seq_len: int) -> int:
    """The window for these segment lengths (``pack_epoch``'s default): ``max(MIN_WINDOW,
    ceil(ROWS_PER_WINDOW x seq_len / mean segment length))`` samples, in integer arithmetic (the
    same on every host). O(len(segments)): a stage uses ``store_packing_window``."""
    segments = np.asarray(segments, dtype=np.int64)
    return _window_for(segments.size, int(segments.sum()), seq_len)


def store_packing_window(num_samples: int, num_tokens: int, seq_len: int) -> int:
    """The window of a stage's packing, in O(1) from the store's figures: ``max(MIN_WINDOW,
    ceil(ROWS_PER_WINDOW x seq_len / mean stored length))``. The stored mean (EOS included, not
    capped at ``seq_len``) stands in for the epoch's mean segment length, which only the whole
    epoch's lengths would give; it never makes a window larger than the epoch's mean would."""
    num_samples = check_int("num_samples", num_samples, minimum=0)
    num_tokens = check_int("num_tokens", num_tokens, minimum=0)
    return _window_for(num_samples, num_tokens, check_positive_int("seq_len", seq_len))


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
        return count_totals(
            int(self.samples[first:last].sum()),
            int(self.tokens[first:last].sum()),
            int(self.slots[first:last].sum()),
        )


def count_totals(samples: int, tokens: int, slots: int) -> dict[str, int | float]:
    """Steps' summed counts as ``StepCounts.total`` reports them, with the padding fraction."""
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

    def row_table(self, first_row: int, last_row: int) -> PackedEpoch:
        """Rows ``[first_row, last_row)`` as a packing of their own (rows renumbered from 0);
        rows past the end are left out (a batcher feeds them empty)."""
        first = min(check_int("first_row", first_row, minimum=0), self.num_rows)
        last = min(check_int("last_row", last_row, minimum=first), self.num_rows)
        lo, hi = int(self.row_ptr[first]), int(self.row_ptr[last])
        return PackedEpoch(
            seq_len=self.seq_len,
            rows_per_step=self.rows_per_step,
            sample=self.sample[lo:hi],
            column=self.column[lo:hi],
            length=self.length[lo:hi],
            row_ptr=self.row_ptr[first : last + 1] - lo,
        )

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


def _pack_segments(
    seg: np.ndarray, seq_len: int, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The packing of segment lengths ``seg`` (stream order) in windows of ``window``:
    ``(order, column, length, row_ptr)``: stream positions row by row in column order, their
    columns and lengths, and each row's first segment (module docstring)."""
    window_row, used = first_fit_decreasing(seg, seq_len, window)
    n = seg.size
    window = min(window, max(n, 1))
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
    return order, column.astype(np.int32), length.astype(np.int32), row_ptr


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
    of ``seq_len`` (module docstring). Deterministic: a function of its arguments only. This
    packs the whole stream in one pass (O(stream)); ``PackedStream`` packs it window by window,
    on demand, with the same result."""
    lengths = np.asarray(lengths, dtype=np.int64)
    stream = _check_stream(stream, lengths)
    seq_len = check_positive_int("seq_len", seq_len)
    rows_per_step = check_positive_int("rows_per_step", rows_per_step)
    seg = segment_lengths(lengths[stream], seq_len)
    window = packing_window(seg, seq_len) if window is None else window
    window = check_positive_int("window", window)
    order, column, length, row_ptr = _pack_segments(seg, seq_len, window)
    return PackedEpoch(
        seq_len=seq_len,
        rows_per_step=rows_per_step,
        sample=stream[order],
        column=column,
        length=length,
        row_ptr=row_ptr,
    )


@dataclass(frozen=True)
class PackingCursor:
    """Where a packed epoch stands at epoch step ``step``: window ``window`` begins at the
    epoch's row ``row`` and holds row ``step x rows_per_step``. Past the stream's end,
    ``window`` is the window count and ``row`` the epoch's row count. Saved with the data
    position, so a resume (on any host count) packs no window before ``window``."""

    window: int = 0
    row: int = 0
    step: int = 0

    def to_json(self) -> dict[str, int]:
        return {"window": self.window, "row": self.row, "step": self.step}

    @classmethod
    def from_json(cls, value: dict[str, int]) -> PackingCursor:
        return cls(int(value["window"]), int(value["row"]), int(value["step"]))


class PackedStream:
    """A packed epoch, packed window by window as its rows are asked for (docs/design.md,
    "Packing"): the rows of ``pack_epoch(stream, lengths, seq_len, rows_per_step,
    window=window)``, at the cost of the windows asked about.

    Window ``w`` is stream positions ``[w * window, (w + 1) * window)``; its rows are a
    function of those positions' samples only, so ``stream_range(first, last)`` (store indices
    of stream positions) and ``lengths_at(indices)`` (their stored lengths) are asked for the
    windows packed and nothing else (``lengths_at`` None: ``stream_range`` gives the pair,
    ``stream_items``). What is not known until the stream is packed up to a row is
    where that row's window begins: windows are packed in order from ``cursor`` on (their row
    counts kept), and ``cursor_at(step)`` moves the start forward, forgetting the windows
    before it. The epoch's row count, hence its steps, is known once the last window is packed.
    Thread-safe (tf.data builds several calls' batches at once).
    """

    def __init__(
        self,
        size: int,
        stream_range: StreamRange,
        lengths_at: Callable[[np.ndarray], np.ndarray] | None,
        seq_len: int,
        rows_per_step: int,
        window: int,
        *,
        cursor: PackingCursor | None = None,
    ) -> None:
        self.size = check_int("size", size, minimum=0)
        self.seq_len = check_positive_int("seq_len", seq_len)
        self.rows_per_step = check_positive_int("rows_per_step", rows_per_step)
        self.window = check_positive_int("window", window)
        self.num_windows = -(-self.size // self.window)
        cursor = PackingCursor() if cursor is None else cursor
        check_int("cursor.window", cursor.window, minimum=0, maximum=self.num_windows)
        check_int("cursor.row", cursor.row, minimum=0, maximum=self.size)
        check_int("cursor.step", cursor.step, minimum=0)
        self._stream_range = stream_range
        self._lengths_at = lengths_at
        self._base = cursor.window  # the first window whose first row is known
        self._first_rows = np.array([cursor.row], dtype=np.int64)  # of windows base, base+1, ...
        self._known = 1  # entries of _first_rows in use: windows [base, base + known - 1) packed
        self._tables: OrderedDict[int, PackedEpoch] = OrderedDict()
        self._cached = 0  # samples held in _tables
        self._lock = threading.RLock()

    @property
    def max_steps(self) -> int:
        """Steps the epoch has at most (a row holds at least one sample): the range a batcher
        serves; steps past the real end are empty and never trained."""
        return -(-self.size // self.rows_per_step)

    # -- windows -------------------------------------------------------------------------
    @property
    def _frontier(self) -> int:
        """The first window not packed yet (its first row is known)."""
        return self._base + self._known - 1

    def _pack(self, first: int, last: int) -> list[PackedEpoch]:
        """Windows ``[first, last)`` packed in one FFD pass, each as its own ``PackedEpoch``."""
        w = self.window
        lo, hi = first * w, min(last * w, self.size)
        samples, lengths = stream_items(self._stream_range, self._lengths_at, lo, hi)
        order, column, length, row_ptr = _pack_segments(
            segment_lengths(lengths, self.seq_len), self.seq_len, w
        )
        # A row's first segment is its earliest position, so it names the row's window.
        row_window = order[row_ptr[:-1]] // w
        bounds = np.searchsorted(row_window, np.arange(last - first + 1))
        tables = []
        for k in range(last - first):
            r0, r1 = int(bounds[k]), int(bounds[k + 1])
            s0, s1 = int(row_ptr[r0]), int(row_ptr[r1])
            tables.append(
                PackedEpoch(
                    seq_len=self.seq_len,
                    rows_per_step=self.rows_per_step,
                    sample=samples[order[s0:s1]],
                    column=column[s0:s1],
                    length=length[s0:s1],
                    row_ptr=row_ptr[r0 : r1 + 1] - s0,
                )
            )
        return tables

    def _keep(self, first: int, tables: list[PackedEpoch]) -> None:
        """Cache freshly packed windows, forgetting the least recently used beyond
        ``CACHE_SAMPLES`` (but never the ones just packed)."""
        for k, table in enumerate(tables):
            self._tables[first + k] = table
            self._cached += table.num_samples
        while self._cached > CACHE_SAMPLES and len(self._tables) > len(tables):
            _, old = self._tables.popitem(last=False)
            self._cached -= old.num_samples

    def _extend(self, windows: int) -> None:
        """Pack the next ``windows`` windows past the frontier (fewer at the stream's end)."""
        first = self._frontier
        last = min(first + windows, self.num_windows)
        tables = self._pack(first, last)
        rows = np.cumsum([t.num_rows for t in tables], dtype=np.int64)
        needed = self._known + rows.size
        if needed > self._first_rows.size:
            grown = np.zeros(max(needed, 2 * self._first_rows.size), dtype=np.int64)
            grown[: self._known] = self._first_rows[: self._known]
            self._first_rows = grown
        self._first_rows[self._known : needed] = self._first_rows[self._known - 1] + rows
        self._known = needed
        self._keep(first, tables)

    def _table(self, w: int) -> PackedEpoch:
        """Window ``w`` (packed before; packed again if the cache let it go)."""
        table = self._tables.get(w)
        if table is None:
            table = self._pack(w, w + 1)[0]
            self._keep(w, [table])
        else:
            self._tables.move_to_end(w)
        return table

    def _window_of_row(self, row: int) -> int | None:
        """The window holding the epoch's row ``row`` (None: past the stream's end), packing
        windows up to it."""
        start = int(self._first_rows[0])
        if row < start:
            raise InvalidArgumentError(
                f"row {row} lies before the packing cursor (window {self._base} begins at row "
                f"{start}); a packed epoch is read forward from its cursor"
            )
        while row >= self._first_rows[self._known - 1]:
            if self._frontier == self.num_windows:
                return None
            done = self._known - 1
            per_window = (
                (self._first_rows[self._known - 1] - start) / done if done else ROWS_PER_WINDOW
            )
            ahead = row - int(self._first_rows[self._known - 1]) + 1
            want = int(ahead / max(per_window, 1.0)) + 1
            self._extend(min(max(want, GROUP_WINDOWS), MAX_GROUP_WINDOWS))
        index = int(np.searchsorted(self._first_rows[: self._known], row, side="right")) - 1
        return self._base + index

    # -- what a batcher and the loop ask -------------------------------------------------
    def total_rows(self) -> int | None:
        """The epoch's row count once its last window is packed, else None."""
        with self._lock:
            if self._frontier < self.num_windows:
                return None
            return int(self._first_rows[self._known - 1])

    def row_table(self, first_row: int, last_row: int) -> PackedEpoch:
        """The epoch's rows ``[first_row, last_row)`` as a packing of their own (rows
        renumbered from 0; rows past the stream's end left out), packing the windows they
        lie in."""
        first_row = check_int("first_row", first_row, minimum=0)
        last_row = check_int("last_row", last_row, minimum=first_row)
        with self._lock:
            parts, row = [], first_row
            while row < last_row:
                w = self._window_of_row(row)
                if w is None:
                    break
                begin = int(self._first_rows[w - self._base])
                table = self._table(w)
                parts.append(table.row_table(row - begin, last_row - begin))
                row = begin + table.num_rows
        return _concatenate(parts, self.seq_len, self.rows_per_step)

    def steps_available(self, step: int, limit: int) -> int:
        """How many of the epoch steps ``[step, step + limit)`` exist (the epoch ends where
        its stream does): ``limit`` unless the stream ends first. Every host gets the same
        answer (it is a function of the global stream), so no collective is needed."""
        step = check_int("step", step, minimum=0)
        limit = check_int("limit", limit, minimum=0)
        if limit == 0:
            return 0
        with self._lock:
            if self._window_of_row((step + limit - 1) * self.rows_per_step) is not None:
                return limit
            total = int(self._first_rows[self._known - 1])
        return max(0, min(limit, -(-total // self.rows_per_step) - step))

    def cursor_at(self, step: int) -> PackingCursor:
        """The cursor of epoch step ``step`` (its first row's window), forgetting the windows
        before it: the packing restarts from here on a resume."""
        step = check_int("step", step, minimum=0)
        with self._lock:
            w = self._window_of_row(step * self.rows_per_step)
            if w is None:
                w = self._frontier  # past the end: the window count and the epoch's rows
            drop = w - self._base
            self._first_rows = self._first_rows[drop : self._known].copy()
            self._known -= drop
            self._base = w
            for old in [k for k in self._tables if k < w]:
                self._cached -= self._tables.pop(old).num_samples
            return PackingCursor(w, int(self._first_rows[0]), step)

    def step_counts(self, first_step: int, last_step: int) -> StepCounts:
        """Samples, real tokens and slots (``rows_per_step x seq_len``) of the epoch steps
        ``[first_step, last_step)``."""
        first = check_int("first_step", first_step, minimum=0)
        last = check_int("last_step", last_step, minimum=first)
        r = self.rows_per_step
        table = self.row_table(first * r, last * r)
        rows = np.minimum(np.arange(last - first + 1) * r, table.num_rows)
        seg = table.row_ptr[rows]
        cum = np.concatenate([[0], np.cumsum(table.length, dtype=np.int64)])
        return StepCounts(
            samples=np.diff(seg).astype(np.int64),
            tokens=np.diff(cum[seg]).astype(np.int64),
            slots=np.full(last - first, r * self.seq_len, dtype=np.int64),
        )


StreamRange = Callable[[int, int], "np.ndarray | tuple[np.ndarray, np.ndarray]"]


def stream_items(
    stream_range: StreamRange,
    lengths_at: Callable[[np.ndarray], np.ndarray] | None,
    first: int,
    last: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Sample indices and stored lengths (int64) at stream positions ``[first, last)``: from
    ``stream_range`` alone when ``lengths_at`` is None (it returns both: a stage reads lengths
    along its order), else its samples and ``lengths_at`` of them."""
    if lengths_at is None:
        samples, lengths = stream_range(first, last)
    else:
        samples = stream_range(first, last)
        lengths = lengths_at(np.asarray(samples, dtype=np.int64))
    samples = np.asarray(samples, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    if samples.shape != (last - first,) or lengths.shape != samples.shape:
        raise InvalidArgumentError(
            f"stream positions [{first}, {last}) gave {samples.shape} samples and "
            f"{lengths.shape} lengths; expected {last - first} of each"
        )
    if lengths.size and lengths.min() < 1:
        raise InvalidArgumentError(
            "every streamed sample must have at least one token (stored with EOS)"
        )
    return samples, lengths


def _concatenate(parts: list[PackedEpoch], seq_len: int, rows_per_step: int) -> PackedEpoch:
    """Consecutive row ranges as one packing (rows back to back)."""
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return PackedEpoch(
            seq_len, rows_per_step, empty, empty.astype(np.int32), empty.astype(np.int32),
            np.zeros(1, dtype=np.int64),
        )  # fmt: skip
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [p.num_samples for p in parts[:-1]])
    row_ptr = np.concatenate(
        [parts[0].row_ptr[:1]] + [p.row_ptr[1:] + o for p, o in zip(parts, offsets)]
    )
    return PackedEpoch(
        seq_len=seq_len,
        rows_per_step=rows_per_step,
        sample=np.concatenate([p.sample for p in parts]),
        column=np.concatenate([p.column for p in parts]),
        length=np.concatenate([p.length for p in parts]),
        row_ptr=row_ptr,
    )


def estimate_packed_rows(
    size: int,
    stream_range: StreamRange,
    lengths_at: Callable[[np.ndarray], np.ndarray] | None,
    seq_len: int,
    window: int,
    samples: int = 16,
    *,
    span: int | None = None,
) -> int:
    """Rows a stream of ``size`` positions packs into, estimated from ``samples`` of its full
    windows spread evenly over its first ``span`` positions (default all; the window at the
    middle of each of ``samples`` equal parts) and its last, partial window: exact when the
    stream has at most ``samples + 1`` windows, else the sampled windows' mean row count times
    the full windows, rounded up, plus the partial window's rows (estimated in proportion when
    ``span`` stops short of it). Deterministic; costs ``samples`` windows whatever ``size``
    (``lengths_at`` None: ``stream_range`` gives samples and lengths, ``stream_items``)."""
    size = check_int("size", size, minimum=0)
    window = check_positive_int("window", window)
    samples = check_positive_int("samples", samples)
    span = size if span is None else check_int("span", span, minimum=0, maximum=size)
    full, partial = divmod(size, window)
    # the full windows sampled from: those within the span (at least one)
    reach = full if span == size else min(max(span // window, 1), full)
    chosen = (
        np.arange(reach)
        if reach <= samples
        else (2 * np.arange(samples) + 1) * reach // (2 * samples)
    )
    read_tail = bool(partial) and (span == size or full == 0)  # else estimated in proportion
    ranges = [(int(w) * window, (int(w) + 1) * window) for w in chosen]
    if read_tail:
        ranges.append((full * window, size))  # last: the one window shorter than the rest
    if not ranges:
        return 0
    lengths = np.concatenate([stream_items(stream_range, lengths_at, a, b)[1] for a, b in ranges])
    _, used = first_fit_decreasing(segment_lengths(lengths, seq_len), seq_len, window)
    sampled = int(used[: chosen.size].sum())
    if read_tail:
        tail = int(used[-1])
    else:  # the partial window in proportion to the sampled ones
        tail = -(-sampled * partial // (chosen.size * window)) if partial else 0
    if chosen.size == full:  # every full window was packed: exact
        return sampled + tail
    return -(-sampled * full // chosen.size) + tail
