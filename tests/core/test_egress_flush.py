"""At-least-once egress records reach their sink during a long processing turn (every EGRESS_FLUSH_S), not
only at its end: a turn may run for TURN_S, and a record handed over at its end waited that long."""

from __future__ import annotations

import asyncio
import time

from rayfun import IntType, StatefulFunctions, egress_message_builder
from rayfun.constants import EGRESS_FLUSH_S, TURN_S
from rayfun.io import DeliverySemantic
from rayfun.runtime.batchcodec import encode_rows
from rayfun.runtime.shard import DRIVER, ShardConfig, ShardCore
from tests.core.test_shard_rollback import INT
from tests.support.fakes import RecordingSink

OUT = "t/out"
WORK_S = 0.002  # per message: 20 of them make one turn of 40 ms, under TURN_S


def _functions() -> StatefulFunctions:
    functions = StatefulFunctions()

    @functions.bind("t/slow")
    def slow(context, message):
        time.sleep(WORK_S)
        context.send_egress(egress_message_builder(OUT, message.as_int(), IntType))

    return functions


def test_a_long_turn_hands_at_least_once_records_over_as_it_goes():
    assert 20 * WORK_S < TURN_S and EGRESS_FLUSH_S * 4 < 20 * WORK_S
    sink = RecordingSink(OUT, DeliverySemantic.AT_LEAST_ONCE)

    async def main():
        core = ShardCore(0, ShardConfig(functions=_functions(), shards=1, key_groups=64, sinks=[sink]))
        await core.start([None], [])
        try:
            for seq in range(2):  # the first turn teaches the shard how long a message takes (its step)
                rows = [("t/slow", f"k{i}", None, INT, seq * 100 + i) for i in range(20)]
                await core.deliver(DRIVER, seq, encode_rows(rows), 0)  # one batch: one turn runs all 20
                for _ in range(100):
                    await asyncio.sleep(0.01)
                    if sum(len(records) for _, _, records in sink.written) == 20:
                        break
                if seq == 0:
                    del sink.written[:]
        finally:
            await core.stop()

    asyncio.run(main())
    payloads = [p for _, _, records in sink.written for _, p in records]
    assert sorted(payloads) == list(range(100, 120))  # the second turn's, each once
    assert all(epoch == -1 for _, epoch, _ in sink.written)  # at-least-once: no epoch
    # handed over about every EGRESS_FLUSH_S of the 40 ms turn, not once at its end
    assert len(sink.written) >= 3, [len(records) for _, _, records in sink.written]
