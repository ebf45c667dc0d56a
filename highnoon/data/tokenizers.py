"""Tokenizers: the byte-level default, SentencePiece and Hugging Face ``tokenizer.json``.

Every tokenizer maps text to integer ids without adding special tokens (``encode``) and back
(``decode``, which skips the special ids pad/bos/eos). Special ids are fixed and documented so
stores, models and generation agree on them:

* ``ByteTokenizer``: ``pad_id=0``, ``bos_id=1``, ``eos_id=2``, UTF-8 byte ``b`` -> ``b + 3``,
  ``vocab_size=259``. No training, no files, any text round-trips exactly.
* ``SentencePieceTokenizer``: ids come from the model; models trained with
  ``train_sentencepiece`` use ``pad_id=0``, ``bos_id=1``, ``eos_id=2``, ``unk_id=3`` (the same
  pad/bos/eos as the byte tokenizer), identity normalisation (whitespace and newlines are kept,
  so code round-trips) and byte fallback (no character is ever unknown).
* ``TokenizerJson`` (``highnoon.data.tokenizer_json``): a Hugging Face ``tokenizer.json``; ids
  and special tokens come from the file.

``to_config()`` returns a JSON-able dict recorded in store manifests; ``tokenizer_from_config``
rebuilds the tokenizer from it. ``load_tokenizer`` accepts ``"byte"``, a ``.model`` or
``.json`` path, a config dict (or its JSON text, for command-line flags) or a tokenizer. A
tokenizer backed by a file sets ``store_file``: stores keep a copy under that name.
"""

from __future__ import annotations

import abc
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import numpy as np

from highnoon.utils.hashing import sha256_file
from highnoon.utils.validation import (
    InvalidArgumentError,
    InvalidDataError,
    check_choice,
    check_keys,
)

BYTE_OFFSET = 3  # ids 0..2 are pad/bos/eos; byte b is id b + 3
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET
TOKENIZER_JSON_KEYS = (
    "type", "path", "model_path", "model_sha256", "vocab_size", "bos_token", "eos_token",
    "pad_token",
)  # fmt: skip


def flatten_ids(encoded: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Encoded texts as (flat int64 ids, int64 lengths): what ``encode_batch`` returns."""
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    flat = np.fromiter((i for e in encoded for i in e), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def ids_to_decode(ids: Iterable[int], special: Collection[int], vocab_size: int) -> list[int]:
    """``ids`` without the ``special`` ones; an id outside ``[0, vocab_size)`` is refused."""
    kept = [int(i) for i in ids if int(i) not in special]
    bad = [i for i in kept if not 0 <= i < vocab_size]
    if bad:
        raise InvalidArgumentError(
            f"ids {bad[:5]} are outside [0, {vocab_size}) for this tokenizer"
        )
    return kept


class Tokenizer(abc.ABC):
    """Text <-> token ids. Subclasses define the special ids and the vocabulary size.

    A tokenizer read from a file sets ``store_file`` (the name a store gives its copy) and has
    ``model_path`` and ``model_sha256``; ``to_config`` then records both.
    """

    store_file: str | None = None

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added)."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; the special ids (pad, bos, eos) are skipped."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids; every id is in ``[0, vocab_size)``."""

    @property
    @abc.abstractmethod
    def pad_id(self) -> int: ...

    @property
    @abc.abstractmethod
    def bos_id(self) -> int: ...

    @property
    @abc.abstractmethod
    def eos_id(self) -> int: ...

    @abc.abstractmethod
    def to_config(self) -> dict[str, Any]:
        """JSON-able description that ``tokenizer_from_config`` turns back into this tokenizer."""

    def fingerprint_config(self) -> dict[str, Any]:
        """Config without machine-specific parts (a file's path: its sha256 stays); used in
        cache keys and fingerprints."""
        config = self.to_config()
        config.pop("model_path", None)
        return config

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encode many texts at once: (flat int64 ids, int64 lengths). Subclasses vectorise."""
        return flatten_ids([self.encode(t) for t in texts])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: pad 0, bos 1, eos 2, byte ``b`` -> ``b + 3`` (vocab 259)."""

    def encode(self, text: str) -> list[int]:
        return (
            np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int64) + BYTE_OFFSET
        ).tolist()

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        raw = [t.encode("utf-8") for t in texts]
        lengths = np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))
        # one int64 array, not two (a cast, then the sum)
        flat = np.add(np.frombuffer(b"".join(raw), np.uint8), BYTE_OFFSET, dtype=np.int64)
        return flat, lengths

    def decode(self, ids: Iterable[int]) -> str:
        array = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        if array.size and (array.min() < 0 or array.max() >= BYTE_VOCAB_SIZE):
            raise InvalidArgumentError(
                f"ids must be in [0, {BYTE_VOCAB_SIZE}) for ByteTokenizer, got values in "
                f"[{array.min()}, {array.max()}]"
            )
        data = (array[array >= BYTE_OFFSET] - BYTE_OFFSET).astype(np.uint8).tobytes()
        return data.decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB_SIZE

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    def to_config(self) -> dict[str, Any]:
        return {"type": "byte"}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteTokenizer)

    def __hash__(self) -> int:
        return hash("ByteTokenizer")


class SentencePieceTokenizer(Tokenizer):
    """A trained SentencePiece model (``.model`` file); ids and special ids come from it."""

    store_file = "tokenizer.model"

    def __init__(self, model_path: str) -> None:
        import sentencepiece as spm

        if not os.path.isfile(model_path):
            raise InvalidArgumentError(
                f"model_path={model_path!r} is not a file; pass a SentencePiece .model file "
                "(train one with highnoon.data.train_sentencepiece)"
            )
        self.model_path = os.path.abspath(model_path)
        self.model_sha256 = sha256_file(self.model_path)
        self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
        self._special = {i for i in (self.pad_id, self.bos_id, self.eos_id) if i >= 0}

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text, out_type=int))

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return flatten_ids(self._sp.encode(list(texts), out_type=int))

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode(ids_to_decode(ids, self._special, self.vocab_size))

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    @property
    def pad_id(self) -> int:
        return int(self._sp.pad_id())

    @property
    def bos_id(self) -> int:
        return int(self._sp.bos_id())

    @property
    def eos_id(self) -> int:
        return int(self._sp.eos_id())

    def to_config(self) -> dict[str, Any]:
        return {
            "type": "sentencepiece",
            "model_path": self.model_path,
            "model_sha256": self.model_sha256,
            "vocab_size": self.vocab_size,
        }


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str,
    vocab_size: int,
    *,
    model_type: str = "bpe",
    seed: int = 0,
    character_coverage: float = 1.0,
    max_sentence_length: int = 16384,
    num_threads: int = 1,
) -> SentencePieceTokenizer:
    """Train a SentencePiece model offline on ``texts``; writes ``<model_prefix>.model``/``.vocab``.

    Each text is split into lines (empty lines dropped) and fed through ``sentence_iterator`` in
    order: nothing is sampled or shuffled, one thread by default, and the generator is seeded, so
    the same texts give the same model. Special ids: pad 0, bos 1, eos 2, unk 3. Normalisation is
    the identity and whitespace is kept, so code round-trips; byte fallback covers every
    character. The files are written under a temporary prefix and renamed into place, the ``.model`` last.
    """
    import sentencepiece as spm

    check_choice("model_type", model_type, ("bpe", "unigram"))
    if int(vocab_size) < 4 + 256:
        raise InvalidArgumentError(
            f"vocab_size={vocab_size} is too small: byte fallback needs 256 byte pieces plus 4 "
            "special ids, so use at least 260"
        )

    def lines() -> Iterable[str]:
        for text in texts:
            for line in text.split("\n"):
                if line.strip():
                    yield line

    directory = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(directory, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".spm-tmp-", dir=directory)
    tmp_prefix = os.path.join(tmp_dir, "model")
    spm.set_random_generator_seed(int(seed))
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines()),
            model_prefix=tmp_prefix,
            vocab_size=int(vocab_size),
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=0,
            bos_id=1,
            eos_id=2,
            unk_id=3,
            byte_fallback=True,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            hard_vocab_limit=False,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            max_sentence_length=int(max_sentence_length),
            num_threads=int(num_threads),
            minloglevel=2,
        )
    except RuntimeError as err:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise InvalidArgumentError(
            f"SentencePiece training failed for vocab_size={vocab_size}, model_type="
            f"{model_type!r}: {err}"
        ) from err
    # The .model is the commit point: the .vocab beside it (a listing for people) is renamed into
    # place first, so whoever finds the new .model also finds its .vocab, and a crash before
    # the .model's rename leaves the previous model whole.
    for ext in (".vocab", ".model"):
        os.replace(tmp_prefix + ext, model_prefix + ext)
    os.rmdir(tmp_dir)
    return SentencePieceTokenizer(model_prefix + ".model")


def _checked(tokenizer: Tokenizer, config: dict[str, Any]) -> Tokenizer:
    """``tokenizer``, after checking its file still has the sha256 ``config`` records."""
    expected = config.get("model_sha256")
    if expected and expected != tokenizer.model_sha256:
        raise InvalidDataError(
            f"tokenizer model {tokenizer.model_path!r} has sha256 {tokenizer.model_sha256}, "
            f"but the config records {expected}: the model file changed"
        )
    return tokenizer


def tokenizer_from_config(config: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from ``Tokenizer.to_config()``; a model file (SentencePiece or
    tokenizer.json) that no longer matches the recorded sha256 is an error.

    For a tokenizer.json, ``path`` may stand for ``model_path`` and ``bos_token``,
    ``eos_token``, ``pad_token`` name its special tokens."""
    kind = config.get("type") if isinstance(config, dict) else None
    if kind == "byte":
        return ByteTokenizer()
    if kind == "sentencepiece":
        return _checked(SentencePieceTokenizer(config["model_path"]), config)
    if kind == "tokenizer_json":
        from highnoon.data.tokenizer_json import TokenizerJson

        check_keys("tokenizer", config, TOKENIZER_JSON_KEYS)
        path = config.get("model_path", config.get("path"))
        names = {k: config.get(k) for k in ("bos_token", "eos_token", "pad_token")}
        return _checked(TokenizerJson(path, **names), config)
    raise InvalidArgumentError(
        f"tokenizer config {config!r} has unknown type; allowed types are 'byte', "
        "'sentencepiece' and 'tokenizer_json'"
    )


def load_tokenizer(spec: str | dict[str, Any] | Tokenizer) -> Tokenizer:
    """A tokenizer from ``"byte"``, a path to a SentencePiece ``.model`` or a Hugging Face
    ``.json``, a config dict or its JSON text (how a flag names a tokenizer.json's special
    tokens), or a tokenizer (returned as is)."""
    if isinstance(spec, Tokenizer):
        return spec
    if isinstance(spec, dict):
        return tokenizer_from_config(spec)
    if isinstance(spec, str):
        if spec == "byte":
            return ByteTokenizer()
        if spec.lstrip().startswith("{"):
            try:
                config = json.loads(spec)
            except json.JSONDecodeError as err:
                raise InvalidArgumentError(f"tokenizer={spec!r} is not valid JSON: {err}") from err
            return tokenizer_from_config(config)
        if spec.endswith(".json"):
            from highnoon.data.tokenizer_json import TokenizerJson

            return TokenizerJson(spec)
        if spec.endswith(".model") or os.path.isfile(spec):
            return SentencePieceTokenizer(spec)
    raise InvalidArgumentError(
        f"tokenizer={spec!r} is not understood; use 'byte', a path to a SentencePiece .model "
        "or a Hugging Face tokenizer.json, a tokenizer config dict or a Tokenizer"
    )


def check_vocab_fits(tokenizer: Tokenizer, model_vocab_size: int) -> None:
    """Raise InvalidArgumentError if the tokenizer produces ids the model's embedding cannot hold."""
    if tokenizer.vocab_size > int(model_vocab_size):
        raise InvalidArgumentError(
            f"model_vocab_size={model_vocab_size} is smaller than the tokenizer's vocab_size="
            f"{tokenizer.vocab_size} ({tokenizer!r}); the model needs vocab_size >= "
            f"{tokenizer.vocab_size}"
        )
