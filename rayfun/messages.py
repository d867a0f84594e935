"""Messages and egress records, with the StateFun SDK's builders.

A ``Message`` is a target address plus a typed value; an ``EgressMessage`` is an egress id plus a typed
value. Both hold the value as a runtime payload (see ``rayfun.types``), so the embedded path never
encodes a built-in value and the remote path encodes it exactly once.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from .types import (
    MAX_ID_CHARS,
    BoolType,
    DoubleType,
    FloatType,
    IntType,
    LongType,
    StringType,
    Type,
    check_id,
    describe_record,
    encode_payload,
    from_payload,
    infer_type,
    to_payload,
    validate_typename,
    write_varint,
)

__all__ = [
    "KAFKA_PRODUCER_RECORD",
    "KINESIS_EGRESS_RECORD",
    "Address",
    "EgressMessage",
    "Message",
    "egress_message_builder",
    "kafka_egress_message",
    "kinesis_egress_message",
    "message_builder",
    "to_message",
]

_INT = IntType.typename
_STRING = StringType.typename
KAFKA_PRODUCER_RECORD = "type.googleapis.com/io.statefun.sdk.egress.KafkaProducerRecord"
KINESIS_EGRESS_RECORD = "type.googleapis.com/io.statefun.sdk.egress.KinesisEgressRecord"


class Address(NamedTuple):
    """One function instance: ``namespace/name`` plus ``id`` (the SDK's ``SdkAddress``)."""

    namespace: str
    name: str
    id: str

    @property
    def typename(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def of(cls, typename: str, id: str) -> Address:
        namespace, name = validate_typename(typename)
        return cls(namespace, name, id)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}/{self.id}"


class _Typed:
    """Reading side shared by messages and egress records: ``is_int()``/``as_int()`` ... ``as_type(t)``."""

    __slots__ = ()
    value_type_name: str
    payload: Any

    def value_typename(self) -> str:
        return self.value_type_name

    def raw_value(self) -> bytes | None:
        """The wire bytes of the value (None when the value is absent)."""
        return None if self.payload is None else encode_payload(self.value_type_name, self.payload)

    def is_type(self, t: Type) -> bool:
        return self.value_type_name == t.typename

    def as_type(self, t: Type) -> Any:
        return from_payload(self.payload, self.value_type_name, t)

    def is_int(self) -> bool:
        return self.value_type_name == IntType.typename

    def as_int(self) -> int:
        payload = self.payload
        if type(payload) is int and self.value_type_name == _INT:  # the hot path: no decoding at all
            return payload
        return self.as_type(IntType)

    def is_long(self) -> bool:
        return self.value_type_name == LongType.typename

    def as_long(self) -> int:
        return self.as_type(LongType)

    def is_bool(self) -> bool:
        return self.value_type_name == BoolType.typename

    def as_bool(self) -> bool:
        return self.as_type(BoolType)

    def is_float(self) -> bool:
        return self.value_type_name == FloatType.typename

    def as_float(self) -> float:
        return self.as_type(FloatType)

    def is_double(self) -> bool:
        return self.value_type_name == DoubleType.typename

    def as_double(self) -> float:
        return self.as_type(DoubleType)

    def is_string(self) -> bool:
        return self.value_type_name == StringType.typename

    def as_string(self) -> str:
        return self.as_type(StringType)


class Message(_Typed):
    """A message to ``(target_typename, target_id)`` carrying one typed value."""

    __slots__ = ("payload", "target_id", "target_typename", "value_type_name")

    def __init__(self, target_typename: str, target_id: str, value_typename: str, payload: Any):
        self.target_typename = target_typename
        self.target_id = target_id
        self.value_type_name = value_typename
        self.payload = payload

    def __repr__(self) -> str:
        return f"Message({self.target_typename}/{self.target_id}, {self.value_type_name}, {self.payload!r})"


class EgressMessage(_Typed):
    """A record for the egress ``typename`` (an ingress/egress id such as ``example/greetings``)."""

    __slots__ = ("payload", "typename", "value_type_name")

    def __init__(self, typename: str, value_typename: str, payload: Any):
        self.typename = typename
        self.value_type_name = value_typename
        self.payload = payload

    def __repr__(self) -> str:
        return f"EgressMessage({self.typename}, {self.value_type_name}, {self.payload!r})"


_BUILDER_KWARGS: dict[str, Type[Any]] = {
    "int_value": IntType,
    "long_value": LongType,
    "float_value": FloatType,
    "double_value": DoubleType,
    "str_value": StringType,
    "bool_value": BoolType,
}


def message_builder(target_typename: str, target_id: str, **kwargs: Any) -> Message:
    """Build a message: exactly one of ``int_value=``, ``str_value=``, ... or ``value=`` with ``value_type=``."""
    validate_typename(target_typename)
    check_id(target_id, "target_id")
    value_type = kwargs.pop("value_type", None)
    if "value" in kwargs:
        value = kwargs.pop("value")
        if value_type is None:
            raise ValueError("value= needs value_type=")
        if kwargs:
            raise ValueError(f"value= cannot be combined with {sorted(kwargs)}")
        return Message(target_typename, target_id, value_type.typename, to_payload(value, value_type))
    if value_type is not None:
        raise ValueError("value_type= needs value=")
    if len(kwargs) != 1:
        raise ValueError(f"give exactly one of {sorted(_BUILDER_KWARGS)} or value=/value_type=, got {sorted(kwargs)}")
    ((key, value),) = kwargs.items()
    t = _BUILDER_KWARGS.get(key)
    if t is None:
        raise ValueError(f"unknown message_builder argument {key!r}")
    return Message(target_typename, target_id, t.typename, to_payload(value, t))


def egress_message_builder(target_typename: str, value: Any, value_type: Type) -> EgressMessage:
    """A generic egress record of ``value_type`` for the egress ``target_typename``."""
    validate_typename(target_typename)
    return EgressMessage(target_typename, value_type.typename, to_payload(value, value_type))


#: typenames ``to_message`` has validated once; sources that inline its fast path read it too
_VALID_TYPENAMES: set[str] = set()


def to_message(record: Any, value_type: Type | None = None) -> Message:
    """Turn a ``Message`` or a ``(typename, id, value)`` tuple into a message (types inferred if not given).

    The one conversion behind ``app.send`` and the in-memory source, so both accept the same records."""
    if type(record) is tuple and len(record) == 3 and value_type is None:
        typename, id, value = record  # the hot path: a validated typename, an ASCII id, an int or ASCII str
        if typename in _VALID_TYPENAMES and type(id) is str and id and id.isascii() and len(id) <= MAX_ID_CHARS:
            kind = type(value)
            if kind is int and -2147483648 <= value <= 2147483647:
                return Message(typename, id, _INT, value)
            if kind is str and value.isascii():
                return Message(typename, id, _STRING, value)
    if isinstance(record, Message):
        return record
    try:
        typename, id, value = record
    except (TypeError, ValueError):
        raise ValueError(
            f"a record must be a Message or (typename, id, value), got {describe_record(record)}"
        ) from None
    validate_typename(typename)
    _VALID_TYPENAMES.add(typename)
    check_id(id, f"the id of record {describe_record(record)}")
    t = value_type or infer_type(value)
    return Message(typename, id, t.typename, to_payload(value, t))


def _proto_fields(*fields: tuple[int, bytes | str | None]) -> bytes:
    """Encode length-delimited protobuf fields (strings and bytes), skipping empty ones as proto3 does."""
    out = bytearray()
    for number, value in fields:
        if not value:
            continue
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        out += write_varint((number << 3) | 2) + write_varint(len(raw)) + raw
    return bytes(out)


def _egress_value_bytes(value: Any, value_type: Type | None) -> bytes:
    if value_type is not None:
        return bytes(value_type.serializer().serialize(value))
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, bool):
        raise TypeError("a bool egress value needs value_type=")
    if isinstance(value, int):
        return struct.pack(">i", value)
    if isinstance(value, float):
        return struct.pack(">d", value)
    raise TypeError(f"cannot serialize {type(value).__name__} for egress; pass value_type=")


def kafka_egress_message(
    typename: str, topic: str, value: Any, value_type: Type | None = None, key: str | None = None
) -> EgressMessage:
    """A ``KafkaProducerRecord`` for a Kafka egress (str, bytes, int, float, or ``value_type`` values)."""
    validate_typename(typename)
    if not topic:
        raise ValueError("a Kafka egress record needs a topic")
    record = _proto_fields((1, key or ""), (2, _egress_value_bytes(value, value_type)), (3, topic))
    return EgressMessage(typename, KAFKA_PRODUCER_RECORD, record)


def kinesis_egress_message(
    typename: str,
    stream: str,
    value: Any,
    partition_key: str,
    value_type: Type | None = None,
    explicit_hash_key: str | None = None,
) -> EgressMessage:
    """A ``KinesisEgressRecord`` for a Kinesis egress."""
    validate_typename(typename)
    record = _proto_fields(
        (1, partition_key), (2, _egress_value_bytes(value, value_type)), (3, stream), (4, explicit_hash_key or "")
    )
    return EgressMessage(typename, KINESIS_EGRESS_RECORD, record)
