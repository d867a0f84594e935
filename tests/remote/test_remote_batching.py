"""Per-address batching of remote calls: messages for an address whose request has not gone out yet (it
starts after the current turn, or waits for a request slot of a saturated endpoint) go with that request
instead of waiting for its answer. A real HTTP server on loopback (rayfun's StateFun v3 handler inside
aiohttp) counts the invocations of each request and holds the answers until the test lets them go."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from rayfun import HttpEndpoint, StatefulFunctions, ValueSpec
from rayfun.remote import RemoteFunctionClient
from rayfun.remote.protocol import ToFunction
from rayfun.remote.serve import RequestReplyHandler
from rayfun.runtime.metrics import FunctionCounts
from rayfun.runtime.runners.remote import RemoteFunction
from rayfun.types import IntType, LongType
from tests.remote.conftest import run
from tests.support.fakes import FakeServices
from tests.support.servers import free_port

TYPENAME = "example/counter"


def counter_functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind(TYPENAME, specs=[ValueSpec("count", LongType)])
    def counter(context, message):
        context.storage.count = (context.storage.count or 0) + message.as_int()

    return functions


class Shard(FakeServices):
    """The shard services a remote runner uses, recording holds and releases."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch_token = object()
        self.held = 0
        self.counts: dict[str, FunctionCounts] = {}

    def hold_remote(self, n: int = 1) -> None:
        self.held += n

    def release_remote(self, n: int = 1) -> None:
        self.held -= n

    def counts_of(self, typename: str) -> FunctionCounts:
        return self.counts.setdefault(typename, FunctionCounts())

    def layout_changed(self, typename: str) -> None:
        pass

    def apply_effects(self, *args: Any, **kwargs: Any) -> None:
        pass


async def serve(batches: list[tuple[str, int]], gate: asyncio.Event) -> tuple[web.AppRunner, str]:
    handler = RequestReplyHandler(counter_functions())

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        request = ToFunction()
        request.ParseFromString(body)
        batches.append((request.invocation.target.id, len(request.invocation.invocations)))
        await gate.wait()
        return web.Response(body=await handler.handle_async(body), content_type="application/octet-stream")

    app = web.Application()
    app.router.add_post("/statefun", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/statefun"


async def until(condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out waiting for the remote calls")
        await asyncio.sleep(0.01)


def test_messages_join_a_request_that_waits_for_its_slot():
    async def scenario():
        batches: list[tuple[str, int]] = []
        gate = asyncio.Event()
        server, url = await serve(batches, gate)
        endpoint = HttpEndpoint("example/*", url, max_concurrent_requests=1)
        client = RemoteFunctionClient(endpoint)
        shard = Shard()
        runner = RemoteFunction(TYPENAME, endpoint, client, shard)
        runner.register([("count", LongType.typename, None, 0)])
        one = IntType.serialize(1)
        try:
            # a burst in one turn: both addresses' first requests are still unsent, so each takes all of it
            for _ in range(3):
                runner.invoke("a", None, IntType.typename, one)
            runner.invoke("b", None, IntType.typename, one)
            await until(lambda: len(batches) == 1)  # a's request holds the one slot; b's waits for it
            for _ in range(4):  # later turns: b's request has not gone out, so they join it
                runner.invoke("b", None, IntType.typename, one)
            assert shard.held == 8
            gate.set()
            await until(lambda: shard.held == 0)
            await asyncio.gather(*shard.tasks)
            assert batches == [("a", 3), ("b", 5)]
            assert shard.failures == []
            # the answers were applied: each address's count is its number of messages
            assert runner.state.cells_of("a")[0] == 3
            assert runner.state.cells_of("b")[0] == 5
            assert not runner.inflight and not runner.queued and not runner.unsent
        finally:
            await client.close()
            await server.cleanup()

    run(scenario())
