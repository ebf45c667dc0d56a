"""Worker for the sharding multi-process tests: ``TrainStep`` driven directly under a real cluster.

Run under TF_CONFIG (see ``launch.local_cluster``); ``argv[1]`` is a JSON file holding a list
of run specs, trained one after the other under one strategy (a fresh ``TrainStep`` each, so
every run traces and, if asked, restores on its own): one cluster start, with its TensorFlow
imports and strategy setup, serves several runs. A run spec:

  level         None, "optimizer", "gradients" or "full" (on one worker: unsharded, warned)
  last_step     train global steps up to this one (tests/sharding_helpers.py batches and stages)
  jit_compile   compile the step's pieces with XLA
  restore_from  optional checkpoint directory to resume from (its global step + 1 is the first)
  same_step     optional: restore into the previous run's ``TrainStep`` (level and jit_compile
                as that run's) instead of a fresh one, so the resume traces nothing; the
                checkpoint overwrites every variable the step trains with
  save_to       optional checkpoint directory written after ``last_step`` (every worker saves;
                the chief's copy is kept)
  save_at       optional step before ``last_step``: ``save_to`` is written after it instead,
                and training goes on to ``last_step`` (one run gives a mid-run checkpoint and
                the uninterrupted weights)
  out_dir       where each worker writes ``worker<task>.npz`` (the whole weights, gathered)
                and ``worker<task>.json`` (losses, bytes held and sent per replica)

Environment: ``HN_COLLECTIVE_TIMEOUT`` (s) bounds every collective.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def _atomic_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=1)
    os.replace(tmp, path)


def _atomic_npz(path: str, arrays: dict[str, Any]) -> None:
    import numpy as np

    tmp = f"{path}.tmp-{os.getpid()}.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def train_one(strategy, task: int, spec: dict[str, Any], previous: tuple | None) -> tuple:
    """One run of ``spec`` on a fresh ``TrainStep`` (or, with ``same_step``, on ``previous``'s);
    writes its outputs to ``spec['out_dir']``; returns (step, multiplier, recorder)."""
    from highnoon.distribute import peer_failure_guard
    from highnoon.training.checkpointing import Checkpointer
    from highnoon.training.sharding.recorder import StepRecorder
    from tests import sharding_helpers as H

    if spec.get("same_step"):
        step, multiplier, recorder = previous
    else:
        recorder = StepRecorder()
        step, multiplier = H.build(strategy, spec["level"], recorder=recorder)
    objects = step.checkpoint_objects()

    def checkpointer(directory: str) -> Checkpointer:
        return Checkpointer(
            directory, model=objects["model"], optimizer=objects["optimizer"], strategy=strategy
        )

    first = 1
    with peer_failure_guard():
        if spec.get("restore_from"):
            restorer = checkpointer(spec["restore_from"])
            restorer.restore(spec["restore_from"], step.model.config.to_dict())
            first = restorer.position.global_step + 1
        save_at = spec.get("save_at") or spec["last_step"]
        losses = H.train(step, multiplier, first, save_at, jit_compile=spec["jit_compile"])
        if spec.get("save_to"):
            saver = checkpointer(spec["save_to"])
            saver.position.global_step = save_at
            saver.write_model_config(step.model.config.to_dict())
            saver.save(save_at)
        if save_at < spec["last_step"]:
            losses += H.train(
                step, multiplier, save_at + 1, spec["last_step"], jit_compile=spec["jit_compile"]
            )
        weights = step.full_weights()

    facts: dict[str, Any] = {
        "task": task,
        "replicas": strategy.num_replicas_in_sync,
        "sharding": None if step.level is None else step.level.name,
        "first_step": first,
        "losses": losses,
    }
    if step.level is not None:
        facts["replica_bytes"] = recorder.replica_bytes(step.engine)
        facts["bytes_sent"] = {
            str(stage): recorder.bytes_sent_per_step(H.stage_config(stage, spec["jit_compile"]))
            for stage, _, _ in H.stages_between(first, spec["last_step"])
        }
    base = os.path.join(spec["out_dir"], f"worker{task}")
    _atomic_npz(base + ".npz", {f"w{i:03d}": w for i, w in enumerate(weights)})
    _atomic_json(base + ".json", facts)
    return step, multiplier, recorder


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as handle:
        specs = json.load(handle)
    from tests.workers.train_worker import join_cluster, skip_unused_keras_extras

    skip_unused_keras_extras()
    strategy, task = join_cluster()
    previous = None
    for spec in specs:
        previous = train_one(strategy, task, spec, previous)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
