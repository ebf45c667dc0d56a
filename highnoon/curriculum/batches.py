"""``create_curriculum_batches``: the public batching helper over curriculum indices, for
loops outside the Trainer (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

from highnoon.utils.hashing import KeyedPermutation
from highnoon.utils.validation import InvalidArgumentError, check_int


def create_curriculum_batches(
    molecules: Any = None,
    labels: Any = None,
    curriculum_indices: Any = None,
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int = 0,
    drop_remainder: bool = False,
) -> list[tuple[Any, Any]]:
    """Batches ``(inputs_batch, labels_batch)`` of the curriculum-selected samples.

    ``molecules`` (the public API's historical name for the inputs) is an array (batches are arrays, taken
    along axis 0) or a sequence (batches are lists); ``labels`` likewise, or None. The batches
    follow ``curriculum_indices`` (default: all samples in order), shuffled by a keyed
    permutation of ``seed`` when ``shuffle``; the last short batch is dropped when
    ``drop_remainder``. Deterministic for a given seed.
    """
    if molecules is None:
        raise InvalidArgumentError(
            "molecules=None; pass the inputs (an array or a sequence of samples)"
        )
    count = len(molecules)
    if labels is not None and len(labels) != count:
        raise InvalidArgumentError(
            f"labels has {len(labels)} entries; it must match molecules' {count}"
        )
    if curriculum_indices is None:
        indices = np.arange(count, dtype=np.int64)
    else:
        indices = np.asarray(curriculum_indices)
        if indices.ndim != 1 or not (indices.size == 0 or np.issubdtype(indices.dtype, np.integer)):
            raise InvalidArgumentError(
                f"curriculum_indices must be a 1-D array of integers, got shape {indices.shape} "
                f"dtype {indices.dtype}"
            )
        indices = indices.astype(np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= count):
            raise InvalidArgumentError(
                f"curriculum_indices must lie in [0, {count - 1}], got values in "
                f"[{indices.min()}, {indices.max()}]"
            )
    if indices.size == 0:
        raise InvalidArgumentError(
            "curriculum_indices is empty (or molecules is); need at least one sample"
        )
    # A batch larger than the selection gives one short batch (the documented behaviour).
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_int("seed", seed)
    if shuffle:
        perm = KeyedPermutation(indices.size, "batches", seed)
        indices = indices[perm(np.arange(indices.size, dtype=np.int64))]
    stop = indices.size - indices.size % batch_size if drop_remainder else indices.size

    def take(data: Any, idx: np.ndarray) -> Any:
        if data is None:
            return None
        if isinstance(data, np.ndarray):
            return data[idx]
        return [data[int(i)] for i in idx]

    return [
        (take(molecules, indices[s : s + batch_size]), take(labels, indices[s : s + batch_size]))
        for s in range(0, stop, batch_size)
    ]
