"""The named row layouts match what the data path builds and what checkpoints store."""

from rayfun.runtime.services import EgressRow, Row


def test_the_row_layouts_are_the_tuples_on_the_wire_and_in_checkpoints():
    assert Row._fields == ("target_typename", "target_id", "caller", "value_typename", "payload")
    assert EgressRow._fields == ("shard", "epoch", "position", "egress_id", "value_typename", "payload")
    assert Row("t/f", "a", None, "int", 1) == ("t/f", "a", None, "int", 1)
