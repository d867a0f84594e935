"""Egress: at-least-once records go out at the next flush; exactly-once ones once per epoch, when its
checkpoint completes, and again (under the old shard's index) after a restore."""

from rayfun.io import DEAD_LETTER_EGRESS, DeliverySemantic
from rayfun.messages import EgressMessage
from rayfun.runtime.egress import Egress
from tests.support.fakes import FakeServices, RecordingSink


def _egress(services, *sinks, checkpoints: bool = True, index: int = 0) -> Egress:
    return Egress(services, list(sinks), index, 2, checkpoints=checkpoints, counters={"egress": 0})


def _rec(egress_id: str, payload) -> EgressMessage:
    return EgressMessage(egress_id, "int", payload)


def test_exactly_once_records_are_published_once_per_epoch_when_its_checkpoint_completes():
    services = FakeServices()
    exactly, atleast = RecordingSink("e/x"), RecordingSink("e/a", DeliverySemantic.AT_LEAST_ONCE)
    egress = _egress(services, exactly, atleast)
    egress.open()
    egress.emit(_rec("e/x", 1))
    egress.emit(_rec("e/a", 2))
    egress.publish_now()
    assert atleast.written == [(0, -1, [("e/a", 2)])] and exactly.written == []
    assert egress.held() == 1
    rows = egress.cut(1)
    assert rows == [(0, 1, 0, "e/x", "int", 1)]
    egress.emit(_rec("e/x", 3))  # epoch 2
    assert egress.cut(2) == [(0, 1, 0, "e/x", "int", 1), (0, 2, 0, "e/x", "int", 3)]  # 1 is not confirmed yet
    egress.complete(1)
    assert exactly.written == [(0, 1, [("e/x", 1)])]
    egress.complete(1)  # again: nothing more
    egress.complete(2)
    assert exactly.written == [(0, 1, [("e/x", 1)]), (0, 2, [("e/x", 3)])] and egress.held() == 0
    assert egress.counters["egress"] == 3


def test_without_checkpoints_every_record_is_published_at_once():
    sink = RecordingSink("e/x")
    egress = _egress(FakeServices(), sink, checkpoints=False)
    egress.emit(_rec("e/x", 1))
    assert egress.held() == 0
    egress.publish_now()
    assert sink.written == [(0, -1, [("e/x", 1)])]


def test_a_restore_republishes_the_old_shards_epochs_in_epoch_order_and_reset_drops_what_was_held():
    sink = RecordingSink("e/x")
    egress = _egress(FakeServices(), sink, index=1)
    egress.emit(_rec("e/x", 9))
    egress.cut(4)
    egress.reset()
    assert egress.held() == 0 and egress.cut(5) == []
    egress.republish(
        [
            (0, 3, 0, "e/x", "int", "a"),
            (0, 3, 1, "e/x", "int", "b"),
            (0, 2, 0, "e/x", "int", "c"),
            (1, 3, 0, "e/x", "int", "d"),
        ]
    )
    assert sink.written == [(0, 2, [("e/x", "c")]), (0, 3, [("e/x", "a"), ("e/x", "b")]), (1, 3, [("e/x", "d")])]
    assert sink.closed == [0, 0]  # the old shard's partitions were opened for this only


def test_a_failed_epoch_asks_for_a_rollback_and_failed_at_least_once_records_are_dead_lettered():
    services = FakeServices()
    exactly, atleast = RecordingSink("e/x"), RecordingSink("e/a", DeliverySemantic.AT_LEAST_ONCE)
    egress = _egress(services, exactly, atleast)
    exactly.error = atleast.error = OSError("sink down")
    egress.emit(_rec("e/x", 1))
    egress.cut(1)
    egress.complete(1)
    assert services.failures == ["egress e/x: publishing epoch 1 failed: sink down"]
    egress.emit(_rec("e/a", 2))
    egress.publish_now()
    assert [r for r, _ in services.dead_letters] == ["egress e/a failed to publish the record: sink down"]
    dead = RecordingSink(DEAD_LETTER_EGRESS, DeliverySemantic.AT_LEAST_ONCE)
    egress = _egress(services, dead)
    dead.error = OSError("down too")
    egress.emit(_rec(DEAD_LETTER_EGRESS, 3))
    egress.publish_now()  # the dead-letter egress itself failing: no dead letter of a dead letter
    assert len(services.dead_letters) == 1
