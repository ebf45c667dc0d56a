"""One curriculum stage made concrete: its settings, data, held-out split and scheduler.

A ``StagePlan`` answers, from (data, seed, config) alone, every question the run loop asks:
how many steps an epoch has, which samples this host feeds at each step, how long its rows are
at each step (the sequence-length warm-up), and which samples are held out for evaluation and in
which difficulty bucket each evaluated row falls. Nothing here depends on how many hosts run the
job except the slice a host takes (docs/design.md, "Determinism").

A mixed stage (``(entry, weight)`` datasets) draws each epoch's samples by the sources' shares
(``highnoon.data.stage_data``, "Mixing rule"): the plan groups the training samples by source and
hands the scheduler a per-epoch draw; pools, packing and the warm-up work on that draw. With a
mixture schedule (``highnoon.data.mixture_schedule``) the shares are the schedule's weights of
each epoch; each source's window continues where its previous epochs' windows ended.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from highnoon.curriculum import AdaptiveCurriculumScheduler, CurriculumScheduler, scoring
from highnoon.curriculum.order import order_from_scores
from highnoon.curriculum.pacing import WARMUP_STAIRCASE, canonical_pacing
from highnoon.data.features import SampleFeatures
from highnoon.data.mixture_schedule import MixtureSchedule
from highnoon.data.packing import (
    PackedEpoch,
    StepCounts,
    batch_counts,
    pack_epoch,
    packed_row_count,
    stored_lengths,
)
from highnoon.data.stage_data import mixture_counts, mixture_epoch, mixture_of
from highnoon.training.settings import StageSettings
from highnoon.utils import validation as v
from highnoon.utils.hashing import derive_seed, keyed_permutation

# Settings that never change the stream of global batches (a resume may change them), and new
# stream settings that leave it unchanged while off (so runs checkpointed before they existed
# keep their fingerprints).
_NOT_STREAM = ("learning_rate", "clip_norm", "eval_difficulty_buckets", "eval_difficulty_strategy")
_STREAM_WHEN_ON = {
    "seq_length_warmup_steps": ("seq_length_warmup_steps", "seq_length_warmup_start")
}


def split_eval(num_samples: int, eval_fraction: float, global_batch: int, seed: int):
    """Held-out split: ``(train_indices, eval_indices)``, both sorted.

    The eval set is a keyed random choice of ``floor(n * eval_fraction)`` samples, rounded down to
    whole global batches; it is empty when that leaves fewer than one global batch to train on.
    """
    n_eval = int(num_samples * eval_fraction) // global_batch * global_batch
    if n_eval == 0 or num_samples - n_eval < global_batch:
        return np.arange(num_samples, dtype=np.int64), np.zeros(0, dtype=np.int64)
    chosen = np.zeros(num_samples, dtype=bool)
    chosen[keyed_permutation(num_samples, "eval", seed)[:n_eval]] = True
    return np.flatnonzero(~chosen).astype(np.int64), np.flatnonzero(chosen).astype(np.int64)


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
        self.train_indices, self.eval_indices = split_eval(
            store.num_samples,
            settings.eval_fraction,
            settings.global_batch_size,
            derive_seed(seed, "eval", index),
        )
        self.dataset_names = _dataset_names(datasets, store)
        self.mixture = mixture_of(store)
        self.mixture_schedule = mixture_schedule
        self.scheduler = self._make_scheduler(verbose)
        self._mixture_groups: list[np.ndarray] = []
        self._mixture_counts: list[int] = []
        self._scheduled: list[tuple[list[int], list[int]]] = []  # per epoch: counts, starts
        if mixture_schedule is not None:
            self._check_schedule(mixture_schedule)
        if self.mixture is not None:
            self._plan_mixture()
        self._lengths: np.ndarray | None = None
        self._epoch_cache: tuple[tuple[int, ...], PackedEpoch | None, StepCounts] | None = None
        self.seq_warmup = settings.seq_length_warmup(self.planned_steps())
        self.seq_warmup.check_stage(name, self.planned_steps())
        self._difficulty: np.ndarray | None = None
        self._eval_order: np.ndarray | None = None

    def _make_scheduler(self, verbose: bool) -> CurriculumScheduler:
        s = self.settings
        if s.curriculum_strategy is None:  # curriculum off: every sample, index order
            scores = np.zeros(self.train_indices.size, dtype=np.float64)
            kwargs: dict[str, Any] = {"pacing": "constant", "initial_fraction": 1.0}
        else:
            features = self.store.features
            subset = SampleFeatures(
                lengths=features.lengths[self.train_indices],
                surprisal_sum=features.surprisal_sum[self.train_indices],
            )
            scores = scoring.scores_from_features(
                subset, s.curriculum_strategy, seed=self.seed, indices=self.train_indices
            )
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
        scheduler.prepare_curriculum_from_scores(scores)
        return scheduler

    # -- mixtures ----------------------------------------------------------------------------
    @functools.cached_property
    def _source_of(self) -> np.ndarray:
        """A mixed store's source (dataset entry) of every stored sample: int64
        ``[num_samples]`` (the store holds the sources one after another)."""
        sizes = self.mixture["part_counts"]
        return np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)

    def _plan_mixture(self) -> None:
        """Group the training samples by source and make each epoch draw its shares of them
        (unweighted entries: every sample once, interleaved)."""
        weights = self.mixture["weights"]
        sources = self._source_of[self.train_indices]
        parts = len(self.mixture["part_counts"])
        self._mixture_groups = [np.flatnonzero(sources == i) for i in range(parts)]
        sizes = [group.size for group in self._mixture_groups]
        self._mixture_counts = sizes if weights is None else mixture_counts(sizes, weights)
        for name, size, count in zip(self.dataset_names, sizes, self._mixture_counts):
            if size == 0 and count:
                raise v.InvalidArgumentError(
                    f"stage {self.name!r}: dataset {name!r} has no training samples left after "
                    f"the held-out split (eval_fraction={self.settings.eval_fraction}); lower "
                    "eval_fraction or give it more data"
                )
        self.scheduler.set_epoch_selection(self.mixture_epoch)

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

    def _scheduled_epoch(self, epoch: int) -> tuple[list[int], list[int]]:
        """Counts and window starts of a scheduled mixture's ``epoch`` (made once per epoch,
        in order: each start is the previous epoch's start plus its window)."""
        sizes = [group.size for group in self._mixture_groups]
        while len(self._scheduled) <= epoch:
            e = len(self._scheduled)
            counts = mixture_counts(sizes, self.epoch_weights(e))
            if e == 0:
                starts = [0] * len(sizes)
            else:
                before, previous = self._scheduled[-1]
                starts = [
                    (start + count % n) % n if n else 0
                    for start, count, n in zip(previous, before, sizes)
                ]
            self._scheduled.append((counts, starts))
        return self._scheduled[epoch]

    def mixture_epoch(self, epoch: int) -> np.ndarray:
        """Positions in ``train_indices`` that a weighted mixture's ``epoch`` draws (its shares)."""
        if self.mixture_schedule is None:
            return mixture_epoch(self._mixture_groups, self._mixture_counts, self.seed, epoch)
        counts, starts = self._scheduled_epoch(epoch)
        return mixture_epoch(self._mixture_groups, counts, self.seed, epoch, starts)

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
        if self.settings.pack:
            trained = self.epoch_stream(epoch)
        else:
            trained = self.host_rows(epoch, 0, 1).reshape(-1)
        counts = np.bincount(self._source_of[trained], minlength=len(self.dataset_names))
        out: dict[str, int] = {}
        for name, count in zip(self.dataset_names, counts.tolist()):
            out[name] = out.get(name, 0) + int(count)
        return out

    def _epoch_samples(self, epoch: int) -> int:
        """Samples ``epoch`` trains on: its whole global batches, or every packed sample."""
        if self.settings.pack:
            return int(self.epoch_stream(epoch).size)
        return self.scheduler.steps_per_epoch(epoch) * self.settings.global_batch_size

    # -- what the run loop asks ----------------------------------------------------------
    def steps_per_epoch(self, epoch: int) -> int:
        if self.settings.pack:
            return self.packed_epoch(epoch).num_steps
        return self.scheduler.steps_per_epoch(epoch)

    def fraction(self, epoch: int) -> float:
        return float(self.scheduler.get_stage_info(epoch)["fraction"])

    def host_rows(self, epoch: int, host_id: int, num_hosts: int) -> np.ndarray:
        """Store indices this host feeds in ``epoch``: [steps, global_batch // num_hosts]."""
        positions = self.scheduler.host_epoch_indices(epoch, host_id, num_hosts)
        return self.train_indices[positions]

    @property
    def lengths(self) -> np.ndarray:
        """Stored tokens of every sample of the store (read once)."""
        if self._lengths is None:
            self._lengths = stored_lengths(self.store)
        return self._lengths

    def epoch_stream(self, epoch: int) -> np.ndarray:
        """Store indices of every sample a packed ``epoch`` trains on, in visiting order."""
        return self.train_indices[self.scheduler.epoch_stream(epoch)]

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
                    self.epoch_stream(epoch), self.lengths, s.max_seq_length, s.global_batch_size
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
        """``difficulty_strategy`` scores of every sample of the stage's store (float64)."""
        if self._difficulty is None:
            self._difficulty = scoring.scores_from_features(
                self.store.features, self.difficulty_strategy()
            )
        return self._difficulty

    def eval_batches(self, max_batches: int) -> int:
        """Eval batches per evaluation: whole micro-batches (``batch_size`` rows, the size one
        replica step already fits in memory) of the held-out set, at most ``max_batches``."""
        return min(self.eval_indices.size // self.settings.batch_size, max_batches)

    def eval_table(self, max_batches: int) -> np.ndarray:
        """Store indices of every eval batch, ``[batches, batch_size]``, easiest rows first.

        The evaluated rows are a keyed random choice among the held-out samples (all of them
        when they fit), so they span the stage's whole difficulty range, ordered by (difficulty
        score, index) so that each difficulty bucket is a run of whole batches. The loss over
        all of them does not depend on that order."""
        size = self.settings.batch_size
        count = self.eval_batches(max_batches) * size
        if self._eval_order is None:  # a keyed order of the held-out samples, made once
            self._eval_order = keyed_permutation(self.eval_indices.size, "eval_rows", self.seed)
        picked = self.eval_indices[np.sort(self._eval_order[:count])]
        ranked = picked[order_from_scores(self.difficulty_scores()[picked])]
        return ranked.reshape(-1, size)

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
        scores = self.difficulty_scores()[self.eval_table(max_batches)]
        return [float(scores[first, 0]) for first, _ in buckets] + [float(scores[-1, -1])]

    def planned_steps(self) -> int:
        """Optimizer steps of the whole stage under the planned (non-adaptive) pacing."""
        if not self.settings.pack:
            return sum(self.steps_per_epoch(epoch) for epoch in range(self.epochs))
        rows = self.settings.global_batch_size
        return sum(
            -(-packed_row_count(self.epoch_stream(e), self.lengths, self.settings.max_seq_length)
              // rows)
            for e in range(self.epochs)
        )  # fmt: skip

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
        stream: dict[str, Any] = {"settings": shaping, "epochs": self.epochs, "seed": self.seed}
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
