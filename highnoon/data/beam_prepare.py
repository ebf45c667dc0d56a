"""One dataset entry's token store, prepared by an Apache Beam pipeline.

``build_store_on_beam(source, tokenizer, path, runner=..., beam_options=[...])`` writes the same
store as the one-process ``store.build_token_store`` given ``read_units.unit_samples(source)``:
the same samples at the same indices, the same features, shard boundaries and fingerprint.
Only who does the work changes: on ``DirectRunner`` with ``--direct_num_workers=2
--direct_running_mode=multi_processing`` two local processes, on ``DataflowRunner``/
``FlinkRunner``/``SparkRunner`` a cluster.

**The pipeline, for a source of several read units** (``read_units``: a file each) **with
shards cut by tokens** (the default):

1. *Write units.* Each unit is read, tokenised and written as its own shards by one worker
   (``WriteUnit``, ``store_build.ShardSequence``: a shard never spans two units, the rule the
   one-process build follows too). Only the unit's facts go on through Beam: its shards' names
   and sample counts, its leading empty samples (counted in the shard before it), its unigram
   counts and its source stats. No token crosses the runner or is written twice.
2. *Count.* The corpus unigram counts (what surprisal needs) are a ``CombineGlobally`` sum of
   the units' count vectors: an exact integer sum whatever the grouping.
3. *Index.* The units' facts, sorted by unit, give each shard its first sample (``unit_plan``).
4. *Features.* Each shard's features under the corpus counts and its shard.json
   (``WriteFeatures``, ``shards.write_shard_features``), spread over the workers.

**For one read unit, or ``num_shards``** (even sample ranges of the whole corpus, which cross
files), the two-pass pipeline:

1. *Read.* A unit is read by one worker and cut into chunks of about 1 MB of text
   (``CHUNK_CHARS``), keyed ``(unit, chunk)``.
2. *Tokenise.* Several units are spread over the workers and each chunk is tokenised where it is
   read; a single unit's text chunks are spread over the workers to be tokenised. A tokenised
   chunk is put in its stored form once (``shards.stored_samples``: EOS appended, the store's
   dtype, each sample's CRC32C) and its unigram counts taken from it, then saved beside the
   store (``chunk_file``). Only its metadata goes on through Beam.
3. *Count*, as above, over the chunks.
4. *Index.* The chunks' non-empty counts, gathered and sorted by key, give every chunk its first
   sample index (``chunk_starts``), whatever the runner, the workers or the bundle sizes. The
   same side input fixes the shard boundaries (``even_bounds`` for ``num_shards``, else
   ``token_bounds``: one unit's token rule), and the step writes the facts the launching
   process needs (shard names, counts, the sources' stats).
5. *Write.* Each shard is written by one worker: the stored bytes of the chunk files
   overlapping its range (``shard_chunks``, ``split_chunk``, ``StoredSamples.part``) appended
   as they are by ``shards.ShardWriter.add_stored``, then ``shards.write_shard_features``
   with the corpus counts (so scores equal a one-process build's exactly).

*Publish*, either way: back in the launching process, the top ``manifest.json`` from the shards'
``shard.json`` files (``shards.store_manifest``), written last. A local store is built in a
``.tmp-<owner>`` directory and renamed into place (a killed preparation leaves only a temporary
that the next one removes); a ``gs://`` store is written in place, manifest last, so an
interrupted one never opens.

``DirectRunner`` is Beam's ``FnApiRunner`` given directly (``pipeline_runner``: Beam's own
``DirectRunner`` would first try to fetch and start ``PrismRunner``). Its worker processes import
Beam, numpy and ``highnoon.data``, never TensorFlow (only a ``gs://`` output or a ``tfds:``
source needs it). Apache Beam is imported only when a pipeline runs: ``pip install
highnoon[beam]``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from highnoon.data.read_units import read_units
from highnoon.data.sources import DataSource, FileSource
from highnoon.data.store_build import BATCH_CHARS
from highnoon.data.tokenizers import Tokenizer, load_tokenizer
from highnoon.utils.files import is_remote
from highnoon.utils.validation import InvalidArgumentError, InvalidDataError, check_positive_int

# Runners ``--runner`` accepts: "none" is the one-process build, the rest are Beam's.
ONE_PROCESS = "none"
BEAM_RUNNERS = (
    "DirectRunner",
    "PrismRunner",
    "DataflowRunner",
    "FlinkRunner",
    "SparkRunner",
    "PortableRunner",
)
RUNNERS = (ONE_PROCESS, *BEAM_RUNNERS)
REMOTE_RUNNERS = ("DataflowRunner",)  # workers on other machines: the output must be shared
CHUNK_CHARS = BATCH_CHARS  # text read and encoded per chunk (as build_token_store)
_OPTION = re.compile(r"^--[A-Za-z_][A-Za-z0-9_]*(=.*)?$", re.DOTALL)


def import_beam() -> Any:
    """``apache_beam``, or an error saying how to install it."""
    try:
        import apache_beam
    except ImportError as err:
        raise InvalidArgumentError(
            "preparing data on Apache Beam needs the 'beam' extra: pip install highnoon[beam] "
            f"(or use runner={ONE_PROCESS!r} for the one-process build); ({err})"
        ) from err
    return apache_beam


def check_runner(runner: Any) -> str:
    """``runner`` as given when it is one of ``RUNNERS`` (case-insensitive), else an error
    listing them."""
    if isinstance(runner, str):
        for known in RUNNERS:
            if runner.lower() == known.lower():
                return known
    raise InvalidArgumentError(
        f"runner={runner!r} is not a known runner; use one of {list(RUNNERS)} "
        f"({ONE_PROCESS!r}: the one-process build; the others are Apache Beam runners)"
    )


def parse_beam_options(text: Any) -> list[str]:
    """``--beam_options`` ("--name=value --name value ...", shell quoting) as the argument list
    Beam's ``PipelineOptions`` takes. A token that is no option (and no option's value), an
    unbalanced quote, an option Beam does not know or a value of the wrong type is an error
    naming it, before any data is read (Beam itself would ignore unknown options silently)."""
    if text is None or text == "":
        return []
    if isinstance(text, list | tuple):
        tokens = [str(t) for t in text]
    elif isinstance(text, str):
        try:
            tokens = shlex.split(text)
        except ValueError as err:
            raise InvalidArgumentError(
                f"beam_options={text!r} is malformed ({err}); quote values with spaces, e.g. "
                "--beam_options=\"--project=p --labels='a=b'\""
            ) from err
    else:
        raise InvalidArgumentError(
            f"beam_options={text!r} must be a string of Beam options, e.g. "
            "'--direct_num_workers=2 --direct_running_mode=multi_processing'"
        )
    value_allowed = False
    for token in tokens:
        if _OPTION.match(token):
            value_allowed = "=" not in token
        elif value_allowed and not token.startswith("-"):
            value_allowed = False
        else:
            raise InvalidArgumentError(
                f"beam_options: {token!r} is not a Beam option; write each as --name=value "
                "(e.g. --direct_num_workers=2)"
            )
    _check_known_options(tokens)
    return tokens


def _check_known_options(tokens: list[str]) -> None:
    """Beam's own parser over ``tokens``: unknown names and bad values become our errors."""
    beam = import_beam()
    options_class = beam.options.pipeline_options.PipelineOptions
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            known = options_class(tokens).get_all_options(drop_default=True)
            every = options_class(tokens).get_all_options(
                drop_default=True, retain_unknown_options=True
            )
    except SystemExit:  # argparse's way of refusing a value
        lines = [ln for ln in errors.getvalue().splitlines() if "error:" in ln]
        detail = lines[-1].split("error:", 1)[1].strip() if lines else "invalid value"
        raise InvalidArgumentError(
            f"beam_options: {detail}; write each option as --name=value (e.g. "
            "--direct_num_workers=2)"
        ) from None
    unknown = sorted(set(every) - set(known))
    if unknown:
        raise InvalidArgumentError(
            f"beam_options: unknown Beam option(s) {['--' + n for n in unknown]}; see "
            "`python -m apache_beam.examples.wordcount --help` for the options Beam knows"
        )


LOG_LEVEL_OPTION = "--default_sdk_harness_log_level"  # Beam workers' log level


def pipeline_options(runner: str, beam_options: Sequence[str]) -> Any:
    """Beam ``PipelineOptions`` for ``runner`` and the parsed ``beam_options``."""
    beam = import_beam()
    args = [f"--runner={runner}", *beam_options]
    if runner == "DirectRunner" and not any(a.startswith("--direct_num_workers") for a in args):
        args.append("--direct_num_workers=1")
    if runner == "DirectRunner" and not any(a.startswith(LOG_LEVEL_OPTION) for a in args):
        args.append(f"{LOG_LEVEL_OPTION}=WARNING")  # local workers: no per-worker INFO chatter
    quiet_type_hint_logs()
    return beam.options.pipeline_options.PipelineOptions(args)


def quiet_type_hint_logs() -> None:
    """Beam logs an INFO line per string type hint it cannot resolve (our annotations are
    strings under ``from __future__ import annotations``); they say nothing to a user. Other
    Beam INFO logs stay: Dataflow's job link is one of them."""
    logging.getLogger("apache_beam.typehints.native_type_compatibility").setLevel(logging.WARNING)


def pipeline_runner(runner: str, options: Any) -> Any:
    """The runner a pipeline is given: for ``DirectRunner``, the runner it ends up on for this
    pipeline (Beam's ``FnApiRunner``, which honours ``--direct_num_workers`` and
    ``--direct_running_mode``), made directly. Beam's ``DirectRunner`` first tries
    ``PrismRunner``, a Go binary it downloads from GitHub on first use: offline that attempt
    fails after about a second of translating the pipeline and starting a worker pool (most of
    the difference between the fixed costs in BENCHMARKS.md); online, it fetches a binary at
    preparation time. Other runners: their name, resolved by Beam."""
    if runner != "DirectRunner":
        return runner
    import_beam()
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    # what DirectRunner hands the FnApiRunner: the options, for the workers
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(info))


LEAN_SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "beam_site")

# glibc's allocator in the local workers: keep freed memory for the next chunk. A chunk's
# arrays (tens of MB) are allocated on Beam's work threads, whose arenas return them to the
# kernel at once, so each chunk faulted fresh zeroed pages in (huge pages: numpy asks for them):
# 40% of the pipeline's CPU was in the kernel, most of it zeroing pages (perf; BENCHMARKS.md,
# "Preparing a corpus on Apache Beam"). One arena and thresholds above a chunk's arrays make
# them reused.
WORKER_MALLOC = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(256 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
}


def _local_processes(runner: str, options: Any) -> bool:
    """Whether the pipeline runs on ``DirectRunner``'s local worker processes."""
    direct = options.view_as(import_beam().options.pipeline_options.DirectOptions)
    return runner == "DirectRunner" and direct.direct_running_mode == "multi_processing"


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set (what worker processes started meanwhile inherit),
    restored afterwards."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def lean_local_workers(runner: str, options: Any, units: Sequence[DataSource]) -> Iterator[bool]:
    """While a ``DirectRunner`` pipeline with local worker processes runs, their ``PYTHONPATH``
    starts with ``beam_site``, whose ``sitecustomize`` marks packages Beam imports but no step
    uses absent (about 40% of a worker's start-up). Only when every unit is a file or embedded
    source, whose reading needs none of them (a ``tfds:`` or registered callable source might).
    Yields whether the workers start lean; the environment is restored afterwards."""
    from highnoon.data.embedded import EmbeddedSource

    lean = _local_processes(runner, options) and all(
        isinstance(unit, FileSource | EmbeddedSource) for unit in units
    )
    if not lean:
        yield False
        return
    before = os.environ.get("PYTHONPATH")
    with _environment({"PYTHONPATH": os.pathsep.join([LEAN_SITE, *([before] if before else [])])}):
        yield True


@contextlib.contextmanager
def reused_worker_memory(runner: str, options: Any) -> Iterator[dict[str, str]]:
    """While a ``DirectRunner`` pipeline with local worker processes runs, they start with
    ``WORKER_MALLOC`` in their environment (a variable the user set is kept). Yields what was
    set; the environment is restored afterwards. Other runners' workers are configured by their
    own images (docs/design.md, "Preparation on Apache Beam")."""
    if not _local_processes(runner, options):
        yield {}
        return
    values = {k: v for k, v in WORKER_MALLOC.items() if k not in os.environ}
    with _environment(values):
        yield values


# --- read units and chunks -------------------------------------------------------------------


def iter_chunks(
    unit: DataSource, max_samples: int | None = None, chunk_chars: int = CHUNK_CHARS
) -> Iterator[list[Any]]:
    """The unit's samples in order, in lists of about ``chunk_chars`` characters (a token sample
    counts its length)."""
    samples = unit.iter_samples()
    if max_samples is not None:
        samples = itertools.islice(samples, int(max_samples))
    chunk: list[Any] = []
    size = 0
    for sample in samples:
        chunk.append(sample)
        size += len(sample) if isinstance(sample, str) else int(np.size(sample))
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def encode_chunk(samples: Sequence[Any], tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(flat ids without EOS, int64 lengths with empty samples as 0), in the chunk's order
    (``shards.stored_samples`` checks the ids' range)."""
    flats: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    texts: list[str] = []

    def flush() -> None:
        if texts:
            flat, lens = tokenizer.encode_batch(texts)
            flats.append(np.asarray(flat, np.int64))
            lengths.append(np.asarray(lens, np.int64))
            texts.clear()

    for sample in samples:
        if isinstance(sample, str):
            texts.append(sample)
            continue
        flush()
        ids = np.asarray(sample)
        if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
            raise InvalidDataError(
                "a sample must be a str or a 1-D integer token array, got "
                f"{type(sample).__name__} with shape {ids.shape}"
            )
        flats.append(ids.astype(np.int64))
        lengths.append(np.array([ids.size], np.int64))
    flush()
    if len(flats) == 1:  # all texts (the common case): no copy
        return flats[0], lengths[0]
    flat = np.concatenate(flats) if flats else np.zeros(0, np.int64)
    return flat, (np.concatenate(lengths) if lengths else np.zeros(0, np.int64))


# --- the index: chunk keys -> first sample, shard boundaries ---------------------------------


def chunk_starts(metas: Sequence[tuple[Any, int]]) -> tuple[dict[Any, int], int]:
    """({chunk key: global index of its first non-empty sample}, total samples) from the
    chunks' ``(key, non-empty samples)``, in key order (= source order)."""
    starts: dict[Any, int] = {}
    total = 0
    for key, count in sorted(metas, key=lambda m: m[0]):
        starts[key] = total
        total += int(count)
    return starts, total


def split_chunk(
    first: int, lengths: np.ndarray, bounds: np.ndarray
) -> Iterator[tuple[int, int, int]]:
    """The chunk's samples per shard: (shard, lo, hi), samples ``lo..hi-1`` of the chunk.

    ``lengths``: every sample's length, empty ones as 0. A chunk's non-empty samples are store
    indices ``first, first + 1, ...``; shard ``s`` holds indices ``[bounds[s], bounds[s + 1])``.
    An empty sample stays with the non-empty sample before it (the first shard's when none
    precedes), as ``build_token_store`` counts it.
    """
    lengths = np.asarray(lengths)
    if lengths.size == 0:
        return
    nonempty = lengths > 0
    before = np.cumsum(nonempty) - nonempty  # non-empty samples before each sample
    index = first + before - (~nonempty)  # an empty one: the previous sample's index
    index = np.clip(index, 0, bounds[-1] - 1)
    shard = np.searchsorted(bounds, index, side="right") - 1
    cuts = np.flatnonzero(np.diff(shard)) + 1  # shards are ranges: the runs are contiguous
    for lo, hi in zip([0, *cuts.tolist()], [*cuts.tolist(), int(lengths.size)]):
        yield int(shard[lo]), lo, hi


def even_bounds(total: int, num_shards: int) -> np.ndarray:
    """Boundaries of ``num_shards`` shards of ``total`` samples as even as can be (at most
    ``total`` shards: none is empty)."""
    count = max(1, min(int(num_shards), int(total)))
    return np.array([k * int(total) // count for k in range(count + 1)], dtype=np.int64)


def token_bounds(lengths: np.ndarray, max_shard_tokens: int) -> np.ndarray:
    """Boundaries by ``build_token_store``'s rule: a shard is closed once it holds at least
    ``max_shard_tokens`` tokens (EOS included) and the next sample has tokens. ``lengths``: the
    non-empty samples' token counts (without EOS)."""
    ends = np.cumsum(np.asarray(lengths, np.int64) + 1)
    bounds = [0]
    base = 0
    while True:
        # the first sample whose end reaches base + max_shard_tokens closes the shard
        cut = int(np.searchsorted(ends, base + int(max_shard_tokens), side="left")) + 1
        if cut >= ends.size:
            break
        bounds.append(cut)
        base = int(ends[cut - 1])
    bounds.append(int(ends.size))
    return np.array(bounds, dtype=np.int64)


# --- the pipeline ------------------------------------------------------------------------------

SUMMARY = "_beam_summary.json"  # the plan's facts, read by the launching process
CHUNKS = "_chunks"  # tokenised chunks, between the tokenising and the shard-writing workers


def chunk_file(staging: str, key: tuple[int, int]) -> str:
    """Where a tokenised chunk waits for its shard writer (inside the staging directory)."""
    return f"{staging.rstrip('/')}/{CHUNKS}/u{key[0]:06d}-c{key[1]:06d}.bin"


def _save_chunk(path: str, stored: Any) -> None:
    """A chunk's ``shards.StoredSamples`` as raw little-endian bytes: the sample and non-empty
    counts (``<i8``), the lengths (``<i8``), the CRCs (``<u4``), the stored ids (the store's
    dtype, aligned). The shard writer appends them as they are: nothing is encoded twice."""
    head = np.array([stored.lengths.size, stored.crcs.size], dtype="<i8")
    parts = (head, stored.lengths.astype("<i8"), stored.crcs.astype("<u4"), stored.tokens)
    _write_bytes(path, *(np.ascontiguousarray(part) for part in parts))


def _load_chunk(path: str, dtype: np.dtype) -> Any:
    """``_save_chunk``'s ``StoredSamples`` back, as views of the file's bytes."""
    from highnoon.data.shards import StoredSamples

    if is_remote(path):
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "rb") as handle:
            data = handle.read()
    else:
        with open(path, "rb") as handle:
            data = handle.read()
    count, kept = (int(v) for v in np.frombuffer(data, "<i8", count=2))
    lengths = np.frombuffer(data, "<i8", count=count, offset=16)
    crcs = np.frombuffer(data, "<u4", count=kept, offset=16 + 8 * count)
    tokens = np.frombuffer(data, dtype, offset=16 + 8 * count + 4 * kept)
    return StoredSamples(tokens, lengths, crcs)


def _plan(
    metas: list[tuple[Any, int, np.ndarray | None]],
    num_shards: int | None,
    max_shard_tokens: int,
) -> dict[str, Any]:
    """The side input every writer shares: chunk starts and sizes, shard boundaries, names."""
    from highnoon.data.shards import shard_name

    starts, total = chunk_starts([(key, count) for key, count, _ in metas])
    if total == 0:
        raise InvalidDataError(
            "the dataset is empty: no sample had any token; check the entry's files"
        )
    ordered = sorted(metas, key=lambda m: m[0])
    if num_shards is None:
        lengths = np.concatenate([m[2][m[2] > 0] for m in ordered])
        bounds = token_bounds(lengths, max_shard_tokens)
    else:
        bounds = even_bounds(total, num_shards)
    count = bounds.size - 1
    return {
        "chunks": [(m[0], starts[m[0]], int(m[1])) for m in ordered],  # key, first, samples
        "bounds": bounds,
        "names": [shard_name(i, count) for i in range(count)],
        "num_samples": total,
    }


def unit_plan(units: list[dict[str, Any]]) -> dict[str, Any]:
    """The side input of the features step when every read unit wrote its own shards
    (``WriteUnit``): ``shards`` as (name, first sample, empty samples to add), in source order.
    A unit's leading empty samples (which its worker held back) are counted in the last shard
    before it, or the first shard when none precedes: where ``ShardSequence`` counts them in
    one process."""
    shards: list[list[Any]] = []
    total, before_any = 0, 0
    for unit in sorted(units, key=lambda u: u["unit"]):
        if shards:
            shards[-1][2] += unit["leading_empty"]
        else:
            before_any += unit["leading_empty"]
        for name, count in unit["shards"]:
            shards.append([name, total, 0])
            total += int(count)
    if not shards:
        raise InvalidDataError(
            "the dataset is empty: no sample had any token; check the entry's files"
        )
    shards[0][2] += before_any
    return {
        "shards": [tuple(shard) for shard in shards],
        "names": [shard[0] for shard in shards],
        "num_samples": total,
    }


def shard_chunks(plan: dict[str, Any], shard: int) -> list[tuple[Any, int]]:
    """(key, first sample) of the chunks that may hold samples (or skipped empty ones) of
    ``shard``, in source order."""
    lo, hi = int(plan["bounds"][shard]), int(plan["bounds"][shard + 1])
    last = int(plan["num_samples"]) - 1
    # a chunk's samples map to indices first - 1 (its leading empty samples, which go with the
    # sample before them) .. first + count - 1 (``split_chunk``)
    return [
        (key, first)
        for key, first, count in plan["chunks"]
        if max(first - 1, 0) < hi and min(max(first + count - 1, 0), last) >= lo
    ]


def _written_shard(staging: str, name: str) -> dict[str, Any]:
    """A shard's ``shard.json`` once the pipeline finished, or an error naming the shard."""
    import json

    from highnoon.utils.files import read_text

    try:
        return json.loads(read_text(f"{staging}/{name}/shard.json"))
    except Exception as err:  # the runner reported success, yet the shard is not there
        raise InvalidDataError(
            f"the pipeline finished but shard {name} was not written in {staging!r} ({err}); "
            "prepare the entry again"
        ) from err


def _merge_stats(stats: Sequence[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for item in stats:
        for name, count in item.items():
            merged[name] = merged.get(name, 0) + int(count)
    return dict(sorted(merged.items()))


def _copy_tree_out(local: str, remote: str, skip: Sequence[str] = ()) -> None:
    """Copy a local shard directory to a ``tf.io.gfile`` path (shard.json last), but the
    files named in ``skip`` (already there)."""
    import tensorflow as tf

    tf.io.gfile.makedirs(remote)
    names = sorted(os.listdir(local), key=lambda n: (n == "shard.json", n))
    for name in names:
        if name not in skip:
            tf.io.gfile.copy(os.path.join(local, name), f"{remote}/{name}", overwrite=True)


def _copy_tree_in(remote: str, local: str) -> str:
    """Copy a shard directory from a ``tf.io.gfile`` path to a new local one; returns it."""
    import tensorflow as tf

    os.makedirs(local)
    for name in sorted(tf.io.gfile.listdir(remote)):
        tf.io.gfile.copy(f"{remote}/{name}", os.path.join(local, name))
    return local


def _remove_remote_writer_state(remote: str) -> None:
    """The shard's ``writer.json`` removed once its shard.json is out (as locally)."""
    import tensorflow as tf

    from highnoon.data.shards import WRITER_STATE

    with contextlib.suppress(tf.errors.NotFoundError):
        tf.io.gfile.remove(f"{remote}/{WRITER_STATE}")


def _copy_tokenizer_out(tokenizer: Tokenizer, directory: str) -> dict[str, dict[str, Any]]:
    """``shards.copy_tokenizer_file`` for a ``tf.io.gfile`` store directory."""
    if not tokenizer.store_file:
        return {}
    import tensorflow as tf

    from highnoon.utils.hashing import sha256_file

    tf.io.gfile.copy(tokenizer.model_path, f"{directory}/{tokenizer.store_file}", overwrite=True)
    return {
        tokenizer.store_file: {
            "size": os.path.getsize(tokenizer.model_path),
            "sha256": sha256_file(tokenizer.model_path),
        }
    }


def _write_bytes(path: str, *parts: Any) -> None:
    """A file inside the staging directory (local or ``tf.io.gfile``), its directory made: the
    ``parts`` (bytes or contiguous arrays) back to back, each written from its own buffer (a
    chunk's tokens are not copied into one bytes object first)."""
    if is_remote(path):
        import tensorflow as tf

        tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
        with tf.io.gfile.GFile(path, "wb") as handle:
            for part in parts:
                handle.write(part.tobytes() if isinstance(part, np.ndarray) else part)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        for part in parts:
            handle.write(part)


def _write_text(path: str, text: str) -> None:
    _write_bytes(path, text.encode("utf-8"))


def _count_cpu(beam: Any, step: str, started: float) -> None:
    """Add this thread's CPU time since ``started`` to the Beam counter ``<step>_cpu_ms``: what
    the pipeline's own work cost, apart from the runner's (``PipelineResult.metrics``)."""
    elapsed = round((time.thread_time() - started) * 1000)
    beam.metrics.Metrics.counter("highnoon", f"{step}_cpu_ms").inc(elapsed)


def _transforms(beam: Any) -> dict[str, Any]:
    """The pipeline's DoFns and CombineFns (defined once Beam is imported)."""

    class Read(beam.DoFn):
        """unit index -> ((unit, chunk), samples) in order; the unit's source stats tagged.
        With ``tokenise``, each chunk is tokenised here (a file per worker needs no shuffle
        of its text) and only its ``Tokenised`` record is emitted."""

        def __init__(
            self,
            units: list[DataSource],
            max_samples: int | None,
            chunk_chars: int,
            tokenise: Any = None,
        ):
            self.units = units
            self.max_samples = max_samples
            self.chunk_chars = chunk_chars
            self.tokenise = tokenise

        def setup(self) -> None:
            if self.tokenise is not None:
                self.tokenise.setup()

        def process(self, unit_index: int) -> Iterator[Any]:
            unit = self.units[unit_index]
            chunks = enumerate(iter_chunks(unit, self.max_samples, self.chunk_chars))
            while True:
                started = time.thread_time()
                number, samples = next(chunks, (None, None))
                _count_cpu(beam, "read", started)
                if samples is None:
                    break
                if self.tokenise is None:
                    yield (unit_index, number), samples
                else:
                    yield from self.tokenise.process(((unit_index, number), samples))
            yield beam.pvalue.TaggedOutput("stats", dict(unit.stats))

    class Tokenise(beam.DoFn):
        """((unit, chunk), samples) -> the chunk in its stored form (``shards.stored_samples``:
        EOS, dtype, per-sample CRCs) saved beside the store (``chunk_file``); emits (key,
        non-empty samples, lengths, unigram counts). The only place a Beam build encodes or
        counts a token."""

        def __init__(self, tokenizer_config: dict[str, Any], staging: str):
            self.tokenizer_config = tokenizer_config
            self.staging = staging
            self.tokenizer: Tokenizer | None = None

        def setup(self) -> None:
            self.tokenizer = load_tokenizer(self.tokenizer_config)

        def process(self, element: tuple[Any, list[Any]]) -> Iterator[Any]:
            from highnoon.data.shards import stored_samples

            started = time.thread_time()
            key, samples = element
            tokenizer = self.tokenizer
            flat, lengths = encode_chunk(samples, tokenizer)
            stored = stored_samples(flat, lengths, tokenizer.vocab_size, tokenizer.eos_id)
            _save_chunk(chunk_file(self.staging, key), stored)
            counts = np.bincount(stored.tokens, minlength=tokenizer.vocab_size).astype(np.int64)
            _count_cpu(beam, "tokenise", started)
            yield key, int(stored.crcs.size), lengths, counts

    class SumCounts(beam.CombineFn):
        """Element-wise sum of int64 count vectors: exact, whatever the grouping."""

        def __init__(self, size: int):
            self.size = size

        def create_accumulator(self) -> np.ndarray:
            return np.zeros(self.size, np.int64)

        def add_input(self, total: np.ndarray, counts: np.ndarray) -> np.ndarray:
            total += counts
            return total

        def merge_accumulators(self, totals: Any) -> np.ndarray:
            out = np.zeros(self.size, np.int64)
            for total in totals:
                out += total
            return out

        def extract_output(self, total: np.ndarray) -> np.ndarray:
            return total

    class WriteShard(beam.DoFn):
        """shard index -> its directory written from the chunk files (their stored bytes
        appended as they are), its shard.json returned."""

        def __init__(self, staging: str, tokenizer_config: dict[str, Any], block_bytes: int):
            self.staging = staging
            self.tokenizer_config = tokenizer_config
            self.block_bytes = block_bytes

        def process(self, shard: int, plan: dict[str, Any], counts: np.ndarray) -> Iterator:
            from highnoon.data.shards import ShardWriter, write_shard_features

            started = time.thread_time()
            tokenizer = load_tokenizer(self.tokenizer_config)
            name = plan["names"][shard]
            remote = is_remote(self.staging)
            local = tempfile.mkdtemp(prefix="highnoon-shard-") if remote else None
            directory = os.path.join(local, name) if remote else os.path.join(self.staging, name)
            os.makedirs(directory, exist_ok=True)
            writer = ShardWriter(
                directory,
                tokenizer.vocab_size,
                tokenizer.eos_id,
                block_bytes=self.block_bytes,
                count_tokens=False,  # the corpus counts come from the tokenisers' combine
            )
            for key, first in shard_chunks(plan, shard):
                stored = _load_chunk(chunk_file(self.staging, key), writer.dtype)
                for piece_shard, lo, hi in split_chunk(first, stored.lengths, plan["bounds"]):
                    if piece_shard == shard:
                        writer.add_stored(stored.part(lo, hi))
            writer.close()
            manifest = write_shard_features(directory, counts, int(plan["bounds"][shard]))
            if remote:
                _copy_tree_out(directory, f"{self.staging.rstrip('/')}/{name}")
                shutil.rmtree(local, ignore_errors=True)
            _count_cpu(beam, "write_shards", started)
            # a worker that imported TensorFlow paid seconds for it (only gs:// needs it)
            tensorflow = int("tensorflow" in sys.modules)
            beam.metrics.Metrics.counter("highnoon", "shards_with_tensorflow").inc(tensorflow)
            yield shard, manifest

    class WriteUnit(beam.DoFn):
        """unit index -> the unit read, tokenised and written as its own shards where it is
        read (``store_build.ShardSequence``: step 1 of ``shards.py``, as a one-process build
        writes them), no chunk files and no second copy of the tokens; emits the unit's
        shards (name, samples), its held-back leading empty samples, its unigram counts and
        its source stats."""

        def __init__(self, units: list[DataSource], staging: str, tokenizer_config: dict,
                     max_shard_tokens: int, block_bytes: int, chunk_chars: int):  # fmt: skip
            self.units = units
            self.staging = staging
            self.tokenizer_config = tokenizer_config
            self.max_shard_tokens = max_shard_tokens
            self.block_bytes = block_bytes
            self.chunk_chars = chunk_chars
            self.tokenizer: Tokenizer | None = None

        def setup(self) -> None:
            self.tokenizer = load_tokenizer(self.tokenizer_config)

        def process(self, unit_index: int) -> Iterator[dict[str, Any]]:
            from highnoon.data.store_build import ShardSequence

            unit, tokenizer = self.units[unit_index], self.tokenizer
            remote = is_remote(self.staging)
            local = tempfile.mkdtemp(prefix="highnoon-unit-") if remote else self.staging
            sequence = ShardSequence(local, tokenizer, self.max_shard_tokens, self.block_bytes,
                                     unit=unit_index, hold_leading_empty=True)  # fmt: skip
            chunks = iter_chunks(unit, None, self.chunk_chars)
            while True:
                started = time.thread_time()
                samples = next(chunks, None)
                _count_cpu(beam, "read", started)
                if samples is None:
                    break
                started = time.thread_time()
                flat, lengths = encode_chunk(samples, tokenizer)
                _count_cpu(beam, "tokenise", started)
                started = time.thread_time()
                sequence.add(flat, lengths)
                _count_cpu(beam, "write_shards", started)
            started = time.thread_time()
            written = sequence.close()
            counts = np.zeros(tokenizer.vocab_size, np.int64)
            for _, shard in written:
                counts += shard.counts
            if remote:
                for name, _ in written:
                    _copy_tree_out(os.path.join(local, name), f"{self.staging.rstrip('/')}/{name}")
                shutil.rmtree(local, ignore_errors=True)
            _count_cpu(beam, "write_shards", started)
            yield {
                "unit": unit_index,
                "shards": [(name, shard.num_samples) for name, shard in written],
                "leading_empty": sequence.leading_empty,
                "counts": counts,
                "stats": dict(unit.stats),
            }

    class WriteFeatures(beam.DoFn):
        """(shard name, first sample, empty samples to add) -> its features under the corpus
        counts and its shard.json (``shards.write_shard_features``: step 3), where the shard
        was written by ``WriteUnit``; the shard.json returned."""

        def __init__(self, staging: str):
            self.staging = staging

        def process(self, shard: tuple[str, int, int], counts: np.ndarray) -> Iterator:
            from highnoon.data.shards import write_shard_features

            started = time.thread_time()
            name, first, more_empty = shard
            remote = is_remote(self.staging)
            target = f"{self.staging.rstrip('/')}/{name}"
            local = tempfile.mkdtemp(prefix="highnoon-shard-") if remote else None
            directory = _copy_tree_in(target, os.path.join(local, name)) if remote else target
            before = set(os.listdir(directory))
            manifest = write_shard_features(directory, counts, first, more_empty=more_empty)
            if remote:
                _copy_tree_out(directory, target, skip=before)
                _remove_remote_writer_state(target)
                shutil.rmtree(local, ignore_errors=True)
            _count_cpu(beam, "write_shards", started)
            tensorflow = int("tensorflow" in sys.modules)
            beam.metrics.Metrics.counter("highnoon", "shards_with_tensorflow").inc(tensorflow)
            yield name, manifest

    return {
        "Read": Read,
        "Tokenise": Tokenise,
        "SumCounts": SumCounts,
        "WriteShard": WriteShard,
        "WriteUnit": WriteUnit,
        "WriteFeatures": WriteFeatures,
    }


def run_pipeline(
    source: DataSource,
    tokenizer: Tokenizer,
    staging: str,
    *,
    runner: str,
    beam_options: Sequence[str],
    num_shards: int | None,
    max_shard_tokens: int,
    max_samples: int | None,
    chunk_chars: int,
    block_bytes: int,
) -> dict[str, Any]:
    """Run the pipeline writing ``source``'s shards into ``staging``; returns its summary
    (shard names, sample count, the sources' merged stats)."""
    import json

    beam = import_beam()
    parts = _transforms(beam)
    units = read_units(source, max_samples)
    options = pipeline_options(runner, beam_options)
    pipeline = beam.Pipeline(runner=pipeline_runner(runner, options), options=options)
    unit_indices = pipeline | "Units" >> beam.Create(list(range(len(units))))
    summary_path = f"{staging.rstrip('/')}/{SUMMARY}"
    if len(units) > 1 and num_shards is None:  # each unit's shards written where it is read
        _unit_shards(beam, parts, unit_indices, units, tokenizer, staging, summary_path,
                     max_shard_tokens=max_shard_tokens, block_bytes=block_bytes,
                     chunk_chars=chunk_chars)  # fmt: skip
    else:
        _chunked_shards(beam, parts, unit_indices, units, tokenizer, staging, summary_path,
                        num_shards=num_shards, max_shard_tokens=max_shard_tokens,
                        max_samples=max_samples, chunk_chars=chunk_chars,
                        block_bytes=block_bytes)  # fmt: skip
    with lean_local_workers(runner, options, units), reused_worker_memory(runner, options):
        result = pipeline.run()
        result.wait_until_finish()
    from highnoon.utils.files import read_text

    summary = json.loads(read_text(summary_path))
    counters = _counters(result)
    summary["cpu_seconds"] = {
        name[: -len("_cpu_ms")]: value / 1000
        for name, value in counters.items()
        if name.endswith("_cpu_ms")
    }
    summary["shards_with_tensorflow"] = counters.get("shards_with_tensorflow")
    return summary


def _unit_shards(beam: Any, parts: dict[str, Any], unit_indices: Any, units: list[DataSource],
                 tokenizer: Tokenizer, staging: str, summary_path: str, *, max_shard_tokens: int,
                 block_bytes: int, chunk_chars: int) -> None:  # fmt: skip
    """The pipeline for several read units and shards cut by tokens: each unit read,
    tokenised and written as its own shards by one worker (``WriteUnit``); the counts
    combined; each shard's features written where any worker is free (``WriteFeatures``)."""
    import json

    written = (
        unit_indices
        | "SpreadUnits" >> beam.Reshuffle()
        | "WriteUnits"
        >> beam.ParDo(
            parts["WriteUnit"](
                units, staging, tokenizer.to_config(), max_shard_tokens, block_bytes, chunk_chars
            )
        )
    )
    counts = (
        written
        | "UnitCounts" >> beam.Map(lambda u: u["counts"])
        | "CorpusCounts" >> beam.CombineGlobally(parts["SumCounts"](tokenizer.vocab_size))
    )

    def plan_and_summary(metas: list[dict[str, Any]]) -> dict[str, Any]:
        """The features step's plan; its facts for the launching process beside the store."""
        plan = unit_plan(metas)
        stats = _merge_stats([m["stats"] for m in metas])
        facts = {"names": plan["names"], "num_samples": plan["num_samples"], "stats": stats}
        _write_text(summary_path, json.dumps(facts))
        return plan

    plan = (
        written
        | "Meta" >> beam.Map(lambda u: {k: v for k, v in u.items() if k != "counts"})
        | "Metas" >> beam.combiners.ToList()
        | "Plan" >> beam.Map(plan_and_summary)
    )
    _ = (
        plan
        | "Shards" >> beam.FlatMap(lambda p: p["shards"])
        | "SpreadShards" >> beam.Reshuffle()
        | "WriteFeatures"
        >> beam.ParDo(parts["WriteFeatures"](staging), counts=beam.pvalue.AsSingleton(counts))
    )


def _chunked_shards(beam: Any, parts: dict[str, Any], unit_indices: Any,
                    units: list[DataSource], tokenizer: Tokenizer, staging: str,
                    summary_path: str, *, num_shards: int | None, max_shard_tokens: int,
                    max_samples: int | None, chunk_chars: int,
                    block_bytes: int) -> None:  # fmt: skip
    """The pipeline for one read unit, or for ``num_shards`` even shards: chunks tokenised into
    chunk files, a plan over the whole corpus, then each shard written from the chunk files."""
    import json

    config = tokenizer.to_config()
    tokenise = parts["Tokenise"](config, staging)
    singleton = beam.pvalue.AsSingleton
    if len(units) > 1:  # one file per worker at a time: read and tokenise together
        read = (
            unit_indices
            | "SpreadUnits" >> beam.Reshuffle()
            | "ReadTokenise"
            >> beam.ParDo(parts["Read"](units, max_samples, chunk_chars, tokenise)).with_outputs(
                "stats", main="chunks"
            )
        )
        tokenised = read.chunks
    else:  # one stream: its text chunks are spread over the workers to tokenise
        read = unit_indices | "Read" >> beam.ParDo(
            parts["Read"](units, max_samples, chunk_chars)
        ).with_outputs("stats", main="chunks")
        tokenised = (
            read.chunks | "SpreadChunks" >> beam.Reshuffle() | "Tokenise" >> beam.ParDo(tokenise)
        )
    counts = (
        tokenised
        | "ChunkCounts" >> beam.Map(lambda t: t[3])
        | "CorpusCounts" >> beam.CombineGlobally(parts["SumCounts"](tokenizer.vocab_size))
    )
    keep_lengths = num_shards is None

    def plan_and_summary(metas: list, stats: list) -> dict[str, Any]:
        """The writers' plan; its facts for the launching process written beside the store."""
        plan = _plan(metas, num_shards, max_shard_tokens)
        facts = {"names": plan["names"], "num_samples": plan["num_samples"]}
        _write_text(summary_path, json.dumps({**facts, "stats": _merge_stats(stats)}))
        return plan

    plan = (
        tokenised
        | "Meta" >> beam.Map(lambda t: (t[0], t[1], t[2] if keep_lengths else None))
        | "Metas" >> beam.combiners.ToList()
        | "Plan" >> beam.Map(plan_and_summary, stats=beam.pvalue.AsList(read.stats))
    )
    _ = (
        plan
        | "Shards" >> beam.FlatMap(lambda p: range(len(p["names"])))
        | "SpreadShards" >> beam.Reshuffle()
        | "WriteShard"
        >> beam.ParDo(
            parts["WriteShard"](staging, config, block_bytes),
            plan=singleton(plan),
            counts=singleton(counts),
        )
    )


def _counters(result: Any) -> dict[str, int]:
    """{name: value} of the run's ``highnoon`` counters (``<step>_cpu_ms`` from ``_count_cpu``,
    ``shards_with_tensorflow``), sorted; empty where the runner reports no metrics."""
    try:
        counters = result.metrics().query()["counters"]
    except Exception:  # a runner without metrics support
        return {}
    out: dict[str, int] = {}
    for counter in counters:
        name = counter.key.metric.name
        if counter.key.metric.namespace == "highnoon":
            value = counter.committed if counter.committed is not None else counter.attempted
            out[name] = out.get(name, 0) + int(value)
    return dict(sorted(out.items()))


def build_store_on_beam(
    source: DataSource,
    tokenizer: Tokenizer | str | dict,
    path: str,
    *,
    runner: str = "DirectRunner",
    beam_options: Sequence[str] | str = (),
    num_shards: int | None = None,
    max_shard_tokens: int | None = None,
    max_samples: int | None = None,
    overwrite: bool = False,
    chunk_chars: int = CHUNK_CHARS,
) -> Any:
    """``source``'s store at ``path``, prepared on Beam (module docstring); the opened store.

    Shards: ``num_shards`` of (nearly) equal sample counts, or by default a new shard once one
    holds ``max_shard_tokens`` tokens (``build_token_store``'s rule and default: the same
    boundaries). An existing store at ``path`` is an error unless ``overwrite``.
    """
    import json

    from highnoon.data import shards as shard_format
    from highnoon.data.store import MANIFEST, StoreExistsError, TokenStore
    from highnoon.data.store_build import _temp_name, publish_store, remove_stale_build_dirs

    runner = check_runner(runner)
    if runner == ONE_PROCESS:
        raise InvalidArgumentError(
            f"runner={ONE_PROCESS!r} is the one-process build (store.build_token_store), "
            f"not a Beam runner; use one of {list(BEAM_RUNNERS)}"
        )
    import_beam()  # installed? (before anything is read or written)
    options = parse_beam_options(beam_options)
    num_shards = check_positive_int("num_shards", num_shards, allow_none=True)
    if max_shard_tokens is None:
        from highnoon.data.store_build import MAX_SHARD_TOKENS

        max_shard_tokens = MAX_SHARD_TOKENS
    max_shard_tokens = check_positive_int("max_shard_tokens", max_shard_tokens)
    max_samples = check_positive_int("max_samples", max_samples, allow_none=True)
    tokenizer = load_tokenizer(tokenizer)
    description = source.describe()
    remote = is_remote(path)
    if remote:
        import tensorflow as tf

        path = path.rstrip("/")
        if tf.io.gfile.exists(f"{path}/{MANIFEST}") and not overwrite:
            raise StoreExistsError(f"path={path!r} already holds a store; pass overwrite=True")
        if tf.io.gfile.exists(path):  # an interrupted preparation's shards (no manifest)
            tf.io.gfile.rmtree(path)
        tf.io.gfile.makedirs(path)
        staging = path
    else:
        path = os.path.abspath(path)
        if os.path.exists(path) and not overwrite:
            raise StoreExistsError(f"path={path!r} already exists; pass overwrite=True")
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        remove_stale_build_dirs(parent, base=os.path.basename(path))
        staging = _temp_name(path, "tmp")
        os.makedirs(staging)
    started = time.perf_counter()
    try:
        summary = run_pipeline(
            source,
            tokenizer,
            staging,
            runner=runner,
            beam_options=options,
            num_shards=num_shards,
            max_shard_tokens=max_shard_tokens,
            max_samples=max_samples,
            chunk_chars=chunk_chars,
            block_bytes=shard_format.BLOCK_BYTES,
        )

        names = summary["names"]
        manifests = [_written_shard(staging, n) for n in names]
        if remote:
            top_files = _copy_tokenizer_out(tokenizer, staging)
        else:
            top_files = shard_format.copy_tokenizer_file(tokenizer, staging)
        manifest = shard_format.store_manifest(
            manifests,
            names,
            tokenizer,
            sources=[description],
            skipped=summary["stats"],
            top_files=top_files,
            extra={
                "build_seconds": round(time.perf_counter() - started, 3),
                "preparation": {  # who did the work: not part of the fingerprint
                    "runner": runner,
                    "beam_options": options,
                    "cpu_seconds": summary["cpu_seconds"],
                    # shards written by a process with TensorFlow loaded (None: no metrics)
                    "shards_with_tensorflow": summary["shards_with_tensorflow"],
                },
            },
        )
        if remote:
            tf.io.gfile.remove(f"{staging}/{SUMMARY}")
            if tf.io.gfile.exists(f"{staging}/{CHUNKS}"):  # none when units wrote shards
                tf.io.gfile.rmtree(f"{staging}/{CHUNKS}")
        else:
            os.unlink(os.path.join(staging, SUMMARY))
            shutil.rmtree(os.path.join(staging, CHUNKS), ignore_errors=True)
        _write_text(f"{staging}/{MANIFEST}", json.dumps(manifest, indent=2, sort_keys=True))
        if not remote:
            publish_store(staging, path, overwrite=overwrite)
    except BaseException:
        if not remote:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return TokenStore.open(path)
