"""Built-in types must match StateFun's wire encoding byte for byte (hex from the SDK, see shared notes)."""

import json

import pytest

from rayfun import BoolType, DoubleType, FloatType, IntType, LongType, StringType, make_json_type, simple_type
from rayfun.types import decode_payload, encode_payload, infer_type, to_payload


@pytest.mark.parametrize(
    "t, value, hexbytes",
    [
        (BoolType, True, "0801"),
        (BoolType, False, ""),
        (IntType, 5, "0d05000000"),
        (IntType, -1, "0dffffffff"),
        (IntType, 0, ""),
        (LongType, 5, "090500000000000000"),
        (FloatType, 1.5, "0d0000c03f"),
        (DoubleType, 1.5, "09000000000000f83f"),
        (StringType, "hi", "0a026869"),
        (StringType, "", ""),
    ],
)
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


def test_what_cannot_be_stored_or_sent_is_refused_where_it_enters():
    """Text that is not valid Unicode, ids and typenames past their bounds or with control characters are
    refused with the reason at the boundary (a builder, a source record, a state write), never later."""
    import pytest

    from rayfun import StringType, message_builder
    from rayfun.connectors.memory import MemorySource
    from rayfun.io import DeadLetter
    from rayfun.types import MAX_ID_CHARS, MAX_TYPENAME_CHARS, check_id, validate_typename

    with pytest.raises(ValueError, match="not valid Unicode text"):
        StringType.check("ok \ud800")
    assert StringType.check("café ☕") == "café ☕"
    with pytest.raises(ValueError, match="target_id is not valid Unicode text"):
        message_builder("t/x", "\udfff", int_value=1)
    with pytest.raises(ValueError, match=f"more than {MAX_ID_CHARS}"):
        message_builder("t/x", "k" * (MAX_ID_CHARS + 1), int_value=1)
    assert check_id("k" * MAX_ID_CHARS) == "k" * MAX_ID_CHARS
    with pytest.raises(ValueError, match="non-empty str"):
        check_id("")
    with pytest.raises(ValueError, match="no spaces or control characters"):
        validate_typename("t/with space")
    with pytest.raises(ValueError, match="no spaces or control characters"):
        validate_typename("t/bell\x07")
    with pytest.raises(ValueError, match=f"more than {MAX_TYPENAME_CHARS}"):
        validate_typename("t/" + "n" * MAX_TYPENAME_CHARS)

    records = [("t/x", "a", "fine"), ("t/x", "b", "bad \ud800"), ("t/x", "k" * (MAX_ID_CHARS + 1), 1), ("t/x", "c", 1)]
    rows = MemorySource(records, id="t/in").build_partition("0", None).next_rows()
    # an int record's id is checked where it is routed (once per id), the others' at the source
    assert [type(r).__name__ for r in rows] == ["tuple", "DeadLetter", "tuple", "tuple"]
    assert isinstance(rows[1], DeadLetter) and rows[1].source == "t/in"
    assert "not valid Unicode text" in rows[1].reason
    from rayfun.runtime.outbox import Outbox
    from rayfun.runtime.partitioning import Partitioner
    from rayfun.runtime.registry import TypeRegistry
    from tests.support.fakes import FakeServices

    services = FakeServices()
    outbox = Outbox(services, 0, 1, Partitioner(64, 1), TypeRegistry(["t/x"], []))
    outbox.route_input(rows, "t/in")
    assert [r[1] for r in outbox.flush()] == ["a", "c"]
    (dropped, (long_id, fields)) = services.dead_letters  # the source's dead letter, then the router's
    assert f"more than {MAX_ID_CHARS}" in long_id and fields["source"] == "t/in"


def test_a_string_state_write_of_invalid_text_fails_the_invocation():
    import pytest

    from rayfun import StringType, ValueSpec
    from rayfun.context import make_storage_class

    storage = make_storage_class("t/s", [ValueSpec("s", StringType)])([None], 0)
    storage.s = "ascii"
    storage.s = "ünïcode"
    with pytest.raises(ValueError, match="state 's' of t/s.*not valid Unicode text"):
        storage.s = "lone \ud800"
    assert storage.s == "ünïcode"


def test_values_too_big_to_store_are_refused_where_they_enter(monkeypatch):
    """A value that could never be checkpointed (Arrow and Parquet stop at 2 GiB) would stop every
    checkpoint: it is refused at the state write, the message builder, and in a remote function's answer."""
    import pytest

    from rayfun import StringType, ValueSpec, message_builder, simple_type, types
    from rayfun.context import make_storage_class
    from rayfun.remote import protocol

    monkeypatch.setattr(types, "MAX_VALUE_BYTES", 64)
    blob = simple_type("t/blob", lambda b: b, bytes)
    storage = make_storage_class("t/s", [ValueSpec("b", blob), ValueSpec("s", StringType)])([None, None], 0)
    storage.b = b"x" * 64
    with pytest.raises(ValueError, match="t/blob value of 65 bytes is more than rayfun stores"):
        storage.b = b"x" * 65
    assert storage.b == b"x" * 64
    with pytest.raises(ValueError, match="17 characters is more than rayfun stores"):
        storage.s = "y" * 17
    with pytest.raises(ValueError, match="65 bytes"):
        message_builder("t/x", "a", value=b"z" * 65, value_type=blob)

    monkeypatch.setattr(protocol, "MAX_VALUE_BYTES", 64)

    class TypedValue:
        typename, value, has_value = "t/blob", b"z" * 65, True

    with pytest.raises(protocol.ProtocolError, match="state 'b': 65 bytes, more than rayfun stores"):
        protocol._payload(TypedValue(), "state 'b'")


def test_rayfun_s_own_errors_share_one_base():
    import importlib

    from rayfun import RayfunError

    errors = {
        "rayfun.checkpoint.errors": "CorruptCheckpointError",
        "rayfun.remote.client": "RemoteFunctionError",
        "rayfun.remote.protocol": "ProtocolError",
        "rayfun.module_yaml": "ModuleSpecError",
        "rayfun.module_kinds": "KindError",
        "rayfun.connectors.kafka.sink": "KafkaEgressError",
        "rayfun.connectors.kafka.broker": "BrokerError",
        "rayfun.runtime.timers": "InvalidEffect",
        "rayfun.runtime.snapshot": "CheckpointRefused",
        "rayfun.testing": "FunctionError",
    }
    for module, name in errors.items():
        assert issubclass(getattr(importlib.import_module(module), name), RayfunError), f"{module}.{name}"


def test_an_error_quotes_a_huge_input_cut_short():
    """What an error or a dead letter quotes of a user's input is bounded: a 100 KB id or typename, or a
    list of 100k items where an id belongs, must not become a 100 KB log line."""
    import pytest

    from rayfun.messages import to_message

    for record in [("t/x", "a" * 100_000, 1), ("x" * 100_000, "a", 1), ("t/x", ["a"] * 100_000, 1), "r" * 100_000]:
        with pytest.raises(ValueError) as caught:
            to_message(record)
        assert len(str(caught.value)) < 600, str(caught.value)[:200]
