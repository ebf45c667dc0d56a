"""Preparation on Apache Beam (``highnoon.data.beam_prepare``): its index and shard arithmetic,
its checks, and the store it writes against the one-process ``build_token_store``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from highnoon.data import beam_prepare as bp
from highnoon.data.tokenizers import load_tokenizer
from highnoon.utils.validation import InvalidArgumentError

# --- checks, before any work ----------------------------------------------------------------


def test_check_runner_accepts_known_names_and_lists_them_otherwise():
    assert bp.check_runner("directrunner") == "DirectRunner"
    assert bp.check_runner("DataflowRunner") == "DataflowRunner"
    assert bp.check_runner("NONE") == "none"
    with pytest.raises(InvalidArgumentError) as err:
        bp.check_runner("SparkRunnr")
    message = str(err.value)
    assert "runner='SparkRunnr'" in message
    for name in ("'none'", "'DirectRunner'", "'DataflowRunner'", "'FlinkRunner'", "'SparkRunner'"):
        assert name in message


def test_parse_beam_options_gives_beam_its_arguments():
    assert bp.parse_beam_options("") == []
    assert bp.parse_beam_options(
        "--direct_num_workers=2 --direct_running_mode=multi_processing --project 'my p'"
    ) == ["--direct_num_workers=2", "--direct_running_mode=multi_processing", "--project", "my p"]


def test_local_workers_log_warnings_only_unless_the_user_says_otherwise():
    level = lambda options: options.get_all_options()["default_sdk_harness_log_level"]  # noqa: E731
    assert level(bp.pipeline_options("DirectRunner", [])) == "WARNING"
    given = ["--default_sdk_harness_log_level=DEBUG"]
    assert level(bp.pipeline_options("DirectRunner", given)) == "DEBUG"
    assert level(bp.pipeline_options("DataflowRunner", [])) is None  # Beam's own default


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("--direct_num_workers=2 direct_running_mode=multi_processing", "'direct_running_mode="),
        ("--project='unclosed", "malformed"),
        ("--direct_num_workrs=2", "--direct_num_workrs"),
        ("--direct_num_workers=two", "invalid int value: 'two'"),
        ("--direct_running_mode=many", "invalid choice: 'many'"),
        ("-x", "'-x'"),
    ],
)
def test_parse_beam_options_names_the_bad_token(text, named):
    with pytest.raises(InvalidArgumentError, match="beam_options") as err:
        bp.parse_beam_options(text)
    assert named in str(err.value)


def test_prepare_datasets_refuses_bad_runner_and_options_before_any_work(tmp_path):
    from highnoon.data.prepare import prepare_datasets

    out = tmp_path / "out"
    with pytest.raises(InvalidArgumentError, match="runner='Dataflow'"):
        prepare_datasets(["arithmetic"], str(out), runner="Dataflow")
    with pytest.raises(InvalidArgumentError, match="--direct_num_workers: expected one argument"):
        prepare_datasets(["arithmetic"], str(out), beam_options="--direct_num_workers")
    with pytest.raises(InvalidArgumentError, match="need a Beam runner"):
        prepare_datasets(["arithmetic"], str(out), runner="none", num_shards=2)
    with pytest.raises(InvalidArgumentError, match="num_shards"):
        prepare_datasets(["arithmetic"], str(out), num_shards=0)
    with pytest.raises(InvalidArgumentError, match="runs its workers on other machines"):
        prepare_datasets(["arithmetic"], str(out), runner="DataflowRunner")
    assert not out.exists()  # nothing was created, let alone read


def test_without_apache_beam_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    import sys

    from highnoon.data.registry import resolve_dataset

    monkeypatch.setitem(sys.modules, "apache_beam", None)  # as if not installed
    with pytest.raises(InvalidArgumentError, match=r"pip install highnoon\[beam\]"):
        bp.build_store_on_beam(resolve_dataset("arithmetic"), "byte", str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()


# --- the index and the shard boundaries -----------------------------------------------------


def test_chunk_starts_number_samples_in_source_order_whatever_the_arrival_order():
    metas = [((1, 0), 4), ((0, 1), 2), ((0, 0), 3), ((2, 0), 0), ((2, 1), 5)]
    starts, total = bp.chunk_starts(metas)
    assert starts == {(0, 0): 0, (0, 1): 3, (1, 0): 5, (2, 0): 9, (2, 1): 9}
    assert total == 14


def test_even_and_token_bounds():
    assert bp.even_bounds(10, 3).tolist() == [0, 3, 6, 10]
    assert bp.even_bounds(2, 5).tolist() == [0, 1, 2]  # never an empty shard
    # stored lengths are lengths + 1 (EOS): 3, 5, 2, 4, 1 -> ends 3, 8, 10, 14, 15
    lengths = np.array([2, 4, 1, 3, 0])
    assert bp.token_bounds(lengths, 8).tolist() == [0, 2, 5]  # 8 | 7
    assert bp.token_bounds(lengths, 6).tolist() == [0, 2, 4, 5]  # 8 | 6 | 1
    assert bp.token_bounds(lengths, 100).tolist() == [0, 5]
    assert bp.token_bounds(lengths, 1).tolist() == [0, 1, 2, 3, 4, 5]


def test_split_chunk_cuts_at_shard_bounds_and_keeps_empty_samples_with_the_previous():
    # a chunk of samples [e, a(2), b(1), e, c(3), e] whose first non-empty sample is index 4
    lengths = np.array([0, 2, 1, 0, 3, 0])
    bounds = np.array([0, 4, 5, 6, 9])
    # the leading empty one goes with sample 3 (in the chunk before): shard 0
    assert list(bp.split_chunk(4, lengths, bounds)) == [(0, 0, 1), (1, 1, 2), (2, 2, 4), (3, 4, 6)]
    # at the very start of the corpus, empty samples go with the first shard
    assert list(bp.split_chunk(0, np.array([0, 0, 1]), np.array([0, 1]))) == [(0, 0, 3)]
    assert list(bp.split_chunk(0, np.zeros(0, np.int64), np.array([0, 1]))) == []


def test_stored_chunk_parts_are_what_the_writer_stores_for_those_samples(tmp_path):
    """A chunk tokenised once (``stored_samples``), saved, loaded and cut at shard bounds gives
    each shard the bytes, lengths, CRCs and skip counts ``ShardWriter.add`` gives it."""
    from highnoon.data.shards import ShardWriter, stored_samples

    lengths = np.array([0, 2, 1, 0, 3, 0])
    flat = np.array([10, 11, 20, 30, 31, 32])
    path = str(tmp_path / "chunk.bin")
    bp._save_chunk(path, stored_samples(flat, lengths, 300, 1))
    stored = bp._load_chunk(path, np.dtype("<u2"))
    assert stored.tokens.tolist() == [10, 11, 1, 20, 1, 30, 31, 32, 1]
    assert stored.lengths.tolist() == lengths.tolist() and stored.skipped_empty == 3
    pieces = [(0, 0, 1), (1, 1, 2), (2, 2, 4), (3, 4, 6)]  # the cuts of the test above
    ends = np.cumsum(lengths)
    for shard, lo, hi in pieces:
        part = stored.part(lo, hi)
        direct = ShardWriter(str(tmp_path / f"direct-{shard}"), 300, 1)
        direct.add(flat[ends[lo] - lengths[lo] : ends[hi - 1]], lengths[lo:hi])
        cut = ShardWriter(str(tmp_path / f"cut-{shard}"), 300, 1, count_tokens=False)
        cut.add_stored(part)
        want, got = direct.close(), cut.close()
        assert got.counts is None and want.counts.sum() == got.num_tokens
        assert (got.num_samples, got.num_tokens, got.max_token_id, got.skipped_empty) == (
            want.num_samples, want.num_tokens, want.max_token_id, want.skipped_empty
        )  # fmt: skip
        for name in ("tokens.bin", "offsets.bin", "sample_crc32c.bin"):
            a, b = tmp_path / f"direct-{shard}" / name, tmp_path / f"cut-{shard}" / name
            assert a.read_bytes() == b.read_bytes(), (shard, name)
    assert [stored.part(lo, hi).skipped_empty for _, lo, hi in pieces] == [1, 0, 1, 1]


def test_read_units_split_files_in_sorted_order(tmp_path):
    from highnoon.data.registry import resolve_dataset

    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        (tmp_path / name).write_text('{"text": "x"}\n' if name.endswith("jsonl") else "x")
    source = resolve_dataset(str(tmp_path))
    units = bp.read_units(source)
    assert [u.paths for u in units] == [
        [str(tmp_path / n)] for n in ("a.jsonl", "b.jsonl", "c.txt")
    ]
    assert bp.read_units(source, max_samples=2) == [source]  # a cap counts across files
    assert [len(c) for c in bp.iter_chunks(units[0], chunk_chars=1)] == [1]


def test_unit_samples_mark_where_each_file_ends_and_sum_the_files_stats(tmp_path):
    from highnoon.data.read_units import UNIT_END, unit_samples
    from highnoon.data.registry import resolve_dataset

    (tmp_path / "a.jsonl").write_bytes(b'{"text": "a1"}\n{"text": "bad \xff"}\n')
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "b1"}\n{"text": "b\xff"}\n')
    (tmp_path / "c.txt").write_text("c")
    source = resolve_dataset(str(tmp_path))
    samples = list(unit_samples(source))
    assert samples == ["a1", "bad \ufffd", UNIT_END, "b1", "b\ufffd", UNIT_END, "c"]
    assert source.stats == {"invalid_utf8_replaced": 2}
    # one unit (a cap counts across files): the samples alone
    assert list(unit_samples(source, max_samples=3)) == ["a1", "bad \ufffd", "b1"]
    one_file = resolve_dataset(str(tmp_path / "a.jsonl"))
    assert list(unit_samples(one_file)) == ["a1", "bad \ufffd"]


# --- the output directory: one preparation at a time, a killed one restarts cleanly ----------

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "workers", "prepare_worker.py")


def test_prepare_lock_refuses_a_second_preparation_naming_the_first(tmp_path):
    from highnoon.launch.prepare_lock import PrepareLock
    from highnoon.training.run_lock import ModelDirLockedError

    with PrepareLock(str(tmp_path)) as first:
        assert os.path.basename(first.path) == "prepare.lock"
        with pytest.raises(ModelDirLockedError) as err:
            PrepareLock(str(tmp_path)).acquire()
    message = str(err.value)
    assert "is being written by another preparation" in message
    assert f"pid={os.getpid()}" in message and "use another output_dir" in message
    with PrepareLock(str(tmp_path)):  # released on exit: free again
        pass


def _worker(marker, stall: bool, out, *flags: str):
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, WORKER, str(marker), "1" if stall else "0", f"--output_dir={out}",
         *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip


@pytest.mark.multiprocess
@pytest.mark.slow
def test_second_preparation_refuses_and_a_killed_one_restarts_cleanly(tmp_path):
    import time

    from highnoon.data.prepare import prepare_datasets
    from highnoon.data.registry import register_dataset, unregister_dataset
    from highnoon.data.store import TokenStore

    out = tmp_path / "out"
    marker = tmp_path / "marker"
    first = _worker(marker, True, out)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the preparation never reached its stall"
            time.sleep(0.2)
        # mid-run: a staging directory, no store, no manifest anywhere
        staged = sorted(p.name for p in (out / "sources").iterdir())
        assert len(staged) == 1 and ".tmp-" in staged[0], staged
        assert not list(out.rglob("manifest.json")) and not (out / "datasets.json").exists()
        second = _worker(tmp_path / "marker2", False, out)
        _, err = second.communicate(timeout=120)
        assert second.returncode != 0
        assert "is being written by another preparation" in err
        assert f"pid={first.pid}" in err
        assert not (tmp_path / "marker2").exists()  # refused before reading any sample
    finally:
        first.kill()
        first.communicate()
    rerun = _worker(tmp_path / "marker3", False, out)
    _, err = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, err[-3000:]
    assert "taking over the lock of a preparation that is gone" in err  # the killed one
    names = sorted(p.name for p in (out / "sources").iterdir())
    assert len(names) == 1 and ".tmp-" not in names[0], names  # the temporary is gone
    (item,) = json.loads((out / "datasets.json").read_text())["datasets"]
    assert item["num_samples"] == 397 and item["skipped"]["empty"] == 3
    store = TokenStore.open(item["path"], verify=True)

    # the same store as the one-process build of the same data
    from tests.workers.prepare_worker import samples

    register_dataset("counted", lambda: samples(str(tmp_path / "marker4"), False))
    try:
        index = prepare_datasets(["counted"], str(tmp_path / "one"), runner="none", progress=False)
    finally:
        unregister_dataset("counted")
    assert index["datasets"][0]["fingerprint"] == store.fingerprint


# --- the store: the same as the one-process build's -----------------------------------------

SHARD_TOKENS = 700  # 4 or 5 shards of the corpus below


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """3 JSONL files of short texts (every 7th empty, one line with invalid UTF-8)."""
    directory = tmp_path_factory.mktemp("corpus")
    rng = np.random.Generator(np.random.PCG64(0))
    for f in range(3):
        lines = []
        for i in range(60):
            n = int(rng.integers(1, 40)) if i % 7 else 0
            text = "".join(chr(97 + int(c)) for c in rng.integers(0, 26, n))
            lines.append(json.dumps({"text": text}).encode())
        lines[5] = b'{"text": "bad \xff byte"}'
        (directory / f"part-{f}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return str(directory / "*.jsonl")


@pytest.fixture(scope="module")
def one_process(corpus, tmp_path_factory):
    """The reference: ``build_token_store`` in one process, as ``prepare_stage_store`` calls it."""
    from highnoon.data.read_units import unit_samples
    from highnoon.data.registry import resolve_dataset
    from highnoon.data.store import build_token_store

    source = resolve_dataset(corpus)
    path = str(tmp_path_factory.mktemp("one") / "store")
    return build_token_store(
        unit_samples(source), "byte", path, sources=[source.describe()], skipped=source.stats,
        max_shard_tokens=SHARD_TOKENS, progress=False,
    )  # fmt: skip


def _on_beam(corpus, path, **options):
    from highnoon.data.registry import resolve_dataset

    return bp.build_store_on_beam(resolve_dataset(corpus), "byte", str(path), **options)


def _assert_same_data(store, reference):
    from highnoon.curriculum.scoring import scores_from_features

    assert store.num_samples == reference.num_samples
    everything = np.arange(reference.num_samples)
    for got, want in zip(store.gather(everything), reference.gather(everything)):
        np.testing.assert_array_equal(got, want)
    for name in ("lengths", "surprisal_sum"):
        np.testing.assert_array_equal(
            getattr(store.features, name), getattr(reference.features, name)
        )
    for strategy in ("size_based", "difficulty_based", "mixed"):
        np.testing.assert_array_equal(
            scores_from_features(store.features, strategy),
            scores_from_features(reference.features, strategy),
        )
    assert store.manifest["skipped"] == reference.manifest["skipped"]
    assert store.manifest["sources"] == reference.manifest["sources"]


def test_beam_store_is_the_one_process_store(corpus, one_process, tmp_path):
    # small chunks: every file is cut in several, and shards cut through chunks
    from highnoon.data.registry import resolve_dataset
    from highnoon.data.shards import unit_shard_name

    store = _on_beam(corpus, tmp_path / "s", max_shard_tokens=SHARD_TOKENS, chunk_chars=150)
    # each file (read unit) cut by the token rule on its own: no shard spans two files
    sizes, names = [], []
    for u, unit in enumerate(bp.read_units(resolve_dataset(corpus))):
        _, lengths = load_tokenizer("byte").encode_batch(list(unit.iter_samples()))
        per_unit = np.diff(bp.token_bounds(lengths[lengths > 0], SHARD_TOKENS)).tolist()
        sizes += per_unit
        names += [unit_shard_name(u, k) for k in range(len(per_unit))]
    assert [s["num_samples"] for s in one_process.manifest["shards"]] == sizes
    assert [s["name"] for s in one_process.manifest["shards"]] == names
    assert len(sizes) >= 5  # several shards per file, cut inside chunks
    # every file holds 9 empty samples, its first one of them: that one is counted in the
    # shard before it (the previous file's last), the first file's in its own first shard
    skipped = [0, 0, 0]
    for name in names:
        with open(os.path.join(one_process.path, name, "shard.json"), encoding="utf-8") as f:
            skipped[int(name.split("-")[1])] += json.load(f)["skipped_empty"]
    assert skipped == [9 + 1, 9, 9 - 1]
    assert one_process.manifest["skipped"]["empty"] == 3 * 9
    assert one_process.manifest["skipped"]["invalid_utf8_replaced"] == 3
    assert store.fingerprint == one_process.fingerprint
    assert store.manifest["shards"] == one_process.manifest["shards"]
    _assert_same_data(store, one_process)
    assert not [n for n in os.listdir(tmp_path) if n != "s"]  # no temporaries left
    assert sorted(os.listdir(tmp_path / "s")) == ["manifest.json"] + [
        m["name"] for m in one_process.manifest["shards"]
    ]


def _jsonl(path, lengths):
    """A JSONL file of texts of these lengths (0: an empty sample)."""
    path.write_bytes(b"".join(json.dumps({"text": "x" * n}).encode() + b"\n" for n in lengths))


def _shard_facts(store):
    """(name, samples, empty samples counted) of each shard, in order."""
    facts = []
    for entry in store.manifest["shards"]:
        with open(os.path.join(store.path, entry["name"], "shard.json"), encoding="utf-8") as f:
            facts.append((entry["name"], entry["num_samples"], json.load(f)["skipped_empty"]))
    return facts


def test_files_without_samples_write_no_shard_on_beam_as_in_one_process(tmp_path):
    """A file of empty samples only writes no shard: its empty samples, like a file's leading
    ones, are counted in the shard before it, or the first shard when none precedes."""
    from highnoon.data.read_units import unit_samples
    from highnoon.data.registry import resolve_dataset
    from highnoon.data.store import build_token_store

    for number, lengths in enumerate([[0] * 3, [1, 2, 3, 4, 5], [0] * 3, [0, 1, 2, 3, 4], [0] * 3]):
        _jsonl(tmp_path / f"part-{number}.jsonl", lengths)
    pattern = str(tmp_path / "*.jsonl")
    source = resolve_dataset(pattern)
    one = build_token_store(
        unit_samples(source), "byte", str(tmp_path / "one"), sources=[source.describe()],
        skipped=source.stats, max_shard_tokens=8, progress=False,
    )  # fmt: skip
    # stored lengths 2, 3, 4 | 5, 6 (a shard closes at 8 ids): files 1 and 3 two shards each
    assert _shard_facts(one) == [
        ("unit-00001-shard-00000", 3, 3),  # file 0's empty samples: no shard precedes
        ("unit-00001-shard-00001", 2, 4),  # file 2's three, file 3's leading one
        ("unit-00003-shard-00000", 3, 0),
        ("unit-00003-shard-00001", 1, 3),  # file 4's three
    ]
    assert one.manifest["skipped"]["empty"] == 10
    beam = _on_beam(pattern, tmp_path / "beam", max_shard_tokens=8)
    assert _shard_facts(beam) == _shard_facts(one)
    assert beam.fingerprint == one.fingerprint
    _assert_same_data(beam, one)


def test_files_of_empty_samples_only_are_an_empty_dataset_on_beam(tmp_path):
    from highnoon.utils.validation import InvalidDataError

    for number in range(2):
        _jsonl(tmp_path / f"part-{number}.jsonl", [0, 0])
    with pytest.raises(InvalidDataError, match="the dataset is empty: no sample had any token"):
        _on_beam(str(tmp_path / "*.jsonl"), tmp_path / "s")
    assert not (tmp_path / "s").exists() and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


@pytest.fixture(scope="module")
def even_store(corpus, tmp_path_factory):
    """The corpus prepared on Beam into 4 shards of equal sample counts."""
    return _on_beam(corpus, tmp_path_factory.mktemp("even") / "s", num_shards=4)


def test_num_shards_cuts_even_sample_ranges_of_the_same_data(even_store, one_process):
    store = even_store
    n = one_process.num_samples
    assert [s["num_samples"] for s in store.manifest["shards"]] == [
        (k + 1) * n // 4 - k * n // 4 for k in range(4)
    ]
    assert [s["name"] for s in store.manifest["shards"]] == [
        f"shard-{k:05d}-of-00004" for k in range(4)
    ]
    _assert_same_data(store, one_process)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_worker_processes_write_the_same_store(corpus, one_process, tmp_path):
    store = _on_beam(
        corpus, tmp_path / "s", max_shard_tokens=SHARD_TOKENS, chunk_chars=150,
        beam_options="--direct_num_workers=2 --direct_running_mode=multi_processing",
    )  # fmt: skip
    assert store.fingerprint == one_process.fingerprint
    # the worker processes never imported TensorFlow (seconds of start-up each)
    preparation = store.manifest["preparation"]
    assert preparation["shards_with_tensorflow"] == 0, preparation
    assert set(preparation["cpu_seconds"]) == {"read", "tokenise", "write_shards"}


def test_lean_local_workers_skip_beams_unused_imports_and_keep_other_site_hooks(tmp_path):
    """The workers' ``sitecustomize`` marks pandas & co and Beam's BigQuery IO absent, then runs
    the one it hides."""
    import subprocess
    import sys

    other = tmp_path / "other"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import builtins\nbuiltins.OTHER_SITE_RAN = True\n")
    probe = (
        "import builtins, sys; import apache_beam; "
        "print(sorted(n for n in ('pandas', 'pyarrow', 'boto3') if sys.modules[n]), "
        "getattr(builtins, 'OTHER_SITE_RAN', False), 'requests' in sys.modules, "
        "'apache_beam.io.textio' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([bp.LEAN_SITE, str(other), REPO])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env=env, timeout=120, check=True)  # fmt: skip
    # BigQuery IO (and the requests it brings) is absent too; the rest of Beam's IO is there
    assert out.stdout.split() == ["[]", "True", "False", "True"]


def test_a_lean_beam_worker_leaves_without_teardown_unless_it_failed(tmp_path):
    """A Beam SDK worker (the runner sets CONTROL_API_SERVICE_DESCRIPTOR) that ends cleanly
    exits at once, output flushed; a failed one keeps its status and traceback; any other
    process on the lean path tears down as usual."""
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(
        "import sys\n"
        "class Loud:\n"
        "    def __del__(self):\n"
        "        print(' teardown', end='')\n"
        "keep = Loud()\n"
        "print('done', end='')\n"
        "if sys.argv[1:] == ['fail']:\n"
        "    raise RuntimeError('the bundle failed')\n"
    )

    def run(*args: str, worker: bool) -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([bp.LEAN_SITE, REPO])}
        env.pop("CONTROL_API_SERVICE_DESCRIPTOR", None)
        if worker:
            env["CONTROL_API_SERVICE_DESCRIPTOR"] = "url: 'localhost:1'"
        return subprocess.run([sys.executable, str(script), *args], capture_output=True,
                              text=True, env=env, timeout=60)  # fmt: skip

    clean = run(worker=True)
    assert (clean.returncode, clean.stdout) == (0, "done")
    failed = run("fail", worker=True)
    assert failed.returncode == 1 and "RuntimeError: the bundle failed" in failed.stderr
    other = run(worker=False)
    assert (other.returncode, other.stdout) == (0, "done teardown")


def test_lean_local_workers_only_for_local_processes_reading_files(corpus, monkeypatch):
    from highnoon.data.registry import resolve_dataset
    from highnoon.data.sources import CallableSource

    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    units = bp.read_units(resolve_dataset(corpus))
    processes = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    options = bp.pipeline_options("DirectRunner", processes)
    with bp.lean_local_workers("DirectRunner", options, units) as lean:
        assert lean and os.environ["PYTHONPATH"] == os.pathsep.join([bp.LEAN_SITE, "/somewhere"])
    assert os.environ["PYTHONPATH"] == "/somewhere"
    callable_source = CallableSource("mine", lambda: iter(["text"]), {"name": "mine"})
    in_memory = bp.pipeline_options("DirectRunner", [])
    for runner, opts, these in [("DirectRunner", in_memory, units),
                                ("DirectRunner", options, [callable_source])]:  # fmt: skip
        with bp.lean_local_workers(runner, opts, these) as lean:
            assert not lean and os.environ["PYTHONPATH"] == "/somewhere"


def test_local_workers_keep_freed_memory_unless_the_user_set_the_allocator(monkeypatch):
    """Local worker processes start with ``WORKER_MALLOC``; a variable the user set wins, other
    runners are left alone, and the environment is restored."""
    for name in bp.WORKER_MALLOC:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    processes = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    options = bp.pipeline_options("DirectRunner", processes)
    with bp.reused_worker_memory("DirectRunner", options) as values:
        assert values == {
            "MALLOC_MMAP_THRESHOLD_": "268435456",
            "MALLOC_TRIM_THRESHOLD_": "268435456",
        }
        assert os.environ["MALLOC_ARENA_MAX"] == "4"
        assert os.environ["MALLOC_MMAP_THRESHOLD_"] == "268435456"
    assert "MALLOC_MMAP_THRESHOLD_" not in os.environ and os.environ["MALLOC_ARENA_MAX"] == "4"
    in_memory = bp.pipeline_options("DirectRunner", [])
    with bp.reused_worker_memory("DirectRunner", in_memory) as values:
        assert values == {} and "MALLOC_TRIM_THRESHOLD_" not in os.environ


def test_direct_runner_is_the_fn_api_runner_not_a_prism_download():
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    options = bp.pipeline_options("DirectRunner", ["--direct_num_workers=2"])
    runner = bp.pipeline_runner("DirectRunner", options)
    assert isinstance(runner, FnApiRunner)
    assert bp.pipeline_runner("DataflowRunner", options) == "DataflowRunner"


def test_same_training_batches_from_either_store(even_store, one_process):
    from highnoon.curriculum.scheduler import CurriculumScheduler
    from highnoon.curriculum.scoring import scores_from_features
    from highnoon.data import make_host_dataset

    batches = []
    for each in (one_process, even_store):
        scheduler = CurriculumScheduler(
            "difficulty_based", verbose=False, global_batch_size=8, seed=3
        )
        scheduler.prepare_curriculum_from_scores(
            scores_from_features(each.features, "difficulty_based")
        )
        rows = scheduler.host_epoch_indices(2, 1, 2)
        batches.append([b["inputs"].numpy() for b in make_host_dataset(each, rows, 16)])
    assert len(batches[0]) > 1
    for got, want in zip(batches[1], batches[0]):
        np.testing.assert_array_equal(got, want)


def test_prepare_datasets_on_beam_and_in_one_process_agree_and_reuse(tmp_path, monkeypatch):
    """A single stream (an embedded dataset) takes the other path: its text chunks are spread to
    be tokenised. The store lands where a run's data_cache_dir finds it; a second preparation
    reuses it."""
    from highnoon.data.prepare import prepare_datasets

    one = prepare_datasets(["arithmetic"], str(tmp_path / "one"), max_samples=300, runner="none",
                           progress=False)  # fmt: skip
    beam = prepare_datasets(["arithmetic"], str(tmp_path / "beam"), max_samples=300)
    (a,), (b,) = one["datasets"], beam["datasets"]
    assert a["fingerprint"] == b["fingerprint"] and b["num_samples"] == 300
    assert os.path.relpath(a["path"], tmp_path / "one") == os.path.relpath(
        b["path"], tmp_path / "beam"
    )

    def no_build(*args, **kwargs):
        raise AssertionError("a complete store was prepared again")

    monkeypatch.setattr(bp, "build_store_on_beam", no_build)
    again = prepare_datasets(["arithmetic"], str(tmp_path / "beam"), max_samples=300)
    assert again["datasets"] == beam["datasets"]


def test_launcher_refuses_an_unknown_runner_and_malformed_beam_options(tmp_path):
    import subprocess
    import sys

    def launch(*flags):
        return subprocess.run(
            [sys.executable, "-m", "launch.prepare_data", "--datasets=arithmetic",
             f"--output_dir={tmp_path / 'out'}", *flags],
            capture_output=True, text=True, cwd=REPO, timeout=120,
            env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )  # fmt: skip

    bad_runner = launch("--runner=Sparky")
    assert bad_runner.returncode != 0
    assert "runner='Sparky' is not a known runner" in bad_runner.stderr
    assert "'SparkRunner'" in bad_runner.stderr
    bad_options = launch("--beam_options=--direct_num_workers=2 direct_running_mode=x")
    assert bad_options.returncode != 0
    assert "'direct_running_mode=x' is not a Beam option" in bad_options.stderr
    assert not (tmp_path / "out").exists()


def test_a_remote_output_gets_the_same_shards(corpus, one_process):
    """Shards written through tf.io.gfile (``ram://`` here, ``gs://`` on a cluster): the same
    shard.json files, manifest last, no staging files left."""
    import tensorflow as tf

    path = "ram://beam-prepare-test/store"
    store = _on_beam(corpus, path, max_shard_tokens=SHARD_TOKENS, chunk_chars=150)
    assert store.fingerprint == one_process.fingerprint
    _assert_same_data(store, one_process)
    assert sorted(tf.io.gfile.listdir(path)) == sorted(
        ["manifest.json"] + [m["name"] for m in one_process.manifest["shards"]]
    )
    tf.io.gfile.rmtree("ram://beam-prepare-test")
