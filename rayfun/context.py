"""What a function sees: its address, its caller, its state (``context.storage``) and its ways to act.

A Context lives for one invocation. It does not act at once: sends, delayed sends, cancellations, egress
records and state writes are collected and applied by the runtime only when the function returns, so a
function that raises leaves no trace (its message is dead-lettered with the error instead).

State is held per instance as one flat list (``cells``): the payload of each ValueSpec in order, then,
for function types with expiring state, the expiry deadline of each (ms since the epoch, 0 = none). The
storage object of an invocation works on a *copy* of that list; the runtime keeps the copy on success.
"""

from __future__ import annotations

import re
from collections.abc import Container, Sequence
from datetime import timedelta
from typing import Any

from . import types
from .functions import ValueSpec
from .messages import Address, EgressMessage, Message
from .types import BUILTIN_TYPES, check_text, to_payload

__all__ = [
    "Context",
    "SlotStorage",
    "StorageBase",
    "explain_state_error",
    "make_slot_storage_class",
    "make_storage_class",
]


class StorageBase:
    """Typed state cells behind attribute access: read, assign, ``del``. One subclass per function type."""

    __slots__ = ("_cells", "_now", "dirty")
    _typename = ""
    _names: tuple[str, ...] = ()

    def __init__(self, cells: list, now: int):
        self._cells = cells
        self._now = now
        # 0: untouched; 1: the last change was a write (so the instance holds a value); 2: the last change
        # was a delete (so the instance may now be empty, which the runtime must check)
        self.dirty = 0

    def __getattr__(self, name: str) -> Any:  # only reached for undeclared names
        raise AttributeError(undeclared_state(self._typename, name, self._names))

    def __repr__(self) -> str:
        return f"Storage({self._typename}: {', '.join(self._names)})"


def _property(index: int, spec: ValueSpec, n: int, typename: str) -> property:
    builtin = BUILTIN_TYPES.get(spec.type.typename)
    serializer = spec.type.serializer()
    deserialize = serializer.deserialize
    after_write = spec.expire_after_write is not None
    ttl = spec.expire_after_millis
    expiring = spec.expire_mode is not None
    deadline_at = n + index

    if builtin is not None and not expiring:

        def get(self):
            return self._cells[index]
    elif builtin is not None:

        def get(self):
            cells = self._cells
            if cells[index] is not None and 0 < cells[deadline_at] <= self._now:
                cells[index] = None
                cells[deadline_at] = 0
                self.dirty = 2
            return cells[index]
    else:

        def get(self):
            cells = self._cells
            if expiring and cells[index] is not None and 0 < cells[deadline_at] <= self._now:
                cells[index] = None
                cells[deadline_at] = 0
                self.dirty = 2
            value = cells[index]
            if value is None:
                return None
            try:
                return deserialize(value)
            except Exception as exc:
                raise TypeError(
                    f"state {spec.name!r} of {typename} cannot be read as {spec.type.typename}: {exc}"
                ) from exc

    if builtin is not None:
        check = builtin.check
        fast_type: type[Any] = builtin.python_type  # type[Any]: a value of exactly this type compares as one
        # the range of a fixed-width integer type (both or neither: only _Fixed has them, None for floats)
        lo: int | None = getattr(builtin, "_lo", None)
        hi: int | None = getattr(builtin, "_hi", None)

        def checked_set(self, value):
            if value is None:
                raise ValueError(f"cannot set state {spec.name!r} of {typename} to None; use del")
            try:
                self._cells[index] = check(value)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"state {spec.name!r} of {typename}: {exc}") from None
            if after_write:
                self._cells[deadline_at] = self._now + ttl
            self.dirty = 1

        if after_write or fast_type is float:  # a float is always normalized (32-bit, no -0.0), as the SDK
            set_ = checked_set
        elif fast_type is str:
            max_chars = types.MAX_VALUE_BYTES // 4

            def set_(self, value):
                # hot path: ASCII text of a storable length needs no check
                if type(value) is str and len(value) <= max_chars and value.isascii():
                    self._cells[index] = value
                    self.dirty = 1
                else:
                    checked_set(self, value)
        elif lo is not None and hi is not None:

            def set_(self, value):
                if type(value) is fast_type and lo <= value <= hi:  # hot path: an in-range int
                    self._cells[index] = value
                    self.dirty = 1
                else:
                    checked_set(self, value)
        else:

            def set_(self, value):
                if type(value) is fast_type:  # hot path: exactly the built-in's Python type
                    self._cells[index] = value
                    self.dirty = 1
                else:
                    checked_set(self, value)
    else:

        def set_(self, value):
            self._cells[index] = to_payload(value, spec.type)
            if after_write:
                self._cells[deadline_at] = self._now + ttl
            self.dirty = 1

    def del_(self):
        self._cells[index] = None
        if expiring:
            self._cells[deadline_at] = 0
        self.dirty = 2

    return property(get, set_, del_, doc=f"state {spec.name!r} ({spec.type.typename})")


class SlotStorage:
    """The storage of a function type whose one state value is of a built-in type and never expires: the
    value sits in a slot that the function's name for it aliases, so its reads and writes are plain slot
    accesses, with no Python call (a property costs two per message on the counter's hot path).

    Nothing is checked when the function writes: the runner checks the value once the function returns,
    and anything unusual (a value of another type, a read after ``del``, an undeclared name) makes it run
    that message again on the property storage, which raises the exact error (see runners/embedded.py).
    A deleted value leaves the slot empty, which is how the runner tells a delete from a write."""

    __slots__ = ("_value",)
    _value: Any
    _typename = ""
    _names: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Storage({self._typename}: {', '.join(self._names)})"


def make_slot_storage_class(typename: str, spec: ValueSpec) -> type[SlotStorage]:
    """The storage class of a single-value type for ``SlotStorage``: the state's name aliases the slot."""
    attrs = {"__slots__": (), "_typename": typename, "_names": (spec.name,), spec.name: SlotStorage.__dict__["_value"]}
    return type(f"Storage[{typename}]", (SlotStorage,), attrs)


def undeclared_state(typename: str, name: str, declared: Sequence[str]) -> str:
    return (
        f"{typename} has no state named {name!r}: declare it, e.g. ValueSpec({name!r}, IntType), in the "
        f"specs of its @functions.bind (declared: {list(declared)})"
    )


_NO_ATTRIBUTE = re.compile(r"^'Storage\[[^']*\]' object has no attribute '([^']+)'")


def explain_state_error(exc: Exception, storage: StorageBase) -> Exception:
    """A function that wrote an undeclared state name gets an error saying which ValueSpec to add (the
    slots refuse the write with Python's plain "object has no attribute"; checking here, on the failure
    path, costs the writes nothing)."""
    if isinstance(exc, AttributeError):
        found = _NO_ATTRIBUTE.match(str(exc))
        if found and found.group(1) not in storage._names:
            return AttributeError(undeclared_state(storage._typename, found.group(1), storage._names))
    return exc


def make_storage_class(typename: str, specs: Sequence[ValueSpec]) -> type[StorageBase]:
    """Build the storage class of one function type: a property per ValueSpec (fast attribute access)."""
    n = len(specs)
    attrs: dict[str, Any] = {"__slots__": (), "_typename": typename, "_names": tuple(s.name for s in specs)}
    for i, spec in enumerate(specs):
        attrs[spec.name] = _property(i, spec, n, typename)
    return type(f"Storage[{typename}]", (StorageBase,), attrs)


class Context:
    """The context of one invocation, as in the StateFun SDK."""

    __slots__ = ("_caller", "_id", "_known", "_typename", "egress", "sends", "storage", "timers")

    def __init__(
        self,
        typename: str,
        id: str,
        caller: tuple[str, str] | None,
        storage: StorageBase | SlotStorage,
        known: Container[str] | None = None,
    ):
        self._known = known  # function types that exist: a send to any other fails here, in user code
        self._typename = typename
        self._id = id
        self._caller = caller
        self.storage = storage
        # effects, created on first use (most invocations have few kinds of effect)
        self.sends: list[Message] | None = None
        self.timers: list[tuple] | None = None
        self.egress: list[EgressMessage] | None = None

    @property
    def address(self) -> Address:
        """This instance's address: ``.namespace``, ``.name``, ``.id``, ``.typename``."""
        return Address.of(self._typename, self._id)

    @property
    def caller(self) -> Address | None:
        """The sender's address, or None for a message from an ingress (or from ``app.send``)."""
        return None if self._caller is None else Address.of(*self._caller)

    def send(self, message: Message) -> None:
        """Send a message to any function instance (this one included)."""
        if not isinstance(message, Message):
            raise TypeError(f"send() takes a Message (use message_builder), got {type(message).__name__}")
        if self._known is not None and message.target_typename not in self._known:
            raise ValueError(
                f"unknown function type {message.target_typename!r}: no function or remote endpoint is bound to it"
            )
        if self.sends is None:
            self.sends = [message]
        else:
            self.sends.append(message)

    def send_after(self, delay: timedelta, message: Message, cancellation_token: str = "") -> None:
        """Send ``message`` after ``delay``; a non-empty token lets this instance cancel it meanwhile."""
        if not isinstance(message, Message):
            raise TypeError(f"send_after() takes a Message, got {type(message).__name__}")
        if self._known is not None and message.target_typename not in self._known:
            raise ValueError(
                f"unknown function type {message.target_typename!r}: no function or remote endpoint is bound to it"
            )
        if not isinstance(delay, timedelta) or delay < timedelta(0):
            raise ValueError(f"send_after() needs a non-negative timedelta, got {delay!r}")
        if not isinstance(cancellation_token, str):
            raise TypeError("cancellation_token must be a str")
        check_text(cancellation_token, "cancellation_token")
        self._timer((int(delay.total_seconds() * 1000), message, cancellation_token))

    def cancel_delayed_message(self, cancellation_token: str) -> None:
        """Cancel this instance's pending delayed message with that token; a no-op if it was delivered."""
        if not cancellation_token or not isinstance(cancellation_token, str):
            raise ValueError("cancel_delayed_message() needs a non-empty token")
        self._timer((None, None, cancellation_token))

    def _timer(self, entry: tuple) -> None:
        if self.timers is None:
            self.timers = [entry]
        else:
            self.timers.append(entry)

    def send_egress(self, message: EgressMessage) -> None:
        """Emit a record to an egress (published per the egress's delivery semantics)."""
        if not isinstance(message, EgressMessage):
            raise TypeError(
                f"send_egress() takes an EgressMessage (use egress_message_builder), got {type(message).__name__}"
            )
        if self.egress is None:
            self.egress = [message]
        else:
            self.egress.append(message)
