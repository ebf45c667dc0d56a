"""In-loop lm-eval under 2 real MultiWorkerMirroredStrategy workers: the chief scores, every
worker reports the same scores, and they are the scores of the checkpoint saved at that step."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval")

from highnoon.evaluation import evaluate_run, flat_scores
from tests.multiworker_helpers import make_workdir, run_ok, write_spec

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def _task_dir(root) -> str:
    rows = [("alpha", [" beta", " gamma"], 0), ("x = 1", [" delta", " 42"], 1)]
    with open(root / "mc.jsonl", "w", encoding="utf-8") as handle:
        for question, choices, answer in rows:
            handle.write(json.dumps({"q": question, "c": choices, "a": answer}) + "\n")
    (root / "mc.yaml").write_text(
        "task: hn_mw_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {root / 'mc.jsonl'}\n  cache_dir: {root / 'hf_cache'}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\n"
        "doc_to_target: '{{a}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n"
        "    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8",
    )
    return str(root)


def test_two_workers_report_the_chiefs_scores_of_the_live_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    workdir = make_workdir(tmp_path)
    tasks = _task_dir(tmp_path)
    extra = {
        "lm_eval_tasks": ["hn_mw_choice"],
        "lm_eval_include_path": tasks,
        "max_checkpoints_to_keep": 20,
    }
    spec = write_spec(
        workdir,
        "lm_eval",
        trainer_extra=extra,
        eval_interval=5,
        checkpoint_interval=5,
        stages=[["first", [workdir["a"]], 1, {}]],  # 40 samples, 4 a step: 10 steps
    )
    with open(spec, encoding="utf-8") as handle:
        checkpoint_dir = json.load(handle)["checkpoint_dir"]
    outcomes = run_ok(spec, 2)
    per_worker = [[e for e in o.facts["events"] if e["event"] == "lm_eval"] for o in outcomes]
    last = max(e["step"] for e in outcomes[0].facts["events"] if e["event"] == "log")
    assert [e["step"] for e in per_worker[0]] == list(range(5, last + 1, 5))
    assert len(per_worker[0]) == 2
    assert per_worker[0] == per_worker[1]  # every worker reports the chief's scores
    for event in per_worker[0]:  # a checkpoint at every lm-eval step
        results = evaluate_run(
            checkpoint_dir,
            ["hn_mw_choice"],
            include_path=tasks,
            checkpoint=f"ckpt-{event['step']}",
        )
        assert event["scores"] == flat_scores(results)
