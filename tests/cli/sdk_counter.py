"""A remote-only StateFun function written with the official SDK, for ``rayfun run module.yaml``: it counts
the Kafka records of each key and writes ``key:count`` to the output topic (exactly-once makes the counts
of each key exactly 1..n). Runs ONLY in the SDK's interpreter: ``python sdk_counter.py TOPIC PORT``."""

import sys

from aiohttp import web
from statefun import IntType, RequestReplyHandler, StatefulFunctions, ValueSpec, kafka_egress_message

functions = StatefulFunctions()


@functions.bind("cli/counter", specs=[ValueSpec("count", IntType)])
def counter(context, message):
    count = (context.storage.count or 0) + 1
    context.storage.count = count
    context.send_egress(
        kafka_egress_message(
            typename="cli/out", topic=sys.argv[1], key=context.address.id, value=f"{context.address.id}:{count}"
        )
    )


handler = RequestReplyHandler(functions)


async def handle(request):
    return web.Response(body=await handler.handle_async(await request.read()), content_type="application/octet-stream")


if __name__ == "__main__":
    app = web.Application()
    app.router.add_post("/statefun", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None)
