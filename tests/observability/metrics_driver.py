"""The driver of the metrics-export test: ``python -m tests.observability.metrics_driver WORK PORT`` with
``RAY_ADDRESS`` set. It serves a remote function on loopback PORT (aiohttp, in a thread), starts an
application with an embedded counter that sends to that remote function and to an egress (one message in
seven also to a type nobody bound: a dead letter), checkpoints every 0.5 s, feeds it MESSAGES messages,
waits until idle, prints the tidy ``app.metrics()`` table as one JSON line and ``READY``, and keeps the
application running (so Ray's endpoint can be scraped) until its stdin closes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading

import ray
from aiohttp import web

import rayfun
from rayfun import HttpEndpoint, IntType, StatefulFunctions, ValueSpec, egress_message_builder, message_builder
from rayfun.connectors.memory import MemorySource
from rayfun.remote import make_app

MESSAGES = 3000
IDS = 50
COUNTER, REMOTE, OUT = "obs/counter", "obs/remote", "obs/out"


def embedded() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind(COUNTER, specs=[ValueSpec("n", IntType)])
    def counter(context, message):
        value = message.as_int()
        context.storage.n = (context.storage.n or 0) + value
        target = "obs/typo" if value == 7 else REMOTE  # "obs/typo": bound nowhere, a dead letter
        context.send(message_builder(target_typename=target, target_id=context.address.id, int_value=value))
        context.send_egress(egress_message_builder(target_typename=OUT, value=value, value_type=IntType))

    return functions


def remote() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind(REMOTE, specs=[ValueSpec("n", IntType)])
    def remote_counter(context, message):
        context.storage.n = (context.storage.n or 0) + message.as_int()

    return functions


def serve(port: int) -> threading.Event:
    """Serve the remote function on 127.0.0.1:``port`` in a daemon thread; returns once it listens."""
    ready = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        runner = web.AppRunner(make_app(remote()))
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    if not ready.wait(30):
        raise RuntimeError("the remote function's server did not start")
    return ready


def main(work: str, port: int) -> None:
    serve(port)
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    source = MemorySource(
        lambda p, k: ((COUNTER, str(i % IDS), i % 8) for i in range(p, MESSAGES, k)), partitions=2, id="obs/in"
    )
    app = rayfun.start(
        embedded(),
        shards=2,
        ingresses=[source],
        endpoints=[HttpEndpoint(REMOTE, f"http://127.0.0.1:{port}/statefun")],
        checkpoint_dir=os.path.join(work, "cp"),
        checkpoint_interval=0.5,
        name="observed",
    )
    try:
        app.wait(timeout=240)
        app.checkpoint()
        print(json.dumps(app.metrics()), flush=True)
        print("READY", flush=True)
        sys.stdin.read()  # until the test is done scraping
    finally:
        app.stop()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
