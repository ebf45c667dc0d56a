"""The data-quality axis of the embedded tasks: ``noise`` corrupts a keyed share of
``arithmetic`` (wrong answers) and ``brackets`` (unbalanced sequences) and leaves every other
sample exactly as the clean dataset has it."""

from __future__ import annotations

import pytest

from highnoon.data.embedded import EmbeddedSource, is_balanced
from highnoon.utils.validation import InvalidArgumentError


def _correct(sample: str) -> bool:
    left, result = sample.split("=")
    op = next(c for c in "+-*" if c in left[1:])
    a, b = left.split(op, 1)
    return int(result) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


@pytest.mark.parametrize("kind, good", [("arithmetic", _correct), ("brackets", is_balanced)])
def test_noise_corrupts_a_keyed_share_and_keeps_the_rest_clean(kind, good):
    clean = list(EmbeddedSource(kind, max_samples=400).iter_samples())
    noisy = list(EmbeddedSource(kind, max_samples=400, noise=0.3).iter_samples())
    assert all(good(s) for s in clean)
    corrupted = [i for i, s in enumerate(noisy) if not good(s)]
    assert all(noisy[i] == clean[i] for i in range(400) if i not in set(corrupted))
    assert 0.25 < len(corrupted) / 400 < 0.35  # a keyed draw per sample below 0.3
    again = list(EmbeddedSource(kind, max_samples=400, noise=0.3).iter_samples())
    assert again == noisy  # deterministic
    other = list(EmbeddedSource(kind, max_samples=400, noise=0.3, seed=1).iter_samples())
    assert [i for i, s in enumerate(other) if not good(s)] != corrupted  # keyed by the seed
    # the whole share is corrupted: noise=1 leaves no good sample
    assert not any(good(s) for s in EmbeddedSource(kind, max_samples=50, noise=1.0).iter_samples())


def test_a_scrambled_sequence_keeps_its_characters():
    clean = list(EmbeddedSource("brackets", max_samples=50).iter_samples())
    noisy = list(EmbeddedSource("brackets", max_samples=50, noise=1.0).iter_samples())
    assert [sorted(s) for s in noisy] == [sorted(s) for s in clean]


def test_clean_data_keeps_its_description_and_bad_noise_is_refused():
    assert EmbeddedSource("arithmetic").describe()["options"] == {
        "max_samples": 10000,
        "seed": 0,
        "max_digits": 6,
    }
    assert EmbeddedSource("brackets", noise=0.5).describe()["options"]["noise"] == 0.5
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidArgumentError, match=r"arithmetic noise=.* must be a finite"):
            EmbeddedSource("arithmetic", noise=bad)
    with pytest.raises(InvalidArgumentError, match=r"options \['noise'\] are not accepted"):
        EmbeddedSource("stdlib_docs", noise=0.1)
