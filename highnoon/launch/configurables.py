"""The library's gin knobs outside the run, registered from the launch package.

T5X's "gin at the binary": library modules are plain functions; gin reaches the library itself
only at ``Trainer`` and ``run_training`` (the run's settings). Everything else a gin file binds
is registered here, under the names users already write (``create_model.dropout``,
``highnoon.models.create_model.name_or_config``, ``create_strategy.peer_timeout_seconds``,
``register_datasets.mapping``, ``prepare_datasets.max_samples``, ``prepare_stage_store.verify``),
and this module exposes the configured callables the launch programs call.

Importing this module registers them (before gin parses a file that binds them); the launch's
``flags.parse_gin`` imports it. A Python user who parses gin themselves imports it too and calls
these callables, e.g. ``configurables.create_model()``: the plain ``highnoon.create_model``
ignores gin.
"""

from __future__ import annotations

from typing import Any

import gin

from highnoon.data import prepare as _prepare
from highnoon.data import registry as _registry
from highnoon.data import stage_data as _stage_data
from highnoon.distribute import strategy as _strategy
from highnoon.models import factory as _factory
from highnoon.models import kerashub_factory as _kerashub
from highnoon.utils.validation import InvalidArgumentError


@gin.configurable("create_model", module="highnoon.models")
def create_model(name_or_config: Any = None, **options: Any) -> Any:
    """``highnoon.create_model`` with gin's bindings; a run file's ``%gin.REQUIRED`` model left
    unbound is refused here, naming the binding to add."""
    if name_or_config is gin.REQUIRED:
        raise InvalidArgumentError(
            "highnoon.models.create_model.name_or_config is required but unbound: include one of "
            "gin/models/*.gin or bind it to a preset name"
        )
    if callable(name_or_config):  # another model factory, e.g. @kerashub_causal_lm
        return name_or_config(**options)
    return _factory.create_model(name_or_config, **options)


# A KerasHub causal LM as the run's model: `create_model.name_or_config = @kerashub_causal_lm`
# (gin/runs/kerashub_gpt2.gin).
kerashub_causal_lm = gin.external_configurable(
    _kerashub.causal_lm, name="kerashub_causal_lm", module="highnoon.models"
)


# Each keeps the module it was registered under before (its full gin name is unchanged).
create_strategy = gin.external_configurable(
    _strategy.create_strategy, name="create_strategy", module="highnoon.distribute.strategy"
)
register_dataset = gin.external_configurable(
    _registry.register_dataset, name="register_dataset", module="highnoon.data.registry"
)
register_datasets = gin.external_configurable(
    _registry.register_datasets, name="register_datasets", module="highnoon.data.registry"
)
prepare_datasets = gin.external_configurable(
    _prepare.prepare_datasets, name="prepare_datasets", module="highnoon.data.prepare"
)
prepare_stage_store = gin.external_configurable(
    _stage_data.prepare_stage_store, name="prepare_stage_store", module="highnoon.data.stage_data"
)


def prepare_datasets_output_dir() -> str | None:
    """``prepare_datasets.output_dir`` as the parsed gin files bind it (None when unbound): the
    launch program locks it before preparing."""
    try:
        return gin.query_parameter("highnoon.data.prepare.prepare_datasets.output_dir")
    except ValueError:
        return None


__all__ = [
    "create_model",
    "create_strategy",
    "kerashub_causal_lm",
    "prepare_datasets",
    "prepare_datasets_output_dir",
    "prepare_stage_store",
    "register_dataset",
    "register_datasets",
]
