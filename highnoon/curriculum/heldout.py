"""The held-out split of a stage, in order space and stateless (numpy only).

The split cuts the positions of the stage's easy-to-hard order (``[0, N)``) into ``E`` strata by
integer arithmetic, stratum ``i`` being ``[floor(i*N/E), floor((i+1)*N/E))`` (every stratum has
``floor(N/E)`` or ``ceil(N/E)`` positions), and holds out ONE keyed position of each: offset
``keyed_hash(i, "heldout", seed) mod size_i``. So exactly ``E`` positions are held out, spread
evenly over the difficulty range, each a keyed choice, and every other position trains.

Everything is a closed form evaluated at the ranks asked for, so neither the training nor the
held-out set is ever materialised (a billion-sample stage costs a host only its own rows):

* held-out rank ``q`` -> position ``start_q + h_q``;
* training rank ``t`` -> the stratum ``i = ceil((t+1)*E / (N-E)) - 1`` (strata before ``i`` hold
  ``floor(i*(N-E)/E)`` training positions), then the ``j``-th training position of ``i``:
  ``start_i + j + (j >= h_i)``.

Ranks keep the order: training rank ``t`` < ``t'`` means an easier (or equal, lower-index)
sample, so the curriculum's pools are the easiest training samples (docs/design.md,
"Held-out split").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from highnoon.utils.hashing import keyed_hash
from highnoon.utils.validation import InvalidArgumentError, check_int

_LIMIT = 1 << 63  # (E + 1) * N must stay below it: int64 arithmetic throughout
EVAL_BANDS = 64  # runs of consecutive held-out ranks the eval rows are read in


def eval_count(num_samples: int, eval_fraction: float, global_batch: int) -> int:
    """Held-out samples of a stage: ``floor(N * eval_fraction)`` rounded down to whole global
    batches, or 0 when that would leave fewer than one global batch to train on."""
    n_eval = int(num_samples * eval_fraction) // global_batch * global_batch
    if n_eval == 0 or num_samples - n_eval < global_batch:
        return 0
    return n_eval


def spread_ranks(count: int, total: int, bands: int = EVAL_BANDS) -> np.ndarray:
    """``count`` of ``total`` ranks spread over the whole range in ``k = min(bands, count)``
    runs of consecutive ranks: run ``b`` holds ``floor((b+1) * count / k) - floor(b * count /
    k)`` ranks and the ``total - count`` ranks left out are spread between the runs, ``floor(b
    * (total - count) / k)`` of them before run ``b`` (so rank ``j`` of the result is ``j +
    floor(b * (total - count) / k)``, ``b`` its run; all ranks when ``count == total``).
    Sorted, distinct. Runs rather than evenly spaced single ranks so the samples they
    name share few blocks of a stored order: a host reads (and CRC-checks) about ``bands``
    blocks for its eval rows, not the whole order."""
    total = check_int("total", total, minimum=0)
    count = check_int("count", count, minimum=0, maximum=total)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    b = np.arange(min(check_int("bands", bands, minimum=1), count) + 1, dtype=np.int64)
    sizes = np.diff(b * count // b[-1])
    skipped = b[:-1] * (total - count) // b[-1]  # ranks left out before each run
    return np.repeat(skipped, sizes) + np.arange(count, dtype=np.int64)


class HeldOutSplit:
    """Which order positions are held out (see the module docstring); stateless.

    Args:
      num_samples: ``N``, the positions of the order.
      num_eval: ``E``, held-out positions (``0 <= E < N``; ``eval_count`` computes it).
      seed: key of the choice inside each stratum.
    """

    def __init__(self, num_samples: int, num_eval: int, seed: int) -> None:
        self.num_samples = check_int("num_samples", num_samples, minimum=1)
        self.num_eval = check_int("num_eval", num_eval, minimum=0, maximum=self.num_samples - 1)
        if (self.num_eval + 1) * self.num_samples >= _LIMIT:
            raise InvalidArgumentError(
                f"num_eval={self.num_eval} held-out samples of num_samples={self.num_samples} "
                "exceed the split's int64 arithmetic ((num_eval + 1) * num_samples < 2**63); "
                "lower eval_fraction"
            )
        self.num_train = self.num_samples - self.num_eval
        self.seed = int(seed)

    def _start(self, strata: np.ndarray) -> np.ndarray:
        return strata * self.num_samples // self.num_eval

    def _offset(self, strata: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The held-out offset inside each stratum (a keyed choice among its positions)."""
        sizes = self._start(strata + 1) - starts
        return (keyed_hash(strata, "heldout", self.seed) % sizes.astype(np.uint64)).astype(np.int64)

    def eval_positions(self, ranks: Any) -> np.ndarray:
        """Order positions of held-out ranks (int64, the shape of ``ranks``, each in
        ``[0, num_eval)``), ascending with the rank."""
        q = _ranks("ranks", ranks, self.num_eval)
        starts = self._start(q)
        return starts + self._offset(q, starts)

    def train_positions(self, ranks: Any) -> np.ndarray:
        """Order positions of training ranks (int64, the shape of ``ranks``, each in
        ``[0, num_train)``), ascending with the rank."""
        t = _ranks("ranks", ranks, self.num_train)
        if self.num_eval == 0:
            return t
        e, m = self.num_eval, self.num_train
        strata = ((t + 1) * e + m - 1) // m - 1
        starts = self._start(strata)
        j = t - (starts - strata)  # training rank inside the stratum
        return starts + j + (j >= self._offset(strata, starts))

    def is_eval(self, positions: Any) -> np.ndarray:
        """Whether each order position is held out (bool, the shape of ``positions``)."""
        p = _ranks("positions", positions, self.num_samples)
        if self.num_eval == 0:
            return np.zeros(p.shape, dtype=bool)
        strata = ((p + 1) * self.num_eval + self.num_samples - 1) // self.num_samples - 1
        starts = self._start(strata)
        return p - starts == self._offset(strata, starts)


def _ranks(name: str, values: Any, size: int) -> np.ndarray:
    """``values`` as int64, each checked to lie in ``[0, size)``."""
    array = np.asarray(values, dtype=np.int64)
    if array.size and (int(array.min()) < 0 or int(array.max()) >= size):
        raise InvalidArgumentError(
            f"{name} must lie in [0, {size}); got values in [{int(array.min())}, "
            f"{int(array.max())}]"
        )
    return array
