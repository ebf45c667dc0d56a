"""Data: dataset registry and sources, embedded datasets, tokenizers, the token store, packing
(``pack_epoch``: an epoch's global stream into rows, nothing dropped; ``PackedStream``: the
same rows packed window by window on demand) and the per-host
``tf.data`` pipeline.

Importing this package does not import TensorFlow (nor ``tokenizers``, until a tokenizer.json is
read or trained) (the pipeline, TFRecord and TFDS readers import
it when used). The embedded datasets (``stdlib_code``, ``stdlib_docs``, ``stdlib_instructions``,
``arithmetic``, ``brackets``) are registered here and built lazily when iterated.
"""

from __future__ import annotations

from highnoon.data.embedded import EmbeddedSource
from highnoon.data.mixture_schedule import MixtureSchedule
from highnoon.data.packing import (
    PackedEpoch,
    PackedStream,
    PackingCursor,
    StepCounts,
    batch_counts,
    pack_epoch,
    packed_row_count,
    stored_lengths,
)
from highnoon.data.pipeline import (
    HostBatcher,
    PackedBatcher,
    StepRows,
    make_host_dataset,
    make_packed_host_dataset,
    packing_plan,
    per_replica_rows,
)
from highnoon.data.prepare import prepare_datasets
from highnoon.data.registry import (
    register_dataset,
    register_datasets,
    register_embedded_datasets,
    registered_datasets,
    resolve_dataset,
    resolve_datasets,
    unregister_dataset,
    validate_dataset_entry,
)
from highnoon.data.sources import DataSource, FileSource, StoreSource, TfdsSource
from highnoon.data.stage_data import prepare_stage_store
from highnoon.data.store import (
    StoreError,
    StoreExistsError,
    TokenBatch,
    TokenStore,
    VocabularyMismatchError,
    build_token_store,
    check_enough_samples,
    remove_stale_build_dirs,
)
from highnoon.data.tokenizer_json import TokenizerJson, train_tokenizer_json
from highnoon.data.tokenizers import (
    ByteTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    check_vocab_fits,
    load_tokenizer,
    tokenizer_from_config,
    train_sentencepiece,
)

register_embedded_datasets()

__all__ = [
    "ByteTokenizer",
    "DataSource",
    "EmbeddedSource",
    "FileSource",
    "HostBatcher",
    "MixtureSchedule",
    "PackedBatcher",
    "PackedEpoch",
    "PackedStream",
    "PackingCursor",
    "SentencePieceTokenizer",
    "StepCounts",
    "StepRows",
    "StoreError",
    "StoreExistsError",
    "StoreSource",
    "TfdsSource",
    "TokenBatch",
    "TokenStore",
    "Tokenizer",
    "TokenizerJson",
    "VocabularyMismatchError",
    "batch_counts",
    "build_token_store",
    "check_enough_samples",
    "check_vocab_fits",
    "load_tokenizer",
    "make_host_dataset",
    "make_packed_host_dataset",
    "pack_epoch",
    "packed_row_count",
    "packing_plan",
    "per_replica_rows",
    "prepare_datasets",
    "prepare_stage_store",
    "register_dataset",
    "register_datasets",
    "registered_datasets",
    "remove_stale_build_dirs",
    "resolve_dataset",
    "resolve_datasets",
    "stored_lengths",
    "tokenizer_from_config",
    "train_sentencepiece",
    "train_tokenizer_json",
    "unregister_dataset",
    "validate_dataset_entry",
]
