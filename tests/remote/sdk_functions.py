"""Test functions written with the official StateFun Python SDK, served over HTTP with aiohttp.

Runs ONLY in the SDK's own interpreter (``.venv-sdk``: apache-flink-statefun 3.3.0, protobuf<4), never
imported by rayfun or its tests: ``python sdk_functions.py PORT``. ``rayfun_functions.py`` holds the same
functions written against rayfun; the tests drive both with the same scenarios.
"""

import sys
from datetime import timedelta

from aiohttp import web
from statefun import (
    BoolType,
    IntType,
    LongType,
    RequestReplyHandler,
    StatefulFunctions,
    StringType,
    ValueSpec,
    egress_message_builder,
    kafka_egress_message,
    make_json_type,
    message_builder,
)

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


handler = RequestReplyHandler(functions)


async def handle(request):
    body = await request.read()
    answer = await handler.handle_async(body)
    return web.Response(body=answer, content_type="application/octet-stream")


if __name__ == "__main__":
    app = web.Application()
    app.router.add_post("/statefun", handle)
    app.router.add_post("/statefun/{name}", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
