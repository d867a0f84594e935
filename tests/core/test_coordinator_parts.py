"""The coordinator's parts on fakes (no Ray cluster): the driver channel, checkpoint scheduling and its
failures, the supervisor's failure detection and backoff."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import types

import pytest

from rayfun import CheckpointError
from rayfun.runtime.coordinator import checkpoints as cp
from rayfun.runtime.coordinator import supervisor as sv
from rayfun.runtime.coordinator.config import AppConfig
from rayfun.runtime.coordinator.driver_channel import DriverChannel
from rayfun.runtime.coordinator.fleet import Fleet


class _Remote:
    """A fake actor method: ``.remote(*args)`` records the call and returns a coroutine of ``fn``."""

    def __init__(self, fn=None) -> None:
        self.fn = fn
        self.calls: list[tuple] = []

    def remote(self, *args):
        self.calls.append(args)

        async def call():
            return self.fn(*args) if self.fn else None

        return call()


def _checkpoint(incarnation: str, seqs: list[int]):
    entries = [types.SimpleNamespace(index=i, meta={"driver_seq": s}) for i, s in enumerate(seqs)]
    return types.SimpleNamespace(app={"coordinator": incarnation}, shards=entries)


# -- the driver channel -----------------------------------------------------------------------------------


def _channel(shards: int = 2, logged: bool = True, retain: int = 3):
    delivered: list[tuple[int, int, list]] = []
    return DriverChannel(shards, lambda *a: delivered.append(a), logged=logged, retain=retain), delivered


def _route(typename: str, id: str) -> int:
    return int(id)


def _send(channel: DriverChannel, call: int, rows: dict, driver: str = "driver", routed_for: int | None = None):
    return channel.send(driver, call, rows, channel.shards if routed_for is None else routed_for, _route)


def test_driver_calls_are_forwarded_in_call_order_with_one_numbering_per_shard():
    channel, delivered = _channel()

    async def scenario():
        await _send(channel, 1, {0: ["b"]})  # overtook call 0: held back
        assert delivered == []
        await _send(channel, 0, {0: ["a"], 1: ["x", "y"]})

    asyncio.run(scenario())
    assert delivered == [(0, 0, ["a"]), (1, 0, ["x", "y"]), (0, 1, ["b"])]
    assert channel.sent == [2, 2]


def test_each_driver_numbers_its_own_calls_and_both_get_through_in_their_order():
    channel, delivered = _channel()

    async def scenario():
        await _send(channel, 1, {0: ["b2"]}, driver="notebook")  # held back: the notebook's call 0 is late
        await _send(channel, 0, {0: ["a1"]}, driver="job")  # the job's own numbering: forwarded at once
        await _send(channel, 0, {0: ["b1"]}, driver="notebook")

    asyncio.run(scenario())
    assert delivered == [(0, 0, ["a1"]), (0, 1, ["b1"]), (0, 2, ["b2"])]


def test_a_rescale_rebases_the_numbering_and_routes_the_unread_rows_anew():
    channel, delivered = _channel(shards=2)
    rows = [("t", "0"), ("t", "1"), ("t", "2"), ("t", "3")]
    asyncio.run(_send(channel, 0, {0: [rows[0], rows[2]], 1: [rows[1], rows[3]]}))  # routed for 2: id % 2
    asyncio.run(_send(channel, 1, {0: [rows[0]]}))
    checkpoint = _checkpoint(channel.incarnation, [1, 0])  # read the first batch of shard 0 only
    old = channel.incarnation
    channel.rebase(checkpoint, 4, _route)
    assert channel.incarnation != old and channel.shards == 4
    assert channel.driver_from(checkpoint) == [0, 0, 0, 0]  # the rescale's checkpoint read none of these
    delivered.clear()
    channel.replay([0, 0, 0, 0])
    assert sorted(delivered) == [(0, 0, [rows[0]]), (1, 0, [rows[1]]), (3, 0, [rows[3]])]
    delivered.clear()
    asyncio.run(_send(channel, 2, {1: [rows[1], rows[3]]}, routed_for=2))  # a driver that has not learnt yet
    assert sorted(delivered) == [(1, 1, [rows[1]]), (3, 1, [rows[3]])]


def test_the_log_is_pruned_by_the_oldest_retained_checkpoint_and_never_by_a_restore():
    channel, delivered = _channel(retain=2)
    asyncio.run(_send(channel, 0, {0: ["a"]}))
    asyncio.run(_send(channel, 1, {0: ["b"]}))
    asyncio.run(_send(channel, 2, {0: ["c"]}))
    channel.covered([1, 0])  # checkpoint 1 read batch 0
    assert [seq for seq, _ in channel.log[0]] == [1, 2]
    channel.covered([3, 0])  # checkpoint 2 read all; checkpoint 1 is still retained
    assert [seq for seq, _ in channel.log[0]] == [1, 2]
    channel.covered([3, 0])  # checkpoint 1 falls out of the retained ones
    assert channel.log[0] == []


def test_a_rollback_replays_what_the_checkpoint_had_not_read_under_the_same_numbers():
    channel, delivered = _channel()
    for call, rows in enumerate([{0: ["a"]}, {0: ["b"], 1: ["x"]}, {0: ["c"]}]):
        asyncio.run(_send(channel, call, rows))
    delivered.clear()
    driver_from = channel.driver_from(_checkpoint(channel.incarnation, [1, 0]))
    assert driver_from == [1, 0]
    for _ in range(2):  # two rollbacks to the same checkpoint in a row re-send the same
        channel.replay(driver_from)
        assert delivered == [(0, 1, ["b"]), (0, 2, ["c"]), (1, 0, ["x"])] and channel.sent == [2, 1]
        delivered.clear()
    assert [seq for seq, _ in channel.log[0]] == [0, 1, 2]  # the restore kept the log


def test_a_checkpoint_of_another_coordinator_read_none_of_this_ones_messages():
    channel, _ = _channel()
    assert channel.driver_from(_checkpoint("someone-else", [5, 5])) == [0, 0]
    assert channel.driver_from(None) == [0, 0]


def test_without_checkpoints_nothing_is_logged():
    channel, delivered = _channel(logged=False)
    asyncio.run(_send(channel, 0, {0: ["a"]}))
    assert delivered == [(0, 0, ["a"])] and channel.log == [[], []]


# -- checkpoint scheduling --------------------------------------------------------------------------------


def test_periodic_checkpoints_keep_their_interval_and_min_pause_and_back_off_on_failure():
    assert cp.next_wait(1.0, since_began=0.3, since_ended=0.3, failures=0) == pytest.approx(0.7)
    assert cp.next_wait(1.0, since_began=1.5, since_ended=0.1, failures=0) == pytest.approx(0.4)  # min pause
    assert cp.next_wait(1.0, since_began=5.0, since_ended=5.0, failures=0) == 0.0
    assert [cp.next_wait(1.0, 5.0, 5.0, f) for f in (1, 2, 3, 4, 10)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert cp.next_wait(10.0, 10.0, 10.0, 3) == 10.0  # the cap is never below the interval


class _Metrics:
    def __init__(self) -> None:
        self.events: list[str] = []

    def failed(self) -> None:
        self.events.append("failed")

    def completed(self, duration_s: float, size_bytes: int) -> None:
        self.events.append("completed")

    def age(self, seconds: float) -> None:
        self.events.append("age")

    def recovered(self) -> None:
        self.events.append("recovered")

    def took(self, seconds: float) -> None:
        self.events.append("took")


class _Store:
    def __init__(self) -> None:
        self.fail: Exception | None = None
        self.hang: threading.Event | None = None  # set: commits wait for it (storage that hangs)
        self.committed: list[int] = []
        self.retained: list[int] = []

    def commit(self, n, parts, **kwargs) -> None:
        if self.hang is not None:
            self.hang.wait(30)
        if self.fail is not None:
            raise self.fail
        assert kwargs.get("retain") is False, "retention must not hold up the egress the checkpoint releases"
        self.committed.append(n)

    def retain_quietly(self, n) -> None:
        self.retained.append(n)

    def latest(self):
        raise AssertionError("the coordinator asked storage for the newest manifest on its event loop")


def _fleet(shards: int = 2):
    def part(n, full):
        return types.SimpleNamespace(full=full, meta={"driver_seq": 0}, bytes_written=10)

    actors = [
        types.SimpleNamespace(
            checkpoint=_Remote(part), checkpoint_aborted=_Remote(), checkpoint_complete=_Remote(), status=_Remote()
        )
        for _ in range(shards)
    ]
    config = AppConfig(functions=types.SimpleNamespace(typenames=["t/f"]), shards=shards)
    return Fleet(config, store=_Store(), shards=actors), actors


def test_a_failed_checkpoint_is_aborted_counted_and_the_next_attempt_gets_a_new_id():
    fleet, actors = _fleet()
    channel, _ = _channel()
    metrics = _Metrics()
    scheduler = cp.CheckpointScheduler(fleet, channel, metrics, next_id=7)
    fleet.store.fail = OSError("storage down\nmore detail")

    async def scenario():
        for _ in range(2):
            with pytest.raises(OSError):
                await scheduler.checkpoint()
        assert [a.checkpoint_aborted.calls for a in actors] == [[(7,), (8,)]] * 2
        assert scheduler.failures == 2 and scheduler.last_error == "OSError: storage down"
        fleet.store.fail = None
        assert await scheduler.checkpoint() == 9

    asyncio.run(scenario())
    assert fleet.last_checkpoint == 9 and fleet.store.committed == [9]
    assert fleet.store.retained == [9]  # after the shards were told, once per completed checkpoint
    assert scheduler.failures == 0 and scheduler.failures_total == 2
    assert [a.checkpoint_complete.calls for a in actors] == [[(9,)]] * 2
    assert metrics.events == ["failed", "failed", "completed"]


def test_a_commit_that_hangs_fails_at_the_deadline_and_the_next_checkpoint_goes_on(monkeypatch, caplog):
    """Storage that hangs while the manifest is written (a request in flight when the network dropped):
    the checkpoint fails at CHECKPOINT_TIMEOUT_S instead of holding the fleet for the client's timeouts, and
    a manifest that lands later is reported, not counted."""
    monkeypatch.setattr(cp, "CHECKPOINT_TIMEOUT_S", 1.0)
    fleet, actors = _fleet()
    scheduler = cp.CheckpointScheduler(fleet, _channel()[0], _Metrics(), next_id=4)
    hang = fleet.store.hang = threading.Event()

    async def scenario():
        began = time.monotonic()
        with pytest.raises(TimeoutError, match="writing its manifest did not finish"):
            await scheduler.checkpoint()
        assert time.monotonic() - began < 4.0
        assert [a.checkpoint_aborted.calls for a in actors] == [[(4,)]] * 2 and scheduler.failures == 1
        fleet.store.hang = None
        hang.set()  # the hung call ends after all: its manifest lands, uncounted
        assert await scheduler.checkpoint() == 5
        for _ in range(200):  # the late one's thread and its done callback
            if 4 in fleet.store.committed:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="rayfun"):
        asyncio.run(scenario())
    assert sorted(fleet.store.committed) == [4, 5] and fleet.last_checkpoint == 5
    assert "checkpoint 4: writing its manifest, given up on, finished later" in caplog.text


def test_a_recovery_does_not_wait_for_a_commit_that_hangs():
    """A shard fails while the manifest write hangs: the checkpoint is let go at once (the recovery takes
    the fleet lock), not after the storage client's timeouts."""
    fleet, actors = _fleet()
    scheduler = cp.CheckpointScheduler(fleet, _channel()[0], _Metrics())
    hang = fleet.store.hang = threading.Event()

    async def scenario():
        checkpoint = asyncio.ensure_future(scheduler.checkpoint())
        await asyncio.sleep(0.2)
        assert not checkpoint.done()
        began = time.monotonic()
        fleet.abandon = True  # what Supervisor.recover sets before it waits for the fleet lock
        async with fleet.lock:
            waited = time.monotonic() - began
        with pytest.raises(cp.CheckpointAbandoned, match="while writing its manifest"):
            await checkpoint
        hang.set()
        return waited

    assert asyncio.run(scenario()) < 1.5  # a poll or two; it waited for the storage client before
    assert scheduler.failures == 0 and actors[0].checkpoint_aborted.calls == []


def test_a_recovery_does_not_wait_for_a_stuck_shard_to_hear_that_a_checkpoint_completed():
    """A shard's loop got stuck (a ``def`` function that never returns) after it wrote its part: it never
    answers ``checkpoint_complete``. The supervisor's recovery, which replaces it, must get the fleet lock."""
    fleet, actors = _fleet()
    never = asyncio.Event()

    class _Stuck(_Remote):
        def remote(self, *args):
            self.calls.append(args)
            return never.wait()

    actors[1].checkpoint_complete = _Stuck()
    scheduler = cp.CheckpointScheduler(fleet, _channel()[0], _Metrics(), next_id=3)

    async def scenario():
        checkpoint = asyncio.ensure_future(scheduler.checkpoint())
        for _ in range(500):  # the commit runs in a thread: slow on a loaded machine
            if fleet.last_checkpoint == 3:
                break
            await asyncio.sleep(0.01)
        assert not checkpoint.done() and fleet.last_checkpoint == 3  # committed; telling the shards hangs
        began = time.monotonic()
        fleet.abandon = True
        async with fleet.lock:
            waited = time.monotonic() - began
        with pytest.raises(cp.CheckpointAbandoned, match="checkpoint 3 is complete"):
            await checkpoint
        return waited

    assert asyncio.run(scenario()) < 1.5  # a poll or two; it waited forever before
    assert fleet.store.committed == [3] and scheduler.failures == 0


def test_a_checkpoint_of_a_generation_rolled_back_meanwhile_is_abandoned_not_failed():
    fleet, actors = _fleet()

    def part(n, full):
        fleet.generation += 1  # a rollback happened while the shards wrote their parts
        return types.SimpleNamespace(full=full, meta={}, bytes_written=10)

    actors[0].checkpoint = _Remote(part)
    scheduler = cp.CheckpointScheduler(fleet, _channel()[0], _Metrics())
    with pytest.raises(cp.CheckpointAbandoned):
        asyncio.run(scheduler.checkpoint())
    assert scheduler.failures == 0 and actors[0].checkpoint_aborted.calls == []


def test_checkpoints_are_off_without_a_store():
    fleet, _ = _fleet()
    fleet.store = None
    with pytest.raises(CheckpointError, match="checkpoints are off"):
        asyncio.run(cp.CheckpointScheduler(fleet, _channel()[0], _Metrics()).checkpoint())


# -- supervision ------------------------------------------------------------------------------------------


def test_recoveries_back_off_from_the_second_in_a_row_doubling_to_a_cap():
    assert [sv.recovery_pause(k) for k in range(1, 6)] == [0.0, 0.5, 1.0, 2.0, 4.0]
    assert sv.recovery_pause(20) == sv.RECOVERY_BACKOFF_MAX_S == 30.0


def test_failed_shards_are_those_that_report_a_failure_do_not_answer_or_are_stuck(caplog):
    """Health answers ``(failure, seconds blocked, in what)``: a shard blocked for less than LOOP_STALL_S is
    warned about (naming what it waits in), not failed; one blocked longer is taken for dead."""
    from ray.exceptions import RayActorError

    fleet, actors = _fleet(5)
    actors[0].health = _Remote(lambda: (None, 0.0, None))
    actors[1].health = _Remote(lambda: ("remote function down", 0.0, None))

    def dead():
        raise RayActorError()

    actors[2].health = _Remote(dead)
    actors[3].health = _Remote(lambda: (None, sv.STATUS_TIMEOUT_S + 5, "egress t/out: publishing 9 records"))
    actors[4].health = _Remote(lambda: (None, sv.LOOP_STALL_S + 1, "egress t/out: opening its partition"))
    supervisor = sv.Supervisor(fleet, _channel()[0], _Metrics())
    with caplog.at_level(logging.WARNING, logger="rayfun"):
        failed = asyncio.run(supervisor.failed_shards())
        asyncio.run(supervisor.failed_shards())  # the same stall: warned about once
    assert set(failed) == {1, 2, 4}
    assert failed[1] == (False, "remote function down") and failed[2][0] is True
    assert failed[4][0] is True and "blocked for" in failed[4][1] and "opening its partition" in failed[4][1]
    warned = [r.getMessage() for r in caplog.records if "shard 3" in r.getMessage()]
    assert len(warned) == 1 and "publishing 9 records" in warned[0]


def test_a_health_check_that_does_not_come_back_is_a_dead_shard(monkeypatch):
    fleet, actors = _fleet(1)

    async def never():
        await asyncio.sleep(3600)

    actors[0].health = types.SimpleNamespace(remote=lambda: never())
    monkeypatch.setattr(sv, "STATUS_TIMEOUT_S", 0.05)
    failed = asyncio.run(sv.Supervisor(fleet, _channel()[0], _Metrics()).failed_shards())
    assert failed == {0: (True, "no answer to its health check within 0.05 s")}


def test_reported_failures_close_together_count_in_a_row_and_a_calm_spell_resets(monkeypatch):
    fleet, _ = _fleet()
    supervisor = sv.Supervisor(fleet, _channel()[0], _Metrics())
    pauses: list[float] = []

    async def sleep(seconds):
        pauses.append(seconds)

    monkeypatch.setattr(sv.asyncio, "sleep", sleep)
    now = [1000.0]
    monkeypatch.setattr(sv.time, "monotonic", lambda: now[0])

    async def failures(n, died=False):
        for _ in range(n):
            await supervisor._backoff(died)
            supervisor._recovered_at = now[0]

    asyncio.run(failures(4))
    assert pauses == [0.5, 1.0, 2.0]
    asyncio.run(failures(1, died=True))  # a dead shard is replaced at once, and does not count
    assert pauses == [0.5, 1.0, 2.0]
    now[0] += sv.RECOVERY_CALM_S + 1
    asyncio.run(failures(2))
    assert pauses == [0.5, 1.0, 2.0, 0.5]


def test_a_committed_checkpoint_asks_storage_nothing_more_on_the_coordinators_loop(monkeypatch):
    """After a commit, whether the chain needs compacting is read off the manifest just committed: it used to
    be read back from storage on the event loop, and S3 gone silent right then held the coordinator (status,
    app.wait, recoveries) for the storage call's bound (the fault campaign, seed 2728)."""
    from rayfun import checkpoint as checkpoint_module

    fleet, actors = _fleet()
    manifest = types.SimpleNamespace(shards=[0, 1])
    fleet.store.commit = lambda n, parts, **kwargs: (fleet.store.committed.append(n), manifest)[1]
    asked = []
    monkeypatch.setattr(checkpoint_module, "needs_compaction", lambda m, max_chain: asked.append(m) or False)
    scheduler = cp.CheckpointScheduler(fleet, _channel()[0], _Metrics(), next_id=2)
    assert asyncio.run(scheduler.checkpoint()) == 2  # the fake store's ``latest`` raises if it is asked
    assert asked == [manifest] and fleet.store.committed == [2]
