"""Resuming safely: a run never continues on changed data without saying so.

Every checkpoint records, per stage, what the stage's stream of global batches was made from
(``StagePlan.stream_fingerprint``: the store's content hash, the tokenizer, the settings that
shape the stream). On resume, the stage in progress is compared with what the plans build now;
a difference is refused with an error naming what changed and the two ways on: a fresh
``checkpoint_dir``, or ``allow_data_change=True``, which restarts that stage's stream from its
first epoch on the new data (the optimizer and the step count continue) and records the restart
in the summary (``data_changes``). Stages not yet begun are not compared: they start on whatever
data they have.
"""

from __future__ import annotations

import json

from absl import logging

from highnoon.training.checkpointing import DataPosition
from highnoon.training.stage_plan import StagePlan

_WHAT = {
    "name": "the stage at this position",
    "data": "the stage's data (token store content)",
    "tokenizer": "the tokenizer",
    "stream": "the settings that shape the stream (batch, sequence length, curriculum, epochs, "
    "seed, ...)",
}


class DataChangedError(ValueError):
    """The stage being resumed would continue on different data or stream settings."""


def reconcile(position: DataPosition, plans: list[StagePlan], allow_change: bool) -> None:
    """Checks the resumed stage against its record, then records every plan's fingerprint."""
    index = position.stage
    in_progress = index < len(plans) and (position.epoch > 0 or position.step_in_epoch > 0)
    saved = position.stage_fingerprints.get(str(index)) if in_progress else None
    if saved is not None:
        now = plans[index].stream_fingerprint()
        changed = [key for key in now if saved.get(key) != now[key]]
        if changed:
            _on_change(position, plans[index], changed, allow_change, saved)
    for plan in plans[position.stage :]:
        position.stage_fingerprints[str(plan.index)] = plan.stream_fingerprint()


def stream_differences(saved: str, now: str) -> list[str]:
    """``name: saved -> now`` for every stream setting (or epochs, seed) that differs between two
    ``stream`` fingerprints (empty when either cannot be read)."""
    try:
        before, after = json.loads(saved), json.loads(now)
        old = {**before.pop("settings"), **before}
        new = {**after.pop("settings"), **after}
    except (TypeError, ValueError, KeyError, AttributeError):
        return []
    return [
        f"{key}: {old.get(key)!r} -> {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
    ]


def _on_change(
    position: DataPosition,
    plan: StagePlan,
    changed: list[str],
    allow_change: bool,
    saved: dict[str, str] | None = None,
) -> None:
    what = "; ".join(_WHAT[key] for key in changed)
    if "stream" in changed and saved is not None:
        differences = stream_differences(saved.get("stream"), plan.stream_fingerprint()["stream"])
        if differences:
            what += f" ({', '.join(differences)})"
    where = (
        f"stage {plan.name!r} (index {plan.index}) was checkpointed at global step "
        f"{position.global_step}, epoch {position.epoch}, step {position.step_in_epoch} of its "
        "stream"
    )
    if not allow_change:
        raise DataChangedError(
            f"{where}, but its inputs have changed since: {what}. Resuming would continue that "
            "stream on different data. Either train into a fresh checkpoint_dir (model_dir), or "
            "pass allow_data_change=True (gin: Trainer.allow_data_change = True) to restart "
            f"stage {plan.name!r} from its first epoch on the new data"
        )
    logging.warning("%s; %s changed: restarting the stage on the new data", where, what)
    position.data_changes.append(
        {
            "stage": plan.name,
            "step": position.global_step,
            "from_epoch": position.epoch,
            "from_step_in_epoch": position.step_in_epoch,
            "changed": changed,
        }
    )
    position.curriculum_states.pop(str(plan.index), None)
    position.enter_stage(plan.index)
