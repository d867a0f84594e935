"""Running libraries written against the StateFun Python SDK inside rayfun, unchanged.

Such a library imports ``statefun`` itself (``from statefun import StatefulFunctions, ValueSpec, IntType``,
sometimes ``statefun.request_reply_pb2``). ``install_statefun_alias()`` makes those imports resolve to
rayfun's equivalents through a ``sys.meta_path`` finder, so the library's functions run embedded in the
shards. It is opt-in and never shadows the official SDK: when a real ``statefun`` is importable it refuses
(``AliasRefused``); run the library remotely behind the SDK's own handler then. rayfun ships no top-level
``statefun`` package: the alias exists only in a process that installed it, and ``rayfun.start`` carries
the fact to its Ray workers, which install it before they unpickle the application (see ``rayfun.usercode``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Sequence
from typing import Any

from .errors import RayfunError

__all__ = ["AliasRefused", "alias_installed", "install_statefun_alias"]

_PACKAGE = "statefun"

# SDK module -> {SDK name: "rayfun.module:attribute"}; resolved on first access, so importing a module of the
# alias imports no more of rayfun than that module needs
_TYPES = {
    name: f"rayfun.types:{name}"
    for name in ("BoolType", "IntType", "LongType", "FloatType", "DoubleType", "StringType")
}
_CORE = {
    "ValueSpec": "rayfun.functions:ValueSpec",
    "SdkAddress": "rayfun.messages:Address",
    "Type": "rayfun.types:Type",
    "TypeSerializer": "rayfun.types:TypeSerializer",
    "simple_type": "rayfun.types:simple_type",
}
_UTILS = {
    "make_json_type": "rayfun.types:make_json_type",
    "make_protobuf_type": "rayfun.types:make_protobuf_type",
}
_MESSAGES = {
    "Message": "rayfun.messages:Message",
    "EgressMessage": "rayfun.messages:EgressMessage",
    "message_builder": "rayfun.messages:message_builder",
    "egress_message_builder": "rayfun.messages:egress_message_builder",
}
_EGRESS_IO = {
    "kafka_egress_message": "rayfun.messages:kafka_egress_message",
    "kinesis_egress_message": "rayfun.messages:kinesis_egress_message",
}
_HANDLER = {"RequestReplyHandler": "rayfun:RequestReplyHandler"}
_PROTOCOL = "rayfun.remote.protocol"
_MODULES: dict[str, dict[str, str]] = {
    _PACKAGE: {
        **_CORE,
        **_TYPES,
        **_UTILS,
        **_MESSAGES,
        **_EGRESS_IO,
        **_HANDLER,
        "StatefulFunctions": "rayfun.functions:StatefulFunctions",
        "Context": "rayfun.context:Context",
    },
    "statefun.core": {**_CORE, **_TYPES},
    "statefun.wrapper_types": _TYPES,
    "statefun.utils": _UTILS,
    "statefun.context": {"Context": "rayfun.context:Context"},
    "statefun.messages": _MESSAGES,
    "statefun.egress_io": _EGRESS_IO,
    "statefun.statefun_builder": {"StatefulFunctions": "rayfun.functions:StatefulFunctions"},
    "statefun.request_reply_v3": _HANDLER,
    "statefun.request_reply_pb2": {
        name: f"{_PROTOCOL}:{name}" for name in ("Address", "TypedValue", "ToFunction", "FromFunction")
    },
    "statefun.types_pb2": {
        name: f"{_PROTOCOL}:{name}"
        for name in (
            "BooleanWrapper",
            "IntWrapper",
            "LongWrapper",
            "FloatWrapper",
            "DoubleWrapper",
            "StringWrapper",
        )
    },
    "statefun.kafka_egress_pb2": {"KafkaProducerRecord": f"{_PROTOCOL}:KafkaProducerRecord"},
    "statefun.kinesis_egress_pb2": {"KinesisEgressRecord": f"{_PROTOCOL}:KinesisEgressRecord"},
}


class AliasRefused(RayfunError, ImportError):
    """``install_statefun_alias()`` found the official StateFun SDK importable (or a ``statefun`` module that
    is not rayfun's already imported): the alias would shadow it, so it is not installed."""


def _resolve(module: str, name: str, target: str) -> Any:
    where, _, attribute = target.partition(":")
    try:
        return getattr(importlib.import_module(where), attribute)
    except AttributeError:
        raise AttributeError(
            f"{module}.{name} has no rayfun equivalent yet ({target} is missing in this rayfun version)"
        ) from None


def _has(target: str) -> bool:
    where, _, attribute = target.partition(":")
    return hasattr(importlib.import_module(where), attribute)


class _AliasModule(types.ModuleType):
    """A module of the alias: its names come from rayfun on first access (then stay in its ``__dict__``)."""

    __rayfun_alias__ = True

    def __getattr__(self, name: str) -> Any:
        table = _MODULES[self.__name__]
        if name == "__all__":  # for ``from statefun import *``: the names this rayfun version has
            return sorted(n for n in table if _has(table[n]))
        if name not in table:
            raise AttributeError(
                f"module {self.__name__!r} (rayfun's StateFun alias) has no attribute {name!r}; "
                f"it provides {sorted(table)}"
            )
        value = _resolve(self.__name__, name, table[name])
        setattr(self, name, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(_MODULES[self.__name__]))


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``statefun`` and the SDK submodules that rayfun has equivalents for, and nothing else."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _PACKAGE and not fullname.startswith(_PACKAGE + "."):
            return None
        if fullname not in _MODULES:
            known = ", ".join(sorted(m for m in _MODULES if m != _PACKAGE))
            raise ModuleNotFoundError(
                f"No module named {fullname!r}: rayfun's StateFun alias provides {_PACKAGE} and {known}",
                name=fullname,
            )
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname == _PACKAGE)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _AliasModule(spec.name, f"rayfun's alias of the StateFun SDK module {spec.name}")

    def exec_module(self, module: types.ModuleType) -> None:
        pass  # its names resolve on first access (_AliasModule.__getattr__)


_FINDER = _AliasFinder()


def alias_installed() -> bool:
    """True when this process resolves ``import statefun`` to rayfun (``install_statefun_alias`` ran)."""
    return _FINDER in sys.meta_path


def install_statefun_alias() -> None:
    """Make ``import statefun`` (and ``statefun.core``, ``statefun.request_reply_pb2``, ...) resolve to rayfun.

    Call it before importing a library written for the StateFun SDK. Applications started afterwards by
    ``rayfun.start`` install it in their Ray workers too, before the library is imported there. Idempotent.
    Raises ``AliasRefused`` when the official SDK is importable: the alias never shadows it.
    """
    if alias_installed():
        return
    loaded = sys.modules.get(_PACKAGE)
    if loaded is not None and not getattr(loaded, "__rayfun_alias__", False):
        raise AliasRefused(
            f"a module named {_PACKAGE!r} is already imported from {getattr(loaded, '__file__', None) or loaded!r}; "
            "rayfun's StateFun alias would shadow it, so it is not installed"
        )
    try:
        real = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        real = None
    if real is not None:
        raise AliasRefused(
            f"the StateFun SDK is importable here ({real.origin or real.submodule_search_locations}); "
            "rayfun's statefun alias never shadows it: uninstall apache-flink-statefun from this environment "
            "to run the library embedded, or serve it remotely with the SDK and declare an HttpEndpoint"
        )
    sys.meta_path.insert(0, _FINDER)


def _uninstall_statefun_alias() -> None:
    """Remove the alias and the modules it made (for tests)."""
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    for name in [m for m in sys.modules if m == _PACKAGE or m.startswith(_PACKAGE + ".")]:
        if getattr(sys.modules[name], "__rayfun_alias__", False):
            del sys.modules[name]
