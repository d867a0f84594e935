"""How a shard holds one function type's instances: a single-cell type (one value that never expires) maps
``id -> value`` with no list per instance, every other type ``id -> cells``; both record their changes as
the checkpoint encoder reads them. The accessors give cells whatever the representation, so the paths
that are not hot (queries, async invocations, remote calls, re-laying out a remote function's specs)
need not know which one a type uses."""

from __future__ import annotations

from datetime import timedelta

from rayfun import HttpEndpoint, ValueSpec
from rayfun.checkpoint.state_codec import StateDelta, decode_instances, encode_state
from rayfun.remote import RemoteFunctionClient
from rayfun.runtime.runners.remote import RemoteFunction
from rayfun.runtime.runners.state import FunctionState
from rayfun.types import IntType, LongType, StringType
from tests.remote.test_remote_batching import Shard


def test_a_single_cell_type_holds_values_and_records_changes_as_values():
    state = FunctionState("t/count", [ValueSpec("n", IntType)])
    assert state.single
    state.put("a", [1], maybe_empty=False)
    state.put("b", [2])
    assert state.instances == {"a": 1, "b": 2} and state.changed == {"a": 1, "b": 2}
    assert state.cells_of("a") == [1] and state.cells_of("nobody") is None
    working = state.working_cells("a")
    working[0] = 99  # an invocation's copy: the instance is untouched until it is put
    assert state.instances["a"] == 1 and state.working_cells("nobody") == [None]
    state.put("b", [None])  # emptied: the instance goes, its change is a tombstone
    assert state.instances == {"a": 1} and state.changed["b"] is None
    assert dict(state.cell_items()) == {"a": [1]}
    assert state.view("a", 0) == {"n": 1} and state.view("b", 0) == {}
    # what the checkpoint writes of it reads back as the runtime holds it
    delta = StateDelta.from_function_state(state)
    table = encode_state([delta], None)
    assert decode_instances(table, delta.layout, values=True) == {"a": 1}
    assert decode_instances(table, delta.layout) == {"a": [1]}  # the reader's public form: cells


def test_other_types_hold_cells():
    two = FunctionState("t/two", [ValueSpec("n", IntType), ValueSpec("s", StringType)])
    expiring = FunctionState("t/ttl", [ValueSpec("n", IntType, expire_after_write=timedelta(seconds=5))])
    assert not two.single and not expiring.single  # an expiring value has its deadline beside it
    two.put("a", [1, None])
    expiring.put("a", [1, 5000])
    assert two.instances == {"a": [1, None]} and expiring.instances == {"a": [1, 5000]}
    assert two.cells_of("a") == [1, None] and expiring.view("a", 6000) == {}
    assert two.working_cells("a") is not two.instances["a"]


def test_a_remote_function_that_registers_a_second_spec_relays_its_single_values_as_cells():
    """A remote function learns its specs from its answers; its instances and recorded changes change
    representation with the layout (one value -> cells), and nothing is lost or left in the old form."""
    endpoint = HttpEndpoint("example/*", "http://127.0.0.1:9/statefun")
    runner = RemoteFunction("example/counter", endpoint, RemoteFunctionClient(endpoint), Shard())
    runner.register([("count", LongType.typename, None, 0)])
    assert runner.state.single
    one, two = LongType.serialize(1), LongType.serialize(2)
    runner.state.put("a", [one])
    runner.state.put("b", [two])
    runner.uncommitted.append(runner.state.take_changes())  # a checkpoint's cut took them
    runner.state.put("b", [None])  # then b was emptied
    runner.register([("label", StringType.typename, None, 0)])
    state = runner.state
    assert not state.single and [s.name for s in state.specs] == ["count", "label"]
    assert state.instances == {"a": [one, None]}
    assert state.changed == {"b": None} and runner.uncommitted == [{"a": [one, None], "b": None}]
