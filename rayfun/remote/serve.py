"""Serving rayfun functions over HTTP with StateFun's request-reply protocol (the SDK's RequestReplyHandler).

The very ``StatefulFunctions`` that run embedded in rayfun can be deployed as a remote endpoint instead,
behind rayfun's runtime or a Flink StateFun cluster: same ``Context``, same storage, same builders. A batch
runs its invocations in order on one state view; the answer carries outgoing messages, delayed messages
and cancellations, egress records, and a mutation for each state the batch wrote or deleted.

State expiry belongs to the runtime that stores the state, so the handler ignores deadlines. An exception
in user code fails the whole batch: the HTTP answer is 500 with the error, and the caller retries.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from google.protobuf.message import DecodeError

from ..context import Context, StorageBase, make_storage_class
from ..errors import RayfunError
from ..functions import FunctionSpec, StatefulFunctions
from ..messages import Message
from ..types import decode_payload, encode_payload
from .protocol import EXPIRE_MODE_NUMBERS, FromFunction, ToFunction, typed_value

__all__ = ["BadRequest", "FunctionHandler", "RequestReplyHandler", "make_app", "make_handler", "serve"]

log = logging.getLogger(__name__)

_CONTENT_TYPE = "application/octet-stream"

#: where ``make_app`` keeps its FunctionHandler (``app[HANDLER_KEY]``)
HANDLER_KEY = web.AppKey("rayfun_handler", object)


class _TrackingStorage(StorageBase):
    """Storage that also records which states were assigned or deleted (the SDK's dirty cells): mixed into
    a function type's storage class by ``_tracking_storage``, which sets ``_tracked`` to its state names."""

    __slots__ = ("_touched",)
    _tracked: frozenset[str] = frozenset()
    _touched: set[str]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._tracked:
            self._touched.add(name)
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if name in self._tracked:
            self._touched.add(name)
        object.__delattr__(self, name)


def _tracking_storage(typename: str, specs: tuple) -> type[_TrackingStorage]:
    """The storage class of ``typename`` that records which states a batch assigned or deleted."""
    base = make_storage_class(typename, specs)
    names = frozenset(s.name for s in specs)
    return type(base.__name__, (base, _TrackingStorage), {"__slots__": (), "_tracked": names})


class _Bound:
    """A function type prepared for serving: its spec, storage class and state index."""

    __slots__ = ("index", "spec", "storage_cls")

    def __init__(self, spec: FunctionSpec):
        self.spec = spec
        self.storage_cls = _tracking_storage(spec.typename, spec.specs)
        self.index = {s.name: i for i, s in enumerate(spec.specs)}


def _addr(addr: Any, typename: str, id: str) -> None:
    namespace, _, name = typename.rpartition("/")
    addr.namespace, addr.type, addr.id = namespace, name, id


class BadRequest(RayfunError, ValueError):
    """A request that can never succeed (not a ToFunction, no invocation, an unknown function type, state
    of the wrong type): answered with 400 and the reason, which callers do not retry."""


class RequestReplyHandler:
    """Answers ToFunction batches for a set of functions, inside any web server: the SDK's class of the
    same name, so SDK serving code (aiohttp with ``await handle_async(body)``, Flask or WSGI with
    ``handle_sync(body)``) runs rayfun functions unchanged. Both raise on a request that can never succeed
    (``BadRequest``, a ValueError: not a ToFunction, an unknown function type) and re-raise what user code
    raises; the web server answers 500 then, and the runtime retries."""

    def __init__(self, functions: StatefulFunctions):
        if not isinstance(functions, StatefulFunctions) or not len(functions):
            raise ValueError("RequestReplyHandler needs a StatefulFunctions with at least one bound function")
        self.functions = functions
        self._bound: dict[str, _Bound] = {}

    def _bind(self, typename: str) -> _Bound:
        bound = self._bound.get(typename)
        if bound is None:
            bound = self._bound[typename] = _Bound(self.functions.for_typename(typename))
        return bound

    def handle_sync(self, body: bytes | bytearray | memoryview) -> bytes:
        """``handle_async`` for a server without an event loop (Flask, WSGI): runs the batch on a fresh
        loop, so it may not be called from a running loop's thread (use ``await handle_async`` there)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.handle_async(body))
        raise RuntimeError(
            "RequestReplyHandler.handle_sync was called from a running event loop; use await handle_async(body)"
        )

    async def handle_async(self, body: bytes | bytearray | memoryview) -> bytes:
        """Run one batch (the serialized ToFunction ``body``); the serialized FromFunction to answer."""
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError(f"the request body must be bytes, got {type(body).__name__}")
        req = ToFunction()
        try:
            req.ParseFromString(bytes(body))
        except DecodeError as exc:
            raise BadRequest(f"the request is not a StateFun ToFunction message ({exc})") from None
        if req.WhichOneof("request") != "invocation":
            raise BadRequest("the request carries no invocation batch")
        batch = req.invocation
        target = batch.target
        typename = f"{target.namespace}/{target.type}"
        try:
            bound = self._bind(typename)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        specs = bound.spec.specs

        received = {pv.state_name: pv for pv in batch.state}
        missing = [s for s in specs if s.name not in received]
        if missing:
            return self._missing(missing)

        n = len(specs)
        cells: list[Any] = [None] * (2 * n)  # payloads, then expiry deadlines (all 0: the runtime expires)
        for i, spec in enumerate(specs):
            tv = received[spec.name].state_value
            if not tv.has_value:
                continue
            if tv.typename != spec.type.typename:
                raise BadRequest(
                    f"state {spec.name!r} of {typename} is declared as {spec.type.typename} but the "
                    f"runtime sent a value of type {tv.typename}"
                )
            cells[i] = decode_payload(tv.typename, tv.value)
        for i in range(n, 2 * n):
            cells[i] = 0
        storage = bound.storage_cls(cells, int(time.time() * 1000))
        storage._touched = set()

        result = FromFunction()
        answer = result.invocation_result
        fn, is_async = bound.spec.fn, bound.spec.is_async
        sends: list[Message] = []
        timers: list[tuple] = []
        egress: list = []
        for inv in batch.invocations:
            caller = inv.caller
            caller_key = (f"{caller.namespace}/{caller.type}", caller.id) if caller.namespace or caller.type else None
            arg = inv.argument
            payload = decode_payload(arg.typename, arg.value) if arg.has_value else None
            ctx = Context(typename, target.id, caller_key, storage)
            message = Message(typename, target.id, arg.typename, payload)
            if is_async:
                await fn(ctx, message)
            else:
                fn(ctx, message)
            if ctx.sends:
                sends.extend(ctx.sends)
            if ctx.timers:
                timers.extend(ctx.timers)
            if ctx.egress:
                egress.extend(ctx.egress)

        for m in sends:
            out = answer.outgoing_messages.add()
            _addr(out.target, m.target_typename, m.target_id)
            typed_value(m.value_type_name, m.payload, out.argument)
        for delay_ms, m, token in timers:
            out = answer.delayed_invocations.add()
            if m is None:
                out.is_cancellation_request = True
                out.cancellation_token = token
                continue
            out.delay_in_ms = delay_ms
            _addr(out.target, m.target_typename, m.target_id)
            typed_value(m.value_type_name, m.payload, out.argument)
            if token:
                out.cancellation_token = token
        for e in egress:
            out = answer.outgoing_egresses.add()
            out.egress_namespace, _, out.egress_type = e.typename.rpartition("/")
            typed_value(e.value_type_name, e.payload, out.argument)
        for spec in specs:  # declaration order, like the SDK
            if spec.name not in storage._touched:
                continue
            mutation = answer.state_mutations.add()
            mutation.state_name = spec.name
            payload = cells[bound.index[spec.name]]
            if payload is None:
                mutation.mutation_type = FromFunction.PersistedValueMutation.DELETE
            else:
                mutation.mutation_type = FromFunction.PersistedValueMutation.MODIFY
                tv = mutation.state_value
                tv.typename = spec.type.typename
                tv.has_value = True
                tv.value = encode_payload(spec.type.typename, payload)
        return result.SerializeToString()

    @staticmethod
    def _missing(missing: list) -> bytes:
        result = FromFunction()
        values = result.incomplete_invocation_context.missing_values
        for spec in missing:
            value = values.add()
            value.state_name = spec.name
            value.type_typename = spec.type.typename
            value.expiration_spec.mode = EXPIRE_MODE_NUMBERS[spec.expire_mode]
            if spec.expire_mode is not None:
                value.expiration_spec.expire_after_millis = spec.expire_after_millis
        return result.SerializeToString()

    handle = handle_async  # rayfun's earlier name for it


#: rayfun's earlier name for RequestReplyHandler
FunctionHandler = RequestReplyHandler


def make_handler(functions: StatefulFunctions) -> RequestReplyHandler:
    """A request-reply v3 handler for ``functions``: ``RequestReplyHandler(functions)``."""
    return RequestReplyHandler(functions)


def make_app(functions: StatefulFunctions, path: str = "/statefun") -> web.Application:
    """An aiohttp app answering POST ``path`` (and ``path/<function name>``, for ``{function.name}`` URLs)."""
    handler = make_handler(functions)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            answer = await handler.handle_async(body)
        except BadRequest as exc:  # can never succeed: 400 with the reason (callers do not retry it)
            log.warning("bad request: %s", exc)
            return web.Response(status=400, text=f"bad request: {exc}")
        except Exception as exc:  # user code: 500, and StateFun retries
            log.exception("remote invocation failed")
            return web.Response(status=500, text=f"{type(exc).__name__}: {exc}")
        return web.Response(body=answer, content_type=_CONTENT_TYPE)

    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    app = web.Application(client_max_size=32 * 1024 * 1024)
    base = path.rstrip("/") or ""
    app.router.add_post(base or "/", handle)
    app.router.add_post(base + "/{function_name}", handle)
    app[HANDLER_KEY] = handler
    return app


def serve(functions: StatefulFunctions, port: int = 8000, host: str = "127.0.0.1", path: str = "/statefun") -> None:
    """Serve ``functions`` at ``http://host:port/path`` until interrupted (blocking)."""
    web.run_app(make_app(functions, path), host=host, port=port, print=None)
