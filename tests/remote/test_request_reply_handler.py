"""``rayfun.RequestReplyHandler``, the SDK's serving surface: the same answers as the SDK's handler, and rayfun
functions served from aiohttp (``handle_async``), the standard library's WSGI server and Flask
(``handle_sync``), each driven as a remote endpoint by a real rayfun application."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

import rayfun
from rayfun import HttpEndpoint, RequestReplyHandler, StatefulFunctions, StringType, ValueSpec
from rayfun.remote.protocol import encode_request
from tests.remote import rayfun_functions
from tests.remote.conftest import HERE, STRING, _start_server, free_port
from tests.remote.test_remote_protocol import sdk_job

pytestmark = pytest.mark.timeout(240)

KINDS = ["aiohttp", "wsgiref", "flask"]


def test_handler_answers_as_the_sdk_handler_sync_and_async(sdk_python):
    requests = [
        encode_request("example/greeter", "bob", [("seen", "io.statefun.types/int", None)], [(None, STRING, "hi")]),
        encode_request("example/greeter", "bob", [], [(None, STRING, "hi")]),  # the handshake
    ]
    sdk_answers = sdk_job(sdk_python, {"handle": [r.hex() for r in requests]})["handle"]
    handler = RequestReplyHandler(rayfun_functions.functions)
    for request, sdk_hex in zip(requests, sdk_answers):
        assert handler.handle_sync(request).hex() == sdk_hex
        assert handler.handle_sync(bytearray(request)).hex() == sdk_hex
        assert asyncio.run(handler.handle_async(request)).hex() == sdk_hex


def test_handler_errors_like_the_sdk():
    with pytest.raises(ValueError, match="at least one bound function"):
        RequestReplyHandler(StatefulFunctions())
    handler = rayfun.make_handler(rayfun_functions.functions)
    assert isinstance(handler, RequestReplyHandler)
    with pytest.raises(ValueError, match="nowhere/nothing"):  # the SDK raises ValueError too
        handler.handle_sync(encode_request("nowhere/nothing", "x", [], [(None, STRING, "hi")]))
    with pytest.raises(ValueError, match="not a StateFun ToFunction"):
        handler.handle_sync(b"\xff\xff\xff")
    with pytest.raises(TypeError, match="must be bytes, got str"):
        handler.handle_sync("text")

    async def inside_a_loop():
        with pytest.raises(RuntimeError, match="use await handle_async"):
            handler.handle_sync(encode_request("example/greeter", "b", [], [(None, STRING, "hi")]))

    asyncio.run(inside_a_loop())


@pytest.fixture(scope="module")
def servers():
    """Base URL per server kind, each in its own process."""
    pytest.importorskip("flask")
    gens = {
        kind: _start_server([sys.executable, str(HERE / "handler_servers.py"), kind], free_port(), f"{kind} server")
        for kind in KINDS
    }
    try:
        yield {kind: next(gen) for kind, gen in gens.items()}
    finally:
        for gen in gens.values():
            gen.close()


@pytest.fixture(scope="module")
def app(ray_session, servers, tmp_path_factory):
    local = StatefulFunctions()

    @local.bind("local/sink", specs=[ValueSpec("last", StringType)])
    def sink(context, message):
        context.storage.last = f"{message.as_string()} via {context.caller.typename}"

    endpoints = [  # the first endpoint that matches serves a type: the dead-letter ones first
        HttpEndpoint(f"{kind}/fails", f"{url}/statefun", on_failure="dead-letter", max_retries=1, call_timeout=10)
        for kind, url in servers.items()
    ]
    endpoints += [HttpEndpoint(f"{kind}/*", f"{url}/statefun") for kind, url in servers.items()]
    app = rayfun.start(
        local, shards=2, endpoints=endpoints, checkpoint_dir=str(tmp_path_factory.mktemp("cp")), checkpoint_interval=0.5
    )
    yield app
    app.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_served_functions_run_as_remote_endpoints(app, kind):
    app.send(f"{kind}/counter", "ann", 314159000000.0)
    app.send(f"{kind}/counter", "ann", 1.0)
    app.wait(timeout=60)
    assert app.state(f"{kind}/counter", "ann") == {"seen": 2, "total": 314159005696.0}  # float32: + 1.0 is lost
    assert sorted(json.loads(r) for r in app.egress(f"{kind}/out")) == [
        [kind, "ann", 1, "ingress"],
        [kind, "ann", 2, "ingress"],
    ]
    assert app.state("local/sink", "ann")["last"].startswith(kind + " #")


@pytest.mark.parametrize("kind", KINDS)
def test_user_errors_become_500s_the_runtime_retries(app, kind):
    app.send(f"{kind}/fails", "x", "boom")
    app.wait(timeout=60)
    letters = [d for d in app.egress("rayfun/dead-letters") if d.get("function") == f"{kind}/fails"]
    assert len(letters) == 1, letters
