"""KerasHub causal LMs trained by the Trainer as they are (highnoon/models/kerashub.py).

A tiny GPT-2 (and a tiny Llama) built from a config, no download: two curriculum stages with
checkpoints, an interrupted run resumed to the uninterrupted run's exact weights, the same
weights under the in-process 2-replica MirroredStrategy with and without ZeRO sharding, export,
checkpoints and a saved preset that load back, KerasHub's own generation, GPT-2's packed rows
(each document sees only itself); and every KerasHub misuse refused before anything is built.
Two workers: test_kerashub_multiworker.py.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import highnoon as hn  # noqa: E402
from highnoon.data import load_tokenizer  # noqa: E402
from highnoon.models import kerashub  # noqa: E402
from highnoon.models.contract import ModelContractError  # noqa: E402
from highnoon.utils.validation import InvalidArgumentError  # noqa: E402
from tests.trainer_helpers import corpus, make_trainer, write_jsonl  # noqa: E402

RTOL, ATOL = 1e-4, 5e-5  # sums in another order (the step's multi-replica tolerance)
GPT2 = dict(
    num_layers=1, num_heads=2, hidden_dim=32, intermediate_dim=64, max_sequence_length=32,
    dropout=0.0,
)  # fmt: skip
LLAMA = dict(num_layers=1, num_query_heads=2, num_key_value_heads=1, hidden_dim=32,
             intermediate_dim=64)  # fmt: skip


def gpt2(vocabulary_size: int = 259):
    return kerashub.causal_lm("GPT2CausalLM", backbone={**GPT2, "vocabulary_size": vocabulary_size})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    files = tmp_path_factory.mktemp("data")
    return {
        "a": write_jsonl(str(files / "a.jsonl"), corpus(0, 40)),
        "b": write_jsonl(str(files / "b.jsonl"), corpus(1, 24)),
    }


def _two_stages(trainer, data):
    trainer.add_curriculum_stage("first", [data["a"]], epochs=2)
    trainer.add_curriculum_stage("second", [data["b"]], epochs=1, learning_rate=1e-3, weight=2.0)
    return trainer


def _weights(model) -> list[np.ndarray]:
    return [np.asarray(w.numpy()) for w in model.trainable_variables]


def _losses(trainer) -> dict[int, float]:
    logs: dict[int, float] = {}
    trainer.add_callback(
        lambda e: logs.update({e["step"]: e["loss"]}) if e["event"] == "log" else None
    )
    return logs


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """An uninterrupted one-device run: summary, final weights, loss per step."""
    tmp = tmp_path_factory.mktemp("reference")
    model = gpt2()
    trainer = _two_stages(make_trainer(tmp, model=model), data)
    losses = _losses(trainer)
    summary = trainer.train(checkpoint_dir=str(tmp / "run"), log_interval=1, checkpoint_interval=5)
    assert trainer.export_model() is model  # the KerasHub model itself, trained in place
    return summary, _weights(model), losses


# -- refusals ---------------------------------------------------------------------------------
def test_kerashub_misuse_is_refused_naming_the_fix(tmp_path, data, mirrored):
    model = gpt2()
    attached = keras_hub.models.GPT2CausalLM(
        backbone=model.backbone,
        preprocessor=keras_hub.models.GPT2CausalLMPreprocessor(tokenizer=None),
    )
    with pytest.raises(
        ModelContractError,
        match=r"GPT2CausalLM has a preprocessor attached \(GPT2CausalLMPreprocessor\), so it "
        r"expects text.*GPT2CausalLM\(backbone=model.backbone, preprocessor=None\)",
    ):
        make_trainer(tmp_path, model=attached)
    with pytest.raises(ModelContractError, match=r"KerasHub GPT2Backbone, not a CausalLM"):
        make_trainer(tmp_path, model=model.backbone)
    with pytest.raises(
        InvalidArgumentError,
        match=r"model_vocab_size=200 is smaller than the tokenizer's vocab_size=259",
    ):
        make_trainer(tmp_path, model=gpt2(vocabulary_size=200))
    llama = kerashub.causal_lm("LlamaCausalLM", backbone={**LLAMA, "vocabulary_size": 259})
    with pytest.raises(
        ModelContractError,
        match=r"pack=True needs .*a KerasHub CausalLM takes only token_ids and padding_mask.*"
        r"packing is supported for GPT2Backbone only.*Train LlamaCausalLM with pack=False",
    ):
        make_trainer(tmp_path, model=llama, pack=True)
    trainer = make_trainer(tmp_path, model=llama)
    with pytest.raises(ModelContractError, match=r"pack=True needs"):
        trainer.add_curriculum_stage("first", [data["a"]], epochs=1, pack=True)
    with pytest.raises(
        ModelContractError,
        match=r"sharding='full' cannot train GPT2CausalLM: a KerasHub backbone is one functional "
        r"model.*Use sharding='gradients'",
    ):
        make_trainer(tmp_path, model=model, strategy=mirrored, sharding="full")
    with pytest.raises(InvalidArgumentError, match=r"task='GPT2Backbone' is not a CausalLM class"):
        kerashub.causal_lm("GPT2Backbone", backbone=GPT2)
    assert not (tmp_path / "cache").exists()  # refused before any store was built


def test_gemma_keeps_the_contract_through_the_wrapper():
    from highnoon.models.contract import adapt, check_outputs, unwrap

    gemma = kerashub.causal_lm(
        "GemmaCausalLM",
        backbone={"vocabulary_size": 300, "num_layers": 1, "num_query_heads": 2,
                  "num_key_value_heads": 1, "hidden_dim": 32, "intermediate_dim": 64,
                  "head_dim": 16},
    )  # fmt: skip
    wrapped = adapt(gemma)
    assert unwrap(wrapped) is gemma and wrapped.trainable_variables == gemma.trainable_variables
    assert check_outputs(wrapped, 259) == 300
    assert wrapped.config["vocab_size"] == 300 and wrapped.config["max_seq_length"] is None
    assert wrapped.config["task"] == "GemmaCausalLM"


def test_gpt2_packed_documents_see_only_themselves_at_their_own_positions():
    from highnoon.models.contract import adapt

    wrapped = adapt(gpt2())
    rng = np.random.default_rng(0)
    first, second = rng.integers(3, 259, 5), rng.integers(3, 259, 7)
    row = np.zeros((1, 16), np.int32)
    row[0, :12] = np.concatenate([first, second])
    positions = np.concatenate([np.arange(5), np.arange(7), np.arange(4)])[None]
    segments = np.array([[1] * 5 + [2] * 7 + [0] * 4])
    packed = np.asarray(wrapped(row, positions=positions, segment_ids=segments))
    for doc, cols in ((first, slice(0, 5)), (second, slice(5, 12))):
        alone = np.asarray(wrapped(doc[None].astype(np.int32)))  # the public CausalLM call
        np.testing.assert_allclose(packed[0, cols], alone[0], rtol=1e-5, atol=1e-6)
    # One segment from position 0 is the public call itself.
    whole = wrapped(row, positions=np.arange(16)[None], segment_ids=np.ones((1, 16), np.int32))
    np.testing.assert_array_equal(np.asarray(whole), np.asarray(wrapped(row)))


# -- training -----------------------------------------------------------------------------------
class _StopAt(Exception):
    pass


@pytest.mark.slow
def test_an_interrupted_gpt2_run_resumes_to_the_uninterrupted_weights(tmp_path, data, reference):
    expected_summary, expected, expected_losses = reference
    stop_step = 9  # inside stage one's second epoch; the last checkpoint before it is step 5

    def stop(event):
        if event["event"] == "log" and event["step"] == stop_step:
            raise _StopAt()

    cut = _two_stages(make_trainer(tmp_path, model=gpt2()), data)
    cut.add_callback(stop)
    with pytest.raises(_StopAt):
        cut.train(checkpoint_dir=str(tmp_path / "cut"), log_interval=1, checkpoint_interval=5)
    assert os.path.exists(tmp_path / "cut" / f"ckpt-{stop_step}.index")  # final checkpoint

    model = gpt2()  # fresh initial weights: everything comes back from the checkpoint
    resumed = _two_stages(make_trainer(tmp_path, model=model), data)
    losses = _losses(resumed)
    summary = resumed.train(checkpoint_dir=str(tmp_path / "cut"), log_interval=1)
    assert summary["total_steps"] == expected_summary["total_steps"] > stop_step
    assert [s["name"] for s in summary["stages_completed"]] == ["first", "second"]
    assert sorted(losses) == list(range(stop_step + 1, summary["total_steps"] + 1))
    assert losses == {step: expected_losses[step] for step in losses}
    for got, want in zip(_weights(model), expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sharding, save",
    [(None, False), ("optimizer", False), ("gradients", True)],  # one sharded checkpoint
)
def test_two_replicas_train_gpt2_to_the_one_device_weights(
    tmp_path, data, mirrored, reference, sharding, save
):
    expected_summary, expected, _ = reference
    with mirrored.scope():  # KerasHub builds at construction: the variables must be mirrored
        model = gpt2()
    trainer = _two_stages(make_trainer(tmp_path, model=model, sharding=sharding), data)
    summary = trainer.train(
        save_checkpoints=save, checkpoint_dir=str(tmp_path / "run"), checkpoint_interval=10
    )
    assert trainer.strategy is mirrored
    assert summary["total_steps"] == expected_summary["total_steps"]
    exported = trainer.export_model()
    assert exported is model
    for got, want in zip(_weights(exported), expected):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    if save:  # whole tensors under the unsharded names: a model on one device restores them
        restored = hn.models.load_model(str(tmp_path / "run"))
        for got, want in zip(_weights(restored), _weights(exported)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_llama_trains_saves_a_preset_that_loads_back_and_generates(tmp_path, data, capsys):
    tokenizer = load_tokenizer("byte")
    model = kerashub.causal_lm("LlamaCausalLM", backbone=LLAMA, tokenizer=tokenizer)
    before = _weights(model)
    trainer = make_trainer(tmp_path, model=model, max_seq_length=32)
    trainer.add_curriculum_stage("first", [data["a"]], epochs=1)
    summary = trainer.train(checkpoint_dir=str(tmp_path / "run"))
    assert summary["total_steps"] == 10  # 40 samples in batches of 4
    trained = trainer.export_model()
    assert trained is model
    assert all(not np.array_equal(a, b) for a, b in zip(before, _weights(trained)))

    # The Trainer's checkpoint loads back as the KerasHub model, alone or with its Trainer.
    from_checkpoint = hn.models.load_model(str(tmp_path / "run"))
    assert type(from_checkpoint) is keras_hub.models.LlamaCausalLM
    fresh = kerashub.causal_lm("LlamaCausalLM", backbone=LLAMA, tokenizer=tokenizer, seed=1)
    trainer.save(str(tmp_path / "saved"))
    reloaded = hn.Trainer.load(str(tmp_path / "saved"), fresh)
    assert reloaded.export_model() is fresh
    for restored in (from_checkpoint, fresh):
        for got, want in zip(_weights(restored), _weights(trained)):
            np.testing.assert_array_equal(got, want)

    preset = str(tmp_path / "preset")
    trained.save_to_preset(preset)
    loaded = kerashub.causal_lm("LlamaCausalLM", preset=preset, load_weights=True)
    ids = np.array([[1, 72, 104, 108, 108, 111]], np.int32)
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    logits = np.asarray(trained(inputs))
    np.testing.assert_array_equal(np.asarray(loaded(inputs)), logits)

    # KerasHub's cached greedy generation continues with the trained model's argmax.
    out = kerashub.generate(loaded, ids[0].tolist(), max_length=10, tokenizer=tokenizer, stop=False)
    assert out[:6] == ids[0].tolist() and len(out) == 10
    assert out[6] == int(np.argmax(logits[0, -1]))
    text = kerashub.generate(loaded, "hello", max_length=10, tokenizer=tokenizer)
    assert text.startswith("hello")
    sampled = [
        kerashub.generate(
            loaded,
            ids[0],
            max_length=10,
            tokenizer=tokenizer,
            stop=False,
            temperature=1.0,
            top_k=20,
            top_p=0.9,
            seed=seed,
        )
        for seed in (3, 3)
    ]
    assert sampled[0] == sampled[1] and len(sampled[0]) == 10  # the same seed, the same tokens

    # highnoon-generate loads the run's checkpoint as the KerasHub model.
    from highnoon.launch.generate import load_for_generation

    for_generation, _ = load_for_generation(str(tmp_path / "run"), "unused")
    assert type(for_generation) is keras_hub.models.LlamaCausalLM
    from absl import flags

    from highnoon.launch import generate as generate_program

    flags.FLAGS([
        "generate", f"--checkpoint={tmp_path / 'run'}", "--prompt=hello", "--max_length=10",
        "--temperature=0",
    ])  # fmt: skip
    try:
        generate_program.main(["generate"])
    finally:
        flags.FLAGS.unparse_flags()
    printed = capsys.readouterr().out
    expected = kerashub.generate(trained, "hello", max_length=10, tokenizer=tokenizer)
    assert printed == expected + "\n"

    # The preset (weights included) fine-tunes further from the checkpoint's weights.
    again = make_trainer(tmp_path, model=loaded, max_seq_length=32)
    again.add_curriculum_stage("first", [data["b"]], epochs=1)
    assert again.train(save_checkpoints=False)["total_steps"] == 6


@pytest.mark.slow
def test_the_readme_kerashub_snippet_runs(tmp_path, monkeypatch):
    """README "Fine-tune a KerasHub model with a curriculum", run as written on the embedded
    datasets cut small."""
    from highnoon import data as hn_data
    from tests.test_documented_flows import REPO

    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as handle:
        section = handle.read().split("### Fine-tune a KerasHub model with a curriculum", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    for name in ("stdlib_docs", "stdlib_code"):
        hn_data.register_dataset(name, hn_data.EmbeddedSource(name, max_samples=32))
    monkeypatch.setenv("HIGHNOON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    try:
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)
    finally:
        hn_data.register_embedded_datasets()
    assert scope["trained"] is scope["model"]
    summary = json.loads((tmp_path / "kerashub_run" / "summary.json").read_text())
    assert [s["name"] for s in summary["stages_completed"]] == ["foundation", "code"]
    loaded = keras_hub.models.GPT2CausalLM.from_preset("./gpt2_finetuned", preprocessor=None)
    for got, want in zip(_weights(loaded), _weights(scope["trained"])):
        np.testing.assert_array_equal(got, want)


def test_the_gin_run_builds_a_kerashub_gpt2_sized_by_the_tokenizer():
    import gin

    from highnoon.launch import configurables
    from highnoon.launch.flags import parse_gin
    from highnoon.training import run  # noqa: F401  (registers run_training and Trainer)

    gin.clear_config()
    try:
        parse_gin(["runs/kerashub_gpt2.gin"], finalize=False)
        assert [s["name"] for s in gin.query_parameter("run_training.stages")] == [
            "foundation", "code", "instruction"
        ]  # fmt: skip
        assert gin.query_parameter("Trainer.pack") is False
        model = configurables.create_model(tokenizer=load_tokenizer("byte"))
    finally:
        gin.clear_config()
    assert type(model) is keras_hub.models.GPT2CausalLM and model.preprocessor is None
    assert model.backbone.vocabulary_size == 259  # the byte tokenizer's
    assert (model.backbone.num_layers, model.backbone.hidden_dim) == (2, 128)


@pytest.mark.slow
def test_gpt2_trains_packed_rows_with_less_padding(tmp_path):
    short = write_jsonl(str(tmp_path / "short.jsonl"), corpus(0, 40, 1, 3))
    runs = {}
    for pack in (False, True):
        trainer = make_trainer(tmp_path, model=gpt2(), pack=pack)
        trainer.add_curriculum_stage("first", [short], epochs=1)
        runs[pack] = trainer.train(save_checkpoints=False)["stages_completed"][0]
    # The same 40 samples and 402 real tokens, in 4 packed steps instead of 10 padded ones.
    assert runs[True]["samples_seen"] == runs[False]["samples_seen"] == 40
    assert runs[True]["tokens_seen"] == runs[False]["tokens_seen"]
    assert (runs[False]["steps"], runs[True]["steps"]) == (10, 4)
    assert runs[False]["padding_fraction"] > 0.6 > 0.25 > runs[True]["padding_fraction"]
