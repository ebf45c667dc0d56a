"""lm-evaluation-harness: the `highnoon` lm_eval model on a run trained in this file, batched
scoring against a direct computation, rolling windows against lm-eval's own, greedy decoding
with a cache against decoding without one, full `simple_evaluate` and CLI runs on tasks defined
from local JSONL files (no downloads), bad input, and the run's tokenizer kept in its model_dir."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance

import highnoon as hn
from highnoon.data import ByteTokenizer
from highnoon.evaluation import evaluate_run, flat_scores
from highnoon.evaluation.decoding import greedy_batch
from highnoon.evaluation.lm_eval_model import HighNoonEvalLM, cut_at_stop
from highnoon.evaluation.scoring import rolling_windows
from highnoon.utils.validation import InvalidArgumentError
from tests.trainer_helpers import make_trainer, write_jsonl

SEQ = 64
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]


def _texts(count: int) -> list[str]:
    rng = np.random.default_rng(5)
    return ["".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(count)]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A nano model trained for a few steps into a model_dir (byte tokenizer)."""
    root = tmp_path_factory.mktemp("lm_eval_run")
    data = write_jsonl(str(root / "d.jsonl"), _texts(40))
    trainer = make_trainer(root, model=hn.create_model("highnoon-nano", max_seq_length=SEQ))
    trainer.add_curriculum_stage("s", [data], epochs=1)
    trainer.train(checkpoint_dir=str(root / "model"))
    return str(root / "model")


@pytest.fixture(scope="module")
def lm(run_dir):
    return HighNoonEvalLM(model_dir=run_dir, batch_size=4)


@pytest.fixture(scope="module")
def spread_model():
    """An untrained model with spread logits: greedy continuations vary token to token."""
    model = hn.create_model("highnoon-nano", max_seq_length=SEQ, initializer_range=0.5, init_seed=3)
    model.build()
    return model


def _requests(kind, args):
    return [Instance(kind, {}, a, i) for i, a in enumerate(args)]


def _log_softmax(logits):
    top = logits.max(-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))


def _direct(model, context_ids, continuation_ids):
    """Sum of the continuation's token log-probs from one unpadded, unbatched model call."""
    full = np.array([*context_ids, *continuation_ids], np.int32)
    logp = _log_softmax(model(full[None, :-1]).numpy()[0].astype(np.float64))
    first = len(context_ids) - 1
    return sum(logp[first + k, t] for k, t in enumerate(continuation_ids))


PAIRS = [("alphabeta", "gamma"), ("", "deltaomega"), ("sigma ", "alpha"), ("be", "ta" * 3)]


def test_loglikelihood_equals_the_direct_sum_of_token_log_probs(lm):
    results = lm.loglikelihood(_requests("loglikelihood", PAIRS))
    for (context, continuation), (logprob, greedy) in zip(PAIRS, results):
        context_ids, continuation_ids = lm.encode_pair(context, continuation)
        assert context_ids[0] == lm.tokenizer.bos_id
        assert context_ids + continuation_ids == [1, *lm.tokenizer.encode(context + continuation)]
        assert logprob == pytest.approx(_direct(lm.model, context_ids, continuation_ids), abs=1e-4)
        full = np.array([context_ids + continuation_ids], np.int32)
        argmax = np.argmax(lm.model(full[:, :-1]).numpy()[0], -1)[len(context_ids) - 1 :]
        assert greedy == (argmax.tolist() == continuation_ids)
    # the trailing space moved to the continuation, as lm-eval's own models do
    assert lm.encode_pair("sigma ", "alpha")[1] == lm.tokenizer.encode(" alpha")


def test_batching_changes_no_score_and_long_requests_keep_their_last_tokens(lm):
    long_pair = ("gamma" * 20, "delta")  # 101 context tokens: more than max_length=64
    args = [*PAIRS, long_pair]
    batched = lm.loglikelihood(_requests("loglikelihood", args))
    single = HighNoonEvalLM(model=lm.model, tokenizer=lm.tokenizer, batch_size=1)
    one_by_one = single.loglikelihood(_requests("loglikelihood", args))
    np.testing.assert_allclose([r[0] for r in batched], [r[0] for r in one_by_one], atol=1e-4)
    context_ids, continuation_ids = lm.encode_pair(*long_pair)
    kept = (context_ids + continuation_ids)[-(SEQ + 1) :]
    expected = _direct(lm.model, kept[: -len(continuation_ids)], continuation_ids)
    assert batched[-1][0] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("length", [1, 4, 5, 9, 10, 23])
def test_rolling_windows_are_lm_evals_own(length):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens = list(range(10, 10 + length))
    theirs = [
        make_disjoint_window(w)
        for w in get_rolling_token_windows(tokens, prefix_token=1, max_seq_len=4, context_len=1)
    ]
    ours = rolling_windows(tokens, 1, 4)
    assert [(list(c), list(x)) for c, x in ours] == [(list(c), list(x)) for c, x in theirs]
    assert [t for _, x in ours for t in x] == tokens  # every token scored once


def test_rolling_loglikelihood_is_the_sum_over_its_windows(lm):
    short, long = "alphabetagamma", "deltaomegasigma" * 7  # 14 and 105 tokens
    results = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [(short,), (long,)]))
    ids = lm.tokenizer.encode(short)
    assert results[0] == pytest.approx(_direct(lm.model, [1], ids), abs=1e-4)
    windows = rolling_windows(lm.tokenizer.encode(long), 1, SEQ)
    assert len(windows) == 2
    expected = sum(_direct(lm.model, c, x) for c, x in windows)
    assert results[1] == pytest.approx(expected, abs=1e-3)


def test_batched_cached_greedy_decoding_equals_uncached_decoding_per_prompt(spread_model):
    prompts = [[1, 40, 41, 42, 43], [1, 90], [1, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70]]
    new = 10
    batched = greedy_batch(spread_model, prompts, new, eos_id=-1)
    for prompt, ids in zip(prompts, batched):
        alone = spread_model.generate(
            prompt, max_length=len(prompt) + new, temperature=0, eos_id=-1, use_cache=False,
            jit_compile=False,
        )  # fmt: skip
        assert ids == alone[len(prompt) :]
        assert len(set(ids)) > 2  # a non-trivial continuation
    # EOS ends a row (not returned); the other rows go on
    eos = batched[0][3]
    stopped = greedy_batch(spread_model, prompts, new, eos_id=eos)
    assert stopped[0] == batched[0][: batched[0].index(eos)]


def test_generate_until_stops_at_the_first_until_string(spread_model):
    tokenizer = ByteTokenizer()
    lm = HighNoonEvalLM(model=spread_model, tokenizer=tokenizer, batch_size=2)
    prompt = "alpha"
    ids = [1, *tokenizer.encode(prompt)]
    full = spread_model.generate(
        ids, max_length=len(ids) + 12, temperature=0, eos_id=-1, use_cache=False, jit_compile=False
    )
    text = tokenizer.decode(full[len(ids) :])
    stop = text[4:6]
    assert stop and text.find(stop) >= 1
    args = [
        (prompt, {"until": [stop, "never"], "max_gen_toks": 12}),
        (prompt, {"max_gen_toks": 12}),
    ]
    answers = lm.generate_until(_requests("generate_until", args))
    assert answers == [text[: text.find(stop)], text]
    assert cut_at_stop("a--b..c", ["..", "--"]) == "a"
    with pytest.raises(InvalidArgumentError, match="greedily"):
        lm.generate_until(_requests("generate_until", [(prompt, {"do_sample": True})]))


# -- full runs on local tasks ---------------------------------------------------------------
CHOICES = [
    ("alphabeta", ["gamma", "omega"], 0),
    ("deltaomega", ["sigma", "alpha"], 1),
    ("gammadelta", ["omega", "beta"], 0),
]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, lm):
    """A multiple-choice and a generation task on local JSONL files; the generation task's
    first target is the model's own greedy answer (computed without the adapter), the
    second one nothing the model says."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    with open(root / "choice.jsonl", "w", encoding="utf-8") as handle:
        for question, choices, answer in CHOICES:
            handle.write(json.dumps({"q": question, "c": choices, "a": answer}) + "\n")
    prompts = ["alphabeta", "sigmadelta"]
    first = [1, *lm.tokenizer.encode(prompts[0])]
    out = lm.model.generate(
        first, max_length=len(first) + 6, temperature=0, eos_id=-1, use_cache=False,
        jit_compile=False,
    )  # fmt: skip
    own = cut_at_stop(lm.tokenizer.decode(out[len(first) :]), ["\n"])
    assert own.strip() == own and own  # a non-empty answer that survives the YAML round trip
    with open(root / "gen.jsonl", "w", encoding="utf-8") as handle:
        for prompt, target in zip(prompts, [own, "#not this#"]):
            handle.write(json.dumps({"p": prompt, "t": target}) + "\n")
    common = (
        "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"  cache_dir: {root / 'hf_cache'}\ntest_split: test\n"
    )
    (root / "choice.yaml").write_text(
        "task: hn_choice\n"
        + common.format(data=root / "choice.jsonl")
        + "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\n"
        "doc_to_target: '{{a}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n"
        "    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8",
    )
    (root / "gen.yaml").write_text(
        "task: hn_gen\n"
        + common.format(data=root / "gen.jsonl")
        + "output_type: generate_until\ndoc_to_text: '{{p}}'\ndoc_to_target: '{{t}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n"
        "    higher_is_better: true\n",
        encoding="utf-8",
    )
    return str(root)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _expected_accuracy(lm) -> float:
    right = 0
    for question, choices, answer in CHOICES:
        scores = [_direct(lm.model, *lm.encode_pair(question, choice)) for choice in choices]
        right += int(np.argmax(scores) == answer)
    return right / len(CHOICES)


def test_simple_evaluate_on_local_multiple_choice_and_generation_tasks(run_dir, task_dir, lm):
    results = evaluate_run(run_dir, ["hn_choice", "hn_gen"], include_path=task_dir, batch_size=4)
    scores = flat_scores(results)
    assert sorted(scores) == ["hn_choice/acc", "hn_gen/exact_match"]
    assert scores["hn_choice/acc"] == pytest.approx(_expected_accuracy(lm))
    assert scores["hn_gen/exact_match"] == 0.5  # the model's own answer, and not the other


def test_the_cli_registers_highnoon_and_runs_lm_evals_command_line(
    run_dir, task_dir, capsys, no_catalogue
):
    from highnoon.launch.evaluate import main

    main(["--model", "highnoon", "--model_args", f"model_dir={run_dir}", "--batch_size", "2",
          "--tasks", "hn_choice", "--include_path", task_dir, "--limit", "2"])  # fmt: skip
    out = capsys.readouterr().out
    assert "hn_choice" in out and "acc" in out
    with pytest.raises(SystemExit, match="Tasks not found: hn_missing"):
        main(["--model", "highnoon", "--model_args", "model_dir=/nonexistent",
              "--tasks", "hn_missing", "--include_path", task_dir])  # fmt: skip


@pytest.fixture
def no_catalogue(monkeypatch):
    """lm-eval's built-in task catalogue left out (indexing its ~14,700 names takes about 10 s):
    a name not under the include path is then unknown at once."""
    import lm_eval.tasks

    from highnoon.evaluation import tasks as task_lib

    plain = lm_eval.tasks.TaskManager

    def without_catalogue(*args, **kwargs):
        return plain(*args, **{**kwargs, "include_defaults": False})

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", without_catalogue)
    monkeypatch.setattr(task_lib, "_MANAGERS", {})


@pytest.mark.slow  # indexes lm-eval's whole built-in catalogue (about 10 s)
def test_built_in_task_names_are_found_and_unknown_ones_named():
    from highnoon.evaluation import check_tasks

    assert check_tasks(["hellaswag", "arc_easy"]) == ("hellaswag", "arc_easy")
    with pytest.raises(InvalidArgumentError, match=r"\['hellaswagg'\] not found among"):
        check_tasks(["hellaswag", "hellaswagg"])


def test_bad_input_is_refused_naming_the_problem(tmp_path, run_dir, task_dir, no_catalogue):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidArgumentError, match=f"model_dir='{empty}' holds no checkpoint"):
        HighNoonEvalLM(model_dir=str(empty))
    with pytest.raises(InvalidArgumentError, match="ckpt-999.index does not exist"):
        HighNoonEvalLM(model_dir=run_dir, checkpoint="ckpt-999")
    # the task names are checked before the model is loaded: the model_dir does not exist
    with pytest.raises(InvalidArgumentError, match=r"task\(s\) \['hn_nope'\] not found in"):
        evaluate_run(str(tmp_path / "nowhere"), ["hn_choice", "hn_nope"], include_path=task_dir)
    copied = tmp_path / "no_tokenizer"
    shutil.copytree(run_dir, copied)
    os.remove(copied / "highnoon_tokenizer.json")
    with pytest.raises(InvalidArgumentError, match="records no tokenizer"):
        HighNoonEvalLM(model_dir=str(copied))
    assert HighNoonEvalLM(model_dir=str(copied), tokenizer="byte").tokenizer.vocab_size == 259


# -- in-loop evaluation ---------------------------------------------------------------------
def test_in_loop_lm_eval_scores_the_live_weights_into_events_tensorboard_and_summary(
    tmp_path, task_dir
):
    from highnoon.training.history import _read_summaries

    data = write_jsonl(str(tmp_path / "d.jsonl"), _texts(40))
    trainer = make_trainer(
        tmp_path,
        model=hn.create_model("highnoon-nano", max_seq_length=SEQ),
        lm_eval_tasks=["hn_choice"],
        lm_eval_include_path=task_dir,
        eval_interval=5,
        checkpoint_interval=5,
    )
    assert trainer.options.lm_eval_tasks == ("hn_choice",)
    events = []
    trainer.add_callback(lambda e: events.append(e) if e["event"] == "lm_eval" else None)
    trainer.add_curriculum_stage("s", [data], epochs=1)  # 40 samples / 4 = 10 steps
    model_dir = str(tmp_path / "model")
    summary = trainer.train(checkpoint_dir=model_dir)
    assert [(e["step"], e["stage"], e["tasks"]) for e in events] == [
        (5, "s", ["hn_choice"]),
        (10, "s", ["hn_choice"]),
    ]
    # the scores are those of the weights at that step: the checkpoint saved there, scored anew
    for event in events:
        results = evaluate_run(
            model_dir, ["hn_choice"], include_path=task_dir, checkpoint=f"ckpt-{event['step']}"
        )
        assert event["scores"] == flat_scores(results)
    saved = json.loads((tmp_path / "model" / "summary.json").read_text())
    strip = [{k: x for k, x in e.items() if k != "event"} for e in events]
    assert summary["lm_eval"] == strip and saved["lm_eval"] == strip
    scalars, _ = _read_summaries(os.path.join(model_dir, "summaries"))
    assert scalars["lm_eval/hn_choice/acc"] == {
        e["step"]: pytest.approx(e["scores"]["hn_choice/acc"]) for e in events
    }


def test_in_loop_settings_are_checked_at_the_trainer_call(task_dir, no_catalogue):
    model = hn.create_model("highnoon-nano", max_seq_length=SEQ)
    with pytest.raises(InvalidArgumentError, match=r"\['hn_nope'\] not found in"):
        hn.Trainer(model, lm_eval_tasks=["hn_nope"], lm_eval_include_path=task_dir, verbose=False)
    with pytest.raises(InvalidArgumentError, match="must be a list of lm-eval task names"):
        hn.Trainer(model, lm_eval_tasks="hn_choice", verbose=False)
    with pytest.raises(InvalidArgumentError, match="lm_eval_limit=0"):
        hn.Trainer(model, lm_eval_tasks=["hn_choice"], lm_eval_limit=0, verbose=False)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        hn.Trainer(model, lm_eval_tasks=["x"], lm_eval_include_path="/no/such/dir", verbose=False)


# -- the run's tokenizer travels with the run -----------------------------------------------
def test_a_saved_trainer_keeps_a_copy_of_its_tokenizer_and_loads_after_a_move(tmp_path):
    from highnoon.data import train_tokenizer_json
    from highnoon.launch.generate import load_for_generation
    from highnoon.training.trainer import Trainer

    source = tmp_path / "user" / "tokenizer.json"
    source.parent.mkdir()
    tokenizer = train_tokenizer_json(_texts(60), str(source), vocab_size=300)
    model = hn.create_model("highnoon-nano", max_seq_length=SEQ, tokenizer=tokenizer)
    trainer = make_trainer(tmp_path, model=model, tokenizer=tokenizer)
    trainer.save(str(tmp_path / "saved"))
    state = json.loads((tmp_path / "saved" / "trainer.json").read_text())
    assert state["tokenizer"]["model_path"] == "tokenizer.json"  # relative to the directory
    assert state["tokenizer"]["model_sha256"] == tokenizer.model_sha256
    shutil.move(str(tmp_path / "saved"), str(tmp_path / "moved"))
    shutil.rmtree(source.parent)  # the user's file is gone too
    moved = str(tmp_path / "moved")
    fresh = hn.create_model("highnoon-nano", max_seq_length=SEQ, tokenizer=tokenizer)
    loaded = Trainer.load(moved, fresh, verbose=False)
    assert loaded.tokenizer.model_path == os.path.join(moved, "tokenizer.json")
    assert loaded.tokenizer.encode("alphabeta") == tokenizer.encode("alphabeta")
    # highnoon-generate --checkpoint reads the run's tokenizer
    _, generating = load_for_generation(moved, "highnoon-tiny")
    assert generating.to_config()["model_sha256"] == tokenizer.model_sha256
    _, explicit = load_for_generation(moved, "highnoon-tiny", "byte")
    assert explicit.vocab_size == 259


def test_a_training_run_records_its_tokenizer(run_dir):
    from highnoon.data.saved_tokenizer import load_saved_tokenizer

    with open(os.path.join(run_dir, "highnoon_tokenizer.json"), encoding="utf-8") as handle:
        assert json.load(handle) == {"type": "byte"}
    assert isinstance(load_saved_tokenizer(run_dir), ByteTokenizer)
