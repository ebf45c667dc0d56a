"""One curriculum stage made concrete: its settings, data, held-out split and scheduler.

A ``StagePlan`` answers, from (data, seed, config) alone, every question the run loop asks:
how many steps an epoch has, which samples this host feeds at each step, how long its rows are
at each step (the sequence-length warm-up), and which samples are held out for evaluation and in
which difficulty bucket each evaluated row falls. Nothing here depends on how many hosts run the
job except the slice a host takes (docs/design.md, "Determinism").

A mixed stage (several dataset entries) keeps each source apart (``highnoon.data.stage_data``,
"Mixing rule"): its own easy-to-hard order, its own held-out split and its own pools; the
stage's order, training and held-out views are the sources' laid end to end (``ConcatOrder``),
and each epoch hands the scheduler the mixture's draw as an order view evaluated at positions
(``MixtureDraw``), so a host's cost is its rows, not the corpus. With a mixture schedule
(``highnoon.data.mixture_schedule``) the shares are the schedule's weights of each epoch; each
source's window continues where its previous epochs' windows ended.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from typing import Any

import numpy as np

from highnoon.curriculum import AdaptiveCurriculumScheduler, CurriculumScheduler, scoring
from highnoon.curriculum.heldout import HeldOutSplit, eval_count, spread_ranks
from highnoon.curriculum.order import order_from_scores, scores_fingerprint
from highnoon.curriculum.order_views import (
    ConcatOrder,
    IdentityOrder,
    LengthsThrough,
    OrderView,
    PermutedOrder,
    SplitOrder,
)
from highnoon.curriculum.pacing import WARMUP_STAIRCASE, canonical_pacing
from highnoon.curriculum.packed_order import packed_permutation
from highnoon.curriculum.stored_order import open_stored_order, store_score_scale
from highnoon.data.mixture_draw import MixtureDraw, apportion, interleave_prefix, interleave_rank
from highnoon.data.mixture_schedule import MixtureSchedule
from highnoon.data.packing import (
    PackedEpoch,
    PackedStream,
    PackingCursor,
    StepCounts,
    batch_counts,
    count_totals,
    estimate_packed_rows,
    pack_epoch,
    row_counts,
    store_packing_window,
    stored_lengths,
)
from highnoon.data.stage_data import mixture_of
from highnoon.training.settings import StageSettings
from highnoon.utils import validation as v
from highnoon.utils.hashing import derive_seed, sha256_hex

logger = logging.getLogger("highnoon.training")

# Settings that never change the stream of global batches (a resume may change them), and new
# stream settings that leave it unchanged while off (so runs checkpointed before they existed
# keep their fingerprints).
_NOT_STREAM = ("learning_rate", "clip_norm", "eval_difficulty_buckets", "eval_difficulty_strategy")
_STREAM_WHEN_ON = {
    "seq_length_warmup_steps": ("seq_length_warmup_steps", "seq_length_warmup_start")
}
# The rule that turns (data, seed, settings) into the stream, recorded in every stage's stream
# fingerprint: a checkpoint of an older rule refuses to resume onto this one. Format 2 (issue
# 21): scores over the whole store, the held-out split in order space, `random` as a keyed
# bijection, mixtures drawn over training ranks. Format 3 (issue 21): packing windows sized from
# the store's mean stored length (not the epoch's), so a host packs only the windows it feeds.
STREAM_FORMAT = "highnoon.stream/3"
# Packed stages only (issue 21): the epoch visits its pool in a blocked keyed order
# (``curriculum.packed_order``), so a packed checkpoint of format 3 is refused; unpacked stages
# keep format 3 and their fingerprints.
PACKED_STREAM_FORMAT = "highnoon.stream/4"
# Windows the packed step estimate (the schedule's horizon) packs per epoch.
ESTIMATE_WINDOWS = 16


@dataclasses.dataclass(frozen=True)
class SplitTotals:
    """A mixed stage's held-out split summed over its sources (each has its own split)."""

    num_samples: int
    num_train: int
    num_eval: int


class StagePlan:
    """The data side of one stage: store, split, scheduler and per-host rows."""

    def __init__(
        self,
        index: int,
        name: str,
        settings: StageSettings,
        epochs: int,
        store: Any,
        seed: int,
        verbose: bool = False,
        *,
        learning_rate_multiplier: float = 1.0,
        datasets: Any = None,
        mixture_schedule: MixtureSchedule | None = None,
    ) -> None:
        self.index = index
        self.name = name
        self.settings = settings
        self.epochs = epochs
        self.store = store
        # Scales the run's schedule for this stage: stage LR / base LR * stage weight.
        self.learning_rate_multiplier = learning_rate_multiplier
        self.seed = derive_seed(seed, "stage", index)
        self.mixture = mixture_of(store)
        self.split: HeldOutSplit | SplitTotals
        if self.mixture is None:
            num_eval = eval_count(
                store.num_samples, settings.eval_fraction, settings.global_batch_size
            )
            self.split = HeldOutSplit(store.num_samples, num_eval, derive_seed(seed, "eval", index))
            self.order, self._order_fingerprint, lengths = self._order_of(store)
            # Training and held-out ranks, easy-to-hard, as store indices (evaluated on demand).
            self.train_order: OrderView = SplitOrder(self.order, self.split, "train")
            self.held_out: OrderView = SplitOrder(self.order, self.split, "eval")
            # the stored length at each training rank (what packing reads beside the order)
            self.train_lengths: OrderView = SplitOrder(
                lengths, self.split, "train", like=self.train_order
            )
        else:
            self._plan_sources(seed)
        self.dataset_names = _dataset_names(datasets, store)
        self.mixture_schedule = mixture_schedule
        self.scheduler = self._make_scheduler(verbose)
        if mixture_schedule is not None:
            self._check_schedule(mixture_schedule)
        if self.mixture is not None:
            self._plan_mixture()
        self._lengths: np.ndarray | None = None
        self._epoch_cache: tuple[tuple[int, ...], PackedEpoch | None, StepCounts] | None = None
        self._stream: tuple[tuple[int, int], PackedStream] | None = None
        self._estimates: dict[tuple[int, int], int] = {}
        self.seq_warmup = settings.seq_length_warmup(self.planned_steps())
        self.seq_warmup.check_stage(name, self.planned_steps())
        self._difficulty: np.ndarray | None = None
        self._eval_table: tuple[int, np.ndarray] | None = None
        self._score_scales: dict[str, scoring.ScoreScale] = {}

    # -- the order and the split ---------------------------------------------------------
    def _order_of(self, store: Any, *source: int) -> tuple[OrderView, str, OrderView]:
        """``store``'s easy-to-hard order of every stored sample, as an order view, the
        fingerprint of what it was sorted from (``source``: a mixture's source index, keying
        its ``random`` order), and its lengths view (the stored length at each position).
        Curriculum off: the index order (lengths: the store's ``lengths.bin`` itself);
        ``random``: a keyed bijection (stateless, ``KeyedPermutation(N, "random_order", stage
        seed, *source)``; lengths read through the store); a scored strategy: the store's
        stored order when it has one (``highnoon-prepare --orders``; lengths: its column, or
        through the store for an order of format 2), else sorted here from the whole store's
        scores (O(N) memory, once; lengths through the store, in memory for small data)."""
        order, fingerprint, lengths = self._order_and_column(store, source)
        return (
            order,
            fingerprint,
            LengthsThrough(order, store.lengths_at) if lengths is None else lengths,
        )

    def _order_and_column(
        self, store: Any, source: tuple[int, ...]
    ) -> tuple[OrderView, str, OrderView | None]:
        """``_order_of`` before its lengths view is settled: the order, its fingerprint and the
        stored order's lengths column, or None where lengths are read through the store."""
        strategy = self.settings.curriculum_strategy
        n = store.num_samples
        if strategy is None:
            return IdentityOrder(n), f"identity:{n}", None
        if strategy == "random":
            key = ":".join(str(k) for k in (self.seed, *source))
            return (
                PermutedOrder(n, "random_order", self.seed, *source),
                f"random_order:{key}:{n}",
                None,
            )
        stored = open_stored_order(store, strategy)
        if stored is not None:
            if not stored.has_lengths and self.settings.pack:
                logger.warning(
                    "stage %r: the stored %s order of %s has no lengths column (%s), so packing "
                    "reads lengths.bin once per sample; re-run highnoon-prepare-data "
                    "--orders_only=%s to add it",
                    self.name, strategy, store.path, stored.format, store.path,
                )  # fmt: skip
            return stored, stored.scores_fingerprint, stored.lengths_view()
        scores = scoring.scores_from_features(store.features, strategy)
        return order_from_scores(scores), scores_fingerprint(scores), None

    def _plan_sources(self, run_seed: int) -> None:
        """A mixed stage's sources, each on its own: its order (its store's stored order when
        present), its held-out split (``floor(n_i * eval_fraction)`` keyed samples, none when
        that leaves no training sample), laid end to end as the stage's order, training and
        held-out views of store indices. O(K) here; views cost the positions read."""
        parts = self.store.parts
        if len(parts) != len(self.mixture["part_counts"]):
            raise v.InvalidArgumentError(
                f"stage {self.name!r}: the mixed store {self.store.path!r} does not hold its "
                "parts' stores; make it with data.prepare_stage_store (store.concatenate)"
            )
        fraction = self.settings.eval_fraction
        orders, fingerprints, lengths, self.splits = [], [], [], []
        for i, part in enumerate(parts):
            order, fingerprint, part_lengths = self._order_of(part, i)
            num_eval = eval_count(part.num_samples, fraction, 1)
            seed = derive_seed(run_seed, "eval", self.index, i)
            orders.append(order)
            fingerprints.append(fingerprint)
            lengths.append(part_lengths)
            self.splits.append(HeldOutSplit(part.num_samples, num_eval, seed))
        firsts = np.cumsum([0] + [part.num_samples for part in parts]).tolist()[:-1]
        self.order = ConcatOrder(orders, firsts)
        train = [SplitOrder(o, sp, "train") for o, sp in zip(orders, self.splits)]
        self.train_order = ConcatOrder(train, firsts)
        self.held_out = ConcatOrder(
            [SplitOrder(o, sp, "eval") for o, sp in zip(orders, self.splits)], firsts
        )
        self.train_lengths = ConcatOrder(
            [SplitOrder(n, sp, "train", like=t) for n, sp, t in zip(lengths, self.splits, train)],
            [0] * len(parts),
        )
        self.split = SplitTotals(
            self.store.num_samples,
            sum(sp.num_train for sp in self.splits),
            sum(sp.num_eval for sp in self.splits),
        )
        self._part_firsts = firsts
        self._order_fingerprint = json.dumps(
            [fingerprints, [[sp.num_eval, sp.seed] for sp in self.splits]]
        )

    def _train_fingerprint(self) -> str:
        """What the scheduler's order (the training ranks) is made from: the order's
        fingerprint and the split (a mixture: each source's), as
        ``sha256:<hex>:<training samples>``."""
        split = self.split
        if isinstance(split, SplitTotals):
            made_of = self._order_fingerprint
        else:
            made_of = json.dumps([self._order_fingerprint, split.num_eval, split.seed])
        return f"sha256:{sha256_hex(made_of)}:{split.num_train}"

    @property
    def num_eval(self) -> int:
        """Held-out samples of the stage."""
        return self.split.num_eval

    @functools.cached_property
    def train_indices(self) -> np.ndarray:
        """Every training sample's store index, sorted (O(N): for mixtures, reports, tests)."""
        return np.sort(self.train_order[:])

    @functools.cached_property
    def eval_indices(self) -> np.ndarray:
        """Every held-out sample's store index, sorted (O(held-out))."""
        return np.sort(self.held_out[:])

    def _make_scheduler(self, verbose: bool) -> CurriculumScheduler:
        s = self.settings
        if s.curriculum_strategy is None:  # curriculum off: every sample, index order
            kwargs: dict[str, Any] = {"pacing": "constant", "initial_fraction": 1.0}
        else:
            kwargs = {
                "pacing": s.pacing,
                "initial_fraction": s.initial_fraction,
                "pacing_options": dict(s.pacing_options),
            }
            if (
                self.epochs == 1 and canonical_pacing(s.pacing) != WARMUP_STAIRCASE
            ):  # the last epoch is the first
                kwargs.update(pacing="constant", initial_fraction=1.0, pacing_options={})
        common = {
            "strategy": s.curriculum_strategy or "size_based",
            # The pool reaches the whole stage data at the stage's last epoch.
            "total_epochs": max(self.epochs - 1, 1),
            "seed": self.seed,
            "shuffle": s.shuffle,
            "global_batch_size": s.global_batch_size,
            "verbose": verbose,
            **kwargs,
        }
        if s.adaptive:
            scheduler: CurriculumScheduler = AdaptiveCurriculumScheduler(
                loss_threshold_for_progression=s.loss_threshold_for_progression,
                min_epochs_per_stage=s.min_epochs_per_stage,
                max_epochs_per_stage=s.max_epochs_per_stage,
                **common,
            )
        else:
            scheduler = CurriculumScheduler(**common)
        scheduler.prepare_curriculum_from_order(self.train_order, self._train_fingerprint())
        scheduler.set_order_lengths(self.train_lengths)
        return scheduler

    # -- mixtures ----------------------------------------------------------------------------
    def _plan_mixture(self) -> None:
        """Make each epoch's order the mixture's draw over the sources' pools (unweighted
        entries: every pool sample once, interleaved)."""
        self.scheduler.set_epoch_order(self._mixture_order)

    def mixture_shares(self, epoch: int) -> tuple[list[int], list[int], list[int]]:
        """``(pools, counts, starts)`` of a mixed ``epoch`` (``stage_data``, "Mixing rule"):
        each source's pool (the epoch's exposed size shared by the sources' training sizes,
        largest remainder; at least 1 where it has a share), its samples (the exposed size
        shared by the epoch's weights; unweighted: its pool) and its window's start (the sum
        of its earlier epochs' windows, modulo its pool). O(epoch * K)."""
        sizes = [sp.num_train for sp in self.splits]
        windows = [0] * len(sizes)
        for e in range(epoch + 1):
            exposed = self.scheduler.exposed_size(e)
            pools = apportion(exposed, sizes)
            weights = self.epoch_weights(e)
            counts = pools if weights is None else apportion(exposed, weights)
            pools = [max(p, 1) if c else p for p, c in zip(pools, counts)]
            if e < epoch:
                windows = [w + (c % p if p else 0) for w, c, p in zip(windows, counts, pools)]
        starts = [w % p if p else 0 for w, p in zip(windows, pools)]
        return pools, counts, starts

    def mixture_draw(self, epoch: int) -> MixtureDraw:
        """The draw of a mixed ``epoch``: an order view of training ranks (positions of
        ``train_order``), evaluated at the positions read."""
        pools, counts, starts = self.mixture_shares(epoch)
        firsts = np.cumsum([0] + [sp.num_train for sp in self.splits]).tolist()[:-1]
        return MixtureDraw(pools, counts, starts, firsts, self.seed)

    def _mixture_order(self, epoch: int, size: int) -> MixtureDraw:
        """The scheduler's epoch order (``set_epoch_order``): the draw, ``size`` long."""
        return self.mixture_draw(epoch)

    def _check_schedule(self, schedule: MixtureSchedule) -> None:
        """A schedule mixes an unweighted mixed store's entries over two or more epochs."""
        parts = len(self.mixture["part_counts"]) if self.mixture is not None else 1
        if self.mixture is None or self.mixture["weights"] is not None:
            raise v.InvalidArgumentError(
                f"stage {self.name!r}: a mixture schedule needs two or more unweighted dataset "
                f"entries (the store holds {parts} source(s)); give the weights in the schedule"
            )
        if len(schedule.points[0]) != parts:
            raise v.InvalidArgumentError(
                f"stage {self.name!r}: the mixture schedule has {len(schedule.points[0])} "
                f"weights per point but the stage's store holds {parts} sources"
            )
        if self.epochs < 2:
            raise v.InvalidArgumentError(
                f"stage {self.name!r}: a mixture schedule changes the weights between epochs but "
                f"the stage has {self.epochs} epoch; give it epochs >= 2"
            )

    def epoch_weights(self, epoch: int) -> tuple[float, ...] | None:
        """The mixture weights of ``epoch`` (None: a concatenation, every sample once)."""
        if self.mixture is None:
            return None
        if self.mixture_schedule is not None:
            return self.mixture_schedule.weights_at(epoch, self.epochs)
        weights = self.mixture["weights"]
        return None if weights is None else tuple(float(w) for w in weights)

    def samples_per_dataset(self) -> dict[str, int]:
        """Samples the stage's epochs train on, per dataset entry (its name as given); a name
        given twice sums. Recomputed from the plan, so a resumed stage counts exactly."""
        out: dict[str, int] = {}
        for epoch in range(self.epochs):
            for name, count in self.epoch_samples_per_dataset(epoch).items():
                out[name] = out.get(name, 0) + count
        return out

    def epoch_samples_per_dataset(self, epoch: int) -> dict[str, int]:
        """Samples ``epoch`` trains on, per dataset entry (a name given twice sums)."""
        if self.mixture is None:  # one entry: every trained sample is its own
            return {self.dataset_names[0]: int(self._epoch_samples(epoch))}
        counts = self.mixture_shares(epoch)[1]  # a packed epoch trains every exposed sample
        if not self.settings.pack:  # whole global batches: the draw's first pool_size samples
            counts = interleave_prefix(counts, self.scheduler.pool_size(epoch))
        out: dict[str, int] = {}
        for name, count in zip(self.dataset_names, counts):
            out[name] = out.get(name, 0) + int(count)
        return out

    def _epoch_samples(self, epoch: int) -> int:
        """Samples ``epoch`` trains on: its whole global batches, or every packed sample."""
        if self.settings.pack:
            return self.epoch_stream_size(epoch)
        return self.scheduler.steps_per_epoch(epoch) * self.settings.global_batch_size

    # -- what the run loop asks ----------------------------------------------------------
    def steps_per_epoch(self, epoch: int) -> int:
        """Global steps of ``epoch``. Packed: exact, from the whole epoch's packing (O(epoch):
        the report's and the tests'); the run loop asks ``steps_available`` instead and learns
        a packed epoch's end when its stream ends."""
        if self.settings.pack:
            return self.packed_epoch(epoch).num_steps
        return self.scheduler.steps_per_epoch(epoch)

    def steps_available(self, epoch: int, step: int, limit: int) -> int:
        """How many of the epoch steps ``[step, step + limit)`` exist: a packed epoch packs its
        stream up to them (``PackedStream.steps_available``); else its whole batches. The same
        on every host."""
        if self.settings.pack:
            return self.packed_stream(epoch).steps_available(step, limit)
        return max(0, min(limit, self.scheduler.steps_per_epoch(epoch) - step))

    def fraction(self, epoch: int) -> float:
        """The curriculum's exposed fraction at ``epoch`` (``get_stage_info``'s, without the
        rest of that report: every ``log`` event reads it)."""
        return float(self.scheduler.fraction_at(epoch))

    def host_rows(self, epoch: int, host_id: int, num_hosts: int) -> np.ndarray:
        """Store indices this host feeds in ``epoch``: [steps, global_batch // num_hosts]."""
        return self.scheduler.host_epoch_indices(epoch, host_id, num_hosts)

    def host_rows_at(
        self, epoch: int, first_step: int, last_step: int, host_id: int, num_hosts: int
    ) -> np.ndarray:
        """Store indices this host feeds at epoch steps ``[first_step, last_step)``:
        ``[last_step - first_step, global_batch // num_hosts]``, computed for those rows only
        (one host call's worth; ``host_rows(...)[first_step:last_step]``)."""
        return self.scheduler.host_range_indices(epoch, first_step, last_step, host_id, num_hosts)

    def step_totals(
        self,
        epoch: int,
        first_step: int,
        last_step: int,
        seq_length: int | None = None,
        step_tokens: np.ndarray | None = None,
    ) -> dict[str, int | float]:
        """Samples, real tokens, slots and padding of the global steps ``[first_step,
        last_step)`` of ``epoch`` on rows of ``seq_length`` tokens (``StepCounts.total``).

        Unpacked: samples and slots are whole global batches; the tokens are ``step_tokens``
        when given (the steps' own global loss-mask sums, which the step reduces anyway: a
        host call then reads no feature at all), else the lengths of those steps' global rows
        (``features_at``). Either way a call costs its own steps, whatever the corpus size.
        Packed: those steps' rows of the epoch's ``PackedStream`` (windows packed on demand)."""
        length = self.settings.max_seq_length if seq_length is None else seq_length
        if self.settings.pack:
            return self.packed_stream(epoch).step_counts(first_step, last_step).total()
        if step_tokens is None:
            rows = self.host_rows_at(epoch, first_step, last_step, 0, 1)
            lengths = self.store.features_at(rows.reshape(-1)).lengths.reshape(rows.shape)
            return row_counts(lengths, length).total()
        # Whole global batches: the sums directly (every host call makes them; no arrays).
        rows = (last_step - first_step) * self.settings.global_batch_size
        tokens = np.rint(np.asarray(step_tokens, dtype=np.float64)).astype(np.int64)
        return count_totals(rows, int(tokens.sum()), rows * length)

    @property
    def lengths(self) -> np.ndarray:
        """Stored tokens of every sample of the store (read once; O(N): the report's exact
        packing, never the run's)."""
        if self._lengths is None:
            self._lengths = stored_lengths(self.store)
        return self._lengths

    def epoch_stream_size(self, epoch: int) -> int:
        """Samples a packed ``epoch`` trains on (O(1))."""
        return self.scheduler.epoch_stream_size(epoch)

    def epoch_stream_range(self, epoch: int, first: int, last: int) -> np.ndarray:
        """Store indices at stream positions ``[first, last)`` of a packed ``epoch``, in
        visiting order, at the cost of those positions."""
        return self.scheduler.epoch_stream_range(epoch, first, last)

    def epoch_stream(self, epoch: int) -> np.ndarray:
        """Store indices of every sample a packed ``epoch`` trains on, in visiting order
        (O(epoch))."""
        return self.epoch_stream_range(epoch, 0, self.epoch_stream_size(epoch))

    @functools.cached_property
    def packing_window(self) -> int:
        """Samples per packing window, from the store's figures (``store_packing_window``)."""
        store = self.store
        return store_packing_window(
            store.num_samples, store.num_tokens, self.settings.max_seq_length
        )

    def _stream_items(self, epoch: int, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        """Store indices and stored lengths at stream positions ``[first, last)`` of a packed
        ``epoch``: the lengths from the order's lengths view, read a shuffle window at a time
        (``CurriculumScheduler.epoch_stream_items``), or through the store where the epoch has
        none (step pacing, an in-memory selection)."""
        samples, lengths = self.scheduler.epoch_stream_items(epoch, first, last)
        if lengths is None:
            lengths = self.store.lengths_at(samples)
        return samples, lengths

    def begin_packed_epoch(self, epoch: int, cursor: PackingCursor | None = None) -> PackedStream:
        """A fresh ``PackedStream`` of ``epoch`` starting at ``cursor`` (None: the epoch's
        start): what the run loop and its pipeline read from this epoch on."""
        s = self.settings
        stream = PackedStream(
            self.epoch_stream_size(epoch),
            functools.partial(self._stream_items, epoch),
            None,
            s.max_seq_length,
            s.global_batch_size,
            self.packing_window,
            cursor=cursor,
        )
        self._stream = ((epoch, self.scheduler.exposed_size(epoch)), stream)
        return stream

    def packed_stream(self, epoch: int) -> PackedStream:
        """``epoch``'s packing, window by window on demand (``pack=True``): the one
        ``begin_packed_epoch`` made, or a new one from the epoch's start."""
        key = (epoch, self.scheduler.exposed_size(epoch))
        if self._stream is None or self._stream[0] != key:
            return self.begin_packed_epoch(epoch)
        return self._stream[1]

    def packing_cursor(self, epoch: int, step: int) -> PackingCursor:
        """The packed ``epoch``'s cursor at epoch step ``step`` (for the data position)."""
        return self.packed_stream(epoch).cursor_at(step)

    def packed_epoch(self, epoch: int) -> PackedEpoch:
        """The packing of ``epoch`` (``pack=True``): the same on every host."""
        return self._epoch(epoch)[1]

    def step_counts(self, epoch: int, seq_length: int | None = None) -> StepCounts:
        """Samples, real tokens and computed slots of every global step of ``epoch``, on rows of
        ``seq_length`` tokens (default ``max_seq_length``; shorter during a warm-up)."""
        return self._epoch(epoch, seq_length)[2]

    def samples_dropped(self, epoch: int) -> int:
        """Samples the pacing exposes at ``epoch`` that the epoch leaves out (0 when packed)."""
        return self.scheduler.samples_dropped(epoch, self.settings.pack)

    def _epoch(
        self, epoch: int, seq_length: int | None = None
    ) -> tuple[tuple[int, ...], PackedEpoch | None, StepCounts]:
        """The current epoch's packing and counts, cached (adaptive decisions change the pool,
        so the key holds the exposed size)."""
        s = self.settings
        length = s.max_seq_length if seq_length is None else seq_length
        key = (epoch, self.scheduler.exposed_size(epoch), length)
        if self._epoch_cache is None or self._epoch_cache[0] != key:
            if s.pack:
                packed = pack_epoch(
                    self.epoch_stream(epoch),
                    self.lengths,
                    s.max_seq_length,
                    s.global_batch_size,
                    window=self.packing_window,
                )
                counts = packed.counts()
            else:
                packed = None
                counts = batch_counts(self.host_rows(epoch, 0, 1), self.lengths, length)
            self._epoch_cache = (key, packed, counts)
        return self._epoch_cache

    # -- row length (sequence-length warm-up) --------------------------------------------
    def segment_at(self, step_in_epoch: int, epoch_steps: int, stage_step: int) -> tuple[int, int]:
        """``(row length, end)``: the length of the step at ``step_in_epoch`` (stage step
        ``stage_step``) and the epoch step at which that length ends (a change or the epoch's
        end). The loop feeds ``[step_in_epoch, end)`` as one static-shape segment, so no host
        call straddles a change and a resume at any step picks the same length."""
        length = self.seq_warmup.length_at(stage_step)
        change = self.seq_warmup.next_change(stage_step)
        end = epoch_steps if change is None else step_in_epoch + change - stage_step
        return length, min(end, epoch_steps)

    def segments(self, epoch: int, first_stage_step: int) -> list[tuple[int, int, int]]:
        """``(start, end, row length)`` segments covering ``epoch``, whose first step is stage
        step ``first_stage_step`` (``epoch_first_step``)."""
        steps = self.steps_per_epoch(epoch)
        out, start = [], 0
        while start < steps:
            length, end = self.segment_at(start, steps, first_stage_step + start)
            out.append((start, end, length))
            start = end
        return out

    def epoch_first_step(self, epoch: int) -> int:
        """Stage step at which ``epoch`` begins (for an adaptive stage: under the decisions made
        so far)."""
        return sum(self.steps_per_epoch(e) for e in range(epoch))

    # -- held-out evaluation -------------------------------------------------------------
    def difficulty_strategy(self) -> str:
        """The scores that define the eval buckets (setting ``eval_difficulty_strategy``)."""
        chosen = self.settings.eval_difficulty_strategy or self.settings.curriculum_strategy
        return "size_based" if chosen in (None, "random") else chosen

    def difficulty_scores(self) -> np.ndarray:
        """``difficulty_strategy`` scores of every sample of the stage's store (float64; O(N):
        the curriculum report's)."""
        if self._difficulty is None:
            strategy = self.difficulty_strategy()
            stores = self.store.parts if self.mixture is not None else (self.store,)
            self._difficulty = np.concatenate(
                [scoring.scores_from_features(store.features, strategy) for store in stores]
            )  # a mixture: each source on its own scale
        return self._difficulty

    def difficulty_of(self, indices: np.ndarray) -> np.ndarray:
        """``difficulty_strategy`` scores of the samples ``indices`` only (any shape), equal to
        ``difficulty_scores()[indices]``: their features read by range, normalised by the whole
        store's maxima (``store_score_scale``)."""
        strategy = self.difficulty_strategy()
        flat = np.asarray(indices, dtype=np.int64).reshape(-1)
        if self.mixture is None:
            return self._scores_in(self.store, flat, strategy).reshape(np.shape(indices))
        scores = np.empty(flat.shape, dtype=np.float64)
        part = np.searchsorted(self._part_firsts, flat, side="right") - 1
        for i in np.unique(part).tolist():  # each source on its own scale
            hit = part == i
            first = self._part_firsts[i]
            scores[hit] = self._scores_in(self.store.parts[i], flat[hit] - first, strategy)
        return scores.reshape(np.shape(indices))

    def _scores_in(self, store: Any, indices: np.ndarray, strategy: str) -> np.ndarray:
        """``strategy`` scores of ``store``'s samples ``indices`` by its whole store's maxima."""
        scale = None if strategy == "size_based" else self._score_scale_of(store)
        return scoring.scores_from_features(store.features_at(indices), strategy, scale=scale)

    def _score_scale_of(self, store: Any) -> scoring.ScoreScale:
        """A store's score maxima, once per plan (from a stored order's json when present)."""
        if store.path not in self._score_scales:
            self._score_scales[store.path] = store_score_scale(store)
        return self._score_scales[store.path]

    @property
    def score_scale(self) -> scoring.ScoreScale:
        """The whole store's score maxima (from a stored order's json when there is one)."""
        return self._score_scale_of(self.store)

    def eval_batches(self, max_batches: int) -> int:
        """Eval batches per evaluation: whole micro-batches (``batch_size`` rows, the size one
        replica step already fits in memory) of the held-out set, at most ``max_batches``."""
        return min(self.num_eval // self.settings.batch_size, max_batches)

    def eval_table(self, max_batches: int) -> np.ndarray:
        """Store indices of every eval batch, ``[batches, batch_size]``, easiest rows first.

        The evaluated rows are ``count`` held-out ranks spread over the whole held-out set in
        64 runs of consecutive ranks (``heldout.spread_ranks``; all of them when they fit), so
        a stored order is read in about 64 blocks. Held-out samples are
        one keyed choice per stratum of the stage's order, so the rows span the stage's whole
        difficulty range; they are ordered by (difficulty score, index) so that each difficulty
        bucket is a run of whole batches (when the difficulty is the curriculum's own
        strategy, the held-out ranks already are in that order and no feature is read; a
        mixture's sources are each on their own scale, so its rows are then ordered by their
        quantile in their source's held-out set, ``_by_source_quantile``). The loss over all of
        them does not depend on that order. Costs O(rows), whatever the held-out set's size."""
        size = self.settings.batch_size
        count = self.eval_batches(max_batches) * size
        if self._eval_table is None or self._eval_table[0] != count:
            ranks = spread_ranks(count, self.num_eval)
            own = self.difficulty_strategy() == self.settings.curriculum_strategy
            if own and self.mixture is None:
                # Ranks ascend the stage's own order: already by (difficulty score, index),
                # so no feature is read.
                ranked = self.held_out[ranks]
            elif own:
                ranked = self.held_out[self._by_source_quantile(ranks)]
            else:
                picked = np.sort(self.held_out[ranks])
                ranked = picked[order_from_scores(self.difficulty_of(picked))]
            self._eval_table = (count, ranked.reshape(-1, size))
        return self._eval_table[1]

    def _by_source_quantile(self, ranks: np.ndarray) -> np.ndarray:
        """A mixture's held-out ranks (sources end to end, each easy to hard) ordered by their
        quantile in their own source, ``(r + 0.5) / E_i``, then by source: the sources'
        difficulty scales are not comparable, their quantiles are. That is the order of the
        mixture's interleave with counts ``E_i`` (``interleave_rank``, exact integers)."""
        sizes = [split.num_eval for split in self.splits]
        firsts = np.cumsum(sizes) - np.asarray(sizes)
        source = np.searchsorted(firsts, ranks, side="right") - 1  # an empty source: skipped
        merged = interleave_rank(sizes, source, ranks - firsts[source])
        return ranks[np.argsort(merged, kind="stable")]

    def eval_rows(self, host_id: int, num_hosts: int, max_batches: int) -> np.ndarray:
        """Store indices of this host's eval batches: [batches, batch_size // num_hosts]."""
        per_host = self.settings.batch_size // num_hosts
        return self.eval_table(max_batches)[:, host_id * per_host : (host_id + 1) * per_host]

    def eval_buckets(self, max_batches: int) -> list[tuple[int, int]]:
        """Difficulty buckets of the eval batches, easiest first: ``(first, end)`` batch ranges,
        ``eval_difficulty_buckets`` of them (fewer when there are fewer batches; none when off),
        as equal as whole batches allow."""
        batches = self.eval_batches(max_batches)
        count = min(self.settings.eval_difficulty_buckets, batches)
        return [(b * batches // count, (b + 1) * batches // count) for b in range(count)]

    def eval_bucket_edges(self, max_batches: int) -> list[float]:
        """Difficulty score at each bucket boundary: the first row's score of each bucket,
        then the last row's (``len(buckets) + 1`` values, ascending)."""
        buckets = self.eval_buckets(max_batches)
        if not buckets:
            return []
        scores = self.difficulty_of(self.eval_table(max_batches))
        return [float(scores[first, 0]) for first, _ in buckets] + [float(scores[-1, -1])]

    def planned_steps(self) -> int:
        """Optimizer steps of the whole stage under the planned (non-adaptive) pacing. Packed:
        an estimate (``estimated_epoch_steps``), since a packed epoch's steps are known only
        when its stream ends; past it the learning-rate schedule holds its final value."""
        if not self.settings.pack:
            return sum(self.steps_per_epoch(epoch) for epoch in range(self.epochs))
        return sum(self.estimated_epoch_steps(e) for e in range(self.epochs))

    def estimated_epoch_steps(self, epoch: int) -> int:
        """A packed ``epoch``'s steps estimated from ``ESTIMATE_WINDOWS`` of its windows spread
        over the stream (``estimate_packed_rows``; exact for an epoch of that few windows), the
        same on every host, at the cost of those windows."""
        size = self.epoch_stream_size(epoch)
        key = (epoch, size)
        if key not in self._estimates:
            rows = estimate_packed_rows(
                size,
                functools.partial(self._stream_items, epoch),
                None,
                self.settings.max_seq_length,
                self.packing_window,
                ESTIMATE_WINDOWS,
                span=self._estimate_span(epoch, size),
            )
            self._estimates[key] = -(-rows // self.settings.global_batch_size)
        return self._estimates[key]

    def _estimate_span(self, epoch: int, size: int) -> int:
        """The stream positions the horizon estimate samples its windows from: the epoch's
        first shuffle window (``packed_order``; a random sample of the pool's chunks, read once
        and read again by the epoch's first steps), the whole stream when it is one window."""
        if size == 0 or not self.settings.shuffle or self.scheduler.pacing.unit == "step":
            return size
        return packed_permutation(size, self.scheduler.seed, epoch).window_size(0)

    def stream_fingerprint(self) -> dict[str, str]:
        """What this stage's stream of global batches is made from: the stage's name, its data
        (the store's content hash), the tokenizer, and the settings that shape the stream
        (everything but the learning rate and clipping). Hosts compare it at start-up; a resume
        compares it with the one the checkpoint recorded."""
        shaping = {k: x for k, x in self.settings.to_json().items() if k not in _NOT_STREAM}
        for switch, names in _STREAM_WHEN_ON.items():
            if not shaping[switch]:
                for name in names:
                    shaping.pop(name)
        stream: dict[str, Any] = {
            "format": PACKED_STREAM_FORMAT if self.settings.pack else STREAM_FORMAT,
            "settings": shaping,
            "epochs": self.epochs,
            "seed": self.seed,
        }
        if self.mixture is not None:  # only mixed stages: single-source fingerprints unchanged
            stream["mixture"] = {k: self.mixture[k] for k in ("rule", "weights", "part_counts")}
            if self.mixture_schedule is not None:  # only scheduled: other mixtures unchanged
                stream["mixture"]["schedule"] = self.mixture_schedule.to_json()
        return {
            "name": self.name,
            "data": str(self.store.fingerprint),
            "tokenizer": json.dumps(self.store.tokenizer.to_config(), sort_keys=True),
            "stream": json.dumps(stream, sort_keys=True),
        }


def _dataset_names(datasets: Any, store: Any) -> list[str]:
    """Each dataset entry's name as the user gave it (without its weight); without entries, the
    store's source names."""
    if datasets is None:
        described = store.manifest.get("sources") or [{}]
        return [str(d.get("name", f"source{i}")) for i, d in enumerate(described)]
    if isinstance(datasets, str | tuple):
        datasets = [datasets]
    names = []
    for entry in datasets:
        inner = entry[0] if isinstance(entry, tuple | list) else entry
        names.append(inner if isinstance(inner, str) else str(getattr(inner, "name", inner)))
    mixing = store.manifest.get("mixing")
    parts = len(mixing["part_counts"]) if isinstance(mixing, dict) else 1
    if len(names) != parts:
        raise v.InvalidArgumentError(
            f"datasets={list(datasets)!r} name {len(names)} entries but the stage's store holds "
            f"{parts} source(s); pass the entries the store was prepared from"
        )
    return names
