"""Offline data preparation: tokenise dataset entries into token stores ahead of training.

``prepare_datasets`` (used by ``highnoon.launch.prepare_data``, which binds it in gin) optionally
trains a SentencePiece model or a byte-level BPE ``tokenizer.json`` on the datasets' texts, then
builds one store per entry where ``prepare_stage_store(cache_dir=output_dir)`` keeps it
(``stage_data.source_store_path``): a training run given the same ``cache_dir`` and tokenizer
reuses these stores instead of tokenising again, and each store's path is a dataset entry of its
own. ``output_dir/datasets.json`` lists what was built.

Who builds: ``runner="DirectRunner"`` (the default) or any other Apache Beam runner runs one
pipeline per entry (``beam_prepare.build_store_on_beam``: parallel reading and tokenising,
``num_shards`` shards by sample range, ``beam_options`` for Beam's ``PipelineOptions``);
``runner="none"`` is the one-process ``build_token_store``. Both write the same store for the
same data (same samples at the same indices, features, shard boundaries and fingerprint) when
``num_shards`` is not given; shards then end where an entry's files do (``read_units``). A store already complete in ``output_dir`` is reused, so a re-run
after a kill only builds what is missing.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Sequence
from typing import Any

from absl import logging

from highnoon.data import beam_prepare
from highnoon.data.registry import resolve_dataset, resolve_datasets, validate_dataset_entry
from highnoon.data.stage_data import prepare_stage_store, source_store_path
from highnoon.data.store import StoreError, TokenStore
from highnoon.data.tokenizer_json import train_tokenizer_json
from highnoon.data.tokenizers import Tokenizer, load_tokenizer, train_sentencepiece
from highnoon.utils.files import atomic_write_text, is_remote, isdir
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
    runner: str = "DirectRunner",
    num_shards: int | None = None,
    beam_options: str | Sequence[str] = "",
) -> dict[str, Any]:
    """Build the stores of ``datasets`` under ``output_dir``; returns the index written to
    ``output_dir/datasets.json``.

    With ``train_sentencepiece_vocab``, a SentencePiece model of that size is first trained on the
    first ``sentencepiece_max_texts`` texts of the datasets (in order) and saved as
    ``output_dir/tokenizer.model``; it then replaces ``tokenizer``. ``train_tokenizer_json_vocab``
    does the same with a byte-level BPE ``tokenizer.json`` (``train_tokenizer_json``), saved as
    ``output_dir/tokenizer.json``; ``sentencepiece_max_texts`` caps its texts too. Both trainers
    are deterministic, so the same data gives the same tokenizer file.

    ``runner``, ``num_shards`` and ``beam_options``: who builds the stores (module docstring);
    all three are checked before any data is read.
    """
    runner = beam_prepare.check_runner(runner)
    num_shards = check_positive_int("num_shards", num_shards, allow_none=True)
    if runner == beam_prepare.ONE_PROCESS:
        if num_shards is not None or beam_options:
            raise InvalidArgumentError(
                f"num_shards={num_shards!r} and beam_options={beam_options!r} need a Beam "
                f"runner, but runner={runner!r} is the one-process build; use "
                "runner='DirectRunner' (or another Beam runner) or drop them"
            )
        options: list[str] = []
    else:
        beam_prepare.import_beam()  # installed? (before a tokenizer is trained or data read)
        options = beam_prepare.parse_beam_options(beam_options)
        if runner in beam_prepare.REMOTE_RUNNERS and not is_remote(str(output_dir)):
            raise InvalidArgumentError(
                f"output_dir={output_dir!r} is a local path, but runner={runner!r} runs its "
                "workers on other machines, which write the shards themselves; give an "
                "output_dir they can all write (gs://...)"
            )
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
        if runner == beam_prepare.ONE_PROCESS:
            store = prepare_stage_store(
                [entry], tok, output_dir, max_samples=max_samples, seed=seed, data_dir=data_dir,
                progress=progress,
            )  # fmt: skip
        else:
            store = _beam_store(entry, tok, output_dir, runner, options, num_shards, max_samples,
                                data_dir)  # fmt: skip
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


def _beam_store(
    entry: Any,
    tokenizer: Tokenizer,
    output_dir: str,
    runner: str,
    options: list[str],
    num_shards: int | None,
    max_samples: int | None,
    data_dir: str | None,
) -> TokenStore:
    """The entry's store where ``prepare_stage_store`` keeps it: reused when complete with the
    asked sharding, else prepared on Beam (an interrupted or differently sharded one replaced)."""
    source = resolve_dataset(entry, data_dir=data_dir)
    root = output_dir if is_remote(output_dir) else os.path.abspath(output_dir)
    path, _ = source_store_path(source, tokenizer, root, max_samples=max_samples)
    exists = isdir(path)
    if exists:
        try:
            store = TokenStore.open(path)
        except StoreError as err:
            logging.warning("store %s is unusable and is prepared again: %s", path, err)
        else:
            if num_shards is None or len(store.manifest["shards"]) == min(
                num_shards, store.num_samples
            ):
                return store
    return beam_prepare.build_store_on_beam(
        source,
        tokenizer,
        path,
        runner=runner,
        beam_options=options,
        num_shards=num_shards,
        max_samples=max_samples,
        overwrite=exists,
    )
