"""The package's shape: imports run one way, and settings are declared once."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from highnoon.training import settings as settings_lib

# What each subpackage may import from highnoon: utils <- data <- curriculum <- training,
# with models and distribute beside (they may use utils only), and evaluation (lm-eval) between
# data/models and training.
ALLOWED = {
    "utils": {"utils"},
    "data": {"utils", "data"},
    "curriculum": {"utils", "data", "curriculum"},
    "models": {"utils", "models"},
    "distribute": {"utils", "distribute"},
    "training": {"utils", "data", "curriculum", "models", "distribute", "training", "evaluation"},
    # lm-eval's model and the in-loop evaluation's parts: training uses them, not the reverse
    "evaluation": {"utils", "data", "models", "evaluation"},
}

# matplotlib is made unimportable first: no module needs it to import (the plots import it
# when they draw, and name the extra that installs it).
_PROBE = """
import importlib, json, pkgutil, sys
sys.modules["matplotlib"] = None
package = importlib.import_module(sys.argv[1])
tensorflow_on_import = "tensorflow" in sys.modules
for info in pkgutil.walk_packages(package.__path__, sys.argv[1] + "."):
    importlib.import_module(info.name)
loaded = sorted({m.split(".")[1] for m in sys.modules if m.startswith("highnoon.")})
print(json.dumps({"loaded": loaded, "tensorflow_on_import": tensorflow_on_import,
                  "tensorflow": "tensorflow" in sys.modules}))
"""


def _probe(package: str) -> dict:
    """Imports ``highnoon.<package>`` and then every module in it, in a fresh interpreter
    (which TensorFlow is not in yet)."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, f"highnoon.{package}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


# Every package probed in one interpreter: TensorFlow and Keras (third-party) are imported once,
# up front, and before each package every highnoon (and gin, whose registry highnoon's modules
# fill) module is dropped from sys.modules, so each probe loads highnoon from nothing, as a fresh
# interpreter would; TensorFlow's import (5 s of CPU) is paid once instead of per package.
_LAYERS_PROBE = """
import importlib, json, pkgutil, sys
sys.modules["matplotlib"] = None
import tensorflow, keras
loaded = {}
for name in sys.argv[1:]:
    for module in [m for m in sys.modules if m.split(".")[0] in ("highnoon", "gin")]:
        del sys.modules[module]
    package = importlib.import_module(name)
    for info in pkgutil.walk_packages(package.__path__, name + "."):
        importlib.import_module(info.name)
    loaded[name] = sorted({m.split(".")[1] for m in sys.modules if m.startswith("highnoon.")})
print(json.dumps(loaded))
"""


@pytest.fixture(scope="module")
def loaded_by_package() -> dict[str, set[str]]:
    """highnoon subpackage -> the highnoon subpackages importing it and all its modules loads."""
    packages = [f"highnoon.{name}" for name in sorted(ALLOWED)]
    out = subprocess.run(
        [sys.executable, "-c", _LAYERS_PROBE, *packages],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    return {name.split(".")[1]: set(found) for name, found in loaded.items()}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_one_way(package, loaded_by_package):
    loaded = loaded_by_package[package]
    assert package in loaded  # the probe really imported it
    assert loaded <= ALLOWED[package], f"highnoon.{package} imports {loaded - ALLOWED[package]}"


def test_the_curriculum_never_imports_tensorflow():
    probe = _probe("curriculum")
    assert probe["tensorflow_on_import"] is False and probe["tensorflow"] is False


def test_gin_registration_and_data_preparation_import_no_tensorflow():
    """Every launch program imports ``configurables`` before gin parses; preparing data (and
    checking a config) builds no model, so neither that nor ``prepare_data`` may pull in
    TensorFlow or Keras (5 s of CPU a process): the KerasHub factory imports them when called.
    The report program imports without matplotlib, like every module the probes above load."""
    probe = (
        "import json, sys\n"
        "sys.modules['matplotlib'] = None\n"
        "import highnoon.launch.configurables, highnoon.launch.prepare_data\n"
        "import highnoon.launch.curriculum_report\n"
        "print(json.dumps(sorted({'tensorflow', 'keras', 'keras_hub'} & set(sys.modules))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == []


def test_the_trainer_signature_derives_from_the_settings():
    from highnoon.training.trainer import Trainer

    params = inspect.signature(Trainer.__init__).parameters
    declared = [f.name for cls in settings_lib.SETTING_CLASSES for f in dataclasses.fields(cls)]
    assert set(params) == {"self", "model", "tokenizer", "strategy", *declared}
    assert list(params)[2:6] == list(settings_lib.POSITIONAL)
    for field in (f for cls in settings_lib.SETTING_CLASSES for f in dataclasses.fields(cls)):
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


# -- the training package's own import graph ------------------------------------------------
_ROOT = Path(__file__).resolve().parents[1]


def _import_graph(package: str) -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """Edges between the modules of ``package`` (every import statement, function-level ones
    included: a lazy import still ties two modules together) and the private names
    (``_name``) one module imports from another."""
    modules = {}
    for path in (_ROOT / package.replace(".", "/")).rglob("*.py"):
        parts = list(path.relative_to(_ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges: dict[str, set[str]] = {name: set() for name in modules}
    private: list[tuple[str, str]] = []
    for name, path in sorted(modules.items()):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    whole = f"{node.module}.{alias.name}"
                    target = whole if whole in modules else node.module
                    if target in modules and target != name:
                        edges[name].add(target)
                    if alias.name.startswith("_") and node.module.startswith("highnoon."):
                        private.append((name, whole))
            elif isinstance(node, ast.Import):
                edges[name] |= {a.name for a in node.names if a.name in modules} - {name}
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(found)


def test_the_cycle_finder_finds_a_circle_through_a_lazy_import():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_training_package_has_no_import_circle_and_no_private_imports():
    edges, private = _import_graph("highnoon.training")
    assert _cycles(edges) == []
    assert private == []
    # The step engines share the loss arithmetic instead of importing each other.
    assert "highnoon.training.step" not in edges["highnoon.training.sharding.engine"]
    assert "highnoon.training.losses" in edges["highnoon.training.sharding.engine"]


# -- gin at the binary ------------------------------------------------------------------------
def _imports_gin(path: Path) -> bool:
    """Whether ``path`` imports gin anywhere (a function-level import counts)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(
            a.name == "gin" or a.name.startswith("gin.") for a in node.names
        ):
            return True
        module = node.module if isinstance(node, ast.ImportFrom) and not node.level else None
        if module and (module == "gin" or module.startswith("gin.")):
            return True
    return False


def test_gin_reaches_the_library_only_at_trainer_and_run_training(tmp_path):
    (tmp_path / "lazy.py").write_text("def f():\n    from gin import config\n", encoding="utf-8")
    (tmp_path / "plain.py").write_text("import ginx\n", encoding="utf-8")
    assert _imports_gin(tmp_path / "lazy.py") and not _imports_gin(tmp_path / "plain.py")
    library = _ROOT / "highnoon"
    importers = {
        path.relative_to(_ROOT).as_posix()
        for path in library.rglob("*.py")
        if not path.is_relative_to(library / "launch") and _imports_gin(path)
    }
    assert importers == {"highnoon/training/trainer.py", "highnoon/training/run.py"}
