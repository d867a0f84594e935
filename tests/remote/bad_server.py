"""A deliberately bad request-reply server: each path is one way a remote function can misbehave.

``make_bad_app()`` serves POST ``/<mode>`` (``?n=`` where a mode takes a count, ``?delay=`` seconds for
``slow``); ``app[HITS]`` counts the requests per mode. A good answer (``ok``, and ``flaky`` once it stops
failing) sets state ``seen`` (IntType) to 1 and sends one message. Run standalone with
``python bad_server.py PORT``.
"""

from __future__ import annotations

import asyncio
import collections
import sys

from aiohttp import web

from rayfun.remote.protocol import FromFunction, typed_value

INT = "io.statefun.types/int"
LONG = "io.statefun.types/long"
STRING = "io.statefun.types/string"
HITS = web.AppKey("hits", collections.Counter)
OCTETS = "application/octet-stream"


def answer(state_name: str = "seen", state_type: str = INT) -> bytes:
    """A FromFunction that writes ``state_name`` (as ``state_type``) and sends one reply."""
    resp = FromFunction()
    result = resp.invocation_result
    m = result.state_mutations.add(state_name=state_name, mutation_type=FromFunction.PersistedValueMutation.MODIFY)
    typed_value(state_type, 1, m.state_value)
    out = result.outgoing_messages.add()
    out.target.namespace, out.target.type, out.target.id = "example", "reply", "bob"
    typed_value(STRING, "done", out.argument)
    return resp.SerializeToString()


async def handle(request: web.Request) -> web.StreamResponse:
    mode = request.match_info["mode"]
    await request.read()
    hits = request.app[HITS]
    hits[mode] += 1
    n = int(request.query.get("n", "2"))
    if mode == "ok":
        return web.Response(body=answer(), content_type=OCTETS)
    if mode == "empty":
        return web.Response(body=b"", content_type=OCTETS)
    if mode == "slow":
        await asyncio.sleep(float(request.query.get("delay", "30")))
        return web.Response(body=answer(), content_type=OCTETS)
    if mode == "flaky":  # fails n times, then answers
        if hits[mode] <= n:
            return web.Response(status=500, text=f"failure {hits[mode]} of {n}")
        return web.Response(body=answer(), content_type=OCTETS)
    if mode == "always500":
        return web.Response(status=500, text="the function is broken")
    if mode == "notfound":
        return web.Response(status=404, text="no such function")
    if mode == "truncated":  # promises more bytes than it sends, then hangs up
        body = answer()
        resp = web.StreamResponse(headers={"Content-Type": OCTETS, "Content-Length": str(len(body) + 50)})
        await resp.prepare(request)
        await resp.write(body[:10])
        request.transport.close()
        return resp
    if mode == "halfbody":  # a FromFunction cut in the middle, correctly framed
        body = answer()
        return web.Response(body=body[: len(body) // 2], content_type=OCTETS)
    if mode == "garbage":
        return web.Response(body=b"\xff\xff\xff\xff\xff", content_type=OCTETS)
    if mode == "wrongtype":
        return web.Response(body=answer(), content_type="text/plain")
    if mode == "badmodify":  # writes the int state as a long
        return web.Response(body=answer(state_type=LONG), content_type=OCTETS)
    if mode == "unknownstate":
        return web.Response(body=answer(state_name="nope"), content_type=OCTETS)
    if mode == "garbage_then_ok":  # n garbage answers, then a good one
        if hits[mode] <= n:
            return web.Response(body=b"\xff\xff\xff", content_type=OCTETS)
        return web.Response(body=answer(), content_type=OCTETS)
    return web.Response(status=400, text=f"unknown mode {mode!r}")


def make_bad_app() -> web.Application:
    app = web.Application()
    app[HITS] = collections.Counter()
    app.router.add_post("/{mode}", handle)
    return app


class running_app:
    """``async with running_app(app, ssl_context=None) as base_url``: an app on a free loopback port."""

    def __init__(self, app: web.Application, ssl_context=None):
        self.app, self.ssl_context = app, ssl_context
        self.runner: web.AppRunner | None = None

    async def __aenter__(self) -> str:
        self.runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        port = self.runner.addresses[0][1]
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"

    async def __aexit__(self, *exc) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


if __name__ == "__main__":
    web.run_app(make_bad_app(), host="127.0.0.1", port=int(sys.argv[1]))
