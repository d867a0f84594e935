"""Serve ``greeter.py`` with the official SDK over StateFun's HTTP protocol (run in the SDK's interpreter):
``python serve.py [PORT]`` listens on 127.0.0.1:PORT (default 8000), path ``/statefun``."""

import os
import sys

from aiohttp import web
from statefun import RequestReplyHandler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from greeter import functions

handler = RequestReplyHandler(functions)


async def handle(request):
    body = await handler.handle_async(await request.read())
    return web.Response(body=body, content_type="application/octet-stream")


if __name__ == "__main__":
    app = web.Application()
    app.router.add_post("/statefun", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]) if len(sys.argv) > 1 else 8000, print=None)
