"""Resuming safely: a run never continues on changed data or another curriculum without saying so.

Every checkpoint records, per stage, what the stage's stream of global batches was made from
(``StagePlan.stream_fingerprint``: the stage's name, the store's content hash, the tokenizer,
the settings that shape the stream). On resume, the stages the checkpoint has completed and the
stage in progress are compared with what the plans build now; a difference is refused with an
error naming the stage, what changed and the two ways on: a fresh ``checkpoint_dir``, or
``allow_data_change=True``. That keeps completed stages as they were trained (they are not
trained again) and restarts a changed stage in progress from its first epoch on the new data
(the optimizer and the step count continue); every accepted change is recorded in the summary
(``data_changes``). A trainer with fewer stages than the checkpoint completed is refused the
same way. Stages not yet begun are not compared: they start on whatever data they have, and
stages appended after the recorded ones (a run that finished, then more stages) are allowed
and named in the ``Resumed`` note.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from absl import logging

from highnoon.training.position import DataPosition
from highnoon.training.stage_plan import StagePlan

_WHAT = {
    "name": "the stage's name",
    "data": "the stage's data (token store content)",
    "tokenizer": "the tokenizer",
    "stream": "the settings that shape the stream (batch, sequence length, curriculum, epochs, "
    "seed, ...)",
    "missing": "the stage is missing from this trainer",
}
_WAYS_ON = (
    "Either train into a fresh checkpoint_dir (model_dir), or pass allow_data_change=True "
    "(gin: Trainer.allow_data_change = True)"
)


class DataChangedError(ValueError):
    """The run being resumed would continue on different data, stream settings or stages."""


@dataclass(frozen=True)
class Resumed:
    """What a resume found: the stages the checkpoint had completed, and the stages this trainer
    appends after the ones the checkpoint's run planned (they start at a stage boundary)."""

    completed: list[str] = field(default_factory=list)
    appended: list[str] = field(default_factory=list)


def reconcile(
    position: DataPosition,
    plans: list[StagePlan],
    allow_change: bool,
    source: str | None = None,
) -> Resumed:
    """Checks the completed stages and the stage in progress against the checkpoint's record
    (``source`` names where it came from), then records every plan's fingerprint.

    Raises:
      DataChangedError: a completed stage is missing or differs, or the stage in progress would
        continue on changed inputs, and ``allow_change`` is off.
    """
    recorded = dict(position.stage_fingerprints)
    _check_completed(position, plans, allow_change, source)
    index = position.stage
    in_progress = index < len(plans) and (position.epoch > 0 or position.step_in_epoch > 0)
    saved = recorded.get(str(index)) if in_progress else None
    if saved is not None:
        now = plans[index].stream_fingerprint()
        changed = [key for key in now if saved.get(key) != now[key]]
        if changed:
            _on_change(position, plans[index], changed, allow_change, saved)
    appended = []
    if index > 0 and not in_progress:
        appended = [plan.name for plan in plans[index:] if str(plan.index) not in recorded]
    for plan in plans[position.stage :]:
        position.stage_fingerprints[str(plan.index)] = plan.stream_fingerprint()
    for key in [k for k in position.stage_fingerprints if int(k) >= len(plans)]:
        del position.stage_fingerprints[key]  # no longer planned: may come back as anything
    completed = [str(stage["name"]) for stage in position.completed_stages]
    if appended:
        logging.info(
            "run in %s finished stages %s; appending stage(s) %s",
            source or "the checkpoint",
            completed,
            appended,
        )
    return Resumed(completed=completed, appended=appended)


def _check_completed(
    position: DataPosition, plans: list[StagePlan], allow_change: bool, source: str | None
) -> None:
    """Every stage the checkpoint completed must still be this trainer's stage at that index,
    with the same name and stream fingerprint (a completed stage is skipped, never retrained)."""
    differences = []
    dropped = {c["index"] for c in position.data_changes if "missing" in c.get("changed", ())}
    for index, done in enumerate(position.completed_stages):
        # The record (an accepted change updates it), else what the stage was called.
        saved = position.stage_fingerprints.get(str(index)) or {"name": str(done.get("name"))}
        old_name = saved.get("name", str(done.get("name")))
        if index >= len(plans):
            if index not in dropped:  # not accepted before (allow_data_change)
                differences.append((index, old_name, None, ["missing"], None))
            continue
        plan = plans[index]
        now = plan.stream_fingerprint()
        changed = [key for key in now if key in saved and saved[key] != now[key]]
        if changed:
            differences.append((index, old_name, plan.name, changed, saved))
    if not differences:
        return
    lines = [_describe(*difference, plans) for difference in differences]
    where = (
        f"the run in {source}" if source else "the checkpoint's run"
    ) + f" completed stages {[str(s.get('name')) for s in position.completed_stages]}"
    if not allow_change:
        raise DataChangedError(
            f"{where}, but this trainer's stages {[p.name for p in plans]} differ from them: "
            + "; ".join(lines)
            + ". Resuming would skip these stages as done although they were trained on "
            f"something else. {_WAYS_ON} to keep the trained stages as they are and continue "
            "with the stages after them"
        )
    logging.warning("%s; continuing although %s", where, "; ".join(lines))
    for index, old, new, changed, _ in differences:
        position.data_changes.append(
            {
                "stage": new,
                "index": index,
                "previous_name": old,
                "step": position.global_step,
                "completed": True,
                "changed": changed,
            }
        )
        if index < len(plans):
            position.stage_fingerprints[str(index)] = plans[index].stream_fingerprint()


def _describe(
    index: int,
    old: str,
    new: str | None,
    changed: list[str],
    saved: dict[str, str] | None,
    plans: list[StagePlan],
) -> str:
    """``stage index 0: 'a' -> 'x' (what changed)`` for one completed stage."""
    if new is None:
        return (
            f"stage index {index}: {old!r} -> none (this trainer has {len(plans)} stage(s); "
            f"{_WHAT['missing']})"
        )
    what = _what_changed(changed, saved, plans[index])
    return f"stage index {index}: {old!r} -> {new!r} ({what} changed)"


def _what_changed(changed: list[str], saved: dict[str, str] | None, plan: StagePlan) -> str:
    """The changed parts in words, with each changed stream setting as old -> new."""
    what = "; ".join(_WHAT[key] for key in changed)
    if "stream" in changed and saved is not None:
        differences = stream_differences(saved.get("stream"), plan.stream_fingerprint()["stream"])
        if differences:
            what += f" ({', '.join(differences)})"
    return what


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
    what = _what_changed(changed, saved, plan)
    before = (saved or {}).get("name", plan.name)
    named = f"{plan.name!r}" if before == plan.name else f"{before!r} -> {plan.name!r}"
    where = (
        f"stage {named} (index {plan.index}) was checkpointed at global step "
        f"{position.global_step}, epoch {position.epoch}, step {position.step_in_epoch} of its "
        "stream"
    )
    if not allow_change:
        raise DataChangedError(
            f"{where}, but its inputs have changed since: {what}. Resuming would continue that "
            f"stream on different data. {_WAYS_ON} to restart stage {plan.name!r} from its "
            "first epoch on the new data"
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
