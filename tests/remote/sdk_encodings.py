"""Encodings as the official SDK produces them, for byte-for-byte comparison with rayfun.

Runs ONLY in the SDK's interpreter (``.venv-sdk``). Reads one JSON job on stdin, writes one JSON answer:
- ``builtins``: ``[[typename, value], ...]`` -> hex of the SDK's serialization of each value;
- ``requests``: ``[{target, states, invocations}, ...]`` -> hex of ToFunction built with the SDK's classes;
- ``handle``: ``[hex ToFunction, ...]`` -> hex of the SDK handler's answers for ``sdk_functions.functions``;
- ``roundtrips``: ``[[typename, hex of a little-endian double], ...]`` -> ``[hex of the SDK's serialization,
  hex of the double it reads back]`` each (hex, so that nan, inf and -0.0 survive JSON).
"""

import json
import struct
import sys

import sdk_functions
from statefun import BoolType, DoubleType, FloatType, IntType, LongType, RequestReplyHandler, StringType
from statefun.request_reply_pb2 import ToFunction

TYPES = {t.typename: t for t in (BoolType, IntType, LongType, FloatType, DoubleType, StringType)}


def build_request(desc):
    req = ToFunction()
    batch = req.invocation
    batch.target.namespace, batch.target.type, batch.target.id = desc["target"]
    for name, typename, value_hex in desc["states"]:
        pv = batch.state.add()
        pv.state_name = name
        if value_hex is not None:
            pv.state_value.typename = typename
            pv.state_value.has_value = True
            pv.state_value.value = bytes.fromhex(value_hex)
    for caller, typename, value_hex in desc["invocations"]:
        inv = batch.invocations.add()
        if caller:
            inv.caller.namespace, inv.caller.type, inv.caller.id = caller
        inv.argument.typename = typename
        inv.argument.has_value = True
        inv.argument.value = bytes.fromhex(value_hex)
    return req.SerializeToString().hex()


def roundtrip(typename, double_hex):
    serializer = TYPES[typename].serializer()
    data = serializer.serialize(struct.unpack("<d", bytes.fromhex(double_hex))[0])
    return [data.hex(), struct.pack("<d", serializer.deserialize(data)).hex()]


def main():
    job = json.load(sys.stdin)
    handler = RequestReplyHandler(sdk_functions.functions)
    out = {
        "builtins": [TYPES[t].serializer().serialize(v).hex() for t, v in job.get("builtins", [])],
        "requests": [build_request(d) for d in job.get("requests", [])],
        "handle": [handler.handle_sync(bytes.fromhex(h)).hex() for h in job.get("handle", [])],
        "roundtrips": [roundtrip(t, h) for t, h in job.get("roundtrips", [])],
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
