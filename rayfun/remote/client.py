"""Calling remote functions: one pooled HTTP client per endpoint, with StateFun's retry semantics.

The runtime hands ``invoke`` one batch for one address (its registered state and queued invocations) and
gets back either the batch's effects (``InvocationResult``) or the handshake answer (``MissingStates``).
A call is retried, with a backoff that starts at 2 ms and doubles, on anything that may be transient:
connection errors, timeouts, non-2xx answers, a wrong content type, a body that is not a FromFunction.
Nothing from a failed or garbled attempt is ever returned, so an answer's effects are applied once. When
the endpoint's ``call_timeout`` (or ``max_retries``) is spent, ``RemoteFunctionError`` says which function,
address, URL, how many attempts and the last error. An answer that is well formed but breaks the protocol
(a state written with the wrong type, an unregistered state) is not retried: the function would answer
the same again.

The client lives in the event loop of a shard actor: its ``aiohttp.ClientSession`` is created lazily in
the running loop and ``max_concurrent_requests`` calls at most run at once (the rest wait: backpressure).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from ..errors import RayfunError
from ..logs import RateLimitedLog
from ..runtime.metrics import EndpointLatency
from .endpoint import HttpEndpoint
from .protocol import DecodeError, InvocationResult, MissingStates, ProtocolError, decode_response, encode_request

__all__ = ["InvocationResult", "MissingStates", "RemoteFunctionClient", "RemoteFunctionError"]

_CONTENT_TYPE = "application/octet-stream"
_FIRST_BACKOFF = 0.002  # StateFun's async transport: 2 ms, doubling
_MAX_BACKOFF = 5.0  # StateFun caps only by the remaining budget; a restarted server should not wait a minute
_MIN_BUDGET = 0.001  # give up when less than 1 ms of the call budget is left (as StateFun does)

log = logging.getLogger("rayfun.remote")


class RemoteFunctionError(RayfunError):
    """A remote call that failed for good: the budget is spent, or the answer broke the protocol.

    ``str()`` is one line naming the function, address id, URL, attempts and the last error. ``retryable``
    is False for protocol errors (retrying would get the same answer).
    """

    def __init__(
        self,
        function: str,
        id: str,
        url: str,
        attempts: int,
        last_error: str,
        retryable: bool = True,
        elapsed: float = 0.0,
    ):
        self.function = function
        self.id = id
        self.url = url
        self.attempts = attempts
        self.last_error = last_error
        self.retryable = retryable
        self.elapsed = elapsed
        if retryable:
            what = (
                f"failed after {attempts} attempt{'s' if attempts != 1 else ''} in {elapsed:.2f}s; "
                f"last error: {last_error}"
            )
        else:
            what = f"answered against the protocol (attempt {attempts}): {last_error}"
        super().__init__(f"remote function {function} (id {id!r}) at {url} {what}")

    def __reduce__(self):  # keep the fields across Ray's pickling of exceptions
        return (
            type(self),
            (self.function, self.id, self.url, self.attempts, self.last_error, self.retryable, self.elapsed),
        )


class _AttemptFailed(Exception):
    """One attempt failed in a way worth retrying; the message says how."""


_RETRYABLE_4XX = {404, 408, 425, 429}  # not found (a server starting up), timeout, too early, too many requests


class _Fatal(Exception):
    """One attempt failed in a way that retrying cannot fix (e.g. the server's certificate is untrusted)."""


def make_ssl_context(endpoint: HttpEndpoint) -> ssl.SSLContext | None:
    """The TLS settings of an https endpoint (None for http); fails early on unreadable files."""
    if not endpoint.url_path_template.startswith("https:"):
        return None
    try:
        ctx = ssl.create_default_context(cafile=endpoint.ca_file)
        if not endpoint.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if endpoint.client_cert:
            ctx.load_cert_chain(endpoint.client_cert, endpoint.client_key, endpoint.client_key_password)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"endpoint {endpoint.functions!r}: cannot load TLS files (ca_file={endpoint.ca_file!r}, "
            f"client_cert={endpoint.client_cert!r}, client_key={endpoint.client_key!r}): {exc}"
        ) from exc
    return ctx


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ClientError) and type(exc).__name__ not in text:
        text = f"{type(exc).__name__}: {text}"
    return " ".join(text.split())


class RemoteFunctionClient:
    """The runtime's HTTP client for one endpoint (one per endpoint per shard)."""

    def __init__(self, endpoint: HttpEndpoint):
        self.endpoint = endpoint
        self._ssl = make_ssl_context(endpoint)
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self.in_flight = 0
        #: a failing attempt is a WARNING, at most one line per endpoint per LOG_EVERY_S (retries go on for
        #: minutes within the call budget, and with on_failure="restart" again after every rollback)
        self.attempt_log = RateLimitedLog(log)
        #: counters for metrics and benchmarks
        self.stats: dict[str, int] = {
            "calls": 0,  # invoke() calls
            "requests": 0,  # HTTP attempts
            "retries": 0,  # attempts after the first
            "failures": 0,  # calls that raised RemoteFunctionError
            "protocol_errors": 0,  # of which: invalid answers
            "missing_states": 0,  # handshake answers
            "invocations": 0,  # messages delivered in answered batches
        }
        self.latency = EndpointLatency()  # samples for Ray's histograms (see runtime/metrics.py)

    @property
    def saturated(self) -> bool:
        """True while ``max_concurrent_requests`` calls are in flight (new calls would wait)."""
        return self.in_flight >= self.endpoint.max_concurrent_requests

    def _ensure_session(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        """The session and the request slots (``max_concurrent_requests``) of the running loop."""
        loop = asyncio.get_running_loop()
        session, slots = self._session, self._slots
        if session is None or session.closed or self._loop is not loop or slots is None:
            # a session is bound to its loop; a new loop (e.g. a restarted actor) gets a new one
            connector = aiohttp.TCPConnector(
                limit=self.endpoint.pool_size,
                ssl=self._ssl if self._ssl else True,
                keepalive_timeout=self.endpoint.pool_ttl or None,
            )
            session = self._session = aiohttp.ClientSession(
                connector=connector, headers={"Content-Type": _CONTENT_TYPE}
            )
            self._loop = loop
            slots = self._slots = asyncio.Semaphore(self.endpoint.max_concurrent_requests)
        return session, slots

    async def invoke(
        self,
        target_typename: str,
        target_id: str,
        states: list[tuple[str, str, Any]],
        invocations: list[tuple[tuple[str, str] | None, str, Any]],
        on_send: Callable[[], None] | None = None,
    ) -> InvocationResult | MissingStates:
        """Send one batch to ``target_typename``/``target_id`` and return its validated answer.

        ``states``: ``(state_name, state_typename, payload or None)`` for every registered state;
        ``invocations``: ``(caller (typename, id) or None, value_typename, payload)`` in arrival order.
        ``on_send`` is called once a request slot is free, right before ``invocations`` is encoded: until
        then the caller may still add to the list (messages that arrive while the call waits for a slot go
        with it, so a saturated endpoint gets fewer, bigger requests).
        Raises ``RemoteFunctionError`` when the call fails for good.
        """
        session, slots = self._ensure_session()
        self.stats["calls"] += 1
        url = self.endpoint.url_for(target_typename)
        registered = {name: typename for name, typename, _ in states}
        async with slots:
            if on_send is not None:
                on_send()
            body = encode_request(target_typename, target_id, states, invocations)
            self.in_flight += 1
            began = time.monotonic()
            try:
                result = await self._call(session, url, body, registered, target_typename, target_id)
            finally:
                self.in_flight -= 1
        self.latency.answered(time.monotonic() - began, len(invocations))
        if isinstance(result, MissingStates):
            self.stats["missing_states"] += 1
        else:
            self.stats["invocations"] += len(invocations)
        return result

    async def _call(
        self, session: aiohttp.ClientSession, url: str, body: bytes, registered: dict[str, str], function: str, id: str
    ) -> InvocationResult | MissingStates:
        endpoint = self.endpoint
        start = time.monotonic()
        deadline = start + endpoint.call_timeout
        attempts = 0
        backoff = _FIRST_BACKOFF
        while True:
            attempts += 1
            self.stats["requests"] += 1
            if attempts > 1:
                self.stats["retries"] += 1
            remaining = deadline - time.monotonic()
            attempt_budget = remaining if endpoint.read_timeout is None else min(remaining, endpoint.read_timeout)
            timeout = aiohttp.ClientTimeout(
                total=attempt_budget, sock_connect=min(endpoint.connect_timeout, attempt_budget)
            )
            try:
                answer = await self._attempt(session, url, body, timeout)
                return decode_response(answer, registered)
            except ProtocolError as exc:
                self.stats["failures"] += 1
                self.stats["protocol_errors"] += 1
                raise RemoteFunctionError(
                    function, id, url, attempts, str(exc), retryable=False, elapsed=time.monotonic() - start
                ) from None
            except _Fatal as exc:
                self.stats["failures"] += 1
                raise RemoteFunctionError(
                    function, id, url, attempts, str(exc), elapsed=time.monotonic() - start
                ) from None
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, DecodeError, _AttemptFailed) as exc:
                last_error = _describe(exc)
                if isinstance(exc, asyncio.TimeoutError):
                    kind = "connecting" if isinstance(exc, getattr(aiohttp, "ConnectionTimeoutError", ())) else ""
                    last_error = f"timed out{' ' + kind if kind else ''} (attempt budget {attempt_budget:.3g}s)"
                elif isinstance(exc, DecodeError):
                    last_error = f"undecodable answer ({last_error})"
            remaining = deadline - time.monotonic()
            retries_left = endpoint.max_retries is None or attempts <= endpoint.max_retries
            if remaining < _MIN_BUDGET or not retries_left:
                self.stats["failures"] += 1
                raise RemoteFunctionError(function, id, url, attempts, last_error, elapsed=time.monotonic() - start)
            self.attempt_log.warning(
                endpoint.url_path_template,
                "remote function %s (id %r) at %s: attempt %d failed: %s; retrying (%.1f s of the call budget left)",
                function,
                id,
                url,
                attempts,
                last_error,
                remaining,
            )
            await asyncio.sleep(min(backoff, remaining))
            backoff = min(backoff * 2, _MAX_BACKOFF)
            if deadline - time.monotonic() < _MIN_BUDGET:
                self.stats["failures"] += 1
                raise RemoteFunctionError(function, id, url, attempts, last_error, elapsed=time.monotonic() - start)

    async def _attempt(
        self, session: aiohttp.ClientSession, url: str, body: bytes, timeout: aiohttp.ClientTimeout
    ) -> bytes:
        """One POST; returns the raw answer of a 2xx with the right content type, raises otherwise."""
        try:
            async with session.post(url, data=body, timeout=timeout) as resp:
                if not 200 <= resp.status < 300:
                    detail = (await resp.content.read(300)).decode("utf-8", "replace").strip()
                    line = f"HTTP {resp.status} {resp.reason or ''}".strip() + (f": {detail}" if detail else "")
                    if 400 <= resp.status < 500 and resp.status not in _RETRYABLE_4XX:
                        raise _Fatal(line)  # the request itself is wrong: the same one fails again
                    raise _AttemptFailed(line)
                ctype = resp.headers.get("Content-Type", "")
                if ctype.split(";")[0].strip().lower() != _CONTENT_TYPE:
                    raise _AttemptFailed(f"wrong content type {ctype or '(none)'!r}, expected {_CONTENT_TYPE}")
                limit = self.endpoint.payload_max_bytes
                if resp.content_length is not None and resp.content_length > limit:
                    raise _AttemptFailed(f"answer of {resp.content_length} bytes exceeds payload_max_bytes ({limit})")
                chunks, size = [], 0
                async for chunk in resp.content.iter_any():
                    size += len(chunk)
                    if size > limit:
                        raise _AttemptFailed(f"answer exceeds payload_max_bytes ({limit})")
                    chunks.append(chunk)
                return b"".join(chunks)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise _Fatal(
                f"TLS certificate of the server is not trusted ({_describe(exc.certificate_error)}); "
                f"set the endpoint's ca_file (module.yaml: transport.trust_cacerts) to the CA that "
                f"signed it, or verify=False"
            ) from None

    async def close(self) -> None:
        """Close the pooled connections (the client can still be used: a new session opens lazily)."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
