"""``KafkaProducerRecord``: the egress record functions send to a Kafka egress, decoded without protobuf.

The SDK's ``kafka_egress_message`` (``rayfun.messages``) writes the proto3 message
``io.statefun.sdk.egress.KafkaProducerRecord { string key = 1; bytes value_bytes = 2; string topic = 3; }``.
A dozen lines of wire-format reading decode it here, so the sink needs no generated code and a record
written by the official SDK in a remote function decodes the same way.
"""

from __future__ import annotations

from typing import NamedTuple

from rayfun.messages import KAFKA_PRODUCER_RECORD
from rayfun.types import BytesLike, read_varint

__all__ = ["KAFKA_PRODUCER_RECORD", "KafkaProducerRecord", "decode_producer_record"]


class KafkaProducerRecord(NamedTuple):
    """One record for Kafka: ``key`` None when empty (StateFun then writes a record without a key)."""

    topic: str
    key: str | None
    value: bytes


def decode_producer_record(data: BytesLike) -> KafkaProducerRecord:
    """Decode a ``KafkaProducerRecord`` (unknown fields skipped, the last occurrence of a field wins).

    Raises ValueError naming what is wrong: malformed bytes, a field of the wrong wire type, no topic.
    """
    data = bytes(data)
    fields: dict[int, bytes] = {}
    pos, n = 0, len(data)
    while pos < n:
        tag, pos = read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 2:
            length, pos = read_varint(data, pos)
            if pos + length > n:
                raise ValueError("KafkaProducerRecord: truncated field")
            value, pos = data[pos : pos + length], pos + length
            if number in (1, 2, 3):
                fields[number] = value
            continue
        if number in (1, 2, 3):
            raise ValueError(f"KafkaProducerRecord: field {number} has wire type {wire_type}, expected 2")
        if wire_type == 0:
            _, pos = read_varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"KafkaProducerRecord: unsupported wire type {wire_type}")
        if pos > n:
            raise ValueError("KafkaProducerRecord: truncated field")
    try:
        topic = fields.get(3, b"").decode("utf-8")
        key = fields.get(1, b"").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"KafkaProducerRecord: key or topic is not UTF-8 ({exc})") from None
    if not topic:
        raise ValueError("KafkaProducerRecord has no topic")
    return KafkaProducerRecord(topic, key or None, fields.get(2, b""))
