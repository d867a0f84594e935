"""RemoteFunctionClient against a misbehaving server: retries, budgets, and invalid answers."""

from __future__ import annotations

import asyncio
import time

import pytest

from rayfun.remote import HttpEndpoint, RemoteFunctionClient, RemoteFunctionError
from rayfun.remote.client import InvocationResult
from tests.remote.bad_server import HITS, INT, STRING, make_bad_app, running_app
from tests.remote.conftest import free_port, run

pytestmark = pytest.mark.timeout(60)

STATES = [("seen", INT, None)]
CALL = [(None, STRING, "bob")]


async def call(mode: str, query: str = "", **endpoint_kw):
    """Invoke ``example/greeter`` on the bad server's ``mode``; returns (result or error, hits, client)."""
    app = make_bad_app()
    async with running_app(app) as base:
        endpoint_kw.setdefault("call_timeout", 3)
        client = RemoteFunctionClient(HttpEndpoint("example/*", f"{base}/{mode}{query}", **endpoint_kw))
        try:
            try:
                outcome = await client.invoke("example/greeter", "bob", STATES, CALL)
            except RemoteFunctionError as exc:
                outcome = exc
        finally:
            await client.close()
        return outcome, app[HITS][mode], client


def test_good_answer():
    result, hits, client = run(call("ok"))
    assert isinstance(result, InvocationResult)
    assert result.state_mutations == [("seen", INT, 1)] and result.outgoing[0].payload == "done"
    assert hits == 1 and client.stats["requests"] == 1 and client.stats["retries"] == 0


def test_empty_body_is_an_empty_result():
    result, hits, _ = run(call("empty"))
    assert result == InvocationResult() and hits == 1


def test_500s_then_success_is_retried_and_applied_once():
    result, hits, client = run(call("flaky", "?n=3"))
    assert isinstance(result, InvocationResult)
    assert result.state_mutations == [("seen", INT, 1)] and len(result.outgoing) == 1
    assert hits == 4
    assert client.stats == {**client.stats, "requests": 4, "retries": 3, "failures": 0, "calls": 1}


def test_slow_server_times_out_within_the_call_budget():
    start = time.monotonic()
    err, hits, client = run(call("slow", "?delay=30", call_timeout=1.5, read_timeout=0.5))
    elapsed = time.monotonic() - start
    assert isinstance(err, RemoteFunctionError) and err.retryable
    assert "timed out" in str(err) and err.attempts >= 2 and hits == err.attempts
    assert 1.4 < elapsed < 5


def test_always_500_names_function_endpoint_attempts_and_error():
    err, hits, client = run(call("always500", call_timeout=1))
    assert isinstance(err, RemoteFunctionError)
    text = str(err)
    assert "\n" not in text
    assert "example/greeter" in text and "'bob'" in text and "/always500" in text
    assert f"{err.attempts} attempts" in text and "HTTP 500" in text and "the function is broken" in text
    assert err.attempts == hits > 3
    assert client.stats["failures"] == 1


def test_max_retries_bounds_attempts():
    err, hits, client = run(call("always500", max_retries=2))
    assert isinstance(err, RemoteFunctionError) and err.attempts == 3 == hits
    err, hits, _ = run(call("notfound", max_retries=0))
    assert err.attempts == 1 and "HTTP 404" in str(err)


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("truncated", "payload"),
        ("halfbody", "undecodable answer"),
        ("garbage", "undecodable answer"),
        ("wrongtype", "wrong content type 'text/plain"),
    ],
)
def test_bad_bodies_are_retried_then_fail(mode, expected):
    err, hits, _ = run(call(mode, max_retries=2))
    assert isinstance(err, RemoteFunctionError), err
    assert err.attempts == 3 == hits
    assert expected in str(err).lower() or expected in str(err)


def test_garbage_then_good_answer_returns_only_the_good_one():
    result, hits, client = run(call("garbage_then_ok", "?n=2"))
    assert isinstance(result, InvocationResult) and result.state_mutations == [("seen", INT, 1)]
    assert hits == 3 and client.stats["retries"] == 2


@pytest.mark.parametrize(
    "mode,expected",
    [
        (
            "badmodify",
            "state 'seen' is registered as io.statefun.types/int but the function wrote a value of type "
            "io.statefun.types/long",
        ),
        ("unknownstate", "mutation of state 'nope', which is not registered"),
    ],
)
def test_invalid_answers_fail_at_once(mode, expected):
    err, hits, client = run(call(mode))
    assert isinstance(err, RemoteFunctionError) and not err.retryable
    assert hits == 1 and err.attempts == 1
    assert expected in str(err) and "example/greeter" in str(err)
    assert client.stats["protocol_errors"] == 1


def test_connection_refused_is_retried_until_the_budget():
    async def scenario():
        port = free_port()  # nothing listens there
        client = RemoteFunctionClient(HttpEndpoint("example/*", f"http://127.0.0.1:{port}/statefun", call_timeout=0.5))
        try:
            with pytest.raises(RemoteFunctionError) as info:
                await client.invoke("example/greeter", "bob", STATES, CALL)
        finally:
            await client.close()
        return info.value

    err = run(scenario())
    assert err.attempts > 3 and "connect" in str(err).lower()


def test_concurrency_limit_queues_calls():
    async def scenario():
        app = make_bad_app()
        async with running_app(app) as base:
            client = RemoteFunctionClient(
                HttpEndpoint("example/*", f"{base}/slow?delay=0.3", call_timeout=5, max_concurrent_requests=2)
            )
            try:
                calls = [
                    asyncio.ensure_future(client.invoke("example/greeter", str(i), STATES, CALL)) for i in range(4)
                ]
                for _ in range(200):  # until the first two reach the server
                    if app[HITS]["slow"] == 2:
                        break
                    await asyncio.sleep(0.01)
                assert client.in_flight == 2 and client.saturated and app[HITS]["slow"] == 2
                start = time.monotonic()
                results = await asyncio.gather(*calls)
                assert all(isinstance(r, InvocationResult) for r in results)
                assert app[HITS]["slow"] == 4
                assert time.monotonic() - start > 0.3  # the last two waited for a slot
                assert client.in_flight == 0 and not client.saturated
            finally:
                await client.close()

    run(scenario())


def test_error_survives_pickling():
    import pickle

    err = RemoteFunctionError("example/greeter", "bob", "http://x/statefun", 3, "HTTP 500", elapsed=1.0)
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.attempts == 3 and back.url == "http://x/statefun"


def test_serve_answers_a_request_that_can_never_succeed_with_400_and_the_client_does_not_retry_it():
    """A malformed request, or one for a function type the server does not have, used to be a 500, which
    callers retry until their budget runs out; a function that raises is still a 500 (worth a retry)."""
    import aiohttp

    from rayfun import StatefulFunctions
    from rayfun.remote import make_app

    functions = StatefulFunctions()

    @functions.bind("example/broken")
    def broken(context, message):
        raise RuntimeError("boom")

    async def scenario():
        async with running_app(make_app(functions)) as base:
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{base}/statefun", data=b"\xff\xff not protobuf") as resp:
                    garbage = resp.status, await resp.text()
            client = RemoteFunctionClient(HttpEndpoint("example/*", f"{base}/statefun", call_timeout=5))
            try:
                try:
                    await client.invoke("example/unknown", "bob", [], CALL)
                except RemoteFunctionError as exc:
                    unknown = exc
                try:
                    await client.invoke("example/broken", "bob", [], CALL)
                except RemoteFunctionError as exc:
                    raised = exc
            finally:
                await client.close()
            return garbage, unknown, raised, client.stats

    garbage, unknown, raised, stats = run(scenario())
    assert garbage[0] == 400 and "not a StateFun ToFunction message" in garbage[1]
    assert "HTTP 400" in str(unknown) and "unknown function type 'example/unknown'" in str(unknown)
    assert unknown.attempts == 1, "a 400 is not retried"
    assert "HTTP 500" in str(raised) and "boom" in str(raised) and raised.attempts > 1
