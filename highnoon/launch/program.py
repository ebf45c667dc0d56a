"""What every launch program does around ``absl.app.run``.

* ``--help`` lists the program's own flags. absl prints the *key flags of the main module*
  (``sys.argv[0]``); a console script (``highnoon-train``) or a repository shim
  (``python -m launch.train``) is a main module that defines none, so ``run`` declares the
  program's flags as its key flags (as T5X and Model Garden binaries do with
  ``flags.adopt_module_key_flags``) and lends it the program's docstring.
* TensorFlow's Python INFO lines (``Collective all_reduce tensors: ...`` once per traced
  all-reduce) are off by default: absl's ``--logger_levels`` defaults to ``tensorflow:WARNING``
  (``--logger_levels=tensorflow:INFO`` brings them back); TensorFlow's ``Sharding callback
  duration`` line, which arrives through absl's own logger, is filtered out.
* ``check_flag`` validates a flag at parse time with a ``highnoon.utils.validation`` check, so a
  bad value stops the program with absl's flag error before any work starts.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from absl import app, flags
from absl import logging as absl_logging

from highnoon.utils.validation import InvalidArgumentError

FLAGS = flags.FLAGS

DEFAULT_LOGGER_LEVELS = {"tensorflow": "WARNING"}


class _QuietSaverInfo(logging.Filter):
    """Drops TensorFlow's ``Sharding callback duration`` INFO line (one per checkpoint save),
    which reaches absl's own logger, so ``--logger_levels`` cannot silence it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and record.filename == "functional_saver.py")


def declare_key_flags(module: ModuleType, names: Sequence[str] = ()) -> list[str]:
    """Make the flags ``module`` defines, and ``names``, key flags of the main module.

    Returns the names declared (sorted), which is what ``--help`` lists.
    """
    main = sys.argv[0]
    chosen = {flag.name: flag for flag in FLAGS.get_flags_for_module(module.__name__)}
    for name in names:
        chosen[name] = FLAGS[name]
    for flag in chosen.values():
        FLAGS.register_key_flag_for_module(main, flag)
    return sorted(chosen)


def _lend_docstring(module: ModuleType) -> None:
    """absl's ``--help`` prints ``__main__.__doc__``; a console script or shim has the wrong one."""
    main = sys.modules.get("__main__")
    if main is not None and main is not module and module.__doc__:
        main.__doc__ = module.__doc__


def check_flag(name: str, check: Callable[..., Any], **options: Any) -> None:
    """Validate ``--name`` at parse time with ``check(name, value, **options)`` (a check from
    ``highnoon.utils.validation``); an unset flag (None) passes."""

    def checker(value: Any) -> bool:
        if value is None:
            return True
        try:
            check(name, value, **options)
        except InvalidArgumentError as error:
            raise flags.ValidationError(str(error)) from None
        return True

    flags.register_validator(name, checker)


def run(
    main: Callable[[list[str]], Any],
    *,
    key_flags: Sequence[str] = (),
    argv: Sequence[str] | None = None,
) -> None:
    """``absl.app.run(main)`` with the program's flags (those ``main``'s module defines, and
    ``key_flags``) listed by ``--help`` and TensorFlow's INFO lines off by default."""
    module = sys.modules[main.__module__]
    declare_key_flags(module, key_flags)
    _lend_docstring(module)
    FLAGS.set_default("logger_levels", dict(DEFAULT_LOGGER_LEVELS))
    absl_logging.get_absl_logger().addFilter(_QuietSaverInfo())
    app.run(main, argv=None if argv is None else list(argv))
