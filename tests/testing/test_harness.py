"""rayfun.testing.Harness: functions run in-process on a virtual clock, with the runtime's own semantics."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from rayfun import (
    HttpEndpoint,
    IntType,
    RayfunError,
    StatefulFunctions,
    StringType,
    ValueSpec,
    egress_message_builder,
    make_json_type,
    message_builder,
)
from rayfun.testing import DEFAULT_START, FunctionError, Harness

pytestmark = pytest.mark.timeout(60)

Point = make_json_type("test/Point")
START = datetime(2030, 6, 1, 12, 0, tzinfo=timezone.utc)


def counter_functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("t/counter", specs=[ValueSpec("count", IntType), ValueSpec("last", StringType)])
    def counter(context, message):
        context.storage.count = (context.storage.count or 0) + 1
        context.storage.last = message.as_string()
        context.send_egress(
            egress_message_builder("t/counted", f"{context.address.id}:{context.storage.count}", StringType)
        )

    return functions


def test_state_and_egress_after_run_and_nothing_before():
    h = Harness(counter_functions())
    h.send("t/counter", "a", "x")
    h.send("t/counter", "a", "y")
    h.send("t/counter", "b", "z")
    assert h.queued == 3 and h.state("t/counter", "a") == {}  # sends only queue
    assert h.run() == 3 and h.queued == 0
    assert h.state("t/counter", "a") == {"count": 2, "last": "y"}
    assert h.state("t/counter", "b") == {"count": 1, "last": "z"}
    assert h.state("t/counter", "nobody") == {}
    assert h.egress("t/counted") == h.egress("counted") == ["a:1", "a:2", "b:1"]
    assert h.egress("t/never") == [] and h.dead_letters() == []
    assert h.metrics() == {"processed": 3, "egress": 3, "dead_letters": 0, "timers_fired": 0}
    assert h.now == DEFAULT_START


def test_unknown_types_are_refused_as_by_the_app():
    h = Harness(counter_functions())
    with pytest.raises(ValueError, match="unknown function type 't/nope'"):
        h.send("t/nope", "a", 1)
    with pytest.raises(ValueError, match="unknown function type"):
        h.state("t/nope", "a")


def test_messages_between_functions_including_a_cycle():
    functions = StatefulFunctions()

    @functions.bind("t/ping", specs=[ValueSpec("hits", IntType)])
    def ping(context, message):
        context.storage.hits = (context.storage.hits or 0) + 1
        n = message.as_int()
        if n < 6:
            context.send(message_builder("t/pong", context.address.id, int_value=n + 1))
        else:
            context.send_egress(egress_message_builder("t/done", f"{context.address.id} at {n}", StringType))

    @functions.bind("t/pong", specs=[ValueSpec("hits", IntType)])
    def pong(context, message):
        context.storage.hits = (context.storage.hits or 0) + 1
        assert context.caller.typename == "t/ping"
        context.send(message_builder(context.caller.typename, context.caller.id, int_value=message.as_int() + 1))

    h = Harness(functions)
    h.send("t/ping", "g1", 0)
    h.send("t/ping", "g2", 2)
    assert h.run() == 7 + 5
    assert h.egress("t/done") == ["g2 at 6", "g1 at 6"]  # g2 had fewer hops to go
    assert h.state("t/ping", "g1") == {"hits": 4} and h.state("t/pong", "g1") == {"hits": 3}
    callers = [(str(i.address), i.caller and str(i.caller), i.value) for i in h.invocations[:4]]
    assert callers == [
        ("t/ping/g1", None, 0),
        ("t/ping/g2", None, 2),
        ("t/pong/g1", "t/ping/g1", 1),
        ("t/pong/g2", "t/ping/g2", 3),
    ]  # FIFO: what a function sends goes behind what was already queued


def reminder_functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("t/reminder")
    def reminder(context, message):
        if message.is_type(Point):
            context.send_egress(egress_message_builder("t/fired", message.as_type(Point), Point))
            return
        command = message.as_string()
        if command.startswith("remind"):
            minutes = int(command.split()[1])
            context.send_after(
                timedelta(minutes=minutes),
                message_builder("t/reminder", context.address.id, value={"after": minutes}, value_type=Point),
                cancellation_token="r" if "token" in command else "",
            )
        elif command == "cancel":
            context.cancel_delayed_message("r")

    return functions


def test_send_after_fires_only_once_the_clock_reaches_it_in_due_order():
    h = Harness(reminder_functions(), start=START)
    h.send("t/reminder", "a", "remind 30")
    h.send("t/reminder", "a", "remind 10")
    h.send("t/reminder", "b", "remind 0")  # due now: run() delivers it
    h.run()
    assert h.egress("t/fired") == [{"after": 0}] and h.delayed == 2
    assert h.next_due == START + timedelta(minutes=10)
    assert h.advance(minutes=9) == 0 and h.egress("t/fired") == [{"after": 0}]
    assert h.advance(timedelta(minutes=1)) == 1  # exactly at its due time
    fired = [i for i in h.invocations if i.value_typename == Point.typename]
    assert fired[-1].at == START + timedelta(minutes=10) and str(fired[-1].caller) == "t/reminder/a"
    assert h.advance(60 * 60 * 1000) == 1  # milliseconds
    assert h.egress("t/fired") == [{"after": 0}, {"after": 10}, {"after": 30}]
    assert [i.at - START for i in h.invocations if i.value_typename == Point.typename] == [
        timedelta(0),
        timedelta(minutes=10),
        timedelta(minutes=30),
    ]  # each at its own due time, not at the end of the jump
    assert h.now == START + timedelta(minutes=70) and h.delayed == 0 and h.next_due is None
    assert h.metrics()["timers_fired"] == 3


def test_cancellation_and_a_token_in_use_is_refused_as_at_runtime():
    h = Harness(reminder_functions(), start=START)
    h.send("t/reminder", "a", "remind 5 token")
    h.run()
    h.send("t/reminder", "a", "cancel")
    h.advance(minutes=10)
    assert h.egress("t/fired") == [] and h.delayed == 0
    # the token can be used again once cancelled; reusing it while pending is the runtime's error
    h.send("t/reminder", "a", "remind 5 token")
    h.run()
    h.send("t/reminder", "a", "remind 7 token")
    with pytest.raises(FunctionError, match="TokenInUseError"):
        h.run()
    h.advance(minutes=10)
    assert h.egress("t/fired") == [{"after": 5}]  # the refused invocation left nothing behind


def test_advance_to_and_the_clock_only_moves_forward():
    h = Harness(reminder_functions(), start=int(START.timestamp() * 1000))
    assert h.now == START
    h.advance_to(START + timedelta(days=1))
    assert h.now_ms == int(START.timestamp() * 1000) + 86_400_000
    with pytest.raises(ValueError, match="forward"):
        h.advance(-1)
    with pytest.raises(ValueError, match="forward"):
        h.advance_to(START)
    with pytest.raises(TypeError):
        h.advance(timedelta(1), days=1)
    assert Harness(reminder_functions(), start=datetime(2030, 6, 1, 12)).now == START  # naive: UTC


def test_state_expires_after_a_virtual_month():
    functions = StatefulFunctions()
    specs = [
        ValueSpec("written", IntType, expire_after_write=timedelta(days=30)),
        ValueSpec("touched", IntType, expire_after_call=timedelta(days=30)),
    ]

    @functions.bind("t/session", specs=specs)
    def session(context, message):
        if message.as_string() == "write":
            context.storage.written = 1
            context.storage.touched = 1
        context.send_egress(
            egress_message_builder("t/seen", f"{context.storage.written}/{context.storage.touched}", StringType)
        )

    h = Harness(functions, start=START)
    h.send("t/session", "s", "write")
    h.run()
    h.advance(days=20)
    h.send("t/session", "s", "read")  # a call: renews ``touched``, not ``written``
    h.run()
    assert h.state("t/session", "s") == {"written": 1, "touched": 1}
    h.advance(days=10)  # 30 days after the write, 10 after the call
    assert h.state("t/session", "s") == {"touched": 1}
    h.send("t/session", "s", "read")
    h.advance(timedelta(days=30))
    assert h.state("t/session", "s") == {}
    assert h.egress("t/seen") == ["1/1", "1/1", "None/1"]


def test_async_functions_run_to_completion_in_order():
    functions = StatefulFunctions()

    @functions.bind("t/slow", specs=[ValueSpec("log", StringType)])
    async def slow(context, message):
        await asyncio.sleep(0)
        context.storage.log = (context.storage.log or "") + message.as_string()
        await asyncio.sleep(0)
        context.send(message_builder("t/sink", "all", str_value=f"{context.address.id}{message.as_string()}"))

    @functions.bind("t/sink", specs=[ValueSpec("log", StringType)])
    def sink(context, message):
        context.storage.log = (context.storage.log or "") + message.as_string() + ","

    h = Harness(functions)
    for id, value in [("a", "1"), ("b", "2"), ("a", "3")]:
        h.send("t/slow", id, value)
    assert h.run() == 6
    assert h.state("t/slow", "a") == {"log": "13"}
    assert h.state("t/sink", "all") == {"log": "a1,b2,a3,"}


def failing_functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("t/fragile", specs=[ValueSpec("n", IntType)])
    def fragile(context, message):
        context.storage.n = message.as_int()
        context.send_egress(egress_message_builder("t/out", message.as_int(), IntType))
        if message.as_int() < 0:
            raise ValueError("negative")

    @functions.bind("t/afragile")
    async def afragile(context, message):
        await asyncio.sleep(0)
        raise KeyError("async boom")

    return functions


def test_an_error_raises_out_of_run_naming_the_instance_and_leaves_nothing_behind():
    h = Harness(failing_functions())
    h.send("t/fragile", "f", 1)
    h.send("t/fragile", "f", -5)
    h.send("t/fragile", "g", 2)
    with pytest.raises(FunctionError, match=r"t/fragile \(id 'f'\) failed on the message -5") as info:
        h.run()
    assert isinstance(info.value.__cause__, ValueError)
    assert str(info.value.address) == "t/fragile/f" and info.value.caller is None and info.value.value == -5
    assert h.state("t/fragile", "f") == {"n": 1} and h.egress("t/out") == [1]  # -5's effects were not applied
    assert h.queued == 1 and h.run() == 1 and h.state("t/fragile", "g") == {"n": 2}  # the rest stayed queued
    h.send("t/afragile", "x", 0)
    with pytest.raises(FunctionError, match="t/afragile.*KeyError") as info:
        h.run()
    assert isinstance(info.value.__cause__, KeyError)
    h.send("t/afragile", "x", 0)  # the async runner is not left busy with the failed one
    with pytest.raises(FunctionError):
        h.run()


def test_dead_letter_mode_dead_letters_as_the_runtime_does():
    h = Harness(failing_functions(), on_error="dead_letter")
    h.send("t/fragile", "f", -1)
    h.send("t/afragile", "x", 7)
    h.send("t/fragile", "f", 3)
    assert h.run() == 3
    letters = h.dead_letters()
    assert [(d["function"], d["id"], d["message"]) for d in letters] == [("t/fragile", "f", -1), ("t/afragile", "x", 7)]
    assert "ValueError: negative" in letters[0]["reason"] and "KeyError" in letters[1]["reason"]
    assert h.state("t/fragile", "f") == {"n": 3} and h.egress("t/out") == [3]
    assert h.metrics()["dead_letters"] == 2


def test_serialization_errors_surface_as_in_production():
    functions = StatefulFunctions()

    @functions.bind("t/typed", specs=[ValueSpec("n", IntType), ValueSpec("p", Point)])
    def typed(context, message):
        if message.as_string() == "big":
            context.storage.n = 2**40  # out of IntType's range
        else:
            context.storage.p = {"not json": object()}

    h = Harness(functions)
    h.send("t/typed", "a", "big")
    with pytest.raises(FunctionError, match="state 'n' of t/typed"):
        h.run()
    h.send("t/typed", "a", "object")
    with pytest.raises(FunctionError, match="TypeError"):
        h.run()
    assert h.state("t/typed", "a") == {}


def test_the_same_inputs_give_the_same_outputs():
    def session() -> tuple:
        functions = reminder_functions()

        @functions.bind("t/fan", specs=[ValueSpec("n", IntType)])
        def fan(context, message):
            context.storage.n = (context.storage.n or 0) + 1
            for i in range(3):
                context.send_after(
                    timedelta(seconds=i * 7 % 5),
                    message_builder("t/reminder", f"{context.address.id}-{i}", value={"i": i}, value_type=Point),
                )

        h = Harness(functions, start=START)
        for n in range(20):
            h.send("t/fan", f"k{n % 7}", n)
            h.send("t/reminder", f"r{n}", f"remind {n % 4}")
            h.advance(seconds=n % 3)
        h.advance(hours=1)
        states = {f"k{n}": h.state("t/fan", f"k{n}") for n in range(7)}
        return h.invocations, h.egress("t/fired"), states, h.metrics()

    first, second = session(), session()
    assert first == second and len(first[0]) == 20 + 20 + 60 + 20


def test_remote_function_types_are_out_of_scope():
    endpoint = HttpEndpoint(functions="remote/*", url_path_template="http://127.0.0.1:1/{function.name}")
    with pytest.raises(RayfunError, match=r"remote function types \['remote/\*'\]"):
        Harness(counter_functions(), endpoints=[endpoint])
    with pytest.raises(TypeError, match="StatefulFunctions"):
        Harness({"t/counter": None})
    with pytest.raises(ValueError, match="on_error"):
        Harness(counter_functions(), on_error="ignore")


def test_run_refuses_to_nest_in_a_running_loop_and_the_harness_closes():
    with Harness(counter_functions()) as h:

        async def inside() -> None:
            h.run()

        with pytest.raises(RayfunError, match="plain"):
            asyncio.run(inside())
        h.send("t/counter", "a", "x")
        assert h.run() == 1
    h.close()  # twice is fine
