"""Remote functions for the runtime tests, written with the official StateFun SDK (its own interpreter:
``python sdk_app.py PORT``). They talk to embedded rayfun functions (``local/*``) in both directions."""

import sys
from datetime import timedelta

from aiohttp import web
from statefun import (
    IntType,
    LongType,
    RequestReplyHandler,
    StatefulFunctions,
    StringType,
    ValueSpec,
    egress_message_builder,
    message_builder,
)

functions = StatefulFunctions()


@functions.bind("remote/greeter", specs=[ValueSpec("seen", IntType)])
def greeter(context, message):
    seen = (context.storage.seen or 0) + 1
    context.storage.seen = seen
    caller = f"{context.caller.typename}/{context.caller.id}" if context.caller else "ingress"
    text = f"Hello {context.address.id} #{seen}: {message.as_string()} (from {caller})"
    context.send_egress(egress_message_builder("remote/greetings", text, StringType))
    context.send(message_builder("local/echo", context.address.id, str_value=text))


@functions.bind("remote/ping", specs=[ValueSpec("hits", IntType)])
def ping(context, message):
    context.storage.hits = (context.storage.hits or 0) + 1
    n = message.as_int()
    if n > 0:
        context.send(message_builder("local/pong", context.address.id, int_value=n - 1))


@functions.bind(
    "remote/timer",
    specs=[
        ValueSpec("note", StringType, expire_after_write=timedelta(milliseconds=400)),
        ValueSpec("fired", StringType),
    ],
)
def timer(context, message):
    command = message.as_string()
    if command == "schedule":
        context.storage.note = "short-lived"
        context.send_after(
            timedelta(milliseconds=200), message_builder("remote/timer", context.address.id, str_value="kept")
        )
        context.send_after(
            timedelta(milliseconds=100),
            message_builder("remote/timer", context.address.id, str_value="cancelled"),
            cancellation_token="tok",
        )
        context.cancel_delayed_message("tok")
    else:
        context.storage.fired = (context.storage.fired or "") + command + ";"


@functions.bind("remote/counter", specs=[ValueSpec("count", LongType)])
def counter(context, message):
    context.storage.count = (context.storage.count or 0) + message.as_int()


@functions.bind("broken/always", specs=[ValueSpec("x", IntType)])
def always_fails(context, message):
    raise RuntimeError("this function always fails")


handler = RequestReplyHandler(functions)


async def handle(request):
    return web.Response(body=await handler.handle_async(await request.read()), content_type="application/octet-stream")


if __name__ == "__main__":
    app = web.Application()
    app.router.add_post("/statefun", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
