"""The shard's periodic sweep drops expired values of instances nobody touches (reads already hide them)."""

from datetime import timedelta

from rayfun import IntType, ValueSpec
from rayfun.runtime.runners.state import FunctionState


def test_expire_drops_expired_values_and_empty_instances():
    state = FunctionState(
        "t/f", [ValueSpec("a", IntType, expire_after_write=timedelta(seconds=1)), ValueSpec("b", IntType)]
    )
    state.instances = {"gone": [1, None, 1000, 0], "partly": [1, 2, 1000, 0], "kept": [1, None, 5000, 0]}
    assert state.expire(now_ms=2000) == 2
    assert state.instances == {"partly": [None, 2, 0, 0], "kept": [1, None, 5000, 0]}
    assert state.changed == {"gone": None, "partly": [None, 2, 0, 0]}
    assert state.view("kept", now_ms=2000) == {"a": 1}
