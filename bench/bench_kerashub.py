"""The Trainer on a KerasHub causal LM against KerasHub's own ``fit(jit_compile=True)``.

    python bench/bench_kerashub.py            # GPT-2 and Llama, 4 layers x 128 (~0.9M parameters)
    python bench/bench_kerashub.py --quick    # the small GPT-2 only, few steps (smoke run)
    python bench/bench_kerashub.py --hlo      # both arms' XLA steps: optimised HLO op counts
    python bench/bench_kerashub.py --case llama [--quick]   # one model only
    python bench/bench_kerashub.py --aa [--case llama]      # A/A: fit against a copy of fit
    python bench/bench_kerashub.py --case llama --samples 1920  # 4x the windows (~290 steps)

Method of ``bench_trainer.py``, on a KerasHub model: for each case, in this one process,

1. the Trainer trains a KerasHub ``CausalLM`` (``preprocessor=None``) as it is, one stage on the
   embedded ``stdlib_code`` dataset with a size-based curriculum, ``jit_compile=True``, AdamW,
   global-norm clipping, no eval and no checkpoints;
2. a second instance of the same model (same seed, same initial weights), compiled by KerasHub's
   ``CausalLM.compile`` with the same AdamW and ``global_clipnorm``, a from-logits sparse
   cross-entropy and ``jit_compile=True``, ``fit``s the exact global batches the Trainer feeds,
   in the same order (``{"token_ids", "padding_mask"}`` in, targets out, the loss mask as
   per-token sample weights).

The two run interleaved window by window (after each Trainer ``log`` event, ``fit`` trains the
window the Trainer just trained; ``fit`` is one call over all the batches, on a helper thread
paused between windows, so its input pipeline starts once: ``ContinuousFit``), the first window
of each (compilation) is discarded, and
ratio = Trainer tokens/s / fit tokens/s with a 95% bootstrap interval over windows
(``bench_trainer.bootstrap_interval``).

Where the time goes: each arm's compiled call (the Trainer's ``TrainStep.train_fn``, fit's
``train_function``; the step's results brought to the host included) is timed inside every
window, so the second table splits each arm's milliseconds per step into the compiled call and
the host loop around it (the Trainer's controller, events, learning-rate read-out and the new
``tf.data`` pipeline of every epoch; fit's callbacks), and gives the ratio of the compiled calls
alone, in wall time and in this process's CPU time (all threads) inside the calls, the steadier
figure on a shared machine; the GC columns are the milliseconds per step Python's garbage collector took inside
each arm's timed spans (a full collection in a process this size can take a good part of a
second, so one inside a timed span would move that window). A third table gives each arm's
median call (wall and CPU) over the timed windows and the ratio of the medians: an epoch's new
input computed during a Trainer call, or a burst of a neighbour's work, moves a mean by a few
calls and leaves the median where it was. ``--hlo`` prints the op counts of
the two XLA step computations (optimised HLO) side by side instead of training, then what each
executes: the entry computation's instructions (dots, fusions with their bodies' opcodes,
copies) present in one arm's step and not in the other's.

``--aa`` runs the interleaving with the same arm twice: two copies of the fit arm take turns
window by window on the planned batches (the first in the Trainer's slot, the second, built
later, in fit's), so its ratios are what slot, memory placement and the machine alone give.

    python bench/bench_kerashub.py --packing [--quick]   # GPT-2: packed against padded/bucketed

``--packing`` runs ``bench_packing.py``'s three arms (``Trainer(pack=True)``, ``fit`` on padded
rows, ``fit`` on length buckets; useful tokens/s, interleaved) with its model swapped for a
KerasHub GPT-2 (4 layers, width 128) behind ``KerasHubLM``, whose unpacked call is the
CausalLM's own (``token_ids`` and an all-true ``padding_mask``). Only GPT-2 packs.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_trainer import (
    CLIP_NORM,
    DATASET,
    LEARNING_RATE,
    Window,
    bootstrap_interval,
    interleaved_windows,
    planned_batches,
    trace_count,
)

from highnoon.data import load_tokenizer
from highnoon.models import kerashub
from highnoon.training.trainer import Trainer


@dataclass
class Case:
    """One KerasHub model's benchmark setting (``planned_batches`` reads batch, seq,
    max_samples and epochs)."""

    label: str
    task: str
    backbone: dict[str, Any] = field(default_factory=dict)
    batch: int = 8
    seq: int = 128
    max_samples: int = 480
    epochs: int = 2
    log_interval: int = 3


GPT2_SMALL = {"num_layers": 4, "num_heads": 4, "hidden_dim": 128, "intermediate_dim": 512,
              "max_sequence_length": 256, "dropout": 0.0}  # fmt: skip
LLAMA_SMALL = {"num_layers": 4, "num_query_heads": 4, "num_key_value_heads": 2, "hidden_dim": 128,
               "intermediate_dim": 384}  # fmt: skip


def cases(quick: bool, only: str | None = None, samples: int | None = None) -> list[Case]:
    """The benchmark's cases; ``only``: "gpt2" or "llama" (``--case``); ``samples`` replaces
    the training samples of each case (``--samples``: more windows, a narrower interval)."""
    chosen = _cases(quick, only)
    if samples is None:
        return chosen
    return [dataclasses.replace(case, max_samples=samples) for case in chosen]


def _cases(quick: bool, only: str | None) -> list[Case]:
    if quick:
        chosen = [Case("GPT-2 4x128", "GPT2CausalLM", GPT2_SMALL, max_samples=120),
                  Case("Llama 4x128", "LlamaCausalLM", LLAMA_SMALL, max_samples=120)]  # fmt: skip
        return chosen[1:] if only == "llama" else chosen[:1]
    chosen = [
        Case("GPT-2 4x128", "GPT2CausalLM", GPT2_SMALL),
        Case("Llama 4x128", "LlamaCausalLM", LLAMA_SMALL),
    ]
    return [c for c in chosen if only is None or c.task.lower().startswith(only)]


def make_model(case: Case) -> keras.Model:
    """The same initial weights on every call (``causal_lm`` seeds them)."""
    return kerashub.causal_lm(
        case.task, backbone=case.backbone, seed=0, tokenizer=load_tokenizer("byte")
    )


def make_trainer(case: Case, cache_dir: str, steps_per_call: int = 1) -> Trainer:
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
        curriculum_strategy="size_based",
    )
    return trainer.add_curriculum_stage("bench", [DATASET], epochs=case.epochs)


class CallClocks:
    """Wall seconds each arm spends inside its compiled calls, per interleaved window.

    A wrapped call returns only once its results are on the host (``fetch``), as both loops
    need them then anyway, so a window's remainder is host work around the calls."""

    def __init__(self) -> None:
        self.inside = {"trainer": 0.0, "fit": 0.0}
        self.cpu = {"trainer": 0.0, "fit": 0.0}  # this process's CPU seconds in the same spans
        self.windows: list[dict[str, float]] = []  # one per fit window, the Trainer's before it
        # Every call: (arm, index of its window in ``windows``, wall seconds, CPU seconds), so
        # each arm's median call can be compared too (a mean moves with a few slow calls).
        self.records: list[tuple[str, int, float, float]] = []
        # Python's garbage collections, timed wherever they fall (gc.callbacks): a full one can
        # take a good part of a second here, so one inside a timed span moves its window.
        self.gc_total = 0.0
        self._gc_window = 0.0  # gc_total when the Trainer's window began
        self.fit_gc = 0.0  # collections inside fit's timed span, this window
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_total += time.perf_counter() - self._gc_started

    def close(self) -> None:
        gc.callbacks.remove(self._on_gc)

    def wrap(self, arm: str, call: Any) -> Any:
        def timed(*args: Any) -> Any:
            started, cpu = time.perf_counter(), time.process_time()
            out = call(*args)
            tf.nest.map_structure(lambda t: t.numpy(), out)  # the results on the host
            wall, used = time.perf_counter() - started, time.process_time() - cpu
            self.inside[arm] += wall
            self.cpu[arm] += used
            # fit's window is closed into the Trainer's entry before it (``close_window``)
            window = len(self.windows) - (arm == "fit")
            self.records.append((arm, window, wall, used))
            return out

        return timed

    def watch_trainer(self, trainer: Trainer) -> None:
        """Times the Trainer's compiled calls (its step exists once ``train_begin`` fires)."""

        def on_event(event: dict[str, Any]) -> None:
            if event["event"] == "train_begin":
                step = trainer._step
                build = step.train_fn
                step.train_fn = lambda *a, **k: self.wrap("trainer", build(*a, **k))

        trainer.add_callback(on_event)

    def close_window(self) -> None:
        """The Trainer's window ended; fit's starts: keep the Trainer's seconds, reset."""
        if self.windows:
            self.windows[-1].update(
                fit=self.inside["fit"], fit_cpu=self.cpu["fit"], fit_gc=self.fit_gc
            )
        self.windows.append(
            {
                "trainer": self.inside["trainer"],
                "trainer_cpu": self.cpu["trainer"],
                "trainer_gc": self.gc_total - self._gc_window,
            }
        )
        self.inside = {"trainer": 0.0, "fit": 0.0}
        self.cpu = {"trainer": 0.0, "fit": 0.0}
        self.fit_gc = 0.0

    def open_trainer_window(self) -> None:
        """fit returned: the Trainer's next window starts."""
        self._gc_window = self.gc_total

    def timed(self) -> list[dict[str, float]]:
        """Both arms' seconds inside calls per window, the first (compilation) dropped as
        ``interleaved_windows`` drops it."""
        self.close_window()
        return self.windows[1:-1]

    def timed_calls(self, arm: str) -> np.ndarray:
        """``[calls, 2]``: wall and CPU seconds of each of ``arm``'s calls in the timed
        windows (after ``timed``)."""
        last = len(self.windows) - 2
        kept = [(w, c) for a, i, w, c in self.records if a == arm and 1 <= i <= last]
        return np.array(kept, dtype=np.float64).reshape(-1, 2)


class KerasHubFit:
    """KerasHub's ``fit(jit_compile=True)`` on a fresh copy of the model, one window at a time."""

    class _Span(keras.callbacks.Callback):
        def __init__(self, calls: CallClocks) -> None:
            super().__init__()
            self.calls = calls

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if batch == 0:
                self.begin = np.array([time.perf_counter(), time.process_time()])
                self.gc_begin = self.calls.gc_total

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.end = np.array([time.perf_counter(), time.process_time()])
            self.calls.fit_gc = self.calls.gc_total - self.gc_begin

    def __init__(self, case: Case, batches: dict[str, np.ndarray], calls: CallClocks) -> None:
        self.case, self.batches, self.calls = case, batches, calls
        self.model = make_model(case)
        self.model.compile(
            optimizer=keras.optimizers.AdamW(LEARNING_RATE, global_clipnorm=CLIP_NORM),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            weighted_metrics=[],
            jit_compile=True,
        )
        self.model.make_train_function()  # fit reuses it: timed from here on
        self.model.train_function = calls.wrap("fit", self.model.train_function)
        self._span = self._Span(calls)

    def run(self, first_step: int, last_step: int) -> np.ndarray:
        """Trains on global batches [first_step, last_step); returns [wall, CPU] seconds."""
        self.calls.close_window()  # the Trainer's window just ended (its log event called us)
        rows = slice(first_step * self.case.batch, last_step * self.case.batch)
        ids = self.batches["inputs"][rows]
        self.model.fit(
            {"token_ids": ids, "padding_mask": np.ones_like(ids)},
            self.batches["targets"][rows],
            sample_weight=self.batches["loss_mask"][rows].astype(np.float32),
            batch_size=self.case.batch,
            shuffle=False,
            epochs=1,
            verbose=0,
            callbacks=[self._span],
        )
        self.calls.open_trainer_window()
        return self._span.end - self._span.begin


class ContinuousFit(KerasHubFit):
    """fit's arm as one ``fit`` over all the planned batches, paused between windows.

    ``KerasHubFit.run`` calls ``fit`` once per window, so fit's input pipeline starts again in
    every window, its first batch fetched inside the window's first timed call (about 3.5 ms
    more CPU there, and a wait: BENCHMARKS.md, "Llama's compiled call against fit's"); the
    Trainer starts its pipeline once per epoch. Here one ``fit`` runs on a helper thread over
    the whole run's batches, one pipeline as a real ``fit`` epoch has, and a callback hands
    control back at each window's end: the two arms still run in turn, never together."""

    class _Gate(keras.callbacks.Callback):
        def __init__(self, owner: ContinuousFit) -> None:
            super().__init__()
            self.owner = owner

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self.owner._at_batch_begin(batch)

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.owner._at_batch_end(batch)

    def __init__(self, case: Case, batches: dict[str, np.ndarray], calls: CallClocks) -> None:
        super().__init__(case, batches, calls)
        self._turn = threading.Condition()
        self._target: int | None = 0  # fit may run up to this step (None: to the end)
        self._done = 0  # steps fit has finished
        self._first = 0  # the current window's first step
        self._span = np.zeros(2)
        self._begin = np.zeros(2)
        self._gc_begin = 0.0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._fit, name="bench-fit", daemon=True)
        self._thread.start()

    def _fit(self) -> None:
        ids = self.batches["inputs"]
        try:
            self.model.fit(
                {"token_ids": ids, "padding_mask": np.ones_like(ids)},
                self.batches["targets"],
                sample_weight=self.batches["loss_mask"].astype(np.float32),
                batch_size=self.case.batch,
                shuffle=False,
                epochs=1,
                verbose=0,
                callbacks=[self._Gate(self)],
            )
        except BaseException as error:  # raised in the main thread by run()
            self._error = error
        with self._turn:
            self._target, self._done = None, len(ids) // self.case.batch
            self._turn.notify_all()

    def _at_batch_begin(self, batch: int) -> None:
        with self._turn:
            self._turn.wait_for(lambda: self._target is None or batch < self._target)
        if batch == self._first:  # the window's first step
            self._begin = np.array([time.perf_counter(), time.process_time()])
            self._gc_begin = self.calls.gc_total

    def _at_batch_end(self, batch: int) -> None:
        end = np.array([time.perf_counter(), time.process_time()])
        with self._turn:
            self._done = batch + 1
            if self._done == self._target:
                self._span = end - self._begin
                self.calls.fit_gc = self.calls.gc_total - self._gc_begin
                self._turn.notify_all()

    def run(self, first_step: int, last_step: int) -> np.ndarray:
        """Lets fit train global batches [first_step, last_step); returns [wall, CPU]."""
        self.calls.close_window()
        with self._turn:
            if self._done != first_step:
                raise RuntimeError(f"fit is at step {self._done}, asked for {first_step}")
            self._first, self._target = first_step, last_step
            self._turn.notify_all()
            self._turn.wait_for(lambda: self._done >= last_step or self._error is not None)
        if self._error is not None:
            raise self._error
        self.calls.open_trainer_window()
        return self._span

    def finish(self) -> None:
        """Lets fit train what is left (the steps after the last window) and end."""
        with self._turn:
            self._target = None
            self._turn.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error


def bench_case(case: Case, cache_dir: str, steps_per_call: int = 1) -> dict[str, Any]:
    trainer = make_trainer(case, cache_dir, steps_per_call)
    batches = planned_batches(case, trainer, cache_dir)
    calls = CallClocks()
    calls.watch_trainer(trainer)
    fit = ContinuousFit(case, batches, calls)
    windows = interleaved_windows(trainer, fit, case.log_interval)
    fit.finish()
    inside = calls.timed()
    per_call = {arm: calls.timed_calls(arm) for arm in ("trainer", "fit")}
    calls.close()
    total = trainer._position.global_step
    if len(batches["inputs"]) != total * case.batch:
        raise RuntimeError(f"planned {len(batches['inputs'])} rows, the Trainer fed {total}")
    if not windows:
        raise RuntimeError(f"{total} steps give no timed window of {case.log_interval} steps")
    tokens = sum(w.steps for w in windows) * case.batch * case.seq
    trainer_seconds = sum(w.trainer for w in windows)
    fit_seconds = sum(w.fit for w in windows)
    result = {
        "case": case,
        "params": trainer.model.count_params(),
        "steps": total,
        "timed_steps": sum(w.steps for w in windows),
        "windows": len(windows),
        "traces": trace_count(trainer),
        "trainer": tokens / trainer_seconds[0],
        "fit": tokens / fit_seconds[0],
        "ratio": fit_seconds[0] / trainer_seconds[0],
        "ratio_cpu": fit_seconds[1] / trainer_seconds[1],
        "interval": bootstrap_interval(windows),
        "ms_per_step": breakdown(windows, inside),
        "median_call": median_calls(per_call),
    }
    del trainer, fit
    keras.backend.clear_session()
    return result


def breakdown(windows: list[Any], inside: list[dict[str, float]]) -> dict[str, float]:
    """Milliseconds per timed step inside each arm's compiled calls and around them, and the
    compiled calls' ratio (fit seconds / Trainer seconds, as the main ratio)."""
    if len(inside) != len(windows):
        raise RuntimeError(f"{len(inside)} timed call windows for {len(windows)} windows")
    steps = sum(w.steps for w in windows)
    result = {}
    for arm in ("trainer", "fit"):
        total = sum(getattr(w, arm)[0] for w in windows)
        calls = sum(i[arm] for i in inside)
        result[f"{arm}_call"] = 1e3 * calls / steps
        result[f"{arm}_host"] = 1e3 * (total - calls) / steps
        result[f"{arm}_gc"] = 1e3 * sum(i[f"{arm}_gc"] for i in inside) / steps
        result[f"{arm}_call_cpu"] = 1e3 * sum(i[f"{arm}_cpu"] for i in inside) / steps
    result["call_ratio"] = result["fit_call"] / result["trainer_call"]
    result["call_cpu_ratio"] = result["fit_call_cpu"] / result["trainer_call_cpu"]
    return result


def aa_fit_case(case: Case, cache_dir: str) -> dict[str, Any]:
    """A/A through the bench's interleaving: two copies of the fit arm (the second model built
    after the first, as fit's is after the Trainer's) take turns window by window on the same
    batches, the first copy in the Trainer's slot, the second in fit's; the first window
    (compilation) dropped. Any ratio away from 1.0 is what the slot, placement and the machine
    give two identical arms."""
    trainer = make_trainer(case, cache_dir)  # only to plan the batches it would feed
    batches = planned_batches(case, trainer, cache_dir)
    clocks = [CallClocks(), CallClocks()]
    arms = [ContinuousFit(case, batches, c) for c in clocks]
    steps = len(batches["inputs"]) // case.batch
    windows = []
    for first in range(0, steps - case.log_interval + 1, case.log_interval):
        last = first + case.log_interval
        seconds = [arm.run(first, last) for arm in arms]
        windows.append(Window(last - first, seconds[0], seconds[1]))
    for arm in arms:
        arm.finish()
    calls = []
    for c in clocks:
        kept = [(w, u) for arm, i, w, u in c.records if i >= 1]  # window 0: compilation
        calls.append(np.array(kept, dtype=np.float64))
        c.close()
    windows = windows[1:]
    first, second = (sum(getattr(w, a) for w in windows) for a in ("trainer", "fit"))
    result = {
        "case": case,
        "windows": len(windows),
        "ratio": second[0] / first[0],
        "ratio_cpu": second[1] / first[1],
        "interval": bootstrap_interval(windows),
        "call_ratio": calls[1][:, 0].sum() / calls[0][:, 0].sum(),
        "call_cpu_ratio": calls[1][:, 1].sum() / calls[0][:, 1].sum(),
        "median_ratio": float(np.median(calls[1][:, 0]) / np.median(calls[0][:, 0])),
    }
    del trainer, arms
    keras.backend.clear_session()
    return result


def median_calls(per_call: dict[str, np.ndarray]) -> dict[str, float]:
    """Each arm's median compiled call (wall and CPU ms) over the timed windows, and the
    ratio of the medians (fit / Trainer), which a few slow calls (an epoch's new input being
    computed during a call, a neighbour's burst) do not move as they move the means."""
    result: dict[str, float] = {}
    for arm, calls in per_call.items():
        result[f"{arm}_count"] = len(calls)
        result[f"{arm}_wall"], result[f"{arm}_cpu"] = (1e3 * np.median(calls, axis=0)).tolist()
    result["ratio"] = result["fit_wall"] / result["trainer_wall"]
    result["cpu_ratio"] = result["fit_cpu"] / result["trainer_cpu"]
    return result


def packing(quick: bool, seq: int) -> None:
    """``bench_packing``'s arms on a KerasHub GPT-2 (its model and FLOP count swapped)."""
    import bench_packing

    from highnoon.models.kerashub import KerasHubLM

    backbone = {**GPT2_SMALL, "max_sequence_length": max(seq, 256)}

    def make_model(case: Any) -> keras.Model:
        return KerasHubLM(make_model_of("GPT2CausalLM", backbone))

    layers, width = backbone["num_layers"], backbone["hidden_dim"]
    params = make_model(None).count_params()
    bench_packing.make_model = make_model
    bench_packing.flops_per_token = lambda config, s: 6.0 * params + 12.0 * layers * width * s
    names = ["stdlib_docs", "quickstart"]
    bench_packing.main(
        [*(["--quick"] if quick else []), f"--seq={seq}", f"--cases={','.join(names)}"]
    )


def hlo_texts(case: Case, cache_dir: str) -> dict[str, str]:
    """The optimised HLO of both arms' XLA step on the same batch: the Trainer's whole
    one-replica step (``UnshardedEngine``'s compiled update) and the step fit compiles
    (``train_step`` under ``jit_compile=True``; fit adds only its strategy's identity reduce)."""
    import dataclasses

    case = dataclasses.replace(case, epochs=1)
    trainer = make_trainer(case, cache_dir)
    batches = planned_batches(case, trainer, cache_dir)
    trainer.train(save_checkpoints=False, checkpoint_dir=None, log_interval=case.log_interval)
    fit = KerasHubFit(case, batches, CallClocks())
    fit.run(0, 1)  # builds the optimizer and metrics, as fit does before its first step
    rows = batches["inputs"][: case.batch]
    batch = {k: tf.constant(batches[k][: case.batch]) for k in ("inputs", "targets", "loss_mask")}
    denominator = tf.reduce_sum(tf.cast(batch["loss_mask"], tf.float32))
    update = trainer._step.engine._xla[("update", 1, CLIP_NORM)]
    fit_data = (
        {"token_ids": tf.constant(rows), "padding_mask": tf.ones_like(rows)},
        tf.constant(batches["targets"][: case.batch]),
        tf.constant(batches["loss_mask"][: case.batch].astype(np.float32)),
    )
    fit_step = tf.function(fit.model.train_step, jit_compile=True)
    return {
        "trainer": update.experimental_get_compiler_ir(batch, denominator, 1, CLIP_NORM)(
            stage="optimized_hlo"
        ),
        "fit": fit_step.experimental_get_compiler_ir(fit_data)(stage="optimized_hlo"),
    }


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%\S+ = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")


def hlo_computations(text: str) -> tuple[dict[str, list[tuple[str, str, str]]], str]:
    """Each computation's instructions ``(shape, opcode, rest of line)``, and the entry's name."""
    computations: dict[str, list[tuple[str, str, str]]] = {}
    current, entry = None, ""
    for line in text.splitlines():
        header = re.match(r"^(ENTRY )?%?(\S+) .*\{\s*$", line)
        if header:
            current = header.group(2)
            computations[current] = []
            entry = current if header.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None and (m := _INSTRUCTION.match(line)):
            computations[current].append((m.group(1), m.group(2), m.group(3)))
    return computations, entry


def hlo_kernels(text: str) -> collections.Counter:
    """What the step executes: the entry computation's instructions, each as (opcode, shape
    without layout, and for a fusion its kind and the sorted opcodes of its body)."""
    computations, entry = hlo_computations(text)
    kernels: collections.Counter = collections.Counter()
    for shape, op, rest in computations[entry]:
        body = ""
        called = re.search(r"calls=%([^,\s]+)", rest)
        if op == "fusion" and called:
            kind = re.search(r"kind=(\w+)", rest)
            ops = sorted(o for _, o, _ in computations[called.group(1)] if o != "parameter")
            body = f"{kind.group(1) if kind else '?'}: {','.join(ops)}"
        kernels[(op, re.sub(r"\{[^}]*\}", "", shape), body)] += 1
    return kernels


def hlo_op_counts(text: str) -> collections.Counter:
    """Every instruction's opcode, fused computations' bodies included."""
    opcode = re.compile(r"= (?:\S+|\([^)]*\)) ([a-z][a-z0-9\-]*)\(")
    return collections.Counter(m.group(1) for m in map(opcode.search, text.splitlines()) if m)


def print_hlo(quick: bool, only: str | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases(quick, only):
            texts = hlo_texts(case, os.path.join(tmp, "cache"))
            keras.backend.clear_session()
            t, f = hlo_op_counts(texts["trainer"]), hlo_op_counts(texts["fit"])
            print(f"\n{case.label}: optimised HLO instructions, Trainer {sum(t.values())}, "
                  f"fit {sum(f.values())} (fused computations' bodies included)")  # fmt: skip
            print("| op | Trainer | fit |\n|---|---:|---:|")
            for op in sorted(set(t) | set(f), key=lambda op: (-(t[op] + f[op]), op)):
                if t[op] != f[op]:
                    print(f"| {op} | {t[op]} | {f[op]} |")
            kt, kf = hlo_kernels(texts["trainer"]), hlo_kernels(texts["fit"])
            print(f"\nexecuted (entry) instructions: Trainer {sum(kt.values())}, fit "
                  f"{sum(kf.values())}; the same (opcode, shape, fused body) in both: "
                  f"{sum((kt & kf).values())}; the rest, by arm:")  # fmt: skip
            for arm, extra in (("Trainer", kt - kf), ("fit", kf - kt)):
                for (op, shape, body), n in sorted(extra.items(), key=lambda item: item[0][1]):
                    print(f"  {arm}: {n} x {op} {shape[:60]} {body[:160]}")


def make_model_of(task: str, backbone: dict[str, Any]) -> keras.Model:
    return kerashub.causal_lm(task, backbone=backbone, seed=0, tokenizer=load_tokenizer("byte"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small GPT-2 only, few steps")
    parser.add_argument("--packing", action="store_true", help="GPT-2 packed (bench_packing)")
    parser.add_argument("--seq", type=int, default=256, help="--packing: max_seq_length")
    parser.add_argument("--steps-per-call", type=int, default=1, help="Trainer(steps_per_call=)")
    parser.add_argument("--hlo", action="store_true", help="HLO op counts of both XLA steps")
    parser.add_argument("--case", choices=("gpt2", "llama"), help="one model only")
    parser.add_argument("--aa", action="store_true", help="A/A: fit against a copy of fit")
    parser.add_argument(
        "--samples", type=int, help="training samples per case (default 480; --quick 120)"
    )
    args = parser.parse_args(argv)
    if args.hlo:
        print_hlo(args.quick, args.case)
        return
    if args.packing:
        packing(args.quick, args.seq)
        return
    started = time.perf_counter()
    if args.aa:
        print("\nA/A: fit (Trainer's slot) against a second copy of fit (fit's slot), same batches")
        print("\n| model | windows | ratio | 95% interval | per CPU-second | call ratio "
              "| call CPU ratio | median call ratio |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        with tempfile.TemporaryDirectory() as tmp:
            for case in cases(args.quick, args.case, args.samples):
                r = aa_fit_case(case, os.path.join(tmp, "cache"))
                low, high = r["interval"]
                print(
                    f"| {case.label} | {r['windows']} | {r['ratio']:.3f} | [{low:.3f}, {high:.3f}] "
                    f"| {r['ratio_cpu']:.3f} | {r['call_ratio']:.3f} | {r['call_cpu_ratio']:.3f} "
                    f"| {r['median_ratio']:.3f} |",
                    flush=True,
                )
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases(args.quick, args.case, args.samples):
            result = bench_case(case, os.path.join(tmp, "cache"), args.steps_per_call)
            results.append(result)
            print(
                f"{case.label}: {result['steps']} steps, {result['windows']} timed windows; "
                f"Trainer traces {result['traces']}",
                flush=True,
            )
    print(
        f"\nTrainer(jit_compile=True, steps_per_call={args.steps_per_call}) against KerasHub "
        "fit(jit_compile=True), same batches\n"
    )
    print(
        "| model | params | batch x seq | timed steps | Trainer tokens/s | fit tokens/s | ratio "
        "| 95% interval | ratio per CPU-second |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        c = r["case"]
        low, high = r["interval"]
        print(
            f"| {c.label} | {r['params'] / 1e6:.2f}M | {c.batch} x {c.seq} | {r['timed_steps']} "
            f"| {r['trainer']:,.0f} | {r['fit']:,.0f} | {r['ratio']:.3f} "
            f"| [{low:.3f}, {high:.3f}] | {r['ratio_cpu']:.3f} |"
        )
    print(
        "\nmilliseconds per step: inside the compiled calls (results on the host) and around them\n"
    )
    print(
        "| model | Trainer call | Trainer host | Trainer GC | fit call | fit host | fit GC "
        "| call ratio | call CPU, Trainer / fit | call CPU ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        b = r["ms_per_step"]
        print(
            f"| {r['case'].label} | {b['trainer_call']:.2f} | {b['trainer_host']:.2f} "
            f"| {b['trainer_gc']:.2f} | {b['fit_call']:.2f} | {b['fit_host']:.2f} "
            f"| {b['fit_gc']:.2f} | {b['call_ratio']:.3f} "
            f"| {b['trainer_call_cpu']:.2f} / {b['fit_call_cpu']:.2f} | {b['call_cpu_ratio']:.3f} |"
        )
    print("\nmedian compiled call (ms, wall / CPU), over each arm's calls in the timed windows\n")
    print("| model | Trainer calls | Trainer median | fit calls | fit median | median ratio "
          "| median CPU ratio |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        m = r["median_call"]
        print(
            f"| {r['case'].label} | {m['trainer_count']} "
            f"| {m['trainer_wall']:.2f} / {m['trainer_cpu']:.2f} | {m['fit_count']} "
            f"| {m['fit_wall']:.2f} / {m['fit_cpu']:.2f} | {m['ratio']:.3f} | {m['cpu_ratio']:.3f} |"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main()
