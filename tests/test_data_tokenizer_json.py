"""Hugging Face tokenizer.json: special-token mapping, training determinism, stores, the Trainer
and highnoon-prepare-data. Every tokenizer.json here is built by the test (no downloads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, processors

from highnoon.data import (
    StoreError,
    TokenizerJson,
    TokenStore,
    build_token_store,
    check_vocab_fits,
    load_tokenizer,
    prepare_datasets,
    tokenizer_from_config,
    train_tokenizer_json,
)
from tests.test_data_tokenizers import CORPUS
from tests.trainer_helpers import corpus, make_trainer, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "tokenizer.json"
    return train_tokenizer_json(CORPUS, str(path), vocab_size=400)


def _word_level(path, words: list[str], *, special: list[str] = (), processor=None) -> str:
    """A tiny WordLevel tokenizer.json: ``words`` in id order, ``special`` added as special."""
    tok = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(special))
    if processor is not None:
        tok.post_processor = processor
    tok.save(str(path))
    return str(path)


def test_trained_file_maps_specials_and_round_trips(trained):
    assert (trained.pad_id, trained.bos_id, trained.eos_id) == (0, 1, 2)
    assert trained.special_tokens == {"bos": "<s>", "eos": "</s>", "pad": "<pad>"}
    assert trained.vocab_size == 359  # 3 specials + 256 bytes + 100 merges this corpus supports
    assert trained.encode("ab") == [67, 68]  # bytes sorted by their symbol: 'a' is the 65th
    assert trained.encode("") == []
    for text in [*CORPUS[:4], "unseen ✓ chars 😀\n\t  indented", "\x00\xff"]:
        ids = trained.encode(text)
        assert all(3 <= i < trained.vocab_size for i in ids)  # no special token added
        assert trained.decode(ids) == text
    assert trained.decode([1, *trained.encode("fox"), 2, 0]) == "fox"
    flat, lengths = trained.encode_batch(["ab", "", "fox"])
    assert lengths.tolist() == [2, 0, len(trained.encode("fox"))]
    assert flat.tolist() == [67, 68, *trained.encode("fox")]
    with pytest.raises(ValueError, match=r"outside \[0, 359\)"):
        trained.decode([359])


def test_training_is_deterministic_byte_for_byte(tmp_path, trained):
    again = train_tokenizer_json(list(CORPUS), str(tmp_path / "again.json"), vocab_size=400)
    with open(trained.model_path, "rb") as a, open(again.model_path, "rb") as b:
        assert a.read() == b.read()
    assert again.model_sha256 == trained.model_sha256
    assert sorted(os.listdir(tmp_path)) == ["again.json"]  # published by rename, nothing left
    # Another process, one thread, another hash seed: the trainer's parallel counting and hash
    # maps must not reach the file.
    script = (
        "import sys; from highnoon.data import train_tokenizer_json; "
        "from tests.test_data_tokenizers import CORPUS; "
        "train_tokenizer_json(CORPUS, sys.argv[1], vocab_size=400)"
    )
    env = {**os.environ, "RAYON_NUM_THREADS": "1", "PYTHONHASHSEED": "7", "PYTHONPATH": REPO}
    other = tmp_path / "other.json"
    subprocess.run([sys.executable, "-c", script, str(other)], check=True, env=env, timeout=120)
    with open(again.model_path, "rb") as handle:
        assert other.read_bytes() == handle.read()


def test_training_refuses_a_vocab_without_room_for_the_bytes(tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size=200 is too small.*at least 259"):
        train_tokenizer_json(CORPUS, str(tmp_path / "t.json"), vocab_size=200)
    assert not os.listdir(tmp_path)


def test_specials_from_added_tokens_post_processor_or_names(tmp_path):
    words = ["<unk>", "hello", "world"]
    gpt2 = TokenizerJson(_word_level(tmp_path / "g.json", words, special=["<|endoftext|>"]))
    assert (gpt2.bos_id, gpt2.eos_id, gpt2.pad_id) == (3, 3, 3)  # one token, three roles
    roberta = TokenizerJson(
        _word_level(
            tmp_path / "r.json",
            [*words, "<cls>", "<sep>"],
            special=["<cls>", "<sep>", "[PAD]"],
            processor=processors.RobertaProcessing(("<sep>", 4), ("<cls>", 3)),
        )
    )
    assert (roberta.bos_id, roberta.eos_id, roberta.pad_id) == (3, 4, 5)
    template = processors.TemplateProcessing(
        single="[BEGIN] $A [END]", special_tokens=[("[BEGIN]", 4), ("[END]", 3)]
    )
    llama_like = TokenizerJson(
        _word_level(
            tmp_path / "t.json",
            [*words, "[END]", "[BEGIN]"],
            special=["[END]", "[BEGIN]"],
            processor=processors.Sequence([processors.ByteLevel(), template]),
        )
    )
    assert llama_like.special_tokens == {"bos": "[BEGIN]", "eos": "[END]", "pad": "[END]"}
    named = TokenizerJson(
        _word_level(tmp_path / "n.json", [*words, "BEGIN", "END"]),
        bos_token="BEGIN", eos_token="END",
    )  # fmt: skip
    assert (named.bos_id, named.eos_id, named.pad_id) == (3, 4, 4)
    assert named.encode("hello world") == [1, 2]
    assert named.decode([3, 1, 2, 4]) == "hello world"


def test_missing_specials_are_refused_naming_what_and_how(tmp_path):
    path = _word_level(tmp_path / "bare.json", ["<unk>", "hello"], special=["<s>"])
    with pytest.raises(ValueError) as error:
        TokenizerJson(path)
    message = str(error.value)
    assert "names no eos token" in message and "['<s>']" in message
    assert "'eos_token': '<token>'" in message and "'type': 'tokenizer_json'" in message
    with pytest.raises(ValueError, match="names no bos and no eos token"):
        TokenizerJson(_word_level(tmp_path / "none.json", ["<unk>", "hello"]))
    with pytest.raises(ValueError, match=r"eos_token='</x>' is not a token of .*bare.json"):
        TokenizerJson(path, eos_token="</x>")
    fixed = load_tokenizer(
        json.dumps({"type": "tokenizer_json", "path": path, "eos_token": "<unk>"})
    )
    assert (fixed.bos_id, fixed.eos_id) == (2, 0)


def test_load_forms_config_round_trip_and_changed_file(tmp_path, trained):
    assert isinstance(load_tokenizer(trained.model_path), TokenizerJson)
    config = trained.to_config()
    assert config == {
        "type": "tokenizer_json", "model_path": trained.model_path,
        "model_sha256": trained.model_sha256, "vocab_size": 359,
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
    }  # fmt: skip
    assert "model_path" not in trained.fingerprint_config()
    assert tokenizer_from_config(config).encode(CORPUS[1]) == trained.encode(CORPUS[1])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['eos'\]"):
        load_tokenizer({"type": "tokenizer_json", "path": trained.model_path, "eos": "</s>"})
    with pytest.raises(ValueError, match="path='/nonexistent.json' is not a file"):
        load_tokenizer("/nonexistent.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="not a Hugging Face tokenizer.json"):
        load_tokenizer(str(broken))
    with pytest.raises(ValueError, match="model file changed"):
        tokenizer_from_config({**config, "model_sha256": "0" * 64})


def test_store_keeps_a_verified_copy(tmp_path, trained):
    source = tmp_path / "own.json"
    with open(trained.model_path, "rb") as handle:
        source.write_bytes(handle.read())
    tok = load_tokenizer(str(source))
    store = build_token_store(CORPUS[:4], tok, str(tmp_path / "store"), progress=False)
    assert store.manifest["tokenizer"]["model_file"] == "tokenizer.json"
    assert store.sample(0).tolist() == [*tok.encode(CORPUS[0]), 2]
    source.unlink()  # the store is self-contained
    reopened = TokenStore.open(store.path, verify=True)
    assert reopened.tokenizer.encode(CORPUS[1]) == trained.encode(CORPUS[1])
    copy = tmp_path / "store" / "tokenizer.json"
    copy.write_text(copy.read_text().replace('"<pad>"', '"<PAD>"'))
    with pytest.raises(StoreError, match="tokenizer.json"):
        TokenStore.open(store.path, verify=True)


def test_model_vocab_smaller_than_tokenizer_is_refused_naming_both(tmp_path, trained):
    with pytest.raises(ValueError, match="model_vocab_size=259 is smaller than the tokenizer's "
                       "vocab_size=359"):  # fmt: skip
        make_trainer(tmp_path, tokenizer=trained.model_path)  # highnoon-nano: vocab 259
    with pytest.raises(TypeError, match="tokenizer=42 must be a highnoon.data.Tokenizer"):
        make_trainer(tmp_path, tokenizer=42)
    with pytest.raises(ValueError, match="tokenizer='gpt2' is not understood"):
        make_trainer(tmp_path, tokenizer="gpt2")
    check_vocab_fits(trained, 359)


def test_trainer_trains_saves_and_loads_with_a_tokenizer_json_path(tmp_path, trained):
    import highnoon as hn

    def model():
        return hn.create_model("highnoon-nano", max_seq_length=32, tokenizer=trained)

    trainer = make_trainer(tmp_path, model(), tokenizer=trained.model_path)
    assert isinstance(trainer.tokenizer, TokenizerJson)
    assert trainer.model.config.vocab_size == 359
    data = write_jsonl(str(tmp_path / "d.jsonl"), corpus(0, 12))
    trainer.add_curriculum_stage("all", [data], epochs=1)
    summary = trainer.train(save_checkpoints=False)
    assert summary["total_steps"] == 3
    copies = [f for _, _, files in os.walk(tmp_path / "cache") for f in files]
    assert copies.count("tokenizer.json") == 1  # the stage's store keeps the file
    trainer.save(str(tmp_path / "saved"))
    loaded = type(trainer).load(str(tmp_path / "saved"), model())
    # the saved directory keeps a copy of the file, and the loaded trainer reads that copy
    copy = str(tmp_path / "saved" / "tokenizer.json")
    assert loaded.tokenizer.to_config() == {**trained.to_config(), "model_path": copy}


def test_prepare_datasets_trains_a_tokenizer_json_deterministically(tmp_path):
    data = write_jsonl(str(tmp_path / "d.jsonl"), corpus(1, 40))
    first = prepare_datasets([data], str(tmp_path / "a"), train_tokenizer_json_vocab=300,
                             progress=False, runner="none")  # fmt: skip
    second = prepare_datasets([data], str(tmp_path / "b"), train_tokenizer_json_vocab=300,
                              progress=False, runner="none")  # fmt: skip
    a, b = (tmp_path / n / "tokenizer.json" for n in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    assert first["tokenizer"]["type"] == "tokenizer_json"
    assert first["datasets"][0]["fingerprint"] == second["datasets"][0]["fingerprint"]
    with pytest.raises(ValueError, match="set only one"):
        prepare_datasets([data], str(tmp_path / "c"), train_sentencepiece_vocab=300,
                         train_tokenizer_json_vocab=300)  # fmt: skip


def test_prepare_data_launcher_takes_a_tokenizer_json(tmp_path, trained):
    data = write_jsonl(str(tmp_path / "d.jsonl"), CORPUS[:6])
    out = subprocess.run(
        [
            sys.executable, "-m", "launch.prepare_data", f"--datasets={data}",
            f"--output_dir={tmp_path / 'out'}", f"--tokenizer={trained.model_path}",
        ],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    index = json.loads((tmp_path / "out" / "datasets.json").read_text())
    assert index["tokenizer"] == trained.to_config()
    store = TokenStore.open(index["datasets"][0]["path"], verify=True)
    assert store.sample(0).tolist() == [*trained.encode(CORPUS[0]), 2]


def test_gin_run_and_generate_take_a_tokenizer_json_path(trained):
    from highnoon.launch.generate import load_for_generation
    from highnoon.training.run import build_trainer

    stages = [{"name": "all", "datasets": ["arithmetic"]}]  # what run_training's gin binds
    trainer = build_trainer(model="highnoon-nano", tokenizer=trained.model_path, stages=stages)
    assert trainer.tokenizer.to_config() == trained.to_config()
    assert trainer.model.config.vocab_size == 359  # sized from the tokenizer
    model, tokenizer = load_for_generation(None, "highnoon-nano", trained.model_path)
    assert (model.config.vocab_size, tokenizer.eos_id) == (359, 2)
