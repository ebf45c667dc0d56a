"""Useful-token throughput of packing against Keras ``fit`` on padded and length-bucketed batches.

    python bench/bench_packing.py                  # stdlib_code, stdlib_docs, quickstart; seq 512
    python bench/bench_packing.py --seq 128        # the quickstart's own sequence length
    python bench/bench_packing.py --quick          # highnoon-tiny, few windows (smoke run)
    python bench/bench_packing.py --planning-only  # planning cost of a 1M-sample stage only

**Data.** Each case is a list of curriculum stages run back to back: ``stdlib_code``,
``stdlib_docs``, and ``quickstart`` (the stages of ``gin/curricula/quickstart.gin``: docs, code,
instructions), ``max_samples`` per source as in ``gin/runs/quickstart.gin``. A stage's epochs
follow the Trainer's defaults, as the quickstart does (no curriculum: 2 epochs over all the
stage's data, each in its own keyed order). Every epoch's sample stream is the scheduler's
``epoch_stream`` (the exposed pool in its keyed order), packed with ``pack_epoch`` into steps of
``batch`` rows of ``seq`` tokens.

**Arms**, each training its own copy of the same model (same initial weights), interleaved:

* ``packed``: ``Trainer(pack=True, jit_compile=True)`` itself, whole loop included (host calls,
  events, epoch changes with a new packing and pipeline), through the case's stages; its ``log``
  event every ``window`` steps hands the steps just trained to the fit arms (as
  ``bench_trainer.py`` does). AdamW with global-norm clipping at a constant learning rate.
* ``padded``: Keras ``fit(jit_compile=True)`` on the same samples, one per row, padded to
  ``seq`` (``SparseCategoricalCrossentropy(from_logits=True)``, AdamW with ``global_clipnorm``,
  the loss mask as per-token sample weights), ``batch`` rows per step.
* ``bucketed``: ``fit`` on the same samples grouped by ``tf.data``'s
  ``bucket_by_sequence_length`` into buckets of ``seq/8, seq/4, seq/2, seq`` tokens, ``batch``
  rows per step, padded to the bucket's length. The model needs a static length, so each bucket
  length is its own compiled Keras model sharing the weights and the optimizer (compiled
  before timing, on one batch with zero sample weights).

**Windows.** The Trainer trains ``window`` steps; then both fit arms train the samples those
steps held (whole ``batch``-row batches: a fit arm carries the samples that do not fill a
batch (a bucketed batch) over to the next window; what is left at a stage's end is not
trained). A fit window is timed from its first batch's start to its last batch's end (fit's
set-up is not counted against it); the Trainer's window from the end of its previous ``log``
callback to the start of this one. A window holding a stage's first step (tracing, XLA
compilation, a fit arm's first bucket) is not timed. So all three see the
machine at nearly the same moment: these machines are shared, and two runs of the same code a
minute apart differ by several percent.

**Figures.** Useful tokens are real target tokens (padding and what truncation cut excluded);
each arm's tokens/s is its useful tokens over its timed seconds. Ratios are packed over fit,
with a 95% interval from resampling the windows (seeded bootstrap). Padding is the share of
computed positions that are padding. Useful-token MFU: useful tokens/s x model FLOPs per token
(6 N + 12 L d s at s = ``seq``, ``bench_model``'s convention, the same for every arm, so MFU
ratios are throughput ratios) over a float32 XLA matmul peak measured in the same run.

**Planning cost.** ``pack_epoch`` and ``packed_row_count`` on a 1M-sample stage (lengths
resampled from ``stdlib_docs`` with a seeded generator), numpy only, as every host runs them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import matmul_peak

import highnoon as hn
from highnoon import data as hn_data
from highnoon.curriculum import CurriculumScheduler
from highnoon.training.trainer import Trainer

LEARNING_RATE = 1e-3
CLIP_NORM = 1.0
GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


@dataclass
class Case:
    """One benchmark case: stages (each a dataset list) and the shapes."""

    label: str
    stages: list[list[Any]]
    batch: int
    seq: int
    max_samples: int
    epochs: int
    window: int  # packed steps per timed window


def quickstart_stages() -> list[list[Any]]:
    """The dataset lists of ``gin/curricula/quickstart.gin``'s stages, read through gin."""
    import gin

    import highnoon.training.run  # noqa: F401  (registers run_training)

    with gin.unlock_config():
        gin.parse_config_file(os.path.join(GIN_DIR, "curricula", "quickstart.gin"))
    stages = gin.query_parameter("run_training.stages")
    gin.clear_config()
    return [list(stage["datasets"]) for stage in stages]


def cases(quick: bool, seq: int, names: list[str]) -> list[Case]:
    stages = {
        "stdlib_code": [["stdlib_code"]],
        "stdlib_docs": [["stdlib_docs"]],
        "quickstart": quickstart_stages(),
    }
    if quick:
        return [Case(f"{name} (quick)", stages[name], 16, seq, 160, 2, 2) for name in names]
    return [Case(name, stages[name], 16, seq, 1200, 2, 4) for name in names]


def make_model(case: Case) -> keras.Model:
    keras.utils.set_random_seed(0)
    return hn.create_model("highnoon-tiny", max_seq_length=max(case.seq, 256))


def flops_per_token(config: Any, seq: int) -> float:
    """6 N + 12 L d s, N = non-embedding parameters + the V x d output head (bench_model)."""
    n = config.non_embedding_parameters() + config.vocab_size * config.d_model
    return 6.0 * n + 12.0 * config.num_layers * config.d_model * seq


def _clock() -> np.ndarray:
    """[wall seconds, this process's CPU seconds]."""
    return np.array([time.perf_counter(), time.process_time()])


# -- the stages' data ---------------------------------------------------------------------------


@dataclass
class Epoch:
    """One epoch of one stage, packed: what every arm trains on."""

    stage: int
    epoch: int
    store: Any
    seed: int
    packed: hn_data.PackedEpoch


# -- the arms -----------------------------------------------------------------------------------


class _Span(keras.callbacks.Callback):
    """From the first batch's start to the last batch's end of one ``fit`` call."""

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if batch == 0:
            self.begin = _clock()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.end = _clock()


def _compile(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )


def _fit(model: keras.Model, x: np.ndarray, y: np.ndarray, w: np.ndarray, batch: int) -> np.ndarray:
    span = _Span()
    model.fit(
        x, y, sample_weight=w, batch_size=batch, shuffle=False, epochs=1, verbose=0,
        callbacks=[span],
    )  # fmt: skip
    return span.end - span.begin


@dataclass
class Queue:
    """Samples a fit arm has been given but not trained yet (they did not fill a batch)."""

    store: Any = None
    samples: list[int] = field(default_factory=list)

    def add(self, epoch: Epoch, samples: np.ndarray) -> None:
        if epoch.store is not self.store:  # a new stage: the rest of the last one is dropped
            self.store, self.samples = epoch.store, []
        self.samples.extend(samples.tolist())


class FitPadded:
    """Keras ``fit(jit_compile=True)``, one sample per row padded to ``seq``."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.model = make_model(case)
        _compile(self.model, keras.optimizers.AdamW(LEARNING_RATE, global_clipnorm=CLIP_NORM))
        self.queue = Queue()

    def run(self, epoch: Epoch, samples: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Trains the whole batches of the queued samples: (seconds, useful tokens, slots)."""
        self.queue.add(epoch, samples)
        b, seq = self.case.batch, self.case.seq
        take = len(self.queue.samples) // b * b
        if take == 0:
            return np.zeros(2), 0, 0
        rows = np.array(self.queue.samples[:take], dtype=np.int64).reshape(-1, b)
        del self.queue.samples[:take]
        data = hn_data.HostBatcher(epoch.store, rows, seq).batches(0, rows.shape[0])
        flat = {k: v.reshape(-1, seq) for k, v in data.items()}
        mask = flat["loss_mask"].astype(np.float32)
        seconds = _fit(self.model, flat["inputs"], flat["targets"], mask, b)
        return seconds, int(mask.sum()), take * seq


class FitBucketed:
    """Keras ``fit`` on ``bucket_by_sequence_length`` batches; one compiled model per bucket
    length, all sharing the weights and the optimizer."""

    def __init__(self, case: Case) -> None:
        self.case = case
        seq = case.seq
        self.lengths = sorted({max(1, seq // 8), max(1, seq // 4), max(1, seq // 2), seq})
        self.lm = make_model(case)
        self.lm(tf.zeros([1, 8], tf.int32))
        self.optimizer = keras.optimizers.AdamW(LEARNING_RATE, global_clipnorm=CLIP_NORM)
        self.models = {}
        for length in self.lengths:
            inputs = keras.Input(shape=(length,), batch_size=case.batch, dtype="int32")
            model = keras.Model(inputs, self.lm(inputs))
            _compile(model, self.optimizer)
            zeros = np.zeros((case.batch, length), np.int32)
            _fit(model, zeros, zeros, np.zeros((case.batch, length), np.float32), case.batch)
            self.models[length] = model
        self.queue = Queue()

    def run(self, epoch: Epoch, samples: np.ndarray) -> tuple[np.ndarray, int, int]:
        self.queue.add(epoch, samples)
        b, seq = self.case.batch, self.case.seq
        queued = np.array(self.queue.samples, dtype=np.int64)
        if queued.size == 0:
            return np.zeros(2), 0, 0
        pairs = hn_data.packing.segment_lengths(hn_data.stored_lengths(epoch.store)[queued], seq)
        bucket = np.searchsorted(self.lengths, pairs)  # the shortest bucket that holds it
        chosen = np.zeros(queued.size, dtype=bool)
        for k in range(len(self.lengths)):  # whole batches of every bucket; the rest waits
            members = np.flatnonzero(bucket == k)
            chosen[members[: members.size // b * b]] = True
        if not chosen.any():
            return np.zeros(2), 0, 0
        self.queue.samples = queued[~chosen].tolist()
        batches = self._bucketed(epoch, queued[chosen], pairs[chosen])
        seconds, tokens, slots = np.zeros(2), 0, 0
        for length in self.lengths:
            group = [x for x in batches if x[0].shape[1] == length]
            if not group:
                continue
            x, y, w = (np.concatenate([g[i] for g in group]) for i in range(3))
            seconds += _fit(self.models[length], x, y, w, b)
            tokens, slots = tokens + int(w.sum()), slots + w.size
        return seconds, tokens, slots

    def _bucketed(self, epoch: Epoch, samples: np.ndarray, pairs: np.ndarray) -> list[tuple]:
        """``tf.data``'s ``bucket_by_sequence_length`` over the samples' (inputs, targets,
        weights), each of ``pairs`` tokens, padded to the bucket length."""
        seq = self.case.seq
        plain = hn_data.HostBatcher(epoch.store, samples[None, :], seq).batch(0)
        rows = [
            (plain["inputs"][i, :n], plain["targets"][i, :n], np.ones(n, np.float32))
            for i, n in enumerate(pairs.tolist())
        ]
        spec = (
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.float32),
        )
        dataset = tf.data.Dataset.from_generator(
            lambda: iter(rows), output_signature=spec
        ).bucket_by_sequence_length(
            element_length_func=lambda x, y, w: tf.shape(x)[0],
            bucket_boundaries=[length + 1 for length in self.lengths],
            bucket_batch_sizes=[self.case.batch] * (len(self.lengths) + 1),
            pad_to_bucket_boundary=True,
            drop_remainder=True,
        )
        return list(dataset.as_numpy_iterator())


# -- the interleaved run ----------------------------------------------------------------------


@dataclass
class Window:
    """One timed window: per arm [wall, CPU] seconds, useful tokens and computed slots."""

    seconds: dict[str, np.ndarray]
    tokens: dict[str, int]
    slots: dict[str, int]


def trainer_run(case: Case, cache_dir: str, on_window: Callable) -> list[Epoch]:
    """Trains ``Trainer(pack=True)`` through the case's stages. Its ``log`` event (every
    ``window`` steps) calls ``on_window(pieces, seconds, timed)``: ``pieces`` are the ``(epoch,
    first, last)`` step ranges trained since the last event, ``seconds`` their [wall, CPU] time
    (the callbacks' own time excluded). Returns every epoch's packing, as the Trainer planned it."""
    trainer = Trainer(
        make_model(case),
        learning_rate=LEARNING_RATE,
        batch_size=case.batch,
        max_seq_length=case.seq,
        pack=True,
        clip_norm=CLIP_NORM,
        jit_compile=True,
        lr_schedule="constant",
        warmup_steps=0,
        max_samples=case.max_samples,
        eval_fraction=0.0,
        data_cache_dir=cache_dir,
        verbose=False,
        write_summaries=False,
    )
    for index, datasets in enumerate(case.stages):
        trainer.add_curriculum_stage(f"stage{index}", datasets, epochs=case.epochs)
    epochs, bounds, firsts, step = [], [], set(), 0
    for plan in trainer.plan(epochs_per_stage=case.epochs):
        firsts.add(step)
        for epoch in range(plan.epochs):
            packed = hn_data.pack_epoch(
                plan.epoch_stream(epoch), plan.lengths, case.seq, case.batch
            )
            epochs.append(Epoch(plan.index, epoch, plan.store, plan.seed, packed))
            bounds.append((step, step + packed.num_steps))
            step += packed.num_steps
    state = {"step": 0, "clock": _clock()}

    def on_log(event: dict[str, Any]) -> None:
        if event["event"] != "log":
            return
        seconds = _clock() - state["clock"]
        first, last = state["step"], event["step"]
        pieces = [
            (epoch, max(first, lo) - lo, min(last, hi) - lo)
            for epoch, (lo, hi) in zip(epochs, bounds)
            if max(first, lo) < min(last, hi)
        ]
        on_window(pieces, seconds, not any(first <= f < last for f in firsts))
        state["step"], state["clock"] = last, _clock()

    trainer.add_callback(on_log)
    trainer.train(
        epochs_per_stage=case.epochs,
        save_checkpoints=False,
        log_interval=case.window,
        eval_interval=10**9,
        checkpoint_interval=10**9,
    )
    return epochs


def interleaved_windows(case: Case, cache_dir: str) -> tuple[list[Window], list[Epoch]]:
    padded, bucketed = FitPadded(case), FitBucketed(case)
    windows: list[Window] = []

    def on_window(pieces: list[tuple], seconds: np.ndarray, timed: bool) -> None:
        fit = {"padded": [np.zeros(2), 0, 0], "bucketed": [np.zeros(2), 0, 0]}
        tokens = slots = 0
        for epoch, first, last in pieces:
            samples = epoch.packed.step_samples(first, last)
            counts = epoch.packed.counts().total(first, last)
            tokens, slots = tokens + counts["tokens"], slots + counts["slots"]
            for name, arm in (("padded", padded), ("bucketed", bucketed)):
                got = arm.run(epoch, samples)
                fit[name] = [fit[name][i] + got[i] for i in range(3)]
        if timed:
            windows.append(
                Window(
                    seconds={"packed": seconds, **{k: v[0] for k, v in fit.items()}},
                    tokens={"packed": tokens, **{k: v[1] for k, v in fit.items()}},
                    slots={"packed": slots, **{k: v[2] for k, v in fit.items()}},
                )
            )

    epochs = trainer_run(case, cache_dir, on_window)
    return windows, epochs


def speed(windows: list[Window], arm: str) -> float:
    tokens = sum(w.tokens[arm] for w in windows)
    return tokens / sum(w.seconds[arm][0] for w in windows)


def bootstrap_interval(
    windows: list[Window], arm: str, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of packed tokens/s over ``arm`` tokens/s when the windows are resampled."""
    picks = np.random.default_rng(seed).integers(0, len(windows), (resamples, len(windows)))

    def rate(name: str) -> np.ndarray:
        tokens = np.array([w.tokens[name] for w in windows], dtype=np.float64)
        seconds = np.array([w.seconds[name][0] for w in windows])
        return tokens[picks].sum(axis=1) / seconds[picks].sum(axis=1)

    low, high = np.percentile(rate("packed") / rate(arm), [2.5, 97.5])
    return float(low), float(high)


def bench_case(case: Case, cache_dir: str, peak: float) -> dict[str, Any]:
    windows, epochs = interleaved_windows(case, cache_dir)
    if not windows:
        raise RuntimeError(f"{case.label}: no timed window; use more data or a smaller window")
    model = make_model(case)
    flops = flops_per_token(model.config, case.seq)
    arms = ("packed", "padded", "bucketed")
    rates = {arm: speed(windows, arm) for arm in arms}
    padding = {
        arm: 1.0 - sum(w.tokens[arm] for w in windows) / sum(w.slots[arm] for w in windows)
        for arm in arms
    }
    result = {
        "case": case,
        "windows": len(windows),
        "steps": sum(e.packed.num_steps for e in epochs),
        "samples": sum(e.packed.num_samples for e in epochs),
        "rates": rates,
        "padding": padding,
        "mfu": {arm: rates[arm] * flops / peak for arm in arms},
        "ratio": {arm: rates["packed"] / rates[arm] for arm in ("padded", "bucketed")},
        "interval": {arm: bootstrap_interval(windows, arm) for arm in ("padded", "bucketed")},
    }
    keras.backend.clear_session()
    return result


# -- planning cost ------------------------------------------------------------------------------


def planning_cost(cache_dir: str, num_samples: int = 1_000_000) -> None:
    """Stream + packing of every epoch of a ``num_samples`` stage, as every host computes it."""
    docs = hn_data.prepare_stage_store(["stdlib_docs"], "byte", cache_dir, progress=False)
    rng = np.random.default_rng(0)
    lengths = rng.choice(hn_data.stored_lengths(docs), num_samples)
    print(f"\nplanning cost, {num_samples:,} samples (stdlib_docs lengths resampled)")
    print("| seq | rows/step | epoch pool | stream s | pack_epoch s | row count s | fill |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for seq, rows in ((512, 64), (2048, 256)):
        scheduler = CurriculumScheduler(
            verbose=False, pacing="linear", total_epochs=4, initial_fraction=0.2, seed=0,
            global_batch_size=rows,
        )  # fmt: skip
        scheduler.prepare_curriculum_from_scores(lengths.astype(np.float64))
        for epoch in (0, 4):
            t0 = time.perf_counter()
            stream = scheduler.epoch_stream(epoch)
            t1 = time.perf_counter()
            packed = hn_data.pack_epoch(stream, lengths, seq, rows)
            t2 = time.perf_counter()
            hn_data.packed_row_count(stream, lengths, seq)
            t3 = time.perf_counter()
            fill = 1.0 - packed.counts().total()["padding_fraction"]
            print(
                f"| {seq} | {rows} | {stream.size:,} | {t1 - t0:.2f} | {t2 - t1:.2f} "
                f"| {t3 - t2:.2f} | {fill:.4f} |"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few samples and windows")
    parser.add_argument("--seq", type=int, default=512, help="max_seq_length of every arm")
    parser.add_argument(
        "--cases", default="stdlib_code,stdlib_docs,quickstart", help="comma-separated"
    )
    parser.add_argument("--planning-only", action="store_true", help="only the planning cost")
    args = parser.parse_args(argv)
    names = [name for name in args.cases.split(",") if name]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = os.path.join(tmp, "cache")
        if args.planning_only:
            planning_cost(cache_dir)
            return
        peak = matmul_peak((1024,), 3) if args.quick else matmul_peak()
        results = [bench_case(case, cache_dir, peak) for case in cases(args.quick, args.seq, names)]
        print(f"\nmatmul peak (float32, XLA): {peak / 1e9:.1f} GFLOP/s; highnoon-tiny")
        print(
            "| case | batch x seq | samples | windows | packed tok/s | padded tok/s "
            "| bucketed tok/s | vs padded [95%] | vs bucketed [95%] | padding p/a/b "
            "| useful MFU p/a/b |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---|---|---|---|")
        for r in results:
            c, rates, pad, mfu = r["case"], r["rates"], r["padding"], r["mfu"]
            vs = {
                arm: f"{r['ratio'][arm]:.2f} [{r['interval'][arm][0]:.2f}, "
                f"{r['interval'][arm][1]:.2f}]"
                for arm in ("padded", "bucketed")
            }
            print(
                f"| {c.label} | {c.batch} x {c.seq} | {r['samples']} | {r['windows']} "
                f"| {rates['packed']:,.0f} | {rates['padded']:,.0f} | {rates['bucketed']:,.0f} "
                f"| {vs['padded']} | {vs['bucketed']} "
                f"| {pad['packed']:.2f}/{pad['padded']:.2f}/{pad['bucketed']:.2f} "
                f"| {100 * mfu['packed']:.1f}/{100 * mfu['padded']:.1f}/"
                f"{100 * mfu['bucketed']:.1f}% |"
            )
        if not args.quick:
            planning_cost(cache_dir)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
