import pytest

from rayfun import (
    IntType,
    StatefulFunctions,
    StringType,
    ValueSpec,
    egress_message_builder,
    kafka_egress_message,
    make_json_type,
    message_builder,
)
from rayfun.messages import KAFKA_PRODUCER_RECORD


def test_message_builder_values_and_readers():
    m = message_builder("example/greeter", "bob", int_value=7)
    assert m.is_int() and m.as_int() == 7 and m.value_typename() == IntType.typename
    assert m.raw_value() == IntType.serialize(7)
    s = message_builder("example/greeter", "bob", str_value="hi")
    assert s.is_string() and s.as_string() == "hi" and not s.is_int()
    t = make_json_type("example/Req")
    j = message_builder("example/greeter", "bob", value={"a": [1]}, value_type=t)
    assert j.is_type(t) and j.as_type(t) == {"a": [1]}


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({}, ValueError),
        ({"int_value": 1, "str_value": "x"}, ValueError),
        ({"int_value": 2**31}, ValueError),
        ({"int_value": "1"}, TypeError),
        ({"value": 1}, ValueError),
        ({"nope": 1}, ValueError),
    ],
)
def test_message_builder_rejects_bad_arguments(kwargs, error):
    with pytest.raises(error):
        message_builder("example/greeter", "bob", **kwargs)


def test_message_builder_rejects_bad_addresses():
    with pytest.raises(ValueError, match="namespace/name"):
        message_builder("greeter", "bob", int_value=1)
    with pytest.raises(ValueError, match="target_id"):
        message_builder("example/greeter", "", int_value=1)


def test_kafka_egress_record_encoding():
    record = kafka_egress_message("example/out", topic="alerts", key="acct-1", value="boom")
    assert record.value_typename() == KAFKA_PRODUCER_RECORD
    # key=1 "acct-1", value_bytes=2 "boom", topic=3 "alerts"
    assert record.raw_value() == b"\x0a\x06acct-1\x12\x04boom\x1a\x06alerts"
    assert kafka_egress_message("example/out", topic="t", value=1).raw_value() == b"\x12\x04\x00\x00\x00\x01\x1a\x01t"


def test_egress_builder_checks_value():
    e = egress_message_builder("example/greetings", "hello", StringType)
    assert e.typename == "example/greetings" and e.as_string() == "hello"
    with pytest.raises(TypeError):
        egress_message_builder("example/greetings", 5, StringType)


def test_value_spec_and_binding_validation():
    with pytest.raises(ValueError, match="lowercase"):
        ValueSpec("Seen", IntType)
    with pytest.raises(ValueError, match="keyword"):
        ValueSpec("class", IntType)
    from datetime import timedelta

    with pytest.raises(ValueError, match="not both"):
        ValueSpec("x", IntType, expire_after_call=timedelta(1), expire_after_write=timedelta(1))
    functions = StatefulFunctions()
    with pytest.raises(TypeError, match="exactly"):
        functions.register("example/f", lambda context: None)
    functions.register("example/f", lambda context, message: None)
    with pytest.raises(ValueError, match="already bound"):
        functions.register("example/f", lambda context, message: None)
    with pytest.raises(ValueError, match="duplicate"):
        functions.register("example/g", lambda c, m: None, [ValueSpec("a", IntType), ValueSpec("a", IntType)])
