"""One token store per curriculum stage, built from the stage's dataset entries and cached.

``prepare_stage_store(entries, tokenizer, cache_dir)``:

1. resolves every entry (``registry.resolve_dataset``);
2. builds (or reuses) one store per source under ``cache_dir/sources/`` keyed by a sha256 of the
   source description, the tokenizer config, ``max_samples`` and the store format: the same data
   is tokenised once and shared by stages;
3. with one entry of weight 1.0 that store *is* the stage store; otherwise the stage store (under
   ``cache_dir/stages/``, keyed likewise plus the weights and ``seed``) mixes them.

**Mixing rule.** Source ``i`` with ``n_i`` samples and weight ``w_i`` contributes
``c_i = max(1, round(w_i * n_i))`` samples: ``c_i // n_i`` full copies of all its samples in order,
then the remaining ``c_i % n_i`` samples chosen by a stateless keyed permutation of
``(seed, i)`` and kept in index order. Weight 1.0 keeps a source as is (all weights 1.0 =
concatenation in content). The selections are interleaved: the ``j``-th selected sample of source
``i`` gets the key ``(j + 0.5) / c_i`` and all samples are stably sorted by (key, source order),
so every source is spread evenly over the stage store. The stage store's features are computed
over the mixed corpus.

``max_samples`` caps each source: only its first ``max_samples`` samples are read.

**Integrity.** A local source file is keyed by the sha256 of its bytes (``sources.py``), so an
edit that keeps size and mtime still rebuilds (the hash of an unchanged file is remembered in
``cache_dir/file_hashes/``, ``file_hashes.py``). With ``verify=True`` (the default; what training
uses) every store is checked against its manifest's content hashes when opened (once per process,
see ``store.py``); a corrupt store (bytes changed in place) is rebuilt with a warning, never
returned. ``vocab_size`` (the model's) makes a token id the model cannot embed a
``VocabularyMismatchError`` here, before training. Temporaries of killed builds in the cache are
removed at the start (``remove_stale_build_dirs``), and a source whose samples had invalid UTF-8
is reported with a warning naming the count.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gin
import numpy as np
from absl import logging

from highnoon.data.file_hashes import remembered_in
from highnoon.data.registry import resolve_datasets
from highnoon.data.sources import DataSource
from highnoon.data.store import (
    FORMAT_VERSION,
    StoreError,
    StoreExistsError,
    TokenBatch,
    TokenStore,
    build_token_store,
    remove_stale_build_dirs,
)
from highnoon.data.tokenizers import Tokenizer, load_tokenizer
from highnoon.utils.hashing import keyed_permutation
from highnoon.utils.validation import check_bool, check_positive_int

_MIX_BATCH = 4096  # samples copied per TokenBatch when writing a mixed store


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "data"


def _open_or_none(path: str, verify: bool) -> TokenStore | None:
    """The cached store at ``path``, or None when there is none or it is unusable (the caller
    rebuilds it; a store that exists but fails its checks is reported with a warning)."""
    if not os.path.exists(path):
        return None
    try:
        return TokenStore.open(path, verify=verify)
    except StoreError as err:
        logging.warning("cached token store %s is unusable and is rebuilt: %s", path, err)
        return None


def _build_cached(path: str, build: Callable[[bool], TokenStore], verify: bool) -> TokenStore:
    """Build a cache entry; if another process (e.g. another host on a shared disk) completed the
    same entry meanwhile, open theirs. A corrupt entry is replaced."""
    overwrite = os.path.exists(path)  # exists but did not open: corrupt, replace it
    try:
        store = build(overwrite)
    except StoreExistsError:
        return TokenStore.open(path, verify=verify)
    if verify:
        store.verify()  # what reached the disk, once; later opens in this process are free
    return store


_WARNED_UTF8: set[str] = set()  # stores whose replaced samples were reported in this process


def _warn_invalid_utf8(name: str, store: TokenStore) -> None:
    """Once per source's store and process: how many samples had invalid UTF-8 replaced."""
    count = int(store.manifest.get("skipped", {}).get("invalid_utf8_replaced", 0))
    if count and store.path not in _WARNED_UTF8:
        _WARNED_UTF8.add(store.path)
        logging.warning(
            "dataset %r: %d samples had invalid UTF-8, replaced by U+FFFD (errors='replace'); "
            "fix the files, or register the dataset with errors='strict' to refuse them",
            name,
            count,
        )


def source_store(
    source: DataSource,
    tokenizer: Tokenizer,
    cache_dir: str,
    *,
    max_samples: int | None = None,
    progress: bool = True,
    verify: bool = True,
) -> TokenStore:
    """The (cached) store of one source's first ``max_samples`` samples."""
    with remembered_in(os.path.join(cache_dir, "file_hashes")):
        description = source.describe()
    key = _key(
        {
            "format": FORMAT_VERSION,
            "source": description,
            "tokenizer": tokenizer.fingerprint_config(),
            "max_samples": max_samples,
        }
    )
    path = os.path.join(cache_dir, "sources", f"{_safe(source.name)}-{key[:20]}")
    store = _open_or_none(path, verify)
    if store is None:
        samples = source.iter_samples()
        if max_samples is not None:
            samples = itertools.islice(samples, int(max_samples))
        store = _build_cached(
            path,
            lambda overwrite: build_token_store(
                samples,
                tokenizer,
                path,
                sources=[description],
                skipped=source.stats,
                overwrite=overwrite,
                progress=progress,
            ),
            verify,
        )
    _warn_invalid_utf8(source.name, store)
    return store


def mixing_selection(sizes: Sequence[int], weights: Sequence[float], seed: int) -> np.ndarray:
    """``[(source, sample)]`` int64 pairs of the mixed stage, in order (module docstring rule)."""
    parts, keys = [], []
    for i, (n, w) in enumerate(zip(sizes, weights)):
        count = max(1, round(float(w) * n))
        full, rest = divmod(count, n)
        chosen = np.concatenate(
            [
                np.tile(np.arange(n, dtype=np.int64), full),
                np.sort(keyed_permutation(n, "mixture", seed, i)[:rest]),
            ]
        )
        parts.append(np.stack([np.full(count, i, np.int64), chosen], axis=1))
        keys.append((np.arange(count) + 0.5) / count)
    pairs = np.concatenate(parts)
    key = np.concatenate(keys)
    order = np.lexsort((pairs[:, 0], key))  # by key, then source order; lexsort is stable
    return pairs[order]


def _mixed_batches(stores: Sequence[TokenStore], pairs: np.ndarray) -> Iterator[TokenBatch]:
    for start in range(0, len(pairs), _MIX_BATCH):
        chunk = pairs[start : start + _MIX_BATCH]
        flats, lengths = [], []
        # consecutive runs from the same source are gathered together
        boundaries = np.flatnonzero(np.diff(chunk[:, 0])) + 1
        for run in np.split(chunk, boundaries):
            flat, offsets = stores[int(run[0, 0])].gather(run[:, 1])
            keep = np.ones(flat.size, dtype=bool)
            keep[offsets[1:] - 1] = False  # drop the stored EOS; the builder adds it back
            flats.append(flat[keep])
            lengths.append(np.diff(offsets) - 1)
        yield TokenBatch(np.concatenate(flats), np.concatenate(lengths))


@gin.configurable
def prepare_stage_store(
    entries: Any,
    tokenizer: Tokenizer | str | dict = "byte",
    cache_dir: str | None = None,
    *,
    max_samples: int | None = None,
    seed: int = 0,
    data_dir: str | None = None,
    progress: bool = True,
    vocab_size: int | None = None,
    verify: bool = True,
) -> TokenStore:
    """The token store of a stage's dataset entries (built once, then reused from ``cache_dir``).

    ``entries``: one entry or a list (see ``registry``); ``(entry, weight)`` tuples mix sources.
    ``cache_dir`` defaults to ``$HIGHNOON_CACHE_DIR`` or ``~/.cache/highnoon``.
    ``vocab_size``: the model's vocabulary; a stored id >= it is a ``VocabularyMismatchError``.
    ``verify``: check every store's content hashes (module docstring); a corrupt one is rebuilt.
    """
    from highnoon.data.store import default_cache_dir

    max_samples = check_positive_int("max_samples", max_samples, allow_none=True)
    vocab_size = check_positive_int("vocab_size", vocab_size, allow_none=True)
    verify = check_bool("verify", verify)
    tokenizer = load_tokenizer(tokenizer)
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    for kind in ("sources", "stages"):
        remove_stale_build_dirs(os.path.join(cache_dir, kind))
    sources = resolve_datasets(entries, data_dir=data_dir)
    stores = []
    for source in sources:
        store = source_store(
            source, tokenizer, cache_dir, max_samples=max_samples, progress=progress, verify=verify
        )
        if vocab_size is not None:
            store.check_vocab(vocab_size)  # before any mixing work
        stores.append(store)
    weights = [s.mixing_weight for s in sources]
    if len(stores) == 1 and weights[0] == 1.0:
        return stores[0]
    descriptions = [{"weight": w, **st.manifest["sources"][0]} for w, st in zip(weights, stores)]
    key = _key(
        {
            "format": FORMAT_VERSION,
            "parts": [[w, st.fingerprint] for w, st in zip(weights, stores)],
            "seed": seed,
        }
    )
    path = os.path.join(cache_dir, "stages", f"mix{len(stores)}-{key[:20]}")
    store = _open_or_none(path, verify)
    if store is not None:
        if vocab_size is not None:
            store.check_vocab(vocab_size)
        return store
    pairs = mixing_selection([st.num_samples for st in stores], weights, seed)
    skipped: dict[str, int] = {}
    for st in stores:
        for name, count in st.manifest.get("skipped", {}).items():
            skipped[name] = skipped.get(name, 0) + int(count)
    mixing = {
        "seed": seed,
        "weights": weights,
        "part_fingerprints": [st.fingerprint for st in stores],
        "part_counts": np.bincount(pairs[:, 0], minlength=len(stores)).tolist(),
    }
    store = _build_cached(
        path,
        lambda overwrite: build_token_store(
            _mixed_batches(stores, pairs),
            tokenizer,
            path,
            sources=descriptions,
            skipped=skipped,
            overwrite=overwrite,
            progress=progress,
            extra={"mixing": mixing},
        ),
        verify,
    )
    if vocab_size is not None:
        store.check_vocab(vocab_size)
    return store
