"""Outbox: rows batched per destination shard, sequence numbers per channel, outstanding batches."""

import asyncio

from rayfun import StatefulFunctions
from rayfun.constants import FLUSH_DELAY_S, FLUSH_ROWS
from rayfun.io import DeadLetter
from rayfun.messages import Message
from rayfun.runtime import outbox as outbox_module
from rayfun.runtime.batchcodec import decode_rows
from rayfun.runtime.outbox import Outbox
from rayfun.runtime.partitioning import Partitioner
from rayfun.runtime.registry import TypeRegistry
from tests.support.fakes import FakeServices, Peer


def _outbox(services, shards: int = 3, index: int = 0) -> Outbox:
    functions = StatefulFunctions()

    @functions.bind("t/f")
    def f(context, message):
        pass

    partitioner = Partitioner(64, shards)
    return Outbox(services, index, shards, partitioner, TypeRegistry(functions.typenames, []))


def _ids_on(outbox: Outbox, shard: int, n: int) -> list[str]:
    ids = (f"k{i}" for i in range(10_000))
    return [i for i in ids if outbox.partitioner.shard_of("t/f", i) == shard][:n]


def test_rows_go_out_in_one_batch_per_destination_with_increasing_sequence_numbers():
    async def main():
        services = FakeServices()
        outbox = _outbox(services)
        peers = [None, Peer(), Peer()]
        outbox.reset(peers, generation=3)
        mine, theirs = _ids_on(outbox, 0, 2), _ids_on(outbox, 1, 3)
        for i in mine + theirs:
            outbox.route("t/f", i, None, "int", i)
        local = outbox.flush()
        assert [r[1] for r in local] == mine  # rows for this shard come back for its mailbox
        assert len(peers[1].deliver.calls) == 1 and not peers[2].deliver.calls
        sender, seq, data, generation = peers[1].deliver.calls[0]
        assert (sender, seq, generation) == (0, 0, 3)
        assert decode_rows(data) == [("t/f", i, None, "int", i) for i in theirs]
        assert outbox.sent == [0, 3, 0] and outbox.outstanding == [0, 1, 0]
        assert outbox.flush() is None  # nothing new: nothing sent
        outbox.route("t/f", theirs[0], ("t/f", "me"), "int", 1)
        outbox.flush()
        assert peers[1].deliver.calls[1][1] == 1
        assert outbox.send_markers(9) == {1, 2}  # markers share the sequence numbers
        assert peers[1].deliver.calls[2] == (0, 2, None, 3, 9) and peers[2].deliver.calls[0] == (0, 0, None, 3, 9)
        # 4 messages in flight to shard 1: a budget of 8 gives each of the 2 peers 4, so not one more
        assert outbox.in_flight == [0, 4, 0] and not outbox.accepting(8) and outbox.accepting(10)
        for reply in peers[1].deliver.replies[:2]:
            reply.set_result(None)
        await asyncio.gather(*services.tasks)
        assert outbox.outstanding == [0, 0, 0] and outbox.in_flight == [0, 0, 0] and services.wakes == 2
        assert outbox.accepting(1)  # a peer with nothing in flight always takes a batch

    asyncio.run(main())


def test_a_failed_delivery_asks_for_a_rollback_and_one_of_an_old_generation_counts_nothing():
    async def main():
        services = FakeServices()
        outbox = _outbox(services, shards=2)
        peers = [None, Peer()]
        outbox.reset(peers, generation=1)
        (theirs,) = _ids_on(outbox, 1, 1)
        outbox.route("t/f", theirs, None, "int", 1)
        outbox.flush()
        outbox.route("t/f", theirs, None, "int", 2)
        outbox.flush()
        peers[1].deliver.replies[0].set_exception(RuntimeError("actor died"))
        await services.tasks[0]
        assert services.failures == ["shard 1 is unreachable"] and outbox.outstanding == [0, 1]
        outbox.reset(peers, generation=2)  # a rollback: the counters start afresh
        peers[1].deliver.replies[1].set_exception(RuntimeError("actor died"))
        await services.tasks[1]
        assert services.failures == ["shard 1 is unreachable"] and outbox.outstanding == [0, 0]

    asyncio.run(main())


def test_source_input_is_routed_and_what_cannot_be_is_dead_lettered():
    services = FakeServices()
    outbox = _outbox(services, shards=1)
    outbox.route_input(
        [
            ("t/f", "a", None, "int", 1),
            Message("t/f", "b", "int", 2),
            Message("t/nope", "c", "int", 3),
            DeadLetter("bad record", "src/a", b"x"),
            42,
        ],
        "src/a",
    )
    assert outbox.flush() == [("t/f", "a", None, "int", 1), ("t/f", "b", None, "int", 2)]
    reasons = [r for r, _ in services.dead_letters]
    assert reasons[0].startswith("unknown function type 't/nope'")
    assert services.dead_letters[0][1]["payload"] == 3 and services.dead_letters[0][1]["source"] == "src/a"
    assert reasons[1] == "bad record" and reasons[2] == "source returned int, not a Message"


def test_a_big_batch_goes_in_calls_small_enough_for_ray_to_inline_in_order_and_counts_as_one(monkeypatch):
    import rayfun.runtime.outbox as outbox_module

    monkeypatch.setattr(outbox_module, "DELIVERY_INLINE_BYTES", 2000)

    async def main():
        services = FakeServices()
        outbox = _outbox(services, shards=2)
        peers = [None, Peer()]
        outbox.reset(peers, generation=1)
        theirs = _ids_on(outbox, 1, 400)

        def send(batch: list[str]) -> list[tuple]:
            before = len(peers[1].deliver.calls)
            for i in batch:
                outbox.route("t/f", i, None, "int", i)
            outbox.flush()
            return peers[1].deliver.calls[before:]

        send(theirs[:300])  # the first batch teaches the outbox how many rows fit
        calls = send(theirs)
        assert len(calls) > 1 and all(len(data) <= 2000 * 1.2 for _, _, data, _ in calls)
        assert [seq for _, seq, _, _ in calls] == list(range(calls[0][1], calls[0][1] + len(calls)))
        assert [row for _, _, data, _ in calls for row in decode_rows(data)] == [
            ("t/f", i, None, "int", i) for i in theirs
        ]
        assert outbox.sent == [0, 700] and outbox.outstanding == [0, 2]  # batches, not calls
        for reply in peers[1].deliver.replies[:-1]:
            reply.set_result(None)
        await asyncio.sleep(0)
        assert outbox.outstanding == [0, 1]  # the second batch waits for its last call
        peers[1].deliver.replies[-1].set_result(None)
        await asyncio.gather(*services.tasks)
        assert outbox.outstanding == [0, 0]
        # rows so big that a batch would take more than DELIVERY_MAX_CALLS calls go in one call (Ray's
        # object store: fine for big data), once the outbox has seen such rows
        for _ in range(2):
            for i in theirs[:40]:
                outbox.route("t/f", i, None, "bytes", b"z" * 1000)
            calls = send([])
        (one,) = calls
        assert len(decode_rows(one[2])) == 40

    asyncio.run(main())


def test_a_busy_shard_holds_small_batches_back_until_they_fill_or_wait_long_enough(monkeypatch):
    """flush(hold=True) keeps a batch under FLUSH_ROWS while an earlier batch to that peer is not accepted
    yet, until the oldest held row has waited FLUSH_DELAY_S; a small batch to a peer with nothing in
    flight goes at once (the channel is free: waiting would only add latency); a plain flush (the shard
    goes idle, or takes a checkpoint's cut) sends everything, before any marker."""
    clock = [100.0]  # the outbox's clock, moved by the test alone
    monkeypatch.setattr(outbox_module, "perf_counter", lambda: clock[0])

    def rows_to(peer: Peer) -> list:
        return [row[1] for _, _, data, _ in peer.deliver.calls if data is not None for row in decode_rows(data)]

    async def main():
        services = FakeServices()
        outbox = _outbox(services)
        peers = [None, Peer(), Peer()]
        outbox.reset(peers, generation=1)
        mine, to_1, to_2 = _ids_on(outbox, 0, 2), _ids_on(outbox, 1, FLUSH_ROWS + 6), _ids_on(outbox, 2, 5)
        first_1, first_2 = to_1.pop(0), to_2.pop(0)
        # nothing in flight: a busy shard's small batches go at once
        outbox.route("t/f", first_1, None, "int", 0)
        outbox.route("t/f", first_2, None, "int", 0)
        assert outbox.flush(hold=True) is None
        assert rows_to(peers[1]) == [first_1] and rows_to(peers[2]) == [first_2]
        assert outbox.outstanding == [0, 1, 1] and outbox.held() == 0 and outbox.held_since is None
        # both are in flight (not accepted yet): small batches wait behind them
        for i in mine + to_1[:3] + to_2:
            outbox.route("t/f", i, None, "int", i)
        local = outbox.flush(hold=True)
        assert [r[1] for r in local] == mine  # this shard's own rows never wait
        assert len(peers[1].deliver.calls) == 1 and len(peers[2].deliver.calls) == 1
        assert outbox.held() == 2 and outbox.held_since is not None
        # peer 1's batch fills up: it goes, in routing order; peer 2's stays
        for i in to_1[3:]:
            outbox.route("t/f", i, None, "int", i)
        assert outbox.flush(hold=True) is None
        assert rows_to(peers[1]) == [first_1, *to_1]
        assert len(peers[2].deliver.calls) == 1 and outbox.held() == 1
        # the oldest held row has waited long enough: it goes however small its batch
        clock[0] += FLUSH_DELAY_S * 0.9
        outbox.flush(hold=True)
        assert len(peers[2].deliver.calls) == 1
        clock[0] += FLUSH_DELAY_S * 0.1
        outbox.flush(hold=True)
        assert rows_to(peers[2]) == [first_2, *to_2]
        assert outbox.held() == 0 and outbox.held_since is None
        assert outbox.sent == [0, len(to_1) + 1, len(to_2) + 1]
        # peer 2 accepts everything: with nothing in flight, a small batch goes at once again
        for reply in peers[2].deliver.replies:
            reply.set_result(None)
        await asyncio.sleep(0)
        assert outbox.outstanding[2] == 0
        outbox.route("t/f", to_2[0], None, "int", 1)
        outbox.flush(hold=True)
        assert len(peers[2].deliver.calls) == 3 and outbox.held() == 0
        # a cut: the shard flushes without holding, then sends markers, which travel after the rows
        outbox.route("t/f", to_2[0], None, "int", 0)
        outbox.flush()
        outbox.send_markers(4)
        assert [(seq, data is None) for _, seq, data, *_ in peers[2].deliver.calls] == [
            (0, False),
            (1, False),
            (2, False),
            (3, False),
            (4, True),
        ]
        for reply in peers[1].deliver.replies + peers[2].deliver.replies:
            if not reply.done():
                reply.set_result(None)
        await asyncio.gather(*services.tasks)

    asyncio.run(main())


def test_a_mixed_source_batch_is_routed_as_one_route_per_item_would_route_it():
    """``route_input`` looks a batch's shared parts up once (the destinations' lists, the route cache of a
    type while it repeats): a batch that mixes types, unknown types, Messages and dead letters, into
    destinations that already hold rows, must end exactly as routing each item on its own (seeded)."""
    import random

    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    functions = StatefulFunctions()
    for typename in ("t/f", "t/g"):
        functions.bind(typename)(lambda context, message: None)

    def outbox() -> tuple[Outbox, FakeServices]:
        services = FakeServices()
        box = Outbox(services, 0, 3, Partitioner(64, 3), TypeRegistry(functions.typenames, []))
        box.reset([None, Peer(), Peer()], generation=1)
        return box, services

    items: list = []
    for k in range(3000):
        kind = rng.random()
        ttype = rng.choice(["t/f", "t/f", "t/g", "t/nope"])
        id = f"k{rng.randrange(200)}"
        if kind < 0.8:
            items.append((ttype, id, None, "int", k))
        elif kind < 0.95:
            items.append(Message(ttype, id, "int", k))
        else:
            items.append(DeadLetter(f"bad {k}", "src/a", b"x"))
    fast, fast_services = outbox()
    reference, reference_services = outbox()
    for box in (fast, reference):
        box.route("t/g", "k1", None, "int", -1)  # destinations that already hold a row
        box.route("t/f", "k2", None, "int", -2)
    for start in range(0, len(items), 700):
        fast.route_input(items[start : start + 700], "src/a")
    for item in items:
        if isinstance(item, DeadLetter):
            reference_services.dead_letter(item.reason, source=item.source, payload=item.payload)
        elif isinstance(item, Message) or item[0] == "t/nope":
            reference.route_input([item], "src/a")
        else:
            reference.route(*item)
    assert fast.out == reference.out and fast.held_since is not None
    assert [reason for reason, _ in fast_services.dead_letters] == [r for r, _ in reference_services.dead_letters]
    assert sum(len(rows) for rows in fast.out if rows) == 2 + sum(
        1
        for item in items
        if not isinstance(item, DeadLetter) and (item[0] if type(item) is tuple else item.target_typename) != "t/nope"
    )


def test_hostile_records_from_a_source_are_dead_letters_that_name_why_and_never_enter_the_route_cache():
    """A source's fast path (``MemorySource.next_rows``) leaves the typename and the id to routing, which
    checks an id once per id it has not cached: every record a user could hand it must either route or be
    a dead letter naming the cause, never raise, and a refused id must never be cached (it would pass)."""
    from rayfun.connectors.memory import MemorySource
    from rayfun.constants import MAX_ID_CHARS

    services = FakeServices()
    outbox = _outbox(services, shards=1)
    long_id = "x" * (MAX_ID_CHARS + 1)
    good = [("t/f", "a", 1), ("t/f", "é-ünïcode", 2), ("t/f", "a", 3)]
    hostile = [
        ("t/f", "", 1),  # empty id
        ("t/f", 7, 1),  # not a str
        ("t/f", ["a"], 1),  # unhashable id
        ("t/f", long_id, 1),  # too long
        ("t/f", "b\ud800", 1),  # not valid text
        ("nonamespace", "a", 1),  # not a typename
        (["t/f"], "a", 1),  # unhashable typename
        ("t/f", "a"),  # two fields
        ("t/f", "a", 1, 2),  # four fields
        ("t/f", "a", 2**70),  # out of the long range
        ("t/f", "a", object()),  # no type to infer
        "t/f a 1",
        None,
    ]
    records = good[:1] + hostile + good[1:] + hostile  # twice: a refused id is not remembered as checked
    partition = MemorySource(records, batch_size=7).build_partition("0", None)
    while (batch := partition.next_rows()) is not None:
        outbox.route_input(batch, "src/a")
    assert [(r[1], r[4]) for r in outbox.flush()] == [("a", 1), ("é-ünïcode", 2), ("a", 3)]
    reasons = [r for r, _ in services.dead_letters]
    assert len(reasons) == 2 * len(hostile), reasons
    for reason in reasons[: len(hostile)]:
        assert reason, "a dead letter without a reason"
    assert "must be a non-empty str" in reasons[0] and "must be a non-empty str" in reasons[1]
    assert "must be a non-empty str" in reasons[2] and f"more than {MAX_ID_CHARS}" in reasons[3]
    assert "not valid Unicode text" in reasons[4] and len(reasons[3]) < 400  # a long id is cut short
    assert reasons[5].startswith("unknown function type 'nonamespace'")
    assert reasons[6].startswith("unknown function type ['t/f']")
    assert reasons[len(hostile) :] == reasons[: len(hostile)]
    assert set(outbox.route_cache["t/f"]) == {"a", "é-ünïcode"}
