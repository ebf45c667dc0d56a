"""Generation: the key/value cache, sampling rules, determinism, stopping, input checks, launcher."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from highnoon.models import create_model, save_model_config
from highnoon.models.generation import sample_next

PROMPT = [1, 40, 41, 42, 43]
# One max_length and graph mode (no XLA) everywhere but the XLA test: each (model, max_length,
# cache, jit) combination is traced once, and tracing dominates these tests' time.
FAST = {"max_length": 24, "jit_compile": False}


@pytest.fixture(scope="module")
def model():
    # a larger init spreads the logits, so greedy decoding of an untrained model varies
    m = create_model("highnoon-nano", initializer_range=0.5, init_seed=3)
    m.build()
    return m


def test_decode_step_logits_match_the_full_forward_pass(model):
    ids = np.array([[1, 50, 60, 70, 80, 90, 100, 110]], np.int32)
    full, cache = model.forward(tf.constant(ids))
    # a cache filled from the first 3 positions only; decode the rest one token at a time
    _, prefix_cache = model.forward(tf.constant(np.pad(ids[:, :3], ((0, 0), (0, 5)))))
    cache = prefix_cache
    for i in range(3, 8):
        logits, cache = model.decode_step(tf.constant(ids[:, i]), tf.constant(i), cache)
        np.testing.assert_allclose(logits.numpy(), full.numpy()[:, i], atol=1e-4)


@pytest.mark.slow
def test_cached_and_uncached_greedy_are_identical_under_xla(model):
    cached = model.generate(PROMPT, max_length=24, temperature=0, eos_id=-1)
    uncached = model.generate(PROMPT, max_length=24, temperature=0, eos_id=-1, use_cache=False)
    assert cached == uncached
    assert cached == model.generate(PROMPT, temperature=0, eos_id=-1, **FAST)
    assert len(cached) == 24 and cached[:5] == PROMPT
    assert len(set(cached[5:])) > 5  # a non-trivial continuation
    # greedy: each token is the argmax of the full forward pass over what came before
    logits = model(np.array([cached], np.int32)).numpy()[0]
    assert cached[5:] == np.argmax(logits[4:-1], axis=-1).tolist()


def test_sampling_is_deterministic_per_seed_and_path_independent(model):
    kwargs = dict(temperature=1.0, top_k=0, eos_id=-1, **FAST)
    first = model.generate(PROMPT, seed=7, **kwargs)
    assert first == model.generate(PROMPT, seed=7, **kwargs)
    assert first == model.generate(PROMPT, seed=7, use_cache=False, **kwargs)
    assert first != model.generate(PROMPT, seed=8, **kwargs)
    greedy = model.generate(PROMPT, temperature=0, eos_id=-1, **FAST)
    assert first != greedy


def test_top_k_one_and_tiny_top_p_are_greedy(model):
    greedy = model.generate(PROMPT, temperature=0, eos_id=-1, **FAST)
    assert model.generate(PROMPT, temperature=2.0, top_k=1, seed=1, eos_id=-1, **FAST) == greedy
    assert model.generate(PROMPT, temperature=2.0, top_p=1e-6, seed=1, eos_id=-1, **FAST) == greedy


def test_generation_stops_at_eos(model):
    greedy = model.generate(PROMPT, temperature=0, eos_id=-1, **FAST)
    eos = greedy[8]
    stop = greedy.index(eos)  # the first occurrence of that token ends the output
    assert model.generate(PROMPT, temperature=0, eos_id=eos, **FAST) == greedy[: stop + 1]
    uncached = model.generate(np.array(PROMPT), temperature=0, eos_id=eos, use_cache=False, **FAST)
    assert uncached == greedy[: stop + 1]


def test_string_prompt_returns_prompt_plus_continuation(model):
    text = model.generate("abc", temperature=0, eos_id=-1, **FAST)
    ids = model.generate([1, *[b + 3 for b in b"abc"]], temperature=0, eos_id=-1, **FAST)
    assert isinstance(text, str) and text.startswith("abc")
    expected = bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")
    assert text == expected


def _support(logits, draws=400, **kwargs):
    batch = np.repeat(np.asarray([logits], np.float32), draws, axis=0)
    ids = sample_next(
        tf.constant(batch),
        tf.constant(kwargs.get("temperature", 1.0)),
        tf.constant(kwargs.get("top_k", 0)),
        tf.constant(kwargs.get("top_p", 1.0)),
        tf.constant([5, 9], tf.int32),
    )
    return sorted(set(ids.numpy().tolist()))


def test_top_k_and_top_p_restrict_the_support():
    logits = np.log([0.05, 0.5, 0.15, 0.3])  # order by probability: 1, 3, 2, 0
    assert _support(logits) == [0, 1, 2, 3]
    assert _support(logits, top_k=2) == [1, 3]
    assert _support(logits, top_k=3) == [1, 2, 3]
    assert _support(logits, top_p=0.7) == [1, 3]  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7
    assert _support(logits, top_p=0.85) == [1, 2, 3]
    assert _support(logits, top_p=0.5) == [1]
    assert _support(logits, temperature=0.0) == [1]


def test_sampling_frequencies_follow_the_distribution():
    probs = np.array([0.1, 0.6, 0.3])
    batch = np.repeat(np.log(probs)[None].astype(np.float32), 20000, axis=0)
    ids = sample_next(tf.constant(batch), 1.0, 0, 1.0, tf.constant([1, 2], tf.int32)).numpy()
    freq = np.bincount(ids, minlength=3) / len(ids)
    np.testing.assert_allclose(freq, probs, atol=0.02)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"max_length": 129}, "max_length=129"),
        ({"max_length": 1}, "max_length=1"),
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"top_p": 0.0}, "top_p=0.0"),
        ({"top_k": -2}, "top_k=-2"),
        ({"prompt": list(range(3, 40)), "max_length": 20}, "needs 1 to max_length - 1 = 19 tokens"),
        ({"prompt": [[1, 2]]}, "1-D sequence of int token ids"),
        ({"prompt": [1, 300]}, r"prompt ids must be in \[0, vocab_size=259\)"),
        ({"prompt": []}, "needs 1 to max_length - 1"),
        ({"seed": "x"}, r"seed='x' must be an integer or None \(got str\)"),
        ({"seed": 1.5}, r"seed=1.5 must be an integer or None \(got float\)"),
    ],
)
def test_generate_rejects_bad_arguments(model, kwargs, fragment):
    kwargs = {"prompt": PROMPT, "max_length": 16, **kwargs}
    with pytest.raises(ValueError, match=fragment):
        model.generate(**kwargs)


@pytest.mark.parametrize("filesystem", ["local", "ram"])
def test_launcher_loads_a_checkpoint_and_generates(model, tmp_path, filesystem):
    from highnoon.launch.generate import load_for_generation

    run = str(tmp_path) if filesystem == "local" else f"ram://hn-gen-{tmp_path.name}"
    prefix = tf.train.Checkpoint(model=model).save(f"{run}/ckpt")
    save_model_config(model.config, run)
    loaded, tokenizer = load_for_generation(run, "highnoon-tiny")
    assert loaded.config == model.config
    loaded, tokenizer = load_for_generation(prefix, "highnoon-tiny")
    assert loaded.config == model.config and loaded.tokenizer is tokenizer
    expected = model.generate("hi", temperature=0, **FAST)
    assert loaded.generate("hi", temperature=0, **FAST) == expected
    fresh, _ = load_for_generation(None, "highnoon-nano")
    assert fresh.config.d_model == 64
