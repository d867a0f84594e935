"""Ingress: the mailbox's backpressure marks, and reading source partitions."""

import asyncio

from rayfun.runtime.ingress import Ingress
from tests.support.fakes import ListSource


def _row(i: int) -> tuple:
    return ("t/f", f"k{i}", None, "int", i)


def test_a_delivery_waits_above_the_high_mark_until_the_shard_is_back_under_the_low_mark():
    async def main():
        ingress = Ingress([], high=10, low=4, counters={}, max_parked=6)
        ingress.start()
        ingress.accept([_row(i) for i in range(8)])
        assert not ingress.over_high() and not ingress.may_read()  # no sources, and above the low mark
        ingress.accept([_row(i) for i in range(3)])
        assert ingress.over_high()
        waiting = asyncio.ensure_future(ingress.wait_for_room())
        await asyncio.sleep(0)
        ingress.backlog = 5  # processed some: still above the low mark
        ingress.release()
        await asyncio.sleep(0)
        assert not waiting.done()
        ingress.park(7)  # runners hold more than max_parked: the mailbox's room is not enough
        ingress.backlog = 3
        ingress.release()
        await asyncio.sleep(0)
        assert not waiting.done()
        ingress.unpark(1)  # 6 parked, 3 in the mailbox: room again
        await asyncio.sleep(0)
        assert waiting.done()

    asyncio.run(main())


def test_parked_messages_have_their_own_bound():
    """What waits behind a remote invocation makes its next batch: it is bounded by ``max_parked``, not by
    the mailbox's low mark (which kept a remote function's batches at ~25 messages)."""
    source = ListSource("src/a", {"p0": [[_row(1)]]})
    ingress = Ingress([source], high=10, low=4, counters={"ingested": 0}, max_parked=100)
    ingress.start()
    ingress.open([(0, "p0", None)])
    ingress.park(60)  # far above the low mark, under max_parked
    assert ingress.may_read() and not ingress.over_high()
    ingress.park(41)
    assert not ingress.may_read() and ingress.over_high()
    ingress.unpark(1)
    assert ingress.may_read()
    ingress.accept([_row(i) for i in range(5)])  # the mailbox's own mark still holds
    assert not ingress.may_read()


def test_sources_are_read_only_under_the_low_mark_and_report_their_positions():
    source = ListSource("src/a", {"p0": [[_row(1), _row(2)], [], [_row(3)]], "p1": []})
    counters = {"ingested": 0}
    ingress = Ingress([source], high=10, low=1, counters=counters)
    ingress.open([(0, "p0", None), (0, "p1", 5)])
    assert source.opened == [("p0", None), ("p1", 5)]
    assert ingress.may_read() and ingress.polling()
    assert ingress.read() == [("src/a", [_row(1), _row(2)])]  # p1 is exhausted at once
    assert counters["ingested"] == 2 and ingress.busy()
    ingress.accept([_row(1), _row(2)])
    assert not ingress.may_read()  # above the low mark: sources pause
    assert ingress.read() == []  # (the poll that returned nothing)
    assert not ingress.busy() and not ingress.exhausted()
    assert ingress.positions() == [[0, "p0", 2, False], [0, "p1", 0, True]]
    ingress.mailbox[0] = (ingress.mailbox[0][0], 1)  # the processing loop is half way through the batch
    assert ingress.pending() == [_row(2)]
    ingress.close()
    ingress.reset()
    assert ingress.backlog == ingress.parked == 0 and not ingress.mailbox and not ingress.sources
    assert not ingress.may_read()
