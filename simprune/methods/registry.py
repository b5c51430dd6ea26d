"""The one catalogue of methods: every method a job can name is a registered :class:`Method` class.

Built-in methods are the modules of this package (each registers itself with :func:`register_method` when
imported; every public module of the package is imported, so there is no hand-kept name list). Third-party
methods register through the ``simprune.methods`` entry-point group: the entry point names a module (or a
``Method`` subclass) to import, e.g. in the plugin's ``pyproject.toml``::

    [project.entry-points."simprune.methods"]
    my_method = "my_package.my_method"

``GET /v1/methods``, ``simprune methods``, job validation (:mod:`simprune.jobspec`) and the job pipeline's
dispatch all read this registry.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from simprune.errors import InputError
from simprune.methods.base import Criterion, Method

ENTRY_POINT_GROUP = "simprune.methods"
log = logging.getLogger("simprune.methods")

_REGISTRY: dict[str, type[Method]] = {}
_LOCK = threading.Lock()
_loaded = False


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its ``name`` (a later registration of a name wins)."""
    if not cls.name:
        raise ValueError("method class needs a non-empty `name`")
    if not issubclass(cls, Method):
        raise TypeError(f"{cls.__name__} is not a simprune Method")
    _REGISTRY[cls.name] = cls
    return cls


def load_methods(reload_plugins: bool = False) -> None:
    """Import the built-in method modules and the entry-point plugins (once; again with ``reload_plugins``)."""
    global _loaded
    with _LOCK:
        if _loaded and not reload_plugins:
            return
        for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
            if not mod.name.startswith("_") and mod.name not in ("base", "registry"):
                importlib.import_module(f"simprune.methods.{mod.name}")
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the catalogue down
                log.warning("method plugin %r could not be loaded: %s: %s", ep.name, type(exc).__name__, exc)
                continue
            if isinstance(obj, type) and issubclass(obj, Method) and obj.name not in _REGISTRY:
                register_method(obj)
        _loaded = True


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``; :class:`InputError` naming the valid methods when unknown."""
    load_methods()
    if not isinstance(name, str) or name not in _REGISTRY:
        shown = name if isinstance(name, str) and len(name) <= 64 else f"{str(name)[:64]}..."
        raise InputError(f"unknown method '{shown}'; choose one of: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def option_errors(exc: ValidationError) -> list[tuple[str, str]]:
    """``(option path, message)`` pairs of a failed option validation."""
    return [(".".join(str(p) for p in e["loc"]) or "options", e["msg"]) for e in exc.errors()]


def get_method(name: str, **options: Any) -> Method:
    """An instance of method ``name`` with validated ``options``; :class:`InputError` names the bad option."""
    cls = method_class(name)
    try:
        values = cls.validate_options(options)
    except ValidationError as exc:
        detail = "; ".join(f"{path}: {msg}" for path, msg in option_errors(exc))
        raise InputError(f"bad options for method '{name}': {detail}") from None
    return cls(**values)


def get_criterion(name: str, **options: Any) -> Criterion:
    """Like :func:`get_method`, for a method that is a selection criterion (not a training method)."""
    method = get_method(name, **options)
    if not isinstance(method, Criterion):
        raise InputError(f"method '{name}' trains the network and is not a selection criterion")
    return method


def list_methods() -> list[dict[str, Any]]:
    """Every registered method's :meth:`Method.describe`, criteria first, each group by name."""
    load_methods()
    classes = sorted(_REGISTRY.values(), key=lambda c: (not issubclass(c, Criterion), c.name))
    return [c.describe() for c in classes]


def list_criteria() -> list[dict[str, Any]]:
    """The catalogue entries of the selection criteria only."""
    return [m for m in list_methods() if m["kind"] == "criterion"]
