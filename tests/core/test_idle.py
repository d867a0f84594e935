"""Idle detection on hand-made shard statuses: no Ray, no shards, milliseconds."""

from __future__ import annotations

import dataclasses

from rayfun.runtime import shard
from rayfun.runtime.coordinator.idle import IdleWatch, why_busy
from rayfun.runtime.status import DRIVER, ShardStatus


def _status(index: int, shards: int = 2, **changes) -> ShardStatus:
    base = ShardStatus(
        index=index,
        pid=1000 + index,
        backlog=0,
        in_progress=0,
        sent=[0] * shards,
        received={},
        early=0,
        outstanding=0,
        sources_busy=False,
        sources_exhausted=True,
        timers=0,
        failure=None,
        remote_requests=0,
        remote_failures=0,
        generation=1,
        epoch=0,
        cpu_s=0.0,
        counters={"processed": 0},
    )
    return dataclasses.replace(base, **changes)


def _quiet_pair(**changes_to_0) -> list[ShardStatus]:
    return [_status(0, **changes_to_0), _status(1)]


def test_the_driver_channel_id_is_the_shards():
    assert DRIVER == shard.DRIVER


def test_nothing_anywhere_is_quiet():
    assert why_busy(_quiet_pair(), generation=1, driver_sent=[0, 0]) is None


def test_a_message_in_flight_between_shards_is_not_quiet():
    # shard 0 sent 3 to shard 1, which has received 2 of them so far
    statuses = [_status(0, sent=[0, 3]), _status(1, received={0: 2})]
    reason = why_busy(statuses, 1, [0, 0])
    assert reason is not None and "shard 1" in reason
    statuses[1].received[0] = 3
    assert why_busy(statuses, 1, [0, 0]) is None


def test_a_message_sent_to_itself_counts_as_a_channel_too():
    statuses = [_status(0, sent=[2, 0], received={0: 1}), _status(1)]
    assert why_busy(statuses, 1, [0, 0]) is not None
    statuses[0].received[0] = 2
    assert why_busy(statuses, 1, [0, 0]) is None


def test_a_driver_batch_not_yet_received_is_not_quiet():
    statuses = [_status(0, received={DRIVER: 4}), _status(1)]
    reason = why_busy(statuses, 1, driver_sent=[5, 0])
    assert reason is not None and "driver" in reason
    assert why_busy(statuses, 1, driver_sent=[4, 0]) is None


def test_messages_received_that_nobody_counts_as_sent_are_not_quiet():
    # counters of a shard that reported before a peer's send was counted, or a stale generation's: no match
    assert why_busy([_status(0, received={1: 1}), _status(1)], 1, [0, 0]) is not None
    assert why_busy([_status(0, received={DRIVER: 1}), _status(1)], 1, [0, 0]) is not None


def test_zero_counts_on_a_channel_are_the_same_as_no_channel():
    assert why_busy([_status(0, received={1: 0, DRIVER: 0}), _status(1)], 1, [0, 0]) is None


def test_pending_timers_count_only_when_asked():
    statuses = _quiet_pair(timers=2)
    assert "timer" in why_busy(statuses, 1, [0, 0], timers=True)
    assert why_busy(statuses, 1, [0, 0], timers=False) is None


def test_a_source_with_data_is_not_quiet_but_an_idle_unexhausted_one_is():
    assert "source" in why_busy(_quiet_pair(sources_busy=True, sources_exhausted=False), 1, [0, 0])
    # a partition that is not exhausted but has nothing to read now (a live topic) does not keep it busy
    assert why_busy(_quiet_pair(sources_busy=False, sources_exhausted=False), 1, [0, 0]) is None


def test_work_inside_a_shard_is_not_quiet():
    for field in ("backlog", "in_progress", "early", "outstanding"):
        reason = why_busy(_quiet_pair(**{field: 1}), 1, [0, 0])
        assert reason is not None and field in reason, field


def test_a_failed_shard_or_an_older_generation_is_not_quiet():
    assert "failed" in why_busy(_quiet_pair(failure="boom"), 1, [0, 0])
    assert "generation" in why_busy(_quiet_pair(generation=0), 1, [0, 0])


def test_a_shard_that_has_not_reported_is_not_quiet():
    assert "not reported" in why_busy([_status(0), None], 1, [0, 0])
    assert why_busy([_status(0)], 1, [0, 0]) is not None  # one status short


def test_idle_takes_two_quiet_looks_with_the_same_counters():
    watch = IdleWatch()
    statuses = _quiet_pair()
    first = watch.look(statuses, 1, [0, 0])
    assert not first and "moved" in first.reason
    assert watch.look(statuses, 1, [0, 0])


def test_progress_between_two_quiet_looks_is_not_idle():
    watch = IdleWatch()
    assert not watch.look(_quiet_pair(counters={"processed": 5}), 1, [0, 0])
    assert not watch.look(_quiet_pair(counters={"processed": 6}), 1, [0, 0])  # processed meanwhile
    assert watch.look(_quiet_pair(counters={"processed": 6}), 1, [0, 0])


def test_a_busy_look_in_between_starts_the_count_afresh():
    watch = IdleWatch()
    assert not watch.look(_quiet_pair(), 1, [0, 0])
    assert not watch.look(_quiet_pair(backlog=1), 1, [0, 0])
    assert not watch.look(_quiet_pair(), 1, [0, 0])
    assert watch.look(_quiet_pair(), 1, [0, 0])


def test_a_recovery_is_never_idle_and_does_not_forget_the_last_quiet_look():
    watch = IdleWatch()
    assert not watch.look(_quiet_pair(), 1, [0, 0])
    verdict = watch.look([], 1, [0, 0], recovering=True)
    assert not verdict and "recovery" in verdict.reason
    assert watch.look(_quiet_pair(), 1, [0, 0])


def test_the_metrics_dict_is_flat_as_before():
    st = _status(0, counters={"processed": 3, "egress": 1})
    d = st.as_dict()
    assert d["processed"] == 3 and d["egress"] == 1 and d["backlog"] == 0 and "counters" not in d
    assert list(d)[:3] == ["index", "pid", "backlog"] and list(d)[-2:] == ["processed", "egress"]


def test_looks_back_off_while_busy_and_a_first_quiet_look_is_confirmed_at_once():
    from rayfun.constants import IDLE_POLL_FIRST_S, IDLE_POLL_MAX_S

    watch = IdleWatch()
    pauses = []
    for _ in range(6):
        assert not watch.look(_quiet_pair(backlog=1), 1, [0, 0])
        pauses.append(watch.pause())
    assert pauses[0] == IDLE_POLL_FIRST_S and pauses == sorted(pauses) and pauses[-1] == IDLE_POLL_MAX_S
    assert not watch.look(_quiet_pair(counters={"processed": 5}), 1, [0, 0])  # quiet at last
    assert watch.pause() == IDLE_POLL_FIRST_S  # confirmed soon: app.wait returns soon after the work ends
    # a trickle: quiet looks whose counters keep moving are not confirmed at that pace
    assert not watch.look(_quiet_pair(counters={"processed": 6}), 1, [0, 0])
    assert watch.pause() == IDLE_POLL_MAX_S
    assert watch.look(_quiet_pair(counters={"processed": 6}), 1, [0, 0])
