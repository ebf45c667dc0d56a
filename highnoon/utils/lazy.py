"""Lazy re-exports (PEP 562): a package names its public objects without importing their modules
(and so TensorFlow) until first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_getattr(package: str, exports: Mapping[str, str], namespace: dict[str, Any]) -> Callable:
    """A module ``__getattr__`` resolving ``exports`` (name -> defining module) on first access
    and caching the object in the package's ``namespace``."""

    def __getattr__(name: str) -> Any:
        module_name = exports.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name), name)
        namespace[name] = value
        return value

    return __getattr__
