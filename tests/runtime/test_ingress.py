"""Ingress: the mailbox's backpressure marks, and reading source partitions."""

import asyncio

from rayfun.runtime.ingress import Ingress
from tests.support.fakes import ListSource


def _row(i: int) -> tuple:
    return ("t/f", f"k{i}", None, "int", i)


def test_a_delivery_waits_above_the_high_mark_until_the_shard_is_back_under_the_low_mark():
    async def main():
        ingress = Ingress([], high=10, low=4, counters={}, max_remote_held=6)
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
        ingress.park(2)  # an async function holds messages: they count with the mailbox
        ingress.backlog = 3
        ingress.release()
        await asyncio.sleep(0)
        assert not waiting.done()
        ingress.hold_remote(7)  # a remote function holds more than max_remote_held
        ingress.unpark(1)  # 3 + 1 <= low, but the remote functions' bound holds the delivery still
        await asyncio.sleep(0)
        assert not waiting.done()
        ingress.release_remote(1)  # 6 held by remote functions: room again
        await asyncio.sleep(0)
        assert waiting.done()
        assert ingress.held() == 3 + 1 + 6

    asyncio.run(main())


def test_what_remote_functions_hold_has_its_own_bound():
    """What waits behind a remote invocation makes its next batch: it is bounded by ``max_remote_held``, not
    by the mailbox's low mark (which kept a remote function's batches at ~25 messages)."""
    source = ListSource("src/a", {"p0": [[_row(1)]]})
    ingress = Ingress([source], high=10, low=4, counters={"ingested": 0}, max_remote_held=100)
    ingress.start()
    ingress.open([(0, "p0", None)])
    ingress.hold_remote(60)  # far above the low mark, under max_remote_held
    assert ingress.may_read() and not ingress.over_high()
    ingress.hold_remote(41)
    assert not ingress.may_read() and ingress.over_high()
    ingress.release_remote(1)
    assert ingress.may_read()
    ingress.park(5)  # an async function's queues count with the mailbox, under its low mark
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
