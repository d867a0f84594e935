"""FloatType is a 32-bit float and DoubleType drops the sign of zero, as in the SDK: every place rayfun holds
or sends such a value (a message, state, egress, a checkpoint) has the number the SDK reads back."""

from __future__ import annotations

import math
import struct

import pytest

import rayfun
from rayfun import DoubleType, FloatType, StatefulFunctions, ValueSpec, egress_message_builder, message_builder
from rayfun.checkpoint import read_state
from rayfun.messages import Message
from rayfun.testing import Harness
from rayfun.types import decode_payload, encode_payload, to_payload
from tests.remote.test_remote_protocol import sdk_job

pytestmark = pytest.mark.timeout(180)

FLOAT, DOUBLE = FloatType.typename, DoubleType.typename
BIG = 314159000000.0
BIG_AS_FLOAT32 = 314159005696.0
F32_MAX = float.fromhex("0x1.fffffep+127")

VALUES = [
    BIG,
    0.1,
    -0.0,
    0.0,
    math.nan,
    math.inf,
    -math.inf,
    1e40,  # beyond float32: inf
    -1e40,
    F32_MAX,
    F32_MAX * (1 + 2**-26),  # rounds to F32_MAX in IEEE, but protobuf makes it inf
    1e-50,  # underflows to zero in float32
    -1e-50,
    1e-45,  # a float32 subnormal
    -2.5e300,
    5e-324,
]


def bits(value: float) -> str:
    return struct.pack("<d", value).hex()


def test_float_and_double_round_trip_like_the_sdk(sdk_python):
    cases = [(t, v) for t in (FLOAT, DOUBLE) for v in VALUES]
    answers = sdk_job(sdk_python, {"roundtrips": [[t, bits(v)] for t, v in cases]})["roundtrips"]
    for (typename, value), (sdk_wire, sdk_back) in zip(cases, answers):
        t = FloatType if typename == FLOAT else DoubleType
        held = to_payload(value, t)  # what an embedded rayfun function stores and sends
        assert bits(held) == sdk_back, (typename, value, held)
        assert encode_payload(typename, held).hex() == sdk_wire, (typename, value)
        assert t.serialize(value).hex() == sdk_wire, (typename, value)  # a serializer called directly
        assert bits(decode_payload(typename, bytes.fromhex(sdk_wire))) == sdk_back, (typename, value)


def test_the_known_values():
    assert to_payload(BIG, FloatType) == BIG_AS_FLOAT32
    assert to_payload(BIG, DoubleType) == BIG
    assert math.copysign(1, to_payload(-0.0, DoubleType)) == 1.0
    assert to_payload(1e40, FloatType) == math.inf
    assert math.isnan(to_payload(math.nan, FloatType))
    assert to_payload(3, FloatType) == 3.0 and type(to_payload(3, FloatType)) is float
    with pytest.raises(TypeError, match="io.statefun.types/float expects float"):
        to_payload(True, FloatType)
    assert message_builder("f/n", "a", float_value=BIG).payload == BIG_AS_FLOAT32
    assert Message("f/n", "a", FLOAT, to_payload(BIG, FloatType)).as_float() == BIG_AS_FLOAT32


def build_functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("fl/keep", specs=[ValueSpec("f", FloatType), ValueSpec("d", DoubleType)])
    def keep(context, message):
        x = message.as_double()
        context.storage.f = x
        context.storage.d = x
        context.send(message_builder("fl/echo", context.address.id, float_value=x))

    @functions.bind("fl/echo")
    def echo(context, message):
        x = message.as_float()
        context.send_egress(egress_message_builder("fl/out", [context.address.id, "message", x], _Pair))
        context.send_egress(egress_message_builder("fl/floats", x, FloatType))

    return functions


_Pair = rayfun.make_json_type("fl/Pair")


def test_embedded_state_messages_and_egress_in_the_harness():
    with Harness(build_functions()) as h:
        h.send("fl/keep", "a", BIG)  # a Python float travels as a double
        h.send("fl/keep", "z", -0.0)
        h.run()
        assert h.state("fl/keep", "a") == {"f": BIG_AS_FLOAT32, "d": BIG}
        assert math.copysign(1, h.state("fl/keep", "z")["d"]) == 1.0
        assert h.egress("fl/floats") == [BIG_AS_FLOAT32, 0.0]
        assert h.egress("fl/out")[0] == ["a", "message", BIG_AS_FLOAT32]


def test_embedded_runtime_and_its_checkpoint(ray_session, tmp_path):
    url = str(tmp_path / "checkpoints")
    app = rayfun.start(build_functions(), shards=2, checkpoint_dir=url, checkpoint_interval=0.2)
    try:
        app.send("fl/keep", "a", BIG)
        app.send("fl/keep", "b", 1e40)
        app.wait()
        assert app.state("fl/keep", "a") == {"f": BIG_AS_FLOAT32, "d": BIG}
        assert app.state("fl/keep", "b") == {"f": math.inf, "d": 1e40}
        assert sorted(app.egress("fl/floats")) == [BIG_AS_FLOAT32, math.inf]
        app.checkpoint()
    finally:
        app.stop()
    rows = read_state(url, function_types=["fl/keep"]).to_pylist()
    stored = {(r["id"], r["state_name"]): r["value_float"] for r in rows}
    assert stored == {("a", "f"): BIG_AS_FLOAT32, ("a", "d"): BIG, ("b", "f"): math.inf, ("b", "d"): 1e40}
