"""Registry and sources: every entry form, bad inputs, embedded datasets, stage stores."""

from __future__ import annotations

import json
import os

import gin
import pytest

from highnoon.data import (
    ByteTokenizer,
    EmbeddedSource,
    prepare_stage_store,
    register_dataset,
    register_datasets,
    registered_datasets,
    resolve_dataset,
    unregister_dataset,
    validate_dataset_entry,
)
from highnoon.data.embedded import max_depth_of
from highnoon.launch import configurables

EMBEDDED = ["arithmetic", "brackets", "stdlib_code", "stdlib_docs", "stdlib_instructions"]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "a.txt").write_text("first file\n\nsecond block\nline two\n\n\nthird")
    (tmp_path / "b.txt").write_text("b file")
    (tmp_path / "c.jsonl").write_text(
        json.dumps({"text": "row one"})
        + "\n\n"
        + json.dumps({"text": "row two", "body": "B"})
        + "\n"
    )
    return tmp_path


def texts(entry, **kwargs):
    return list(resolve_dataset(entry, **kwargs).iter_samples())


def test_embedded_datasets_are_registered():
    assert set(EMBEDDED) <= set(registered_datasets())


def test_txt_split_modes(files):
    assert texts(str(files / "a.txt")) == ["first file\n\nsecond block\nline two\n\n\nthird"]
    register_dataset("blocks", str(files / "a.txt"), split="blank_line")
    try:
        assert texts("blocks") == ["first file", "second block\nline two", "third"]
        assert resolve_dataset("blocks").name == "blocks"
    finally:
        unregister_dataset("blocks")
    with pytest.raises(ValueError, match="split='lines' must be one of"):
        register_dataset("bad", str(files / "a.txt"), split="lines")
        try:
            resolve_dataset("bad")
        finally:
            unregister_dataset("bad")


def test_glob_and_directory_are_sorted(files):
    assert texts(str(files / "*.txt"))[1:] == ["b file"]
    assert texts(str(files)) == [
        "first file\n\nsecond block\nline two\n\n\nthird",
        "b file",
        "row one",
        "row two",
    ]


def test_jsonl_fields(files):
    assert texts(str(files / "c.jsonl")) == ["row one", "row two"]
    register_dataset("bodies", str(files / "c.jsonl"), text_field="body")
    try:
        with pytest.raises(
            ValueError, match=r"c.jsonl' line 1 has no string field text_field='body'"
        ):
            texts("bodies")
    finally:
        unregister_dataset("bodies")


def test_jsonl_invalid_line_names_file_and_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl' line 2 is not valid JSON"):
        texts(str(tmp_path / "bad.jsonl"))


def test_invalid_utf8_replace_counts_and_strict_raises(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"ok \xff bytes")
    source = resolve_dataset(str(tmp_path / "x.txt"))
    assert list(source.iter_samples()) == ["ok \ufffd bytes"]
    assert source.stats == {"invalid_utf8_replaced": 1}
    register_dataset("strict", str(tmp_path / "x.txt"), errors="strict")
    try:
        with pytest.raises(ValueError, match=r"x.txt' is not valid UTF-8"):
            texts("strict")
    finally:
        unregister_dataset("strict")


def test_tfrecord_text_and_tokens(tmp_path):
    tf = pytest.importorskip("tensorflow")
    path = str(tmp_path / "d.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        text = tf.train.Example(
            features=tf.train.Features(
                feature={"text": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"hi"]))}
            )
        )
        toks = tf.train.Example(
            features=tf.train.Features(
                feature={"tokens": tf.train.Feature(int64_list=tf.train.Int64List(value=[7, 8]))}
            )
        )
        neither = tf.train.Example(
            features=tf.train.Features(
                feature={"other": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}
            )
        )
        for example in (text, toks, neither):
            writer.write(example.SerializeToString())
    it = resolve_dataset(path).iter_samples()
    assert next(it) == "hi"
    assert next(it).tolist() == [7, 8]
    with pytest.raises(ValueError, match=r"d.tfrecord' record 2 has neither"):
        next(it)


def test_tuple_sets_mixing_weight(files):
    source = resolve_dataset((str(files / "b.txt"), 2.5))
    assert source.mixing_weight == 2.5
    assert resolve_dataset(str(files / "b.txt")).mixing_weight is None  # no weight given
    with pytest.raises(ValueError, match="mixing_weight=-1"):
        resolve_dataset((str(files / "b.txt"), -1))


def test_unknown_entries_list_registered_names(tmp_path):
    with pytest.raises(ValueError, match=r"'no_such_dataset'.*Registered names: \[.*'arithmetic'"):
        resolve_dataset("no_such_dataset")
    with pytest.raises(ValueError, match="matches no files"):
        resolve_dataset(str(tmp_path / "*.jsonl"))
    with pytest.raises(ValueError, match="matches no files"):
        validate_dataset_entry(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="no_such_dataset"):
        validate_dataset_entry("no_such_dataset")
    with pytest.raises(ValueError, match="malformed"):
        validate_dataset_entry("tfds:bad name!")
    validate_dataset_entry("tfds:some_dataset/config:validation")
    validate_dataset_entry(("arithmetic", 0.5))


def test_register_datasets_from_gin(files):
    gin.clear_config()
    gin.parse_config(
        f"""
        register_datasets.mapping = {{
            "gin_txt": "{files / "b.txt"}",
            "gin_jsonl": {{"source": "{files / "c.jsonl"}", "errors": "strict"}},
        }}
        """
    )
    try:
        assert configurables.register_datasets() == ["gin_jsonl", "gin_txt"]
        assert register_datasets() == []  # the library's own ignores gin
        assert texts("gin_txt") == ["b file"]
        assert resolve_dataset("gin_jsonl").describe()["errors"] == "strict"
    finally:
        gin.clear_config()
        unregister_dataset("gin_txt")
        unregister_dataset("gin_jsonl")


def test_callable_source():
    register_dataset("gen", lambda: iter(["x", "y"]))
    try:
        assert texts("gen") == ["x", "y"]
    finally:
        unregister_dataset("gen")


def _tiny_tfds_builder():
    tfds = pytest.importorskip("tensorflow_datasets")

    class HighnoonTinyText(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        # no checksums file to look up (tfds would import importlib_resources for the lookup)
        url_infos = None
        _checksums_path = None

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(3), "test": self._generate_examples(1)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"text": f"tfds sample {i}"}

    return HighnoonTinyText


def test_tfds_prepared_offline(tmp_path):
    builder_cls = _tiny_tfds_builder()
    entry = "tfds:highnoon_tiny_text"
    with pytest.raises(ValueError, match="must be prepared offline"):
        texts(entry, data_dir=str(tmp_path))
    builder_cls(data_dir=str(tmp_path)).download_and_prepare()  # local generation, no network
    assert sorted(texts(entry, data_dir=str(tmp_path))) == [f"tfds sample {i}" for i in range(3)]
    assert texts(entry + ":test", data_dir=str(tmp_path)) == ["tfds sample 0"]
    assert resolve_dataset(entry, data_dir=str(tmp_path)).describe()["version"] == "1.0.0"


def test_arithmetic_is_correct_seeded_and_graded():
    samples = list(EmbeddedSource("arithmetic", max_samples=12, max_digits=3).iter_samples())
    assert len(samples) == 12
    for i, sample in enumerate(samples):
        left, result = sample.split("=")
        op = next(c for c in "+-*" if c in left[1:])
        a, b = left.split(op, 1)
        assert len(a) == len(b) == 1 + i % 3
        assert int(result) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    again = list(EmbeddedSource("arithmetic", max_samples=12, max_digits=3).iter_samples())
    other = list(EmbeddedSource("arithmetic", max_samples=12, max_digits=3, seed=1).iter_samples())
    assert again == samples != other


def test_brackets_balanced_with_exact_depth():
    samples = list(EmbeddedSource("brackets", max_samples=20, max_depth=4).iter_samples())
    for i, sample in enumerate(samples):
        assert max_depth_of(sample) == 1 + i % 4
        stack = []
        for char in sample:
            if char in "([{<":
                stack.append(")]}>"["([{<".index(char)])
            else:
                assert stack.pop() == char
        assert not stack


def test_stdlib_datasets_are_deterministic_and_shaped():
    register_dataset("small_code", "stdlib_code", max_samples=3)
    try:
        code = texts("small_code")
    finally:
        unregister_dataset("small_code")
    assert len(code) == 3 and all(s.startswith("# file: ") for s in code)
    assert code == list(EmbeddedSource("stdlib_code", max_samples=3).iter_samples())
    docs = list(EmbeddedSource("stdlib_docs", max_samples=3).iter_samples())
    assert all("\n\n" in d for d in docs)
    instructions = list(EmbeddedSource("stdlib_instructions", max_samples=3).iter_samples())
    assert all(s.startswith("### Instruction: ") and "\n### Response: " in s for s in instructions)
    with pytest.raises(ValueError, match=r"options \['depth'\]"):
        EmbeddedSource("brackets", depth=3)


def test_prepare_stage_store_caches_and_mixes(tmp_path, files):
    cache = str(tmp_path / "cache")
    single = prepare_stage_store(["arithmetic"], "byte", cache, max_samples=10, progress=False)
    assert single.num_samples == 10
    again = prepare_stage_store(
        "arithmetic", ByteTokenizer(), cache, max_samples=10, progress=False
    )
    assert again.path == single.path
    mixed = prepare_stage_store(
        [("arithmetic", 1.0), (str(files / "b.txt"), 3.0)], "byte", cache, max_samples=10,
        progress=False,
    )  # fmt: skip
    # every sample of every source once, source after source; the weights are recorded
    decoded = [ByteTokenizer().decode(s) for s in mixed.samples(range(mixed.num_samples))]
    assert decoded == [ByteTokenizer().decode(single.sample(i)) for i in range(10)] + ["b file"]
    assert mixed.manifest["mixing"] == {
        "rule": "shares/2",
        "weights": [1.0, 3.0],
        "part_fingerprints": [single.fingerprint, mixed.manifest["mixing"]["part_fingerprints"][1]],
        "part_counts": [10, 1],
    }
    # one entry is the whole stage whatever its weight: its own store
    assert (
        prepare_stage_store(
            [("arithmetic", 0.3)], "byte", cache, max_samples=10, progress=False
        ).path
        == single.path
    )
    # read in place from the parts' stores: nothing is written for the mixture
    assert not os.path.exists(os.path.join(cache, "stages"))
    assert mixed.manifest["parts"] == [single.path, mixed.manifest["parts"][1]]
    again = prepare_stage_store(
        [(str(files / "b.txt"), 3.0), ("arithmetic", 1.0)], "byte", cache, max_samples=10,
        progress=False,
    )  # fmt: skip
    assert again.fingerprint != mixed.fingerprint  # another order is other data


def test_corrupt_cache_entry_is_rebuilt(tmp_path):
    cache = str(tmp_path / "cache")
    store = prepare_stage_store("brackets", "byte", cache, max_samples=4, progress=False)
    fingerprint = store.fingerprint
    (tmp_path / "cache" / "sources" / store.path.split("/")[-1] / "manifest.json").unlink()
    rebuilt = prepare_stage_store("brackets", "byte", cache, max_samples=4, progress=False)
    assert rebuilt.path == store.path and rebuilt.fingerprint == fingerprint
