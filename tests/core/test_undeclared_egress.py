"""An egress id that no sink declares: kept in memory while the application declares no sink at all (the
quick-start behaviour), a dead letter naming the id and the declared ones once it declares its egresses."""

from __future__ import annotations

import json
import logging
import types

import pytest

import rayfun
from rayfun import DEAD_LETTER_EGRESS, StatefulFunctions, StringType, egress_message_builder
from rayfun.connectors.memory import MemorySink
from rayfun.messages import EgressMessage
from rayfun.runtime.egress import Egress

pytestmark = pytest.mark.timeout(180)

STRING = StringType.typename


def _egress(sinks) -> Egress:
    counters = {"egress": 0, "dead_letters": 0}
    return Egress(types.SimpleNamespace(), sinks, 0, 1, checkpoints=False, counters=counters)


def test_without_declared_sinks_any_id_is_kept_in_memory():
    egress = _egress([])
    egress.emit(EgressMessage("t/anything", STRING, "x"))
    assert list(egress.now) == ["t/anything"] and egress.counters == {"egress": 1, "dead_letters": 0}


def test_with_declared_sinks_an_undeclared_id_is_a_dead_letter_logged_once(caplog, monkeypatch):
    egress = _egress([MemorySink("t/out"), MemorySink("t/audit")])
    monkeypatch.setattr(logging.getLogger("rayfun"), "propagate", True)  # configure_logging may turn it off
    with caplog.at_level(logging.WARNING, logger="rayfun"):
        for i in range(3):
            egress.emit(EgressMessage("t/otu", STRING, f"typo {i}"))
        egress.emit(EgressMessage("t/out", STRING, "fine"))
        egress.emit(EgressMessage(DEAD_LETTER_EGRESS, STRING, "always allowed"))
    assert [r.value_type_name for r in egress.now[DEAD_LETTER_EGRESS]] == ["rayfun/DeadLetter"] * 3 + [STRING]
    letter = json.loads(egress.now[DEAD_LETTER_EGRESS][0].payload)
    reason = "egress 't/otu' is not declared (declared egresses: ['t/audit', 't/out'])"
    assert letter["reason"] == reason and letter["message"] == "typo 0"
    assert [r.payload for r in egress.now["t/out"]] == ["fine"]
    assert "t/otu" not in egress.now and egress.counters == {"egress": 5, "dead_letters": 3}
    # by identity: after a test that gave the rayfun logger its handler, caplog may hold a record twice
    unique = {id(r): r for r in caplog.records}.values()
    lines = [r.getMessage() for r in unique if "t/otu" in r.getMessage()]
    assert lines == [f"{reason}: its records go to the dead-letter egress {DEAD_LETTER_EGRESS}"]


def test_an_application_with_declared_egresses_dead_letters_a_typo(ray_session):
    functions = StatefulFunctions()

    @functions.bind("t/emitter")
    def emitter(context, message):
        egress = "t/out" if message.as_string() == "good" else "t/outt"
        context.send_egress(egress_message_builder(egress, f"{context.address.id}:{message.as_string()}", StringType))

    app = rayfun.start(functions, shards=2, standby=False, egresses=[MemorySink("t/out")])
    try:
        app.send_many([("t/emitter", "a", "good"), ("t/emitter", "b", "typo"), ("t/emitter", "c", "typo")])
        assert app.egress("t/out") == ["a:good"]
        letters = app.egress(DEAD_LETTER_EGRESS)
        assert sorted(letter["message"] for letter in letters) == ["b:typo", "c:typo"]
        assert {letter["reason"] for letter in letters} == {
            "egress 't/outt' is not declared (declared egresses: ['t/out'])"
        }
        with pytest.raises(rayfun.UnknownEgress):  # nothing kept in memory for it
            app.egress("t/outt")
        assert sum(m["dead_letters"] for m in app.shard_metrics()) == 2
    finally:
        app.stop()
