"""Checkpoint I/O benchmark: 1M int states to Parquet and back, and the bytes of a 1%-changed delta.

    python bench/checkpoint_io.py [--states 1000000] [--url DIR_OR_URL] [--repeat 3]

Prints the best of ``--repeat`` runs per step:
- encode:  runtime state (``id -> [int]``) to an Arrow table (key groups included);
- parquet: that table to Parquet bytes (zstd level 1) plus SHA-256;
- write:   ``write_shard_part`` end to end (encode + Parquet + checksum + store);
- read:    ``load_shard`` up to the folded Arrow table (fetch + checksum + Parquet decode + range filter);
- decode:  that table back to ``id -> cells`` dicts (what a shard restores into);
and the bytes written by a full checkpoint and by a delta after 1% of the instances changed. The last line
alone is ``checkpoint delta bytes (1% changed): N``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rayfun.checkpoint import CheckpointStore, StateDelta, StateLayout, encode_state
from rayfun.types import IntType

G = 1024


def best(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        gc.collect()
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--states", type=int, default=1_000_000)
    ap.add_argument("--url", default=None, help="checkpoint URL (default: a fresh temporary directory)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    tmp = None
    url = args.url
    if url is None:
        tmp = tempfile.TemporaryDirectory(prefix="rayfun-bench-")
        url = tmp.name
    layout = StateLayout.of("bench/counter", [("count", IntType.typename)])
    rng = random.Random(0)
    instances = {f"user-{i}": [rng.randint(-(2**31), 2**31 - 1)] for i in range(args.states)}
    n = len(instances)
    print(f"{n} instances of one IntType state, key groups {G}, store {url}")

    gc.disable()  # the runtime's own allocations are not what we measure
    try:
        t_enc, table = best(lambda: encode_state([StateDelta(layout, instances)], G), args.repeat)
        store = CheckpointStore(url, retain=2)

        def parquet():  # what a checkpoint does per file: encode (digest included)
            _, data = store.files.encode("state", table, "bench/state.parquet", (0, G), 1, 0)
            if isinstance(data, str):  # a big table went to a staging file
                with open(data, "rb") as f:
                    data = f.read()
            return data

        t_pq, data = best(parquet, args.repeat)
        t_sha, _ = best(lambda: hashlib.sha256(data).hexdigest(), args.repeat)
        print(f"encode to Arrow:        {t_enc * 1000:8.1f} ms")
        print(
            f"Parquet + SHA-256:      {t_pq * 1000:8.1f} ms  ({len(data)} bytes; SHA-256 alone {t_sha * 1000:.1f} ms)"
        )

        cid = [0]

        def write_full():
            cid[0] += 1
            part = store.write_shard_part(cid[0], 0, (0, G), key_groups=G, state=[StateDelta(layout, instances)])
            store.commit(cid[0], [part])
            return part

        t_write, part = best(write_full, args.repeat)
        full_bytes = part.bytes_written
        print(f"write full checkpoint:  {t_write * 1000:8.1f} ms  (write_shard_part + commit)")

        t_read, restored = best(lambda: store.load_shard(cid[0], (0, G), tables=("state",)), args.repeat)
        print(f"read back to Arrow:     {t_read * 1000:8.1f} ms  (fetch + verify + Parquet + range filter)")
        t_dec, back = best(lambda: restored.instances("bench/counter"), args.repeat)
        assert back == instances, "round trip mismatch"
        print(f"decode to id -> cells:  {t_dec * 1000:8.1f} ms")

        changed = {}
        for id in rng.sample(list(instances), max(1, n // 100)):
            instances[id] = [instances[id][0] + 1]
            changed[id] = instances[id]
        parent = cid[0]
        cid[0] += 1
        t_delta = time.perf_counter()
        delta = store.write_shard_part(
            cid[0], 0, (0, G), key_groups=G, parent_id=parent, state=[StateDelta(layout, changed)]
        )
        store.commit(cid[0], [delta])
        t_delta = time.perf_counter() - t_delta
        assert store.load_shard(cid[0], tables=("state",)).instances("bench/counter") == instances
        print(f"write 1% delta:         {t_delta * 1000:8.1f} ms  ({len(changed)} instances)")
        print(f"checkpoint full bytes: {full_bytes}")
        print(f"delta / full: {delta.bytes_written / full_bytes:.4f}")
        print(f"checkpoint delta bytes (1% changed): {delta.bytes_written}")
    finally:
        gc.enable()
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
