"""Kafka ingress: StateFun's routable Kafka ingress (``io.statefun.kafka.v1/ingress``) as a rayfun Source.

Every Kafka (topic, partition) is one source partition, named ``"<topic>/<partition>"``. A partition is read
by a consumer that is *assigned* that one TopicPartition (no group subscription, no rebalancing: the runtime
places partitions on shards), starting at the offset stored in the last checkpoint. Its position is the next
offset to read, so a restore re-reads exactly what the failed run had not checkpointed: exactly-once
ingestion. Offsets are also committed to the consumer group, asynchronously and only as a courtesy for
monitoring tools and ``group-offsets`` start-up; the checkpoint is the truth.

Routing is StateFun's: the record key (UTF-8) is the target function id, and the value goes unchanged to
every target function type as ``TypedValue(valueType, record bytes)``. Records that cannot become messages
(no key, a key that is not UTF-8, no value, bytes that do not decode as a built-in valueType) come back as
``DeadLetter``s rather than failing the job as StateFun would.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rayfun.io import DeadLetter, Source, SourcePartition, SourceRows
from rayfun.messages import Message
from rayfun.types import BUILTIN_TYPES, MAX_ID_CHARS, validate_typename

if TYPE_CHECKING:  # confluent-kafka is imported when a partition opens (the `kafka` extra)
    from confluent_kafka import Consumer
    from confluent_kafka import Message as KafkaMessage

__all__ = ["STARTUP_POSITIONS", "KafkaSource", "KafkaTopic"]

log = logging.getLogger(__name__)

#: the startup positions of StateFun's Kafka ingress (plus the two that take an argument).
STARTUP_POSITIONS = ("earliest", "latest", "group-offsets", "specific-offsets", "date")


def _kafka():
    try:
        import confluent_kafka
    except ImportError:
        raise ImportError("the Kafka connector needs confluent-kafka: pip install 'rayfun[kafka]'") from None
    return confluent_kafka


@dataclass(frozen=True)
class KafkaTopic:
    """A topic of the ingress: its records carry ``value_type`` and go to every function type in ``targets``."""

    topic: str
    value_type: str
    targets: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.topic or "/" in self.topic:
            raise ValueError(f"invalid Kafka topic name {self.topic!r}")
        validate_typename(self.value_type)
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets:
            raise ValueError(f"topic {self.topic!r} needs at least one target function type")
        for t in targets:
            validate_typename(t)
        object.__setattr__(self, "targets", targets)


def _date_ms(value: Any) -> int:
    """Milliseconds since the epoch for a startup date: ms, a datetime, or StateFun's
    ``"2020-02-01 04:15:00.00 Z"`` (any ISO-8601 form; naive times are UTC)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid startup date {value!r}")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
        value = _dt.datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(" Z") or text.endswith("Z"):
            text = text[:-1].rstrip() + "+00:00"
        try:
            value = _dt.datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"invalid startup date {value!r}: expected e.g. '2020-02-01 04:15:00.00 Z'") from None
    if not isinstance(value, _dt.datetime):
        raise ValueError(f"invalid startup date {value!r}")
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.timezone.utc)
    return int(value.timestamp() * 1000)


def _normalize_startup(startup: Any) -> tuple[str, Any]:
    if isinstance(startup, str):
        if startup not in ("earliest", "latest", "group-offsets"):
            raise ValueError(f"unknown startup position {startup!r}: expected one of {STARTUP_POSITIONS}")
        return startup, None
    if isinstance(startup, Mapping) and len(startup) == 1:
        ((kind, arg),) = startup.items()
        if kind == "specific-offsets":
            offsets = {}
            for name, offset in dict(arg).items():
                topic, sep, part = str(name).rpartition("/")
                if not sep or not topic or not part.isdigit():
                    raise ValueError(f"specific offset key {name!r}: expected 'topic/partition'")
                offsets[f"{topic}/{int(part)}"] = int(offset)
            return kind, offsets
        if kind == "date":
            return kind, _date_ms(arg)
    raise ValueError(
        f"invalid startup position {startup!r}: expected one of 'earliest', 'latest', "
        f"'group-offsets', {{'specific-offsets': {{'topic/0': 42}}}} or {{'date': ...}}"
    )


class KafkaSource(Source):
    """A Kafka ingress: records of ``topics`` become messages to ``(target, record key)``.

    ``startup`` applies when a partition has no checkpointed position: ``"earliest"``, ``"latest"``,
    ``"group-offsets"`` (the group's committed offset, else ``auto_offset_reset``),
    ``{"specific-offsets": {"topic/0": 42}}`` (unlisted partitions use ``auto_offset_reset``) or
    ``{"date": ...}`` (the first record at or after that time). ``properties`` are raw librdkafka consumer
    settings and override the defaults (``isolation.level=read_committed`` among them).
    """

    def __init__(
        self,
        id: str,
        bootstrap: str,
        topics: Sequence[KafkaTopic],
        *,
        consumer_group: str | None = None,
        startup: Any = "group-offsets",
        auto_offset_reset: str = "latest",
        properties: Mapping[str, Any] | None = None,
        batch_size: int = 2000,
        poll_timeout: float = 0.005,
        metadata_timeout: float = 30.0,
        commit_interval: float = 5.0,
    ):
        validate_typename(id)
        if not bootstrap:
            raise ValueError(f"Kafka ingress {id}: no bootstrap address")
        topics = list(topics)
        if not topics:
            raise ValueError(f"Kafka ingress {id}: no topics")
        names = [t.topic for t in topics]
        if len(set(names)) != len(names):
            raise ValueError(f"Kafka ingress {id}: a topic is listed twice in {names}")
        if auto_offset_reset not in ("earliest", "latest"):
            raise ValueError(
                f"Kafka ingress {id}: auto_offset_reset must be 'earliest' or 'latest', got {auto_offset_reset!r}"
            )
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.id = id
        self.bootstrap = bootstrap
        self.topics = {t.topic: t for t in topics}
        self.consumer_group = consumer_group or "rayfun-" + id.replace("/", ".")
        self.startup = _normalize_startup(startup)
        self.auto_offset_reset = auto_offset_reset
        self.properties = dict(properties or {})
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.metadata_timeout = metadata_timeout
        self.commit_interval = commit_interval

    def consumer_config(self) -> dict[str, Any]:
        """The librdkafka settings of every partition's consumer (the user's ``properties`` win)."""
        return {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.consumer_group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": self.auto_offset_reset,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": 100,  # an idle partition answers within 100 ms (some brokers wait the full time)
            "log_level": 3,
            **self.properties,
        }

    def partitions(self) -> list[str]:
        """``"<topic>/<partition>"`` for every partition of every topic, from the cluster's metadata."""
        ck = _kafka()
        consumer = ck.Consumer(self.consumer_config())
        try:
            names: list[str] = []
            for topic in self.topics:
                md = consumer.list_topics(topic, timeout=self.metadata_timeout).topics.get(topic)
                if md is None or md.error is not None or not md.partitions:
                    why = md.error if md is not None and md.error is not None else "no partitions"
                    raise RuntimeError(
                        f"Kafka ingress {self.id}: topic {topic!r} is not available on "
                        f"{self.bootstrap} ({why}); create it first"
                    )
                names.extend(f"{topic}/{p}" for p in sorted(md.partitions))
            return names
        finally:
            consumer.close()

    def build_partition(self, partition: str, resume_state: Any | None) -> SourcePartition:
        topic, sep, number = partition.rpartition("/")
        if not sep or topic not in self.topics or not number.isdigit():
            raise ValueError(f"Kafka ingress {self.id}: unknown partition {partition!r}")
        return KafkaSourcePartition(
            self, self.topics[topic], int(number), None if resume_state is None else int(resume_state)
        )


class KafkaSourcePartition(SourcePartition):
    """One assigned TopicPartition; ``snapshot()`` is the next offset to read (always a concrete offset)."""

    def __init__(self, source: KafkaSource, topic: KafkaTopic, partition: int, resume_offset: int | None):
        ck = _kafka()
        self._ck = ck
        self._source_id = source.id
        self._topic = topic
        self._name = f"{topic.topic}/{partition}"
        self._targets = topic.targets
        self._value_type = topic.value_type
        self._builtin = topic.value_type in BUILTIN_TYPES
        self._batch_size = source.batch_size
        self._poll_timeout = source.poll_timeout
        self._commit_interval = source.commit_interval
        consumer: Consumer = ck.Consumer(source.consumer_config())
        self._consumer: Consumer | None = consumer  # None once closed
        try:
            self._tp = ck.TopicPartition(topic.topic, partition)
            if resume_offset is None:
                resume_offset = self._start_offset(consumer, source)
            self._position = resume_offset
            consumer.assign([ck.TopicPartition(topic.topic, partition, resume_offset)])
        except BaseException:
            consumer.close()
            raise
        self._committed = resume_offset
        self._last_commit = time.monotonic()

    def _start_offset(self, consumer: Consumer, source: KafkaSource) -> int:
        """Resolve the startup position to a concrete offset now, so that the position stored in a checkpoint
        taken before the first record arrives still means the same place after a restore."""
        ck, tp, timeout = self._ck, self._tp, source.metadata_timeout
        kind, arg = source.startup
        reset = source.auto_offset_reset
        if kind == "group-offsets":
            committed = consumer.committed([tp], timeout=timeout)[0]
            if committed.error is None and committed.offset >= 0:
                return committed.offset
            kind = reset
        elif kind == "specific-offsets":
            if self._name in arg:
                return arg[self._name]
            kind = reset
        elif kind == "date":
            found = consumer.offsets_for_times([ck.TopicPartition(tp.topic, tp.partition, arg)], timeout=timeout)[0]
            if found.error is None and found.offset >= 0:
                return found.offset
            kind = "latest"  # no record at or after that time: start at the end
        low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
        return low if kind == "earliest" else high

    def lag(self) -> int | None:
        """The high watermark librdkafka last saw (no broker call) minus the next offset to read."""
        consumer = self._consumer
        if consumer is None:
            return None
        _low, high = consumer.get_watermark_offsets(self._tp, cached=True)
        return max(0, high - self._position) if high >= 0 else None

    # -- reading ---------------------------------------------------------------------------------------

    def _poll(self) -> list[KafkaMessage]:
        consumer = self._consumer
        if consumer is None:  # closed (the shard stops or rolls back): nothing more to read
            return []
        records = consumer.consume(self._batch_size, timeout=self._poll_timeout)
        if not records:
            return records
        good: list[KafkaMessage] = []
        for m in records:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.fatal():
                raise self._ck.KafkaException(err)
            elif err.code() != self._ck.KafkaError._PARTITION_EOF:
                log.warning("Kafka ingress %s partition %s: %s", self._source_id, self._name, err)
        return good

    def next_rows(self) -> SourceRows:
        records = self._poll()
        if not records:
            self._maybe_commit()
            return []
        rows: SourceRows = []
        append = rows.append
        targets, vtype = self._targets, self._value_type
        decode = BUILTIN_TYPES[vtype].deserialize if self._builtin else None  # None: the bytes go as they are
        single = targets[0] if len(targets) == 1 else None
        for m in records:
            key, value = m.key(), m.value()
            if key is None or value is None:
                append(
                    self._dead(
                        m,
                        "has no key: the key must be the target function id"
                        if key is None
                        else "has no value (a tombstone)",
                    )
                )
                continue
            try:
                id = key.decode("utf-8")
            except UnicodeDecodeError:
                append(self._dead(m, "has a key that is not UTF-8"))
                continue
            if not id:
                append(self._dead(m, "has an empty key: the key must be the target function id"))
                continue
            if len(id) > MAX_ID_CHARS:
                append(self._dead(m, f"has a key of {len(id)} characters, more than an id may have ({MAX_ID_CHARS})"))
                continue
            if decode is not None:
                try:
                    payload = decode(value)
                except ValueError as exc:
                    append(self._dead(m, f"does not decode as {vtype}: {exc}"))
                    continue
            else:
                payload = value
            if single is not None:
                append((single, id, None, vtype, payload))
            else:
                for target in targets:
                    append((target, id, None, vtype, payload))
        last = records[-1].offset()  # once per batch; None only for a message that was not consumed
        if last is None:
            raise RuntimeError(f"Kafka ingress {self._source_id} partition {self._name}: a record without an offset")
        self._position = last + 1
        self._maybe_commit()
        return rows

    def _dead(self, m: Any, why: str) -> DeadLetter:
        return DeadLetter(f"Kafka record {self._name}@{m.offset()} {why}", self._source_id, m.value())

    def next_batch(self) -> list[Message | DeadLetter]:
        return [r if isinstance(r, DeadLetter) else Message(r[0], r[1], r[3], r[4]) for r in self.next_rows()]

    def snapshot(self) -> int:
        return self._position

    def _maybe_commit(self) -> None:
        """Courtesy commit of the position to the group: asynchronous, at most every ``commit_interval``."""
        if self._position == self._committed or time.monotonic() - self._last_commit < self._commit_interval:
            return
        self._commit()

    def _commit(self, consumer: Consumer | None = None, asynchronous: bool = True) -> None:
        consumer = consumer or self._consumer
        if consumer is None:
            raise RuntimeError(f"Kafka ingress {self._source_id} partition {self._name}: commit after close")
        tp = self._ck.TopicPartition(self._tp.topic, self._tp.partition, self._position)
        try:
            if asynchronous:  # the stub's overloads take a literal: True returns None, False the offsets
                consumer.commit(offsets=[tp], asynchronous=True)
            else:
                consumer.commit(offsets=[tp], asynchronous=False)
            self._committed = self._position
        except self._ck.KafkaException as exc:  # only a courtesy: never fail the job over it
            log.debug("Kafka ingress %s partition %s: offset commit failed: %s", self._source_id, self._name, exc)
        self._last_commit = time.monotonic()

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            if self._position != self._committed:
                self._commit(consumer, asynchronous=False)
            consumer.close()
