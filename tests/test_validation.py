"""One place for argument checks, hashes and remote paths: what ``highnoon.utils`` promises and
the package keeps (numpy only, no TensorFlow)."""

from __future__ import annotations

import ast
import json
import os

import numpy as np
import pytest

import highnoon
from highnoon.curriculum import CurriculumScheduler, Pacing, canonical_pacing
from highnoon.data.sources import FileSource
from highnoon.distribute.cluster import read_tf_config
from highnoon.utils import hashing
from highnoon.utils.files import is_remote
from highnoon.utils.validation import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidDataError,
)

PACKAGE = os.path.dirname(highnoon.__file__)

# Modules allowed to raise a bare ValueError/TypeError for an argument check: none.
BARE_RAISES_ALLOWED: set[str] = set()


def _bare_raises(path: str) -> list[int]:
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    lines = []
    for node in ast.walk(tree):
        value = node.exc if isinstance(node, ast.Raise) else getattr(node, "value", None)
        if isinstance(node, ast.Raise | ast.Return) and isinstance(value, ast.Call):
            func = value.func
            if isinstance(func, ast.Name) and func.id in ("ValueError", "TypeError"):
                lines.append(node.lineno)
    return lines


def test_argument_errors_come_from_utils_validation():
    found = {}
    for root, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, PACKAGE).replace(os.sep, "/")
                if rel != "utils/validation.py" and (lines := _bare_raises(path)):
                    found[rel] = lines
    assert set(found) <= BARE_RAISES_ALLOWED, {
        k: v for k, v in found.items() if k not in BARE_RAISES_ALLOWED
    }


def test_routed_errors_keep_their_messages_and_classes():
    with pytest.raises(InvalidArgumentError, match=r"^scores=\[\] is empty; the curriculum"):
        CurriculumScheduler().prepare_curriculum_from_scores([])
    with pytest.raises(InvalidArgumentTypeError, match=r"^seed='1' must be an integer \(got str\)"):
        CurriculumScheduler(seed="1")
    with pytest.raises(TypeError, match="cannot derive a key from"):
        hashing.derive_key(object())


def test_malformed_content_is_invalid_data_naming_where(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(InvalidDataError, match=r"bad\.jsonl' line 2 is not valid JSON"):
        list(FileSource([str(bad)]).iter_samples())
    with pytest.raises(InvalidDataError, match=r"^TF_CONFIG must be a JSON object, got '\[1\]'"):
        read_tf_config({"TF_CONFIG": "[1]"})


def test_sha256_helpers_agree_with_the_standard_vectors(tmp_path):
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hashing.sha256_hex("abc") == hashing.sha256_hex(b"abc") == abc
    assert hashing.sha256_hex("abc", chars=10) == abc[:10]
    assert hashing.sha256_digest("abc").hex() == abc
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * (3 << 20) + b"bc")  # several 1 MB blocks and a tail
    streamed = hashing.new_sha256()
    streamed.update(b"a" * (3 << 20))
    streamed.update(b"bc")
    assert hashing.sha256_file(str(path)) == streamed.hexdigest()
    assert hashing.sha256_file(str(path)) == hashing.sha256_hex(path.read_bytes())


def test_is_remote_is_a_url_scheme_only():
    assert is_remote("gs://bucket/run") and is_remote("ram://x")
    assert not is_remote("/tmp/run") and not is_remote("relative/dir")
    assert not is_remote(os.path.join("a", "b"))


def test_reference_pacing_is_an_alias_of_warmup_staircase():
    assert canonical_pacing("reference") == "warmup_staircase"
    assert canonical_pacing("linear") == "linear"
    old, new = Pacing(name="reference"), Pacing(name="warmup_staircase")
    assert old.name == "reference" and Pacing().name == "warmup_staircase"  # kept as given
    epochs = range(0, 100)
    assert [old.fraction(e) for e in epochs] == [new.fraction(e) for e in epochs]
    assert [new.fraction(e) for e in (0, 9, 10, 30, 89, 90)] == [0.2, 0.2, 0.36, 0.52, 0.84, 1.0]
    with pytest.raises(InvalidArgumentError, match=r"^pacing='reference' counts epochs"):
        Pacing(name="reference", total_steps=10)
    with pytest.raises(InvalidArgumentError, match=r"^pacing='warmup_staircase' counts epochs"):
        Pacing(name="warmup_staircase", total_steps=10)


def test_a_state_saved_under_the_old_pacing_name_loads_under_the_new_one():
    scores = np.arange(40, dtype=np.float64)
    old = CurriculumScheduler(pacing="reference", global_batch_size=4)
    old.prepare_curriculum_from_scores(scores)
    state = json.loads(json.dumps(old.get_state()))
    assert state["params"]["pacing"] == "reference"  # saved states read as before
    new = CurriculumScheduler(global_batch_size=4)  # the default: "warmup_staircase"
    new.load_state(state, scores=scores)
    for epoch in (0, 10, 50):
        np.testing.assert_array_equal(
            new.host_epoch_indices(epoch, 0, 1), old.host_epoch_indices(epoch, 0, 1)
        )
    with pytest.raises(InvalidArgumentError, match=r"differ from this scheduler's"):
        CurriculumScheduler(pacing="linear", global_batch_size=4).load_state(state)


def test_check_sample_indices_names_the_array_and_what_holds_the_samples():
    from highnoon.utils.validation import check_sample_indices

    out = check_sample_indices("rows", np.array([[0, 2]], dtype=np.int32), 3, ndim=2)
    assert out.dtype == np.int64 and out.tolist() == [[0, 2]]
    with pytest.raises(
        InvalidArgumentError,
        match=r"^rows holds sample indices in \[0, 3\], but the store has 3 samples "
        r"\(allowed: \[0, 3\)\)$",
    ):
        check_sample_indices("rows", [[0, 3]], 3, ndim=2, owner="the store")
    with pytest.raises(
        InvalidArgumentError,
        match=r"^rows must be a 2-D integer array \[steps, rows_per_step\], got shape \(2, 0\)",
    ):
        check_sample_indices(
            "rows", np.zeros((2, 0), np.int64), 3, ndim=2, shape="[steps, rows_per_step]"
        )
    with pytest.raises(InvalidArgumentError, match=r"^stream must be a 1-D integer array, got"):
        check_sample_indices("stream", [0.5], 3)


def test_curriculum_names_still_import_from_training_as_the_curriculum_ones():
    import highnoon.curriculum as curriculum
    import highnoon.training as training

    for name in ("CurriculumScheduler", "AdaptiveCurriculumScheduler", "create_curriculum_batches"):
        assert getattr(training, name) is getattr(curriculum, name)
