"""rayfun functions served the way the SDK's docs serve theirs: ``RequestReplyHandler`` inside a web server.

``python handler_servers.py KIND PORT`` with KIND ``aiohttp`` (``await handle_async``), ``wsgiref`` (the
standard library's WSGI server, ``handle_sync``) or ``flask`` (``handle_sync``). The functions are bound
under the namespace KIND, so one rayfun app can reach all three servers at once.
"""

import sys

from rayfun import (
    FloatType,
    IntType,
    RequestReplyHandler,
    StatefulFunctions,
    ValueSpec,
    egress_message_builder,
    make_json_type,
    message_builder,
)

Record = make_json_type("handler/Record")


def build(kind: str) -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind(f"{kind}/counter", specs=[ValueSpec("seen", IntType), ValueSpec("total", FloatType)])
    def counter(context, message):
        seen = (context.storage.seen or 0) + 1
        context.storage.seen = seen
        context.storage.total = (context.storage.total or 0.0) + message.as_double()
        caller = context.caller.typename if context.caller else "ingress"
        context.send_egress(egress_message_builder(f"{kind}/out", [kind, context.address.id, seen, caller], Record))
        context.send(message_builder("local/sink", context.address.id, str_value=f"{kind} #{seen}"))

    @functions.bind(f"{kind}/fails")
    def fails(context, message):
        raise RuntimeError(f"{kind} fails on purpose")

    return functions


def serve_aiohttp(handler: RequestReplyHandler, port: int) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        res = await handler.handle_async(await request.read())
        return web.Response(body=res, content_type="application/octet-stream")

    app = web.Application()
    app.add_routes([web.post("/statefun", handle)])
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def serve_wsgiref(handler: RequestReplyHandler, port: int) -> None:
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    def app(environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        try:
            res = handler.handle_sync(body)
        except Exception as exc:  # the runtime retries a 500
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [repr(exc).encode()]
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(res)))])
        return [res]

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    make_server("127.0.0.1", port, app, handler_class=Quiet).serve_forever()


def serve_flask(handler: RequestReplyHandler, port: int) -> None:
    from flask import Flask, make_response, request

    app = Flask(__name__)

    @app.route("/statefun", methods=["POST"])
    def handle():
        response = make_response(handler.handle_sync(request.data))
        response.headers.set("Content-Type", "application/octet-stream")
        return response

    app.run(host="127.0.0.1", port=port)


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    handler = RequestReplyHandler(build(kind))
    {"aiohttp": serve_aiohttp, "wsgiref": serve_wsgiref, "flask": serve_flask}[kind](handler, port)
