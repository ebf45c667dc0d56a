"""The data side of integrity: a run never trains on a corrupt, stale or out-of-vocabulary store.

* a cached store changed in place (same size) is rebuilt with a warning, never returned; a
  store's blocks are checked against their CRC32C when first read (once per file version);
* a source edited so that size and mtime stay the same still rebuilds (content-hash key);
* token ids beyond the model's vocabulary are a clear error when the store is opened;
* a killed build's ``.tmp-`` directory is removed at the next start, a live one's never;
* processes building one cache entry at once all end with the first published store, which
  none of them removes (nor one that replaced a corrupt entry);
* invalid UTF-8 in a source is a console warning with the count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from highnoon.data import (
    ByteTokenizer,
    StoreError,
    TokenStore,
    VocabularyMismatchError,
    blocks,
    build_token_store,
    file_hashes,
    prepare_stage_store,
    remove_stale_build_dirs,
    stage_data,
    store_build,
)
from highnoon.data.shards import SHARD_FILES, sidecar_name
from highnoon.data.store import StoreExistsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["alpha beta", "gamma", "delta epsilon zeta", "eta theta"]
SHARD = "shard-00000-of-00001"


def _write_jsonl(path, texts) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}) + "\n")
    return str(path)


def _decoded(store: TokenStore) -> list[str]:
    tok = ByteTokenizer()
    return [tok.decode(store.sample(i)) for i in range(store.num_samples)]


def _flip_last_byte(path: str) -> None:
    """Change one byte in place, keeping size and mtime (what bit rot or a stray write does)."""
    st = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(st.st_size - 1)
        last = handle.read(1)
        handle.seek(st.st_size - 1)
        handle.write(bytes([last[0] ^ 0x01]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def absl_warnings(caplog):
    caplog.set_level(logging.WARNING)
    return caplog


@pytest.mark.parametrize("damaged", ["tokens.bin", "lengths.bin", "offsets.bin"])
def test_store_changed_in_place_is_rebuilt_with_a_warning(tmp_path, absl_warnings, damaged):
    source = _write_jsonl(tmp_path / "data.jsonl", TEXTS)
    cache = str(tmp_path / "cache")
    first = prepare_stage_store(source, "byte", cache, progress=False)
    assert _decoded(first) == TEXTS
    _flip_last_byte(os.path.join(first.path, SHARD, damaged))
    absl_warnings.clear()

    again = prepare_stage_store(source, "byte", cache, progress=False)

    assert again.path == first.path
    assert _decoded(again) == TEXTS
    assert again.fingerprint == first.fingerprint
    warnings = [r.getMessage() for r in absl_warnings.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"cached token store {first.path} is unusable and is rebuilt")
    assert f"{SHARD}/{damaged}: block 0 " in warnings[0]
    assert warnings[0].endswith("rebuild it")


def _leftovers(directory: str) -> list[str]:
    return [n for n in os.listdir(directory) if ".tmp-" in n or ".old-" in n]


class _Rival:
    """Another process's whole build (``build()``), run once inside a step of this process's
    own: ``store`` is what it returned, ``identity`` the directory it published."""

    def __init__(self, build) -> None:
        self.build, self.started, self.store, self.identity = build, False, None, None

    def during(self, step, *, after: bool = False):
        """``step`` with the rival's build run before its first call (or after it); the
        rival's own calls of ``step`` run it plainly."""

        def patched(*args, **kwargs):
            first = not self.started
            self.started = True
            if first and not after:
                self._run()
            result = step(*args, **kwargs)
            if first and after:
                self._run()
            return result

        return patched

    def _run(self) -> None:
        self.store = self.build()
        self.identity = store_build.directory_identity(self.store.path)


def test_a_build_finishing_second_keeps_the_store_published_first(tmp_path, monkeypatch):
    """Two processes build one path at once: the second to finish must not replace the first's
    store (its builder may be reading it); it gets ``StoreExistsError``, which names the fix."""
    path = str(tmp_path / "s")
    rival = _Rival(lambda: build_token_store(TEXTS, "byte", path, progress=False))
    monkeypatch.setattr(store_build, "_write_shards", rival.during(store_build._write_shards))

    with pytest.raises(StoreExistsError, match=r"created concurrently\); pass overwrite=True"):
        build_token_store(TEXTS[:2], "byte", path, progress=False)

    assert store_build.directory_identity(path) == rival.identity  # not replaced
    rival.store.verify()
    assert _decoded(rival.store) == TEXTS
    assert _leftovers(str(tmp_path)) == []


def test_two_processes_preparing_one_cache_entry_share_the_first_store(tmp_path, monkeypatch):
    """What two hosts on one disk do: both find no entry, both build it; the one finishing
    second uses the store the first published, and the first can still read all of it."""
    source = _write_jsonl(tmp_path / "data.jsonl", TEXTS)
    cache = str(tmp_path / "cache")
    rival = _Rival(lambda: prepare_stage_store(source, "byte", cache, progress=False))
    monkeypatch.setattr(store_build, "_write_shards", rival.during(store_build._write_shards))

    store = prepare_stage_store(source, "byte", cache, progress=False)

    assert store.path == rival.store.path
    assert store_build.directory_identity(store.path) == rival.identity  # not replaced
    rival.store.verify()
    assert _decoded(store) == TEXTS
    assert _leftovers(os.path.join(cache, "sources")) == []


def test_a_corrupt_entry_replaced_by_another_process_is_not_replaced_again(
    tmp_path, monkeypatch, absl_warnings
):
    """Both processes find the entry corrupt; the other one sets it aside and publishes a new
    store first. This one must set aside only the entry it found, so the new store stays."""
    source = _write_jsonl(tmp_path / "data.jsonl", TEXTS)
    cache = str(tmp_path / "cache")
    corrupt = prepare_stage_store(source, "byte", cache, progress=False)
    _flip_last_byte(os.path.join(corrupt.path, SHARD, "tokens.bin"))
    rival = _Rival(lambda: prepare_stage_store(source, "byte", cache, progress=False))
    monkeypatch.setattr(stage_data, "_look", rival.during(stage_data._look, after=True))

    store = prepare_stage_store(source, "byte", cache, progress=False)

    assert store.path == corrupt.path
    assert store_build.directory_identity(store.path) == rival.identity  # not set aside
    assert _decoded(store) == TEXTS
    warnings = [r.getMessage() for r in absl_warnings.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # each process found the corrupt entry once
    assert all("is unusable and is rebuilt" in w for w in warnings)
    assert _leftovers(os.path.join(cache, "sources")) == []


def test_verify_names_the_damaged_file(tmp_path):
    path = str(tmp_path / "s")
    build_token_store(TEXTS, "byte", path, progress=False)
    _flip_last_byte(os.path.join(path, SHARD, "lengths.bin"))
    store = TokenStore.open(path, verify=True)  # sizes still match: opening reads no data
    message = rf"^store '.*/s', {SHARD}/lengths\.bin: block 0 \(byte offset 0, bytes \[0, 32\)\)"
    with pytest.raises(StoreError, match=message):
        store.verify()
    with pytest.raises(StoreError, match=message):
        store.features  # noqa: B018 (the read is the test)
    assert _decoded(store) == TEXTS  # the tokens themselves are intact


def _total_bytes(path: str) -> int:
    """What a full check of a shard reads: every byte of its files, every byte of their side
    files of block CRCs (each page checked), then each block's CRC once more to compare."""
    data = sum(os.path.getsize(os.path.join(path, SHARD, n)) for n in SHARD_FILES)
    sides = sum(os.path.getsize(os.path.join(path, SHARD, sidecar_name(n)))
                for n in SHARD_FILES)  # fmt: skip
    return data + 2 * sides


def test_verification_runs_once_per_process_per_file_version(tmp_path, monkeypatch):
    path = str(tmp_path / "s")
    build_token_store(TEXTS, "byte", path, progress=False)
    monkeypatch.setattr(blocks, "RACY_SECONDS", -1e9)  # files this fresh count as settled
    first = TokenStore.open(path)
    first.verify()
    assert first.bytes_read == _total_bytes(path)
    second = TokenStore.open(path)
    second.verify()
    assert _decoded(second) == TEXTS
    # no block again: only the bytes asked for, each sample's 2 offsets and its ids
    assert second.bytes_read == sum(2 * 8 + (len(t) + 1) * 2 for t in TEXTS)
    time.sleep(0.05)  # a later file-time tick than the build (ticks are a few ms)
    _flip_last_byte(os.path.join(path, SHARD, "tokens.bin"))  # a new version: checked again
    with pytest.raises(StoreError, match=rf"{SHARD}/tokens\.bin: block 0 "):
        TokenStore.open(path).sample(0)


def test_freshly_changed_files_are_not_remembered_as_verified(tmp_path, monkeypatch):
    """A file changed within the file-time granularity could change again unseen: check it."""
    path = str(tmp_path / "s")
    build_token_store(TEXTS, "byte", path, progress=False)
    monkeypatch.setattr(blocks, "RACY_SECONDS", 1e9)
    TokenStore.open(path).verify()
    again = TokenStore.open(path)
    again.verify()
    assert again.bytes_read == _total_bytes(path)


def test_source_edit_keeping_size_and_mtime_rebuilds(tmp_path):
    source = tmp_path / "data.jsonl"
    _write_jsonl(source, ["first text", "second"])
    cache = str(tmp_path / "cache")
    before = prepare_stage_store(str(source), "byte", cache, progress=False)
    st = os.stat(source)
    _write_jsonl(source, ["FIRST TEXT", "second"])  # same size
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime
    assert os.stat(source).st_size == st.st_size

    after = prepare_stage_store(str(source), "byte", cache, progress=False)

    assert _decoded(after) == ["FIRST TEXT", "second"]
    assert after.path != before.path
    recorded = after.manifest["sources"][0]["files"][0]
    assert recorded == {
        "path": str(source),
        "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
    }


def _count_source_hashes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = file_hashes.sha256_file
    monkeypatch.setattr(file_hashes, "sha256_file", lambda p: calls.append(p) or real(p))
    return calls


def test_unchanged_source_is_hashed_once_across_runs(tmp_path, monkeypatch):
    source = _write_jsonl(tmp_path / "data.jsonl", TEXTS)
    cache = str(tmp_path / "cache")
    monkeypatch.setattr(file_hashes, "RACY_SECONDS", 0.0)  # the file counts as settled at once
    calls = _count_source_hashes(monkeypatch)
    first = prepare_stage_store(source, "byte", cache, progress=False)
    assert calls == [source]
    assert len(os.listdir(os.path.join(cache, "file_hashes"))) == 1
    again = prepare_stage_store(source, "byte", cache, progress=False)
    assert calls == [source]  # remembered: not read again
    assert again.path == first.path


def test_remembered_hash_still_sees_an_edit_keeping_size_and_mtime(tmp_path, monkeypatch):
    source = tmp_path / "data.jsonl"
    _write_jsonl(source, ["first text", "second"])
    cache = str(tmp_path / "cache")
    monkeypatch.setattr(file_hashes, "RACY_SECONDS", 0.0)
    calls = _count_source_hashes(monkeypatch)
    prepare_stage_store(str(source), "byte", cache, progress=False)
    st = os.stat(source)
    time.sleep(0.05)  # a later file-time tick than the write above (ticks are a few ms)
    _write_jsonl(source, ["FIRST TEXT", "second"])
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime; ctime moved
    after = prepare_stage_store(str(source), "byte", cache, progress=False)
    assert calls == [str(source), str(source)]
    assert _decoded(after) == ["FIRST TEXT", "second"]


def test_a_hash_taken_right_after_a_change_is_not_remembered(tmp_path, monkeypatch):
    source = _write_jsonl(tmp_path / "data.jsonl", TEXTS)
    cache = str(tmp_path / "cache")
    monkeypatch.setattr(file_hashes, "RACY_SECONDS", 1e9)  # every file is "just changed"
    calls = _count_source_hashes(monkeypatch)
    prepare_stage_store(source, "byte", cache, progress=False)
    prepare_stage_store(source, "byte", cache, progress=False)
    assert calls == [source, source]
    assert not os.path.exists(os.path.join(cache, "file_hashes"))


def test_ids_beyond_the_model_vocabulary_are_an_error_at_open(tmp_path):
    source = _write_jsonl(tmp_path / "data.jsonl", ["~~~", "a"])  # '~' is byte 126 -> id 129
    cache = str(tmp_path / "cache")
    with pytest.raises(VocabularyMismatchError) as info:
        prepare_stage_store(source, "byte", cache, progress=False, vocab_size=128)
    message = str(info.value)
    assert "holds token ids up to 129, but vocab_size=128 (the model's vocabulary)" in message
    assert "the store was built by ByteTokenizer(vocab_size=259)" in message
    assert "Build the model with vocab_size >= 259" in message
    store = prepare_stage_store(source, "byte", cache, progress=False, vocab_size=259)
    assert store.max_token_id == 129
    with pytest.raises(VocabularyMismatchError, match="holds token ids up to 129"):
        TokenStore.open(store.path, vocab_size=100)
    assert TokenStore.open(store.path, verify=True, vocab_size=130).num_samples == 2


def test_vocab_size_must_be_a_positive_int(tmp_path):
    source = _write_jsonl(tmp_path / "data.jsonl", ["a"])
    with pytest.raises(ValueError, match=r"vocab_size=128\.0 must be an integer >= 1"):
        prepare_stage_store(source, "byte", str(tmp_path / "c"), progress=False, vocab_size=128.0)


def test_a_format_1_store_is_refused_with_rebuild(tmp_path):
    path = tmp_path / "s"
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({"format_version": 1, "num_samples": 2}))
    (path / "tokens.bin").write_bytes(b"\0" * 8)
    with pytest.raises(
        StoreError,
        match=r"has format_version=1, this code reads format_version 2 or 3 .*; rebuild the store",
    ):
        TokenStore.open(str(path))


def _start_builder(path: str) -> subprocess.Popen:
    """A real process building a store at ``path`` slowly; prints "started" once it writes."""
    script = textwrap.dedent(
        f"""
        import time
        import numpy as np
        from highnoon.data import build_token_store

        def slow():
            for i in range(10**6):
                if i == 3:
                    print("started", flush=True)
                time.sleep(0.01)
                yield np.array([5, 6])

        build_token_store(slow(), "byte", {path!r}, progress=False)
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )


def _temps(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if ".tmp-" in n)


def test_killed_build_temp_is_removed_at_next_start_live_one_is_kept(tmp_path, absl_warnings):
    cache = tmp_path / "cache"
    sources = cache / "sources"
    killed = _start_builder(str(sources / "killed"))
    live = _start_builder(str(sources / "live"))
    try:
        assert killed.stdout.readline().strip() == "started"
        assert live.stdout.readline().strip() == "started"
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert len(_temps(sources)) == 2
        killed_tmp = next(n for n in _temps(sources) if n.startswith("killed.tmp-"))
        live_tmp = next(n for n in _temps(sources) if n.startswith("live.tmp-"))
        absl_warnings.clear()

        source = _write_jsonl(tmp_path / "data.jsonl", TEXTS)
        prepare_stage_store(source, "byte", str(cache), progress=False)  # the next start

        assert _temps(sources) == [live_tmp]
        messages = [r.getMessage() for r in absl_warnings.records]
        assert (
            f"removed {sources / killed_tmp}, the temporary directory of a killed token store "
            f"build (its builder (pid {killed.pid} on this host) is gone)"
        ) in messages
        assert remove_stale_build_dirs(str(sources)) == []  # the live builder's is kept
    finally:
        for proc in (killed, live):
            proc.kill()
            proc.wait(timeout=30)
    assert remove_stale_build_dirs(str(sources)) == [str(sources / live_tmp)]


def test_other_hosts_temp_is_removed_only_when_idle(tmp_path):
    directory = tmp_path / "sources"
    other = directory / "x.tmp-00000000-1-1-abcdef01"  # host key of no real host here
    other.mkdir(parents=True)
    (other / "tokens.bin").write_bytes(b"\0" * 8)
    assert remove_stale_build_dirs(str(directory)) == []
    assert remove_stale_build_dirs(str(directory), stale_seconds=-1) == [str(other)]


def test_invalid_utf8_is_a_console_warning_with_the_count(tmp_path, absl_warnings):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"text": "fine"}\n{"text": "bad \xff one"}\n{"text": "ok"}\n{"text": "\xfe two"}\n'
    )
    prepare_stage_store(str(path), "byte", str(tmp_path / "cache"), progress=False)
    expected = (
        f"dataset {str(path)!r}: 2 samples had invalid UTF-8, replaced by U+FFFD "
        "(errors='replace'); fix the files, or register the dataset with errors='strict' to "
        "refuse them"
    )
    assert [r.getMessage() for r in absl_warnings.records] == [expected]
    absl_warnings.clear()
    prepare_stage_store(str(path), "byte", str(tmp_path / "cache"), progress=False)  # cached
    assert absl_warnings.records == []  # once per source and process
    stage_data._WARNED_UTF8.clear()  # as in a new process: the cached store's count is said
    prepare_stage_store(str(path), "byte", str(tmp_path / "cache"), progress=False)
    assert [r.getMessage() for r in absl_warnings.records] == [expected]
