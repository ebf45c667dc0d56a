"""What a run prints about its inputs: invalid UTF-8 replaced (counted, warned once per
source), a token store's progress as whole lines off a terminal, a capped max_seq_length."""

from __future__ import annotations

import logging

import pytest

from highnoon import data as hn_data
from highnoon.data.stage_data import source_store
from highnoon.data.store import TokenStore, build_token_store
from tests.trainer_helpers import nano_model

BAD_BYTES = b'{"text": "bad \xff\xfe bytes"}\n'
LONE_SURROGATE = b'{"text": "lone \\ud800 escape"}\n'
FINE = b'{"text": "fine"}\n{"text": "pair \\ud83d\\ude00 ok"}\n'


@pytest.fixture()
def warnings_seen(caplog):
    caplog.set_level(logging.WARNING)
    return caplog


def _texts(store: TokenStore) -> list[str]:
    tokenizer = hn_data.ByteTokenizer()
    return [tokenizer.decode(store.sample(i)) for i in range(store.num_samples)]


def test_invalid_utf8_is_replaced_counted_and_warned_once_per_source(tmp_path, warnings_seen):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(FINE + BAD_BYTES + LONE_SURROGATE)
    source = hn_data.FileSource([str(path)], name="mixed")
    for _ in range(2):  # the second call opens the cached store: no second warning
        store = source_store(source, hn_data.ByteTokenizer(), str(tmp_path / "cache"))
    assert store.manifest["skipped"]["invalid_utf8_replaced"] == 2
    assert _texts(store) == ["fine", "pair \U0001f600 ok", "bad \ufffd\ufffd bytes",
                             "lone \ufffd escape"]  # fmt: skip
    warned = [r.getMessage() for r in warnings_seen.records if "invalid UTF-8" in r.getMessage()]
    assert warned == [
        "dataset 'mixed': 2 samples had invalid UTF-8, replaced by U+FFFD (errors='replace'); "
        "fix the files, or register the dataset with errors='strict' to refuse them"
    ]


def test_strict_refuses_an_escaped_lone_surrogate_naming_the_line(tmp_path):
    path = tmp_path / "lone.jsonl"
    path.write_bytes(FINE + LONE_SURROGATE)
    source = hn_data.FileSource([str(path)], errors="strict")
    with pytest.raises(ValueError) as caught:
        list(source.iter_samples())
    assert str(caught.value) == (
        f"file {str(path)!r} line 3 holds an unpaired surrogate escape (e.g. \\ud800), which is "
        "not valid UTF-8; fix the file or use errors='replace'"
    )


def test_store_progress_off_a_terminal_is_whole_lines(tmp_path, capsys):
    build_token_store(["a", "bb", "ccc"], "byte", str(tmp_path / "s"), progress=True)
    err = capsys.readouterr().err
    assert err == "building s: 3 samples, done\n"
    build_token_store(["a"], "byte", str(tmp_path / "quiet"), progress=False)
    assert capsys.readouterr().err == ""


def test_a_max_seq_length_longer_than_the_models_is_capped_with_a_warning(warnings_seen):
    from highnoon.training.trainer import Trainer

    model = nano_model(seq=32)
    trainer = Trainer(model, max_seq_length=2048, verbose=False)
    assert trainer.settings.max_seq_length == 32
    assert [r.getMessage() for r in warnings_seen.records] == [
        "max_seq_length=2048 is longer than the model's max_seq_length=32; training on rows of "
        "32 tokens (pass max_seq_length<=32, or create the model with a longer one)"
    ]
    warnings_seen.clear()
    assert Trainer(model, verbose=False).settings.max_seq_length == 32  # the default: no warning
    assert warnings_seen.records == []
