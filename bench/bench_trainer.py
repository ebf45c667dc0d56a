"""Trainer throughput against Keras ``model.fit(jit_compile=True)``, interleaved in one run.

    python bench/bench_trainer.py              # highnoon-tiny and a ~20M-parameter model
    python bench/bench_trainer.py --quick      # highnoon-tiny only, few steps (smoke run)
    python bench/bench_trainer.py --agreement  # the preemption agreement's cost, 2 workers

For each model, in this one process:

1. The Trainer runs one stage on the embedded ``stdlib_code`` dataset (a slice of ``max_samples``
   files), curriculum on (``size_based`` order, linear pacing, so epoch 0 sees a
   fraction of the data and the last epoch all of it), ``jit_compile=True``, AdamW, global-norm
   clipping, no eval and no checkpoints.
2. Keras ``model.fit(jit_compile=True)`` (SparseCategoricalCrossentropy(from_logits=True), AdamW
   with the same ``global_clipnorm``) trains a second instance of the same model on the exact
   global batches the Trainer feeds, in the same order (built beforehand from the same
   ``StagePlan`` and pipeline), as numpy arrays with the loss mask as per-token sample weights.

The two are interleaved window by window: every ``log_interval`` steps the Trainer's ``log``
callback (emitted after the step's results reached the host) calls ``fit`` on the batches of the
window the Trainer just trained. So both see the same machine at nearly the same moment, and a
noisy neighbour slows both alike (these machines are shared: two runs of the *same* code a minute
apart differ by several percent). Each fit window is timed from its first batch's start to its
last batch's end, so fit's per-call set-up is not counted against it; the Trainer's window is
the time between two ``log`` events minus the fit call made in between, so its per-step Python
loop, epoch changes (a new curriculum pool and ``tf.data`` pipeline) and host syncs all count.
The first window of each holds tracing and XLA compilation and is discarded.

A third case splits tiny's 8-row batch into 2 accumulated micro-batches of 4 rows inside the
Trainer's step (``gradient_accumulation_steps=2``), against fit on the 8-row batch.

ratio = Trainer tokens/s / fit tokens/s over all timed windows (the issue asks for at least 1.0),
with a 95% interval from resampling the windows (seeded bootstrap): single steps on this machine
vary by +-20% for both, so only the interval says whether a gap is real. Tokens are the processed
``batch x seq`` positions (padding included: it costs the same compute). MFU is model FLOPs/s
against a float32 XLA matmul peak measured in the same run (``bench_model.matmul_peak``), with
model FLOPs per token = 6 N + 12 L d s (``bench_model``'s convention).

``--agreement`` measures what preemption costs a multi-host run: in every host call the hosts
agree whether any of them got SIGTERM (``TrainStep.train_fn(agree=True)``: each host's flag
rides in the reduction that already sums the call's losses and token counts, so no collective is
added, only a third element). Two ``MultiWorkerMirroredStrategy`` workers on 127.0.0.1 run
the Trainer's own step on highnoon-tiny and alternate windows of host calls without and with the
agreement; ratio = time with / time without, with a 95% bootstrap interval over window pairs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_model import matmul_peak
from bench_stats import ratio_interval

import highnoon as hn
from highnoon import data as hn_data
from highnoon.training.stage_plan import StagePlan
from highnoon.training.trainer import Trainer
from highnoon.utils.validation import check_positive_int

DATASET = "stdlib_code"
LEARNING_RATE = 1e-3
CLIP_NORM = 1.0
# ~20M parameters: within 10% of the name, like the named presets (18.2M with the byte vocab).
MODEL_20M = {"d_model": 512, "num_layers": 6, "num_heads": 8, "num_kv_heads": 2, "d_ff": 1536}


@dataclass
class Case:
    """One model's benchmark setting."""

    label: str
    overrides: dict[str, Any]
    batch: int
    seq: int
    max_samples: int  # data size: sets the steps of the run (with epochs and the pacing)
    epochs: int
    log_interval: int  # steps per timing window; the first window is discarded
    accumulation: int = 1  # Trainer micro-batches per step (batch / accumulation rows each)


def cases(quick: bool) -> list[Case]:
    if quick:
        return [Case("highnoon-tiny", {}, 8, 256, 120, 2, 3)]
    return [
        Case("highnoon-tiny", {}, 8, 256, 480, 2, 3),
        Case("~20M", MODEL_20M, 4, 128, 320, 2, 3),
        # The same global batch as 2 accumulated micro-batches of 4 rows, against fit's 8 rows.
        Case("highnoon-tiny, accumulation 2", {}, 8, 256, 480, 2, 3, accumulation=2),
    ]


def make_model(case: Case) -> keras.Model:
    keras.utils.set_random_seed(0)
    return hn.create_model("highnoon-tiny", max_seq_length=max(case.seq, 256), **case.overrides)


def flops_per_token(config: Any, seq: int) -> float:
    """6 N + 12 L d s, N = non-embedding parameters + the V x d output head (bench_model)."""
    n = config.non_embedding_parameters() + config.vocab_size * config.d_model
    return 6.0 * n + 12.0 * config.num_layers * config.d_model * seq


def _clock() -> np.ndarray:
    """[wall seconds, this process's CPU seconds]: CPU time is what the work costs, wall time
    also holds whatever other processes on the machine took from us."""
    return np.array([time.perf_counter(), time.process_time()])


def make_trainer(case: Case, cache_dir: str, steps_per_call: int) -> Trainer:
    trainer = Trainer(
        make_model(case),
        learning_rate=LEARNING_RATE,
        batch_size=case.batch // case.accumulation,
        gradient_accumulation_steps=case.accumulation,
        max_seq_length=case.seq,
        clip_norm=CLIP_NORM,
        jit_compile=True,
        steps_per_call=steps_per_call,
        eval_fraction=0.0,
        max_samples=case.max_samples,
        data_cache_dir=cache_dir,
        write_summaries=False,
        verbose=False,
        seed=0,
        curriculum_strategy="size_based",  # a curriculum on, as the figures in BENCHMARKS.md
    )
    return trainer.add_curriculum_stage("bench", [DATASET], epochs=case.epochs)


def planned_batches(case: Case, trainer: Trainer, cache_dir: str) -> dict[str, np.ndarray]:
    """The global batches the Trainer will feed, in order, concatenated over its epochs."""
    store = hn_data.prepare_stage_store(
        [DATASET], trainer.tokenizer, cache_dir, max_samples=case.max_samples, progress=False
    )
    plan = StagePlan(0, "bench", trainer.settings, case.epochs, store, seed=0)
    parts = []
    for epoch in range(case.epochs):
        dataset = hn_data.make_host_dataset(
            store, plan.host_rows(epoch, 0, 1), case.seq, seed=plan.seed, epoch=epoch
        )
        parts.extend(dataset.as_numpy_iterator())
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


class FitWindows:
    """Keras ``fit(jit_compile=True)`` on a fresh copy of the model, one window at a time."""

    class _Span(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if batch == 0:
                self.begin = _clock()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.end = _clock()

    def __init__(self, case: Case, batches: dict[str, np.ndarray]) -> None:
        self.case, self.batches = case, batches
        self.model = make_model(case)
        self.model.compile(
            optimizer=keras.optimizers.AdamW(LEARNING_RATE, global_clipnorm=CLIP_NORM),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=True,
        )
        self._span = self._Span()

    def run(self, first_step: int, last_step: int) -> np.ndarray:
        """Trains on global batches [first_step, last_step); returns [wall, CPU] seconds."""
        rows = slice(first_step * self.case.batch, last_step * self.case.batch)
        self.model.fit(
            self.batches["inputs"][rows],
            self.batches["targets"][rows],
            sample_weight=self.batches["loss_mask"][rows].astype(np.float32),
            batch_size=self.case.batch,
            shuffle=False,
            epochs=1,
            verbose=0,
            callbacks=[self._span],
        )
        return self._span.end - self._span.begin


@dataclass
class Window:
    """One timed window of ``steps`` steps: [wall, CPU] seconds for the Trainer and for fit."""

    steps: int
    trainer: np.ndarray
    fit: np.ndarray


def interleaved_windows(trainer: Trainer, fit: FitWindows, log_interval: int) -> list[Window]:
    """Trains with the Trainer; after each of its ``log`` events, fit trains the same window."""
    windows: list[Window] = []
    state: dict[str, Any] = {"step": 0, "resumed": None}

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] != "log":
            return
        arrived = _clock()
        step = int(event["step"])
        trainer_seconds = arrived - state["resumed"] if state["resumed"] is not None else None
        fit_seconds = fit.run(state["step"], step)
        if trainer_seconds is not None:  # the first window holds compilation: not timed
            windows.append(Window(step - state["step"], trainer_seconds, fit_seconds))
        state["step"] = step
        state["resumed"] = _clock()

    trainer.add_callback(on_event)
    trainer.train(save_checkpoints=False, checkpoint_dir=None, log_interval=log_interval)
    return windows


def bootstrap_interval(windows: list[Window]) -> tuple[float, float]:
    """95% interval of the wall-time ratio (fit seconds / Trainer seconds, i.e. Trainer speed
    over fit speed) when the windows are resampled with replacement."""
    return ratio_interval([w.fit[0] for w in windows], [w.trainer[0] for w in windows])


def trace_count(trainer: Trainer) -> int:
    """Traces of the Trainer's compiled functions (one per distinct step config is expected)."""
    fns = [*trainer._step._train_fns.values(), *trainer._step.engine._xla.values()]
    return sum(f.experimental_get_tracing_count() for f in fns)


def bench_case(case: Case, cache_dir: str, steps_per_call: int) -> dict[str, Any]:
    trainer = make_trainer(case, cache_dir, steps_per_call)
    batches = planned_batches(case, trainer, cache_dir)
    fit = FitWindows(case, batches)
    windows = interleaved_windows(trainer, fit, case.log_interval)
    total = trainer._position.global_step
    if len(batches["inputs"]) != total * case.batch:
        raise RuntimeError(f"planned {len(batches['inputs'])} rows, the Trainer fed {total}")
    if not windows:
        raise RuntimeError(f"{total} steps give no timed window of {case.log_interval} steps")
    tokens = sum(w.steps for w in windows) * case.batch * case.seq
    trainer_seconds = sum(w.trainer for w in windows)
    fit_seconds = sum(w.fit for w in windows)
    low, high = bootstrap_interval(windows)
    result = {
        "case": case,
        "params": trainer.model.config.num_parameters(),
        "flops_per_token": flops_per_token(trainer.model.config, case.seq),
        "steps": total,
        "timed_steps": sum(w.steps for w in windows),
        "windows": len(windows),
        "traces": trace_count(trainer),
        "trainer": tokens / trainer_seconds[0],
        "fit": tokens / fit_seconds[0],
        "ratio": fit_seconds[0] / trainer_seconds[0],
        "ratio_cpu": fit_seconds[1] / trainer_seconds[1],
        "interval": (low, high),
    }
    del trainer, fit
    keras.backend.clear_session()
    return result


def agreement_worker(windows: int, calls: int) -> None:
    """One of two workers: windows of host calls without / with the agreement, alternating."""
    import json

    from bench_model import token_batch

    from highnoon.distribute import create_strategy, is_chief
    from highnoon.training.step import StepConfig, TrainStep

    strategy = create_strategy("multi_worker", peer_timeout_seconds=120)
    with strategy.scope():
        model = hn.create_model("highnoon-tiny")
        model.build()
        optimizer = keras.optimizers.AdamW(LEARNING_RATE)
        optimizer.build(model.trainable_variables)
    step = TrainStep(model, optimizer, strategy)
    config = StepConfig(clip_norm=CLIP_NORM)
    train, train_agreeing = step.train_fn(config), step.train_fn(config, agree=True)
    batch = token_batch(8, 128, model.config.vocab_size)
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: tf.data.Dataset.from_tensors(
            {k: v[: 8 // ctx.num_input_pipelines] for k, v in batch.items()}
        ).repeat()
    )
    iterator = iter(dataset)
    train(iterator, 1)[0].numpy()  # trace and compile both before timing
    train_agreeing(iterator, 1, False)[0].numpy()
    times: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(windows):
        for mode in ("without", "with"):
            begin = time.perf_counter()
            for _ in range(calls):
                if mode == "with":  # what a multi-host Trainer runs: the agreement in the call
                    losses, _, flags = train_agreeing(iterator, 1, False)
                    float(flags)
                else:
                    losses, _ = train(iterator, 1)
                losses.numpy()
            times[mode].append(time.perf_counter() - begin)
    if is_chief(strategy):
        print("AGREEMENT " + json.dumps(times), flush=True)


def agreement_cost(windows: int, calls: int) -> None:
    """Starts two agreement workers and prints the ratio with / without."""
    import json

    from highnoon.launch.local_cluster import run_local_cluster

    command = [sys.executable, os.path.abspath(__file__), "--agreement-worker",
               f"--windows={windows}", f"--calls={calls}"]  # fmt: skip
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = run_local_cluster(
        command, 2, timeout=3600, env=dict(os.environ, PYTHONPATH=root), echo=lambda line: None
    )
    if result.exit_code:
        raise RuntimeError(f"agreement workers failed: {result.outputs}")
    line = next(x for x in result.outputs[0].splitlines() if x.startswith("AGREEMENT "))
    times = {k: np.array(v) for k, v in json.loads(line[len("AGREEMENT ") :]).items()}
    picks = np.random.default_rng(0).integers(0, windows, (2000, windows))
    ratios = times["with"][picks].sum(axis=1) / times["without"][picks].sum(axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    per_call = (times["with"].sum() - times["without"].sum()) / (windows * calls)
    print("| workers | host calls timed | ms per call without | ratio with/without | 95% interval "
          "| agreement ms per call |")  # fmt: skip
    print("|---:|---:|---:|---:|---|---:|")
    print(
        f"| 2 | {2 * windows * calls} | {1e3 * times['without'].sum() / (windows * calls):.1f} "
        f"| {times['with'].sum() / times['without'].sum():.3f} | [{low:.3f}, {high:.3f}] "
        f"| {1e3 * per_call:.2f} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="highnoon-tiny only, few steps")
    parser.add_argument("--steps-per-call", type=int, default=1, help="Trainer(steps_per_call=)")
    parser.add_argument("--agreement", action="store_true", help="the agreement's cost only")
    parser.add_argument("--agreement-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--windows", type=int, default=20, help="--agreement: window pairs")
    parser.add_argument("--calls", type=int, default=10, help="--agreement: calls per window")
    args = parser.parse_args(argv)
    if args.agreement_worker:
        agreement_worker(args.windows, args.calls)
        return
    if args.agreement:
        agreement_cost(args.windows, args.calls)
        return
    check_positive_int("--steps-per-call", args.steps_per_call)
    started = time.perf_counter()
    peak = matmul_peak()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases(args.quick):
            result = bench_case(case, os.path.join(tmp, "cache"), args.steps_per_call)
            results.append(result)
            print(
                f"{case.label}: {result['steps']} steps, {result['windows']} timed windows; "
                f"Trainer traces {result['traces']}",
                flush=True,
            )
    print(f"\nmatmul peak (best of 1024^2, 2048^2, 3072^2 float32, XLA): {peak / 1e9:.1f} GFLOP/s")
    print(f"Trainer(jit_compile=True, steps_per_call={args.steps_per_call}), curriculum size_based")
    print()
    print(
        "| model | params | batch x seq | timed steps | Trainer tokens/s | fit tokens/s | ratio "
        "| 95% interval | ratio per CPU-second | Trainer MFU | fit MFU |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        c = r["case"]
        low, high = r["interval"]
        print(
            f"| {c.label} | {r['params'] / 1e6:.1f}M | {c.batch} x {c.seq} | {r['timed_steps']} "
            f"| {r['trainer']:,.0f} | {r['fit']:,.0f} | {r['ratio']:.3f} "
            f"| [{low:.3f}, {high:.3f}] | {r['ratio_cpu']:.3f} "
            f"| {100 * r['trainer'] * r['flops_per_token'] / peak:.1f}% "
            f"| {100 * r['fit'] * r['flops_per_token'] / peak:.1f}% |"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
