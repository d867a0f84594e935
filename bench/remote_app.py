"""The counter function of bench/remote.py, written with the official StateFun SDK (runs in the SDK's own
interpreter). ``python bench/remote_app.py PORT`` serves it over aiohttp; ``python bench/remote_app.py
--limit N BATCH`` drives the SDK's handler directly (no HTTP, no rayfun) and prints its own limit in
msgs/s; ``--http-limit URL N BATCH`` drives a running server with the same requests from a plain aiohttp
client (64 in flight, no rayfun): what any client can get from that server, HTTP included."""

import asyncio
import sys
import time

from statefun import LongType, RequestReplyHandler, StatefulFunctions, ValueSpec

functions = StatefulFunctions()


@functions.bind("bench/remote-counter", specs=[ValueSpec("count", LongType)])
def counter(context, message):
    context.storage.count = (context.storage.count or 0) + message.as_int()


handler = RequestReplyHandler(functions)


def requests_like_the_runtimes(messages: int, batch: int) -> list[bytes]:
    """Requests as the runtime would send them: ``batch`` invocations each, with the state each would carry
    (built up front, so that only the handler or the server is timed)."""
    from statefun.request_reply_pb2 import ToFunction
    from statefun.types_pb2 import IntWrapper, LongWrapper

    def request(addr: int, count: int | None) -> bytes:
        req = ToFunction()
        inv = req.invocation
        inv.target.namespace, inv.target.type, inv.target.id = "bench", "remote-counter", str(addr)
        state = inv.state.add()
        state.state_name = "count"
        if count is not None:
            state.state_value.typename = "io.statefun.types/long"
            state.state_value.has_value = True
            state.state_value.value = LongWrapper(value=count).SerializeToString()
        arg = IntWrapper(value=1).SerializeToString()
        for _ in range(batch):
            i = inv.invocations.add()
            i.argument.typename, i.argument.has_value, i.argument.value = "io.statefun.types/int", True, arg
        return req.SerializeToString()

    requests, counts = [], {}
    for k in range(max(1, messages // batch)):
        addr = k % 1000
        requests.append(request(addr, counts.get(addr)))
        counts[addr] = counts.get(addr, 0) + batch
    return requests


def sdk_limit(messages: int, batch: int) -> float:
    """The SDK handler's own rate, driven straight with the runtime's requests; only the handler is timed."""
    requests = requests_like_the_runtimes(messages, batch)

    async def drive() -> float:
        started = time.perf_counter()
        for body in requests:
            await handler.handle_async(body)
        return len(requests) * batch / (time.perf_counter() - started)

    return asyncio.run(drive())


def http_limit(url: str, messages: int, batch: int, in_flight: int = 64) -> float:
    """The rate of a running server driven with the runtime's requests by a plain aiohttp client."""
    import aiohttp

    requests = requests_like_the_runtimes(messages, batch)

    async def drive() -> float:
        todo = iter(requests)
        headers = {"Content-Type": "application/octet-stream"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=in_flight)) as session:

            async def worker() -> None:
                for body in todo:
                    async with session.post(url, data=body, headers=headers) as resp:
                        resp.raise_for_status()
                        await resp.read()

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            return len(requests) * batch / (time.perf_counter() - started)

    return asyncio.run(drive())


if __name__ == "__main__":
    if sys.argv[1] == "--limit":
        n, batch = int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1
        print(f"sdk handler: {sdk_limit(n, batch):.0f} msgs/s")
    elif sys.argv[1] == "--http-limit":
        print(f"sdk server over HTTP: {http_limit(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])):.0f} msgs/s")
    else:
        from aiohttp import web

        async def handle(request):
            return web.Response(
                body=await handler.handle_async(await request.read()), content_type="application/octet-stream"
            )

        app = web.Application()
        app.router.add_post("/statefun", handle)
        web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
