"""Attributes of a package imported on first use, so that importing the package does not import an optional
heavy dependency (dlib) until its classes are asked for."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, modules: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package`: attribute name -> the module that defines it."""

    def __getattr__(name: str) -> Any:
        if name in modules:
            return getattr(importlib.import_module(modules[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
