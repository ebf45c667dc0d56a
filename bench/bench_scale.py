"""Benchmarks of highnoon at a billion samples, part by part, on synthetic stores.

Every part measures one path at several store sizes (``--sizes``) beside today's in-memory path
up to the size it reaches (``--in_memory_max``), in the same run, and prints the ratios. Each
measurement runs in a child process of its own, so its peak RSS above the child's baseline (RSS
after its imports) is its own. Stores come from ``bench/scale_store.py`` under ``--root``,
written once per size and reused (``--keep`` keeps them after the run; by default a store this
run wrote is deleted at the end: the disk is shared).

Parts:

* ``order``: ``stored_order.write_orders`` of the three built-in strategies (``--strategies``) (the preparation
  step: an external sort in bounded memory) vs ``order_from_scores(scores_from_features(
  store.features, s))`` for each strategy (what every host computes at start today), and the
  first read of a stored order (``open_stored_order`` + 1 024 positions).

    python bench/bench_scale.py --part order                      # 1e6, 1e7, 1e8
    python bench/bench_scale.py --part order --sizes 1e9 --in_memory_max 0 --strategies mixed
    python bench/bench_scale.py --part order --sizes 1e6,1e7,1e8,1e9

* ``host``: one host of 256 of an unpacked single-source stage (``mixed`` curriculum, linear
  pacing, eval_fraction 0.01, 4 rows per host, global batch 1 024): from ``TokenStore.open`` to
  its first call's rows (``StagePlan`` on the store's stored order, then ``host_rows_at`` of 1
  step), then the rows of a call of 1 step and of 100 steps at later positions, and the eval
  table (16 batches). Beside it, the previous commit's path (``_today_first_rows``, kept here:
  the keyed split of every sample, scores of the training subset, the in-memory order, the
  host's rows of the whole epoch and the step counts of the whole epoch).

    python bench/bench_scale.py --part host                       # 1e6, 1e7, 1e8
    python bench/bench_scale.py --part host --sizes 1e6,1e7,1e8,1e9

* ``pack``: the same host and stage packed (``pack=True``, rows of ``PACK_SEQ`` tokens, the
  synthetic lengths): from ``TokenStore.open`` to its first call's rows (the ``StagePlan``, its
  schedule horizon estimated from 16 windows per epoch, the epoch's ``PackedStream`` and the
  rows of step 0), then calls of 1 step and of 100 steps of the last epoch (the whole pool) as
  the loop makes them (consecutive from its start, the cursor advanced after each), and the
  peak RSS of the 100-step calls. Beside it, the
  previous commit's path (``_today_packed_first_rows``: every sample's length, each epoch's
  whole stream packed for the horizon, then epoch 0 packed whole) up to ``--in_memory_max``.

    python bench/bench_scale.py --part pack --in_memory_max 1e7   # 1e6, 1e7, 1e8
    python bench/bench_scale.py --part pack --sizes 1e6,1e7,1e8,1e9 --in_memory_max 1e7
    python bench/bench_scale.py --part pack --sizes 1e6,1e9 --in_memory_max 0 --cold  # cold cache
* ``mixture``: the same host of 256 on a ``--mixture 3`` mixed stage: three synthetic stores of
  60%, 25% and 15% of the size (each with its stored ``mixed`` order, written first, untimed),
  weighted 0.5 / 0.3 / 0.2 (``prepare_stage_store`` on the stores' paths): from opening them
  to the first call's rows, peak RSS, and calls of 1 and 100 steps. Beside it, an earlier
  checkout's code (``--today_root``, e.g. a worktree of commit 710f366; not run without it: the
  ``shares/1`` rule, one order over the concatenation, each epoch's draw materialised and
  sorted) runs the same child up to ``--in_memory_max``.

    python bench/bench_scale.py --part mixture --mixture 3 --in_memory_max 1e7 --today_root /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

# A child may run another checkout's highnoon (``BENCH_HIGHNOON_ROOT``: today's code, beside).
ROOT = os.environ.get("BENCH_HIGHNOON_ROOT") or os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))
)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MIB = float(1 << 20)
STRATEGIES = os.environ.get("BENCH_STRATEGIES", "size_based,difficulty_based,mixed").split(",")


def _reset_peak() -> float:
    """Reset this process' peak RSS (Linux ``clear_refs`` 5) and return its RSS now, MiB: the
    baseline a measurement's peak is taken above."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass  # the peak then includes the imports
    return _status_mib("VmRSS")


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def _bytes_read() -> int:
    """Bytes this process has read through read/pread system calls (``/proc/self/io``
    ``rchar``: what it asked of files, page cache or not; memory-mapped pages are not counted)."""
    with open("/proc/self/io") as handle:
        for line in handle:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise KeyError("rchar")


def _measured(fn: Callable[[], Any]) -> dict[str, Any]:
    """Wall and CPU seconds of ``fn()``, its peak RSS above the baseline before it and the
    bytes it read."""
    base = _reset_peak()
    read = _bytes_read()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return {
        "seconds": time.perf_counter() - wall,
        "cpu_seconds": time.process_time() - cpu,
        "peak_mib": _status_mib("VmHWM") - base,
        "read_mib": (_bytes_read() - read) / 2**20,
    }


# --- children: one measurement each ------------------------------------------------------------


def _child_write_orders(path: str) -> dict[str, Any]:
    from highnoon.curriculum.stored_order import write_orders
    from highnoon.data.store import TokenStore

    store = TokenStore.open(path)
    return _measured(lambda: write_orders(store, STRATEGIES))


def _child_in_memory(path: str) -> dict[str, Any]:
    from highnoon.curriculum.order import order_from_scores
    from highnoon.curriculum.scoring import scores_from_features
    from highnoon.data.store import TokenStore

    store = TokenStore.open(path)

    def run() -> None:
        for strategy in STRATEGIES:
            order_from_scores(scores_from_features(store.features, strategy))

    return _measured(run)


def _child_first_read(path: str) -> dict[str, Any]:
    import numpy as np

    from highnoon.curriculum.stored_order import open_stored_order
    from highnoon.data.store import TokenStore

    def run() -> None:
        order = open_stored_order(TokenStore.open(path), STRATEGIES[-1])
        order.take(np.arange(1024, dtype=np.int64) * (len(order) // 1024))

    return _measured(run)


HOSTS, ROWS_PER_HOST, HOST_ID = 256, 4, 17
EVAL_FRACTION = 0.01


def _host_plan(store: Any, **settings: Any) -> Any:
    """The benchmarked stage on ``store`` (``settings`` override, e.g. packing)."""
    from highnoon.training.settings import StageSettings
    from highnoon.training.stage_plan import StagePlan

    settings = StageSettings(
        **{
            "batch_size": HOSTS * ROWS_PER_HOST,
            "max_seq_length": 2048,
            "eval_fraction": EVAL_FRACTION,
            "curriculum_strategy": "mixed",
            "pacing": "linear",
            "initial_fraction": 0.3,
            **settings,
        }
    )
    return StagePlan(0, "scale", settings, 4, store, seed=0)


def _timed_calls(plan: Any) -> dict[str, Any]:
    """Seconds per call of the host's rows of 1 and of 100 steps of epoch 1 (the mean of three
    positions: the middle, a third, the end), cold, then the same calls again (``_warm``: the
    order's blocks already read and checked)."""
    steps = plan.steps_per_epoch(1)
    out: dict[str, Any] = {"steps_per_epoch": steps}
    for count in (1, 100):
        take = min(count, steps)
        firsts = [min(f, steps - take) for f in (steps // 2, steps // 3, steps - take)]
        for name in (f"call_{count}", f"call_{count}_warm"):
            start = time.perf_counter()
            for first in firsts:
                rows = plan.host_rows_at(1, first, first + take, HOST_ID, HOSTS)
                assert rows.shape == (take, ROWS_PER_HOST)
            out[name] = (time.perf_counter() - start) / len(firsts)
    return out


def _child_host(path: str) -> dict[str, Any]:
    """Open -> first call's rows, then calls of 1 and 100 steps and the eval table."""
    from highnoon.data.store import TokenStore

    state: dict[str, Any] = {}

    def first_rows() -> None:
        plan = _host_plan(TokenStore.open(path))
        state["plan"] = plan
        state["rows"] = plan.host_rows_at(0, 0, 1, HOST_ID, HOSTS)

    out = {"first_rows": _measured(first_rows), **_timed_calls(state["plan"])}
    plan = state["plan"]
    out["eval_table"] = _measured(lambda: plan.eval_rows(HOST_ID, HOSTS, 16))
    return out


def _today_first_rows(store: Any) -> Any:
    """The previous commit's per-host start of the same stage, O(N) (kept for comparison):
    a keyed permutation of every sample for the split, the training subset's scores, their
    order, this host's rows of the whole first epoch and that epoch's step counts."""
    import numpy as np

    from highnoon.curriculum import CurriculumScheduler, scoring
    from highnoon.data.features import SampleFeatures
    from highnoon.data.packing import batch_counts, stored_lengths
    from highnoon.utils.hashing import derive_seed, keyed_permutation

    n, g = store.num_samples, HOSTS * ROWS_PER_HOST
    n_eval = int(n * EVAL_FRACTION) // g * g
    chosen = np.zeros(n, dtype=bool)
    chosen[keyed_permutation(n, "eval", derive_seed(0, "eval", 0))[:n_eval]] = True
    train = np.flatnonzero(~chosen)
    features = store.features
    subset = SampleFeatures(features.lengths[train], features.surprisal_sum[train])
    scores = scoring.scores_from_features(subset, "mixed")
    scheduler = CurriculumScheduler(
        "mixed", pacing="linear", initial_fraction=0.3, total_epochs=3, verbose=False,
        seed=derive_seed(0, "stage", 0), global_batch_size=g,
    )  # fmt: skip
    scheduler.prepare_curriculum_from_scores(scores)
    rows = train[scheduler.host_epoch_indices(0, HOST_ID, HOSTS)]
    batch_counts(train[scheduler.host_epoch_indices(0, 0, 1)], stored_lengths(store), 2048)
    return rows


def _child_host_today(path: str) -> dict[str, Any]:
    from highnoon.data.store import TokenStore

    return {"first_rows": _measured(lambda: _today_first_rows(TokenStore.open(path)))}


PACK_SEQ = 2048  # packed rows: a few synthetic samples (~600 ids) per row
PACK_CALLS = {1: 3, 100: 2}  # steps per call: consecutive calls timed


def _packed_host_rows(stream: Any, first: int, last: int) -> Any:
    """This host's packed rows of steps ``[first, last)``: the samples of each of its rows
    (the global rows' packing, then its slice of every step)."""
    import numpy as np

    g = HOSTS * ROWS_PER_HOST
    table = stream.row_table(first * g, last * g)
    rows = (np.arange(last - first)[:, None] * g + HOST_ID * ROWS_PER_HOST
            + np.arange(ROWS_PER_HOST)).reshape(-1)  # fmt: skip
    rows = np.minimum(rows, table.num_rows)
    ptr = table.row_ptr
    return [table.sample[ptr[r] : ptr[min(r + 1, table.num_rows)]] for r in rows]


def _child_pack(path: str) -> dict[str, Any]:
    """Open -> first call's packed rows, then consecutive calls of 1 and 100 steps."""
    from highnoon.data.store import TokenStore

    state: dict[str, Any] = {}

    def first_rows() -> None:
        store = TokenStore.open(path)
        plan = _host_plan(store, pack=True, max_seq_length=PACK_SEQ)
        state["store"], state["plan"] = store, plan
        state["stream"] = plan.begin_packed_epoch(0)
        state["rows"] = _packed_host_rows(state["stream"], 0, 1)
        plan.packing_cursor(0, 1)

    def first_tokens() -> None:
        """The tokens of those rows' samples: the first read of each shard they fall in (its
        ``shard.json``, its block CRCs), what a run's first batch costs next."""
        import numpy as np

        state["store"].gather(np.concatenate(state["rows"]))

    out = {"first_rows": _measured(first_rows), "first_tokens": _measured(first_tokens)}
    plan = state["plan"]
    out["planned_steps"] = plan.planned_steps()
    out["window"] = plan.packing_window
    # Calls in the last epoch (the whole pool: 264 steps at 1e6), from its start as a run
    # makes them: consecutive, the cursor advanced after each.
    epoch = plan.epochs - 1
    stream = plan.begin_packed_epoch(epoch)
    step = 0
    for count, repeats in PACK_CALLS.items():
        times = []

        def calls(count: int = count, repeats: int = repeats, times: list = times) -> None:
            nonlocal step
            for _ in range(repeats):
                start = time.perf_counter()
                take = stream.steps_available(step, count)
                assert take == count, (take, count)
                _packed_host_rows(stream, step, step + take)
                plan.step_totals(epoch, step, step + take)
                step += take
                plan.packing_cursor(epoch, step)
                times.append(time.perf_counter() - start)

        out[f"calls_{count}"] = _measured(calls)
        out[f"call_{count}"] = sum(times) / len(times)
    return out


def _today_packed_first_rows(store: Any) -> Any:
    """The previous commit's packed start, O(N) (kept for comparison): every sample's length,
    each epoch's stream packed whole for the schedule's horizon, then epoch 0 packed whole."""
    from highnoon.data.packing import pack_epoch, packed_row_count, stored_lengths

    plan = _host_plan(store, max_seq_length=PACK_SEQ)  # the same stream, no packed estimate
    lengths = stored_lengths(store)
    for epoch in range(plan.epochs):
        packed_row_count(plan.epoch_stream(epoch), lengths, PACK_SEQ)
    packed = pack_epoch(plan.epoch_stream(0), lengths, PACK_SEQ, HOSTS * ROWS_PER_HOST)
    return packed.step_samples(0, 1)


def _child_pack_today(path: str) -> dict[str, Any]:
    """Today's packed start, then (untimed) the exact steps of every epoch at the stage's
    window, to check the estimated horizon against."""
    from highnoon.data.packing import packed_row_count, stored_lengths
    from highnoon.data.store import TokenStore

    out = {"first_rows": _measured(lambda: _today_packed_first_rows(TokenStore.open(path)))}
    store = TokenStore.open(path)
    plan = _host_plan(store, pack=True, max_seq_length=PACK_SEQ)
    lengths, g = stored_lengths(store), HOSTS * ROWS_PER_HOST
    out["exact_steps"] = sum(
        -(-packed_row_count(plan.epoch_stream(e), lengths, PACK_SEQ, plan.packing_window) // g)
        for e in range(plan.epochs)
    )


MIX_SHARES = (0.6, 0.25, 0.15)  # each store's part of the total size
MIX_WEIGHTS = (0.5, 0.3, 0.2)


def _mixture_paths(path: str) -> list[str]:
    """The mixture's store paths, ``path`` holding them as ``part0``, ``part1``, ..."""
    return sorted(os.path.join(path, name) for name in os.listdir(path) if name.startswith("part"))


def _child_mixture(path: str) -> dict[str, Any]:
    """Open the mixture's stores -> the first call's rows of the mixed stage, then calls of 1
    and 100 steps (run with whichever highnoon ``ROOT`` is)."""
    import tempfile

    from highnoon.data.stage_data import prepare_stage_store
    from highnoon.data.store import TokenStore
    from highnoon.data.tokenizers import load_tokenizer
    from highnoon.training.settings import StageSettings
    from highnoon.training.stage_plan import StagePlan

    paths = _mixture_paths(path)
    entries = list(zip(paths, MIX_WEIGHTS))
    state: dict[str, Any] = {}

    def first_rows() -> None:
        with open(os.path.join(paths[0], "manifest.json")) as handle:  # each store opens once
            tokenizer = load_tokenizer(json.load(handle)["tokenizer"])
        with tempfile.TemporaryDirectory() as cache:
            store = prepare_stage_store(entries, tokenizer, cache, progress=False, verify=False)
        settings = StageSettings(
            batch_size=HOSTS * ROWS_PER_HOST, max_seq_length=2048, eval_fraction=EVAL_FRACTION,
            curriculum_strategy="mixed", pacing="linear", initial_fraction=0.3,
        )  # fmt: skip
        plan = StagePlan(0, "scale", settings, 4, store, seed=0, datasets=entries)
        state["plan"] = plan
        state["rows"] = plan.host_rows_at(0, 0, 1, HOST_ID, HOSTS)

    out = {"first_rows": _measured(first_rows), **_timed_calls(state["plan"])}
    out["samples_per_dataset"] = list(state["plan"].epoch_samples_per_dataset(1).values())
    out["eval_table"] = _measured(lambda: state["plan"].eval_rows(HOST_ID, HOSTS, 16))
    # the part of the first rows' time that is the stores' own open (their shards' CRC lists)
    out["open_stores"] = _measured(lambda: [TokenStore.open(p) for p in paths])
    return out


CHILDREN: dict[str, Callable[[str], dict[str, Any]]] = {
    "mixture": _child_mixture,
    "write_orders": _child_write_orders,
    "in_memory": _child_in_memory,
    "first_read": _child_first_read,
    "host": _child_host,
    "host_today": _child_host_today,
    "pack": _child_pack,
    "pack_today": _child_pack_today,
}


def run_child(name: str, path: str, root: str = ROOT) -> dict[str, Any]:
    """Run child ``name`` on the store at ``path`` in a fresh process, on the highnoon of
    ``root`` (default this checkout); its JSON result."""
    env = {**os.environ, "PYTHONPATH": root, "BENCH_HIGHNOON_ROOT": root}
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), f"--child={name}", f"--store={path}"],
        capture_output=True, text=True, cwd=root, env=env,
    )  # fmt: skip
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["killed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- stores shared by every part -----------------------------------------------------------------


def ensure_store(root: str, n: int, created: list[str]) -> str:
    """The synthetic store of ``n`` samples under ``root``, written unless present."""
    from scale_store import write_scale_store

    from highnoon.data.store import is_store

    path = os.path.join(root, f"n{n}")
    if not is_store(path):
        shutil.rmtree(path, ignore_errors=True)
        start = time.perf_counter()
        write_scale_store(path, n, progress=False)
        print(
            f"store of {n:.0e} samples written in {time.perf_counter() - start:.1f} s", flush=True
        )
        created.append(path)
    return path


# --- parts ---------------------------------------------------------------------------------------


def part_order(path: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    shutil.rmtree(os.path.join(path, "orders"), ignore_errors=True)
    row: dict[str, Any] = {"n": n, "write_orders": run_child("write_orders", path)}
    row["first_read"] = run_child("first_read", path)
    if n <= args.in_memory_max:
        row["in_memory"] = run_child("in_memory", path)
    shutil.rmtree(os.path.join(path, "orders"), ignore_errors=True)
    return row


def format_order(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| samples | write_orders: wall / CPU | peak RSS above baseline | in "
        "memory today: wall / CPU | its peak RSS | CPU ratio stored / in memory "
        "| open + first read of 1 024 positions |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        w, m, r = row["write_orders"], row.get("in_memory"), row["first_read"]

        def cell(x: dict[str, Any] | None, key: str, fmt: str) -> str:
            if x is None:
                return "not run"
            if "error" in x:
                return x["error"]
            return (
                fmt.format(x["seconds"], x["cpu_seconds"]) if key == "both" else fmt.format(x[key])
            )

        ok = m is not None and "error" not in m and "error" not in w
        ratio = f"{w['cpu_seconds'] / m['cpu_seconds']:.2f}x" if ok else "-"
        both = "{:.1f} s / {:.1f} s"
        lines.append(
            f"| {row['n']:.0e} | {cell(w, 'both', both)} | {cell(w, 'peak_mib', '{:.0f} MiB')} "
            f"| {cell(m, 'both', both)} | {cell(m, 'peak_mib', '{:.0f} MiB')} | {ratio} "
            f"| {cell(r, 'seconds', '{:.3f} s')} |"
        )
    return "\n".join(lines)


def _on_stored_order(path: str, n: int, args: argparse.Namespace, child: str) -> dict[str, Any]:
    """Child ``child``'s figures on the store's stored order (written first, not timed here:
    the ``order`` part times it), and ``<child>_today`` up to ``--in_memory_max``."""
    from highnoon.curriculum.stored_order import open_stored_order, write_orders
    from highnoon.data.store import TokenStore

    if open_stored_order(TokenStore.open(path), "mixed") is None:
        write_orders(path, ("mixed",))
    if args.cold:
        evict(path)
    row: dict[str, Any] = {"n": n, child: run_child(child, path)}
    if n <= args.in_memory_max:
        row["today"] = run_child(f"{child}_today", path)
    return row


def evict(path: str) -> None:
    """Drop the store's files (all but the sparse ``tokens.bin``) from the page cache
    (``POSIX_FADV_DONTNEED`` file by file): a cold start of this store without touching the
    cache of anything else on the machine. Files hard-linked elsewhere are dropped there too."""
    for root, _, files in os.walk(path):
        for name in files:
            if name == "tokens.bin":
                continue
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def part_host(path: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """The unpacked host's figures, beside today's path."""
    return _on_stored_order(path, n, args, "host")


def _today_cells(today: dict[str, Any] | None, first: dict[str, Any]) -> tuple[str, str, str]:
    """Today's time to first rows, its peak RSS and the ratio to ``first`` (table cells)."""
    if today is None:
        return "not run", "-", "-"
    if "error" in today:
        return today["error"], "-", "-"
    t = today["first_rows"]
    ratio = f"{t['seconds'] / first['seconds']:.0f}x"
    return f"{t['seconds']:.2f} s", f"{t['peak_mib']:.0f} MiB", ratio


def format_host(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"| samples | open -> first rows (1 host of {HOSTS}) | its peak RSS above baseline | "
        "rows of a 1-step call | of a 100-step call | eval rows (16 batches) | today: open -> "
        "first rows | today's peak RSS | time ratio today / now |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        h, t = row["host"], row.get("today")
        if "error" in h:
            lines.append(f"| {row['n']:.0e} | {h['error']} | | | | | | | |")
            continue
        first = h["first_rows"]
        today, today_peak, ratio = _today_cells(t, first)
        lines.append(
            f"| {row['n']:.0e} | {first['seconds']:.3f} s | {first['peak_mib']:.1f} MiB "
            f"| {h['call_1'] * 1e3:.2f} ms | {h['call_100'] * 1e3:.2f} ms "
            f"| {h['eval_table']['seconds'] * 1e3:.1f} ms | {today} | {today_peak} | {ratio} |"
        )
    lines += ["", "| samples | read: open -> first rows | read: eval rows |", "|---|---|---|"]
    for row in rows:
        h = row["host"]
        if "error" not in h:
            lines.append(
                f"| {row['n']:.0e} | {h['first_rows']['read_mib']:.2f} MiB "
                f"| {h['eval_table']['read_mib']:.2f} MiB |"
            )
    return "\n".join(lines)


def part_pack(path: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """The packed host's figures, beside the previous commit's packed start."""
    return _on_stored_order(path, n, args, "pack")


def _call_cell(h: dict[str, Any], steps: int) -> str:
    """Wall time of a call of ``steps`` steps and its CPU time (the machine is shared)."""
    cpu = h[f"calls_{steps}"]["cpu_seconds"] / PACK_CALLS[steps]
    return f"{h[f'call_{steps}'] * 1e3:.1f} ms ({cpu * 1e3:.1f} ms CPU)"


def format_pack(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"| samples | packed: open -> first rows (1 host of {HOSTS}) | its peak RSS above "
        "baseline | their tokens: wall (CPU) | 1-step call: wall (CPU) | 100-step call: wall "
        "(CPU) | peak RSS of the 100-step calls | today: open -> first rows | today's peak RSS | "
        "time ratio today / now | planned steps: estimate / exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        h, t = row["pack"], row.get("today")
        if "error" in h:
            lines.append(f"| {row['n']:.0e} | {h['error']} | | | | | | | | | |")
            continue
        first, tokens = h["first_rows"], h["first_tokens"]
        today, today_peak, ratio = _today_cells(t, first)
        steps = f"{h['planned_steps']} / " + (
            str(t["exact_steps"]) if t and "error" not in t else "-"
        )
        lines.append(
            f"| {row['n']:.0e} | {first['seconds']:.3f} s | {first['peak_mib']:.1f} MiB "
            f"| {tokens['seconds'] * 1e3:.0f} ms ({tokens['cpu_seconds'] * 1e3:.0f} ms CPU) "
            f"| {_call_cell(h, 1)} | {_call_cell(h, 100)} "
            f"| {h['calls_100']['peak_mib']:.1f} MiB | {today} | {today_peak} | {ratio} "
            f"| {steps} |"
        )
    return "\n".join(lines)


def ensure_mixture(root: str, n: int, parts: int, created: list[str]) -> str:
    """``parts`` synthetic stores of ``n`` samples together (``MIX_SHARES``; seeds 1, 2, ...)
    under ``root/mix{parts}-n{n}``, each with its stored ``mixed`` order; written unless
    present."""
    from scale_store import write_scale_store

    from highnoon.curriculum.stored_order import open_stored_order, write_orders
    from highnoon.data.store import TokenStore, is_store

    shares = MIX_SHARES[:parts]
    path = os.path.join(root, f"mix{parts}-n{n}")
    for i, share in enumerate(shares):
        part = os.path.join(path, f"part{i}")
        if not is_store(part):
            shutil.rmtree(part, ignore_errors=True)
            start = time.perf_counter()
            size = int(n * share / sum(shares))
            write_scale_store(part, size, seed=i + 1, progress=False)
            print(f"part of {size:.2e} samples written in {time.perf_counter() - start:.1f} s")
            if path not in created:
                created.append(path)
        if open_stored_order(TokenStore.open(part), "mixed") is None:
            write_orders(part, ("mixed",))
    return path


def part_mixture(path: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """The host's figures on the mixed stage, and today's (``--today_root``) up to
    ``--in_memory_max``."""
    row: dict[str, Any] = {"n": n, "now": run_child("mixture", path)}
    if args.today_root and n <= args.in_memory_max:
        row["today"] = run_child("mixture", path, root=args.today_root)
    return row


MIXTURE_COLUMNS = (
    "samples (3 stores)", f"open -> first rows (1 host of {HOSTS})",
    "of which the stores' open (warm)", "its peak RSS above baseline", "rows of a 1-step call",
    "of a 100-step call: cold / warm", "eval rows (16 batches)",
    "today: open -> first rows", "today's peak RSS",
    "today: 1-step call (mean of 3; the first draws epoch 1)", "today: 100-step call",
    "time ratio today / now",
)  # fmt: skip


def _mixture_cells(row: dict[str, Any]) -> list[str]:
    """One size's cells of the mixture table (``MIXTURE_COLUMNS``)."""
    now, today = row["now"], row.get("today")
    if "error" in now:
        return [f"{row['n']:.0e}", now["error"]] + [""] * (len(MIXTURE_COLUMNS) - 2)
    first = now["first_rows"]
    cells = [
        f"{row['n']:.0e}", f"{first['seconds']:.3f} s",
        f"{now['open_stores']['seconds']:.3f} s", f"{first['peak_mib']:.1f} MiB",
        f"{now['call_1'] * 1e3:.2f} ms",
        f"{now['call_100'] * 1e3:.1f} ms / {now['call_100_warm'] * 1e3:.1f} ms",
        f"{now['eval_table']['seconds'] * 1e3:.1f} ms",
    ]  # fmt: skip
    if today is None or "error" in today:
        return [*cells, today["error"] if today else "not run", "-", "-", "-", "-"]
    t = today["first_rows"]
    return [
        *cells, f"{t['seconds']:.2f} s", f"{t['peak_mib']:.0f} MiB",
        f"{today['call_1'] * 1e3:.0f} ms", f"{today['call_100'] * 1e3:.1f} ms",
        f"{t['seconds'] / first['seconds']:.1f}x",
    ]  # fmt: skip


def format_mixture(rows: list[dict[str, Any]]) -> str:
    table = [MIXTURE_COLUMNS, ["---"] * len(MIXTURE_COLUMNS), *map(_mixture_cells, rows)]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in table)


PARTS: dict[str, tuple[Callable[..., dict[str, Any]], Callable[[list], str]]] = {
    "order": (part_order, format_order),
    "host": (part_host, format_host),
    "pack": (part_pack, format_pack),
    "mixture": (part_mixture, format_mixture),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=sorted(PARTS), default="order")
    parser.add_argument("--sizes", default="1e6,1e7,1e8", help="store sizes, comma-separated")
    parser.add_argument("--in_memory_max", type=float, default=1e8,
                        help="largest size today's in-memory path is run at")  # fmt: skip
    parser.add_argument("--root", default="/tmp/highnoon_scale", help="where stores are written")
    parser.add_argument("--keep", action="store_true", help="keep the stores this run wrote")
    parser.add_argument("--cold", action="store_true",
                        help="--part host/pack: drop each store's files from the page cache "
                             "before its child (evict)")  # fmt: skip
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help="the orders written and computed (default the three built-in)")  # fmt: skip
    parser.add_argument("--mixture", type=int, default=3, choices=(2, 3),
                        help="--part mixture: the stores mixed")  # fmt: skip
    parser.add_argument("--today_root", default=None,
                        help="--part mixture: a checkout of the code to run beside as 'today' "
                             "(e.g. `git worktree add /tmp/before 710f366`; default: none)")  # fmt: skip
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.store)))
        return
    os.environ["BENCH_STRATEGIES"] = args.strategies  # for the children
    run, fmt = PARTS[args.part]
    created: list[str] = []
    rows = []
    try:
        for size in [int(float(s)) for s in args.sizes.split(",") if s]:
            if args.part == "mixture":
                path = ensure_mixture(args.root, size, args.mixture, created)
            else:
                path = ensure_store(args.root, size, created)
            rows.append(run(path, size, args))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        if not args.keep:
            for path in created:
                shutil.rmtree(path, ignore_errors=True)
    print(fmt(rows))


if __name__ == "__main__":
    main()
