"""Orders evaluated at positions: what the scheduler reads its easy-to-hard order through (numpy
only).

An *order view* is anything with ``len(view)`` and ``view[positions]`` (an int64 array of any
shape -> the sample indices at those positions, same shape; a slice too). A numpy int64 array is
one (the in-memory order); a stored order (``curriculum.stored_order.StoredOrder``) is one; and
these are the others a stage needs, each costing only the positions asked for:

* ``IdentityOrder(n)``: position ``p`` is sample ``p`` (a stage without a curriculum);
* ``PermutedOrder(n, *parts)``: a keyed bijection (``KeyedPermutation``), the ``random``
  strategy's order, stateless;
* ``SplitOrder(order, split, part)``: the training (or held-out) ranks of a ``HeldOutSplit``
  mapped through ``order``: rank ``t`` -> ``order[split.train_positions(t)]``;
* ``ConcatOrder(views, value_offsets)``: several views laid end to end, each one's values
  shifted (a mixed stage's sources, each in its own order, as store indices);
* ``ComposedOrder(order, positions)``: ``order[positions[q]]`` (an epoch's order of positions,
  e.g. a mixture's draw, read through the stage's order);
* ``LengthsThrough(order, lengths_at)``: the stored length of the sample at each position,
  ``lengths_at(order[p])`` (a *lengths view*: the same positions as ``order``, for a packed
  stage's lengths where no stored lengths column exists; a stored order of format 3 carries
  its own, ``StoredOrder.lengths``).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from highnoon.curriculum.heldout import HeldOutSplit
from highnoon.utils.hashing import KeyedPermutation
from highnoon.utils.validation import InvalidArgumentError


class OrderView(Protocol):
    """The duck type: ``len`` and ``[positions]`` (see the module docstring)."""

    def __len__(self) -> int: ...

    def __getitem__(self, positions: Any) -> np.ndarray: ...


def positions_of(key: Any, size: int) -> np.ndarray:
    """A view's key as int64 positions: a slice becomes its range (steps allowed), an array
    keeps its shape."""
    if isinstance(key, slice):
        return np.arange(*key.indices(size), dtype=np.int64)
    return np.asarray(key, dtype=np.int64)


def take(order: OrderView, positions: Any) -> np.ndarray:
    """``order[positions]`` as an int64 array of the positions' shape (for any order view)."""
    return np.asarray(order[np.asarray(positions, dtype=np.int64)], dtype=np.int64)


class IdentityOrder:
    """Position ``p`` is sample ``p``: ``n`` samples in index order."""

    def __init__(self, n: int) -> None:
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: Any) -> np.ndarray:
        return _checked(positions_of(key, self.n), self.n).copy()


class PermutedOrder:
    """A keyed bijection of ``[0, n)`` as an order (``KeyedPermutation(n, *parts)``)."""

    def __init__(self, n: int, *parts: Any) -> None:
        self.permutation = KeyedPermutation(n, *parts)

    def __len__(self) -> int:
        return self.permutation.n

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.permutation(_checked(positions_of(key, len(self)), len(self)))


class SplitOrder:
    """The training (``part="train"``) or held-out (``"eval"``) ranks of ``split`` through
    ``order``: rank ``r`` -> ``order[split.<part>_positions(r)]``, easy-to-hard.

    ``like``: another ``SplitOrder`` of the same split and part (an order's, when this one
    reads its lengths): the two share the last ranks mapped, so one array of ranks read through
    both (a packed shuffle window's samples, then their lengths) is mapped once."""

    def __init__(
        self, order: OrderView, split: HeldOutSplit, part: str, *, like: SplitOrder | None = None
    ) -> None:
        if part not in ("train", "eval"):
            raise InvalidArgumentError(f"part={part!r} must be 'train' or 'eval'")
        if len(order) != split.num_samples:
            raise InvalidArgumentError(
                f"the order has {len(order)} positions but the split {split.num_samples}"
            )
        if like is not None and (like.split is not split or like.part != part):
            raise InvalidArgumentError("like= must be a SplitOrder of the same split and part")
        self.order, self.split, self.part = order, split, part
        self.n = split.num_train if part == "train" else split.num_eval
        self._shared = self if like is None else like._shared
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.n

    def positions(self, ranks: np.ndarray) -> np.ndarray:
        """The order positions of ``ranks`` (the same array object asked again in a row, by
        this view or one made ``like`` it, is not mapped again)."""
        last = self._shared._last
        if last is not None and last[0] is ranks:
            return last[1]
        if self.part == "train":
            positions = self.split.train_positions(ranks)
        else:
            positions = self.split.eval_positions(ranks)
        self._shared._last = (ranks, positions)
        return positions

    def __getitem__(self, key: Any) -> np.ndarray:
        return take(self.order, self.positions(positions_of(key, self.n)))


class ConcatOrder:
    """``views`` end to end: position ``p`` in view ``i``'s range reads ``views[i][p - start_i]
    + value_offsets[i]``; costs the positions asked for (``K`` lookups of a boundary each)."""

    def __init__(self, views: list[OrderView], value_offsets: list[int]) -> None:
        if len(views) != len(value_offsets):
            raise InvalidArgumentError(
                f"{len(views)} views but {len(value_offsets)} value offsets; give one per view"
            )
        self.views = list(views)
        self.value_offsets = [int(o) for o in value_offsets]
        self.starts = np.cumsum([0] + [len(view) for view in self.views]).astype(np.int64)
        self.n = int(self.starts[-1])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: Any) -> np.ndarray:
        positions = _checked(positions_of(key, self.n), self.n)
        part = np.searchsorted(self.starts, positions, side="right") - 1
        out = np.empty(positions.shape, dtype=np.int64)
        for i in np.unique(part).tolist():
            hit = part == i
            out[hit] = take(self.views[i], positions[hit] - self.starts[i]) + self.value_offsets[i]
        return out


class ComposedOrder:
    """``order[positions[q]]``: an order read at the positions another view gives."""

    def __init__(self, order: OrderView, positions: OrderView) -> None:
        self.order, self.positions = order, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, key: Any) -> np.ndarray:
        return take(self.order, self.positions[positions_of(key, len(self))])


class LengthsThrough:
    """``lengths_at(order[p])``: the stored lengths of an order's samples, read through the
    store at the samples' indices (one read per sample: local for the index order, random for
    any other)."""

    def __init__(self, order: OrderView, lengths_at: Any) -> None:
        self.order, self.lengths_at = order, lengths_at

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, key: Any) -> np.ndarray:
        samples = take(self.order, positions_of(key, len(self)))
        return np.asarray(self.lengths_at(samples.reshape(-1)), np.int64).reshape(samples.shape)


def _checked(positions: np.ndarray, n: int) -> np.ndarray:
    if positions.size and (int(positions.min()) < 0 or int(positions.max()) >= n):
        raise InvalidArgumentError(
            f"positions must lie in [0, {n}); got values in [{int(positions.min())}, "
            f"{int(positions.max())}]"
        )
    return positions
