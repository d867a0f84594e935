"""Which function types exist: embedded ones by name, remote ones by endpoint pattern (``ns/*``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["TypeRegistry"]


class TypeRegistry:
    """Answers ``typename in registry`` fast (a set lookup after the first miss per typename)."""

    def __init__(self, typenames: Iterable[str], endpoints: Iterable[Any] = ()):
        """``typenames``: the embedded functions' (a driver attached to a running application knows the
        names only, not the functions' code); ``endpoints``: the remote ones."""
        self.typenames = tuple(typenames)
        self.endpoints = list(endpoints)
        self._embedded = frozenset(self.typenames)
        self._known: set[str] = set(self.typenames)
        self._unknown: set[str] = set()

    def endpoint_for(self, typename: str) -> Any | None:
        """The remote endpoint serving ``typename`` (the first whose pattern matches), if any."""
        if typename in self._embedded:
            return None
        for endpoint in self.endpoints:
            if endpoint.matches(typename):
                return endpoint
        return None

    def __contains__(self, typename: object) -> bool:
        if typename in self._known:
            return True
        if typename in self._unknown or not isinstance(typename, str):
            return False
        if self.endpoint_for(typename) is not None:
            self._known.add(typename)
            return True
        self._unknown.add(typename)
        return False

    def describe(self) -> str:
        """A short list of what is bound, for error messages."""
        parts = list(self.typenames) + [f"{e.functions} (remote)" for e in self.endpoints]
        return ", ".join(parts) or "nothing"
