"""What a trained (or training) run did, read back from its model directory: the TensorBoard
scalars the ``SummaryListener`` wrote and ``summary.json`` (for ``highnoon-curriculum-report``'s
run plot)."""

from __future__ import annotations

import json
import os
from typing import Any


class RunHistoryError(ValueError):
    """A model directory holds nothing to plot."""


def run_history(model_dir: str) -> dict[str, Any]:
    """A trained (or training) run's history from ``model_dir``: ``log`` (per logged step:
    ``step``, ``stage``, ``loss``, ``curriculum_fraction``, ``seq_length``) from the TensorBoard
    summaries; ``eval`` (per evaluation: ``step``, ``stage``, ``eval_loss``, ``by_difficulty``)
    from summary.json when the run finished, else from the summaries; ``stages`` (name and last
    step of each completed stage) from summary.json."""
    from highnoon.utils import files

    summaries = os.path.join(model_dir, "summaries")
    summary_path = os.path.join(model_dir, "summary.json")
    scalars, texts = _read_summaries(summaries) if files.isdir(summaries) else ({}, {})
    summary = json.loads(files.read_text(summary_path)) if files.isfile(summary_path) else None
    if not scalars and summary is None:
        raise RunHistoryError(
            f"model_dir={model_dir!r} holds no training history (no summaries/ event files and "
            "no summary.json); point --model_dir at a run trained with write_summaries=True"
        )
    log_steps = sorted(scalars.get("log/loss", {}))
    stage_steps = sorted(texts.get("stage", {}).items())

    def stage_at(step: int) -> str | None:  # the stage of the last log at or before ``step``
        names = [name for logged, name in stage_steps if logged <= step]
        return names[-1] if names else None

    log = {"step": log_steps, "stage": [stage_at(step) for step in log_steps]}
    for name in ("loss", "curriculum_fraction", "seq_length"):
        values = scalars.get(f"log/{name}", {})
        log[name] = [values.get(step) for step in log_steps]
    if summary is not None and summary.get("eval"):
        records = summary["eval"]
        evals = {
            "step": [e["step"] for e in records],
            "stage": [e["stage"] for e in records],
            "eval_loss": [e["eval_loss"] for e in records],
            "by_difficulty": [e.get("eval_loss_by_difficulty") or [] for e in records],
        }
    else:
        losses = scalars.get("eval/eval_loss", {})
        steps = sorted(losses)
        buckets = sorted(
            int(tag.rsplit("_", 1)[1])
            for tag in scalars
            if tag.startswith("eval/eval_loss_difficulty_")
        )
        evals = {
            "step": steps,
            "stage": [stage_at(step) for step in steps],
            "eval_loss": [losses[step] for step in steps],
            "by_difficulty": [
                [scalars[f"eval/eval_loss_difficulty_{b}"].get(step) for b in buckets]
                for step in steps
            ],
        }
    stages, step = [], 0
    for stage in (summary or {}).get("stages_completed", []):
        step += int(stage.get("steps", 0))
        stages.append({"name": stage["name"], "end_step": step})
    return {"log": log, "eval": evals, "stages": stages}


def _read_summaries(directory: str) -> tuple[dict[str, dict[int, float]], dict[str, dict]]:
    """The scalars and texts of the event files under ``directory``: tag -> {step: value} (a
    step logged again after a resume keeps its latest value)."""
    import tensorflow as tf

    scalars: dict[str, dict[int, float]] = {}
    texts: dict[str, dict[int, str]] = {}
    for path in sorted(tf.io.gfile.glob(os.path.join(directory, "events.out.tfevents.*"))):
        for record in tf.compat.v1.train.summary_iterator(path):
            for value in record.summary.value:
                if value.metadata.plugin_data.plugin_name == "text":
                    text = tf.make_ndarray(value.tensor).reshape(-1)[0]
                    texts.setdefault(value.tag, {})[int(record.step)] = text.decode("utf-8")
                    continue
                number = (
                    float(tf.make_ndarray(value.tensor))
                    if value.HasField("tensor")
                    else float(value.simple_value)
                )
                scalars.setdefault(value.tag, {})[int(record.step)] = number
    return scalars, texts
