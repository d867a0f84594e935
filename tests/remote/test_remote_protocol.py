"""The wire format: round trips, validation, and byte-for-byte agreement with the official SDK."""

from __future__ import annotations

import json
import struct
import subprocess
from datetime import timedelta

import pytest

from rayfun.functions import StatefulFunctions, ValueSpec
from rayfun.remote import make_handler
from rayfun.remote.protocol import (
    WRAPPERS,
    DecodeError,
    FromFunction,
    InvocationResult,
    MissingStates,
    ProtocolError,
    ToFunction,
    decode_response,
    encode_request,
    payload_of,
    typed_value,
)
from rayfun.types import IntType, StringType, decode_payload, encode_payload
from tests.remote import rayfun_functions
from tests.remote.conftest import BOOL, HERE, INT, LONG, STRING, run

pytestmark = pytest.mark.timeout(120)

FLOAT, DOUBLE = "io.statefun.types/float", "io.statefun.types/double"

BUILTIN_CASES = [
    (BOOL, True),
    (BOOL, False),
    (INT, 0),
    (INT, 5),
    (INT, -1),
    (INT, 2**31 - 1),
    (INT, -(2**31)),
    (LONG, 0),
    (LONG, 5),
    (LONG, -1),
    (LONG, 2**63 - 1),
    (LONG, -(2**63)),
    (FLOAT, 1.5),
    (FLOAT, 0.0),
    (FLOAT, -0.0),
    (FLOAT, 0.1),
    (FLOAT, float("inf")),
    (FLOAT, -3.25e38),
    (DOUBLE, 1.5),
    (DOUBLE, 0.0),
    (DOUBLE, -0.0),
    (DOUBLE, 0.1),
    (DOUBLE, -2.5e300),
    (DOUBLE, float("-inf")),
    (STRING, ""),
    (STRING, "hi"),
    (STRING, "héllo ✓ 🙂"),
    (STRING, "x" * 300),
]


def sdk_job(sdk_python: str, job: dict) -> dict:
    proc = subprocess.run(
        [sdk_python, str(HERE / "sdk_encodings.py")],
        input=json.dumps(job),
        text=True,
        capture_output=True,
        cwd=str(HERE),
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


# ---------------------------------------------------------------------------------------------------------
# Without the SDK.


def test_reference_hex_examples():
    examples = {
        (BOOL, True): "0801",
        (BOOL, False): "",
        (INT, 5): "0d05000000",
        (INT, -1): "0dffffffff",
        (INT, 0): "",
        (LONG, 5): "090500000000000000",
        (FLOAT, 1.5): "0d0000c03f",
        (DOUBLE, 1.5): "09000000000000f83f",
        (STRING, "hi"): "0a026869",
    }
    for (typename, value), hexed in examples.items():
        assert encode_payload(typename, value).hex() == hexed
        assert WRAPPERS[typename](value=value).SerializeToString().hex() == hexed


@pytest.mark.parametrize("typename,value", BUILTIN_CASES)
def test_builtin_encoding_matches_protobuf_wrappers(typename, value):
    ours = encode_payload(typename, value)
    if not (isinstance(value, float) and value == 0 and str(value).startswith("-")):
        # -0.0: protobuf >= 4 writes the sign bit, the SDK's protobuf 3.20 drops it like every zero; rayfun
        # follows the SDK (test_builtin_bytes_identical_to_sdk), and reads both.
        assert ours == WRAPPERS[typename](value=value).SerializeToString()
    else:
        assert decode_payload(typename, WRAPPERS[typename](value=value).SerializeToString()) == 0.0
    back = decode_payload(typename, ours)
    if typename == FLOAT:
        value = struct.unpack("<f", struct.pack("<f", value))[0]
    assert back == value and type(back) is type(value)
    assert WRAPPERS[typename].FromString(ours).value == back


def test_request_round_trip():
    body = encode_request(
        "example/greeter",
        "bob",
        [("seen", INT, 3), ("empty", STRING, None), ("blob", "example/Blob", b"\x00\x01")],
        [(None, STRING, "hi"), (("example/person", "ann"), "example/Blob", b"raw")],
    )
    req = ToFunction.FromString(body)
    batch = req.invocation
    assert (batch.target.namespace, batch.target.type, batch.target.id) == ("example", "greeter", "bob")
    seen, empty, blob = batch.state
    assert (seen.state_name, seen.state_value.typename, payload_of(seen.state_value)) == ("seen", INT, 3)
    assert empty.state_name == "empty" and not empty.HasField("state_value")
    assert payload_of(blob.state_value) == b"\x00\x01"
    first, second = batch.invocations
    assert not first.HasField("caller") and payload_of(first.argument) == "hi"
    assert (second.caller.namespace, second.caller.type, second.caller.id) == ("example", "person", "ann")
    assert payload_of(second.argument) == b"raw"


def _response(**build) -> bytes:
    resp = FromFunction()
    answer = resp.invocation_result
    for name, typename, payload in build.get("modify", []):
        m = answer.state_mutations.add(state_name=name, mutation_type=FromFunction.PersistedValueMutation.MODIFY)
        typed_value(typename, payload, m.state_value)
    for name in build.get("delete", []):
        answer.state_mutations.add(state_name=name, mutation_type=FromFunction.PersistedValueMutation.DELETE)
    for target, id, typename, payload in build.get("send", []):
        m = answer.outgoing_messages.add()
        m.target.namespace, _, m.target.type = target.rpartition("/")
        m.target.id = id
        typed_value(typename, payload, m.argument)
    for delay, target, id, token in build.get("delay", []):
        d = answer.delayed_invocations.add(delay_in_ms=delay, cancellation_token=token)
        d.target.namespace, _, d.target.type = target.rpartition("/")
        d.target.id = id
        typed_value(INT, 1, d.argument)
    for token in build.get("cancel", []):
        answer.delayed_invocations.add(is_cancellation_request=True, cancellation_token=token)
    for egress, typename, payload in build.get("egress", []):
        e = answer.outgoing_egresses.add()
        e.egress_namespace, _, e.egress_type = egress.rpartition("/")
        typed_value(typename, payload, e.argument)
    return resp.SerializeToString()


def test_response_decoding():
    body = _response(
        modify=[("seen", INT, 7)],
        delete=["note"],
        send=[("example/reply", "bob", STRING, "yo")],
        delay=[(1500, "example/greeter", "later", "tok")],
        cancel=["tok"],
        egress=[("example/out", "example/Rec", b"{}")],
    )
    result = decode_response(body, {"seen": INT, "note": STRING})
    assert result.state_mutations == [("seen", INT, 7), ("note", None, None)]
    [m] = result.outgoing
    assert (m.target_typename, m.target_id, m.value_typename(), m.payload) == ("example/reply", "bob", STRING, "yo")
    (delay, msg, token), cancel = result.delayed
    assert (delay, msg.target_typename, msg.target_id, msg.payload, token) == (
        1500,
        "example/greeter",
        "later",
        1,
        "tok",
    )
    assert cancel == (None, None, "tok")
    [e] = result.egress
    assert (e.typename, e.value_typename(), e.payload) == ("example/out", "example/Rec", b"{}")


def test_empty_answers_are_empty_results():
    assert decode_response(b"", {}) == InvocationResult()
    empty_result = FromFunction()
    empty_result.invocation_result.SetInParent()
    assert decode_response(empty_result.SerializeToString(), {}) == InvocationResult()


def test_missing_states_decoding():
    resp = FromFunction()
    specs = resp.incomplete_invocation_context.missing_values
    specs.add(state_name="a", type_typename=INT)
    s = specs.add(state_name="b", type_typename="example/X")
    s.expiration_spec.mode = FromFunction.ExpirationSpec.AFTER_WRITE
    s.expiration_spec.expire_after_millis = 2000
    s = specs.add(state_name="c")
    s.expiration_spec.mode = FromFunction.ExpirationSpec.AFTER_INVOKE
    s.expiration_spec.expire_after_millis = 60000
    assert decode_response(resp.SerializeToString(), {}) == MissingStates(
        [
            ("a", INT, None, 0),
            ("b", "example/X", "after_write", 2000),
            ("c", "io.statefun.types/unset", "after_call", 60000),
        ]
    )


@pytest.mark.parametrize(
    "build,registered,message",
    [
        (dict(modify=[("seen", LONG, 1)]), {"seen": INT}, "registered as io.statefun.types/int"),
        (dict(modify=[("nope", INT, 1)]), {"seen": INT}, "'nope', which is not registered"),
        (dict(delete=["nope"]), {}, "not registered"),
        (dict(modify=[("seen", INT, None)]), {"seen": INT}, "carries no value"),
        (dict(cancel=[""]), {}, "without a cancellation token"),
        (dict(send=[("example/reply", "", STRING, "x")]), {}, "empty target id"),
        (dict(delay=[(-5, "example/g", "x", "")]), {}, "negative delay"),
        (dict(egress=[("example/out", STRING, b"\xff\xfe")]), {}, "malformed"),
    ],
)
def test_protocol_violations(build, registered, message):
    with pytest.raises(ProtocolError, match=message):
        decode_response(_response(**build), registered)


def test_garbage_is_a_decode_error():
    with pytest.raises(DecodeError):
        decode_response(b"\xff\xff\xff\xff", {})
    with pytest.raises(DecodeError):  # parses, but only as unknown fields: not a FromFunction
        decode_response(b"hello world", {})


def test_handler_handshake_and_dirty_cells_only():
    functions = StatefulFunctions()

    @functions.bind(
        "t/f", specs=[ValueSpec("a", IntType), ValueSpec("b", StringType, expire_after_call=timedelta(seconds=3))]
    )
    def f(ctx, msg):
        if msg.as_string() == "same":
            ctx.storage.a = ctx.storage.a  # an assignment counts, even of the same value (as in the SDK)
        elif msg.as_string() == "del":
            del ctx.storage.b

    handler = make_handler(functions)
    missing = decode_response(
        run(handler.handle(encode_request("t/f", "1", [("a", INT, None)], [(None, STRING, "x")]))), {}
    )
    assert missing == MissingStates([("b", STRING, "after_call", 3000)])
    states = [("a", INT, 4), ("b", STRING, "v")]
    registered = {"a": INT, "b": STRING}
    quiet = decode_response(run(handler.handle(encode_request("t/f", "1", states, [(None, STRING, "x")]))), registered)
    assert quiet == InvocationResult()
    same = decode_response(
        run(handler.handle(encode_request("t/f", "1", states, [(None, STRING, "same")]))), registered
    )
    assert same.state_mutations == [("a", INT, 4)]
    deleted = decode_response(
        run(handler.handle(encode_request("t/f", "1", states, [(None, STRING, "del")]))), registered
    )
    assert deleted.state_mutations == [("b", None, None)]


# ---------------------------------------------------------------------------------------------------------
# Against the official SDK (in its own interpreter).


def test_builtin_bytes_identical_to_sdk(sdk_python):
    answer = sdk_job(sdk_python, {"builtins": BUILTIN_CASES})
    for (typename, value), sdk_hex in zip(BUILTIN_CASES, answer["builtins"]):
        assert encode_payload(typename, value).hex() == sdk_hex, (typename, value)


def test_request_bytes_identical_to_sdk(sdk_python):
    states = [("seen", INT, 3), ("empty", STRING, None), ("note", STRING, "n"), ("blob", "example/Blob", b"\x00")]
    invocations = [(None, STRING, "hi"), (("example/person", "ann"), LONG, -7), (None, "example/Blob", b"raw")]
    desc = {
        "target": ["example", "greeter", "bob"],
        "states": [[n, t, None if p is None else encode_payload(t, p).hex()] for n, t, p in states],
        "invocations": [
            [list(c[0].rpartition("/")[::2]) + [c[1]] if c else None, t, encode_payload(t, p).hex()]
            for c, t, p in invocations
        ],
    }
    [sdk_hex] = sdk_job(sdk_python, {"requests": [desc]})["requests"]
    assert encode_request("example/greeter", "bob", states, invocations).hex() == sdk_hex


def test_served_answers_identical_to_sdk_handler(sdk_python):
    """The same batches through the SDK's RequestReplyHandler and rayfun's handler: the same bytes."""
    cmd = lambda **kw: (None, "example/Command", json.dumps(kw).encode())  # noqa: E731
    multi_states = [
        ("note", STRING, "n0"),
        ("touched", LONG, 2),
        ("profile", "example/Profile", None),
        ("flag", BOOL, False),
    ]
    requests = [
        encode_request("example/greeter", "bob", [], [(None, STRING, "bob")]),
        encode_request("example/greeter", "bob", [("seen", INT, None)], [(None, STRING, "bob")]),
        encode_request(
            "example/greeter",
            "bob",
            [("seen", INT, 41), ("extra", STRING, "ignored")],
            [(None, STRING, "bob"), (("example/person", "ann"), STRING, "bob")],
        ),
        encode_request("example/multi", "m", [], [cmd(op="read")]),
        encode_request(
            "example/multi",
            "m",
            multi_states,
            [
                cmd(op="write", note="ü"),
                cmd(op="read"),
                cmd(op="delay", token="t"),
                cmd(op="cancel", token="t"),
                cmd(op="egress"),
                cmd(op="delete"),
                cmd(op="read"),
            ],
        ),
        encode_request("example/counter", "c", [("count", LONG, 9)], [(None, INT, 3), (None, STRING, "x")]),
    ]
    sdk_answers = sdk_job(sdk_python, {"handle": [r.hex() for r in requests]})["handle"]
    handler = make_handler(rayfun_functions.functions)
    for request, sdk_hex in zip(requests, sdk_answers):
        assert run(handler.handle(request)).hex() == sdk_hex
