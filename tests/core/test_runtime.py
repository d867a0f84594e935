"""The embedded runtime end to end on a local Ray: every Context call, timers, expiry, cycles, ordering,
unknown types and bad values. One application (3 shards) serves the whole module; tests use distinct ids."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import pytest

import rayfun
from rayfun import (
    IntType,
    StatefulFunctions,
    StringType,
    ValueSpec,
    egress_message_builder,
    make_json_type,
    message_builder,
)
from rayfun.connectors.memory import MemorySource

pytestmark = pytest.mark.timeout(180)

Items = make_json_type("test/Items")


def build_functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("test/greeter", specs=[ValueSpec("seen", IntType)])
    def greeter(context, message):
        seen = (context.storage.seen or 0) + 1
        context.storage.seen = seen
        caller = context.caller
        text = (
            f"{context.address.typename}/{context.address.id} #{seen} {message.as_string()} "
            f"from {caller.typename + '/' + caller.id if caller else 'ingress'}"
        )
        context.send_egress(egress_message_builder("test/greetings", text, StringType))

    @functions.bind("test/relay")
    def relay(context, message):  # forwards to the greeter, so the greeter sees a caller
        context.send(message_builder("test/greeter", message.as_string(), str_value="relayed"))

    @functions.bind("test/ping", specs=[ValueSpec("hops", IntType)])
    def ping(context, message):
        n = message.as_int()
        context.storage.hops = (context.storage.hops or 0) + 1
        if n > 0:
            context.send(message_builder("test/pong", context.address.id, int_value=n - 1))
        else:
            context.send_egress(egress_message_builder("test/done", context.address.id, StringType))

    @functions.bind("test/pong", specs=[ValueSpec("hops", IntType)])
    def pong(context, message):
        context.storage.hops = (context.storage.hops or 0) + 1
        context.send(message_builder("test/ping", context.address.id, int_value=message.as_int() - 1))

    @functions.bind("test/log", specs=[ValueSpec("items", Items)])
    def log(context, message):  # appends every value: order per address must be arrival order
        items = context.storage.items or []
        items.append(message.as_int())
        context.storage.items = items

    @functions.bind("test/alog", specs=[ValueSpec("items", Items)])
    async def alog(context, message):  # async: one invocation at a time per address, in order
        items = context.storage.items or []
        await asyncio.sleep(0.001 * (message.as_int() % 3))
        items.append(message.as_int())
        context.storage.items = items

    @functions.bind("test/storage", specs=[ValueSpec("a", IntType), ValueSpec("b", StringType)])
    def storage(context, message):
        command = message.as_string()
        if command == "set":
            context.storage.a, context.storage.b = 1, "x"
        elif command == "del-a":
            del context.storage.a
        elif command == "del-all":
            del context.storage.a
            del context.storage.b
        elif command == "bad-type":
            context.storage.a = "not an int"
        elif command == "undeclared":
            context.storage.nope = 1
        elif command == "none":
            context.storage.a = None
        elif command == "raise-after-write":
            context.storage.a = 99
            context.send_egress(egress_message_builder("test/never", "x", StringType))
            raise RuntimeError("boom")

    @functions.bind("test/timer", specs=[ValueSpec("fired", Items)])
    def timer(context, message):
        command = message.as_string()
        me = context.address.id
        if command == "schedule":
            context.send_after(timedelta(milliseconds=300), message_builder("test/timer", me, str_value="a"))
            context.send_after(timedelta(milliseconds=100), message_builder("test/timer", me, str_value="b"))
            context.send_after(
                timedelta(milliseconds=200), message_builder("test/timer", me, str_value="c"), cancellation_token="tok"
            )
            context.cancel_delayed_message("tok")
            context.cancel_delayed_message("never-existed")  # a no-op
        elif command == "reuse-token":
            context.send_after(
                timedelta(seconds=30), message_builder("test/timer", me, str_value="z"), cancellation_token="dup"
            )
        elif command == "cancel-dup":
            context.cancel_delayed_message("dup")
        else:
            fired = context.storage.fired or []
            fired.append([command, context.caller.id if context.caller else None])
            context.storage.fired = fired

    @functions.bind(
        "test/ttl",
        specs=[
            ValueSpec("w", IntType, expire_after_write=timedelta(milliseconds=300)),
            ValueSpec("c", IntType, expire_after_call=timedelta(milliseconds=300)),
        ],
    )
    def ttl(context, message):
        command = message.as_string()
        if command == "set":
            context.storage.w, context.storage.c = 1, 2
        elif command == "touch":
            pass  # an invocation: refreshes expire_after_call state only
        elif command == "report":
            context.send_egress(
                egress_message_builder(
                    "test/ttl-report", json.dumps([context.storage.w, context.storage.c]), StringType
                )
            )

    @functions.bind("test/sender")
    def sender(context, message):
        context.send(message_builder("test/missing", "x", int_value=1))

    return functions


@pytest.fixture(scope="module", params=["no-checkpoints", "checkpoints"])
def app(ray_session, request, tmp_path_factory):
    """The same behaviour must hold with and without exactly-once checkpoints (every 0.2 s here)."""
    source = MemorySource([("test/greeter", f"src{i}", "hi") for i in range(20)], partitions=2, id="test/names")
    hostile = MemorySource(HOSTILE_RECORDS, id="test/hostile")
    options = {}
    if request.param == "checkpoints":
        options = {"checkpoint_dir": str(tmp_path_factory.mktemp("checkpoints")), "checkpoint_interval": 0.2}
    app = rayfun.start(build_functions(), shards=3, ingresses=[source, hostile], **options)
    yield app
    app.stop()


#: int records, the source's fast path, whose typename or id is wrong: the ids are checked where they are
#: routed (once per id), so each must still become a dead letter, and the good ones around them arrive
HOSTILE_RECORDS = [
    ("test/log", "h1", 1),
    ("test/log", "", 2),
    ("test/log", 5, 3),
    ("test/log", ["h1"], 4),
    ("test/log", "h" * 70_000, 5),
    (["test/log"], "h1", 6),
    ("nonamespace", "h1", 7),
    ("test/log", "h1\ud800", 8),
    ("test/nope", "h1\ud800", 10),  # an unknown type and an id that is not text: the dead letter holds both
    ("test/log", "h1", 9),
]


def dead_letters(app, match: str) -> list[dict]:
    return [d for d in app.egress("rayfun/dead-letters") if match in d["reason"]]


def test_ingress_records_reach_functions(app):
    greetings = app.egress("test/greetings")
    assert sorted(g for g in greetings if g.startswith("test/greeter/src")) == sorted(
        f"test/greeter/src{i} #1 hi from ingress" for i in range(20)
    )


def test_hostile_records_from_a_source_are_dead_letters_and_the_good_ones_around_them_arrive(app):
    app.wait()
    assert app.state("test/log", "h1") == {"items": [1, 9]}
    letters = [d for d in app.egress("rayfun/dead-letters") if d.get("source") == "test/hostile"]
    reasons = sorted(d["reason"] for d in letters)
    assert len(letters) == len(HOSTILE_RECORDS) - 2, reasons
    assert sum("must be a non-empty str" in r for r in reasons) == 3, reasons
    assert sum("more than 65536" in r and len(r) < 400 for r in reasons) == 1, reasons
    assert sum("not valid Unicode text" in r for r in reasons) == 1, reasons
    assert sum(r.startswith("unknown function type") for r in reasons) == 3, reasons
    assert [d["id"] for d in letters if d.get("function") == "test/nope"] == ["h1\ud800"]


def test_context_address_caller_and_egress_by_short_name(app):
    # one at a time: a message the driver sends bob and one the relay sends him come down different
    # channels, and nothing orders two channels (a faster machine ran the relay's first)
    app.send("test/greeter", "bob", "hi")
    assert [g for g in app.egress("greetings") if g.startswith("test/greeter/bob")] == [
        "test/greeter/bob #1 hi from ingress"
    ]
    app.send("test/relay", "r1", "bob")
    greetings = [g for g in app.egress("greetings") if g.startswith("test/greeter/bob")]
    assert greetings == ["test/greeter/bob #1 hi from ingress", "test/greeter/bob #2 relayed from test/relay/r1"]
    assert app.state("test/greeter", "bob") == {"seen": 2}
    assert app.state("test/greeter", "nobody") == {}


def test_cyclic_messaging_across_shards(app):
    app.send_many([("test/ping", f"p{i}", 51) for i in range(30)])
    done = [d for d in app.egress("test/done") if d.startswith("p")]
    assert sorted(done) == sorted(f"p{i}" for i in range(30))
    for i in range(30):  # ping sees 51, 49, ..., 1, -1 (27); pong sees 50, ..., 0 (26)
        assert app.state("test/ping", f"p{i}")["hops"] == 27
        assert app.state("test/pong", f"p{i}")["hops"] == 26
    assert sum(m["sent"][j] for m in app._statuses() for j in range(3)) > 0  # it did cross shards


def test_order_per_address_sync_and_async(app):
    for chunk in range(5):
        app.send_many([("test/log", "ordered", chunk * 100 + i) for i in range(100)])
        app.send_many([("test/alog", "ordered", chunk * 100 + i) for i in range(100)])
    app.send_many([("test/alog", f"other{i}", i) for i in range(20)])
    assert app.state("test/log", "ordered")["items"] == list(range(500))
    assert app.state("test/alog", "ordered")["items"] == list(range(500))
    assert app.state("test/alog", "other7")["items"] == [7]


def test_storage_read_write_delete(app):
    app.send("test/storage", "s1", "set")
    assert app.state("test/storage", "s1") == {"a": 1, "b": "x"}
    app.send("test/storage", "s1", "del-a")
    assert app.state("test/storage", "s1") == {"b": "x"}
    app.send("test/storage", "s1", "del-all")
    assert app.state("test/storage", "s1") == {}


@pytest.mark.parametrize(
    "command, reason",
    [
        ("bad-type", "state 'a' of test/storage: io.statefun.types/int expects int"),
        ("undeclared", "test/storage has no state named 'nope': declare it, e.g. ValueSpec('nope', IntType)"),
        ("none", "use del"),
        ("raise-after-write", "RuntimeError: boom"),
    ],
)
def test_failing_invocations_are_dead_lettered_and_change_nothing(app, command, reason):
    id = f"bad-{command}"
    app.send("test/storage", id, "set")
    app.send("test/storage", id, command)
    assert app.state("test/storage", id) == {"a": 1, "b": "x"}
    letters = [d for d in dead_letters(app, reason) if d["id"] == id]
    assert len(letters) == 1
    assert letters[0]["function"] == "test/storage" and letters[0]["message"] == command
    with pytest.raises(rayfun.UnknownEgress):  # the failed invocation's record was never emitted
        app.egress("test/never")


def test_unknown_function_type(app):
    with pytest.raises(ValueError, match="unknown function type 'test/missing'"):
        app.send("test/missing", "x", 1)
    app.send("test/sender", "s", "go")
    letters = dead_letters(app, "unknown function type 'test/missing'")
    assert [d["function"] for d in letters] == ["test/sender"]


def test_delayed_messages_fire_in_time_order_and_cancel(app):
    app.send("test/timer", "t1", "schedule")
    app.wait(timeout=30)  # waits for the pending delayed messages too
    assert app.state("test/timer", "t1") == {"fired": [["b", "t1"], ["a", "t1"]]}


def test_reusing_a_pending_cancellation_token_fails_the_invocation(app):
    app.send("test/timer", "t2", "reuse-token")
    app.send("test/timer", "t2", "reuse-token")
    letters = [d for d in dead_letters(app, "still pending") if d["id"] == "t2"]
    assert len(letters) == 1
    app.send("test/timer", "t2", "cancel-dup")
    app.wait(timeout=10)  # the one pending timer was cancelled, so nothing is left to wait for
    assert app.state("test/timer", "t2") == {}


def test_state_expiry_after_write_and_after_call(app):
    app.send("test/ttl", "e1", "set")
    assert app.state("test/ttl", "e1") == {"w": 1, "c": 2}
    for _ in range(4):  # keep touching: expire_after_call state stays, expire_after_write state expires
        time.sleep(0.12)
        app.send("test/ttl", "e1", "touch")
        app.wait()
    assert app.state("test/ttl", "e1") == {"c": 2}
    time.sleep(0.45)
    app.send("test/ttl", "e1", "report")
    assert json.loads(app.egress("test/ttl-report")[-1]) == [None, None]
    assert app.state("test/ttl", "e1") == {}
