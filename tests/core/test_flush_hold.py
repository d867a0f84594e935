"""A batch a busy shard holds back (``Outbox.flush(hold=True)``) is never forgotten: the shard counts it as
outstanding, so the application does not look idle, and sends it as soon as its loop has nothing else to do.
Driven on one ShardCore without Ray, as in test_shard_rollback."""

from __future__ import annotations

from tests.core.test_shard_rollback import INT, _id_on, _run, _settle


def test_a_held_batch_counts_as_outstanding_and_goes_when_the_loop_is_idle():
    async def scenario(core, peers):
        target = _id_on(core, "t/count", 1)
        core.outbox.route("t/count", target, None, INT, 7)
        core._flush(hold=True)  # a busy loop's flush: one small batch waits
        assert not peers[1].deliver.calls
        assert core.status().outstanding == 1, "a held batch must keep the application from looking idle"
        core.wake()  # the loop turns, finds nothing else to do, and sends what it held
        await _settle()
        assert len(peers[1].deliver.calls) == 1 and core.outbox.held() == 0
        assert core.status().outstanding == 1  # now as a batch the peer has not accepted yet
        peers[1].deliver.replies[0].set_result(None)
        await _settle()
        assert core.status().outstanding == 0 and core.status().sent == [0, 1]

    _run(scenario)
