"""Kafka egress: StateFun's Kafka egress (``io.statefun.kafka.v1/egress``) as a rayfun Sink.

Functions send ``KafkaProducerRecord``s (``kafka_egress_message``) to the egress id; anything else is
rejected with an ``EgressRecordError`` that names the egress and the typename.

Exactly-once. The runtime hands a sink partition the records of epoch ``n`` only after checkpoint ``n`` is
complete, and may hand the same epoch again after a crash. Each ``(partition index, epoch)`` is published
as one Kafka transaction that also writes an *epoch marker* (key ``<transactional.id>/<run id>``, value
the epoch) to the marker topic ``__rayfun_egress_epochs``. A partition reads its last marker back when it
opens (after ``init_transactions``, which fences any older producer of the same ``transactional.id`` and
aborts its open transaction) and skips epochs at or below it. The runtime publishes a partition's epochs in
increasing order, so the last marker is the highest published epoch. Readers use
``isolation.level=read_committed``, as with StateFun.

Why the marker is written *after* the records are flushed (one extra round trip per epoch, not per record):
some brokers do not hide aborted transactions from ``read_committed`` readers. Tansu 0.6.0 is one (its fetch
responses never list aborted transactions). There a transaction cut short by a crash stays visible, and the
order gives the guarantee that remains: a visible marker means every record of its epoch is visible, so a
republished epoch is skipped exactly when its records are already out. The residual window on such a
broker: a crash after *some* records of an epoch were written and *before* its marker leaves that prefix
visible, and the epoch is then published again in full (those records appear twice). On Apache Kafka (and
brokers that filter aborted transactions) the aborted attempt is invisible and delivery is exactly-once.

Tansu also never times out an open transaction: a crashed publisher's transaction holds the partition's last
stable offset back, so ``read_committed`` readers of those partitions wait until a partition with the same
index opens again (its ``init_transactions`` aborts it). Markers are spread over the marker topic's
partitions by sink and index so one stuck partition does not hold the others back.

Epoch numbers start again in a fresh application, so markers are scoped by ``run_id``: the runtime should
set ``sink.run_id`` to an id that stays the same across restores of one application and changes when an
application starts without a checkpoint to restore (e.g. an id kept in its checkpoint history). Without
that, each ``KafkaSink`` object draws a random run id: exactly-once holds across every restore inside the
application's lifetime, and a *new* application never skips its epochs because of an old one's markers;
the cost is that an application restarted from its checkpoints by a new driver may publish the epoch that
was in flight at the crash a second time.

Epoch ``-1`` (the runtime runs without checkpoints) is published in a transaction without a marker: with no
checkpoint there is no replay to deduplicate.

At-least-once. Records are produced with the idempotent producer and flushed once per batch (``"none"``:
produced without waiting).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rayfun.io import DeliverySemantic, Sink, SinkPartition
from rayfun.messages import KAFKA_PRODUCER_RECORD, EgressMessage
from rayfun.types import validate_typename

from ...errors import RayfunError
from .records import KafkaProducerRecord, decode_producer_record

if TYPE_CHECKING:
    from confluent_kafka import Producer

__all__ = ["MARKER_TOPIC", "EgressRecordError", "KafkaEgressError", "KafkaSink"]

log = logging.getLogger(__name__)

#: where exactly-once Kafka egresses record the last epoch each partition published.
MARKER_TOPIC = "__rayfun_egress_epochs"

_DELIVERY = ("exactly-once", "at-least-once", "none")


def _kafka():
    try:
        import confluent_kafka
    except ImportError:
        raise ImportError("the Kafka connector needs confluent-kafka: pip install 'rayfun[kafka]'") from None
    return confluent_kafka


class EgressRecordError(RayfunError, ValueError):
    """Records of a batch that cannot go to Kafka (wrong typename, malformed record, unknown topic).

    The other records of the batch *were* published; ``rejected`` lists ``(record, reason)`` for the ones
    that were not, so a caller can dead-letter exactly those.
    """

    def __init__(self, egress_id: str, rejected: list[tuple[EgressMessage, str]]):
        self.egress_id = egress_id
        self.rejected = rejected
        more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
        super().__init__(f"Kafka egress {egress_id}: {rejected[0][1]}{more}")


class KafkaEgressError(RayfunError, RuntimeError):
    """Publishing to Kafka failed (broker unreachable, fenced producer, timeout): nothing of the batch is
    committed in exactly-once mode, so the epoch must be published again (it is safe to retry)."""


class KafkaSink(Sink):
    """A Kafka egress for ``KafkaProducerRecord`` values.

    ``delivery``: ``"exactly-once"`` (transactions per epoch, see the module doc), ``"at-least-once"`` (flush
    per batch) or ``"none"`` (fire and forget). ``properties`` are raw librdkafka producer settings and
    override the defaults; a ``transactional.id`` there is used as the prefix (partition ``i`` uses
    ``<prefix>-<i>``; give each application its own prefix, as Kafka requires of transactional ids). ``transaction_timeout_ms``
    bounds one epoch's publication (not the checkpoint interval, unlike Flink: our transactions open and
    commit within one ``write_batch``).
    """

    def __init__(
        self,
        id: str,
        bootstrap: str,
        *,
        delivery: str = DeliverySemantic.EXACTLY_ONCE,
        transactional_id_prefix: str | None = None,
        properties: Mapping[str, Any] | None = None,
        transaction_timeout_ms: int = 60_000,
        marker_topic: str = MARKER_TOPIC,
        marker_partitions: int = 32,
        timeout: float = 60.0,
        run_id: str | None = None,
    ):
        validate_typename(id)
        if not bootstrap:
            raise ValueError(f"Kafka egress {id}: no bootstrap address")
        if delivery not in _DELIVERY:
            raise ValueError(f"Kafka egress {id}: delivery must be one of {_DELIVERY}, got {delivery!r}")
        self.id = id
        self.bootstrap = bootstrap
        self.semantic = delivery
        self.delivery = DeliverySemantic.EXACTLY_ONCE if delivery == "exactly-once" else DeliverySemantic.AT_LEAST_ONCE
        properties = dict(properties or {})
        self.transactional_id_prefix = str(
            properties.pop("transactional.id", None) or transactional_id_prefix or "rayfun-" + id.replace("/", ".")
        )
        self.properties = properties
        self.transaction_timeout_ms = int(transaction_timeout_ms)
        self.marker_topic = marker_topic
        self.marker_partitions = marker_partitions
        self.timeout = timeout
        #: scopes the epoch markers to one application run (see the module doc); set it before partitions open
        self.run_id = run_id or uuid.uuid4().hex[:16]

    def producer_config(self, index: int) -> dict[str, Any]:
        """The librdkafka settings of partition ``index``'s producer (the user's ``properties`` win)."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "delivery.report.only.error": True,
            "log_level": 3,
        }
        if self.semantic == "exactly-once":
            config["transactional.id"] = f"{self.transactional_id_prefix}-{index}"
            config["transaction.timeout.ms"] = self.transaction_timeout_ms
            config["message.timeout.ms"] = min(self.transaction_timeout_ms, int(self.timeout * 1000))
        config.update(self.properties)
        return config

    def build_partition(self, index: int, count: int) -> SinkPartition:
        if self.semantic == "exactly-once":
            return TransactionalKafkaPartition(self, index)
        return KafkaSinkPartition(self, index)


class KafkaSinkPartition(SinkPartition):
    """At-least-once (or ``none``) publishing; the base of the transactional partition."""

    def __init__(self, sink: KafkaSink, index: int):
        self._ck = _kafka()
        self._sink = sink
        self._id = sink.id
        self._index = index
        self._timeout = sink.timeout
        self._errors: list[Any] = []
        config = sink.producer_config(index)
        config["on_delivery"] = self._on_delivery
        self._producer: Producer | None = self._ck.Producer(config)  # None once closed
        self._topics: set[str] = set()

    def _live_producer(self) -> Producer:
        """The producer, which a closed partition no longer has (the runtime does not use it after close)."""
        producer = self._producer
        if producer is None:
            raise RuntimeError(f"Kafka egress {self._id} partition {self._index} is closed")
        return producer

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is not None:
            self._errors.append((err, msg.topic()))

    # -- records ---------------------------------------------------------------------------------------

    def _decode(
        self, records: list[EgressMessage]
    ) -> tuple[list[KafkaProducerRecord], list[tuple[EgressMessage, str]]]:
        decoded: list[tuple[EgressMessage, KafkaProducerRecord]] = []
        rejected: list[tuple[EgressMessage, str]] = []
        for r in records:
            if r.value_type_name != KAFKA_PRODUCER_RECORD:
                rejected.append(
                    (
                        r,
                        f"accepts only {KAFKA_PRODUCER_RECORD} values (build them with "
                        f"kafka_egress_message), got a value of type {r.value_type_name}",
                    )
                )
                continue
            try:
                decoded.append((r, decode_producer_record(r.payload)))
            except (ValueError, TypeError) as exc:
                rejected.append((r, f"malformed {KAFKA_PRODUCER_RECORD}: {exc}"))
        missing = self._missing_topics({rec.topic for _, rec in decoded}) if decoded else set()
        if missing:
            rejected.extend(
                (r, f"topic {rec.topic!r} does not exist on {self._sink.bootstrap}")
                for r, rec in decoded
                if rec.topic in missing
            )
        return [rec for _, rec in decoded if rec.topic not in missing], rejected

    def _missing_topics(self, topics: set[str]) -> set[str]:
        """Topics unknown to the cluster (checked once per topic: a record for a missing topic would otherwise
        wait for ``message.timeout.ms`` and then fail the whole transaction)."""
        missing = set()
        for topic in topics - self._topics:
            try:
                md = self._live_producer().list_topics(topic, timeout=self._timeout).topics.get(topic)
            except self._ck.KafkaException as exc:
                raise KafkaEgressError(f"Kafka egress {self._id}: metadata for topic {topic!r} failed: {exc}") from None
            if md is None or md.error is not None or not md.partitions:
                missing.add(topic)
            else:
                self._topics.add(topic)
        return missing

    def _produce_all(self, records: list[KafkaProducerRecord]) -> None:
        producer = self._live_producer()
        produce, poll = producer.produce, producer.poll
        for rec in records:
            while True:
                try:
                    produce(rec.topic, rec.value, rec.key)
                    break
                except BufferError:  # the local queue is full: let librdkafka send some first
                    poll(0.05)

    def _flush(self) -> None:
        left = self._live_producer().flush(self._timeout)
        if left:
            raise KafkaEgressError(
                f"Kafka egress {self._id}: {left} records not delivered within {self._timeout:.0f} s"
            )
        self._raise_delivery_errors()

    def _raise_delivery_errors(self) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            err, topic = errors[0]
            raise KafkaEgressError(
                f"Kafka egress {self._id}: {len(errors)} records failed, e.g. to topic {topic!r}: {err}"
            )

    # -- the contract ----------------------------------------------------------------------------------

    def write_batch(self, records: list[EgressMessage], epoch: int) -> None:
        good, rejected = self._decode(records)
        if good:
            self._produce_all(good)
            if self._sink.semantic == "none":
                self._live_producer().poll(0)
            else:
                self._flush()
        if rejected:
            raise EgressRecordError(self._id, rejected)

    def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            left = producer.flush(self._timeout)
            if left:
                log.error(
                    "Kafka egress %s partition %d: %d records not delivered at close", self._id, self._index, left
                )


class TransactionalKafkaPartition(KafkaSinkPartition):
    """Exactly-once: one transaction per epoch with its marker; epochs at or below the last marker are skipped."""

    _ATTEMPTS = 3

    def __init__(self, sink: KafkaSink, index: int):
        super().__init__(sink, index)
        self._marker_key = f"{sink.transactional_id_prefix}-{index}/{sink.run_id}".encode()
        try:
            self._marker_partition = self._ensure_marker_topic(sink, index)
            self._init()
        except BaseException:
            self._producer = None
            raise

    def _ensure_marker_topic(self, sink: KafkaSink, index: int) -> int:
        from .broker import BrokerError, create_topics

        producer = self._live_producer()
        md = producer.list_topics(sink.marker_topic, timeout=self._timeout).topics.get(sink.marker_topic)
        if md is None or md.error is not None or not md.partitions:
            try:
                create_topics(
                    sink.bootstrap,
                    [sink.marker_topic],
                    partitions=sink.marker_partitions,
                    config={"cleanup.policy": "compact"},
                    timeout=self._timeout,
                )
            except BrokerError:  # a broker that refuses the config: markers work uncompacted too
                create_topics(
                    sink.bootstrap, [sink.marker_topic], partitions=sink.marker_partitions, timeout=self._timeout
                )
            deadline = time.monotonic() + self._timeout
            while True:
                md = producer.list_topics(sink.marker_topic, timeout=self._timeout).topics.get(sink.marker_topic)
                if md is not None and md.error is None and md.partitions:
                    break
                if time.monotonic() > deadline:
                    raise KafkaEgressError(
                        f"Kafka egress {sink.id}: marker topic {sink.marker_topic!r} is not "
                        f"available on {sink.bootstrap}"
                    )
                time.sleep(0.1)
        # stable as long as the marker topic's partition count is never changed
        return (zlib.crc32(sink.id.encode("utf-8")) + index) % len(md.partitions)

    def _init(self) -> None:
        try:
            self._live_producer().init_transactions(self._timeout)
        except self._ck.KafkaException as exc:
            raise KafkaEgressError(
                f"Kafka egress {self._id} partition {self._index}: init_transactions "
                f"failed (does the broker support transactions?): {exc}"
            ) from None
        self._last_epoch = self._read_last_epoch()
        log.debug("Kafka egress %s partition %d: last published epoch %s", self._id, self._index, self._last_epoch)

    @property
    def last_epoch(self) -> int | None:
        """The highest epoch this partition index has published (None: none yet)."""
        return self._last_epoch

    def _read_last_epoch(self) -> int | None:
        """The epoch of this partition's last committed marker, scanning the marker partition from its end
        backwards in growing windows (the newest marker is near the end; older windows only when not)."""
        ck = self._ck
        tp = ck.TopicPartition(self._sink.marker_topic, self._marker_partition)
        low, end = self._stable_range(tp)
        consumer = ck.Consumer(
            {
                "bootstrap.servers": self._sink.bootstrap,
                "group.id": f"{self._sink.transactional_id_prefix}-markers",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,
                "log_level": 3,
            }
        )
        try:
            window, stop = 256, None  # the newest window is read to the partition's end, whatever it is
            while end > low:
                start = max(low, end - window)
                found = self._scan(consumer, tp, start, stop)
                if found is not None:
                    return found
                end = stop = start
                window *= 4
            return None
        finally:
            consumer.close()

    def _stable_range(self, tp: Any) -> tuple[int, int]:
        """``(log start, end)`` of the marker partition once every transaction open in it has finished, so
        that no committed marker of ours lies beyond what a read_committed reader sees."""
        from confluent_kafka import IsolationLevel
        from confluent_kafka.admin import AdminClient, OffsetSpec

        admin = AdminClient({"bootstrap.servers": self._sink.bootstrap, "log_level": 3})

        def offset(spec: Any, isolation: Any) -> int:
            future = admin.list_offsets({tp: spec}, isolation_level=isolation, request_timeout=self._timeout)[tp]
            return future.result(self._timeout).offset

        low = offset(OffsetSpec.earliest(), IsolationLevel.READ_UNCOMMITTED)
        high = offset(OffsetSpec.latest(), IsolationLevel.READ_UNCOMMITTED)
        wait_s = self._sink.transaction_timeout_ms / 1000 + self._timeout
        deadline = time.monotonic() + wait_s
        while offset(OffsetSpec.latest(), IsolationLevel.READ_COMMITTED) < high:
            if time.monotonic() > deadline:
                raise KafkaEgressError(
                    f"Kafka egress {self._id} partition {self._index}: marker partition {tp.topic}/{tp.partition} "
                    f"has a transaction open for more than {wait_s:.0f} s (a crashed egress partition that shares "
                    f"it has not been reopened, and the broker does not time transactions out)"
                )
            time.sleep(0.05)
        return max(low, 0), high

    def _scan(self, consumer: Any, tp: Any, start: int, stop: int | None) -> int | None:
        """The epoch of our last marker in ``[start, stop)`` (``stop`` None: to the end of the partition)."""
        ck = self._ck
        consumer.assign([ck.TopicPartition(tp.topic, tp.partition, start)])
        found: int | None = None
        deadline = time.monotonic() + self._timeout
        while True:
            for m in consumer.consume(1000, timeout=0.2):
                err = m.error()
                if err is not None:
                    if err.code() == ck.KafkaError._PARTITION_EOF:
                        return found
                    raise KafkaEgressError(f"Kafka egress {self._id}: reading markers failed: {err}")
                if stop is not None and m.offset() >= stop:
                    return found
                if m.key() == self._marker_key:
                    try:
                        found = int(json.loads(m.value())["epoch"])
                    except (ValueError, KeyError, TypeError):
                        log.warning(
                            "Kafka egress %s: unreadable epoch marker at %s/%d@%d",
                            self._id,
                            tp.topic,
                            tp.partition,
                            m.offset(),
                        )
            if time.monotonic() > deadline:
                raise KafkaEgressError(
                    f"Kafka egress {self._id}: reading markers from {tp.topic}/{tp.partition} "
                    f"timed out after {self._timeout:.0f} s"
                )

    # -- the contract ----------------------------------------------------------------------------------

    def write_batch(self, records: list[EgressMessage], epoch: int) -> None:
        if epoch >= 0 and self._last_epoch is not None and epoch <= self._last_epoch:
            log.info(
                "Kafka egress %s partition %d: epoch %d already published (last %d): skipped",
                self._id,
                self._index,
                epoch,
                self._last_epoch,
            )
            return
        good, rejected = self._decode(records)
        if good:
            self._transaction(good, epoch)
            if epoch >= 0:
                self._last_epoch = epoch
        if rejected:
            raise EgressRecordError(self._id, rejected)

    def _transaction(self, records: list[KafkaProducerRecord], epoch: int) -> None:
        ck, producer = self._ck, self._live_producer()
        for attempt in range(1, self._ATTEMPTS + 1):
            try:
                producer.begin_transaction()
                self._produce_all(records)
                if epoch >= 0:
                    self._flush()  # every record is written before the marker (see the module doc)
                    marker = json.dumps({"epoch": epoch, "records": len(records)}).encode("utf-8")
                    producer.produce(
                        self._sink.marker_topic, marker, self._marker_key, partition=self._marker_partition
                    )
                self._commit()
                return
            except (ck.KafkaException, KafkaEgressError) as exc:
                err = exc.args[0] if isinstance(exc, ck.KafkaException) and exc.args else None
                self._errors = []
                if isinstance(err, ck.KafkaError) and (err.fatal() or not err.txn_requires_abort()):
                    raise KafkaEgressError(
                        f"Kafka egress {self._id} partition {self._index}: publishing epoch {epoch} failed: {err}"
                    ) from None
                try:
                    producer.abort_transaction(self._timeout)
                except ck.KafkaException as abort_exc:
                    raise KafkaEgressError(
                        f"Kafka egress {self._id} partition {self._index}: epoch {epoch} "
                        f"failed ({exc}) and aborting failed too: {abort_exc}"
                    ) from None
                if attempt == self._ATTEMPTS:
                    raise KafkaEgressError(
                        f"Kafka egress {self._id} partition {self._index}: publishing epoch "
                        f"{epoch} failed {attempt} times: {exc}"
                    ) from None
                log.warning(
                    "Kafka egress %s partition %d: epoch %d attempt %d failed, retrying: %s",
                    self._id,
                    self._index,
                    epoch,
                    attempt,
                    exc,
                )

    def _commit(self) -> None:
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                self._live_producer().commit_transaction(self._timeout)
                return
            except self._ck.KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and not err.txn_requires_abort() and time.monotonic() < deadline:
                    continue
                raise

    def close(self) -> None:
        self._producer = None  # every transaction completed inside write_batch: nothing to flush
