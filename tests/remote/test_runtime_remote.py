"""Remote functions written with the official StateFun SDK, running inside a rayfun application on Ray:
handshake, state, messages both ways (cycles with embedded functions), delayed messages and cancellation,
expiry, egress, failures (dead-letter mode), and exactly-once state across a shard kill."""

from __future__ import annotations

import time

import pytest
import ray

import rayfun
from rayfun import HttpEndpoint, IntType, StatefulFunctions, StringType, ValueSpec, message_builder
from tests.remote.conftest import HERE, _start_server, free_port

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def sdk_app(sdk_python: str):
    yield from _start_server([sdk_python, str(HERE / "sdk_app.py")], free_port(), "SDK app server")


def local_functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("local/echo", specs=[ValueSpec("last", StringType)])
    def echo(context, message):
        context.storage.last = f"{message.as_string()} via {context.caller.typename}"

    @functions.bind("local/pong", specs=[ValueSpec("hits", IntType)])
    def pong(context, message):
        context.storage.hits = (context.storage.hits or 0) + 1
        n = message.as_int()
        if n > 0:
            context.send(message_builder("remote/ping", context.address.id, int_value=n - 1))

    return functions


@pytest.fixture(scope="module")
def app(ray_session, sdk_app, tmp_path_factory):
    endpoints = [
        HttpEndpoint("remote/*", f"{sdk_app}/statefun"),
        HttpEndpoint("broken/*", f"{sdk_app}/statefun", on_failure="dead-letter", max_retries=2, call_timeout=10),
    ]
    app = rayfun.start(
        local_functions(),
        shards=2,
        endpoints=endpoints,
        checkpoint_dir=str(tmp_path_factory.mktemp("cp")),
        checkpoint_interval=0.5,
    )
    yield app
    app.stop()


def test_sdk_function_state_messages_and_egress(app):
    app.send("remote/greeter", "ann", "hi")
    app.send("remote/greeter", "ann", "again")
    assert app.state("remote/greeter", "ann") == {"seen": 2}
    assert sorted(app.egress("remote/greetings")) == [
        "Hello ann #1: hi (from ingress)",
        "Hello ann #2: again (from ingress)",
    ]
    assert app.state("local/echo", "ann") == {"last": "Hello ann #2: again (from ingress) via remote/greeter"}


def test_cyclic_messaging_between_remote_and_embedded(app):
    app.send_many([("remote/ping", f"g{i}", 9) for i in range(20)])
    for i in range(20):  # ping sees 9, 7, 5, 3, 1; pong sees 8, 6, 4, 2, 0
        assert app.state("remote/ping", f"g{i}") == {"hits": 5}
        assert app.state("local/pong", f"g{i}") == {"hits": 5}


def test_delayed_messages_cancellation_and_expiry_of_remote_state(app):
    app.send("remote/timer", "t", "schedule")
    app.wait(timeout=30)
    state = app.state("remote/timer", "t")
    assert state.get("fired") == "kept;"
    time.sleep(0.5)
    app.send("remote/timer", "t", "tick")  # the note (expire_after_write 400 ms) is gone by now
    assert app.state("remote/timer", "t") == {"fired": "kept;tick;"}


def test_a_failing_remote_function_is_dead_lettered_and_the_job_goes_on(app):
    app.send("broken/always", "b1", 1)
    letters = [d for d in app.egress("rayfun/dead-letters") if d.get("function") == "broken/always"]
    assert len(letters) == 1
    assert "broken/always" in letters[0]["reason"] and "/statefun" in letters[0]["reason"]
    assert letters[0]["endpoint"].endswith("/statefun")
    app.send("remote/greeter", "after-failure", "still running")
    assert app.state("remote/greeter", "after-failure") == {"seen": 1}


def test_remote_state_survives_a_shard_kill_exactly_once(app):
    app.send_many([("remote/counter", f"c{i}", 1) for i in range(50)])
    app.wait()
    app.checkpoint()
    app.send_many([("remote/counter", f"c{i}", 10) for i in range(50)])
    shards = ray.get(app._coordinator.shard_handles.remote())
    before = app.info()["recoveries"]
    ray.kill(shards[0], no_restart=True)
    deadline = time.monotonic() + 60
    while app.info()["recoveries"] == before and time.monotonic() < deadline:
        time.sleep(0.1)
    for i in range(50):
        assert app.state("remote/counter", f"c{i}") == {"count": 11}
