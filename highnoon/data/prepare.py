"""Offline data preparation: tokenise dataset entries into token stores ahead of training.

``prepare_datasets`` (used by ``highnoon.launch.prepare_data``, which binds it in gin) optionally
trains a SentencePiece model or a byte-level BPE ``tokenizer.json`` on the datasets' texts, then builds one store per entry with
``prepare_stage_store(cache_dir=output_dir)``: a training run given the same ``cache_dir`` and
tokenizer reuses these stores instead of tokenising again. ``output_dir/datasets.json`` lists
what was built.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from typing import Any

from highnoon.data.registry import resolve_datasets, validate_dataset_entry
from highnoon.data.stage_data import prepare_stage_store
from highnoon.data.tokenizer_json import train_tokenizer_json
from highnoon.data.tokenizers import Tokenizer, load_tokenizer, train_sentencepiece
from highnoon.utils.files import atomic_write_text
from highnoon.utils.validation import (
    InvalidArgumentError,
    check_positive_int,
    check_str,
    check_writable_dir,
)

INDEX_FILE = "datasets.json"


def prepare_datasets(
    datasets: Sequence[Any],
    output_dir: str,
    tokenizer: str | dict | Tokenizer = "byte",
    *,
    train_sentencepiece_vocab: int | None = None,
    train_tokenizer_json_vocab: int | None = None,
    sentencepiece_model_type: str = "bpe",
    sentencepiece_max_texts: int = 100_000,
    max_samples: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Build the stores of ``datasets`` under ``output_dir``; returns the index written to
    ``output_dir/datasets.json``.

    With ``train_sentencepiece_vocab``, a SentencePiece model of that size is first trained on the
    first ``sentencepiece_max_texts`` texts of the datasets (in order) and saved as
    ``output_dir/tokenizer.model``; it then replaces ``tokenizer``. ``train_tokenizer_json_vocab``
    does the same with a byte-level BPE ``tokenizer.json`` (``train_tokenizer_json``), saved as
    ``output_dir/tokenizer.json``; ``sentencepiece_max_texts`` caps its texts too. Both trainers
    are deterministic, so the same data gives the same tokenizer file.
    """
    if not datasets:
        raise InvalidArgumentError("datasets must list at least one dataset entry")
    check_str("output_dir", output_dir)
    for entry in datasets:
        validate_dataset_entry(entry)
    check_positive_int("train_sentencepiece_vocab", train_sentencepiece_vocab, allow_none=True)
    check_positive_int("train_tokenizer_json_vocab", train_tokenizer_json_vocab, allow_none=True)
    if train_sentencepiece_vocab and train_tokenizer_json_vocab:
        raise InvalidArgumentError(
            f"train_sentencepiece_vocab={train_sentencepiece_vocab} and "
            f"train_tokenizer_json_vocab={train_tokenizer_json_vocab} both ask to train a "
            "tokenizer; set only one"
        )
    check_writable_dir("output_dir", output_dir)  # a file in the way is named here
    if train_sentencepiece_vocab or train_tokenizer_json_vocab:
        sources = resolve_datasets(list(datasets), data_dir=data_dir)
        texts = itertools.islice(
            itertools.chain.from_iterable(s.iter_texts() for s in sources),
            int(sentencepiece_max_texts),
        )
    if train_tokenizer_json_vocab:
        tok = train_tokenizer_json(
            texts, os.path.join(output_dir, "tokenizer.json"), int(train_tokenizer_json_vocab)
        )
    elif train_sentencepiece_vocab:
        tok = train_sentencepiece(
            texts,
            os.path.join(output_dir, "tokenizer"),
            int(train_sentencepiece_vocab),
            model_type=sentencepiece_model_type,
            seed=seed,
        )
    else:
        tok = load_tokenizer(tokenizer)
    index: dict[str, Any] = {"tokenizer": tok.to_config(), "datasets": []}
    for entry in datasets:
        store = prepare_stage_store(
            [entry], tok, output_dir, max_samples=max_samples, seed=seed, data_dir=data_dir,
            progress=progress,
        )  # fmt: skip
        index["datasets"].append(
            {
                "entry": entry if isinstance(entry, str) else list(entry),
                "path": store.path,
                "num_samples": store.num_samples,
                "num_tokens": store.num_tokens,
                "fingerprint": store.fingerprint,
                "skipped": store.manifest.get("skipped", {}),
            }
        )
    atomic_write_text(
        os.path.join(output_dir, INDEX_FILE), json.dumps(index, indent=2, sort_keys=True)
    )
    return index
