"""The official StateFun SDK's own ceiling: how many messages/s its handler can process, no HTTP at all.

Runs ONLY in the SDK's interpreter (``.venv-sdk/bin/python bench/sdk_handler_limit.py``): it drives
``RequestReplyHandler.handle_async`` directly with pre-built ToFunction batches for a counter function
(``LongType`` state ``count``, +1 per message), so the number is an upper bound for any runtime that calls
an SDK-served function: parsing the batch, running the function, building the answer. Compare a rayfun
remote benchmark against it to see how much the runtime and the HTTP hop cost on top.

The last line is ``sdk handler: N msgs/s``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from statefun import IntType, LongType, RequestReplyHandler, StatefulFunctions, ValueSpec
from statefun.request_reply_pb2 import FromFunction, ToFunction

functions = StatefulFunctions()


@functions.bind("bench/counter", specs=[ValueSpec("count", LongType)])
def counter(context, message):
    context.storage.count = (context.storage.count or 0) + message.as_int()


def make_request(key: int, batch: int, count: int) -> bytes:
    """One batch of ``batch`` IntType messages for ``bench/counter/<key>``, with its current count."""
    req = ToFunction()
    inv = req.invocation
    inv.target.namespace, inv.target.type, inv.target.id = "bench", "counter", str(key)
    state = inv.state.add()
    state.state_name = "count"
    if count:
        state.state_value.typename = LongType.typename
        state.state_value.has_value = True
        state.state_value.value = LongType.serializer().serialize(count)
    one = IntType.serializer().serialize(1)
    for _ in range(batch):
        arg = inv.invocations.add().argument
        arg.typename = IntType.typename
        arg.has_value = True
        arg.value = one
    return req.SerializeToString()


async def run(batch: int, keys: int, seconds: float) -> float:
    handler = RequestReplyHandler(functions)
    requests = [make_request(k, batch, 1000 + k) for k in range(keys)]
    # sanity: the answer is one MODIFY of count with the batch applied
    answer = FromFunction.FromString(await handler.handle_async(requests[0]))
    [mutation] = answer.invocation_result.state_mutations
    assert LongType.serializer().deserialize(mutation.state_value.value) == 1000 + batch, "counter is wrong"

    for r in requests[: min(keys, 50)]:  # warm up
        await handler.handle_async(r)
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    i = 0
    while True:
        await handler.handle_async(requests[i])
        done += batch
        i = (i + 1) % keys
        if not i % 16 and time.perf_counter() >= deadline:
            break
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[1, 10, 100],
        help="messages per request (one line per size; the last one is the headline)",
    )
    parser.add_argument("--keys", type=int, default=1000, help="distinct addresses cycled through")
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per batch size")
    args = parser.parse_args()
    rate = 0.0
    for batch in args.batch:
        rate = asyncio.run(run(batch, args.keys, args.seconds))
        print(f"batch {batch:>5}: {rate:,.0f} msgs/s ({rate / batch:,.0f} requests/s)", flush=True)
    print(f"sdk handler: {rate:.0f} msgs/s")


if __name__ == "__main__":
    main()
