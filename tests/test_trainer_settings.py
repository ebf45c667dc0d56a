"""Trainer settings that used to pass the constructor and fail later (at train(), or only on
several replicas) are refused at the call that receives them, naming the setting and the fix.
Nothing here trains: every check runs before anything is built. (Gin adds a line naming the
configurable to errors raised in the constructor; the first line is the message.)"""

from __future__ import annotations

import math

import numpy as np
import pytest

from highnoon.utils.validation import InvalidArgumentError, InvalidArgumentTypeError
from tests.trainer_helpers import corpus, make_trainer, write_jsonl


@pytest.fixture()
def texts(tmp_path):
    return write_jsonl(str(tmp_path / "a.jsonl"), corpus(0, 8))


def _first_line(err: pytest.ExceptionInfo) -> str:
    return str(err.value).splitlines()[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": 2**70}, f"seed={2**70} must be an integer in [0, 4294967295]"),
        ({"seed": 2**32}, "seed=4294967296 must be an integer in [0, 4294967295]"),
        (
            {"pacing_options": {"q": 2}},
            "pacing_options={'q': 2} has unknown key(s) ['q']: pacing='linear' takes no options",
        ),
        (
            {"pacing": "root_p", "pacing_options": {"q": 2}},
            "pacing_options={'q': 2} has unknown key(s) ['q']: pacing='root_p' takes only ['p']",
        ),
        (
            {"pacing": "root_p", "pacing_options": {"p": "x"}},
            "pacing_options['p']='x' must be a finite number > 0.0 (got str)",
        ),
        (
            {"pacing": "root_p", "pacing_options": {"p": math.inf}},
            "pacing_options['p']=inf must be a finite number > 0.0",
        ),
        (
            {"optimizer": "sgd", "sharding": "optimizer"},
            "optimizer='sgd' with sharding='optimizer': sharding keeps shares of the moments of "
            "['adamw', 'adam'] only; use one of those optimizers or sharding=None",
        ),
    ],
)
def test_values_that_failed_later_are_refused_by_the_constructor(tmp_path, kwargs, message):
    with pytest.raises(InvalidArgumentError) as err:
        make_trainer(tmp_path, **kwargs)
    assert _first_line(err) == message


def test_xla_collectives_are_refused_on_one_cpu_replica(tmp_path):
    """Not only where a sharded step would use them: the config would fail on several."""
    with pytest.raises(InvalidArgumentError) as err:
        make_trainer(tmp_path, collectives="xla")
    assert _first_line(err).startswith("collectives='xla' needs TPUStrategy (the step's")
    assert _first_line(err).endswith("use collectives='auto' (xla on TPU, portable elsewhere) or "
                                   "'portable'")  # fmt: skip
    assert make_trainer(tmp_path, collectives="portable").options.collectives == "portable"


def test_numpy_values_are_taken_as_python_ones(tmp_path):
    trainer = make_trainer(
        tmp_path,
        batch_size=np.int64(4),
        seed=np.uint32(2**32 - 1),
        learning_rate=np.float32(0.5),
        pacing="root_p",
        pacing_options={"p": np.int64(3)},
    )
    assert trainer.settings.batch_size == 4 and type(trainer.settings.batch_size) is int
    assert trainer.options.seed == 2**32 - 1 and type(trainer.options.seed) is int
    assert trainer.settings.learning_rate == 0.5
    assert trainer.settings.pacing_options == {"p": 3}
    assert type(trainer.settings.pacing_options["p"]) is int  # saved as JSON, fingerprinted


@pytest.mark.parametrize(
    ("datasets", "overrides", "error", "message"),
    [
        (
            42,
            {},
            InvalidArgumentTypeError,
            "stage 's': datasets=42 must be a dataset entry (a registered name, a path or glob, "
            "'tfds:NAME', a DataSource or (entry, weight)), or a list of them (got int)",
        ),
        (
            None,  # the fixture's file
            {"pacing_options": {"q": 2}},
            InvalidArgumentError,
            "stage 's': pacing_options={'q': 2} has unknown key(s) ['q']: pacing='linear' takes "
            "no options",
        ),
        (
            None,
            {"pacing": "root_p", "pacing_options": {"p": "x"}},
            InvalidArgumentTypeError,
            "stage 's': pacing_options['p']='x' must be a finite number > 0.0 (got str)",
        ),
    ],
)
def test_bad_stage_values_are_refused_by_add_curriculum_stage(
    tmp_path, texts, datasets, overrides, error, message
):
    trainer = make_trainer(tmp_path)
    with pytest.raises(error) as err:
        trainer.add_curriculum_stage("s", texts if datasets is None else datasets, **overrides)
    assert str(err.value) == message
    assert trainer.stages == []
    trainer.add_curriculum_stage("s", texts, pacing="root_p", pacing_options={"p": 3})
    assert [stage.name for stage in trainer.stages] == ["s"]
