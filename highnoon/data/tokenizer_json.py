"""Hugging Face ``tokenizer.json`` files (the ``tokenizers`` library) as highnoon tokenizers.

``TokenizerJson`` wraps any ``tokenizer.json`` (BPE, WordPiece, Unigram; the format current open
models ship): ids come from the file, and its special tokens are mapped to highnoon's bos, eos
and pad in this order of precedence:

1. tokens named explicitly (``bos_token=``, ``eos_token=``, ``pad_token=``);
2. the tokens the file's post-processor wraps a sequence in (``TemplateProcessing``'s
   ``single`` template, ``RobertaProcessing``/``BertProcessing``'s ``cls``/``sep``);
3. an added token with a usual name (``BOS_NAMES``, ``EOS_NAMES``, ``PAD_NAMES``).

A file with no bos or eos by these rules is refused, naming what is missing and how to name it.
A missing pad falls back to eos: padded positions are masked out of the loss by position, never
recognised by id, so the pad id never trains (GPT-2's ``<|endoftext|>`` plays all three roles).

``encode`` adds no special tokens and ignores the file's truncation and padding settings, so
stores hold exactly ``encode(text) + [eos_id]`` as with every other tokenizer.

``train_tokenizer_json`` trains a byte-level BPE file (GPT-2 style pre-tokenizer, every byte in
the alphabet so no text is unknown, identity normalisation so whitespace and code round-trip)
with ``<pad>``, ``<s>``, ``</s>`` at ids 0, 1, 2 (the byte tokenizer's pad/bos/eos) and writes
it atomically. ``tokenizers``' BPE trainer breaks ties between equally frequent pairs by pair id
and serialises the vocabulary sorted by id, so the same texts give the same file, byte for byte
(tests/test_data_tokenizer_json.py checks it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from highnoon.data.tokenizers import Tokenizer, flatten_ids, ids_to_decode
from highnoon.utils.files import atomic_write_text
from highnoon.utils.hashing import sha256_file
from highnoon.utils.validation import InvalidArgumentError, check_positive_int, check_str

BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "<|startoftext|>", "[CLS]", "<|endoftext|>")
EOS_NAMES = ("</s>", "<|end_of_text|>", "<eos>", "<|endoftext|>", "[SEP]")
PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>", "<|padding|>")
TRAINED_SPECIALS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2 in a trained file
ROLES = ("bos", "eos", "pad")


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError as err:
        raise ImportError(
            "a tokenizer.json needs the 'tokenizers' package: pip install 'highnoon[hf]' "
            "(or pip install tokenizers)"
        ) from err
    return tokenizers


def _template_specials(processor: dict[str, Any] | None) -> dict[str, str]:
    """bos/eos named by a post-processor: the special tokens around sequence A."""
    if not isinstance(processor, dict):
        return {}
    kind = processor.get("type")
    if kind == "Sequence":
        found: dict[str, str] = {}
        for part in processor.get("processors", []):
            found = {**_template_specials(part), **found}  # the first processor wins
        return found
    if kind in ("RobertaProcessing", "BertProcessing"):
        return {"bos": processor["cls"][0], "eos": processor["sep"][0]}
    if kind != "TemplateProcessing":
        return {}
    found = {}
    seen_sequence = False
    for piece in processor.get("single", []):
        if "Sequence" in piece:
            seen_sequence = True
        elif "SpecialToken" in piece:
            name = piece["SpecialToken"]["id"]
            if not seen_sequence:
                found["bos"] = name  # the one nearest the text
            elif "eos" not in found:
                found["eos"] = name
    return found


class TokenizerJson(Tokenizer):
    """A Hugging Face ``tokenizer.json``; ids from the file, special tokens mapped as the module
    docstring says."""

    store_file = "tokenizer.json"

    def __init__(
        self,
        path: str,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
    ) -> None:
        check_str("path", path)
        if not os.path.isfile(path):
            raise InvalidArgumentError(
                f"path={path!r} is not a file; pass a Hugging Face tokenizer.json (train one with "
                "highnoon.data.train_tokenizer_json or highnoon-prepare-data "
                "--train_tokenizer_json_vocab)"
            )
        tokenizers = _import_tokenizers()
        self.model_path = os.path.abspath(path)
        self.model_sha256 = sha256_file(self.model_path)
        with open(self.model_path, encoding="utf-8") as handle:
            text = handle.read()
        try:
            data = json.loads(text)
            self._tok = tokenizers.Tokenizer.from_str(text)
        except Exception as err:  # json or the library's own parse error
            raise InvalidArgumentError(
                f"path={path!r} is not a Hugging Face tokenizer.json the 'tokenizers' library "
                f"can read: {err}"
            ) from err
        self._tok.no_truncation()  # stores keep whole samples; rows are cut by the pipeline
        self._tok.no_padding()
        self._vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values()) + 1
        named = {"bos": bos_token, "eos": eos_token, "pad": pad_token}
        self.special_tokens = self._resolve_specials(data, named)
        self._ids = {
            role: self._tok.token_to_id(name) for role, name in self.special_tokens.items()
        }
        self._special = set(self._ids.values())

    def _resolve_specials(
        self, data: dict[str, Any], named: dict[str, str | None]
    ) -> dict[str, str]:
        added = [t["content"] for t in data.get("added_tokens") or []]
        from_template = _template_specials(data.get("post_processor"))
        usual = {"bos": BOS_NAMES, "eos": EOS_NAMES, "pad": PAD_NAMES}
        chosen: dict[str, str] = {}
        for role in ROLES:
            name = named[role]
            if name is not None:
                check_str(f"{role}_token", name)
                if self._tok.token_to_id(name) is None:
                    raise InvalidArgumentError(
                        f"{role}_token={name!r} is not a token of {self.model_path!r}; its added "
                        f"tokens are {added[:12]}"
                    )
            elif role in from_template:
                name = from_template[role]
            else:
                name = next((n for n in usual[role] if n in added), None)
            if name is not None:
                chosen[role] = name
        missing = [role for role in ("bos", "eos") if role not in chosen]
        if missing:
            example = ", ".join(f"'{role}_token': '<token>'" for role in missing)
            raise InvalidArgumentError(
                f"tokenizer.json {self.model_path!r} names no {' and no '.join(missing)} token, "
                f"which stores and the pipeline need (every sample ends with eos, every row "
                f"starts with bos): its post-processor adds none and none of its added tokens "
                f"{added[:12]} has a usual name ({', '.join(BOS_NAMES + EOS_NAMES)}). Name them: "
                f"load_tokenizer({{'type': 'tokenizer_json', 'path': {self.model_path!r}, "
                f"{example}}}) (the same dict in gin, or as JSON in --tokenizer), or "
                "TokenizerJson(path, bos_token=..., eos_token=...)"
            )
        chosen.setdefault("pad", chosen["eos"])
        return chosen

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return flatten_ids([e.ids for e in encoded])

    def decode(self, ids: Iterable[int]) -> str:
        kept = ids_to_decode(ids, self._special, self.vocab_size)
        return self._tok.decode(kept, skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    @property
    def bos_id(self) -> int:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]

    def to_config(self) -> dict[str, Any]:
        return {
            "type": "tokenizer_json",
            "model_path": self.model_path,
            "model_sha256": self.model_sha256,
            "vocab_size": self.vocab_size,
            **{f"{role}_token": name for role, name in sorted(self.special_tokens.items())},
        }


def train_tokenizer_json(
    texts: Iterable[str], path: str, vocab_size: int, *, min_frequency: int = 2
) -> TokenizerJson:
    """Train a byte-level BPE ``tokenizer.json`` of at most ``vocab_size`` ids on ``texts`` and
    write it to ``path`` atomically (a temporary file beside it, then a rename).

    Ids 0, 1, 2 are ``<pad>``, ``<s>``, ``</s>``, then the 256 byte symbols, then merges; the
    post-processor names ``<s> $A </s>`` so other tools find bos/eos too. Deterministic: the same
    texts in the same order give the same file.
    """
    check_str("path", path)
    vocab_size = check_positive_int("vocab_size", vocab_size)
    min_frequency = check_positive_int("min_frequency", min_frequency)
    floor = len(TRAINED_SPECIALS) + 256
    if vocab_size < floor:
        raise InvalidArgumentError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs 256 byte symbols plus "
            f"{len(TRAINED_SPECIALS)} special tokens, so use at least {floor}"
        )
    tokenizers = _import_tokenizers()
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(TRAINED_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter(texts), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> $B </s>",
        special_tokens=[("<s>", 1), ("</s>", 2)],
    )
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    atomic_write_text(path, tok.to_str(pretty=True))
    return TokenizerJson(path)
