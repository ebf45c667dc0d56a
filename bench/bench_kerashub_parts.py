"""The pieces of one training step, the Trainer's against KerasHub ``fit``'s, each timed alone.

    python bench/bench_kerashub_parts.py            # GPT-2 4x128 (bench_kerashub's model)
    python bench/bench_kerashub_parts.py --llama    # Llama 4x128
    python bench/bench_kerashub_parts.py --tiny     # Llama 4x16: the same variables, a tiny step

``bench_kerashub.py`` times whole windows of steps; this bench splits a step into its parts to
say where a difference comes from. It trains ``bench_kerashub``'s Trainer one short epoch (so
its step is compiled) and builds ``fit``'s model beside it, then times, in interleaved rounds
(each round runs both arms of a pair, ``--calls`` calls each, the first alternating by round;
``--order``):

1. ``xla step``: the one-replica XLA computation alone on the same batch (tensors already in
   memory): the Trainer's ``UnshardedEngine`` update against ``train_step`` compiled with
   ``jit_compile=True`` as ``fit`` compiles it.
2. ``host call``: one step through each arm's whole compiled host call (the Trainer's
   ``TrainStep.train_fn`` one-step call with its token count and reductions, fit's
   ``train_function``), both reading the same in-memory ``tf.data`` batches, results fetched.
   ``host call, own input``: the same, each arm reading its own input pipeline (repeated, so
   no epoch change falls in a call): the Trainer's production ``training_dataset``, fit's
   array adapter, as ``bench_kerashub.py`` feeds them. ``host call: Trainer, loop``: the
   Trainer's host call as an in-graph loop (``StepConfig(steps_per_call=None)``, what every
   run compiled before) against the one-step call a run of ``steps_per_call=1`` compiles now
   (``--tiny`` makes the step negligible, so the difference is the loop's own cost).
3. ``input batch``: one batch from each arm's own input pipeline, iterated alone: the
   Trainer's ``training_dataset`` against the dataset Keras' array adapter makes for ``fit``.
4. ``new epoch input``: what a new epoch costs the Trainer before its first batch
   (``training_dataset``, iterator, first batch) against its host dataset alone, i.e. without
   ``inputs._distribute``'s one-replica reshape and unbatch (a Trainer-only pair).
5. ``lr read-out``: the learning rate a ``log`` event reports, evaluated eagerly (before) and
   as the runner's one compiled call (``TrainStepRunner.learning_rate``).

``--aa`` times A/A pairs instead (what the method itself gives two identical arms): fit's host
call against the same call of a second copy of fit's model, the Trainer's against a second
Trainer's (its own model, optimizer and compiled step, built after the first), and the
Trainer's against fit's with the two in the other order (``host call: Trainer | fit``). Each
second copy's variables live elsewhere in memory and it is arm B, so a ratio away from 1.0 in an
A/A pair is what placement, slot and the machine give, not the program.

``--order`` (default ``alternate``): which arm runs first in a round. ``alternate`` swaps it
every round (A B, then B A, ...), so neither arm always follows the other; ``fixed`` runs A
first in every round, the method before the A/A pairs were measured.

Each line gives the medians over rounds of wall and CPU (this process, all threads)
milliseconds per call, and the median per-round ratio B / A (above 1: A is faster) with its
lowest and highest round. CPU time is the steadier figure on a shared machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kerashub import CLIP_NORM, CallClocks, KerasHubFit, cases, make_trainer, planned_batches
from bench_trainer import _clock
from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

from highnoon import data as hn_data
from highnoon.training.inputs import training_dataset
from highnoon.training.step import StepConfig

Pair = tuple[str, Callable[[], Any], str, Callable[[], Any]]
# bench_kerashub's Llama at width 16: the same 122 variables, a step of a few milliseconds.
TINY_LLAMA = {"num_layers": 4, "num_query_heads": 2, "num_key_value_heads": 1, "hidden_dim": 16,
              "intermediate_dim": 32}  # fmt: skip


def _fetch(out: Any) -> None:
    tf.nest.map_structure(lambda t: np.asarray(t), out)


def fit_inputs(batches: dict[str, np.ndarray], rows: slice) -> tuple[Any, ...]:
    """fit's (x, y, sample_weight) as ``bench_kerashub.KerasHubFit`` feeds it."""
    ids = batches["inputs"][rows]
    return (
        {"token_ids": ids, "padding_mask": np.ones_like(ids)},
        batches["targets"][rows],
        batches["loss_mask"][rows].astype(np.float32),
    )


def trained_trainer(case: Any, cache_dir: str) -> tuple[Any, dict[str, np.ndarray]]:
    """``bench_kerashub``'s Trainer after one epoch (its step compiled), and its batches."""
    trainer = make_trainer(case, cache_dir)
    batches = planned_batches(case, trainer, cache_dir)
    trainer.train(save_checkpoints=False, checkpoint_dir=None, log_interval=case.log_interval)
    return trainer, batches


def fit_arm(case: Any, batches: dict[str, np.ndarray]) -> KerasHubFit:
    """``bench_kerashub``'s fit arm on a fresh copy of the model, its step compiled."""
    fit = KerasHubFit(case, batches, CallClocks())
    fit.run(0, 2)  # fit builds its optimizer and compiles its step
    return fit


def repeat_batches(structure: Any, batch: int) -> Any:
    """An endless iterator over in-memory batches (no input work inside a timed call)."""
    dataset = tf.data.Dataset.from_tensor_slices(structure).batch(batch, drop_remainder=True)
    return iter(dataset.repeat())


def trainer_call(trainer: Any, batches: dict[str, np.ndarray], batch: int) -> Callable[[], Any]:
    """One step through the Trainer's one-step host call, as a run compiles it, on in-memory
    batches."""
    rows = repeat_batches({k: batches[k] for k in ("inputs", "targets", "loss_mask")}, batch)
    train_fn = trainer._step.train_fn(StepConfig(1, CLIP_NORM, True, steps_per_call=1))
    return lambda: _fetch(train_fn(rows, 1))


def fit_call(fit: KerasHubFit, batches: dict[str, np.ndarray], batch: int) -> Callable[[], Any]:
    """One step through fit's ``train_function`` on in-memory batches."""
    rows = repeat_batches(fit_inputs(batches, slice(None)), batch)
    return lambda: _fetch(fit.model.train_function(rows))


def aa_pairs(case: Any, cache_dir: str) -> list[Pair]:
    """A/A pairs: each arm against a second copy of itself, and the A/B pair swapped."""
    trainer, batches = trained_trainer(case, cache_dir)
    fit = fit_arm(case, batches)
    second_fit = fit_arm(case, batches)
    second_trainer, _ = trained_trainer(case, cache_dir)
    b = case.batch
    return [
        ("host call: fit", fit_call(fit, batches, b),
         "fit, second copy", fit_call(second_fit, batches, b)),
        ("host call: Trainer", trainer_call(trainer, batches, b),
         "Trainer, second copy", trainer_call(second_trainer, batches, b)),
        ("host call: Trainer", trainer_call(trainer, batches, b),
         "fit", fit_call(fit, batches, b)),
        ("host call: fit", fit_call(fit, batches, b),
         "Trainer", trainer_call(trainer, batches, b)),
    ]  # fmt: skip


def pairs(case: Any, cache_dir: str) -> list[Pair]:
    trainer, batches = trained_trainer(case, cache_dir)
    fit = fit_arm(case, batches)
    step, b = trainer._step, case.batch
    plan = trainer._plans[0]

    # 1. the XLA computations alone, on one batch
    batch = {k: tf.constant(batches[k][:b]) for k in ("inputs", "targets", "loss_mask")}
    denominator = tf.reduce_sum(tf.cast(batch["loss_mask"], tf.float32))
    update = step.engine._xla[("update", 1, CLIP_NORM)]
    fit_batch = tf.nest.map_structure(tf.constant, fit_inputs(batches, slice(0, b)))
    fit_step = tf.function(fit.model.train_step, jit_compile=True)

    # 2. whole host calls on the same in-memory batches
    def repeat(structure: Any) -> Any:
        return repeat_batches(structure, b)

    trainer_rows = repeat({k: batches[k] for k in ("inputs", "targets", "loss_mask")})
    fit_rows = repeat(fit_inputs(batches, slice(None)))
    train_fn = step.train_fn(StepConfig(1, CLIP_NORM, True, steps_per_call=1))  # as a run
    loop_fn = step.train_fn(StepConfig(1, CLIP_NORM, True))  # any steps per call: the loop
    loop_rows = repeat({k: batches[k] for k in ("inputs", "targets", "loss_mask")})

    # 3. each arm's own input pipeline
    epoch = plan.epochs - 1
    steps = plan.steps_per_epoch(epoch)

    def trainer_input() -> Any:
        return iter(training_dataset(trainer.strategy, plan, epoch=epoch, seq_length=case.seq))

    def fit_input() -> Any:
        x, y, w = fit_inputs(batches, slice(0, steps * b))
        adapter = ArrayDataAdapter(x, y, sample_weight=w, batch_size=b, shuffle=False)
        return iter(adapter.get_tf_dataset())

    streams = {"trainer": trainer_input(), "fit": fit_input()}

    # 2b. whole host calls, each reading its own pipeline (repeated: no epoch change timed)
    own = {
        "trainer": iter(
            training_dataset(trainer.strategy, plan, epoch=epoch, seq_length=case.seq).repeat()
        ),
        "fit": iter(
            ArrayDataAdapter(*fit_inputs(batches, slice(0, steps * b)), batch_size=b, shuffle=False)
            .get_tf_dataset()
            .repeat()
        ),
    }

    def next_batch(arm: str, make: Callable[[], Any]) -> Any:
        try:
            return next(streams[arm])
        except StopIteration:  # a new iterator, its creation untimed would be unfair: timed
            streams[arm] = make()
            return next(streams[arm])

    # 4. a new epoch's input, with and without the one-replica reshape and unbatch
    def host_only() -> Any:
        rows = plan.host_rows(epoch, 0, 1)
        return next(iter(hn_data.make_host_dataset(plan.store, rows, case.seq, seed=plan.seed,
                                                   epoch=epoch)))  # fmt: skip

    # 5. the learning rate of a log event
    runner_rate = trainer_runner_rate(trainer)
    schedule = trainer._built.schedule
    return [
        ("xla step: fit", lambda: _fetch(fit_step(fit_batch)),
         "Trainer", lambda: _fetch(update(batch, denominator, 1, CLIP_NORM))),
        ("host call: fit", lambda: _fetch(fit.model.train_function(fit_rows)),
         "Trainer", lambda: _fetch(train_fn(trainer_rows, 1))),
        ("host call: Trainer, loop", lambda: _fetch(loop_fn(loop_rows, 1)),
         "one step, no loop", lambda: _fetch(train_fn(trainer_rows, 1))),
        ("host call, own input: fit", lambda: _fetch(fit.model.train_function(own["fit"])),
         "Trainer", lambda: _fetch(train_fn(own["trainer"], 1))),
        ("input batch: fit", lambda: next_batch("fit", fit_input),
         "Trainer", lambda: next_batch("trainer", trainer_input)),
        ("new epoch input: host dataset alone", host_only,
         "training_dataset", lambda: next(trainer_input())),
        ("lr read-out: compiled", lambda: runner_rate(7),
         "eager", lambda: float(schedule(7))),
    ]  # fmt: skip


def trainer_runner_rate(trainer: Any) -> Callable[[int], float]:
    """The production runner's ``learning_rate`` over the Trainer's own schedule."""
    from highnoon.training.runner import TrainStepRunner

    runner = TrainStepRunner(
        trainer._step, trainer.strategy, trainer._built.schedule, jit_compile=True,
        multi_host=False,
    )  # fmt: skip
    return runner.learning_rate


def measure(pair: Pair, rounds: int, calls: int, order: str = "alternate") -> dict[str, Any]:
    """Medians over ``rounds`` of each arm's ms per call; ``order``: which arm runs first in a
    round (``alternate``: A B, then B A, ...; ``fixed``: A first every round)."""
    name_a, a, name_b, b = pair
    for f in (a, b):
        f()  # warm: traces, first iterators
    times: dict[str, list[np.ndarray]] = {"a": [], "b": []}
    for round_index in range(rounds):
        arms = [("a", a), ("b", b)]
        if order == "alternate" and round_index % 2:
            arms.reverse()
        for key, f in arms:
            started = _clock()
            for _ in range(calls):
                f()
            times[key].append((_clock() - started) / calls)
    ta, tb = np.array(times["a"]), np.array(times["b"])
    ratio = tb[:, 0] / ta[:, 0]
    return {
        "a": name_a, "b": name_b, "wall": (np.median(ta[:, 0]), np.median(tb[:, 0])),
        "cpu": (np.median(ta[:, 1]), np.median(tb[:, 1])), "ratio": np.median(ratio),
        "range": (ratio.min(), ratio.max()), "cpu_ratio": np.median(tb[:, 1] / ta[:, 1]),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llama", action="store_true", help="the Llama 4x128 case")
    parser.add_argument("--tiny", action="store_true", help="a Llama 4x16 (its step negligible)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=5, help="calls per arm per round")
    parser.add_argument("--aa", action="store_true", help="A/A pairs: each arm against itself")
    parser.add_argument("--order", choices=("alternate", "fixed"), default="alternate",
                        help="which arm runs first in a round")  # fmt: skip
    args = parser.parse_args(argv)
    case = cases(False)[1 if args.llama else 0]
    if args.tiny:
        case = dataclasses.replace(
            case, label="Llama 4x16", task="LlamaCausalLM", backbone=TINY_LLAMA, batch=2, seq=16
        )
    case.epochs = 1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        make = aa_pairs if args.aa else pairs
        results = [measure(p, args.rounds, args.calls, args.order) for p in make(case, tmp)]
    print(
        f"\n{case.label}, {case.batch} x {case.seq}: {args.rounds} rounds x {args.calls} calls, "
        f"order {args.order}\n"
    )
    print("| part: A | B | A ms wall / CPU | B ms wall / CPU | B/A wall [min, max] | B/A CPU |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        low, high = r["range"]
        print(
            f"| {r['a']} | {r['b']} | {1e3 * r['wall'][0]:.2f} / {1e3 * r['cpu'][0]:.2f} "
            f"| {1e3 * r['wall'][1]:.2f} / {1e3 * r['cpu'][1]:.2f} "
            f"| {r['ratio']:.3f} [{low:.3f}, {high:.3f}] | {r['cpu_ratio']:.3f} |"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
