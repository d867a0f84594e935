"""Cyclic messaging: two function types bounce a counter back and forth until it reaches zero.

StateFun allows any function to message any other, cycles included; rayfun's channels never block on a
cycle. Each game runs across shards; the last hit is reported on an egress, and each side counts its hits.
"""

from __future__ import annotations

import rayfun
from rayfun import IntType, StatefulFunctions, StringType, ValueSpec, egress_message_builder, message_builder

functions = StatefulFunctions()


def play(context, message, other: str) -> None:
    remaining = message.as_int()
    context.storage.hits = (context.storage.hits or 0) + 1
    if remaining > 0:
        context.send(message_builder(other, context.address.id, int_value=remaining - 1))
    else:
        winner = f"game {context.address.id}: last hit by {context.address.typename}"
        context.send_egress(egress_message_builder("example/results", winner, StringType))


@functions.bind("example/ping", specs=[ValueSpec("hits", IntType)])
def ping(context, message):
    play(context, message, "example/pong")


@functions.bind("example/pong", specs=[ValueSpec("hits", IntType)])
def pong(context, message):
    play(context, message, "example/ping")


def main() -> None:
    app = rayfun.start(functions, shards=2, ray_init={"num_cpus": 2})
    try:
        app.send_many([("example/ping", f"g{i}", 10 + i) for i in range(5)])
        for result in sorted(app.egress("results")):
            print(result)
        print("game g3 hits:", app.state("example/ping", "g3"), app.state("example/pong", "g3"))
    finally:
        app.stop()


if __name__ == "__main__":
    main()
