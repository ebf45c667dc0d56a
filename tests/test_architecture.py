"""The package's shape: imports run one way, and settings are declared once."""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys

import pytest

from highnoon.training import settings as settings_lib

# What each subpackage may import from highnoon: utils <- data <- curriculum <- training,
# with models and distribute beside (they may use utils only).
ALLOWED = {
    "utils": {"utils"},
    "data": {"utils", "data"},
    "curriculum": {"utils", "data", "curriculum"},
    "models": {"utils", "models"},
    "distribute": {"utils", "distribute"},
    "training": {"utils", "data", "curriculum", "models", "distribute", "training"},
}

_PROBE = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
tensorflow_on_import = "tensorflow" in sys.modules
for info in pkgutil.walk_packages(package.__path__, sys.argv[1] + "."):
    importlib.import_module(info.name)
loaded = sorted({m.split(".")[1] for m in sys.modules if m.startswith("highnoon.")})
print(json.dumps({"loaded": loaded, "tensorflow_on_import": tensorflow_on_import,
                  "tensorflow": "tensorflow" in sys.modules}))
"""


def _probe(package: str) -> dict:
    """Imports ``highnoon.<package>`` and then every module in it, in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, f"highnoon.{package}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_one_way(package):
    loaded = set(_probe(package)["loaded"])
    assert loaded <= ALLOWED[package], f"highnoon.{package} imports {loaded - ALLOWED[package]}"


def test_the_curriculum_never_imports_tensorflow():
    probe = _probe("curriculum")
    assert probe["tensorflow_on_import"] is False and probe["tensorflow"] is False


def test_the_trainer_signature_derives_from_the_settings():
    from highnoon.training.trainer import Trainer

    params = inspect.signature(Trainer.__init__).parameters
    declared = [f.name for f in dataclasses.fields(settings_lib.StageSettings)] + [
        f.name for f in dataclasses.fields(settings_lib.RunOptions)
    ]
    assert set(params) == {"self", "model", "tokenizer", "strategy", *declared}
    assert list(params)[2:6] == list(settings_lib.POSITIONAL)
    for field in dataclasses.fields(settings_lib.StageSettings) + dataclasses.fields(
        settings_lib.RunOptions
    ):
        expected = settings_lib._default(field)
        assert params[field.name].default == expected, field.name
    assert (
        tuple(f.name for f in dataclasses.fields(settings_lib.StageSettings))
        == settings_lib.STAGE_OVERRIDABLE
    )


def test_gin_binds_every_setting_and_refuses_unknown_ones():
    import gin

    from highnoon.training.trainer import Trainer

    with gin.unlock_config():
        gin.parse_config(["Trainer.clip_norm = None", "Trainer.allow_data_change = True"])
    try:
        model = __import__("highnoon").create_model("highnoon-nano", max_seq_length=16)
        trainer = Trainer(model, verbose=False)
        assert trainer.settings.clip_norm is None and trainer.options.allow_data_change is True
        with pytest.raises(ValueError, match="clip_nrom"), gin.unlock_config():
            gin.parse_config(["Trainer.clip_nrom = None"])
    finally:
        gin.clear_config()


def test_the_readme_table_is_the_generated_one():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert settings_lib.settings_table() in readme
