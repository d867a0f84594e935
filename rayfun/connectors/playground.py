"""The StateFun playground's HTTP ingress and egress (``io.statefun.playground.v1/ingress`` and ``/egress``).

Ingress: ``PUT /<namespace>/<type>/<id>`` with ``Content-Type: application/vnd.<value typename>`` and the
value's bytes as the body sends one message to function ``<namespace>/<type>``, id ``<id>``. Egress: a
function sends to ``io.statefun.playground/egress`` a JSON ``io.statefun.playground/EgressRecord``
(``{"topic": ..., "payload": ...}``) or a Kafka producer record (``kafka_egress_message``: its topic and
value), and ``GET /<topic>`` pops the next record of that topic (404 once it is empty).

Unlike StateFun's playground (which is not fault tolerant), both are exactly-once inside the application:

- Each HTTP server is a small Ray actor per application, started by the source's or sink's ``start``
  hook (on the coordinator's node, so its loopback port is the driver's) and stopped with the
  application. An actor rather than a thread in a shard: shards die and are replaced, and the ingress
  must keep what was PUT but is not yet in a checkpoint, so that a rollback can replay it.
- The ingress server appends every accepted PUT to a log; its one source partition reads the log by
  position (its checkpointed state), so a rollback re-reads from the checkpoint's position. The PUT is
  answered 200 only once a complete checkpoint covers it (``SourcePartition.checkpoint_complete``): a
  client that got 200 knows the message is durable and is processed exactly once. A client that got an
  error or no answer cannot tell, and may retry: from the client's side this is at-least-once unless the
  function dedups (e.g. by a request id in the body). Without checkpoints the PUT is answered once a shard
  has read it.
- The egress sink hands an epoch's records to the egress server only after the epoch's checkpoint is
  complete (the runtime's exactly-once egress), and the server takes each ``(shard partition, epoch)``
  once, so a record republished after a rollback is never visible twice.

If a server actor itself dies, what it held is lost (the ingress's unacknowledged PUTs, the egress's
unread records): it lives in the coordinator's process group and dies with the application.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from collections.abc import Container, Mapping, Sequence
from typing import Any

import ray

from rayfun.errors import RayfunError
from rayfun.io import AppContext, DeliverySemantic, Sink, SinkPartition, Source, SourcePartition, SourceRows
from rayfun.messages import KAFKA_PRODUCER_RECORD, EgressMessage
from rayfun.types import MAX_VALUE_BYTES, check_id, decode_payload, validate_typename

__all__ = [
    "EGRESS_ID",
    "EGRESS_KIND",
    "EGRESS_RECORD_TYPENAME",
    "INGRESS_ID",
    "INGRESS_KIND",
    "PlaygroundEgress",
    "PlaygroundIngress",
    "egress_from_spec",
    "ingress_from_spec",
]

log = logging.getLogger("rayfun")

INGRESS_KIND = "io.statefun.playground.v1/ingress"
EGRESS_KIND = "io.statefun.playground.v1/egress"
#: StateFun's fixed ids of the playground's ingress and egress
INGRESS_ID = "io.statefun.playground/ingress"
EGRESS_ID = "io.statefun.playground/egress"
#: the JSON value ``{"topic": ..., "payload": ...}`` functions send to the playground egress
EGRESS_RECORD_TYPENAME = "io.statefun.playground/EgressRecord"

_CONTENT_TYPE_PREFIX = "application/vnd."
#: how long a PUT waits for the checkpoint that makes it durable before it is answered 504
ACK_TIMEOUT_S = 60.0
#: PUTs accepted but not yet covered by a checkpoint, past which new ones are refused (503)
MAX_UNACKNOWLEDGED = 1 << 20
#: records per topic the egress keeps unread (StateFun's playground keeps 2^20 too); past it the oldest go
MAX_TOPIC_RECORDS = 1 << 20
#: the ingress log is trimmed only to the position of the ``KEEP_CONFIRMED``-th newest complete
#: checkpoint, so that a restore from an older checkpoint than the newest (one set aside as damaged) replays
KEEP_CONFIRMED = 3
_READ_ROWS = 4096
_LONG_POLL_S = 0.25


class PlaygroundError(RayfunError, RuntimeError):
    """A playground server cannot start (e.g. its port is taken)."""


def _node_here() -> Any:
    """Place a server actor on this (the coordinator's, i.e. the driver's) node: its port is on loopback."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


def _start_actor(cls: type, role: str, app: AppContext, *args: Any) -> Any:
    """Start a server actor and wait until it listens; raise PlaygroundError naming why it cannot."""
    from rayfun.runtime.coordinator.config import NAMESPACE, actor_name

    actor: Any = (
        ray.remote(cls)
        .options(
            num_cpus=0,
            max_concurrency=1000,
            max_restarts=0,
            name=actor_name(app.name, role),
            namespace=NAMESPACE,
            scheduling_strategy=_node_here(),
        )
        .remote(*args)
    )
    try:
        ray.get(actor.serve.remote(), timeout=60)
    except Exception as exc:
        ray.kill(actor)
        cause = exc.cause if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause else exc
        raise PlaygroundError(f"the playground {role} cannot start: {cause}") from None
    return actor


def _stop_actor(actor: Any) -> None:
    try:
        ray.get(actor.shutdown.remote(), timeout=10)
    except Exception as exc:  # already gone, or stuck: it goes either way
        log.warning("the playground server did not stop cleanly: %s", exc)
    ray.kill(actor)


class _HttpServer:
    """What both server actors share: an aiohttp server on ``host:port`` in the actor's event loop."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._runner: Any = None

    def _routes(self, app: Any) -> None:
        raise NotImplementedError

    async def serve(self) -> None:
        from aiohttp import web

        app = web.Application(client_max_size=MAX_VALUE_BYTES)
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise PlaygroundError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}") from None

    async def shutdown(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


def _error(status: int, reason: str) -> Any:
    from aiohttp import web

    return web.Response(status=status, text=reason + "\n")


# -- ingress -------------------------------------------------------------------------------------------------


class _IngressServer(_HttpServer):
    """Accepts PUTs into a log (absolute positions from 0 per server ``incarnation``) that the source
    partition reads by position, and answers each PUT once a checkpoint confirms its position."""

    def __init__(self, host: str, port: int, function_types: Container[str]) -> None:
        super().__init__(host, port)
        self.function_types = function_types
        self.incarnation = uuid.uuid4().hex  # positions of another server (a resumed app's) mean nothing here
        self.log: list[tuple] = []  # rows from position ``base`` on
        self.base = 0
        self.confirmed = 0  # every position below is in a complete checkpoint
        self.history: deque[int] = deque(maxlen=KEEP_CONFIRMED)
        self.waiters: deque[tuple[int, asyncio.Future]] = deque()  # (position, its PUT's answer), in order
        self.arrived = asyncio.Event()

    def _routes(self, app: Any) -> None:
        app.router.add_route("*", "/{path:.*}", self._handle)

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        if request.method not in ("PUT", "POST"):
            return _error(405, f"use PUT /<namespace>/<type>/<id> to send a message, not {request.method}")
        parts = request.path.strip("/").split("/")
        if len(parts) != 3 or not all(parts):
            return _error(
                404, f"the path must be /<namespace>/<type>/<id> (the target function and id), got {request.path!r}"
            )
        namespace, name, id = parts
        target = f"{namespace}/{name}"
        try:
            validate_typename(target)
            check_id(id, "the id")
        except ValueError as exc:
            return _error(400, f"bad target {target}/{id}: {exc}")
        if target not in self.function_types:
            return _error(404, f"no function type {target} is bound in this application")
        header = request.headers.get("Content-Type")
        if not header:
            return _error(
                415, "missing Content-Type: send 'application/vnd.<namespace>/<type>' naming the value's type"
            )
        mime = header.split(";", 1)[0].strip()
        if not mime.startswith(_CONTENT_TYPE_PREFIX):
            return _error(
                415, f"Content-Type {mime!r} is not 'application/vnd.<namespace>/<type>' (the value's typename)"
            )
        vtype = mime[len(_CONTENT_TYPE_PREFIX) :]
        try:
            validate_typename(vtype)
        except ValueError as exc:
            return _error(415, f"Content-Type {mime!r}: {exc}")
        body = await request.read()
        try:
            payload = decode_payload(vtype, body)  # built-in types are held decoded (see rayfun.types)
        except ValueError as exc:
            return _error(400, f"the body is not a {vtype}: {exc}")
        if self.base + len(self.log) - self.confirmed >= MAX_UNACKNOWLEDGED:
            return _error(503, f"{MAX_UNACKNOWLEDGED} messages wait for a checkpoint already: retry later")
        position = self.base + len(self.log)
        self.log.append((target, id, None, vtype, payload))
        answer = asyncio.get_running_loop().create_future()
        self.waiters.append((position, answer))
        self.arrived.set()
        try:
            await asyncio.wait_for(asyncio.shield(answer), ACK_TIMEOUT_S)
        except asyncio.TimeoutError:
            return _error(
                504,
                f"accepted, but no checkpoint covered it within {ACK_TIMEOUT_S:.0f} s: it may still be "
                "processed, so a retry may deliver it twice",
            )
        if answer.cancelled() or answer.result() is not True:
            return _error(503, "the application stopped before a checkpoint covered the message: it may be lost")
        return web.Response(status=200)

    async def read(self, incarnation: str | None, position: int, rows: int) -> tuple[str, int, list]:
        """Rows from ``position`` on (waiting a little for some), as ``(incarnation, start, rows)``: a
        position of another incarnation starts at this server's beginning."""
        if incarnation != self.incarnation:
            position = self.base
        if position < self.base:  # restored from a checkpoint older than KEEP_CONFIRMED newer ones
            log.error("playground ingress: position %d was trimmed (log starts at %d)", position, self.base)
            position = self.base
        if position >= self.base + len(self.log):
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), _LONG_POLL_S)
            except asyncio.TimeoutError:
                pass
        start = position - self.base
        return self.incarnation, position, self.log[start : start + rows]

    def confirm(self, incarnation: str, position: int) -> None:
        """Every row before ``position`` is in a complete checkpoint: answer their PUTs, trim the log."""
        if incarnation != self.incarnation or position <= self.confirmed:
            return
        self.confirmed = position
        while self.waiters and self.waiters[0][0] < position:
            _, answer = self.waiters.popleft()
            if not answer.done():
                answer.set_result(True)
        self.history.append(position)
        keep = self.history[0]
        if keep > self.base:
            del self.log[: keep - self.base]
            self.base = keep

    async def shutdown(self) -> None:
        while self.waiters:
            _, answer = self.waiters.popleft()
            if not answer.done():
                answer.set_result(False)
        await asyncio.sleep(0)  # let the handlers answer before the server closes
        await super().shutdown()


class _IngressPartition(SourcePartition):
    """Reads the server's log from its position; the position is ``(incarnation, next position)``."""

    def __init__(self, server: Any, resume_state: Any, acknowledge_on_read: bool) -> None:
        self._server = server
        self._incarnation: str | None
        self._position: int
        self._incarnation, self._position = resume_state if resume_state else (None, 0)
        self._acknowledge_on_read = acknowledge_on_read
        self._ref: Any = None

    def next_rows(self) -> SourceRows | None:
        if self._ref is None:
            self._ref = self._server.read.remote(self._incarnation, self._position, _READ_ROWS)
        ready, _ = ray.wait([self._ref], timeout=0)
        if not ready:
            return []
        ref, self._ref = self._ref, None
        self._incarnation, start, rows = ray.get(ref)
        self._position = start + len(rows)
        if rows and self._acknowledge_on_read:  # no checkpoints: read is as durable as it gets
            self._server.confirm.remote(self._incarnation, self._position)
        return list(rows)

    def next_batch(self) -> Any:  # next_rows is the path the runtime takes
        raise NotImplementedError("the playground ingress partition is read through next_rows")

    def snapshot(self) -> tuple[str | None, int]:
        return (self._incarnation, self._position)

    def checkpoint_complete(self, position: Any) -> None:
        incarnation, at = position
        if incarnation is not None:
            self._server.confirm.remote(incarnation, at)


class PlaygroundIngress(Source):
    """The playground's HTTP ingress on ``host:port`` (one partition; the shard that reads it routes)."""

    def __init__(self, port: int = 8090, host: str = "127.0.0.1", id: str = INGRESS_ID) -> None:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"the playground ingress port must be 1..65535, got {port!r}")
        validate_typename(id)
        self.id, self.port, self.host = id, port, host
        self._server: Any = None
        self._acknowledge_on_read = False

    def start(self, app: AppContext) -> None:
        self._server = _start_actor(_IngressServer, "playground-ingress", app, self.host, self.port, app.function_types)
        self._acknowledge_on_read = not app.checkpoints

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            _stop_actor(server)

    def partitions(self) -> list[str]:
        return ["0"]

    def build_partition(self, partition: str, resume_state: Any | None) -> SourcePartition:
        if self._server is None:
            raise RuntimeError(f"the playground ingress {self.id} is used outside a running application")
        return _IngressPartition(self._server, resume_state, self._acknowledge_on_read)


# -- egress --------------------------------------------------------------------------------------------------


class _EgressServer(_HttpServer):
    """Holds published records per topic; ``GET /<topic>`` pops one. Takes each (partition, epoch) once."""

    def __init__(self, host: str, port: int, topics: Sequence[str]) -> None:
        super().__init__(host, port)
        self.topics = tuple(topics)
        self.queues: dict[str, deque[bytes]] = {t: deque() for t in self.topics}
        self.seen: set[tuple[int, int]] = set()

    def _routes(self, app: Any) -> None:
        app.router.add_route("*", "/{path:.*}", self._handle)

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        if request.method != "GET":
            return _error(405, f"use GET /<topic> to take the next record, not {request.method}")
        topic = request.path.strip("/")
        if not topic or "/" in topic:
            return _error(404, f"the path must be /<topic>, got {request.path!r}")
        if self.topics and topic not in self.topics:
            return _error(404, f"unknown topic {topic!r} (topics: {', '.join(self.topics)})")
        queue = self.queues.get(topic)
        if not queue:
            return _error(404, f"no record in topic {topic!r} yet")
        return web.Response(status=200, body=queue.popleft(), content_type="application/octet-stream")

    def publish(self, partition: int, epoch: int, records: list[tuple[str, bytes]]) -> None:
        if epoch >= 0:
            if (partition, epoch) in self.seen:
                return  # republished after a rollback: visible once already
            self.seen.add((partition, epoch))
        for topic, body in records:
            queue = self.queues.setdefault(topic, deque())
            if len(queue) >= MAX_TOPIC_RECORDS:
                queue.popleft()
                log.warning(
                    "playground egress: topic %s holds %d unread records, dropped the oldest", topic, len(queue)
                )
            queue.append(body)


class PlaygroundEgressRecordError(RayfunError, ValueError):
    """Records the playground egress cannot take (wrong typename, malformed JSON, unknown topic); the
    others of the batch were published, ``rejected`` lists ``(record, reason)`` for the runtime to dead-letter."""

    def __init__(self, egress_id: str, rejected: list[tuple[EgressMessage, str]]):
        self.rejected = rejected
        super().__init__(f"playground egress {egress_id}: {rejected[0][1]}")


def _topic_and_body(record: EgressMessage) -> tuple[str, bytes]:
    """The topic and body of one egress record; ValueError naming what is wrong."""
    vtype, payload = record.value_type_name, record.payload
    if vtype == EGRESS_RECORD_TYPENAME:
        try:
            value = json.loads(payload)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"an {EGRESS_RECORD_TYPENAME} must be JSON {{topic, payload}}: {exc}") from None
        if not isinstance(value, dict) or not isinstance(value.get("topic"), str) or "payload" not in value:
            raise ValueError(f'an {EGRESS_RECORD_TYPENAME} must be JSON {{"topic": str, "payload": ...}}')
        body = value["payload"]
        return value["topic"], body.encode() if isinstance(body, str) else json.dumps(body).encode()
    if vtype == KAFKA_PRODUCER_RECORD:
        from rayfun.connectors.kafka.records import decode_producer_record

        kafka = decode_producer_record(payload)
        return kafka.topic, kafka.value
    raise ValueError(
        f"the playground egress takes {EGRESS_RECORD_TYPENAME} (JSON {{topic, payload}}) or "
        f"kafka_egress_message records, got a {vtype}"
    )


class _EgressPartition(SinkPartition):
    def __init__(self, sink_id: str, server: Any, index: int, topics: Sequence[str]) -> None:
        self._sink_id, self._server, self._index, self._topics = sink_id, server, index, topics
        self.pending_refs: list = []  # the runtime awaits these before it reports an epoch published

    def write_batch(self, records: list[EgressMessage], epoch: int) -> None:
        out, rejected = [], []
        for record in records:
            try:
                topic, body = _topic_and_body(record)
                if self._topics and topic not in self._topics:
                    raise ValueError(f"unknown topic {topic!r} (topics: {', '.join(self._topics)})")
                out.append((topic, body))
            except ValueError as exc:
                rejected.append((record, str(exc)))
        # calls from one shard to the server keep their order; the server dedups by (partition, epoch)
        self.pending_refs.append(self._server.publish.remote(self._index, epoch, out))
        if rejected:
            raise PlaygroundEgressRecordError(self._sink_id, rejected)


class PlaygroundEgress(Sink):
    """The playground's HTTP egress on ``host:port``: ``GET /<topic>`` pops the next record of ``topics``
    (any topic when none are given). Exactly-once: records appear once their epoch's checkpoint is complete."""

    def __init__(
        self,
        port: int = 8091,
        host: str = "127.0.0.1",
        topics: Sequence[str] = (),
        id: str = EGRESS_ID,
        delivery: str = DeliverySemantic.EXACTLY_ONCE,
    ) -> None:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"the playground egress port must be 1..65535, got {port!r}")
        for topic in topics:
            if not isinstance(topic, str) or not topic or "/" in topic:
                raise ValueError(f"a playground egress topic is a non-empty name without '/', got {topic!r}")
        validate_typename(id)
        self.id, self.port, self.host, self.topics, self.delivery = id, port, host, tuple(topics), delivery
        self._server: Any = None

    def start(self, app: AppContext) -> None:
        self._server = _start_actor(_EgressServer, "playground-egress", app, self.host, self.port, self.topics)

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            _stop_actor(server)

    def build_partition(self, index: int, count: int) -> SinkPartition:
        if self._server is None:
            raise RuntimeError(f"the playground egress {self.id} is used outside a running application")
        return _EgressPartition(self.id, self._server, index, self.topics)


# -- module.yaml ---------------------------------------------------------------------------------------------


def _port(spec: Mapping[str, Any], default: int, where: str) -> int:
    port = spec.get("port", default)
    if isinstance(port, bool) or not isinstance(port, int):
        raise ValueError(f"{where}: 'port' must be an integer, got {port!r}")
    return port


def _check_keys(spec: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ValueError(f"{where}: unknown keys {extra} (known: {', '.join(sorted(allowed))})")


def ingress_from_spec(spec: Mapping[str, Any]) -> PlaygroundIngress:
    """A ``PlaygroundIngress`` from the ``spec`` of an ``io.statefun.playground.v1/ingress`` document:
    ``port`` (default 8090), ``host`` (default 127.0.0.1: loopback only)."""
    _check_keys(spec, {"port", "host"}, INGRESS_KIND)
    return PlaygroundIngress(_port(spec, 8090, INGRESS_KIND), str(spec.get("host", "127.0.0.1")))


def egress_from_spec(spec: Mapping[str, Any]) -> PlaygroundEgress:
    """A ``PlaygroundEgress`` from the ``spec`` of an ``io.statefun.playground.v1/egress`` document:
    ``port`` (default 8091), ``host`` (default 127.0.0.1), ``topics`` (default: any topic)."""
    _check_keys(spec, {"port", "host", "topics"}, EGRESS_KIND)
    topics = spec.get("topics") or []
    if not isinstance(topics, list):
        raise ValueError(f"{EGRESS_KIND}: 'topics' must be a list of names, got {topics!r}")
    return PlaygroundEgress(
        _port(spec, 8091, EGRESS_KIND), str(spec.get("host", "127.0.0.1")), [str(t) for t in topics]
    )
