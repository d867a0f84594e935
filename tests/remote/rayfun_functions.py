"""The functions of ``sdk_functions.py``, written against rayfun: the same code shape, served by rayfun.

``python rayfun_functions.py PORT`` serves them with ``rayfun.remote.serve``; the same
``functions`` object could run embedded in a rayfun app unchanged.
"""

import sys
from datetime import timedelta

from rayfun.functions import StatefulFunctions, ValueSpec
from rayfun.messages import egress_message_builder, kafka_egress_message, message_builder
from rayfun.remote import serve
from rayfun.types import BoolType, IntType, LongType, StringType, make_json_type

Command = make_json_type("example/Command")
Profile = make_json_type("example/Profile")
EgressRecord = make_json_type("io.statefun.playground/EgressRecord")

functions = StatefulFunctions()


@functions.bind("example/greeter", specs=[ValueSpec("seen", IntType)])
def greeter(context, message):
    name = message.as_string()
    seen = (context.storage.seen or 0) + 1
    context.storage.seen = seen
    caller = context.caller.typename + "/" + context.caller.id if context.caller else "ingress"
    context.send(message_builder("example/reply", name, str_value=f"Hello {name}! seen {seen} from {caller}"))


@functions.bind(
    "example/multi",
    specs=[
        ValueSpec("note", StringType, expire_after_write=timedelta(seconds=5)),
        ValueSpec("touched", LongType, expire_after_call=timedelta(minutes=1)),
        ValueSpec("profile", Profile),
        ValueSpec("flag", BoolType),
    ],
)
async def multi(context, message):
    cmd = message.as_type(Command)
    op = cmd["op"]
    storage = context.storage
    if op == "write":
        storage.note = cmd["note"]
        storage.touched = (storage.touched or 0) + 1
        storage.profile = {"name": context.address.id, "n": storage.touched}
        storage.flag = True
    elif op == "delete":
        del storage.note
        del storage.profile
    elif op == "delay":
        context.send_after(
            timedelta(milliseconds=1500),
            message_builder("example/greeter", "later", str_value="late"),
            cancellation_token=cmd["token"],
        )
        context.send_after(timedelta(seconds=2), message_builder("example/greeter", "later2", str_value="no-token"))
    elif op == "cancel":
        context.cancel_delayed_message(cmd["token"])
    elif op == "egress":
        context.send_egress(
            kafka_egress_message(typename="example/out", topic="greetings", key="k1", value="hello kafka")
        )
        context.send_egress(
            egress_message_builder(
                "io.statefun.playground/egress", {"topic": "greetings", "payload": "hi"}, EgressRecord
            )
        )
    elif op == "read":
        context.send(
            message_builder(
                "example/reply",
                "state",
                value={
                    "note": storage.note,
                    "touched": storage.touched,
                    "profile": storage.profile,
                    "flag": storage.flag,
                },
                value_type=Profile,
            )
        )
    elif op == "fail":
        raise RuntimeError("boom on purpose")


@functions.bind("example/counter", specs=[ValueSpec("count", LongType)])
def counter(context, message):
    step = message.as_int() if message.is_int() else 1
    context.storage.count = (context.storage.count or 0) + step


if __name__ == "__main__":
    serve(functions, port=int(sys.argv[1]))
