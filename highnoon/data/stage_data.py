"""One token store per curriculum stage, from the stage's dataset entries, read in place.

``prepare_stage_store(entries, tokenizer, cache_dir)``:

1. resolves every entry (``registry.resolve_dataset``);
2. a prepared store given by path (``StoreSource``: a directory holding a store manifest, local
   or ``gs://``...) is opened in place: no cache entry, no copy, no raw sources; its tokenizer
   must be the run's (``check_store_tokenizer``), and ``max_samples`` takes its first samples
   (``store.head``);
3. any other source gets one store under ``cache_dir/sources/`` keyed by a sha256 of the source
   description, the tokenizer config, ``max_samples`` and the store format, built once and
   shared by stages;
4. with one entry that store *is* the stage store; otherwise the stage store is a view over the
   parts' stores (``store.concatenate``: every sample of every source once, source after source,
   read from the parts' own shards, nothing written), recording the mixture in its manifest
   (``mixing``: rule, weights, per-source sample counts; ``parts``: the stores' paths). Its
   fingerprint is a hash of the parts' fingerprints in order; each sample keeps the features of
   its own store (surprisal under its dataset's unigram counts).

**Mixing rule** (``MIXING_RULE``, ``shares/2``; weights are *shares* of the stage's samples, as
in seqio and Megatron-LM blending). The store holds each sample once; which samples an epoch
trains on is drawn per epoch by the stage plan, evaluated at the positions a host reads
(``mixture_draw.MixtureDraw``), so no weight is baked into the data and no epoch is
materialised:

* **Each source on its own**: a source keeps its own easy-to-hard order (its store's stored
  order when present, else sorted from its own scores), its own held-out split (``floor(n *
  eval_fraction)`` keyed samples of its order, ``curriculum/heldout.py``; the stage's eval set is
  the sources' together) and its own pools: at an epoch exposing ``X`` samples of the stage's
  ``M`` training samples, source ``i``'s pool is its easiest ``P_i`` training samples, ``P_i``
  its share of ``X`` by its training size (largest remainder; at least 1 when it has a share).
  A curriculum over a mix thus paces each dataset on its own difficulty scale, and no global
  sort of a drawn multiset is needed (none exists at a billion samples).
* **Counts**: source ``i`` gets ``c_i`` of the epoch's ``X`` samples, ``w_i / sum(w) * X`` rounded
  by largest remainder (ties to the earlier entry; ``mixture_draw.apportion``), so the counts sum
  to ``X`` and each is within one sample of its share. With the curriculum off (or at its last
  epoch) ``X`` is every training sample, so weights proportional to the sizes are exactly one
  pass over every source. A single entry's share is 1 whatever its weight. Entries given
  without weights are a concatenation: ``c_i = P_i``, every pool sample once per epoch (the
  manifest records ``weights: null``). A stage's entries are all weighted or none
  (``check_mixture_weights``).
* **Which samples**: ``c_i // P_i`` whole passes over the pool (easiest first), plus ``c_i % P_i``
  samples from a window of a keyed permutation of the pool (keyed by the stage's seed and the
  source): the ``j``-th of them is the permutation at ``start + j`` (mod ``P_i``). Epoch ``e``'s
  window starts where the earlier epochs' windows ended (their sum modulo the pool), so a source
  larger than its share is subsampled differently each epoch and, while its pool stays the same,
  every sample is seen once before any is seen twice; a smaller one repeats, each sample
  ``floor`` or ``ceil`` of ``c_i / P_i`` times.
* **Layout**: the ``j``-th chosen sample of source ``i`` gets the key ``(j + 0.5) / c_i``, and the
  epoch is the merge by (key, source), so the sources are spread evenly and any prefix holds
  each source's share to within a sample. A position's (source, ``j``) is found by a binary
  search per source (``mixture_draw.interleave_at``). The epoch's pool of whole global batches
  is the merge's first ``pool_size`` positions; the stage's keyed epoch permutation then
  shuffles them as for any stage (unshuffled, the epoch is the merge itself).

Everything is computed from (data, weights, seed, epoch) alone, so every host draws the same
epoch and a resume at any step redraws it exactly. ``shares/1`` (one order over all sources,
the drawn multiset sorted by difficulty) needed every sample's source and a sort of the draw:
O(N) per host; a checkpoint of that rule is refused as changed data.

``max_samples`` caps each source: only its first ``max_samples`` samples are read.

**Integrity.** A local source file is keyed by the sha256 of its bytes (``sources.py``), so an
edit that keeps size and mtime still rebuilds (the hash of an unchanged file is remembered in
``cache_dir/file_hashes/``, ``file_hashes.py``). Every store's blocks are checked against their
CRC32C when first read (``blocks.py``). With ``verify=True`` (the default; what training uses)
a store in the cache is also checked in full when prepared (once per process and file version);
a corrupt one (bytes changed in place) is rebuilt with a warning, never returned. A prepared
store given by path cannot be rebuilt here: its blocks are checked as the run reads them. ``vocab_size`` (the model's) makes a token id the model cannot embed a
``VocabularyMismatchError`` here, before training. Temporaries of killed builds in the cache are
removed at the start (``remove_stale_build_dirs``), and a source whose samples had invalid UTF-8
is reported with a warning naming the count.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from absl import logging

from highnoon.data.file_hashes import remembered_in
from highnoon.data.read_units import unit_samples
from highnoon.data.registry import resolve_datasets
from highnoon.data.shards import KEY_FORMAT
from highnoon.data.sources import DataSource, StoreSource
from highnoon.data.store import (
    FORMAT_VERSION,
    SAMPLE_FORMAT,
    StoreError,
    StoreExistsError,
    TokenStore,
    build_token_store,
    concatenate,
    default_cache_dir,
    head,
    remove_stale_build_dirs,
)
from highnoon.data.store_build import directory_identity, set_aside_unusable
from highnoon.data.tokenizers import Tokenizer, load_tokenizer
from highnoon.utils.hashing import sha256_hex
from highnoon.utils.validation import InvalidArgumentError, check_bool, check_positive_int

# The mixing rule, recorded in a mixed store's manifest and in the stage's stream fingerprint.
MIXING_RULE = "shares/2"


def _key(obj: Any) -> str:
    return sha256_hex(json.dumps(obj, sort_keys=True, default=str))


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "data"


class _CacheLook(NamedTuple):
    """What a look at a cache entry found: a usable store, or none (``unusable``: the identity
    of the directory that failed its checks, None when there was no entry)."""

    store: TokenStore | None
    unusable: tuple[int, int, int] | None = None


def _look(path: str, verify: bool) -> _CacheLook:
    """The cached store at ``path`` if it opens (and, with ``verify``, passes every block's
    check); a store that exists but fails is reported with a warning and rebuilt by the
    caller."""
    try:
        identity = directory_identity(path)
    except FileNotFoundError:
        return _CacheLook(None)
    try:
        store = TokenStore.open(path, verify=verify)
        if verify:
            store.verify()  # every block, once per process and file version (blocks.py)
        return _CacheLook(store)
    except StoreError as err:
        logging.warning("cached token store %s is unusable and is rebuilt: %s", path, err)
        return _CacheLook(None, identity)
    except FileNotFoundError:  # another process set a corrupt entry aside meanwhile
        return _CacheLook(None)


def _build_cached(
    path: str, look: _CacheLook, build: Callable[[], TokenStore], verify: bool
) -> TokenStore:
    """Build a cache entry that ``look`` found missing or unusable. Processes building the same
    entry at once (hosts sharing a disk) all end with the store the first one published: the
    others' ``build`` refuses to replace it (``StoreExistsError``) and they open it."""
    if look.unusable is not None:
        set_aside_unusable(path, look.unusable)
    try:
        store = build()
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


def source_store_path(
    source: DataSource, tokenizer: Tokenizer, cache_dir: str, *, max_samples: int | None = None
) -> tuple[str, dict[str, Any]]:
    """(where ``cache_dir`` keeps the store of ``source``'s first ``max_samples`` samples, the
    source's description): keyed by the description, the tokenizer, ``max_samples`` and the
    format, so a preparation writing there (``prepare.py``, on Beam or not) is found by runs."""
    with remembered_in(os.path.join(cache_dir, "file_hashes")):
        description = source.describe()
    key = _key(
        {
            "format": KEY_FORMAT,
            "source": description,
            "tokenizer": tokenizer.fingerprint_config(),
            "max_samples": max_samples,
        }
    )
    return os.path.join(cache_dir, "sources", f"{_safe(source.name)}-{key[:20]}"), description


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
    path, description = source_store_path(source, tokenizer, cache_dir, max_samples=max_samples)
    look = _look(path, verify)
    store = look.store
    if store is None:
        samples = unit_samples(source, max_samples)  # shards end where read units do
        store = _build_cached(
            path,
            look,
            lambda: build_token_store(
                samples,
                tokenizer,
                path,
                sources=[description],
                skipped=source.stats,
                progress=progress,
            ),
            verify,
        )
    _warn_invalid_utf8(source.name, store)
    return store


def _tokenizer_identity(config: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer config without where its file is (path, store copy): what must match."""
    return {k: v for k, v in config.items() if k not in ("model_path", "model_file", "path")}


def check_store_tokenizer(store: TokenStore, tokenizer: Tokenizer) -> None:
    """``InvalidArgumentError`` unless ``store`` was prepared with ``tokenizer`` (same type,
    file content, vocabulary and special tokens), naming both and the fix."""
    stored = _tokenizer_identity(store.manifest["tokenizer"])
    wanted = _tokenizer_identity(tokenizer.fingerprint_config())
    if stored != wanted:
        raise InvalidArgumentError(
            f"the prepared store {store.path!r} was tokenised with {json.dumps(stored, sort_keys=True)}"
            f", but this run's tokenizer is {json.dumps(wanted, sort_keys=True)}; train with the "
            "tokenizer the store was prepared with (a file-based one is kept in the store: "
            f"{store.manifest['tokenizer'].get('model_file', 'none here')}), or prepare the "
            "data again with this tokenizer"
        )


def prepared_store(
    source: StoreSource, tokenizer: Tokenizer, *, max_samples: int | None = None
) -> TokenStore:
    """A prepared store used by path: opened in place (manifests only; its blocks are checked
    when read), its tokenizer checked against the run's; its first ``max_samples`` samples."""
    store = source.open()
    check_store_tokenizer(store, tokenizer)
    if max_samples is not None and max_samples < store.num_samples:
        store = head(store, max_samples)
    return store


def mixture_of(store: TokenStore) -> dict[str, Any] | None:
    """The ``mixing`` record of a mixed stage store (None for a single source's store)."""
    mixing = store.manifest.get("mixing")
    return mixing if isinstance(mixing, dict) and mixing.get("rule") == MIXING_RULE else None


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
    """The token store of a stage's dataset entries: prepared stores read in place, other
    sources built once into ``cache_dir`` and reused, several entries as a view (no copy).

    ``entries``: one entry or a list (see ``registry``); ``(entry, weight)`` tuples mix sources
    (their weights are shares of each epoch, drawn by the stage plan: module docstring).
    ``seed`` is accepted for compatibility and does not change the store: a mixture's draws are
    keyed by the stage's seed in the plan.
    ``cache_dir`` defaults to ``$HIGHNOON_CACHE_DIR`` or ``~/.cache/highnoon``.
    ``vocab_size``: the model's vocabulary; a stored id >= it is a ``VocabularyMismatchError``.
    ``verify``: check every block of the cached stores now (module docstring); a corrupt one
    is rebuilt. A prepared store's blocks are checked when read.
    """
    max_samples = check_positive_int("max_samples", max_samples, allow_none=True)
    vocab_size = check_positive_int("vocab_size", vocab_size, allow_none=True)
    verify = check_bool("verify", verify)
    tokenizer = load_tokenizer(tokenizer)
    cache_dir = os.path.abspath(cache_dir or default_cache_dir())
    for kind in ("sources", "stages"):
        remove_stale_build_dirs(os.path.join(cache_dir, kind))
    sources = resolve_datasets(entries, data_dir=data_dir)
    stores, descriptions = [], []
    for source in sources:
        if isinstance(source, StoreSource):
            store = prepared_store(source, tokenizer, max_samples=max_samples)
            description = {"name": source.name, **source.describe()}
        else:
            store = source_store(
                source, tokenizer, cache_dir, max_samples=max_samples, progress=progress,
                verify=verify,
            )  # fmt: skip
            description = store.manifest["sources"][0]
        if vocab_size is not None:
            store.check_vocab(vocab_size)  # before any mixing work
        stores.append(store)
        descriptions.append(description)
    weights = [s.mixing_weight for s in sources]  # all numbers, or all None (unweighted)
    if len(stores) == 1:
        return stores[0]  # one entry's share is the whole stage, whatever its weight
    descriptions = [{"weight": w, **d} for w, d in zip(weights, descriptions)]
    if all(w is None for w in weights):
        weights = None  # a concatenation
    skipped: dict[str, int] = {}
    for st in stores:
        for name, count in st.manifest.get("skipped", {}).items():
            skipped[name] = skipped.get(name, 0) + int(count)
    mixing = {
        "rule": MIXING_RULE,
        "weights": weights,
        "part_fingerprints": [st.fingerprint for st in stores],
        "part_counts": [st.num_samples for st in stores],
    }
    # the data's identity: the parts in order (the weights and the rule shape the stream, and
    # the stage plan's stream fingerprint holds them), so a reweighted stage reads the same data
    fingerprint = _key({"format": KEY_FORMAT, "concatenation": mixing["part_fingerprints"]})
    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "sources": descriptions,
        "skipped": skipped,
        "sample_format": SAMPLE_FORMAT,
        "mixing": mixing,
        "parts": [st.path for st in stores],
    }
    return concatenate(stores, f"mix{len(stores)}-{fingerprint[:20]}", manifest)
