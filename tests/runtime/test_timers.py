"""The timer stage: delayed messages fire in due-time order, routed with their sender as caller."""

import asyncio

from rayfun.runtime.timers import Timers
from tests.support.fakes import FakeServices


def test_timers_fire_in_order_once_due_and_a_reset_disarms_them():
    async def main():
        services = FakeServices(now_ms=1_000)
        routed: list[tuple] = []
        counters = {"timers_fired": 0}
        timers = Timers(services, lambda *row: routed.append(row), counters)
        add = timers.service.add
        add(1_020, "t/s", "a", "", "t/f", "second", "int", 2)
        add(1_010, "t/s", "a", "tok", "t/f", "first", "int", 1)
        add(1_010, "t/s", "b", "", "t/f", "first-too", "int", 3)  # same due time: creation order
        add(60_000, "t/s", "a", "", "t/f", "much-later", "int", 4)
        timers.schedule()
        services.clock = 1_015
        await asyncio.sleep(0.03)
        assert routed == [("t/f", "first", ("t/s", "a"), "int", 1), ("t/f", "first-too", ("t/s", "b"), "int", 3)]
        assert counters["timers_fired"] == 2 and services.wakes == 1
        assert not timers.service.token_pending("t/s", "a", "tok")  # fired: the token is free again
        services.clock = 1_020
        await asyncio.sleep(0.03)
        assert routed[-1] == ("t/f", "second", ("t/s", "a"), "int", 2) and len(timers) == 1
        timers.reset()
        assert len(timers) == 0

    asyncio.run(main())


def test_restored_timers_keep_their_sequence_numbers():
    async def main():
        timers = Timers(FakeServices(), lambda *row: None, {"timers_fired": 0})
        timers.load([(5_000, 7, "t/s", "a", "tok", "t/f", "x", "int", 1)])
        (t,) = timers.all()
        assert (t.due_ms, t.seq, t.token) == (5_000, 7, "tok")
        later = timers.service.add(5_000, "t/s", "b", "", "t/f", "y", "int", 2)
        assert later.seq > 7
        timers.reset()

    asyncio.run(main())
