"""Built-in types must match StateFun's wire encoding byte for byte (hex from the SDK, see shared notes)."""

import json

import pytest

from rayfun import (BoolType, DoubleType, FloatType, IntType, LongType, StringType, make_json_type,
                    simple_type)
from rayfun.types import decode_payload, encode_payload, infer_type, to_payload


@pytest.mark.parametrize("t, value, hexbytes", [
    (BoolType, True, "0801"), (BoolType, False, ""),
    (IntType, 5, "0d05000000"), (IntType, -1, "0dffffffff"), (IntType, 0, ""),
    (LongType, 5, "090500000000000000"),
    (FloatType, 1.5, "0d0000c03f"), (DoubleType, 1.5, "09000000000000f83f"),
    (StringType, "hi", "0a026869"), (StringType, "", ""),
])
def test_builtin_wire_encoding(t, value, hexbytes):
    assert t.serialize(value).hex() == hexbytes
    assert t.deserialize(bytes.fromhex(hexbytes)) == value
    assert decode_payload(t.typename, encode_payload(t.typename, value)) == value


def test_builtin_decoding_rejects_garbage_with_the_type_name():
    with pytest.raises(ValueError, match="io.statefun.types/string"):
        StringType.deserialize(b"\x0a\x05ab")  # length says 5, 2 bytes follow
    with pytest.raises(ValueError, match="io.statefun.types/int"):
        IntType.deserialize(b"\x0a\x01x")  # field 1 with the wrong wire type


def test_int_range_and_type_checks():
    with pytest.raises(ValueError, match="out of range"):
        to_payload(2**31, IntType)
    assert to_payload(2**31, LongType) == 2**31
    with pytest.raises(TypeError, match="expects int"):
        to_payload("5", IntType)
    with pytest.raises(TypeError):
        to_payload(True, IntType)
    with pytest.raises(ValueError, match="None"):
        to_payload(None, IntType)


def test_json_and_simple_types_travel_as_bytes():
    t = make_json_type("example/GreetRequest")
    payload = to_payload({"name": "Bob", "n": 1}, t)
    assert isinstance(payload, bytes) and json.loads(payload) == {"name": "Bob", "n": 1}
    upper = simple_type("example/upper", lambda s: s.upper().encode(), lambda b: b.decode().lower())
    assert to_payload("abc", upper) == b"ABC"
    with pytest.raises(ValueError, match="namespace/name"):
        make_json_type("no-namespace")


def test_infer_type():
    assert infer_type(3) is IntType and infer_type(2**40) is LongType
    assert infer_type("x") is StringType and infer_type(True) is BoolType and infer_type(1.0) is DoubleType
    with pytest.raises(TypeError, match="value_type"):
        infer_type({"a": 1})


def test_builtin_types_pickle_as_singletons():
    import pickle

    assert pickle.loads(pickle.dumps(IntType)) is IntType
