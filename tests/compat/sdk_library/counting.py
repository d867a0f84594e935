"""Counting per key: SDK-style code (names from ``statefun``, a wire type from ``statefun.request_reply_pb2``)."""

from datetime import timedelta

from statefun import (
    Context,
    IntType,
    Message,
    StatefulFunctions,
    StringType,
    ValueSpec,
    egress_message_builder,
    message_builder,
)
from statefun.request_reply_pb2 import TypedValue

functions = StatefulFunctions()


@functions.bind("lib/counter", specs=[ValueSpec("count", IntType)])
def counter(context: Context, message: Message) -> None:
    count = (context.storage.count or 0) + message.as_int()
    context.storage.count = count
    context.send(message_builder("lib/reporter", context.address.id, int_value=count))


@functions.bind("lib/reporter", specs=[ValueSpec("reports", IntType, expire_after_call=timedelta(hours=1))])
def reporter(context: Context, message: Message) -> None:
    reports = (context.storage.reports or 0) + 1
    context.storage.reports = reports
    caller = context.caller
    wire = TypedValue(typename=message.value_typename(), has_value=True)  # runs in the shard, on the alias
    text = f"{context.address.id}={message.as_int()} #{reports} from {caller.typename} as {wire.typename}"
    context.send_egress(egress_message_builder("lib/reports", text, StringType))
