"""The StateFun v3 request-reply wire format, and its translation to rayfun's runtime values.

The messages (``io.statefun.sdk.reqreply``), the built-in wrapper types (``io.statefun.sdk.types``) and
the egress records (``io.statefun.sdk.egress``) are described below as protobuf descriptors built at
import time, in a private descriptor pool. That keeps protoc and generated code out of the repository,
works with every protobuf from 4.21 to 7.x (checked on 4.21.12 and 7.36), and cannot clash with another copy of the same ``.proto``
files (for instance a user's own generated StateFun classes) in the default pool.

Everything else in rayfun speaks runtime payloads (see ``rayfun.types``): decoded Python values for the
built-in types, bytes for the rest, ``None`` for "no value". ``encode_request`` and ``decode_response``
are the only two places where those payloads meet the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from ..errors import RayfunError
from ..messages import EgressMessage, Message
from ..types import MAX_VALUE_BYTES, decode_payload, encode_payload

__all__ = [
    "EXPIRE_MODE_NUMBERS",
    "UNSET_TYPENAME",
    "WRAPPERS",
    "Address",
    "BooleanWrapper",
    "DecodeError",
    "DoubleWrapper",
    "FloatWrapper",
    "FromFunction",
    "IntWrapper",
    "InvocationResult",
    "KafkaProducerRecord",
    "KinesisEgressRecord",
    "LongWrapper",
    "MissingStates",
    "ProtocolError",
    "StringWrapper",
    "ToFunction",
    "TypedValue",
    "decode_response",
    "encode_request",
    "payload_of",
    "typed_value",
]

#: the state type the runtime assumes when a spec names none (StateFun's ``io.statefun.types/unset``).
UNSET_TYPENAME = "io.statefun.types/unset"

# ---------------------------------------------------------------------------------------------------------
# Descriptors.

_FDP = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "string": _FDP.TYPE_STRING,
    "bytes": _FDP.TYPE_BYTES,
    "bool": _FDP.TYPE_BOOL,
    "int64": _FDP.TYPE_INT64,
    "sfixed32": _FDP.TYPE_SFIXED32,
    "sfixed64": _FDP.TYPE_SFIXED64,
    "float": _FDP.TYPE_FLOAT,
    "double": _FDP.TYPE_DOUBLE,
}


def _message(
    name: str,
    fields: Sequence[tuple],
    nested: Sequence[descriptor_pb2.DescriptorProto] = (),
    enums: Sequence[tuple[str, Sequence[str]]] = (),
    oneof: str | None = None,
) -> descriptor_pb2.DescriptorProto:
    """A DescriptorProto from ``(name, number, type[, "repeated" | "oneof"])`` tuples.

    ``type`` is a scalar name, ``.full.MessageName`` for a message, or ``enum:.full.EnumName``.
    """
    msg = descriptor_pb2.DescriptorProto(name=name)
    if oneof:
        msg.oneof_decl.add(name=oneof)
    for fname, number, ftype, *flags in fields:
        f = msg.field.add(name=fname, number=number, label=_FDP.LABEL_OPTIONAL)
        if "repeated" in flags:
            f.label = _FDP.LABEL_REPEATED
        if "oneof" in flags:
            f.oneof_index = 0
        if ftype in _SCALARS:
            f.type = _SCALARS[ftype]
        elif ftype.startswith("enum:"):
            f.type, f.type_name = _FDP.TYPE_ENUM, ftype[5:]
        else:
            f.type, f.type_name = _FDP.TYPE_MESSAGE, ftype
    msg.nested_type.extend(nested)
    for ename, values in enums:
        enum = msg.enum_type.add(name=ename)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    return msg


def _file(
    name: str, package: str, messages: Iterable[descriptor_pb2.DescriptorProto]
) -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name=name, package=package, syntax="proto3")
    fdp.message_type.extend(messages)
    return fdp


_RR = ".io.statefun.sdk.reqreply"
_TV = f"{_RR}.TypedValue"
_ADDR = f"{_RR}.Address"
_FF = f"{_RR}.FromFunction"

_REQUEST_REPLY = _file(
    "rayfun/io/statefun/sdk/reqreply/request-reply.proto",
    "io.statefun.sdk.reqreply",
    [
        _message("Address", [("namespace", 1, "string"), ("type", 2, "string"), ("id", 3, "string")]),
        _message("TypedValue", [("typename", 1, "string"), ("has_value", 2, "bool"), ("value", 3, "bytes")]),
        _message(
            "ToFunction",
            [("invocation", 100, f"{_RR}.ToFunction.InvocationBatchRequest", "oneof")],
            nested=[
                _message("PersistedValue", [("state_name", 1, "string"), ("state_value", 2, _TV)]),
                _message("Invocation", [("caller", 1, _ADDR), ("argument", 2, _TV)]),
                _message(
                    "InvocationBatchRequest",
                    [
                        ("target", 1, _ADDR),
                        ("state", 2, f"{_RR}.ToFunction.PersistedValue", "repeated"),
                        ("invocations", 3, f"{_RR}.ToFunction.Invocation", "repeated"),
                    ],
                ),
            ],
            oneof="request",
        ),
        _message(
            "FromFunction",
            [
                ("invocation_result", 100, f"{_FF}.InvocationResponse", "oneof"),
                ("incomplete_invocation_context", 101, f"{_FF}.IncompleteInvocationContext", "oneof"),
            ],
            nested=[
                _message(
                    "PersistedValueMutation",
                    [
                        ("mutation_type", 1, f"enum:{_FF}.PersistedValueMutation.MutationType"),
                        ("state_name", 2, "string"),
                        ("state_value", 3, _TV),
                    ],
                    enums=[("MutationType", ["DELETE", "MODIFY"])],
                ),
                _message("Invocation", [("target", 1, _ADDR), ("argument", 2, _TV)]),
                _message(
                    "DelayedInvocation",
                    [
                        ("is_cancellation_request", 10, "bool"),
                        ("cancellation_token", 11, "string"),
                        ("delay_in_ms", 1, "int64"),
                        ("target", 2, _ADDR),
                        ("argument", 3, _TV),
                    ],
                ),
                _message(
                    "EgressMessage",
                    [("egress_namespace", 1, "string"), ("egress_type", 2, "string"), ("argument", 3, _TV)],
                ),
                _message(
                    "InvocationResponse",
                    [
                        ("state_mutations", 1, f"{_FF}.PersistedValueMutation", "repeated"),
                        ("outgoing_messages", 2, f"{_FF}.Invocation", "repeated"),
                        ("delayed_invocations", 3, f"{_FF}.DelayedInvocation", "repeated"),
                        ("outgoing_egresses", 4, f"{_FF}.EgressMessage", "repeated"),
                    ],
                ),
                _message(
                    "ExpirationSpec",
                    [("mode", 1, f"enum:{_FF}.ExpirationSpec.ExpireMode"), ("expire_after_millis", 2, "int64")],
                    enums=[("ExpireMode", ["NONE", "AFTER_WRITE", "AFTER_INVOKE"])],
                ),
                _message(
                    "PersistedValueSpec",
                    [
                        ("state_name", 1, "string"),
                        ("expiration_spec", 2, f"{_FF}.ExpirationSpec"),
                        ("type_typename", 3, "string"),
                    ],
                ),
                _message(
                    "IncompleteInvocationContext", [("missing_values", 1, f"{_FF}.PersistedValueSpec", "repeated")]
                ),
            ],
            oneof="response",
        ),
    ],
)

_TYPES = _file(
    "rayfun/io/statefun/sdk/types/types.proto",
    "io.statefun.sdk.types",
    [
        _message("BooleanWrapper", [("value", 1, "bool")]),
        _message("IntWrapper", [("value", 1, "sfixed32")]),
        _message("FloatWrapper", [("value", 1, "float")]),
        _message("LongWrapper", [("value", 1, "sfixed64")]),
        _message("DoubleWrapper", [("value", 1, "double")]),
        _message("StringWrapper", [("value", 1, "string")]),
    ],
)

_EGRESS = _file(
    "rayfun/io/statefun/sdk/egress/egress.proto",
    "io.statefun.sdk.egress",
    [
        _message("KafkaProducerRecord", [("key", 1, "string"), ("value_bytes", 2, "bytes"), ("topic", 3, "string")]),
        _message(
            "KinesisEgressRecord",
            [
                ("partition_key", 1, "string"),
                ("value_bytes", 2, "bytes"),
                ("stream", 3, "string"),
                ("explicit_hash_key", 4, "string"),
            ],
        ),
    ],
)

_POOL = descriptor_pool.DescriptorPool()
for _fdp in (_REQUEST_REPLY, _TYPES, _EGRESS):
    _POOL.Add(_fdp)


def _class(full_name: str) -> Any:
    desc = _POOL.FindMessageTypeByName(full_name)
    get = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22
    if get is not None:
        return get(desc)
    return message_factory.MessageFactory(_POOL).GetPrototype(desc)  # pragma: no cover (protobuf 4.21)


Address = _class("io.statefun.sdk.reqreply.Address")
TypedValue = _class("io.statefun.sdk.reqreply.TypedValue")
ToFunction = _class("io.statefun.sdk.reqreply.ToFunction")
FromFunction = _class("io.statefun.sdk.reqreply.FromFunction")
BooleanWrapper = _class("io.statefun.sdk.types.BooleanWrapper")
IntWrapper = _class("io.statefun.sdk.types.IntWrapper")
LongWrapper = _class("io.statefun.sdk.types.LongWrapper")
FloatWrapper = _class("io.statefun.sdk.types.FloatWrapper")
DoubleWrapper = _class("io.statefun.sdk.types.DoubleWrapper")
StringWrapper = _class("io.statefun.sdk.types.StringWrapper")
KafkaProducerRecord = _class("io.statefun.sdk.egress.KafkaProducerRecord")
KinesisEgressRecord = _class("io.statefun.sdk.egress.KinesisEgressRecord")

#: built-in typename -> its protobuf wrapper class (the reference encoding of ``rayfun.types``).
WRAPPERS: dict[str, Any] = {
    "io.statefun.types/bool": BooleanWrapper,
    "io.statefun.types/int": IntWrapper,
    "io.statefun.types/long": LongWrapper,
    "io.statefun.types/float": FloatWrapper,
    "io.statefun.types/double": DoubleWrapper,
    "io.statefun.types/string": StringWrapper,
}

_MODIFY = 1
_EXPIRE_MODES = {0: None, 1: "after_write", 2: "after_call"}  # the names ValueSpec.expire_mode uses
#: ValueSpec.expire_mode -> ExpireMode number
EXPIRE_MODE_NUMBERS = {None: 0, "after_write": 1, "after_call": 2}


class ProtocolError(RayfunError, ValueError):
    """A well-formed answer that breaks the protocol (wrong state type, unknown state, bad value)."""


# ---------------------------------------------------------------------------------------------------------
# Runtime payloads <-> TypedValue.


def typed_value(typename: str, payload: Any, out: Any = None) -> Any:
    """A TypedValue for a runtime payload (``None``: has_value false); fills ``out`` when given."""
    tv = TypedValue() if out is None else out
    tv.typename = typename
    if payload is not None:
        tv.has_value = True
        tv.value = encode_payload(typename, payload)
    return tv


def payload_of(tv: Any) -> Any:
    """The runtime payload of a TypedValue: None without a value, decoded for built-ins, else bytes."""
    if not tv.has_value:
        return None
    return decode_payload(tv.typename, tv.value)


def _set_address(addr: Any, typename: str, id: str) -> None:
    namespace, _, name = typename.rpartition("/")
    addr.namespace = namespace
    addr.type = name
    addr.id = id


def encode_request(
    target_typename: str,
    target_id: str,
    states: Iterable[tuple[str, str, Any]],
    invocations: Iterable[tuple[tuple[str, str] | None, str, Any]],
) -> bytes:
    """Serialize one ``ToFunction`` batch.

    ``states``: ``(state_name, state_typename, payload or None)`` for every registered state (a state
    without a value is sent without ``state_value``, as StateFun does). ``invocations``: ``(caller
    (typename, id) or None, value_typename, payload)`` in arrival order.
    """
    req = ToFunction()
    batch = req.invocation
    _set_address(batch.target, target_typename, target_id)
    for name, typename, payload in states:
        pv = batch.state.add()
        pv.state_name = name
        if payload is not None:
            typed_value(typename, payload, pv.state_value)
    for caller, typename, payload in invocations:
        inv = batch.invocations.add()
        if caller is not None:
            _set_address(inv.caller, caller[0], caller[1])
        typed_value(typename, payload, inv.argument)
    return req.SerializeToString()


# ---------------------------------------------------------------------------------------------------------
# FromFunction -> runtime effects.


@dataclass
class InvocationResult:
    """The effects of one answered batch, in runtime payloads.

    ``state_mutations``: ``(name, typename, payload)``, typename None for a DELETE. ``delayed``: the shape of
    ``Context.timers``: ``(delay_ms, message, token)`` for a delayed send (token "" = none) and
    ``(None, None, token)`` for a cancellation, in the order the function issued them.
    """

    state_mutations: list[tuple[str, str | None, Any]] = field(default_factory=list)
    outgoing: list[Message] = field(default_factory=list)
    delayed: list[tuple[int | None, Message | None, str]] = field(default_factory=list)
    egress: list[EgressMessage] = field(default_factory=list)


@dataclass
class MissingStates:
    """The handshake answer: the function declares states the request did not carry.

    ``specs``: ``(state_name, typename, expire_mode, expire_after_ms)`` with ``expire_mode`` one of None,
    ``"after_write"``, ``"after_call"`` (as ``ValueSpec.expire_mode``). Register them all for the function
    type and send the same invocations again with every registered state.
    """

    specs: list[tuple[str, str, str | None, int]] = field(default_factory=list)


def _typename_of(addr: Any, what: str) -> str:
    if not addr.namespace or not addr.type:
        raise ProtocolError(f"{what} has no target function type (namespace={addr.namespace!r}, type={addr.type!r})")
    return f"{addr.namespace}/{addr.type}"


def _payload(tv: Any, what: str) -> Any:
    if len(tv.value) > MAX_VALUE_BYTES:
        raise ProtocolError(f"{what}: {len(tv.value)} bytes, more than rayfun stores ({MAX_VALUE_BYTES} bytes)")
    try:
        return payload_of(tv)
    except ValueError as exc:
        raise ProtocolError(f"{what}: {exc}") from None


def decode_response(body: bytes, registered: dict[str, str]) -> InvocationResult | MissingStates:
    """Parse and validate a ``FromFunction``.

    ``registered`` maps each state name sent in the request to its registered typename. Raises
    ``DecodeError`` for bytes that are not a FromFunction (worth a retry: the transport or server
    garbled them) and ``ProtocolError`` for an answer that is well formed but wrong (not worth a retry).
    An empty body is a valid answer with no effects.
    """
    if not body:
        return InvocationResult()
    resp = FromFunction()
    resp.ParseFromString(body)  # raises DecodeError
    which = resp.WhichOneof("response")
    if which is None:
        # Non-empty, yet only unknown fields: not something any StateFun SDK sends. Treat as garbage
        # rather than as "no effects", which would silently lose the batch.
        raise DecodeError(f"{len(body)} bytes that carry no FromFunction response")
    if which == "incomplete_invocation_context":
        specs = []
        for spec in resp.incomplete_invocation_context.missing_values:
            if not spec.state_name:
                raise ProtocolError("the function declared a state spec without a name")
            mode = _EXPIRE_MODES.get(spec.expiration_spec.mode)
            if spec.expiration_spec.mode not in _EXPIRE_MODES:
                raise ProtocolError(f"state {spec.state_name!r}: unknown expire mode {spec.expiration_spec.mode}")
            ttl = int(spec.expiration_spec.expire_after_millis)
            if mode is not None and ttl <= 0:
                raise ProtocolError(f"state {spec.state_name!r}: expiry {mode} needs a positive duration, got {ttl} ms")
            specs.append((spec.state_name, spec.type_typename or UNSET_TYPENAME, mode, ttl if mode else 0))
        return MissingStates(specs)

    result = InvocationResult()
    answer = resp.invocation_result
    for m in answer.outgoing_messages:
        target = _typename_of(m.target, "an outgoing message")
        what = f"message to {target}/{m.target.id}"
        if not m.target.id:
            raise ProtocolError(f"an outgoing message to {target} has an empty target id")
        result.outgoing.append(Message(target, m.target.id, m.argument.typename, _payload(m.argument, what)))
    for d in answer.delayed_invocations:
        if d.is_cancellation_request:
            if not d.cancellation_token:
                raise ProtocolError("a delayed-message cancellation without a cancellation token")
            result.delayed.append((None, None, d.cancellation_token))
            continue
        target = _typename_of(d.target, "a delayed message")
        if not d.target.id:
            raise ProtocolError(f"a delayed message to {target} has an empty target id")
        if d.delay_in_ms < 0:
            raise ProtocolError(
                f"a delayed message to {target}/{d.target.id} has a negative delay ({d.delay_in_ms} ms)"
            )
        msg = Message(
            target, d.target.id, d.argument.typename, _payload(d.argument, f"delayed message to {target}/{d.target.id}")
        )
        result.delayed.append((int(d.delay_in_ms), msg, d.cancellation_token))
    for e in answer.outgoing_egresses:
        if not e.egress_namespace or not e.egress_type:
            raise ProtocolError(
                f"an egress record has no egress id (namespace={e.egress_namespace!r}, type={e.egress_type!r})"
            )
        egress_id = f"{e.egress_namespace}/{e.egress_type}"
        result.egress.append(
            EgressMessage(egress_id, e.argument.typename, _payload(e.argument, f"egress record for {egress_id}"))
        )
    for mutation in answer.state_mutations:
        name = mutation.state_name
        if name not in registered:
            raise ProtocolError(
                f"mutation of state {name!r}, which is not registered for this function "
                f"(registered: {sorted(registered)})"
            )
        if mutation.mutation_type != _MODIFY:
            result.state_mutations.append((name, None, None))
            continue
        tv = mutation.state_value
        if tv.typename != registered[name]:
            raise ProtocolError(
                f"state {name!r} is registered as {registered[name]} but the function wrote "
                f"a value of type {tv.typename or '(none)'}"
            )
        if not tv.has_value:
            raise ProtocolError(f"MODIFY of state {name!r} carries no value (use DELETE to clear a state)")
        result.state_mutations.append((name, tv.typename, _payload(tv, f"state {name!r}")))
    return result
