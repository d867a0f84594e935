"""The key-group hash is part of the checkpoint format: a checkpoint's rows are filtered to shards by it.
These values were computed once (rayfun 0.1) and must never change; if this test fails, the change breaks
every checkpoint already stored. The vectorized copy must agree with the scalar one everywhere."""

from __future__ import annotations

import random

import pytest

from rayfun.keygroups import key_group, key_groups_mixed, key_groups_of, seed, shard_ranges
from rayfun.runtime.partitioning import Partitioner

GROUPS = (1, 7, 128, 1024, 32768)
GOLDEN = [
    ("example/counter", "a", 3276158371, [0, 1, 21, 171, 5476]),
    ("example/counter", "user-42", 3276158371, [0, 5, 97, 782, 25036]),
    ("fraud/merchant", "ünï😀", 1857236782, [0, 5, 95, 763, 24439]),
    ("ns/t", "", 3790113900, [0, 6, 119, 957, 30638]),
    ("a/b", "x" * 1000, 3322169218, [0, 1, 26, 215, 6906]),
]


@pytest.mark.parametrize(("typename", "id", "typename_seed", "groups"), GOLDEN)
def test_golden_values(typename, id, typename_seed, groups):
    assert seed(typename) == typename_seed
    assert [key_group(typename, id, g) for g in GROUPS] == groups
    assert [key_groups_of(typename, [id], g).to_pylist()[0] for g in GROUPS] == groups
    assert [Partitioner(g, 1).key_group(typename, id) for g in GROUPS] == groups


def test_vectorized_and_routing_copies_agree_with_the_definition():
    rng = random.Random(7)
    print("seed 7")
    ids = [f"id-{rng.getrandbits(40)}" for _ in range(2000)] + ["", "ä€😀", "a/b", " "]
    types = [rng.choice(["a/x", "b/ÿ", "c/z"]) for _ in ids]
    for g in (1, 3, 1024, 32768):
        want = [key_group(t, i, g) for t, i in zip(types, ids)]
        assert key_groups_mixed(types, ids, g).to_pylist() == want
        for shards in sorted({1, min(g, 3), min(g, 8)}):
            p, ranges = Partitioner(g, shards), shard_ranges(g, shards)
            for t, i, kg in zip(types[:300], ids[:300], want[:300]):
                assert p.key_group(t, i) == kg
                start, end = ranges[p.shard_of(t, i)]
                assert start <= kg < end
