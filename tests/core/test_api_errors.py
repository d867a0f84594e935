"""Errors at the user's boundary: what crosses Ray arrives as rayfun's own exception (or the cause's own
type) with the cause's message, not a RayTaskError around a remote traceback; a typo'd egress id raises
with the known ones; writing an undeclared state name says which ValueSpec to add; ``timers=True`` makes
``app.egress`` wait for delayed messages."""

from __future__ import annotations

from datetime import timedelta

import pytest
import ray

import rayfun
from rayfun import CheckpointError, IntType, StatefulFunctions, UnknownEgress, ValueSpec, egress_message_builder
from rayfun.connectors.memory import MemorySink

OUT = "t/out"


def functions() -> StatefulFunctions:
    fns = StatefulFunctions()

    @fns.bind("t/typo", specs=[ValueSpec("count", IntType)])
    def typo(context, message):
        context.storage.cuont = 1  # not declared

    @fns.bind("t/later")
    def later(context, message):
        text = message.as_string()
        context.send_egress(egress_message_builder(target_typename=OUT, value=text, value_type=rayfun.StringType))
        if text == "now":
            context.send_after(
                timedelta(seconds=1.5),
                rayfun.message_builder(target_typename="t/later", target_id=context.address.id, str_value="later"),
            )

    return fns


@pytest.fixture(scope="module")
def app(ray_session):
    app = rayfun.start(functions(), shards=2, egresses=[MemorySink(OUT), MemorySink("t/declared")], standby=False)
    yield app
    app.stop()


def test_an_error_raised_in_the_coordinator_arrives_as_rayfuns_own(app):
    with pytest.raises(CheckpointError, match="checkpoints are off") as raised:
        app.checkpoint()
    assert not isinstance(raised.value, ray.exceptions.RayError)
    assert "Traceback" not in str(raised.value) and "ray::" not in str(raised.value)


def test_an_error_raised_in_a_shard_arrives_as_its_own_type(app):
    with pytest.raises(ValueError, match="unknown function type 't/nope'") as raised:
        app.state("t/nope", "x")
    assert not isinstance(raised.value, ray.exceptions.RayError)


def test_a_typo_in_an_egress_id_names_the_known_ones(app):
    app.send("t/later", "a", "first")
    assert app.egress(OUT) == ["first"]
    with pytest.raises(UnknownEgress) as raised:
        app.egress("t/otu")
    assert OUT in str(raised.value) and "t/declared" in str(raised.value)
    assert app.egress("t/declared") == []  # declared by a sink, nothing emitted yet: no error


def test_timers_true_waits_for_delayed_messages(app):
    app.send("t/later", "b", "now")
    # without timers: idle as soon as only the delayed message is left
    assert app.egress(OUT, timers=False).count("later") == 0
    assert app.egress(OUT, timers=True).count("later") == 1


def test_writing_an_undeclared_state_says_which_valuespec_to_add(app):
    app.send("t/typo", "x", 1)
    letters = app.egress(rayfun.DEAD_LETTER_EGRESS)
    reasons = [letter["reason"] for letter in letters if letter.get("function") == "t/typo"]
    assert len(reasons) == 1, letters
    assert "no state named 'cuont'" in reasons[0] and "ValueSpec('cuont'" in reasons[0], reasons[0]
    assert "declared: ['count']" in reasons[0]
