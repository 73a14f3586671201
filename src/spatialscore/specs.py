"""The one syntax of the command lines' specs, shared by ``spatialscore benchmark --scorer``, ``spatialscore perturb
--perturber`` and ``spatialrl evaluate --policy/--reward``: ``[NAME=]SPEC`` names a spec, and a plug-in is
``module:attribute`` (the attribute may be dotted; the current directory is importable)."""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from typing import Any

__all__ = ["SpecError", "import_plugin", "split_name"]


class SpecError(ValueError):
    """A spec that cannot be parsed or loaded."""


def split_name(spec: str) -> tuple[str, str]:
    """``NAME=BODY`` -> ``(NAME, BODY)``; a spec without a usable name (none, or one holding ``:``, ``/`` or ``\\``,
    so ``spatialscore:a=b`` stays a path) is named by itself."""
    name, sep, body = spec.partition("=")
    if not sep or not name or any(c in name for c in ":/\\"):
        name, body = spec, spec
    name, body = name.strip(), body.strip()
    if not name or not body:
        raise SpecError(f"{spec!r}: empty name or spec")
    return name, body


def import_plugin(target: str, *, what: str, dotted: bool = False) -> Any:
    """The object ``module:attribute`` names. With ``dotted``, the older ``package.module.Attribute`` form (no
    colon) is still read, with a FutureWarning naming the new spelling. Errors name ``what`` and the target."""
    module_name, colon, attribute = target.partition(":")
    if not colon and dotted and "." in target:
        module_name, _, attribute = target.rpartition(".")
        warnings.warn(
            f"{what} {target!r}: the dotted plug-in form is deprecated; write {module_name}:{attribute}",
            FutureWarning,
            stacklevel=2,
        )
    elif not colon:
        raise SpecError(f"{what} {target!r}: a plug-in must be module:attribute")
    if not all(part.isidentifier() for part in [*module_name.split("."), *attribute.split(".")]):
        raise SpecError(f"{what} {target!r}: a plug-in must be module:attribute with Python identifiers")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise SpecError(f"{what} {target!r}: cannot import module {module_name!r} ({error})") from error
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{what} {target!r}: {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    return obj
