"""The KerasHub model factory a gin file binds (``kerashub_causal_lm``), importable without
Keras.

``highnoon.launch.configurables`` registers ``causal_lm`` with gin, and every launch program
imports that module before gin parses; ``highnoon-prepare-data`` and the report's config checks
need no model, so importing TensorFlow and Keras for them (5 s of CPU a process) was waste.
Keras and keras_hub are imported when a model is built. ``highnoon.models.kerashub`` (the
wrapper the Trainer trains a KerasHub model through) re-exports these names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from highnoon.models.contract import ModelContractError
from highnoon.utils import validation as v

if TYPE_CHECKING:
    import keras

INSTALL_HINT = "pip install 'highnoon[kerashub]' (keras-hub>=0.32,<0.33)"


def import_keras_hub() -> Any:
    """keras_hub, or an error naming the extra that installs it."""
    try:
        import keras_hub
    except ImportError as error:
        raise ModelContractError(
            f"KerasHub models need the keras-hub package: {INSTALL_HINT}"
        ) from error
    return keras_hub


def causal_lm(
    task: str = "GPT2CausalLM",
    *,
    preset: str | None = None,
    load_weights: bool = False,
    backbone: dict[str, Any] | None = None,
    seed: int = 0,
    tokenizer: Any = None,
) -> keras.Model:
    """A KerasHub causal LM without a preprocessor, from a config or a local preset (no
    download): the model factory a gin file binds (``gin/runs/kerashub_gpt2.gin``).

    Args:
      task: the class in ``keras_hub.models``, e.g. ``"GPT2CausalLM"``, ``"LlamaCausalLM"``,
        ``"GemmaCausalLM"``.
      preset: a preset directory (``save_to_preset``) or a preset KerasHub has cached; with
        ``load_weights=False`` only its config is used.
      backbone: the backbone's constructor arguments (instead of ``preset``); a missing
        ``vocabulary_size`` is the tokenizer's.
      seed: the initial weights' seed (every worker builds the same weights).
      tokenizer: the run's tokenizer (``run_training`` passes it); sizes the vocabulary.

    Weights are created under the strategy in scope (``build_trainer`` calls the factory
    inside it), as ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy`` need.
    """
    keras_hub = import_keras_hub()
    task = v.check_str("task", task)
    cls = getattr(keras_hub.models, task, None)
    if cls is None or not is_kerashub_causal_lm_class(cls):
        known = sorted(n for n in dir(keras_hub.models) if n.endswith("CausalLM"))
        raise v.InvalidArgumentError(
            f"task={task!r} is not a CausalLM class of keras_hub.models; use one of {known}"
        )
    if (preset is None) == (backbone is None):
        raise v.InvalidArgumentError(
            "causal_lm: give the model as preset= (a preset directory) or as backbone= (a "
            "dict of the backbone's arguments), exactly one"
        )
    v.check_int("seed", seed)
    import keras  # with the model, not on import

    keras.utils.set_random_seed(seed)
    if preset is not None:
        v.check_str("preset", preset)
        return cls.from_preset(preset, load_weights=v.check_bool("load_weights", load_weights),
                               preprocessor=None)  # fmt: skip
    arguments = dict(v.check_mapping("backbone", backbone))
    if "vocabulary_size" not in arguments and tokenizer is not None:
        arguments["vocabulary_size"] = int(tokenizer.vocab_size)
    return cls(backbone=cls.backbone_cls(**arguments), preprocessor=None)


def is_kerashub_causal_lm_class(cls: type) -> bool:
    return any(
        base.__name__ == "CausalLM" and base.__module__.startswith("keras_hub")
        for base in cls.__mro__
    )
