"""RemoteFunctionClient against real function servers: the official SDK's and rayfun's own ``serve``.

Each scenario runs twice (``function_server`` is parametrized), which shows both that rayfun speaks the
protocol the SDK speaks and that one function codebase deploys either way.
"""

from __future__ import annotations

import json

import pytest

from rayfun.messages import KAFKA_PRODUCER_RECORD
from rayfun.remote import HttpEndpoint, RemoteFunctionClient, RemoteFunctionError
from rayfun.remote.client import InvocationResult, MissingStates
from rayfun.remote.protocol import KafkaProducerRecord
from tests.remote.conftest import BOOL, INT, LONG, STRING, run

pytestmark = pytest.mark.timeout(120)

COMMAND, PROFILE = "example/Command", "example/Profile"
MULTI_SPECS = [
    ("note", STRING, "after_write", 5000),
    ("touched", LONG, "after_call", 60000),
    ("profile", PROFILE, None, 0),
    ("flag", BOOL, None, 0),
]


def cmd(**fields) -> tuple[None, str, bytes]:
    return (None, COMMAND, json.dumps(fields).encode())


def endpoint(base: str, **kw) -> HttpEndpoint:
    kw.setdefault("call_timeout", 10)
    return HttpEndpoint("example/*", base + "/statefun/{function.name}", **kw)


class Instance:
    """A tiny stand-in for the runtime's per-address state: registered specs plus current payloads."""

    def __init__(self, client: RemoteFunctionClient, typename: str, id: str):
        self.client, self.typename, self.id = client, typename, id
        self.types: dict[str, str] = {}
        self.values: dict[str, object] = {}
        self.handshakes = 0

    async def call(self, *invocations) -> InvocationResult:
        while True:
            states = [(name, t, self.values.get(name)) for name, t in self.types.items()]
            result = await self.client.invoke(self.typename, self.id, states, list(invocations))
            if isinstance(result, MissingStates):
                self.handshakes += 1
                assert self.handshakes < 3, "the function keeps asking for states it was given"
                for name, t, _mode, _ttl in result.specs:
                    self.types[name] = t
                continue
            for name, t, payload in result.state_mutations:
                if t is None:
                    self.values.pop(name, None)
                else:
                    assert t == self.types[name]
                    self.values[name] = payload
            return result


def test_greeter_handshake_then_state_and_replies(function_server):
    async def scenario():
        client = RemoteFunctionClient(endpoint(function_server))
        try:
            first = await client.invoke("example/greeter", "bob", [], [(None, STRING, "bob")])
            assert isinstance(first, MissingStates)
            assert first.specs == [("seen", INT, None, 0)]

            result = await client.invoke("example/greeter", "bob", [("seen", INT, None)], [(None, STRING, "bob")])
            assert isinstance(result, InvocationResult)
            assert result.state_mutations == [("seen", INT, 1)]
            [reply] = result.outgoing
            assert (reply.target_typename, reply.target_id, reply.value_typename()) == ("example/reply", "bob", STRING)
            assert reply.payload == "Hello bob! seen 1 from ingress"
            assert result.delayed == [] and result.egress == []

            # a batch of two, one from another function: run in order on one state view
            result = await client.invoke(
                "example/greeter",
                "bob",
                [("seen", INT, 1)],
                [(None, STRING, "bob"), (("example/person", "ann"), STRING, "bob")],
            )
            assert result.state_mutations == [("seen", INT, 3)]
            assert [m.payload for m in result.outgoing] == [
                "Hello bob! seen 2 from ingress",
                "Hello bob! seen 3 from example/person/ann",
            ]
            assert client.stats["missing_states"] == 1 and client.stats["retries"] == 0
            assert client.stats["invocations"] == 3
        finally:
            await client.close()

    run(scenario())


def test_multi_state_specs_delays_cancellation_egress(function_server):
    async def scenario():
        client = RemoteFunctionClient(endpoint(function_server))
        try:
            inst = Instance(client, "example/multi", "m1")
            first = await client.invoke("example/multi", "m1", [], [cmd(op="read")])
            assert isinstance(first, MissingStates) and first.specs == MULTI_SPECS

            # empty state reads as None everywhere; nothing written, so no mutations
            result = await inst.call(cmd(op="read"))
            assert result.state_mutations == []
            assert json.loads(result.outgoing[0].payload) == {
                "note": None,
                "touched": None,
                "profile": None,
                "flag": None,
            }

            result = await inst.call(cmd(op="write", note="n1"))
            assert result.state_mutations == [
                ("note", STRING, "n1"),
                ("touched", LONG, 1),
                ("profile", PROFILE, json.dumps({"name": "m1", "n": 1}).encode()),
                ("flag", BOOL, True),
            ]

            # two writes and a read in one batch see each other's effects; only changed cells come back
            result = await inst.call(cmd(op="write", note="n2"), cmd(op="write", note="n3"), cmd(op="read"))
            assert {m[0]: m[2] for m in result.state_mutations}["touched"] == 3
            assert json.loads(result.outgoing[0].payload) == {
                "note": "n3",
                "touched": 3,
                "profile": {"name": "m1", "n": 3},
                "flag": True,
            }

            result = await inst.call(cmd(op="delete"))
            assert result.state_mutations == [("note", None, None), ("profile", None, None)]
            assert set(inst.values) == {"touched", "flag"}

            result = await inst.call(cmd(op="delay", token="tok-1"), cmd(op="cancel", token="tok-1"))
            late, no_token, cancel = result.delayed
            assert late[0] == 1500 and late[2] == "tok-1"
            assert (late[1].target_typename, late[1].target_id, late[1].payload) == ("example/greeter", "later", "late")
            assert no_token[0] == 2000 and no_token[2] == "" and no_token[1].payload == "no-token"
            assert cancel == (None, None, "tok-1")
            assert result.state_mutations == [] and result.outgoing == []

            result = await inst.call(cmd(op="egress"))
            kafka, playground = result.egress
            assert (kafka.typename, kafka.value_typename()) == ("example/out", KAFKA_PRODUCER_RECORD)
            record = KafkaProducerRecord.FromString(kafka.payload)
            assert (record.topic, record.key, record.value_bytes) == ("greetings", "k1", b"hello kafka")
            assert playground.typename == "io.statefun.playground/egress"
            assert playground.value_typename() == "io.statefun.playground/EgressRecord"
            assert json.loads(playground.payload) == {"topic": "greetings", "payload": "hi"}
        finally:
            await client.close()

    run(scenario())


def test_counter_long_state(function_server):
    async def scenario():
        client = RemoteFunctionClient(endpoint(function_server))
        try:
            inst = Instance(client, "example/counter", "c1")
            await inst.call(*[(None, INT, 1)] * 5)
            assert inst.values == {"count": 5}
            await inst.call((None, INT, 10), (None, STRING, "any"))
            assert inst.values == {"count": 16}
            assert inst.types == {"count": LONG}
        finally:
            await client.close()

    run(scenario())


def test_user_exception_fails_the_call_with_a_clear_error(function_server):
    async def scenario():
        client = RemoteFunctionClient(endpoint(function_server, call_timeout=5, max_retries=2))
        try:
            states = [(name, t, None) for name, t, _, _ in MULTI_SPECS]
            with pytest.raises(RemoteFunctionError) as info:
                await client.invoke("example/multi", "m9", states, [cmd(op="fail")])
            err = info.value
            assert err.attempts == 3 and err.retryable
            text = str(err)
            assert "\n" not in text
            assert "example/multi" in text and "'m9'" in text and function_server in text
            assert "HTTP 500" in text and "3 attempts" in text
            assert client.stats["failures"] == 1 and client.stats["retries"] == 2
        finally:
            await client.close()

    run(scenario())


def test_rayfun_server_reports_user_error_text(rayfun_server):
    async def scenario():
        client = RemoteFunctionClient(endpoint(rayfun_server, max_retries=0))
        try:
            states = [(name, t, None) for name, t, _, _ in MULTI_SPECS]
            with pytest.raises(RemoteFunctionError, match="RuntimeError: boom on purpose"):
                await client.invoke("example/multi", "m9", states, [cmd(op="fail")])
        finally:
            await client.close()

    run(scenario())


def test_unknown_function_type_is_refused_by_the_server(function_server, request):
    """The SDK answers 500; rayfun's serve answers 400 (the request can never succeed: not retried)."""
    status = "HTTP 400" if request.node.callspec.params["function_server"] == "rayfun" else "HTTP 500"

    async def scenario():
        client = RemoteFunctionClient(endpoint(function_server, max_retries=0))
        try:
            with pytest.raises(RemoteFunctionError, match=status):
                await client.invoke("example/nobody", "x", [], [(None, STRING, "hi")])
        finally:
            await client.close()

    run(scenario())
