"""``CurriculumScheduler``: scores -> easy-to-hard order -> pacing -> epoch pool -> keyed
permutation -> global batches -> this host's rows (docs/design.md, "Determinism"). numpy only.

Every host computes the same stream from (scores, parameters, seed) alone:

* **Order**: a stable sort on (score, sample index); ties go to the lower index
  (``highnoon.curriculum.order``).
* **Epoch order** (optional, ``set_epoch_order``): a mixture's epoch is its own sequence of
  positions of the order (``highnoon.data.stage_data``, "Mixing rule"), evaluated at the
  positions asked for; pools are its prefixes and everything below reads it in place of the
  fixed order. (``set_epoch_selection``, the in-memory form: a drawn multiset sorted stably on
  (score, position).)
* **Pool** at epoch ``e``: the easiest ``n`` samples of the order, ``n`` from the pacing
  (``highnoon.curriculum.pacing``) rounded down to whole global batches, at least one.
* **Epoch order**: a keyed bijection of the pool positions ``[0, n)`` keyed by (seed, epoch)
  (``highnoon.utils.hashing.KeyedPermutation``), evaluated only at the positions a host needs, so
  no permutation of the whole pool is materialised and no RNG state exists.
* **Global batch** ``k`` = permuted positions ``[k*G, (k+1)*G)``; host ``h`` of ``H`` takes rows
  ``[h*G/H, (h+1)*G/H)`` of it. The union over hosts of step ``k`` is the same for any ``H``
  dividing ``G``, and every host runs the same number of steps.
* **Packed epochs** (``epoch_stream_range``/``epoch_stream_items``, epoch pacing) visit the
  exposed pool in a *blocked* keyed order (``curriculum.packed_order``): chunks of consecutive
  ranks permuted, then shuffled inside windows of chunks, so a packed host reads runs of the
  order and of its lengths (``set_order_lengths``), not one page per sample. A pool of at most
  one window is permuted exactly as an unpacked epoch is.

Step-based pacing (``total_steps``, for runs shorter than an epoch): one epoch is
``num_samples // G`` global steps; global batch at global step ``t = epoch * steps + k`` is
positions ``[(k*G) mod n(t), ... + G)`` of the epoch's permutation of the pool of size ``n(t)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from highnoon.curriculum import pacing as pacing_lib
from highnoon.curriculum import scoring
from highnoon.curriculum.order import check_scores, order_from_scores, scores_fingerprint
from highnoon.curriculum.order_views import ComposedOrder, OrderView, take
from highnoon.curriculum.packed_order import (
    Identity,
    PackedOrder,
    WindowCache,
    packed_permutation,
)
from highnoon.data import features as features_lib
from highnoon.utils.hashing import KeyedPermutation
from highnoon.utils.validation import InvalidArgumentError, check_int

logger = logging.getLogger("highnoon.curriculum")

STRATEGIES = (*scoring.STRATEGIES, "custom")
STATE_FORMAT = "highnoon.curriculum/1"
# Packed epochs' orders kept at once, one per (epoch, pool size) asked. A run asks about two an
# epoch (the horizon estimate's and the epoch's own, usually the same), so it never gets near;
# the bound only keeps a caller that plans many epochs (a report) from holding one per epoch.
# A PackedOrder is small (its permutation and views); the windows it read live in the shared
# ``WindowCache``, bounded on its own.
MAX_PACKED_ORDERS = 64


def _canonical(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with the pacing under its current name: a state saved with an alias
    (``"reference"``) loads into a scheduler made with the new name, and the other way round."""
    if isinstance(params.get("pacing"), str):
        params = {**params, "pacing": pacing_lib.canonical_pacing(params["pacing"])}
    return params


class CurriculumScheduler:
    """Easy-to-hard curriculum with deterministic pools, epoch orders and per-host slices.

    The first six parameters are positional, in the order and with the defaults the public API
    has always had; the rest are keyword-only:

    Args:
      strategy: ``"size_based"`` (length), ``"difficulty_based"``, ``"mixed"``, ``"random"``
        (a keyed random order keyed by ``seed``: the growing-pool control; see
        ``highnoon.curriculum.scoring``), ``"custom"`` (uses ``scorer``), or a callable taking
        one sample and returning a float (shorthand for ``scorer=callable``).
      num_stages, warmup_epochs, stage_increment_epochs, initial_fraction: the pacing staircase
        (see ``highnoon.curriculum.pacing``).
      verbose: log a concise line (``logging``, logger ``highnoon.curriculum``) whenever
        the stage changes.
      pacing: ``"warmup_staircase"`` (``warmup_epochs`` at ``initial_fraction``, then a stair
        every ``stage_increment_epochs``; ``"reference"`` is its earlier name, still accepted),
        ``"linear"``, ``"root_p"``, ``"discrete"``, ``"exponential"``, ``"constant"`` (always
        ``initial_fraction``; 1.0 turns the curriculum off).
      total_epochs / total_steps: horizon of the other pacings; ``total_steps`` switches
        the time axis to global steps.
      pacing_options / p: options of the pacing (``p`` of root_p, default 2).
      seed: key of the per-epoch permutations.
      shuffle: ``False`` keeps every epoch in easy-to-hard order.
      global_batch_size: ``G``; pools are whole global batches.
      scorer: a callable ``sample -> float``; makes the strategy ``"custom"``.
    """

    def __init__(
        self,
        strategy: str | Callable[[Any], float] = "size_based",
        num_stages: int = 5,
        warmup_epochs: int = 10,
        stage_increment_epochs: int = 20,
        initial_fraction: float = 0.2,
        verbose: bool = True,
        *,
        pacing: str = pacing_lib.WARMUP_STAIRCASE,
        total_epochs: int | None = None,
        total_steps: int | None = None,
        pacing_options: Mapping[str, Any] | None = None,
        p: float | None = None,
        seed: int = 0,
        shuffle: bool = True,
        global_batch_size: int = 1,
        scorer: Callable[[Any], float] | None = None,
    ) -> None:
        if callable(strategy):
            if scorer is not None:
                raise InvalidArgumentError(
                    "give the custom scorer as strategy=callable or scorer=, not both"
                )
            strategy, scorer = "custom", strategy
        if scorer is not None:
            if not callable(scorer):
                raise InvalidArgumentError(f"scorer={scorer!r} must be a callable sample -> float")
            if strategy not in ("custom", "size_based"):
                raise InvalidArgumentError(
                    f"strategy={strategy!r} conflicts with scorer=; a scorer makes the strategy "
                    "'custom'"
                )
            strategy = "custom"
        if strategy not in STRATEGIES:
            raise InvalidArgumentError(
                f"strategy={strategy!r} is not a known strategy; use one of {STRATEGIES} or a "
                "callable sample -> float"
            )
        if strategy == "custom" and scorer is None:
            raise InvalidArgumentError("strategy='custom' needs scorer=<callable sample -> float>")
        self.strategy = strategy
        self.scorer = scorer
        self.pacing = pacing_lib.Pacing.create(
            pacing,
            pacing_options,
            p,
            initial_fraction=initial_fraction,
            num_stages=num_stages,
            warmup_epochs=warmup_epochs,
            stage_increment_epochs=stage_increment_epochs,
            total_epochs=total_epochs,
            total_steps=total_steps,
        )
        self.num_stages = self.pacing.num_stages
        self.warmup_epochs = self.pacing.warmup_epochs
        self.stage_increment_epochs = self.pacing.stage_increment_epochs
        self.initial_fraction = float(self.pacing.initial_fraction)
        self.verbose = bool(verbose)
        self.seed = check_int("seed", seed)
        self.shuffle = bool(shuffle)
        self.global_batch_size = check_int("global_batch_size", global_batch_size, minimum=1)
        self.order: OrderView | None = None
        self._scores: np.ndarray | None = None
        self._select: Callable[[int], np.ndarray] | None = None
        self._select_ordered = False
        self._order_for: Callable[[int, int], OrderView] | None = None
        self._epoch_order: tuple[tuple[int, int], OrderView] | None = None
        self._lengths: OrderView | None = None
        self._packed: dict[tuple[int, int], PackedOrder] = {}
        self._windows = WindowCache()  # shuffle windows read, shared by the epochs
        self._fingerprint: str | None = None
        self._expected_fingerprint: str | None = None
        self._epoch = 0
        self._logged_stage: int | None = None

    # -- scores and order ---------------------------------------------------------------------

    def compute_complexity_scores(
        self, samples: Sequence[Any], strategy: str | Callable[[Any], float] | None = None
    ) -> np.ndarray:
        """Scores (float64, higher = harder) of LM samples.

        A sample is a token-id sequence, a string (its UTF-8 bytes) or a dict with ``tokens`` or
        ``text``; a dict's ``complexity`` value, when present, wins over any computed score.
        Built-in strategies go through ``scoring.features_from_samples`` +
        ``scoring.scores_from_features`` (unigram statistics of the given samples), so they are
        bit-identical to scores from a token store's features of the same corpus.
        """
        samples = list(samples) if not isinstance(samples, list) else samples
        if len(samples) == 0:
            raise InvalidArgumentError(
                "samples=[] is empty; the curriculum needs at least one sample"
            )
        scorer = self.scorer
        if strategy is None:
            strategy = self.strategy
        elif callable(strategy):
            strategy, scorer = "custom", strategy
        if strategy not in STRATEGIES:
            raise InvalidArgumentError(
                f"strategy={strategy!r} is not a known strategy; use one of {STRATEGIES} or a "
                "callable sample -> float"
            )
        explicit = {
            i: s["complexity"]
            for i, s in enumerate(samples)
            if isinstance(s, dict) and "complexity" in s
        }
        if strategy == "custom":
            if scorer is None:
                raise InvalidArgumentError(
                    "strategy='custom' needs scorer=<callable sample -> float>"
                )
            scores = np.array(
                [explicit[i] if i in explicit else scorer(s) for i, s in enumerate(samples)],
                dtype=np.float64,
            )
        elif len(explicit) == len(samples):
            scores = np.array([explicit[i] for i in range(len(samples))], dtype=np.float64)
        else:
            tokens = [
                np.zeros(0, np.int64)
                if i in explicit and "tokens" not in s and "text" not in s
                else features_lib.sample_to_tokens(s)
                for i, s in enumerate(samples)
            ]
            scores = scoring.scores_from_features(
                features_lib.features_from_samples(tokens), strategy, seed=self.seed
            )
            for i, value in explicit.items():
                scores[i] = value
        return check_scores(scores)

    def prepare_curriculum(self, samples: Sequence[Any]) -> np.ndarray:
        """Score ``samples`` and return their indices easy-to-hard (int64)."""
        return self.prepare_curriculum_from_scores(self.compute_complexity_scores(samples))

    def prepare_curriculum_from_scores(self, scores: Any) -> np.ndarray:
        """Set the curriculum from a precomputed 1-D score array; return the order (int64)."""
        scores = check_scores(scores)
        self._check_size(scores.size)
        fingerprint = scores_fingerprint(scores)
        self._check_fingerprint(fingerprint)
        order = order_from_scores(scores)
        self.prepare_curriculum_from_order(order, fingerprint)
        self._scores = scores
        return order

    def prepare_curriculum_from_order(self, order: OrderView, scores_fingerprint: str) -> None:
        """Set the curriculum from an easy-to-hard order without its scores: any order view
        (``len`` and ``order[positions]``: a numpy int64 array, a stored order, or a view of
        ``curriculum.order_views``), and the fingerprint of the scores it was sorted from (what
        a restored state is checked against). Nothing here reads the whole order: pools, epoch
        orders and host rows evaluate it at the positions they need. With an epoch selection,
        ``select(epoch)`` then returns positions of the order (see ``set_epoch_selection``)."""
        if not hasattr(order, "__len__") or not hasattr(order, "__getitem__"):
            raise InvalidArgumentError(
                f"order={order!r} must be an order view (len(order) and order[positions]), "
                "e.g. a numpy int64 array"
            )
        self._check_size(len(order))
        if not isinstance(scores_fingerprint, str) or not scores_fingerprint:
            raise InvalidArgumentError(
                f"scores_fingerprint={scores_fingerprint!r} must be a non-empty string "
                "(curriculum.order.scores_fingerprint of the scores the order sorts)"
            )
        self._check_fingerprint(scores_fingerprint)
        self.order = order
        self._scores = None
        self._epoch_order = None
        self._lengths = None
        self._reset_packed()
        self._fingerprint = scores_fingerprint

    def set_order_lengths(self, lengths: OrderView | None) -> None:
        """The stored length of the sample at each position of the order (a lengths view: the
        order's positions, e.g. ``SplitOrder`` of a stored order's lengths column), which a
        packed epoch reads beside its samples (``epoch_stream_items``); None: none known (the
        caller reads lengths through the store)."""
        if lengths is not None and len(lengths) != self.num_samples:
            raise InvalidArgumentError(
                f"the lengths view has {len(lengths)} positions but the order "
                f"{self.num_samples}; give one length per order position"
            )
        self._lengths = lengths
        self._reset_packed()

    def _check_size(self, size: int) -> None:
        if size < self.global_batch_size:
            raise InvalidArgumentError(
                f"global_batch_size={self.global_batch_size} is larger than the data "
                f"({size} samples); it must be <= the number of samples"
            )

    def _check_fingerprint(self, fingerprint: str) -> None:
        if self._expected_fingerprint is not None and fingerprint != self._expected_fingerprint:
            raise InvalidArgumentError(
                f"scores fingerprint {fingerprint} does not match the restored state's "
                f"{self._expected_fingerprint}; restore with the same scores"
            )

    def set_epoch_selection(
        self, select: Callable[[int], np.ndarray] | None, *, ordered: bool = False
    ) -> None:
        """Draw each epoch from its own multiset of samples (a mixture's shares): ``select(epoch)``
        returns ``num_samples`` int64 indices (repeats allowed), the same for the same epoch:
        indices into the scores when prepared from scores, the epoch's order being that multiset
        sorted stably by (score, position); positions of the order when prepared from an order,
        the epoch's order being the order at those positions sorted ascending (easy-to-hard, as
        the order is). ``ordered=True``: the draw is already in the epoch's order and is taken
        as it is (a stage without a curriculum keeps a mixture's interleave). Pools and keyed
        epoch orders are taken from it. ``None`` restores the fixed order."""
        if select is not None and not callable(select):
            raise InvalidArgumentError(
                f"select={select!r} must be a callable epoch -> indices, or None"
            )
        self._select = select
        self._select_ordered = bool(ordered)
        self._order_for = None
        self._epoch_order = None
        self._reset_packed()

    def set_epoch_order(self, order_for: Callable[[int, int], OrderView] | None) -> None:
        """Take each epoch's order from ``order_for(epoch, size)``: an order view of at least
        ``size`` positions of the order (``size`` is the epoch's ``exposed_size``), the same
        for the same arguments, already in the epoch's easy-to-hard order (its prefixes are the
        pools). Nothing is materialised: pools, epoch orders and host rows read it at the
        positions they need (a mixture's draw, ``data.mixture_draw.MixtureDraw``). Epoch pacing
        only (a pool that grows inside an epoch would need prefixes of several draws). ``None``
        restores the fixed order."""
        if order_for is not None and not callable(order_for):
            raise InvalidArgumentError(
                f"order_for={order_for!r} must be a callable (epoch, size) -> order view, or None"
            )
        if order_for is not None and self.pacing.unit != "epoch":
            raise InvalidArgumentError(
                "an epoch order needs epoch pacing (total_epochs), not total_steps: its pools "
                "are prefixes of one epoch's order"
            )
        self._order_for = order_for
        self._select = None
        self._epoch_order = None
        self._reset_packed()

    def order_at(self, epoch: int) -> OrderView:
        """The easy-to-hard order the pools of ``epoch`` are taken from (an order view of sample
        indices): ``order``, or that epoch's order (``set_epoch_order``, a view; cached per
        epoch and exposed size) or ordered draw (``set_epoch_selection``, an array)."""
        order = self._require_order()
        if self._order_for is not None:
            key = (epoch, self.exposed_size(epoch))
            if self._epoch_order is None or self._epoch_order[0] != key:
                positions = self._order_for(epoch, key[1])
                if len(positions) < key[1]:
                    raise InvalidArgumentError(
                        f"the epoch order of epoch {epoch} has {len(positions)} positions; it "
                        f"must hold at least the epoch's exposed {key[1]}"
                    )
                self._epoch_order = (key, ComposedOrder(order, positions))
            return self._epoch_order[1]
        if self._select is None:
            return order
        if self._epoch_order is None or self._epoch_order[0] != (epoch, -1):
            chosen = np.asarray(self._select(epoch), dtype=np.int64)
            if chosen.shape != (len(order),):
                raise InvalidArgumentError(
                    f"the epoch selection of epoch {epoch} has shape {chosen.shape}; it must hold "
                    f"num_samples={len(order)} indices"
                )
            if self._select_ordered:
                drawn = take(order, chosen)
            elif self._scores is not None:
                drawn = chosen[order_from_scores(self._scores[chosen])]
            else:
                drawn = take(order, np.sort(chosen, kind="stable"))
            self._epoch_order = ((epoch, -1), drawn)
        return self._epoch_order[1]

    @property
    def fingerprint(self) -> str | None:
        """``sha256:<hex>:<n>`` of the score array (None before the curriculum is prepared)."""
        return self._fingerprint

    @property
    def num_samples(self) -> int:
        return 0 if self.order is None else len(self.order)

    def _require_order(self) -> OrderView:
        if self.order is None:
            raise InvalidArgumentError(
                "the curriculum is not prepared; call prepare_curriculum(samples) or "
                "prepare_curriculum_from_scores(scores) first"
            )
        return self.order

    # -- pacing -----------------------------------------------------------------------------

    def stage_at(self, epoch: int) -> int:
        """Stage (0..num_stages) at epoch ``epoch`` (at the epoch's first step, for step pacing)."""
        epoch = check_int("epoch", epoch, minimum=0)
        return self.pacing.stage(self._time(epoch, 0))

    def fraction_at(self, epoch: int) -> float:
        """Exposed fraction at epoch ``epoch`` (at the epoch's first step, for step pacing)."""
        epoch = check_int("epoch", epoch, minimum=0)
        return self.pacing.fraction(self._time(epoch, 0))

    def _time(self, epoch: int, step: int) -> int:
        if self.pacing.unit == "epoch":
            return epoch
        return epoch * self._full_steps() + step

    def _full_steps(self) -> int:
        return max(1, self.num_samples // self.global_batch_size)

    def pool_size(self, epoch: int, step: int = 0) -> int:
        """Samples in the pool at ``epoch`` (``step`` matters only for step pacing)."""
        epoch = check_int("epoch", epoch, minimum=0)
        self._require_order()
        fraction = self.pacing.fraction(self._time(epoch, step))
        return pacing_lib.pool_size(fraction, self.num_samples, self.global_batch_size)

    def steps_per_epoch(self, epoch: int, global_batch_size: int | None = None) -> int:
        """Global steps in ``epoch``: pool // G (epoch pacing) or num_samples // G (step pacing)."""
        g = self._batch(global_batch_size)
        if self.pacing.unit == "step":
            check_int("epoch", epoch, minimum=0)
            self._require_order()
            return self.num_samples // g
        return self.pool_size(epoch) // g

    def _batch(self, global_batch_size: int | None) -> int:
        if global_batch_size is None:
            return self.global_batch_size
        g = check_int("global_batch_size", global_batch_size, minimum=1)
        if self.order is not None and g > self.num_samples:
            raise InvalidArgumentError(
                f"global_batch_size={g} is larger than the data ({self.num_samples} samples)"
            )
        return g

    def _permute(self, epoch: int, n: int, positions: np.ndarray) -> np.ndarray:
        if not self.shuffle:
            return positions.astype(np.int64, copy=False)
        return KeyedPermutation(n, "epoch", self.seed, epoch)(positions)

    def get_current_subset_indices(self, epoch: int) -> np.ndarray:
        """The epoch's pool as sample indices (int64) in the order the epoch visits them.

        Stateless: the same epoch always gives the same array. For step pacing it is the pool at
        the epoch's first step.
        """
        epoch = check_int("epoch", epoch, minimum=0)
        order = self.order_at(epoch)
        n = self.pool_size(epoch)
        indices = take(order, self._permute(epoch, n, np.arange(n, dtype=np.int64)))
        self._note_epoch(epoch)
        return indices

    def exposed_size(self, epoch: int) -> int:
        """Samples the pacing exposes at ``epoch`` before the pool is rounded down to whole
        global batches (``pacing.exposed_size``; at the epoch's first step, for step pacing)."""
        epoch = check_int("epoch", epoch, minimum=0)
        self._require_order()
        return pacing_lib.exposed_size(
            self.fraction_at(epoch), self.num_samples, self.global_batch_size
        )

    def epoch_stream_size(self, epoch: int) -> int:
        """Samples a *packed* epoch visits (``epoch_stream``'s length), in O(1).

        Epoch pacing: the exposed pool (``exposed_size``, not rounded to whole global batches:
        packed steps are made of rows, not samples). Step pacing: the epoch's whole global
        batches."""
        epoch = check_int("epoch", epoch, minimum=0)
        self._require_order()
        if self.pacing.unit == "step":
            return self.steps_per_epoch(epoch) * self.global_batch_size
        return self.exposed_size(epoch)

    def epoch_stream_range(self, epoch: int, first: int, last: int) -> np.ndarray:
        """Store indices at positions ``[first, last)`` of a packed epoch's stream (int64, in
        visiting order): ``epoch_stream(epoch)[first:last]`` computed for those positions only,
        whatever the pool's size (``epoch_stream_items`` without the lengths)."""
        return self.epoch_stream_items(epoch, first, last)[0]

    def epoch_stream_items(
        self, epoch: int, first: int, last: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Store indices and stored lengths at positions ``[first, last)`` of a packed epoch's
        stream (int64, in visiting order; lengths None when no lengths view is set or the
        epoch's order is an in-memory selection).

        Epoch pacing: the exposed pool in the epoch's blocked keyed order
        (``curriculum.packed_order``), read a shuffle window at a time. Step pacing: the
        epoch's global batches back to back (the unpacked keyed order; lengths None). Every
        host computes the same stream."""
        size = self.epoch_stream_size(epoch)
        first = check_int("first", first, minimum=0, maximum=size)
        last = check_int("last", last, minimum=first, maximum=size)
        if self.pacing.unit == "step":
            g = self.global_batch_size
            steps = np.arange(first // g, -(-last // g), dtype=np.int64)
            rows = self._rows(epoch, steps, 0, 1, g).reshape(-1)
            lo = first - int(steps[0]) * g if steps.size else 0
            return (rows[lo : lo + last - first] if steps.size else rows), None
        return self._packed_order(epoch, size).items(first, last)

    def _reset_packed(self) -> None:
        """Forget the packed epochs' orders (the order or its lengths may have changed). The
        windows read are keyed on the order and lengths views they were read from
        (``_packed_order``), so one is reused only when both are the same objects: those read
        through the current order and lengths stay, the others go (they hold their views)."""
        self._packed = {}
        live = (self.order, self._lengths)

        def current(key: Any) -> bool:
            order, lengths = key[0][-2:]  # (the PackedOrder's key, window)
            return any(order.obj is v for v in live) and any(lengths.obj is v for v in live)

        self._windows.retain(current)

    def _packed_order(self, epoch: int, size: int) -> PackedOrder:
        """The packed epoch's ``PackedOrder``, kept per (epoch, size); their windows share one
        cache, so the window the horizon estimate read is still there when the epoch starts."""
        key = (epoch, size)
        if key not in self._packed:
            order = self.order_at(epoch)
            lengths = self._epoch_lengths(order)
            permutation = packed_permutation(size, self.seed, epoch) if self.shuffle else None
            if len(self._packed) >= MAX_PACKED_ORDERS:
                self._packed.clear()
            # the windows' key: the epoch's permutation and the very views read through it
            windows_key = (*key, self.seed, self.shuffle, Identity(order), Identity(lengths))
            self._packed[key] = PackedOrder(
                permutation, order, lengths, cache=self._windows, key=windows_key
            )
        return self._packed[key]

    def _epoch_lengths(self, order: OrderView) -> OrderView | None:
        """The lengths view matching the epoch's order ``order_at`` gave: the order's own, or
        read through a mixture's draw (``set_epoch_order``); None for an in-memory selection."""
        if self._lengths is None or self._select is not None:
            return None
        if self._order_for is not None:
            assert isinstance(order, ComposedOrder)
            return ComposedOrder(self._lengths, order.positions)
        return self._lengths

    def epoch_stream(self, epoch: int) -> np.ndarray:
        """Every sample a *packed* epoch visits, in order (int64 indices into the scores):
        ``epoch_stream_range(epoch, 0, epoch_stream_size(epoch))``; when the pool is whole
        batches of at most one shuffle window (``packed_order``), this is
        ``host_epoch_indices(epoch, 0, 1)`` flattened."""
        return self.epoch_stream_range(epoch, 0, self.epoch_stream_size(epoch))

    def samples_dropped(self, epoch: int, pack: bool) -> int:
        """Samples the epoch leaves out of what the pacing exposes. Epoch pacing: 0 when packed
        (``epoch_stream`` holds them all), else the remainder of whole global batches
        (``exposed_size - pool_size``). Step pacing (packed or not, the epoch is whole global
        batches): ``num_samples - steps_per_epoch * global_batch_size``."""
        epoch = check_int("epoch", epoch, minimum=0)
        self._require_order()
        if self.pacing.unit == "step":
            return self.num_samples - self.steps_per_epoch(epoch) * self.global_batch_size
        return 0 if pack else self.exposed_size(epoch) - self.pool_size(epoch)

    def _note_epoch(self, epoch: int) -> None:
        """Remember the epoch for get_stage_info and log a stage change (no effect on streams)."""
        self._epoch = epoch
        stage = self.stage_at(epoch)
        if stage != self._logged_stage:
            self._logged_stage = stage
            if self.verbose:
                logger.info(
                    "curriculum stage %d/%d at epoch %d: fraction %.4f, %d of %d samples",
                    stage,
                    self.num_stages,
                    epoch,
                    self.fraction_at(epoch),
                    self.pool_size(epoch),
                    self.num_samples,
                )

    def get_stage_info(self, epoch: int | None = None) -> dict[str, Any]:
        """``current_stage``, ``fraction``, ``num_samples`` (pool size) and extras, at ``epoch``
        (default: the last epoch passed to get_current_subset_indices / update_with_loss)."""
        epoch = self._epoch if epoch is None else check_int("epoch", epoch, minimum=0)
        prepared = self.order is not None
        return {
            "current_stage": self.stage_at(epoch),
            "fraction": self.fraction_at(epoch),
            "num_samples": self.pool_size(epoch) if prepared else None,
            "epoch": epoch,
            "num_stages": self.num_stages,
            "total_samples": self.num_samples if prepared else None,
            "steps_per_epoch": self.steps_per_epoch(epoch) if prepared else None,
            "global_batch_size": self.global_batch_size,
            "pacing": self.pacing.name,
            "time_axis": self.pacing.unit,
        }

    # -- sharding ---------------------------------------------------------------------------

    def _host_args(self, epoch: int, host_id: int, num_hosts: int, g: int) -> tuple[int, int, int]:
        epoch = check_int("epoch", epoch, minimum=0)
        num_hosts = check_int("num_hosts", num_hosts, minimum=1)
        host_id = check_int("host_id", host_id, minimum=0, maximum=num_hosts - 1)
        if g % num_hosts:
            raise InvalidArgumentError(
                f"global_batch_size={g} does not divide by num_hosts={num_hosts}; it must be a "
                "multiple of the host count so every host gets the same rows"
            )
        return epoch, host_id, num_hosts

    def _rows(
        self, epoch: int, steps: np.ndarray, host_id: int, num_hosts: int, g: int
    ) -> np.ndarray:
        """Sample indices [len(steps), g // num_hosts] of this host for global batches ``steps``."""
        order = self.order_at(epoch)
        per_host = g // num_hosts
        cols = np.arange(host_id * per_host, (host_id + 1) * per_host, dtype=np.int64)
        out = np.empty((steps.size, per_host), dtype=np.int64)
        if self.pacing.unit == "epoch":
            n = self.pool_size(epoch)
            positions = steps[:, None] * g + cols[None, :]
            out[:] = take(order, self._permute(epoch, n, positions))
            return out
        sizes = np.array([self.pool_size(epoch, int(k)) for k in steps], dtype=np.int64)
        for n in np.unique(sizes):
            rows = np.flatnonzero(sizes == n)
            starts = (steps[rows] * g) % n  # whole batches: n is a multiple of G
            positions = (starts[:, None] + cols[None, :]) % n
            out[rows] = take(order, self._permute(epoch, int(n), positions))
        return out

    def host_batch_indices(
        self,
        epoch: int,
        step: int,
        host_id: int,
        num_hosts: int,
        global_batch_size: int | None = None,
    ) -> np.ndarray:
        """This host's sample indices (int64, length G/H) for global batch ``step`` of ``epoch``."""
        g = self._batch(global_batch_size)
        epoch, host_id, num_hosts = self._host_args(epoch, host_id, num_hosts, g)
        steps = self.steps_per_epoch(epoch, g)
        step = check_int("step", step, minimum=0, maximum=steps - 1)
        return self._rows(epoch, np.array([step], dtype=np.int64), host_id, num_hosts, g)[0]

    def host_epoch_indices(
        self, epoch: int, host_id: int, num_hosts: int, global_batch_size: int | None = None
    ) -> np.ndarray:
        """This host's sample indices for the whole epoch: int64 ``[steps_per_epoch, G // H]``."""
        g = self._batch(global_batch_size)
        epoch, host_id, num_hosts = self._host_args(epoch, host_id, num_hosts, g)
        steps = self.steps_per_epoch(epoch, g)
        return self._rows(epoch, np.arange(steps, dtype=np.int64), host_id, num_hosts, g)

    def host_range_indices(
        self, epoch: int, first_step: int, last_step: int, host_id: int, num_hosts: int
    ) -> np.ndarray:
        """This host's sample indices for global batches ``[first_step, last_step)`` of
        ``epoch``: int64 ``[last_step - first_step, G // H]``, rows
        ``host_epoch_indices(...)[first_step:last_step]`` at the cost of those rows only (one
        host call's worth, whatever the corpus size)."""
        g = self.global_batch_size
        epoch, host_id, num_hosts = self._host_args(epoch, host_id, num_hosts, g)
        steps = self.steps_per_epoch(epoch, g)
        first = check_int("first_step", first_step, minimum=0, maximum=steps)
        last = check_int("last_step", last_step, minimum=first, maximum=steps)
        return self._rows(epoch, np.arange(first, last, dtype=np.int64), host_id, num_hosts, g)

    # -- state ------------------------------------------------------------------------------

    def _params(self) -> dict[str, Any]:
        pacing = self.pacing
        return {
            "strategy": self.strategy,
            "num_stages": pacing.num_stages,
            "warmup_epochs": pacing.warmup_epochs,
            "stage_increment_epochs": pacing.stage_increment_epochs,
            "initial_fraction": float(pacing.initial_fraction),
            "pacing": pacing.name,
            "total_epochs": pacing.total_epochs,
            "total_steps": pacing.total_steps,
            "p": float(pacing.p),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "global_batch_size": self.global_batch_size,
        }

    def _decisions(self) -> dict[str, Any]:
        return {}

    def _load_decisions(self, decisions: Mapping[str, Any]) -> None:
        if decisions:
            raise InvalidArgumentError(
                f"state['decisions']={dict(decisions)!r} must be empty for {type(self).__name__}"
            )

    def get_state(self) -> dict[str, Any]:
        """A plain JSON-able dict: class, parameters, adaptive decisions, scores fingerprint."""
        state = {
            "format": STATE_FORMAT,
            "class": type(self).__name__,
            "params": self._params(),
            "decisions": self._decisions(),
            "fingerprint": self._fingerprint or self._expected_fingerprint,
            "epoch": self._epoch,
        }
        json.dumps(state)  # guarantees JSON-ability
        return state

    @classmethod
    def from_state(
        cls,
        state: Mapping[str, Any],
        scores: Any | None = None,
        *,
        scorer: Callable[[Any], float] | None = None,
        verbose: bool = False,
    ) -> CurriculumScheduler:
        """Rebuild a scheduler from ``get_state()``; with ``scores`` also prepare it.

        A different scores fingerprint (now, or when scores are prepared later) is a ValueError.
        """
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise InvalidArgumentError(
                f"state must be a dict from get_state() with format={STATE_FORMAT!r}"
            )
        target = scheduler_class(state.get("class"))
        if target is None or not issubclass(target, cls):
            raise InvalidArgumentError(
                f"state['class']={state.get('class')!r} cannot be loaded by {cls.__name__}"
            )
        params = dict(state["params"])
        params.update(params.pop("adaptive", {}) or {})
        if params["strategy"] == "custom":
            if scorer is None:
                raise InvalidArgumentError(
                    "state has strategy='custom'; pass scorer=<callable> to from_state"
                )
            params["scorer"] = scorer
        instance = target(verbose=verbose, **params)
        instance.load_state(state, scores=scores)
        return instance

    def load_state(self, state: Mapping[str, Any], scores: Any | None = None) -> None:
        """Load decisions and the fingerprint from ``state`` into this (same-parameter) scheduler."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise InvalidArgumentError(
                f"state must be a dict from get_state() with format={STATE_FORMAT!r}"
            )
        if _canonical(dict(state.get("params", {}))) != _canonical(self._params()):
            raise InvalidArgumentError(
                f"state['params']={state.get('params')!r} differ from this scheduler's "
                f"{self._params()!r}"
            )
        expected = state.get("fingerprint")
        if self._fingerprint is not None and expected is not None and self._fingerprint != expected:
            raise InvalidArgumentError(
                f"scores fingerprint {self._fingerprint} does not match the state's {expected}"
            )
        self._expected_fingerprint = expected
        self._load_decisions(state.get("decisions", {}))
        self._epoch = check_int("state['epoch']", state.get("epoch", 0), minimum=0)
        if scores is not None:
            self.prepare_curriculum_from_scores(scores)


def scheduler_class(name: Any) -> type[CurriculumScheduler] | None:
    """The scheduler class called ``name`` (this class or any subclass), for ``from_state``."""
    pending = [CurriculumScheduler]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name:
            return cls
        pending.extend(cls.__subclasses__())
    return None
