"""The curriculum study's arithmetic (bench/curriculum_value.py) on a small fake result set:
interpolation, first crossings, the target, speed-ups, the goal, and the bad cases (a target no
arm reaches, a reference that never gets there, unknown arms, no results)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "curriculum_value", os.path.join(ROOT, "bench", "curriculum_value.py")
)
cv = importlib.util.module_from_spec(_spec)
sys.modules["curriculum_value"] = cv  # dataclasses look their module up there
_spec.loader.exec_module(cv)


def test_interpolate_and_first_crossing():
    xs, ys = [10, 20, 40], [3.0, 2.0, 1.0]
    assert cv.interpolate(xs, ys, 15) == 2.5
    assert cv.interpolate(xs, ys, 30) == 1.5
    assert cv.interpolate(xs, ys, 40) == 1.0
    assert cv.interpolate(xs, ys, 5) is None and cv.interpolate(xs, ys, 41) is None
    assert cv.first_crossing(xs, ys, 2.5) == 15
    assert cv.first_crossing(xs, ys, 1.25) == 35
    assert cv.first_crossing(xs, ys, 3.5) == 10  # already there at the first evaluation
    assert cv.first_crossing(xs, ys, 0.5) is None  # never
    # a noisy curve: the first time it gets there counts
    assert cv.first_crossing([1, 2, 3, 4], [2.0, 1.0, 3.0, 0.5], 1.5) == 1.5


def test_mean_std_and_ratio():
    assert cv.mean_std([]) == (None, None)
    assert cv.mean_std([2.0]) == (2.0, 0.0)
    mean, std = cv.mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == 1.0
    assert cv.ratio(4.0, 2.0) == 2.0
    assert cv.ratio(4.0, 0.0) is None and cv.ratio(None, 2.0) is None


def _run(arm, seed, points, budget=100):
    return {
        "task": "t",
        "arm": arm,
        "seed": seed,
        "budget_tokens": budget,
        "curve": [
            {
                "tokens": t,
                "step": t // 5,
                "row_tokens": 2 * t,
                "loss": loss,
                "seconds": t / 10,
                "buckets": [loss - 0.5, loss + 0.5],
            }
            for t, loss in points
        ],
    }


def _line(start, slope):
    """Loss falling linearly from ``start`` at 0 tokens by ``slope`` per token, 0..100."""
    return [(t, start - slope * t) for t in (0, 25, 50, 75, 100)]


@pytest.fixture()
def runs():
    # a: 4.0 -> 3.0 (target at 0.5 B: 3.5, reached at 50); b slightly faster; c twice as fast
    return [
        _run("a", 0, _line(4.0, 0.010)),
        _run("a", 1, _line(4.1, 0.012)),  # 3.5 at 50 -> target mean 3.5; reached at 50
        _run("b", 0, _line(4.0, 0.0125)),  # reaches 3.5 at 40
        _run("b", 1, _line(4.0, 0.0125)),
        _run("c", 0, _line(4.0, 0.020)),  # reaches 3.5 at 25
        _run("c", 1, _line(4.0, 0.020)),
        _run("d", 0, _line(4.0, 0.020)),
        _run("d", 1, _line(4.0, 0.001)),  # never reaches 3.5 within the budget
    ]


def test_summary_target_speedups_and_goal(runs):
    summary = cv.summarize_task("t", runs, target_fraction=0.5)
    assert summary.budget == 100
    assert summary.target == pytest.approx(3.5)
    arms = {a.arm: a for a in summary.arms}
    assert arms["a"].tokens[0] == pytest.approx(50) and arms["a"].reached == 2
    assert arms["b"].tokens == (pytest.approx(40), pytest.approx(0))
    assert arms["c"].tokens[0] == pytest.approx(25)
    assert arms["c"].seconds[0] == pytest.approx(2.5)
    assert arms["c"].steps[0] == pytest.approx(5) and arms["c"].row_tokens[0] == pytest.approx(50)
    assert arms["c"].compute_vs_a == pytest.approx(2.0)
    assert arms["c"].speedup_vs_a == pytest.approx(2.0)
    assert arms["c"].speedup_vs_b == pytest.approx(1.6)
    assert arms["b"].speedup_vs_a == pytest.approx(1.25)
    assert arms["c"].meets_goal and not arms["b"].meets_goal and not arms["a"].meets_goal
    # d: one seed never gets there: counted, no speed-up claimed
    assert arms["d"].reached == 1 and arms["d"].seeds == 2
    assert arms["d"].speedup_vs_a is None and not arms["d"].meets_goal
    # equal tokens: the loss at the budget, and per difficulty bucket
    assert arms["c"].loss_at_budget[0] == pytest.approx(2.0)
    assert arms["c"].buckets_at_budget == [pytest.approx(1.5), pytest.approx(2.5)]
    assert summary.speedups[0.5]["c"] == pytest.approx(2.0)
    assert summary.speedups[0.5]["d"] is None
    text = cv.format_task(summary)
    assert (
        "| c size_based **(goal)** | 2/2 | 0.0 ± 0.0 | 2.00x | 1.60x | 5 ± 0 | 0 ± 0 | 2.00x"
        in text
    )
    assert "| d difficulty | 1/2 |" in text
    assert "Meets the goal (>= 1.3x fewer tokens than a, fewer than b): c size_based" in text


def test_a_target_no_arm_reaches_is_said_without_dividing_by_zero(runs):
    summary = cv.summarize_task("t", runs, target_loss=0.1)
    assert all(a.reached == 0 and a.tokens == (None, None) for a in summary.arms)
    assert all(a.speedup_vs_a is None and a.speedup_vs_b is None for a in summary.arms)
    assert summary.notes == ["no arm reached the target loss 0.1000"]
    text = cv.format_task(summary)
    assert "Note: no arm reached the target loss 0.1000." in text
    assert "No arm reaches the target with 1.3x fewer tokens than a" in text


def test_without_arm_a_there_is_no_target_and_the_summary_says_so(runs):
    summary = cv.summarize_task("t", [r for r in runs if r["arm"] != "a"])
    assert summary.target is None
    assert summary.notes[0].startswith("no target: arm a has no run covering the target point")
    assert "target held-out loss none" in cv.format_task(summary)


def test_bad_command_lines_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cv.main(["--arms", "a,z", "--analyze", "--output", str(tmp_path)])
    assert "unknown arm(s) ['z']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cv.main(["--tasks", "nope", "--analyze", "--output", str(tmp_path)])
    assert "unknown task(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no results in"):
        cv.main(["--analyze", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"arm a on arithmetic: pacing='sideways' must be one of"):
        cv.main(["--quick", "--pacing", "sideways", "--output", str(tmp_path)])


def test_results_are_appended_and_read_back(tmp_path, runs):
    path = str(tmp_path / "r.jsonl")
    assert cv.read_results(path) == []
    for run in runs[:2]:
        cv.append_result(path, run)
    assert cv.read_results(path) == [json.loads(json.dumps(r)) for r in runs[:2]]


# -- second round ------------------------------------------------------------------------------
def test_round2_arms_settings_scale_batch_and_rate_and_place_the_clean_epochs():
    task = cv.ROUND2_QUICK["arithmetic"]
    base = cv.round2_settings("a", task, 400)
    assert (base["lr_schedule"], base["batch_size"], base["learning_rate"]) == ("cosine", 32, 3e-3)
    assert base["eval_fraction"] == 0.0 and base["min_learning_rate_ratio"] == 0.0
    four = cv.round2_settings("u", task, 400)
    assert (four["batch_size"], four["learning_rate"], four["warmup_steps"]) == (128, 1.2e-2, 7)
    assert four["seq_length_warmup_steps"] == 25 and four["seq_length_warmup_start"] == 8
    assert cv.round2_settings("s", task, 400)["seq_length_warmup_steps"] == 100
    assert cv.round2_settings("n", task, 400)["weight_average"] == 0.99
    assert "mixture" not in cv.round2_settings("q", task, 400)
    assert [cv.clean_epochs(e) for e in (1, 2, 4, 5, 8, 10)] == [1, 1, 1, 1, 2, 2]
    schedule = cv.clean_schedule(task, 4)
    assert schedule == {
        "points": [[3000.0, 600.0]] * 3 + [[1.0, 3.0]],
        "shape": "steps",
    }
    for arm in cv.ROUND2_ARMS:  # every arm is a valid Trainer configuration
        cv._check_round2_settings(["arithmetic"], cv.ROUND2_QUICK, [arm])


def test_the_clean_evaluator_ranks_rows_by_length_and_averages_per_token():
    import numpy as np
    import tensorflow as tf

    texts = [f"{'9' * (i % 7)}+1={i}" for i in range(20)]
    evaluator = cv.CleanEvaluator(texts, seq_len=8, batch=3, buckets=2)
    assert evaluator.inputs.shape == (18, 8)  # 20 rows: whole batches of 3 in 2 buckets
    lengths = evaluator.mask.sum(axis=1)
    assert list(lengths) == sorted(lengths)  # shortest first
    assert evaluator.inputs[0, 0] == 1  # rows start with BOS, as the pipeline's
    uniform = lambda inputs, training: tf.zeros([*inputs.shape, 259])  # noqa: E731
    loss, buckets, answer = evaluator(uniform)
    assert loss == pytest.approx(np.log(259), rel=1e-6)
    assert buckets == [pytest.approx(np.log(259), rel=1e-6)] * 2
    assert answer is None  # no task kind, no answer targets


def test_answer_targets_are_the_results_and_the_closing_brackets():
    from highnoon.data import ByteTokenizer

    tokenizer = ByteTokenizer()

    def targets(kind, text):
        ids = [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
        return cv.answer_targets(kind, ids, text)

    # targets of "12+3=15": 1 2 + 3 = 1 5 EOS; the result and the EOS are decided
    assert targets("arithmetic", "12+3=15") == [False] * 5 + [True] * 3
    # targets of "(<>)": ( < > ) EOS; the closing brackets are decided, not the shape or EOS
    assert targets("brackets", "(<>)") == [False, False, True, True, False]


def test_the_answer_loss_counts_only_answer_targets():
    import numpy as np
    import tensorflow as tf

    texts = ["1+1=2", "2+2=4", "3+3=6", "4+4=8"]
    evaluator = cv.CleanEvaluator(texts, seq_len=8, batch=2, buckets=2, kind="arithmetic")
    assert evaluator.answer_mask.sum() == 8  # per row: the digit and the EOS
    known = {tuple(row): (t, a) for row, t, a in zip(
        evaluator.inputs, evaluator.targets, evaluator.answer_mask)}  # fmt: skip

    def sure_of_answers(inputs, training):
        """Certain (and right) on the answer targets, uniform elsewhere."""
        rows = [known[tuple(row)] for row in inputs.numpy()]
        sure = np.stack([tf.one_hot(t, 259).numpy() * 60.0 * a[:, None] for t, a in rows])
        return tf.constant(sure, tf.float32)

    loss, _, answer = evaluator(sure_of_answers)
    assert answer == pytest.approx(0.0, abs=1e-6)
    other = evaluator.mask.sum() - evaluator.answer_mask.sum()
    assert loss == pytest.approx(other * np.log(259) / evaluator.mask.sum(), rel=1e-5)


def test_round2_command_lines(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cv.main(["--round", "2", "--arms", "a,f", "--analyze", "--output", str(tmp_path)])
    assert "unknown arm(s) ['f']" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="curriculum_value_round2_quick.jsonl"):
        cv.main(["--round", "2", "--quick", "--analyze", "--output", str(tmp_path)])


def test_a_second_round_run_ending_short_of_b_reads_its_loss_at_its_end(runs):
    short = _run("s", 0, [(0, 4.0), (50, 3.0), (90, 2.5)])
    summary = cv.summarize_task("t", [*runs[:2], short])
    assert {a.arm: a.loss_at_budget[0] for a in summary.arms}["s"] is None  # first round: none
    short["round"] = 2
    summary = cv.summarize_task("t", [*runs[:2], short], arms_table=cv.ROUND2_ARMS)
    arms = {a.arm: a for a in summary.arms}
    assert arms["s"].loss_at_budget[0] == pytest.approx(2.5)  # its end, at 90 of B = 100
    assert arms["s"].name == "seq_warmup_1x" and arms["a"].name == "uniform_cosine"
    assert arms["s"].tokens[0] == pytest.approx(25)  # 3.5 reached half-way to 50


def test_answer_losses_get_their_own_tables(tmp_path, runs, capsys):
    path = str(tmp_path / "r.jsonl")
    for run in runs:  # the answer loss: a quarter of the held-out loss
        for point in run["curve"]:
            point["answer_loss"] = point["loss"] / 4
        cv.append_result(path, run)
    assert cv.answer_runs(runs)[0]["curve"][0]["loss"] == runs[0]["curve"][0]["loss"] / 4
    import argparse

    cv.analyze(path, ["t"], argparse.Namespace(target_fraction=0.5, target_loss=None))
    text = capsys.readouterr().out
    held_out = cv.summarize_task("t", runs).target
    assert "### t, answer tokens only" in text
    assert f"target held-out loss {held_out / 4:.4f}" in text
    runs[0]["curve"][0]["answer_loss"] = None  # one evaluation without it: no answer tables
    assert cv.answer_runs(runs) == []
