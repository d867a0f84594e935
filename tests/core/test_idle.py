"""Idle detection on hand-made shard statuses: no Ray, no shards, milliseconds."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from rayfun.runtime import shard
from rayfun.runtime.coordinator.idle import IdleWatch, wait_until_idle, why_busy
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


def test_work_under_way_is_told_apart_from_other_reasons_not_to_be_idle():
    watch = IdleWatch()
    working = [
        _quiet_pair(backlog=3),
        _quiet_pair(in_progress=1),
        _quiet_pair(outstanding=2),
        _quiet_pair(sources_busy=True, sources_exhausted=False),
        [_status(0, sent=[0, 4]), _status(1, received={0: 3})],  # in flight to shard 1
    ]
    for statuses in working:
        verdict = watch.look(statuses, 1, [0, 0])
        assert not verdict and verdict.working, verdict.reason
    for statuses in ([_status(0), None], _quiet_pair(failure="boom"), _quiet_pair(generation=0), _quiet_pair(timers=2)):
        verdict = watch.look(statuses, 1, [0, 0])
        assert not verdict and not verdict.working, verdict.reason
    assert not watch.look(_quiet_pair(), 1, [0, 0]).working  # quiet, counters moved: a second look decides


def _scripted(statuses_at):
    """A ``look`` that sees ``statuses_at(seconds since the first look)``, and counts the looks."""
    seen: list[float] = []

    async def look(watch: IdleWatch):
        seen.append(time.monotonic())
        return watch.look(statuses_at(seen[-1] - seen[0]), 1, [0, 0])

    return look, seen


def test_the_look_that_ends_a_wait_comes_when_the_shards_go_quiet_not_at_the_next_poll():
    """Work under way, the shards go quiet 280 ms later: the wait looks again then (a poll paced at
    IDLE_POLL_MAX_S looked at 325 ms), and returns after the confirming look."""
    from rayfun.constants import IDLE_POLL_MAX_S

    quiet_after = 0.28
    look, seen = _scripted(lambda t: _quiet_pair(backlog=5) if t < quiet_after else _quiet_pair())
    asked = []

    async def shards_quiet(timeout: float) -> bool:
        asked.append(timeout)
        wait = seen[0] + quiet_after - time.monotonic()
        if wait > timeout:
            await asyncio.sleep(timeout)
            return False
        await asyncio.sleep(max(0.0, wait))
        return True

    verdict = asyncio.run(wait_until_idle(look, shards_quiet, timeout=5))
    late = time.monotonic() - seen[0] - quiet_after
    assert verdict.idle and late < 0.7 * IDLE_POLL_MAX_S, (
        f"returned {late:.3f} s after the work ended"
    )  # ~5 ms; polled: ~50
    assert asked  # the waits between busy looks were the shards' quiet, not sleeps


def test_shards_that_are_quiet_while_the_application_is_not_idle_do_not_make_the_wait_spin():
    """A look says work is under way (an async function running) while every shard's loop is quiet: the
    quiet signal answers at once, every time. The looks must stay paced by the poll, not by that answer."""
    for statuses in (_quiet_pair(in_progress=1), _quiet_pair(timers=1)):
        look, seen = _scripted(lambda t, statuses=statuses: statuses)
        woken = []

        async def shards_quiet(timeout: float) -> bool:
            woken.append(timeout)
            return True

        verdict = asyncio.run(wait_until_idle(look, shards_quiet, timeout=0.5))
        assert not verdict
        assert len(seen) < 40, f"{len(seen)} looks in 0.5 s"  # polled: ~14; spinning: thousands
        assert len(woken) <= len(seen) // 2 + 1
