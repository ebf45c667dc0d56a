"""Tokenizers: exact ids, round trips, special ids, SentencePiece training, config round trips."""

from __future__ import annotations

import pytest

from highnoon.data import (
    ByteTokenizer,
    SentencePieceTokenizer,
    check_vocab_fits,
    load_tokenizer,
    tokenizer_from_config,
    train_sentencepiece,
)

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "The quick brown fox jumps over the lazy dog.",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "Numbers 12345 and 67890 are split into digits.",
] * 20


def test_byte_tokenizer_ids_are_utf8_bytes_plus_three():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 0, 1, 2)
    assert tok.encode("ab") == [ord("a") + 3, ord("b") + 3]
    assert tok.encode("é") == [0xC3 + 3, 0xA9 + 3]
    assert tok.encode("") == []


@pytest.mark.parametrize("text", ["hello\n\tworld  ", "héllo wörld ✓ 😀", "", "\x00\xff"])
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(text)) == text
    flat, lengths = tok.encode_batch([text, "x"])
    assert lengths.tolist() == [len(text.encode()), 1]
    assert flat.tolist() == tok.encode(text) + tok.encode("x")


def test_byte_decode_skips_special_ids_and_rejects_out_of_range():
    tok = ByteTokenizer()
    assert tok.decode([1, ord("h") + 3, 0, ord("i") + 3, 2]) == "hi"
    with pytest.raises(ValueError, match=r"\[0, 259\)"):
        tok.decode([259])


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("sp") / "tok")
    return train_sentencepiece(CORPUS, prefix, vocab_size=400, model_type="bpe", seed=0)


def test_sentencepiece_special_ids_and_round_trip(sp_model):
    assert (sp_model.pad_id, sp_model.bos_id, sp_model.eos_id) == (0, 1, 2)
    assert sp_model.vocab_size <= 400
    for text in [*CORPUS[:4], "unseen ✓ chars\n  indented"]:
        ids = sp_model.encode(text)
        assert all(0 <= i < sp_model.vocab_size for i in ids)
        assert sp_model.decode(ids) == text
    assert sp_model.decode([1, *sp_model.encode("fox"), 2, 0]) == "fox"


def test_sentencepiece_training_is_deterministic(tmp_path, sp_model):
    again = train_sentencepiece(CORPUS, str(tmp_path / "again"), vocab_size=400, seed=0)
    # the model file records its own prefix, so compare the learned vocabularies
    pieces = [sp_model._sp.id_to_piece(i) for i in range(sp_model.vocab_size)]
    assert [again._sp.id_to_piece(i) for i in range(again.vocab_size)] == pieces
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".spm-tmp")]


def test_sentencepiece_unigram_trains(tmp_path):
    tok = train_sentencepiece(CORPUS, str(tmp_path / "uni"), vocab_size=400, model_type="unigram")
    assert tok.decode(tok.encode(CORPUS[0])) == CORPUS[0]


def test_train_sentencepiece_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="model_type='word'"):
        train_sentencepiece(CORPUS, str(tmp_path / "m"), vocab_size=400, model_type="word")
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_sentencepiece(CORPUS, str(tmp_path / "m"), vocab_size=100)
    with pytest.raises(ValueError, match="training failed for vocab_size=270"):
        train_sentencepiece(CORPUS, str(tmp_path / "m"), vocab_size=270)


def test_load_tokenizer_forms_and_config_round_trip(sp_model):
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    assert load_tokenizer({"type": "byte"}) == ByteTokenizer()
    loaded = load_tokenizer(sp_model.model_path)
    assert isinstance(loaded, SentencePieceTokenizer)
    rebuilt = tokenizer_from_config(sp_model.to_config())
    assert rebuilt.encode(CORPUS[1]) == sp_model.encode(CORPUS[1])
    with pytest.raises(ValueError, match="tokenizer='gpt2'"):
        load_tokenizer("gpt2")
    with pytest.raises(ValueError, match="unknown type"):
        tokenizer_from_config({"type": "wordpiece"})
    with pytest.raises(ValueError, match="model_path='/nonexistent.model'"):
        SentencePieceTokenizer("/nonexistent.model")


def test_config_with_changed_model_is_rejected(sp_model):
    config = {**sp_model.to_config(), "model_sha256": "0" * 64}
    with pytest.raises(ValueError, match="model file changed"):
        tokenizer_from_config(config)


def test_check_vocab_fits():
    check_vocab_fits(ByteTokenizer(), 259)
    with pytest.raises(ValueError, match="model_vocab_size=258"):
        check_vocab_fits(ByteTokenizer(), 258)
