"""KafkaSource against a real broker: routing, batches, positions, exact resume, dead letters, start-up."""

from __future__ import annotations

import datetime
import pickle
import time

import pytest

from rayfun.io import DeadLetter
from rayfun.messages import Message
from rayfun.types import IntType
from tests.connectors.conftest import drain, produce

pytestmark = pytest.mark.timeout(90)

RAW = "example/Raw"


def _source(broker, topic, **kwargs):
    from rayfun.connectors.kafka import KafkaSource, KafkaTopic

    targets = kwargs.pop("targets", ["example/fn"])
    value_type = kwargs.pop("value_type", RAW)
    kwargs.setdefault("startup", "earliest")
    return KafkaSource("example/in", broker.bootstrap, [KafkaTopic(topic, value_type, targets)], **kwargs)


def test_partitions_and_routing(kafka_broker, topic):
    produce(kafka_broker.bootstrap, topic, [(f"id{i}", f"v{i}") for i in range(6)], partition=1)
    source = _source(kafka_broker, topic, targets=["example/a", "example/b"])
    assert source.partitions() == [f"{topic}/0", f"{topic}/1", f"{topic}/2"]
    source = pickle.loads(pickle.dumps(source))  # sources travel to the shard actors
    part = source.build_partition(f"{topic}/1", None)
    try:
        assert part.snapshot() == 0
        rows = drain(part, 12)
        # every record goes to every target, key = id, value raw under the topic's valueType
        assert rows[:4] == [
            ("example/a", "id0", None, RAW, b"v0"),
            ("example/b", "id0", None, RAW, b"v0"),
            ("example/a", "id1", None, RAW, b"v1"),
            ("example/b", "id1", None, RAW, b"v1"),
        ]
        assert part.snapshot() == 6
        assert part.next_rows() == []
    finally:
        part.close()
    empty = source.build_partition(f"{topic}/0", None)
    try:
        assert empty.next_rows() == [] and empty.snapshot() == 0
    finally:
        empty.close()


def test_next_batch_returns_messages(kafka_broker, topic):
    produce(kafka_broker.bootstrap, topic, [("a", "x")], partition=0)
    part = _source(kafka_broker, topic).build_partition(f"{topic}/0", None)
    try:
        deadline = time.monotonic() + 20
        batch: list = []
        while not batch and time.monotonic() < deadline:
            batch = part.next_batch()
        (m,) = batch
        assert isinstance(m, Message) and (m.target_typename, m.target_id, m.payload) == ("example/fn", "a", b"x")
    finally:
        part.close()


def test_batches_and_exact_resume(kafka_broker, topic):
    n = 1000
    produce(kafka_broker.bootstrap, topic, [(f"k{i % 7}", str(i)) for i in range(n)], partition=2)
    source = _source(kafka_broker, topic, batch_size=64)
    name = f"{topic}/2"
    part = source.build_partition(name, None)
    first: list = []
    try:
        deadline = time.monotonic() + 20
        while len(first) < 300:
            assert time.monotonic() < deadline
            batch = part.next_rows()
            assert len(batch) <= 64
            first.extend(batch)
        position = part.snapshot()
        assert position == len(first)  # one row per record here; position = next offset
        # read on past the snapshot, then "crash": what came after the snapshot must be read again
        drain(part, 100)
    finally:
        part.close()
    resumed = source.build_partition(name, position)
    try:
        rest = drain(resumed, n - position)
        assert resumed.snapshot() == n
    finally:
        resumed.close()
    values = [int(r[4]) for r in first + rest]
    assert values == list(range(n))  # no record lost, none twice, in order


def test_dead_letters(kafka_broker, topic):
    produce(
        kafka_broker.bootstrap,
        topic,
        [
            (None, b"no key"),
            (b"\xff\xfe", b"bad key"),
            ("ok", None),
            ("", b"empty key"),
            ("good", IntType.serialize(7)),
            ("bad", b"\x08\x01\x02"),
        ],
        partition=0,
    )
    part = _source(kafka_broker, topic, value_type=IntType.typename).build_partition(f"{topic}/0", None)
    try:
        items = drain(part, 6)
    finally:
        part.close()
    dead = [i for i in items if isinstance(i, DeadLetter)]
    rows = [i for i in items if type(i) is tuple]
    assert rows == [("example/fn", "good", None, IntType.typename, 7)]  # built-in values arrive decoded
    assert len(dead) == 5
    assert "has no key" in dead[0].reason and dead[0].payload == b"no key" and dead[0].source == "example/in"
    assert "not UTF-8" in dead[1].reason
    assert "no value" in dead[2].reason
    assert "empty key" in dead[3].reason
    assert f"does not decode as {IntType.typename}" in dead[4].reason
    assert f"{topic}/0@5" in dead[4].reason


def test_startup_positions(kafka_broker, topic):
    from confluent_kafka import Consumer, TopicPartition

    bootstrap = kafka_broker.bootstrap
    produce(bootstrap, topic, [("k", f"old{i}") for i in range(5)], partition=0, one_by_one=True)
    name = f"{topic}/0"

    latest = _source(kafka_broker, topic, startup="latest").build_partition(name, None)
    try:
        assert latest.snapshot() == 5  # resolved to a concrete offset before any record arrives
        time.sleep(0.05)
        new_at_ms = int(time.time() * 1000)
        produce(bootstrap, topic, [("k", "new")], partition=0)
        assert [r[4] for r in drain(latest, 1)] == [b"new"]
    finally:
        latest.close()

    specific = _source(kafka_broker, topic, startup={"specific-offsets": {name: 3}}).build_partition(name, None)
    try:
        assert [r[4] for r in drain(specific, 3)] == [b"old3", b"old4", b"new"]
    finally:
        specific.close()
    unlisted = _source(
        kafka_broker, topic, startup={"specific-offsets": {f"{topic}/1": 3}}, auto_offset_reset="earliest"
    ).build_partition(name, None)
    try:
        assert unlisted.snapshot() == 0
    finally:
        unlisted.close()

    # group-offsets: the courtesy commit on close is where a fresh job of the same group starts
    grouped = _source(kafka_broker, topic, startup="group-offsets", consumer_group="g1", auto_offset_reset="earliest")
    part = grouped.build_partition(name, None)
    try:
        drain(part, 2)
    finally:
        part.close()
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "g1", "log_level": 3})
    try:
        committed = c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    finally:
        c.close()
    assert committed >= 2
    again = grouped.build_partition(name, None)
    try:
        assert again.snapshot() == committed
    finally:
        again.close()

    # a date: the first record at or after it (Tansu 0.6.0 answers 0 rather than "none" for a date after
    # the last record, so only dates inside the log are checked here)
    when = datetime.datetime.fromtimestamp(new_at_ms / 1000, datetime.timezone.utc)
    for date in (new_at_ms, when, when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " Z"):
        dated = _source(kafka_broker, topic, startup={"date": date}).build_partition(name, None)
        try:
            assert dated.snapshot() == 5, date
        finally:
            dated.close()
    past = _source(kafka_broker, topic, startup={"date": 0}).build_partition(name, None)
    try:
        assert past.snapshot() == 0
    finally:
        past.close()


def test_read_committed_hides_open_transactions(kafka_broker, topic):
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": kafka_broker.bootstrap, "transactional.id": f"tx-{topic}", "log_level": 3}
    )
    producer.init_transactions(10)
    producer.begin_transaction()
    producer.produce(topic, b"pending", b"k", partition=0)
    producer.flush(10)
    part = _source(kafka_broker, topic).build_partition(f"{topic}/0", None)
    try:
        time.sleep(0.5)
        assert part.next_rows() == []
        producer.commit_transaction(10)
        assert [r[4] for r in drain(part, 1)] == [b"pending"]
    finally:
        part.close()


def test_missing_topic_is_a_clear_error(kafka_broker):
    source = _source(kafka_broker, "no-such-topic-xyz", metadata_timeout=5)
    with pytest.raises(RuntimeError, match="no-such-topic-xyz"):
        source.partitions()


def test_invalid_configuration():
    from rayfun.connectors.kafka import KafkaSource, KafkaTopic

    with pytest.raises(ValueError, match="target"):
        KafkaTopic("t", RAW, [])
    with pytest.raises(ValueError, match="typename"):
        KafkaTopic("t", "no-namespace", ["example/fn"])
    with pytest.raises(ValueError, match="startup"):
        KafkaSource("example/in", "x:1", [KafkaTopic("t", RAW, ["example/fn"])], startup="sometime")
    with pytest.raises(ValueError, match="twice"):
        KafkaSource("example/in", "x:1", [KafkaTopic("t", RAW, ["example/fn"])] * 2)
