"""Shared absl flags and gin parsing for the launch programs.

    from highnoon.launch import flags as hn_flags

    def main(argv):
        hn_flags.parse_gin_from_flags()
        strategy = hn_flags.strategy_from_flags()
        hn_flags.set_worker_verbosity(is_chief(strategy))
        ...

    if __name__ == "__main__":
        hn_flags.run(main)   # program.run with the --gin.NAME=VALUE shorthand expanded

`--gin.NAME=VALUE` is shorthand for `--gin_bindings=NAME=VALUE`. `--gin_file` names are looked up
as given, then under `--gin_search_paths`, then in the gin files that ship with highnoon
(`gin_dir()`: the package's `highnoon/gin/` in an installed wheel, the repository's `gin/` in a
checkout), so `--gin_file=runs/quickstart.gin` works from any directory.
"""

from __future__ import annotations

import contextlib
import difflib
import logging as std_logging
import os
import re
import sys
import tokenize
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gin
import gin.config_parser
from absl import app, flags, logging

from highnoon.distribute.cluster import canonical_kind, tf_config_from_worker_hosts
from highnoon.launch import program
from highnoon.utils import validation as v

FLAGS = flags.FLAGS

flags.DEFINE_multi_string(
    "gin_file", [], "Gin config file (repeatable; later files override earlier ones)."
)
flags.DEFINE_multi_string(
    "gin_bindings", [], "Gin binding like 'Trainer.learning_rate = 3e-4' (repeatable, after files)."
)
flags.DEFINE_multi_string(
    "gin_search_paths",
    [],
    "Extra directories to look up --gin_file in (highnoon's own gin files are always searched).",
)
flags.DEFINE_string("model_dir", None, "Where checkpoints, summaries and config.gin go.")
flags.DEFINE_string(
    "strategy", "auto", "auto | tpu | multi_worker | mirrored | one_device (see create_strategy)."
)
flags.DEFINE_string("tpu", None, "TPU: 'local' on a TPU VM, grpc://host:port, or a TPU name.")
flags.DEFINE_string("tpu_zone", None, "Zone of a named TPU (default: this VM's zone).")
flags.DEFINE_string("gcp_project", None, "Project of a named TPU (default: this VM's project).")
flags.DEFINE_string(
    "worker_hosts", None, "Comma-separated host:port of every worker; writes TF_CONFIG."
)
flags.DEFINE_integer("task_index", None, "This worker's index in --worker_hosts.")
flags.DEFINE_bool(
    "log_all_workers",
    False,
    "Log at --verbosity on every worker; by default only the chief does and the other workers "
    "log warnings and errors only.",
)

GIN_FLAGS = ("gin_file", "gin_bindings", "gin_search_paths")
CLUSTER_FLAGS = (
    "model_dir", "strategy", "tpu", "tpu_zone", "gcp_project", "worker_hosts", "task_index",
    "log_all_workers",
)  # fmt: skip


def _valid_strategy(value: str) -> bool:
    try:
        canonical_kind(value)
    except ValueError as error:
        raise flags.ValidationError(str(error)) from None
    return True


def _valid_worker_hosts(values: dict[str, Any]) -> bool:
    """--worker_hosts and --task_index go together; entries are host:port with a valid port."""
    hosts, index = values["worker_hosts"], values["task_index"]
    if hosts is None and index is None:
        return True
    if hosts is None or index is None:
        raise flags.ValidationError("--worker_hosts and --task_index go together; give both")
    try:
        tf_config_from_worker_hosts(hosts, index)
    except ValueError as error:
        raise flags.ValidationError(str(error)) from None
    return True


flags.register_validator("strategy", _valid_strategy)
flags.register_multi_flags_validator(["worker_hosts", "task_index"], _valid_worker_hosts)

_SHORTHAND = re.compile(r"^--gin\.([^=]+)=(.*)$", re.DOTALL)


def expand_gin_shorthand(argv: Sequence[str]) -> list[str]:
    """Turn every `--gin.a.b=v` into `--gin_bindings=a.b=v` (arguments after `--` untouched)."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        match = _SHORTHAND.match(arg)
        if match:
            out.append(f"--gin_bindings={match.group(1)}={match.group(2)}")
        elif arg.startswith("--gin.") and "=" not in arg:
            raise app.UsageError(f"{arg!r} needs a value: write --gin.NAME=VALUE")
        else:
            out.append(arg)
    return out


def run(
    main: Callable[[list[str]], Any],
    argv: Sequence[str] | None = None,
    *,
    key_flags: Sequence[str] = GIN_FLAGS + CLUSTER_FLAGS,
) -> None:
    """`program.run(main)` with the `--gin.NAME=VALUE` shorthand expanded first; `--help` lists
    `key_flags` (default: every flag defined here) and the flags `main`'s module defines."""
    argv = expand_gin_shorthand(sys.argv if argv is None else argv)
    program.run(main, key_flags=key_flags, argv=argv)


def set_worker_verbosity(is_chief: bool) -> None:
    """Non-chief workers log warnings and errors only, unless --log_all_workers: every worker
    runs the same program, so their INFO lines would repeat the chief's. A --verbosity that is
    already quieter stays."""
    quiet = not is_chief and not FLAGS.log_all_workers
    if quiet and logging.get_verbosity() > logging.WARNING:
        logging.set_verbosity(logging.WARNING)


# --- gin -------------------------------------------------------------------------------------


def _configurable_names() -> list[str]:
    """Every registered configurable, by short and full (module-qualified) name."""
    names: set[str] = set()
    for selector, _ in gin.config._REGISTRY.items():  # no public API lists the registry
        if selector.startswith("gin."):
            continue
        names.add(selector)
        names.add(selector.rsplit(".", 1)[-1])
    return sorted(names)


def _parameter_names(configurable: str) -> list[str]:
    try:
        info = gin.config._REGISTRY.get_match(configurable)
    except Exception:
        return []
    if info is None:
        return []
    import inspect

    try:
        return list(inspect.signature(info.wrapped).parameters)
    except (TypeError, ValueError):
        return []


def _suggestion(message: str) -> str:
    """A 'did you mean' hint for gin's unknown-configurable and unknown-parameter errors."""
    match = re.search(r"No configurable matching '([^']+)'", message)
    if match:
        wanted = match.group(1)
        close = difflib.get_close_matches(wanted, _configurable_names(), n=3, cutoff=0.5)
        if close:
            return f"unknown gin configurable {wanted!r}; did you mean {close[0]!r}?" + (
                f" (other close names: {', '.join(map(repr, close[1:]))})" if close[1:] else ""
            )
        return f"unknown gin configurable {wanted!r} (is the module that defines it imported?)"
    match = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", message)
    if match:
        configurable, param = match.groups()
        close = difflib.get_close_matches(param, _parameter_names(configurable), n=1, cutoff=0.5)
        if close:
            return f"{configurable!r} has no parameter {param!r}; did you mean {close[0]!r}?"
    return ""


def gin_dir() -> str:
    """The gin files that ship with highnoon: ``highnoon/gin/`` in an installed wheel (setup.py
    maps the repository's ``gin/`` there), else the repository's ``gin/`` beside the package (a
    checkout, or an editable install of one)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    installed = os.path.join(package, "gin")
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(package), "gin")


_searched: list[str] = []  # directories already given to gin (its list only grows)


class _QuietSearchMisses(std_logging.Filter):
    """Drops gin's ``system_path_file_exists:<file>`` / ``Path not found: <file>`` lines.

    gin tries every search path for a file and an ``include``, and for each one also asks its
    Python-package resource reader, which logs an INFO and an ERROR line per miss. A miss on the
    way to the directory that has the file is expected, not an error; a file missing everywhere
    still fails with gin's own error (and ``parse_gin``'s for files given on the command line).
    """

    def filter(self, record: std_logging.LogRecord) -> bool:
        return not (
            record.funcName == "system_path_file_exists" and record.module == "resource_reader"
        )


@contextlib.contextmanager
def _quiet_search_misses() -> Iterator[None]:
    root = std_logging.getLogger()  # gin's resource reader logs through the root logger
    quiet = _QuietSearchMisses()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def resolve_gin_file(file: str, search_paths: Sequence[str] = ()) -> str:
    """The path of gin file ``file``: as given, else under ``search_paths``, else under
    ``gin_dir()``. Raises FileNotFoundError naming every directory searched."""
    paths = [*search_paths, gin_dir()]
    for candidate in [file] + [os.path.join(p, file) for p in paths]:
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"gin_file {file!r} not found as given or under any of: {', '.join(paths)}"
    )


def parse_gin(
    files: Sequence[str] = (),
    bindings: Sequence[str] = (),
    search_paths: Sequence[str] = (),
    *,
    finalize: bool = True,
) -> None:
    """Parse gin files then bindings (later ones win); files and their ``include``s are looked
    up as given, under ``search_paths``, then under ``gin_dir()``.

    Raises ValueError with a "did you mean" suggestion for unknown configurables/parameters,
    and FileNotFoundError naming the searched directories for a missing file (before gin
    parses anything).
    """
    from highnoon.launch import configurables as _configurables  # noqa: F401  (registers them)

    resolved = [resolve_gin_file(file, search_paths) for file in files]
    for path in [*search_paths, gin_dir()]:
        if path not in _searched:  # includes inside the files are searched here too
            gin.add_config_file_search_path(path)
            _searched.append(path)
    for binding in bindings:  # a malformed one is named before gin applies any
        problem = gin_syntax_problem(binding)
        if problem:
            raise v.InvalidArgumentError(
                f"--gin_bindings={binding!r} is not valid gin: {problem}; a binding reads "
                "'configurable.parameter = value' with a Python literal value (quote strings: "
                "--gin.Trainer.name=\"'run'\")"
            )
    try:
        with _quiet_search_misses():
            gin.parse_config_files_and_bindings(
                resolved, list(bindings), finalize_config=finalize, skip_unknown=False
            )
    except tokenize.TokenError as err:  # gin passes the tokenizer's error on without a place
        where = next((f for f in resolved if gin_syntax_problem(_read(f))), "a gin file")
        raise v.InvalidArgumentError(f"{where} is not valid gin: {err.args[0]}") from None
    except (ValueError, KeyError) as err:
        hint = _suggestion(str(err))
        if not hint:
            raise
        raise v.InvalidArgumentError(f"{hint}\n(gin: {str(err).strip()})") from err


class _SyntaxOnly(gin.config_parser.ParserDelegate):
    """Parses references and macros without looking them up: syntax is all that is checked."""

    def configurable_reference(self, scoped_configurable_name: str, evaluate: bool) -> None:
        return None

    def macro(self, macro_name: str) -> None:
        return None


def gin_syntax_problem(text: str) -> str | None:
    """What is syntactically wrong with gin ``text`` (None when nothing is): checked without
    importing, binding or looking up anything."""
    try:
        for _ in gin.config_parser.ConfigParser(text, _SyntaxOnly()):
            pass
    except tokenize.TokenError as error:  # e.g. an unclosed bracket
        return f"{error.args[0]} (an unclosed bracket or quote?)"
    except SyntaxError as error:
        location = error.args[1] if len(error.args) > 1 else None
        column = getattr(location, "char_num", None)
        return str(error.args[0]).rstrip(".") + (
            f" at character {column + 1}" if column is not None else ""
        )
    return None


def config_without_code(text: str) -> tuple[str, list[str]]:
    """Gin ``text`` with its ``import`` and ``include`` statements taken out, and those
    statements: what a program reads from a model_dir it did not write, so reading a run never
    imports a module (which runs its code) or pulls in another file that could. The bindings
    stay; a binding of a configurable that only a removed import registers is then refused by
    gin as unknown."""
    removed: dict[int, str] = {}
    for statement in gin.config_parser.ConfigParser(text, _SyntaxOnly()):
        if isinstance(statement, gin.config_parser.ImportStatement):
            removed[statement.location.line_num] = statement.format()
        elif isinstance(statement, gin.config_parser.IncludeStatement):
            removed[statement.location.line_num] = f"include {statement.filename!r}"
    kept = [line for n, line in enumerate(text.splitlines(), start=1) if n not in removed]
    return "\n".join(kept) + "\n", [removed[n] for n in sorted(removed)]


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def parse_gin_from_flags(finalize: bool = True) -> None:
    """`parse_gin` with --gin_file, --gin_bindings and --gin_search_paths."""
    parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths, finalize=finalize)


def strategy_from_flags(**overrides: Any) -> Any:
    """`create_strategy` from --strategy, --tpu, --tpu_zone, --gcp_project, --worker_hosts and
    --task_index (other arguments come from gin or `overrides`)."""
    from highnoon.launch.configurables import create_strategy  # gin's bindings apply

    kwargs: dict[str, Any] = {}
    if FLAGS.worker_hosts is not None or FLAGS.task_index is not None:
        kwargs.update(worker_hosts=FLAGS.worker_hosts, task_index=FLAGS.task_index)
    kwargs.update(overrides)
    return create_strategy(FLAGS.strategy, FLAGS.tpu, FLAGS.tpu_zone, FLAGS.gcp_project, **kwargs)


def write_operative_config(model_dir: str, is_chief: bool) -> str | None:
    """Write gin's operative config (or the full config if nothing ran yet) to
    `model_dir/config.gin`, atomically, on the chief only. Returns the path written or None."""
    if not is_chief:
        return None
    if not model_dir:
        raise v.InvalidArgumentError(f"model_dir must be a non-empty path, got {model_dir!r}")
    from highnoon.training.run_dir import RunDir  # the model_dir's one owner of file names

    text = gin.operative_config_str() or gin.config_str()
    return RunDir(model_dir).write_text(RunDir(model_dir).config_gin, text)
