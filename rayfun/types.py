"""Typed values: the (typename, bytes) pairs that StateFun puts on the wire, and the Python types behind them.

The built-in types use StateFun's type names and encoding (a one-field protobuf wrapper, field 1), so a
value written by an embedded rayfun function reads back unchanged in a remote function built with the
official SDK and vice versa. They are hand-encoded here (a few struct calls) because they sit on the hot
path of every message; user types bring their own serializer (`simple_type`, `make_json_type`).

Inside the runtime a value travels as ``(typename, payload)`` where ``payload`` is the *Python value* for
the immutable built-in types (no encode/decode per message) and the serialized ``bytes`` for every other
type (so a mutable object is never shared between sender and receiver). ``None`` means "no value".
"""

from __future__ import annotations

import copyreg
import json
import math
import reprlib
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, Literal, TypeAlias, TypeVar, overload

from .constants import MAX_ID_CHARS, MAX_TYPENAME_CHARS, MAX_VALUE_BYTES  # limits: see rayfun/constants.py

T = TypeVar("T")

__all__ = [
    "BUILTIN_TYPES",
    "MAX_ID_CHARS",
    "MAX_TYPENAME_CHARS",
    "MAX_VALUE_BYTES",
    "BoolType",
    "DoubleType",
    "FloatType",
    "IntType",
    "LongType",
    "StringType",
    "Type",
    "TypeSerializer",
    "check_id",
    "check_text",
    "decode_payload",
    "encode_payload",
    "infer_type",
    "make_json_type",
    "make_protobuf_type",
    "simple_type",
    "type_for_typename",
]


#: wire bytes as they arrive: bytes (from protobuf and Arrow), or a bytearray or a view into a bigger
#: buffer; the built-in types read any of these, a user type's serializer is handed bytes
BytesLike: TypeAlias = bytes | bytearray | memoryview


class TypeSerializer(ABC, Generic[T]):
    """Turns a Python value of one type into bytes and back."""

    @abstractmethod
    def serialize(self, value: T) -> bytes: ...

    @abstractmethod
    def deserialize(self, data: bytes) -> T: ...


class Type(ABC, Generic[T]):
    """A named type: the typename travels with every value so the receiver knows how to read the bytes."""

    def __init__(self, typename: str):
        validate_typename(typename)
        self.typename = typename

    @abstractmethod
    def serializer(self) -> TypeSerializer[T]: ...

    def __repr__(self) -> str:
        return f"Type({self.typename!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Type) and other.typename == self.typename

    def __hash__(self) -> int:
        return hash(self.typename)


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 160
_SHORT_REPR.maxlong = 80


def describe_record(record: Any) -> str:
    """``repr(record)`` with long parts cut: what an error message or a dead letter quotes of a user's input
    (a 64 KB id must not become a 64 KB log line)."""
    return _SHORT_REPR.repr(record)


def validate_typename(typename: str) -> tuple[str, str]:
    """Split ``namespace/name`` on the last ``/`` (as the SDK does); reject anything else clearly: it is
    stored with every message and state row, so at most MAX_TYPENAME_CHARS of valid text, no control or
    space characters."""
    if not isinstance(typename, str):
        raise TypeError(f"a typename must be a str 'namespace/name', got {type(typename).__name__}")
    namespace, sep, name = typename.rpartition("/")
    if not sep or not namespace or not name:
        raise ValueError(f"invalid typename {describe_record(typename)}: expected 'namespace/name'")
    if len(typename) > MAX_TYPENAME_CHARS:
        raise ValueError(
            f"typename {typename[:40]!r}... has {len(typename)} characters, more than {MAX_TYPENAME_CHARS}"
        )
    if not typename.isprintable() or any(c.isspace() for c in typename):
        raise ValueError(f"invalid typename {typename!r}: no spaces or control characters")
    check_text(typename, f"typename {typename!r}")
    return namespace, name


def check_id(id: Any, what: str = "an id") -> str:
    """``id`` if it can address an instance: a non-empty str of valid text, at most MAX_ID_CHARS long."""
    if not isinstance(id, str) or not id:
        raise ValueError(f"{what} must be a non-empty str, got {describe_record(id)}")
    if len(id) > MAX_ID_CHARS:
        raise ValueError(f"{what} has {len(id)} characters, more than {MAX_ID_CHARS}")
    return check_text(id, what)


# ---------------------------------------------------------------------------------------------------------
# Built-in types: one-field protobuf wrappers (io.statefun.sdk.types), hand-encoded.


def read_varint(data: BytesLike, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def write_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


@overload
def _field1(data: BytesLike, wire_type: Literal[0], typename: str) -> int | None: ...
@overload
def _field1(data: BytesLike, wire_type: Literal[1, 2, 5], typename: str) -> BytesLike | None: ...
def _field1(data: BytesLike, wire_type: int, typename: str) -> BytesLike | int | None:
    """Return the raw field-1 payload of a wrapper message (last occurrence wins, unknown fields skipped):
    an int for a varint field (wire type 0), the field's bytes for the others."""
    pos = 0
    found: BytesLike | int | None = None
    v: BytesLike | int
    n = len(data)
    try:
        while pos < n:
            key, pos = read_varint(data, pos)
            field, wt = key >> 3, key & 7
            if wt == 0:
                v, pos = read_varint(data, pos)
            elif wt == 1:
                v, pos = data[pos : pos + 8], pos + 8
            elif wt == 5:
                v, pos = data[pos : pos + 4], pos + 4
            elif wt == 2:
                ln, pos = read_varint(data, pos)
                v, pos = data[pos : pos + ln], pos + ln
            else:
                raise ValueError(f"unsupported wire type {wt}")
            if pos > n:
                raise ValueError("truncated field")
            if field == 1:
                if wt != wire_type:
                    raise ValueError(f"field 1 has wire type {wt}, expected {wire_type}")
                found = v
    except ValueError as exc:
        raise ValueError(f"malformed {typename} value ({len(data)} bytes): {exc}") from None
    return found


class _BuiltinType(Type[T], TypeSerializer[T]):
    """A StateFun built-in wrapper type; it is its own serializer."""

    python_type: type = object

    def serializer(self) -> TypeSerializer[T]:
        return self

    @abstractmethod
    def deserialize(self, data: BytesLike) -> T:  # any bytes-like (see decode_payload), not only bytes
        ...

    def __reduce__(self):  # built-ins are singletons: unpickle to the same object in every process
        return (_builtin, (self.typename,))

    def check(self, value: Any) -> Any:
        """Validate a Python value for this type (raises TypeError/ValueError naming the type)."""
        if not isinstance(value, self.python_type) or (self.python_type is int and isinstance(value, bool)):
            raise TypeError(f"{self.typename} expects {self.python_type.__name__}, got {type(value).__name__}")
        return value


class _Bool(_BuiltinType[bool]):
    python_type = bool

    def serialize(self, value: bool) -> bytes:
        return b"\x08\x01" if value else b""

    def deserialize(self, data: BytesLike) -> bool:
        v = _field1(data, 0, self.typename)
        return bool(v) if v is not None else False


_FLOAT32_MAX = float.fromhex("0x1.fffffep+127")
_F32 = struct.Struct("<f")


def _as_float32(value: float) -> float:
    """``value`` as a FloatWrapper holds it (protobuf's rule): beyond the 32-bit range it is ±inf, else
    rounded to the nearest 32-bit float. Applied where a float enters, so that an embedded value, a stored
    one and one sent to a remote function are the same number the SDK would read back."""
    if value > _FLOAT32_MAX:
        return math.inf
    if value < -_FLOAT32_MAX:
        return -math.inf
    return _F32.unpack(_F32.pack(value))[0]


class _Fixed(_BuiltinType[T]):
    def __init__(self, typename: str, fmt: str, wire_type: Literal[1, 5], python_type: type, lo=None, hi=None):
        super().__init__(typename)
        self._struct = struct.Struct(fmt)
        self._tag = bytes([(1 << 3) | wire_type])
        self._wire_type = wire_type
        self.python_type = python_type
        self._lo, self._hi = lo, hi

    def check(self, value: Any) -> Any:
        if self.python_type is float:
            if type(value) is not float:
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TypeError(f"{self.typename} expects float, got {type(value).__name__}")
                value = float(value)
            return self._normal(value)
        if type(value) is self.python_type:  # the hot path: exactly an int (not a bool)
            if self._lo is None or self._lo <= value <= self._hi:
                return value
            raise ValueError(f"{value} is out of range for {self.typename} ({self._lo}..{self._hi})")
        super().check(value)
        if self._lo is not None and not self._lo <= value <= self._hi:
            raise ValueError(f"{value} is out of range for {self.typename} ({self._lo}..{self._hi})")
        return int(value)

    def _normal(self, value: float) -> float:
        """The float the SDK reads back after a round trip: 32-bit for FloatType, and -0.0 as 0.0 (proto3
        leaves a zero out, sign and all)."""
        if self._wire_type == 5:
            value = _as_float32(value)
        return value if value else 0.0

    def serialize(self, value: T) -> bytes:
        if not value:
            return b""
        if self._wire_type == 5 and self.python_type is float:
            value = _as_float32(value)  # type: ignore[assignment,arg-type]
            if not value:  # underflowed to zero: left out, as protobuf does
                return b""
        return self._tag + self._struct.pack(value)

    def deserialize(self, data: BytesLike) -> T:
        if not data:
            return self.python_type()
        v = _field1(data, self._wire_type, self.typename)
        return self._struct.unpack(v)[0] if v is not None else self.python_type()


def check_text(value: str, what: str = "a string") -> str:
    """``value`` if it can be stored: every string is stored and sent as UTF-8, and a lone surrogate (from
    a JSON escape such as ``"\\ud800"``, say) has no UTF-8 form. Refused here, where it enters, with the
    reason, instead of failing every checkpoint that would have to store it. O(1) for ASCII text."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{what} is not valid Unicode text ({exc.reason}: {value[exc.start : exc.end]!r} at "
                f"position {exc.start}), so it cannot be stored or sent"
            ) from None
    return value


class _String(_BuiltinType[str]):
    python_type = str

    def check(self, value: Any) -> Any:
        if type(value) is not str:
            super().check(value)
        if len(value) > MAX_VALUE_BYTES // 4:  # UTF-8 takes up to 4 bytes a character
            raise ValueError(
                f"a {self.typename} value of {len(value)} characters is more than rayfun stores "
                f"({MAX_VALUE_BYTES // 4} characters)"
            )
        return check_text(value, f"a {self.typename} value")

    def serialize(self, value: str) -> bytes:
        if not value:
            return b""
        raw = value.encode("utf-8")
        return b"\x0a" + write_varint(len(raw)) + raw

    def deserialize(self, data: BytesLike) -> str:
        v = _field1(data, 2, self.typename)
        if v is None:
            return ""
        try:
            return bytes(v).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"malformed {self.typename} value: {exc}") from None


BoolType: _BuiltinType[bool] = _Bool("io.statefun.types/bool")
IntType: _BuiltinType[int] = _Fixed("io.statefun.types/int", "<i", 5, int, -(2**31), 2**31 - 1)
LongType: _BuiltinType[int] = _Fixed("io.statefun.types/long", "<q", 1, int, -(2**63), 2**63 - 1)
FloatType: _BuiltinType[float] = _Fixed("io.statefun.types/float", "<f", 5, float)
DoubleType: _BuiltinType[float] = _Fixed("io.statefun.types/double", "<d", 1, float)
StringType: _BuiltinType[str] = _String("io.statefun.types/string")

BUILTIN_TYPES: dict[str, _BuiltinType] = {
    t.typename: t for t in (BoolType, IntType, LongType, FloatType, DoubleType, StringType)
}


def _builtin(typename: str) -> _BuiltinType:
    return BUILTIN_TYPES[typename]


# Every type created in this process, by typename, so values can be shown decoded (egress, state reads).
_KNOWN_TYPES: dict[str, Type] = dict(BUILTIN_TYPES)


def type_for_typename(typename: str) -> Type | None:
    """The Type registered under ``typename`` in this process (built-ins, JSON and simple types), if any."""
    return _KNOWN_TYPES.get(typename)


def _remember(t: Type) -> Type:
    _KNOWN_TYPES.setdefault(t.typename, t)
    return t


# ---------------------------------------------------------------------------------------------------------
# User types.


class _SimpleSerializer(TypeSerializer[T]):
    def __init__(self, serialize_fn: Callable[[T], bytes], deserialize_fn: Callable[[bytes], T]):
        self._serialize, self._deserialize = serialize_fn, deserialize_fn

    def serialize(self, value: T) -> bytes:
        return self._serialize(value)

    def deserialize(self, data: bytes) -> T:
        return self._deserialize(data)


class SimpleType(Type[T]):
    def __init__(self, typename: str, serialize_fn: Callable[[T], bytes], deserialize_fn: Callable[[bytes], T]):
        super().__init__(typename)
        self._serializer = _SimpleSerializer(serialize_fn, deserialize_fn)

    def serializer(self) -> TypeSerializer[T]:
        return self._serializer


def simple_type(typename: str, serialize_fn: Callable[[T], bytes], deserialize_fn: Callable[[bytes], T]) -> Type[T]:
    """A user type with its own serialize/deserialize functions (as in the StateFun SDK)."""
    return _remember(SimpleType(typename, serialize_fn, deserialize_fn))


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def make_json_type(typename: str) -> Type[Any]:
    """A type whose values are UTF-8 JSON under ``typename`` (the SDK's ``make_json_type``)."""
    return _remember(SimpleType(typename, _json_dumps, lambda b: json.loads(bytes(b).decode("utf-8"))))


class _ProtobufSerializer(TypeSerializer[Any]):
    def __init__(self, cls: Any):
        self._cls = cls

    def serialize(self, value: Any) -> bytes:
        return value.SerializeToString()

    def deserialize(self, data: bytes) -> Any:
        return self._cls.FromString(data)


class ProtobufType(Type[Any]):
    """A protobuf message type (``make_protobuf_type``); ``message_class`` builds new messages of it.

    A generated class does not pickle (its descriptors are C objects, and its ``_pb2`` module may not be
    importable where the shards run), so the type travels as its serialized ``.proto`` file and the files
    that one imports (well-known types included), and each process rebuilds the class from them: the
    ``_pb2``'s own class when that module imports there and has the same file, else one of its own."""

    def __init__(
        self,
        cls: Any,
        namespace: str,
        files: tuple[bytes, ...] | None = None,
        where: tuple[str, str] | None = None,
    ):
        descriptor = getattr(cls, "DESCRIPTOR", None)
        full_name = getattr(descriptor, "full_name", None)
        if not isinstance(full_name, str) or not hasattr(cls, "FromString"):
            raise TypeError(f"make_protobuf_type() needs a generated protobuf message class, got {cls!r}")
        super().__init__(f"{namespace}/{full_name}")
        self.message_class = cls
        self._namespace = namespace
        self._serializer = _ProtobufSerializer(cls)
        self._files = files
        #: (module, qualname) of the generated class, kept through rebuilds: where to look for it first
        self._where = where or (getattr(cls, "__module__", ""), getattr(cls, "__qualname__", ""))

    def serializer(self) -> TypeSerializer[Any]:
        return self._serializer

    def __reduce__(self):
        if self._files is None:
            self._files = _proto_files(self.typename, self.message_class.DESCRIPTOR)
        full_name = self.message_class.DESCRIPTOR.full_name
        return (_rebuild_protobuf_type, (self._namespace, full_name, self._files, self._where))


def _proto_files(typename: str, descriptor: Any) -> tuple[bytes, ...]:
    """The serialized FileDescriptorProto of ``descriptor``'s file and of every file it imports, imports
    first (the order a pool must add them in)."""
    from google.protobuf import descriptor_pb2

    out: list[bytes] = []
    seen: set[str] = set()

    def visit(file: Any) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        out.append(proto.SerializeToString())

    try:
        visit(descriptor.file)
    except Exception as exc:
        raise TypeError(
            f"protobuf type {typename} cannot travel to other processes: its .proto file "
            f"{getattr(descriptor.file, 'name', '?')!r} cannot be serialized ({type(exc).__name__}: {exc})"
        ) from exc
    return tuple(out)


#: classes rebuilt in this process, by (message full name, files): one class per schema, not per unpickle
_REBUILT: dict[tuple[str, tuple[bytes, ...]], Any] = {}


def _rebuild_protobuf_type(namespace: str, full_name: str, files: tuple[bytes, ...], where: tuple[str, str]) -> Type:
    typename = f"{namespace}/{full_name}"
    key = (full_name, files)
    cls = _REBUILT.get(key)
    rebuilt = False
    if cls is None:
        cls = _importable_class(full_name, files[-1], where)
        if cls is None:
            cls, rebuilt = _class_from_files(typename, full_name, files), True
        _REBUILT[key] = cls
    known = _KNOWN_TYPES.get(typename)
    if isinstance(known, ProtobufType) and known.message_class is cls:
        return known
    t = ProtobufType(cls, namespace, files, where)
    if rebuilt:  # its messages pickle as (type, bytes): back in the driver they are the _pb2's class again
        copyreg.pickle(cls, lambda m: (_message_of, (t, m.SerializeToString())))
    return _remember(t)


def _message_of(t: ProtobufType, data: bytes) -> Any:
    return t.message_class.FromString(data)


def _importable_class(full_name: str, file: bytes, where: tuple[str, str]) -> Any:
    """The generated class itself, when its module imports here and was generated from the same file."""
    import importlib

    module_name, qualname = where
    if not module_name or module_name == "__main__" or "<" in qualname:
        return None
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        descriptor = obj.DESCRIPTOR
        if descriptor.full_name != full_name or _proto_files(full_name, descriptor)[-1] != file:
            return None
    except Exception:  # not importable here, or not that class: rebuild it from the files
        return None
    return obj


def _class_from_files(typename: str, full_name: str, files: tuple[bytes, ...]) -> Any:
    """A message class built from serialized FileDescriptorProtos, in a pool of its own."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        pool = descriptor_pool.DescriptorPool()
        for data in files:
            pool.Add(descriptor_pb2.FileDescriptorProto.FromString(data))
        descriptor = pool.FindMessageTypeByName(full_name)
        get = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22
        if get is not None:
            return get(descriptor)
        return message_factory.MessageFactory(pool).GetPrototype(descriptor)  # pragma: no cover
    except Exception as exc:
        raise TypeError(
            f"protobuf type {typename} cannot be rebuilt in this process from its .proto files "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def make_protobuf_type(cls: Any, namespace: str = "type.googleapis.com") -> Type[Any]:
    """A type for a protobuf message class, named ``namespace/<full proto name>`` like the SDK does. It
    travels to the shards however its ``_pb2`` was generated (see ``ProtobufType``)."""
    t = ProtobufType(cls, namespace)
    t._files = _proto_files(t.typename, cls.DESCRIPTOR)  # fail here, naming the type, not at rayfun.start
    return _remember(t)


# ---------------------------------------------------------------------------------------------------------
# Payload helpers shared by messages, state and the wire.


def encode_payload(typename: str, payload: Any) -> bytes:
    """The wire bytes of a runtime payload (built-ins are held decoded, everything else as bytes)."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    builtin = BUILTIN_TYPES.get(typename)
    if builtin is None:
        raise TypeError(f"value of type {typename} must travel as bytes, got {type(payload).__name__}")
    return builtin.serialize(payload)


def decode_payload(typename: str, data: BytesLike) -> Any:
    """The runtime payload for wire bytes: decoded for built-in types, the bytes themselves otherwise."""
    builtin = BUILTIN_TYPES.get(typename)
    return builtin.deserialize(data) if builtin is not None else bytes(data)


def to_payload(value: Any, value_type: Type) -> Any:
    """Turn a user's Python value of ``value_type`` into a runtime payload (checks built-in values)."""
    if value is None:
        raise ValueError(f"cannot use None as a value of {value_type.typename}; delete the state instead")
    if isinstance(value_type, _BuiltinType):
        return value_type.check(value)
    data = value_type.serializer().serialize(value)
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"serializer of {value_type.typename} returned {type(data).__name__}, expected bytes")
    if len(data) > MAX_VALUE_BYTES:
        raise ValueError(
            f"a {value_type.typename} value of {len(data)} bytes is more than rayfun stores ({MAX_VALUE_BYTES} bytes)"
        )
    return bytes(data)


def from_payload(payload: Any, typename: str, as_type: Type) -> Any:
    """Read a runtime payload of ``typename`` as ``as_type`` (decoding bytes, or re-reading a built-in)."""
    if payload is None:
        return None
    if not isinstance(payload, (bytes, bytearray)):
        if as_type.typename == typename:
            return payload
        payload = encode_payload(typename, payload)
    return as_type.serializer().deserialize(payload)


def infer_type(value: Any) -> Type:
    """The built-in type a plain Python value travels as when no type is given (``app.send``)."""
    if isinstance(value, bool):
        return BoolType
    if isinstance(value, int):
        return IntType if -(2**31) <= value < 2**31 else LongType
    if isinstance(value, float):
        return DoubleType
    if isinstance(value, str):
        return StringType
    raise TypeError(
        f"cannot infer a StateFun type for {type(value).__name__}; pass value_type= (e.g. make_json_type(...))"
    )


def display_value(typename: str, payload: Any) -> Any:
    """Decode a payload for people (egress reads, state views): known types decoded, others as bytes."""
    if payload is None or not isinstance(payload, (bytes, bytearray)):
        return payload
    t = _KNOWN_TYPES.get(typename)
    if t is None:
        return bytes(payload)
    try:  # a serializer is promised bytes (a bytearray payload is copied: rare, and not a hot path)
        return t.serializer().deserialize(payload if isinstance(payload, bytes) else bytes(payload))
    except Exception:  # undecodable: show the bytes rather than hide the record
        return bytes(payload)
