"""Trainer throughput against Keras ``model.fit(jit_compile=True)`` on the same model and data.

    python bench/bench_trainer.py            # highnoon-tiny and a ~20M-parameter model
    python bench/bench_trainer.py --quick    # highnoon-tiny only, few steps (smoke run)

For each model, in this one process:

1. The Trainer runs one stage on the embedded ``stdlib_code`` dataset (a slice of ``max_samples``
   files), curriculum on (the default ``size_based`` order, linear pacing, so epoch 0 sees a
   fraction of the data and the last epoch all of it), ``jit_compile=True``, AdamW, global-norm
   clipping, no eval and no checkpoints. A callback stamps the time of every ``log`` event
   (``log_interval`` steps apart; each is emitted after the step's results reached the host).
2. Keras ``model.fit(jit_compile=True)`` (SparseCategoricalCrossentropy(from_logits=True), AdamW
   with the same ``global_clipnorm``) on a second instance of the same model, fed the exact global
   batches the Trainer fed, in the same order (rebuilt from the same ``StagePlan`` and pipeline),
   as numpy arrays with the loss mask as per-token sample weights. A callback stamps the end of
   every batch.

Throughput is measured over the same step window for both, [first log step, last log step]: the
first window holds tracing and XLA compilation and is discarded. The Trainer's window includes
its epoch change (a new curriculum pool, a new ``tf.data`` pipeline); fit sees one flat epoch.
Tokens are the processed ``batch x seq`` positions (padding included: it costs the same compute).

ratio = Trainer tokens/s / fit tokens/s (the issue asks for at least 1.0). MFU is model FLOPs/s
against a float32 XLA matmul peak measured in the same run (``bench_model.matmul_peak``), with
model FLOPs per token = 6 N + 12 L d s (``bench_model``'s convention). The runs alternate
(Trainer, fit, Trainer, fit, ...) for ``--repeats`` rounds and the best of each is reported, so
load from other processes on the machine hurts both alike.
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

import highnoon as hn
from highnoon import data as hn_data
from highnoon.training.stage_plan import StagePlan
from highnoon.training.trainer import Trainer

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


def cases(quick: bool) -> list[Case]:
    if quick:
        return [Case("highnoon-tiny", {}, 8, 256, 120, 2, 3)]
    return [
        Case("highnoon-tiny", {}, 8, 256, 240, 2, 6),
        Case("~20M", MODEL_20M, 4, 128, 64, 2, 3),
    ]


def make_model(case: Case) -> keras.Model:
    keras.utils.set_random_seed(0)
    return hn.create_model("highnoon-tiny", max_seq_length=max(case.seq, 256), **case.overrides)


def flops_per_token(config: Any, seq: int) -> float:
    """6 N + 12 L d s, N = non-embedding parameters + the V x d output head (bench_model)."""
    n = config.non_embedding_parameters() + config.vocab_size * config.d_model
    return 6.0 * n + 12.0 * config.num_layers * config.d_model * seq


def _clock() -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds): CPU time is what the step costs, wall time
    also holds whatever other processes on the machine took from us."""
    return time.perf_counter(), time.process_time()


def window_rates(
    stamps: dict[int, tuple[float, float]], rows: int, seq: int, first: int, last: int
) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second) from step ``first`` to step ``last``."""
    if last <= first or first not in stamps or last not in stamps:
        raise ValueError(f"steps first={first}, last={last} must be stamped and first < last")
    tokens = (last - first) * rows * seq
    (wall0, cpu0), (wall1, cpu1) = stamps[first], stamps[last]
    return tokens / (wall1 - wall0), tokens / (cpu1 - cpu0)


def run_trainer(case: Case, cache_dir: str, steps_per_call: int) -> tuple[dict, Trainer]:
    """Trains one stage; returns {step: clock at its log event} and the trainer."""
    trainer = Trainer(
        make_model(case),
        learning_rate=LEARNING_RATE,
        batch_size=case.batch,
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
    )
    trainer.add_curriculum_stage("bench", [DATASET], epochs=case.epochs)
    stamps: dict[Any, Any] = {}  # step -> clock; "epoch_ends" -> steps

    def stamp(event: dict[str, Any]) -> None:
        if event["event"] == "log":
            stamps[int(event["step"])] = _clock()
        elif event["event"] == "epoch_end":
            stamps.setdefault("epoch_ends", []).append(int(event["step"]))

    trainer.add_callback(stamp)
    trainer.train(save_checkpoints=False, checkpoint_dir=None, log_interval=case.log_interval)
    return stamps, trainer


def trainer_batches(case: Case, trainer: Trainer, cache_dir: str) -> dict[str, np.ndarray]:
    """The global batches the Trainer fed, in order, concatenated over its epochs."""
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


class _BatchClock(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.stamps: dict[int, tuple[float, float]] = {}

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.stamps[batch + 1] = _clock()  # keyed by steps done, like the Trainer


def run_fit(case: Case, batches: dict[str, np.ndarray]) -> dict[int, tuple[float, float]]:
    model = make_model(case)
    model.compile(
        optimizer=keras.optimizers.AdamW(LEARNING_RATE, global_clipnorm=CLIP_NORM),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    clock = _BatchClock()
    model.fit(
        batches["inputs"],
        batches["targets"],
        sample_weight=batches["loss_mask"].astype(np.float32),
        batch_size=case.batch,
        shuffle=False,
        epochs=1,
        verbose=0,
        callbacks=[clock],
    )
    return clock.stamps


def trace_count(trainer: Trainer) -> int:
    """Traces of the Trainer's compiled functions (one per distinct step config is expected)."""
    fns = trainer._step._train_fns.values()
    return sum(f.experimental_get_tracing_count() for f in fns)


def bench_case(case: Case, cache_dir: str, steps_per_call: int, repeats: int) -> dict[str, Any]:
    trainer_rates, fit_rates, trainer_steady, fit_steady = [], [], [], []
    batches, config = None, None
    for _ in range(repeats):
        stamps, trainer = run_trainer(case, cache_dir, steps_per_call)
        total = trainer._position.global_step
        boundary = stamps.pop("epoch_ends")[-2]  # the last epoch change
        first, last = case.log_interval, max(stamps)
        steady = min(s for s in stamps if s > boundary)  # first stamp inside the last epoch
        trainer_rates.append(window_rates(stamps, case.batch, case.seq, first, last))
        trainer_steady.append(window_rates(stamps, case.batch, case.seq, steady, last))
        traces = trace_count(trainer)
        if batches is None:
            batches = trainer_batches(case, trainer, cache_dir)
            config = trainer.model.config
            if len(batches["inputs"]) != total * case.batch:
                raise RuntimeError(
                    f"rebuilt {len(batches['inputs'])} rows, the Trainer fed {total * case.batch}"
                )
        fit_stamps = run_fit(case, batches)
        fit_rates.append(window_rates(fit_stamps, case.batch, case.seq, first, last))
        fit_steady.append(window_rates(fit_stamps, case.batch, case.seq, steady, last))
        del trainer
        keras.backend.clear_session()
    return {
        "case": case,
        "params": config.num_parameters(),
        "steps": total,
        "timed_steps": last - first,
        "traces": traces,
        "steady_steps": last - steady,
        "steady_ratio": max(r[0] for r in trainer_steady) / max(r[0] for r in fit_steady),
        "trainer": max(r[0] for r in trainer_rates),
        "fit": max(r[0] for r in fit_rates),
        "trainer_cpu": max(r[1] for r in trainer_rates),
        "fit_cpu": max(r[1] for r in fit_rates),
        "all_trainer": [r[0] for r in trainer_rates],
        "all_fit": [r[0] for r in fit_rates],
        "flops_per_token": flops_per_token(config, case.seq),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="highnoon-tiny only, few steps")
    parser.add_argument("--steps-per-call", type=int, default=1, help="Trainer(steps_per_call=)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating rounds (best-of)")
    args = parser.parse_args(argv)
    if args.steps_per_call < 1:
        raise ValueError(f"--steps-per-call={args.steps_per_call} must be a positive int")
    repeats = args.repeats or (1 if args.quick else 2)
    if repeats < 1:
        raise ValueError(f"--repeats={repeats} must be a positive int")
    started = time.perf_counter()
    peak = matmul_peak()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases(args.quick):
            result = bench_case(case, os.path.join(tmp, "cache"), args.steps_per_call, repeats)
            results.append(result)
            print(
                f"{case.label}: {result['steps']} steps; trainer "
                f"{[round(r) for r in result['all_trainer']]} tokens/s, fit "
                f"{[round(r) for r in result['all_fit']]} tokens/s; trainer traces "
                f"{result['traces']}",
                flush=True,
            )
    print(f"\nmatmul peak (best of 1024^2, 2048^2, 3072^2 float32, XLA): {peak / 1e9:.1f} GFLOP/s")
    print(f"Trainer(jit_compile=True, steps_per_call={args.steps_per_call}), curriculum size_based")
    print()
    print(
        "| model | params | batch x seq | timed steps | Trainer tokens/s | fit tokens/s "
        "| ratio | ratio per CPU-second | ratio in last epoch (steps) | Trainer MFU | fit MFU |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        c = r["case"]
        mfu_t = r["trainer"] * r["flops_per_token"] / peak
        mfu_f = r["fit"] * r["flops_per_token"] / peak
        print(
            f"| {c.label} | {r['params'] / 1e6:.1f}M | {c.batch} x {c.seq} | {r['timed_steps']} "
            f"| {r['trainer']:,.0f} | {r['fit']:,.0f} | {r['trainer'] / r['fit']:.2f} "
            f"| {r['trainer_cpu'] / r['fit_cpu']:.2f} "
            f"| {r['steady_ratio']:.2f} ({r['steady_steps']}) "
            f"| {100 * mfu_t:.1f}% | {100 * mfu_f:.1f}% |"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
