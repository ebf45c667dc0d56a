"""Worker for the Trainer multi-process tests: the real ``Trainer`` under a real cluster.

Run under TF_CONFIG (see ``launch.local_cluster``); ``argv[1]`` is a JSON spec file, or a JSON
list of specs trained one after the other under one strategy, each with a fresh model and
Trainer (one cluster start, with its TensorFlow imports and strategy setup, serves several
runs; a run that kills or preempts its process is alone in its file). A spec:

  stages            [[name, [jsonl paths], epochs, {overrides}], ...]
  trainer           Trainer keyword arguments (no model/strategy)
  checkpoint_dir    one directory shared by every worker (the chief writes it)
  out_dir           where each worker writes ``worker<task>.npz`` and ``worker<task>.json``
  checkpoint_interval, epochs_per_stage
  seq, layers       the nano model's max_seq_length and number of blocks
  stop_at_step      optional: a callback raises ``StopAtStep`` at this step (a clean stop with
                    a final checkpoint); the worker then exits 0
  kill_at_step      optional [task, step]: that task SIGKILLs itself at that step
  poison_at_step    optional: every worker sets its weights to NaN at that step (a NaN loss)
  preempt           optional {"task", "at", "marker", "times", "slow_save_seconds"}: that task
                    sends itself SIGTERM at ``at`` (``first_step``: before the first step;
                    ``inside_step``: while host call ``call`` (default 3) runs; ``save``: as a periodic
                    checkpoint save begins; ``eval``: as an evaluation begins;
                    ``stage_boundary``: as a stage completes), at most ``times`` times over all
                    attempts (counted in the ``marker`` file); ``slow_save_seconds`` makes the
                    save after the signal take that long (to outlast the grace period).
                    Or {"marker", "chain": [{"task", "at", "call"}, ...]}: attempt ``k`` of the
                    relaunched job fires entry ``k`` of the chain (each a preemption as above,
                    once), so one job is preempted at every moment in turn

Environment: ``HN_COLLECTIVE_TIMEOUT`` (s) bounds every collective.

The ``.npz`` holds the final weights (``w000``...) and, for every input pipeline the Trainer
built, the store rows it fed (``rows_s<stage>_e<epoch>_from<start_step>``, [steps, rows per
host]). The rows are recorded where the Trainer hands them to ``make_host_dataset``, so they are
what this host really fed, not a recomputation. The ``.json`` holds the events and the cluster
facts. Both are written atomically.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from highnoon.distribute import create_strategy, peer_failure_guard, task_info


class StopAtStep(Exception):
    """Raised by the stop callback; the Trainer saves a final checkpoint and re-raises it."""


def _atomic_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1, default=str)
    os.replace(tmp, path)


def _atomic_npz(path: str, arrays: dict[str, Any]) -> None:
    import numpy as np

    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _record_fed_rows(fed: dict[str, Any], task: int) -> None:
    """Wrap ``make_host_dataset`` (as the Trainer calls it) to record each pipeline's rows."""
    from highnoon import data as hn_data
    from highnoon.training import trainer as trainer_lib

    original = hn_data.make_host_dataset
    current_stage = {"index": 0}
    fed["_stage"] = current_stage

    def recording(store, rows, seq_len, *, start_step=0, epoch=0, **kwargs):
        key = f"rows_s{current_stage['index']}_e{epoch}_from{start_step}"
        if isinstance(rows, hn_data.StepRows):  # computed call by call: record what it gives
            fed[key] = rows.rows_at(start_step, rows.num_steps).copy()
        else:
            fed[key] = rows[start_step:].copy()
        return original(store, rows, seq_len, start_step=start_step, epoch=epoch, **kwargs)

    assert trainer_lib.hn_data is hn_data
    hn_data.make_host_dataset = recording


def _fired_count(marker: str) -> int:
    """How many preemptions the ``marker`` file has counted over the job's attempts."""
    if not os.path.exists(marker):
        return 0
    with open(marker, encoding="utf-8") as handle:
        return int(handle.read())


def _preemption(spec: dict[str, Any], task: int, events: list[dict[str, Any]]) -> Any:
    """Installs the ``preempt`` hooks of the spec on this task; returns an event callback."""
    import threading
    import time

    from highnoon.training import checkpointing, evaluation, step

    plan = spec.get("preempt")
    if plan and "chain" in plan:
        # Read before the first collective of this attempt, so every task sees the same count
        # (the firing task only bumps it after train_begin, which needs every task).
        attempt = _fired_count(plan["marker"])
        if attempt >= len(plan["chain"]):
            return lambda event: None
        plan = {**plan["chain"][attempt], "marker": plan["marker"], "times": attempt + 1}
    if not plan or plan["task"] != task:
        return lambda event: None
    marker, times, at = plan["marker"], plan.get("times", 1), plan["at"]
    fired = {"here": False}

    def fire() -> None:
        count = _fired_count(marker)
        if count >= times or fired["here"]:
            return
        _atomic_json(marker, count + 1)
        fired["here"] = True
        print(f"SIGTERM-SELF at={at}", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    original_save = checkpointing.Checkpointer.save

    def save(self, step_number):
        if at == "save" and step_number > 0 and not fired["here"]:
            fire()
        elif fired["here"] and plan.get("slow_save_seconds"):
            time.sleep(plan["slow_save_seconds"])  # the grace period runs out meanwhile
        return original_save(self, step_number)

    checkpointing.Checkpointer.save = save
    if at == "eval":
        original_evaluate = evaluation.Evaluator.evaluate

        def evaluate(self, *args, **kwargs):
            fire()
            return original_evaluate(self, *args, **kwargs)

        evaluation.Evaluator.evaluate = evaluate
    if at == "inside_step":
        original_train_fn = step.TrainStep.train_fn
        calls = {"n": 0}

        def train_fn(self, config, **kwargs):
            inner = original_train_fn(self, config, **kwargs)

            def call(*args):
                calls["n"] += 1
                if calls["n"] == plan.get("call", 3):  # lands while the compiled call runs
                    threading.Timer(0.001, fire).start()
                return inner(*args)

            return call

        step.TrainStep.train_fn = train_fn

    def on_event(event: dict[str, Any]) -> None:
        if (at, event["event"]) in (
            ("first_step", "train_begin"),
            ("stage_boundary", "stage_complete"),
        ):
            fire()

    return on_event


def skip_unused_keras_extras() -> None:
    """Keras imports pandas, scikit-learn and matplotlib when they are installed (the ``eval``
    and ``plot`` extras bring them), about 1.4 s of CPU per process, for data adapters,
    wrappers and plots no worker uses; marking them absent before Keras loads skips that."""
    for name in ("pandas", "sklearn", "matplotlib"):
        sys.modules.setdefault(name, None)


def train_one(strategy, task: int, spec: dict[str, Any], fed: dict[str, Any]) -> None:
    """Trains the run of ``spec`` with a fresh model and Trainer; writes its outputs to
    ``spec['out_dir']``. ``fed`` is ``_record_fed_rows``'s record, emptied for this run."""
    import numpy as np

    import highnoon as hn
    from highnoon.training.trainer import Trainer

    for key in [k for k in fed if k.startswith("rows_")]:
        del fed[key]
    fed["_stage"]["index"] = 0
    options = dict(spec["trainer"])
    model = hn.create_model("highnoon-nano", max_seq_length=spec["seq"], num_layers=spec["layers"])
    trainer = Trainer(model, strategy=strategy, **options)
    for name, paths, epochs, overrides in spec["stages"]:
        trainer.add_curriculum_stage(name, paths, epochs=epochs, **overrides)

    events: list[dict[str, Any]] = []
    stop_at = spec.get("stop_at_step")
    kill_task, kill_step = spec.get("kill_at_step") or (None, None)
    preempt = _preemption(spec, task, events)

    def callback(event: dict[str, Any]) -> None:
        name = event["event"]
        if name == "stage_begin":
            fed["_stage"]["index"] = event["index"]
        kept = {k: v for k, v in event.items() if k != "summary"}
        events.append(kept)
        print("EVENT " + json.dumps(kept, default=str), flush=True)
        preempt(event)
        if name != "log":
            return
        if event["step"] == spec.get("poison_at_step"):
            model.weights[0].assign(np.full(model.weights[0].shape, np.nan, np.float32))
        if kill_task == task and event["step"] == kill_step:
            print("DYING", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        if stop_at is not None and event["step"] == stop_at:
            raise StopAtStep(f"stopping at step {stop_at}")

    trainer.add_callback(callback)
    stopped = False
    try:
        with peer_failure_guard():
            trainer.train(
                epochs_per_stage=spec.get("epochs_per_stage", 1),
                checkpoint_dir=spec["checkpoint_dir"],
                checkpoint_interval=spec["checkpoint_interval"],
                log_interval=1,
                eval_interval=spec.get("eval_interval", 10_000),
            )
    except StopAtStep:
        stopped = True

    base = os.path.join(spec["out_dir"], f"worker{task}")
    trained = trainer.export_model()  # every worker: a "full"-sharded run gathers its shares
    arrays = {f"w{i:03d}": w.numpy() for i, w in enumerate(trained.weights)}
    arrays.update({k: v for k, v in fed.items() if k.startswith("rows_")})
    _atomic_npz(base + ".npz", arrays)
    facts = {
        "task": task,
        "replicas": strategy.num_replicas_in_sync,
        "stopped": stopped,
        "events": events,
        "weights_checksum": float(sum(np.abs(a).sum() for k, a in arrays.items() if k[0] == "w")),
    }
    _atomic_json(base + ".json", facts)


def join_cluster() -> tuple[Any, int]:
    """(MultiWorkerMirroredStrategy of TF_CONFIG's cluster, this task's index); prints READY.
    ``HN_COLLECTIVE_TIMEOUT`` (s) bounds every collective."""
    collective = os.environ.get("HN_COLLECTIVE_TIMEOUT")
    strategy = create_strategy(
        "multi_worker",
        peer_timeout_seconds=60,
        collective_timeout_seconds=float(collective) if collective else None,
    )
    task = task_info(strategy).task_id
    print(f"READY task={task} replicas={strategy.num_replicas_in_sync}", flush=True)
    return strategy, task


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        loaded = json.load(handle)
    specs = loaded if isinstance(loaded, list) else [loaded]
    if not any(spec["trainer"].get("lm_eval_tasks") for spec in specs):
        skip_unused_keras_extras()  # lm-eval itself needs pandas and friends
    strategy, task = join_cluster()
    fed: dict[str, Any] = {}
    _record_fed_rows(fed, task)
    for spec in specs:
        train_one(strategy, task, spec, fed)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
