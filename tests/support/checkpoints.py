"""Runtime-shaped state for the checkpoint tests (layouts with every built-in type, bytes, expiry)."""

from __future__ import annotations

import random

from rayfun.checkpoint import StateLayout
from rayfun.types import BoolType, DoubleType, FloatType, IntType, LongType, StringType

COUNTER = StateLayout.of("test/counter", [("count", IntType.typename)])
PROFILE = StateLayout.of(
    "test/profile",
    [
        ("name", StringType.typename, None, 0),
        ("score", DoubleType.typename, "after_write", 60_000),
        ("big", LongType.typename, None, 0),
        ("ratio", FloatType.typename, None, 0),
        ("active", BoolType.typename, "after_call", 1_000),
        ("blob", "test.types/blob", None, 0),
    ],
)
LAYOUTS = {COUNTER.function_type: COUNTER, PROFILE.function_type: PROFILE}


def random_cells(layout: StateLayout, rng: random.Random) -> list:
    """Cells with some values unset (but never all), deadlines only where a value is set."""
    gens = {
        IntType.typename: lambda: rng.randint(-(2**31), 2**31 - 1),
        LongType.typename: lambda: rng.randint(-(2**63), 2**63 - 1),
        DoubleType.typename: lambda: rng.uniform(-1e9, 1e9),
        FloatType.typename: lambda: rng.uniform(-10, 10),
        StringType.typename: lambda: rng.choice(["", "ä€😀", "x" * rng.randint(0, 20)]),
        BoolType.typename: lambda: rng.random() < 0.5,
    }
    n = len(layout.names)
    while True:
        values = [
            gens.get(t, lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 12))))()
            if rng.random() < 0.8
            else None
            for t in layout.typenames
        ]
        if any(v is not None for v in values):
            break
    if not layout.expiring:
        return values
    deadlines = [rng.randint(1, 2**41) if v is not None and layout.expire_modes[i] else 0 for i, v in enumerate(values)]
    assert len(values) + len(deadlines) == 2 * n
    return values + deadlines


def random_state(rng: random.Random, n: int = 300) -> dict[str, dict[str, list]]:
    return {
        ft: {f"{ft.split('/')[1]}-{i}-{rng.getrandbits(20)}": random_cells(layout, rng) for i in range(n)}
        for ft, layout in LAYOUTS.items()
    }


class Model:
    """A stand-in for the shards' state: live instances plus the ids changed since the last checkpoint."""

    def __init__(self, rng: random.Random, n: int = 300):
        self.rng = rng
        self.state = random_state(rng, n)
        self.changed: dict[str, set[str]] = {ft: set() for ft in LAYOUTS}

    def mutate(self, k: int) -> None:
        """k random changes: updates, inserts and deletions (some of instances inserted this epoch)."""
        rng = self.rng
        for _ in range(k):
            ft = rng.choice(list(LAYOUTS))
            inst = self.state[ft]
            op = rng.random()
            if op < 0.5 and inst:
                id = rng.choice(list(inst))
                inst[id] = random_cells(LAYOUTS[ft], rng)
            elif op < 0.75:
                id = f"new-{rng.getrandbits(32)}"
                inst[id] = random_cells(LAYOUTS[ft], rng)
            elif inst:
                id = rng.choice(list(inst))
                del inst[id]
            else:
                continue
            self.changed[ft].add(id)

    def deltas(
        self, key_group_range: tuple[int, int] | None = None, key_groups: int = 1024, full: bool = False
    ) -> list:
        from rayfun.checkpoint import StateDelta
        from rayfun.runtime.partitioning import key_group

        def mine(ft: str, id: str) -> bool:
            return key_group_range is None or key_group_range[0] <= key_group(ft, id, key_groups) < key_group_range[1]

        out = []
        for ft, layout in LAYOUTS.items():
            inst = self.state[ft]
            if full:
                out.append(StateDelta(layout, {i: c for i, c in inst.items() if mine(ft, i)}))
            else:
                ch = [i for i in self.changed[ft] if mine(ft, i)]
                out.append(StateDelta(layout, {i: inst[i] for i in ch if i in inst}, [i for i in ch if i not in inst]))
        return out

    def clear_changes(self) -> None:
        for s in self.changed.values():
            s.clear()


def restored_state(restored) -> dict[str, dict[str, list]]:
    return {ft: restored.instances(ft) for ft in LAYOUTS}


def file_codec(data: bytes) -> str:
    """The codec of a checkpoint file's bytes, as Parquet names it: read from a Parquet file's metadata, and
    for an Arrow IPC file (whose reader does not tell) from the frames in its body: each compressed buffer
    is an LZ4 frame (magic 04 22 4D 18) or a zstd frame (28 B5 2F FD)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if data[:4] == b"PAR1":
        return pq.ParquetFile(pa.BufferReader(data)).metadata.row_group(0).column(2).compression
    assert data[:6] == b"ARROW1", data[:8]
    lz4, zstd = b"\x04\x22\x4d\x18" in data, b"\x28\xb5\x2f\xfd" in data
    assert not (lz4 and zstd), "both LZ4 and zstd frames in one file"
    return "LZ4" if lz4 else "ZSTD" if zstd else "UNCOMPRESSED"
