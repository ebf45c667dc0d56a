"""Pacing functions against hand-computed values, pool rounding and bad input."""

from __future__ import annotations

import math

import pytest

from highnoon.curriculum.pacing import Pacing, canonical_pacing, pool_size


def test_reference_defaults_staircase() -> None:
    pacing = Pacing()
    epochs = [0, 9, 10, 29, 30, 49, 50, 69, 70, 89, 90, 500]
    expected = [0.2, 0.2, 0.36, 0.36, 0.52, 0.52, 0.68, 0.68, 0.84, 0.84, 1.0, 1.0]
    assert [pacing.fraction(e) for e in epochs] == expected
    assert [pacing.stage(e) for e in epochs] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert pacing.horizon == 90 and pacing.unit == "epoch"


def test_reference_custom_staircase() -> None:
    pacing = Pacing(initial_fraction=0.5, num_stages=2, warmup_epochs=0, stage_increment_epochs=3)
    # stage 1 at epoch 0 (no warm-up), stage 2 at epoch 3
    assert [pacing.fraction(e) for e in range(5)] == [0.75, 0.75, 0.75, 1.0, 1.0]


def test_linear() -> None:
    pacing = Pacing(name="linear", total_epochs=100)
    assert pacing.fraction(0) == 0.2
    assert pacing.fraction(25) == pytest.approx(0.4, abs=1e-15)
    assert pacing.fraction(99) == pytest.approx(0.2 + 0.8 * 0.99, abs=1e-15)
    assert pacing.fraction(100) == 1.0 and pacing.fraction(1000) == 1.0
    assert [pacing.stage(e) for e in (0, 19, 20, 99, 100)] == [0, 0, 1, 4, 5]


def test_linear_default_horizon_is_reference_end() -> None:
    pacing = Pacing(name="linear")
    assert pacing.horizon == 90
    assert pacing.fraction(45) == pytest.approx(0.6, abs=1e-15)


def test_root_p_competence() -> None:
    pacing = Pacing(name="root_p", total_epochs=100)
    # c(t) = min(1, (t (1 - c0^2) / T + c0^2) ^ (1/2))
    assert pacing.fraction(0) == pytest.approx(0.2, abs=1e-15)
    assert pacing.fraction(50) == pytest.approx(math.sqrt(0.52), abs=1e-15)
    assert pacing.fraction(25) == pytest.approx(math.sqrt(0.28), abs=1e-15)
    assert pacing.fraction(100) == 1.0
    cubic = Pacing.create("root_p", {"p": 3}, total_epochs=10)
    assert cubic.fraction(5) == pytest.approx((0.5 * (1 - 0.008) + 0.008) ** (1 / 3), abs=1e-15)
    assert Pacing.create("root_p", None, 3, total_epochs=10).p == 3


def test_discrete_staircase() -> None:
    pacing = Pacing(name="discrete", num_stages=4, initial_fraction=0.2, total_epochs=8)
    # stairs of 2 epochs: 0.2, 0.4, 0.6, 0.8, then 1.0 at epoch 8
    assert [pacing.fraction(e) for e in range(10)] == [
        0.2,
        0.2,
        0.4,
        0.4,
        0.6,
        0.6,
        0.8,
        0.8,
        1.0,
        1.0,
    ]


def test_exponential_staircase() -> None:
    pacing = Pacing(name="exponential", num_stages=2, initial_fraction=0.25, total_epochs=4)
    # 0.25, then 0.25 ** 0.5 = 0.5, then 1.0: the pool doubles each stair
    assert [pacing.fraction(e) for e in range(6)] == [0.25, 0.25, 0.5, 0.5, 1.0, 1.0]


def test_constant() -> None:
    pacing = Pacing(name="constant", initial_fraction=0.5)
    assert [pacing.fraction(e) for e in (0, 10, 1000)] == [0.5, 0.5, 0.5]
    assert pacing.stage(1000) == 0 and pacing.stage_fraction(3) == 0.5
    assert Pacing(name="constant", initial_fraction=1.0).fraction(7) == 1.0


def test_step_axis() -> None:
    pacing = Pacing(name="linear", total_steps=1000, initial_fraction=0.5)
    assert pacing.unit == "step" and pacing.horizon == 1000
    assert pacing.fraction(0) == 0.5
    assert pacing.fraction(500) == 0.75
    assert pacing.fraction(1000) == 1.0


def test_stage_fraction_levels() -> None:
    assert [Pacing().stage_fraction(s) for s in range(7)] == [
        0.2,
        0.36,
        0.52,
        0.68,
        0.84,
        1.0,
        1.0,
    ]
    exp = Pacing(name="exponential", num_stages=2, initial_fraction=0.25)
    assert [exp.stage_fraction(s) for s in range(3)] == [0.25, 0.5, 1.0]


def test_pool_size_rounds_down_to_global_batches() -> None:
    assert pool_size(0.36, 100, 1) == 36
    assert pool_size(0.36, 100, 8) == 32
    assert pool_size(0.01, 100, 8) == 8  # at least one global batch
    assert pool_size(1.0, 100, 8) == 96
    assert pool_size(0.6799999999999999, 100, 1) == 68  # 1-ulp noise does not lose a sample


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"name": "cosine"}, "pacing"),
        ({"initial_fraction": 0.0}, "initial_fraction"),
        ({"initial_fraction": 1.5}, "initial_fraction"),
        ({"initial_fraction": float("nan")}, "initial_fraction"),
        ({"num_stages": 0}, "num_stages"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"stage_increment_epochs": 0}, "stage_increment_epochs"),
        ({"name": "linear", "total_epochs": 0}, "total_epochs"),
        ({"name": "linear", "total_steps": -5}, "total_steps"),
        ({"name": "reference", "total_steps": 10}, "total_steps"),
        ({"name": "root_p", "p": 0.0}, "p="),
    ],
)
def test_bad_pacing_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Pacing(**kwargs)


def test_bad_pacing_options_and_time() -> None:
    with pytest.raises(ValueError, match="pacing_options"):
        Pacing.create("linear", {"p": 2})
    with pytest.raises(ValueError, match="pacing='sigmoid'"):
        Pacing.create("sigmoid")
    with pytest.raises(ValueError, match=r"epoch=-1 must be an integer >= 0"):
        Pacing().fraction(-1)
    with pytest.raises(ValueError, match=r"step=-3"):
        Pacing(name="linear", total_steps=10).fraction(-3)


def test_a_one_epoch_stage_keeps_warmup_staircase_under_either_name(tmp_path):
    """A one-epoch stage switches every pacing to the whole data except the warm-up staircase,
    and the alias 'reference' names that same pacing."""
    from highnoon.data import prepare_stage_store
    from highnoon.training.settings import StageSettings
    from highnoon.training.stage_plan import StagePlan
    from tests.trainer_helpers import write_jsonl

    path = write_jsonl(str(tmp_path / "d.jsonl"), [f"sample {i}" * (1 + i % 5) for i in range(64)])
    store = prepare_stage_store(path, "byte", str(tmp_path / "cache"), progress=False)

    def pacing_of(name: str) -> str:
        settings = StageSettings(
            batch_size=8,
            max_seq_length=16,
            eval_fraction=0.0,
            curriculum_strategy="size_based",
            pacing=name,
        )
        scheduler = StagePlan(0, "s", settings, 1, store, 0).scheduler
        return canonical_pacing(scheduler.pacing.name)

    assert pacing_of("warmup_staircase") == pacing_of("reference") == "warmup_staircase"
    assert pacing_of("linear") == "constant"
