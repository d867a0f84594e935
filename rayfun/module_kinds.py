"""The registry of module.yaml kinds: which builder turns the ``spec`` of a document of some ``kind`` into a
component (an ``HttpEndpoint``, a source, a sink).

One table holds every kind. The built-in ones (StateFun's HTTP endpoints, Kafka and playground ingress and egress) are
named here as ``"module:function"`` and imported on first use, so the core imports no connector and a
connector costs nothing until a module.yaml uses it. A third party adds its kinds either by calling
``register_kind`` or, without anyone importing it first, through an entry point of the group
``rayfun.module_kinds`` (in its ``pyproject.toml``)::

    [project.entry-points."rayfun.module_kinds"]
    acme = "acme_rayfun.kinds:register"   # a callable taking no arguments, or a module, that calls register_kind

Entry points are loaded once, the first time a kind is not in the table (or when ``registered_kinds`` is
asked for the full list), so a module.yaml that uses only built-in kinds never imports third-party code.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import types
from collections.abc import Callable, Mapping
from typing import Any

from .errors import RayfunError

__all__ = ["ENTRY_POINT_GROUP", "SECTIONS", "Builder", "KindError", "lookup", "register_kind", "registered_kinds"]

log = logging.getLogger("rayfun")

#: the entry-point group a distribution registers its module.yaml kinds under
ENTRY_POINT_GROUP = "rayfun.module_kinds"

#: a builder turns one document's ``spec`` mapping into a component (endpoint, source, sink, ...)
Builder = Callable[[Mapping[str, Any]], Any]

#: where a component goes in a ``ModuleSpec``
SECTIONS = ("endpoints", "ingresses", "egresses")

_SECTION_OF_SUFFIX = {"ingress": "ingresses", "egress": "egresses", "http": "endpoints"}


class KindError(RayfunError, ValueError):
    """A kind that cannot be built: nobody registered it, or its builder cannot be imported."""


# kind -> (a builder, or "module:function" naming one, imported on first use; the section)
_KINDS: dict[str, tuple[Builder | str, str]] = {
    "io.statefun.endpoints.v2/http": ("rayfun.module_yaml:build_http_endpoint_v2", "endpoints"),
    "io.statefun.endpoints.v1/http": ("rayfun.module_yaml:build_http_endpoint_v1", "endpoints"),
    "io.statefun.kafka.v1/ingress": ("rayfun.connectors.kafka:ingress_from_spec", "ingresses"),
    "io.statefun.kafka.v1/egress": ("rayfun.connectors.kafka:egress_from_spec", "egresses"),
    "io.statefun.playground.v1/ingress": ("rayfun.connectors.playground:ingress_from_spec", "ingresses"),
    "io.statefun.playground.v1/egress": ("rayfun.connectors.playground:egress_from_spec", "egresses"),
}

_entry_points_loaded = False
_entry_point_errors: list[str] = []  # "name = value: error" of each entry point that failed to load


def register_kind(kind: str, builder: Builder | str, section: str | None = None, *, replace: bool = False) -> None:
    """Register the builder of documents of ``kind`` (a callable, or ``"module:function"`` to import it on
    first use); ``section`` is ``endpoints``/``ingresses``/``egresses`` (default: from the kind,
    ``.../ingress`` -> ingresses, ``.../egress`` -> egresses, ``.../http`` -> endpoints). Registering a kind
    twice with another builder is an error unless ``replace=True``."""
    if not isinstance(kind, str) or "/" not in kind:
        raise ValueError(f"a kind is 'namespace/name' (e.g. 'io.statefun.kafka.v1/ingress'), got {kind!r}")
    if isinstance(builder, str):
        if builder.count(":") != 1 or not all(builder.split(":")):
            raise ValueError(f"the builder for {kind} as a string is 'module:function', got {builder!r}")
    elif not callable(builder):
        raise TypeError(f"the builder for {kind} must be callable or 'module:function'")
    if section is None:
        section = _SECTION_OF_SUFFIX.get(kind.rpartition("/")[2])
        if section is None:
            raise ValueError(f"cannot tell whether {kind} is an endpoint, ingress or egress; pass section=")
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {SECTIONS}, got {section!r}")
    if kind in _KINDS and not replace and _KINDS[kind][0] != builder:
        raise ValueError(f"kind {kind} is already registered (pass replace=True to override)")
    _KINDS[kind] = (builder, section)


def registered_kinds() -> list[str]:
    """Every kind ``load_module`` understands: the built-in ones, those registered, and those of the
    installed ``rayfun.module_kinds`` entry points (loaded by this call if they were not yet)."""
    _load_entry_points()
    return sorted(_KINDS)


def lookup(kind: str) -> tuple[Builder, str]:
    """The builder and section of ``kind``; raises ``KindError`` naming the kind and every known kind."""
    entry = _KINDS.get(kind)
    if entry is None:
        _load_entry_points()
        entry = _KINDS.get(kind)
    if entry is None:
        message = f"unknown kind {kind!r}; known kinds: {', '.join(sorted(_KINDS))}"
        if _entry_point_errors:
            message += f"; {ENTRY_POINT_GROUP} entry points that failed to load: {'; '.join(_entry_point_errors)}"
        raise KindError(message)
    builder, section = entry
    return (_resolve(kind, builder) if isinstance(builder, str) else builder), section


def _resolve(kind: str, ref: str) -> Builder:
    """Import the builder ``"module:function"`` names (a connector module, a third party's module)."""
    module_name, _, name = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise KindError(f"kind {kind} needs the module {module_name!r}, which cannot be imported: {exc}") from exc
    builder = getattr(module, name, None)
    if not callable(builder):
        raise KindError(f"kind {kind}: {module_name!r} has no builder {name!r}")
    return builder


def _load_entry_points() -> None:
    """Let each installed distribution's ``rayfun.module_kinds`` entry point register its kinds, once.

    A broken entry point is logged and named in the next unknown-kind error instead of failing every
    module.yaml: a module that does not use its kinds still loads."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            target = ep.load()  # a module registers its kinds when imported
            if callable(target) and not isinstance(target, types.ModuleType):
                target()
        except Exception as exc:
            error = f"{ep.name} = {ep.value}: {type(exc).__name__}: {exc}"
            _entry_point_errors.append(error)
            log.warning("the %s entry point %s failed to load", ENTRY_POINT_GROUP, error)
