"""Serve ``functions.py`` with the official SDK over StateFun's HTTP protocol (run in the SDK's interpreter, with
the repository root on ``PYTHONPATH``): ``python serve.py PORT`` listens on 127.0.0.1:PORT, path ``/statefun``."""

import sys

from aiohttp import web
from statefun import RequestReplyHandler

from tests.compat.showcase.functions import functions

handler = RequestReplyHandler(functions)


async def handle(request):
    body = await handler.handle_async(await request.read())
    return web.Response(body=body, content_type="application/octet-stream")


if __name__ == "__main__":
    app = web.Application()
    app.router.add_post("/statefun", handle)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
