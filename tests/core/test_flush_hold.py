"""A batch a busy shard holds back (``Outbox.flush(hold=True)``) is never forgotten: the shard counts it as
outstanding, so the application does not look idle, and sends it as soon as its loop has nothing else to do.
Driven on one ShardCore without Ray, as in test_shard_rollback."""

from __future__ import annotations

from tests.core.test_shard_rollback import INT, _id_on, _run, _settle


def test_a_held_batch_counts_as_outstanding_and_goes_when_the_loop_is_idle():
    async def scenario(core, peers):
        target = _id_on(core, "t/count", 1)
        core.outbox.route("t/count", target, None, INT, 7)
        core._flush(hold=True)  # nothing in flight to the peer: even a busy loop sends at once
        assert len(peers[1].deliver.calls) == 1 and core.status().outstanding == 1
        core.outbox.route("t/count", target, None, INT, 8)
        core._flush(hold=True)  # a busy loop's flush: a small batch waits behind the one in flight
        assert len(peers[1].deliver.calls) == 1
        assert core.status().outstanding == 2, "a held batch must keep the application from looking idle"
        core.wake()  # the loop turns, finds nothing else to do, and sends what it held
        await _settle()
        assert len(peers[1].deliver.calls) == 2 and core.outbox.held() == 0
        assert core.status().outstanding == 2  # now as batches the peer has not accepted yet
        for reply in peers[1].deliver.replies:
            reply.set_result(None)
        await _settle()
        assert core.status().outstanding == 0 and core.status().sent == [0, 2]

    _run(scenario)
