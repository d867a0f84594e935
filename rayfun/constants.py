"""Every tuning knob of rayfun in one place, each with what it is for.

Each can be overridden by an environment variable ``RAYFUN_<NAME>`` (e.g. ``RAYFUN_STATUS_TIMEOUT_S=30``),
read when rayfun is imported, in the driver and in every actor (Ray hands the driver's environment to the
workers it starts locally; on a cluster, set them in the job's ``runtime_env``). The defaults are what
the benchmarks and the fault campaign were measured with; change them only for a reason you can measure.
Format constants (the key-group hash, the timer clock's width, schemas) are not here: they are part of
the checkpoint format and cannot change.
"""

from __future__ import annotations

import os

__all__ = [
    "ABORT_TIMEOUT_S",
    "ADOPT_TIMEOUT_S",
    "CHECKPOINT_ALARM_AFTER",
    "CHECKPOINT_ALARM_EVERY_S",
    "CHECKPOINT_BACKOFF_MAX_S",
    "CHECKPOINT_TIMEOUT_S",
    "CHUNK_SIZE",
    "DELIVERY_INLINE_BYTES",
    "DELIVERY_MAX_CALLS",
    "EGRESS_FLUSH_S",
    "EGRESS_HIGH",
    "ENCODE_CHUNK",
    "FLUSH_DELAY_S",
    "FLUSH_ROWS",
    "FULL_AFTER",
    "FULL_EVERY",
    "GIL_SWITCH_S",
    "HEALTH_CHECK_S",
    "HEARTBEAT_S",
    "IDLE_POLL_FIRST_S",
    "IDLE_POLL_MAX_S",
    "IO_THREADS",
    "LATENCY_SAMPLES",
    "LOCAL_COPY_MAX_BYTES",
    "LOG_EVERY_S",
    "LOOP_STALL_S",
    "MAILBOX_HIGH",
    "MAILBOX_LOW",
    "MAX_ID_CHARS",
    "MAX_IN_FLIGHT",
    "MAX_REMOTE_HELD",
    "MAX_STEP",
    "MAX_TYPENAME_CHARS",
    "MAX_VALUE_BYTES",
    "METRICS_INTERVAL_S",
    "MONITOR_INTERVAL_S",
    "PIECE_BYTES",
    "POLL_S",
    "RECOVERY_BACKOFF_FIRST_S",
    "RECOVERY_BACKOFF_MAX_S",
    "RECOVERY_CALM_S",
    "RECOVERY_WARN_S",
    "RECOVERY_WATCH_S",
    "ROUTE_CACHE_MAX",
    "ROW_GROUP_BYTES",
    "SAVEPOINT_ATTEMPTS",
    "SAVEPOINT_DRAIN_S",
    "STAGE_ABOVE_BYTES",
    "STANDBY_DELAY_S",
    "STATUS_TIMEOUT_S",
    "STOP_TIMEOUT_S",
    "STORAGE_CALL_TIMEOUT_S",
    "STORAGE_MIN_BYTES_PER_S",
    "SWEEP_INTERVAL_S",
    "TRICKLE_ROWS",
    "TRICKLE_WAIT_S",
    "TURN_S",
    "UNDO_MAX_SHARE",
    "WRITE_INLINE_ROWS",
]


def _int(name: str, default: int) -> int:
    raw = os.environ.get(f"RAYFUN_{name}")
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"RAYFUN_{name}={raw!r} is not an integer") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(f"RAYFUN_{name}")
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"RAYFUN_{name}={raw!r} is not a number") from None


# -- a shard's processing loop and backpressure (runtime/shard.py, ingress.py, outbox.py) ---------------

#: The GIL switch interval in a shard (seconds): how long the checkpoint writer thread may wait for it.
GIL_SWITCH_S = _float("GIL_SWITCH_S", 0.001)
#: In a long processing turn, at-least-once egress records are handed to their sinks at least this often
#: (seconds), rather than at the turn's end; also how often a turn looks at the clock.
EGRESS_FLUSH_S = _float("EGRESS_FLUSH_S", 0.005)
#: Messages processed between two flushes of the outbox.
CHUNK_SIZE = _int("CHUNK_SIZE", 16384)
#: A processing turn ends after about this long, so status calls and deliveries wait no longer (seconds).
TURN_S = _float("TURN_S", 0.05)
#: A loop turn that read fewer records than this from the sources and left the mailbox empty is a trickle:
#: the shard waits up to TRICKLE_WAIT_S for more (a delivery wakes it at once) instead of polling again
#: at once. Spinning on a trickle made a shard run ~10k turns a second of ~10 records each, 100 % busy at a
#: quarter of its capacity, and the two shards then starved Ray's own threads on 2 cores.
TRICKLE_ROWS = _int("TRICKLE_ROWS", 256)
TRICKLE_WAIT_S = _float("TRICKLE_WAIT_S", 0.001)
#: Messages run between two looks at the clock in a turn (fewer when functions are slow).
MAX_STEP = _int("MAX_STEP", 4096)
#: A peer's delivery waits while the mailbox holds more than this many messages ...
MAILBOX_HIGH = _int("MAILBOX_HIGH", 65536)
#: ... until it is back under this; sources are read only below it.
MAILBOX_LOW = _int("MAILBOX_LOW", 16384)
#: Messages a shard's remote functions hold (in flight and queued per address) before its sources pause
#: and deliveries wait. What waits behind a remote invocation makes its next batch, so this bounds a remote
#: function's batch sizes too: under the mailbox's low mark (the rule before) 1,000 addresses got ~25
#: messages a request. (An async function's queues count with the mailbox: they do not batch.)
MAX_REMOTE_HELD = _int("MAX_REMOTE_HELD", 131072)
#: Messages a shard has sent to its peers and they have not accepted yet, all peers together, before its
#: sources pause: each peer gets an even share (and always one batch), so what a shard receives but has not
#: taken stays under this too, whatever the shard count. It covers a peer's turn (TURN_S) at full rate: a
#: count of 4 batches a peer, the rule before, left a shard idle ~15 % of the time at 2 shards and ~20 % at
#: 16 (a batch per peer shrinks as the shard count grows).
MAX_IN_FLIGHT = _int("MAX_IN_FLIGHT", 131072)
#: Exactly-once egress records held for their checkpoint before the sources pause (storage down).
EGRESS_HIGH = _int("EGRESS_HIGH", 262144)
#: A shard that survives a failure rolls back by undoing the instances changed since the checkpoint while
#: they are at most this share of its instances; past it, folding and decoding all of its copy is cheaper
#: (an undone instance costs about twice a restored one: 258k of 500k took 0.8 s, all 500k 0.75 s).
UNDO_MAX_SHARE = _float("UNDO_MAX_SHARE", 0.25)
#: A batch for a peer smaller than this is held back while the shard is busy and an earlier batch to that
#: peer is not accepted yet (with nothing in flight it goes at once: waiting would only add latency) ...
FLUSH_ROWS = _int("FLUSH_ROWS", 2048)
#: ... for at most this long (seconds), then sent however small: a Ray call costs a sender and its receiver
#: ~0.1-0.3 ms of CPU, which a loop that read a few messages at a time paid for every few messages (17 % of
#: a shard under bench/latency.py's load). An idle shard, or one about to take a checkpoint, sends at once,
#: so the wait only happens under load, where fewer calls leave more CPU for the messages: latency.py's
#: loaded p50 / p99 were 11.6-22.3 / 81-237 ms at 2 ms, 4.0-5.6 / 45-72 ms at 5 ms, 3.4-4.2 / 31-44 ms at 10 ms.
FLUSH_DELAY_S = _float("FLUSH_DELAY_S", 0.01)
#: A batch to a peer is sent in calls of at most about this many pickled bytes: Ray passes a call's arguments
#: up to 100 KiB inline (its max_direct_call_object_size) and bigger ones through the object store, which
#: cost the counter ~15 % of its throughput (the raylet's work, and shared memory for every batch).
DELIVERY_INLINE_BYTES = _int("DELIVERY_INLINE_BYTES", 96 * 1024)
#: ... unless that takes more than this many calls (big payloads): one call through the object store then.
DELIVERY_MAX_CALLS = _int("DELIVERY_MAX_CALLS", 8)
#: Ids per function type remembered with their shard (bounds the route cache's memory).
ROUTE_CACHE_MAX = _int("ROUTE_CACHE_MAX", 1_000_000)
#: How often expired state is dropped from instances that were not touched (seconds).
SWEEP_INTERVAL_S = _float("SWEEP_INTERVAL_S", 5.0)
#: How often a shard hands what it counted to Ray's metrics (seconds; runtime/metrics.py).
METRICS_INTERVAL_S = _float("METRICS_INTERVAL_S", 2.0)
#: Latencies per function type (and per endpoint) fed to Ray's histograms per interval: a sample.
LATENCY_SAMPLES = _int("LATENCY_SAMPLES", 64)

# -- checkpoints on a shard (runtime/snapshot.py, checkpoint/) ---------------------------------------------

#: The in-memory rollback copy of the last checkpoint is dropped past this (big state rolls back from storage).
LOCAL_COPY_MAX_BYTES = _int("LOCAL_COPY_MAX_BYTES", 256 * 2**20)
#: A full base once the deltas on the last one hold this many times the live rows. A restore folds the
#: base and its deltas, and the fold is most of its read: at 1M instances, a third changing every second,
#: 3.0 (chains of up to 4x the live rows) gave recovery 1.4-1.5 s, 1.5 (a base, then at most a delta or
#: two) 1.0 s. It writes more rows (a third of the state, ~55 % more where a third changes a second), and
#: costs no throughput measured (bench/counter.py, 8M messages over 1M instances, alternating: 4.27-4.34
#: us of shard CPU a message at 1.5, 4.27-4.47 at 3.0).
FULL_AFTER = _float("FULL_AFTER", 1.5)
#: A shard's checkpoint part of at most this many rows (changed instances, messages, timers, egress) to a
#: local disk is written on the event loop, not in a thread: ~10 ms of CPU at this size, against ~30 ms of
#: wall time in a thread that waits for the GIL at every handoff while the loop is busy.
WRITE_INLINE_ROWS = _int("WRITE_INLINE_ROWS", 20000)
#: Instances converted to Arrow at a time: every pass over a chunk finds its objects in cache.
ENCODE_CHUNK = _int("ENCODE_CHUNK", 4096)
#: Encoded state is handed to the writer in tables of about this size (big state is never one table).
PIECE_BYTES = _int("PIECE_BYTES", 32 * 2**20)
#: Parquet row groups hold at most about this much (a restore reads one at a time).
ROW_GROUP_BYTES = _int("ROW_GROUP_BYTES", 64 * 2**20)
#: Files bigger than this are written through a staging file and read a row group at a time.
STAGE_ABOVE_BYTES = _int("STAGE_ABOVE_BYTES", 64 * 2**20)
#: Files fetched or put at once (object stores are latency-bound).
IO_THREADS = _int("IO_THREADS", 8)

# -- the coordinator (runtime/coordinator/) --------------------------------------------------------------

#: At the latest, a full base every this many checkpoints (bounds the number of files in a chain).
FULL_EVERY = _int("FULL_EVERY", 50)
#: A checkpoint not complete by then is abandoned, e.g. storage that hangs (seconds).
CHECKPOINT_TIMEOUT_S = _float("CHECKPOINT_TIMEOUT_S", 60.0)
#: A call to an object store (one file, its retries included) is given up on after this (seconds), plus
#: the time its bytes take at STORAGE_MIN_BYTES_PER_S: storage that hangs (see rayfun/storage.py).
STORAGE_CALL_TIMEOUT_S = _float("STORAGE_CALL_TIMEOUT_S", 30.0)
#: The slowest transfer (bytes per second) a big file's storage call is given time for.
STORAGE_MIN_BYTES_PER_S = _float("STORAGE_MIN_BYTES_PER_S", 1_000_000.0)
#: While checkpoints fail, attempts back off up to this far apart (seconds).
CHECKPOINT_BACKOFF_MAX_S = _float("CHECKPOINT_BACKOFF_MAX_S", 5.0)
#: Consecutive failed checkpoints before the log says so at ERROR level ...
CHECKPOINT_ALARM_AFTER = _int("CHECKPOINT_ALARM_AFTER", 3)
#: ... and while they go on failing, the ERROR is repeated at most this often (seconds).
CHECKPOINT_ALARM_EVERY_S = _float("CHECKPOINT_ALARM_EVERY_S", 30.0)
#: How long an abort waits for the shards' acknowledgements, best effort (seconds).
ABORT_TIMEOUT_S = _float("ABORT_TIMEOUT_S", 10.0)
#: How often a checkpoint in progress looks whether it must give up (seconds).
POLL_S = _float("POLL_S", 0.05)
#: The coordinator looks at the shards at most this often (seconds): at once when one fails or dies (each has
#: a ``failed`` call pending, which answers then), but not more often than this while failures go on ...
MONITOR_INTERVAL_S = _float("MONITOR_INTERVAL_S", 0.1)
#: ... and asks every shard whether it is alive and well at least this often (seconds): a frozen process
#: or a blocked loop answers nothing. It asked every 0.1 s before, and each question cost a busy shard's
#: loop a GIL handoff: bench/latency.py's loaded p99 went from 19-26 ms to 15-18 ms at 1 s.
HEALTH_CHECK_S = _float("HEALTH_CHECK_S", 1.0)
#: A shard whose health check (answered on its own thread, see ShardActor.health) does not come back in
#: this long is taken for dead: its process is gone or frozen (seconds).
STATUS_TIMEOUT_S = _float("STATUS_TIMEOUT_S", 10.0)
#: A shard whose event loop has not turned for this long (one sink call or ``def`` invocation that does not
#: return) is replaced and everything rolled back; before that it is only warned about, naming what it is
#: blocked in. Above the sinks' own timeouts (a Kafka call: 60 s), so a slow broker is waited for (seconds).
LOOP_STALL_S = _float("LOOP_STALL_S", 180.0)
#: How often a shard's event loop marks that it turns (what the health check measures; seconds).
HEARTBEAT_S = _float("HEARTBEAT_S", 0.5)
#: While a recovery waits for shards (to start, to restore), it checks their health this often: one that
#: died or is stuck meanwhile makes it start over instead of waiting forever (seconds) ...
RECOVERY_WATCH_S = _float("RECOVERY_WATCH_S", 1.0)
#: ... and says that it still waits, and for what, this often (seconds).
RECOVERY_WARN_S = _float("RECOVERY_WARN_S", 30.0)
#: After a recovery, wait this long before starting the next standby shard (seconds).
STANDBY_DELAY_S = _float("STANDBY_DELAY_S", 5.0)
#: A standby that does not take over a dead shard's index this fast is replaced (seconds).
ADOPT_TIMEOUT_S = _float("ADOPT_TIMEOUT_S", 10.0)
#: The pause before the second rollback in a row; it doubles for each next one (seconds) ...
RECOVERY_BACKOFF_FIRST_S = _float("RECOVERY_BACKOFF_FIRST_S", 0.5)
#: ... up to this, e.g. while a remote function stays down (seconds).
RECOVERY_BACKOFF_MAX_S = _float("RECOVERY_BACKOFF_MAX_S", 30.0)
#: A failure this long after the last recovery starts the backoff afresh (seconds).
RECOVERY_CALM_S = _float("RECOVERY_CALM_S", 60.0)
#: How long app.stop() waits for the shards to flush and close their sinks (seconds).
STOP_TIMEOUT_S = _float("STOP_TIMEOUT_S", 30.0)
#: A stop with a savepoint lets in-flight work finish for up to this long (sources paused) before its
#: checkpoint, which captures whatever is still in flight (seconds).
SAVEPOINT_DRAIN_S = _float("SAVEPOINT_DRAIN_S", 5.0)
#: A savepoint whose checkpoint fails (storage down) is tried this many times before the stop gives up.
SAVEPOINT_ATTEMPTS = _int("SAVEPOINT_ATTEMPTS", 3)
#: wait_idle looks again after this, doubling while the shards stay busy ... (seconds); a first quiet look
#: is confirmed after this too (see IdleWatch.pause)
IDLE_POLL_FIRST_S = _float("IDLE_POLL_FIRST_S", 0.005)
#: ... up to this (seconds).
IDLE_POLL_MAX_S = _float("IDLE_POLL_MAX_S", 0.05)

#: A repeated warning (e.g. a remote function's failing attempts) is logged once per endpoint per this
#: many seconds; the next line says how many were suppressed meanwhile (seconds, see rayfun/logs.py).
LOG_EVERY_S = _float("LOG_EVERY_S", 10.0)

# -- limits on input (rayfun/types.py) ------------------------------------------------------------------

#: An instance id, in characters (it is stored with every row of its state and every message).
MAX_ID_CHARS = _int("MAX_ID_CHARS", 64 * 1024)
#: A typename, in characters.
MAX_TYPENAME_CHARS = _int("MAX_TYPENAME_CHARS", 1024)
#: One value (a message payload or a state value), in bytes: Arrow's binary and string columns, Parquet
#: pages and protobuf messages all stop at 2 GiB, and a value that cannot be checkpointed would stop every
#: checkpoint.
MAX_VALUE_BYTES = _int("MAX_VALUE_BYTES", 512 * 2**20)
