"""Declaring functions: ``StatefulFunctions``, ``ValueSpec`` and the bound ``FunctionSpec``.

This mirrors the StateFun Python SDK so that code written for it reads the same here: a function is bound
to a typename together with the state it keeps, declared up front as ValueSpecs.
"""

from __future__ import annotations

import inspect
import keyword
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .types import Type, validate_typename

__all__ = ["FunctionSpec", "StatefulFunctions", "ValueSpec"]


class ValueSpec:
    """One named, typed piece of per-instance state, optionally expiring after a write or after any call."""

    __slots__ = ("expire_after_call", "expire_after_write", "name", "type")

    def __init__(
        self,
        name: str,
        type: Type,
        expire_after_call: timedelta | None = None,
        expire_after_write: timedelta | None = None,
    ):
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name != name.lower():
            raise ValueError(f"state name {name!r} must be a lowercase Python identifier that is not a keyword")
        if not isinstance(type, Type):
            raise TypeError(f"ValueSpec {name!r}: type must be a rayfun Type (e.g. IntType), got {type!r}")
        if expire_after_call is not None and expire_after_write is not None:
            raise ValueError(f"ValueSpec {name!r}: set expire_after_call or expire_after_write, not both")
        for ttl in (expire_after_call, expire_after_write):
            if ttl is not None and (not isinstance(ttl, timedelta) or ttl <= timedelta(0)):
                raise ValueError(f"ValueSpec {name!r}: an expiry must be a positive timedelta, got {ttl!r}")
        self.name = name
        self.type = type
        self.expire_after_call = expire_after_call
        self.expire_after_write = expire_after_write

    @property
    def expire_mode(self) -> str | None:
        """``"after_call"``, ``"after_write"`` or None, as StateFun's ExpirationSpec modes."""
        if self.expire_after_call is not None:
            return "after_call"
        if self.expire_after_write is not None:
            return "after_write"
        return None

    @property
    def expire_after_millis(self) -> int:
        ttl = self.expire_after_call or self.expire_after_write
        return int(ttl.total_seconds() * 1000) if ttl is not None else 0

    def __repr__(self) -> str:
        extra = f", {self.expire_mode}={self.expire_after_millis}ms" if self.expire_mode else ""
        return f"ValueSpec({self.name!r}, {self.type.typename}{extra})"


@dataclass
class FunctionSpec:
    """A function bound to a typename with its state specs."""

    typename: str
    fn: Callable[..., Any]
    specs: tuple[ValueSpec, ...] = field(default_factory=tuple)
    is_async: bool = False


class StatefulFunctions:
    """The set of functions an application runs; bind them with ``@functions.bind(typename, specs=[...])``."""

    def __init__(self) -> None:
        self._functions: dict[str, FunctionSpec] = {}

    def register(self, typename: str, fun: Callable[..., Any], specs: Iterable[ValueSpec] | None = None) -> None:
        validate_typename(typename)
        if not callable(fun):
            raise TypeError(f"{typename}: the function must be callable")
        params = [
            p
            for p in inspect.signature(fun).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if len(params) != 2:
            raise TypeError(f"{typename}: a function takes exactly (context, message), got {len(params)} parameters")
        specs = tuple(specs or ())
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"{typename}: duplicate state names in {names}")
        if typename in self._functions:
            raise ValueError(f"{typename} is already bound")
        self._functions[typename] = FunctionSpec(typename, fun, specs, inspect.iscoroutinefunction(fun))

    def bind(self, typename: str, specs: Iterable[ValueSpec] | None = None) -> Callable[[Callable], Callable]:
        def wrapper(fun: Callable) -> Callable:
            self.register(typename, fun, specs)
            return fun

        return wrapper

    def for_typename(self, typename: str) -> FunctionSpec:
        try:
            return self._functions[typename]
        except KeyError:
            raise ValueError(f"unknown function type {typename!r}; bound: {sorted(self._functions)}") from None

    def __contains__(self, typename: str) -> bool:
        return typename in self._functions

    def __iter__(self):
        return iter(self._functions.values())

    def __len__(self) -> int:
        return len(self._functions)

    @property
    def typenames(self) -> list[str]:
        return sorted(self._functions)
