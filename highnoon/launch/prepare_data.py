r"""Tokenise datasets into token stores ahead of training.

    highnoon-prepare-data --datasets=stdlib_docs,stdlib_code --output_dir=/tmp/data
    highnoon-prepare-data --datasets='corpus/*.jsonl' --output_dir=gs://bucket/data \
        --train_sentencepiece_vocab=32000
    highnoon-prepare-data --datasets=stdlib_code --output_dir=/tmp/data \
        --train_tokenizer_json_vocab=8000   # a byte-level BPE tokenizer.json instead
    highnoon-prepare-data --datasets=stdlib_code --output_dir=/tmp/data \
        --tokenizer=/models/llama/tokenizer.json
    highnoon-prepare-data --gin_file=my_data.gin --gin.prepare_datasets.max_samples=1000
    highnoon-prepare-data --datasets='c4/*.jsonl' --output_dir=/data/c4 --num_shards=64 \
        --beam_options="--direct_num_workers=8 --direct_running_mode=multi_processing"
    highnoon-prepare-data --datasets='gs://b/c4/*.jsonl' --output_dir=gs://b/stores \
        --runner=DataflowRunner --num_shards=1024 \
        --beam_options="--project=P --region=us-central1 --temp_location=gs://b/tmp"
    highnoon-prepare-data --datasets=stdlib_code --output_dir=/tmp/data --runner=none
    highnoon-prepare-data --verify=/data/stores/c4-en,gs://bucket/stores/code  # check, no build
    highnoon-prepare-data --datasets=stdlib_code --output_dir=/tmp/data --orders=size_based
    highnoon-prepare-data --orders_only=/data/stores/c4-en  # add the orders to existing stores
    highnoon-prepare-data --upgrade_stores=/data/stores/c4-en  # format 2 -> 3, manifests only

(In a checkout, `python -m launch.prepare_data ...` is the same program.) Flags given on the
command line override the gin bindings of ``prepare_datasets``; gin files can also register
datasets (``register_datasets.mapping = {...}``). A training run with ``cache_dir=<output_dir>``
and the same tokenizer reuses the stores built here.

After the stores (whichever runner built them, so after their manifests), this process writes
each store's easy-to-hard orders into it (``--orders``, default the three built-in strategies;
``--orders=`` writes none; ``highnoon.curriculum.stored_order``), keeping orders already there
and fresh. ``--orders_only=PATHS`` writes them into stores prepared earlier and builds nothing.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from absl import app, flags, logging

from highnoon.curriculum import stored_order
from highnoon.data import beam_prepare
from highnoon.launch import flags as hn_flags  # defines --gin_file and --gin_bindings
from highnoon.launch import program
from highnoon.launch.prepare_lock import PrepareLock
from highnoon.training.run_lock import ModelDirLockedError
from highnoon.utils import validation

FLAGS = flags.FLAGS

flags.DEFINE_list("datasets", None, "Dataset entries: registered names, paths/globs, tfds:NAME.")
flags.DEFINE_string("output_dir", None, "Directory for the stores and datasets.json.")
flags.DEFINE_string(
    "tokenizer",
    None,
    "'byte' (default), a SentencePiece .model, a Hugging Face tokenizer.json, or a tokenizer "
    'config as JSON (\'{"type": "tokenizer_json", "path": ..., "eos_token": ...}\').',
)
flags.DEFINE_integer(
    "train_sentencepiece_vocab", None, "Train a SentencePiece model of this size first."
)
flags.DEFINE_integer(
    "train_tokenizer_json_vocab",
    None,
    "Train a byte-level BPE tokenizer.json of this size first (output_dir/tokenizer.json).",
)
flags.DEFINE_integer("max_samples", None, "Read at most this many samples per dataset.")
flags.DEFINE_string("data_dir", None, "TFDS data_dir holding datasets prepared offline.")
flags.DEFINE_string(
    "runner",
    None,
    "Who prepares the stores: an Apache Beam runner (DirectRunner, the default; DataflowRunner, "
    "FlinkRunner, SparkRunner, PrismRunner, PortableRunner) or 'none' (one process, no Beam).",
)
flags.DEFINE_integer(
    "num_shards",
    None,
    "Shards per store, of equal sample counts (Beam runners; default: a new shard every 2**28 "
    "tokens, as the one-process build).",
)
flags.DEFINE_string(
    "beam_options",
    None,
    "Options for Beam's PipelineOptions, shell-quoted, e.g. \"--direct_num_workers=2 "
    '--direct_running_mode=multi_processing" or "--project=P --region=R --temp_location=gs://.."',
)
flags.DEFINE_list(
    "verify",
    None,
    "Prepared stores to check block by block (CRC32C of every block of every shard); prepares "
    "nothing. A damaged block is an error naming its shard, file, block and byte offset.",
)

flags.DEFINE_list(
    "upgrade_stores",
    None,
    "Local stores of format 2 (block CRCs as JSON lists in each shard.json) to rewrite in place "
    "as format 3 (CRCs in binary side files, read by page), their orders stamped with the new "
    "fingerprint; reads and writes no data, prepares nothing.",
)
flags.DEFINE_list(
    "orders",
    list(stored_order.BUILT_IN),
    "Easy-to-hard orders written into each store after it is prepared (orders/<strategy>.bin, "
    "read by range at training): any of size_based, difficulty_based, mixed; --orders= writes "
    "none.",
)
flags.DEFINE_list(
    "orders_only",
    None,
    "Prepared stores to write the --orders into (missing or stale ones); prepares nothing.",
)

program.check_flag("orders", lambda name, value: stored_order.check_strategies(value))
program.check_flag("output_dir", validation.check_str)
program.check_flag("train_sentencepiece_vocab", validation.check_positive_int)
program.check_flag("train_tokenizer_json_vocab", validation.check_positive_int)
program.check_flag("max_samples", validation.check_positive_int)
program.check_flag("num_shards", validation.check_positive_int)
program.check_flag("runner", lambda name, value: beam_prepare.check_runner(value))
program.check_flag("beam_options", lambda name, value: beam_prepare.parse_beam_options(value))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from highnoon.launch import configurables

    if FLAGS.verify:
        with _stops_on_store_errors():
            _verify(FLAGS.verify)
        return
    if FLAGS.orders_only:
        with _stops_on_store_errors():
            orders = _write_orders(FLAGS.orders_only, FLAGS.orders)
        print(json.dumps({"orders": orders}, indent=2))
        return
    if FLAGS.upgrade_stores:
        with _stops_on_store_errors():
            upgraded = [_upgrade(p) for p in FLAGS.upgrade_stores]
        print(json.dumps({"upgraded": upgraded}, indent=2))
        return
    hn_flags.parse_gin_from_flags()
    configurables.register_datasets()  # datasets a gin file registered, if any
    overrides: dict[str, Any] = {}
    for name in ("datasets", "output_dir", "tokenizer", "train_sentencepiece_vocab",
                 "train_tokenizer_json_vocab", "max_samples", "data_dir", "runner",
                 "num_shards", "beam_options"):  # fmt: skip
        value = getattr(FLAGS, name)
        if value is not None:
            overrides[name] = value
    output_dir = overrides.get("output_dir") or configurables.prepare_datasets_output_dir()
    try:
        if output_dir:
            validation.check_writable_dir("output_dir", output_dir)
        with PrepareLock(output_dir) if output_dir else contextlib.nullcontext():
            index = configurables.prepare_datasets(**overrides)
            orders = _write_orders([item["path"] for item in index["datasets"]], FLAGS.orders)
    except (validation.InvalidArgumentError, ModelDirLockedError) as error:
        raise app.UsageError(str(error).splitlines()[0]) from None  # without gin's "In call"
    for item, written in zip(index["datasets"], orders):
        item["orders"] = written["orders"]
        logging.info(
            "%s: %d samples, %d tokens -> %s",
            item["entry"], item["num_samples"], item["num_tokens"], item["path"],
        )  # fmt: skip
    print(json.dumps(index, indent=2))


@contextlib.contextmanager
def _stops_on_store_errors() -> Any:
    """The modes that work on stores already prepared (``--verify``, ``--orders_only``,
    ``--upgrade_stores``) stop on a store that is missing, corrupt or refused with its message
    on one line of stderr and exit status 1, not a traceback: the message names the fix."""
    from highnoon.data.store_errors import StoreError

    try:
        yield
    except (StoreError, validation.InvalidArgumentError) as error:
        raise SystemExit(f"highnoon-prepare-data: {type(error).__name__}: {error}") from None


def _write_orders(paths: list[str], strategies: list[str]) -> list[dict[str, Any]]:
    """Write the missing or stale ``strategies`` orders into each store; what each now has."""
    done = []
    for path in paths:
        written = stored_order.write_orders(path, strategies, only_missing=True)
        logging.info("%s: orders %s written", path, sorted(written) or "(all present)")
        done.append({"path": path, "orders": list(strategies), "written": sorted(written)})
    return done


def _upgrade(path: str) -> dict[str, Any]:
    """Rewrite the store at ``path`` as format 3 and stamp its orders; what was done."""
    from highnoon.data.store_upgrade import upgrade_store

    done = upgrade_store(path)
    done["orders"] = stored_order.restamp_orders(
        done["path"], done["old_fingerprint"], done["fingerprint"]
    )
    logging.info("%s: %d shards upgraded, orders %s", path, done["upgraded"], done["orders"])
    return done


def _verify(paths: list[str]) -> None:
    """Check every block of the stores at ``paths``; print what was checked."""
    from highnoon.data.store import TokenStore

    checked = []
    for path in paths:
        store = TokenStore.open(path, verify=True)
        store.verify()
        checked.append({"path": path, "num_samples": store.num_samples,
                        "shards": store.num_shards, "fingerprint": store.fingerprint})  # fmt: skip
        logging.info("%s: %d shards verified", path, store.num_shards)
    print(json.dumps({"verified": checked}, indent=2))


def run() -> None:
    """Console-script entry point (``highnoon-prepare-data``)."""
    hn_flags.run(main, key_flags=hn_flags.GIN_FLAGS)


if __name__ == "__main__":
    run()
