"""Protobuf types (``make_protobuf_type``) travel to the shards as their serialized ``.proto`` files, whatever
way their ``_pb2`` was generated and whether or not it imports where the shards run, and the message class is
rebuilt there; embedded and remote (the official SDK) functions exchange such values.

The ``_pb2`` of tests/remote/protos/shop.proto is generated at test time with grpcio-tools into a temporary
folder that only this process has on its path, as for a module the Ray workers cannot import."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import rayfun
from rayfun import HttpEndpoint, StatefulFunctions, ValueSpec, message_builder
from rayfun.types import ProtobufType, _proto_files, make_protobuf_type
from tests.remote.conftest import HERE, REPO, _start_server, free_port

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The generated ``shop_pb2`` module (importable in this process only)."""
    protoc = pytest.importorskip("grpc_tools.protoc")
    out = tmp_path_factory.mktemp("gen")
    include = Path(protoc.__file__).parent / "_proto"  # the well-known types' .proto files
    rc = protoc.main(["protoc", f"-I{HERE / 'protos'}", f"-I{include}", f"--python_out={out}", "shop.proto"])
    assert rc == 0
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("shop_pb2")
    finally:
        sys.path.remove(str(out))
        sys.modules.pop("shop_pb2", None)


def an_order(shop, id="o1", sku="apple", quantity=3):
    order = shop.Order(id=id, status=shop.Order.PAID)
    order.items.add(sku=sku, quantity=quantity)
    order.totals["eur"] = 12
    order.placed_at.FromSeconds(1_700_000_000)
    return order


def test_the_type_pickles_with_its_files_and_unpickles_without_the_pb2(shop, tmp_path):
    Order = make_protobuf_type(shop.Order)
    assert Order.typename == "type.googleapis.com/rayfun.test.shop.Order"
    files = _proto_files(Order.typename, shop.Order.DESCRIPTOR)
    assert len(files) == 2  # the well-known Timestamp's file first, then shop.proto
    assert b"google/protobuf/timestamp.proto" in files[0] and b"shop.proto" in files[1]

    again = pickle.loads(pickle.dumps(Order))  # here the _pb2 imports: its own class comes back
    assert again.message_class is shop.Order

    blob = tmp_path / "type.pickle"
    blob.write_bytes(pickle.dumps((Order, an_order(shop).SerializeToString())))
    script = (
        "import pickle, sys\n"
        "t, data = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "m = t.serializer().deserialize(data)\n"
        "assert 'shop_pb2' not in sys.modules and type(m).__module__ != 'shop_pb2'\n"
        "print(t.typename, m.id, m.items[0].sku, m.totals['eur'], m.placed_at.seconds, m.status)\n"
        "m2 = pickle.loads(pickle.dumps(m))\n"  # a rebuilt class's messages pickle too
        "assert m2 == m\n"
        "assert t.serializer().serialize(t.message_class(id='z')) == bytes.fromhex('0a017a')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(blob)], capture_output=True, text=True, cwd=str(REPO), timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["type.googleapis.com/rayfun.test.shop.Order", "o1", "apple", "12", "1700000000", "1"]


def test_a_class_built_at_run_time_travels_too(shop):
    """A class from message_factory (no _pb2 module at all) pickles the same way."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    for data in _proto_files("x/y", shop.Order.DESCRIPTOR):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(data))
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("rayfun.test.shop.Item"))
    Item = make_protobuf_type(cls, namespace="shop")
    again = pickle.loads(pickle.dumps(Item))
    assert again.typename == "shop/rayfun.test.shop.Item"
    assert again.serializer().deserialize(cls(sku="a", quantity=2).SerializeToString()).quantity == 2


def test_what_cannot_travel_is_named():
    with pytest.raises(TypeError, match="needs a generated protobuf message class, got <class 'dict'>"):
        make_protobuf_type(dict)

    class Broken:
        class file:
            name = "broken.proto"
            dependencies = ()

            @staticmethod
            def CopyToProto(proto):
                raise RuntimeError("no serialized form")

        full_name = "broken.Thing"

    class Thing:
        DESCRIPTOR = Broken
        FromString = staticmethod(lambda data: None)

    with pytest.raises(
        TypeError, match=r"protobuf type t/broken.Thing cannot travel .*'broken.proto'.*no serialized form"
    ):
        make_protobuf_type(Thing, namespace="t")
    assert not isinstance(dict, ProtobufType)


def shop_functions(shop) -> tuple[StatefulFunctions, dict]:
    """Embedded functions whose state, messages and egress are protobuf values (closures: pickled by value,
    with the types, as the functions of a notebook or a script are)."""
    Order, Receipt = make_protobuf_type(shop.Order), make_protobuf_type(shop.Receipt)
    functions = StatefulFunctions()

    @functions.bind("shop/cart", specs=[ValueSpec("order", Order)])
    def cart(context, message):
        order = message.as_type(Order)
        kept = context.storage.order or Order.message_class(id=order.id)
        kept.items.extend(order.items)
        kept.status = order.status
        context.storage.order = kept
        count = sum(i.quantity for i in kept.items)
        receipt = Receipt.message_class(order_id=kept.id, item_count=count, status=kept.status)
        context.send(message_builder("local/receipts", kept.id, value=receipt, value_type=Receipt))

    @functions.bind("local/receipts", specs=[ValueSpec("last", Receipt)])
    def receipts(context, message):
        receipt = message.as_type(Receipt)
        context.storage.last = receipt
        context.send_egress(rayfun.egress_message_builder("shop/receipts", receipt, Receipt))

    return functions, {"Order": Order, "Receipt": Receipt}


@pytest.fixture(scope="module")
def sdk_shop(sdk_python, shop, tmp_path_factory):
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet()
    for data in _proto_files("shop", shop.Order.DESCRIPTOR):
        files.file.add().ParseFromString(data)
    path = tmp_path_factory.mktemp("desc") / "shop.desc"
    path.write_bytes(files.SerializeToString())
    yield from _start_server([sdk_python, str(HERE / "sdk_protobuf_functions.py"), str(path)], free_port(), "SDK shop")


@pytest.fixture(scope="module")
def app(ray_session, shop, sdk_shop, tmp_path_factory):
    functions, types = shop_functions(shop)
    app = rayfun.start(
        functions,
        shards=2,
        endpoints=[HttpEndpoint("sdkshop/*", f"{sdk_shop}/statefun")],
        checkpoint_dir=str(tmp_path_factory.mktemp("cp")),
        checkpoint_interval=0.5,
    )
    yield app, types
    app.stop()


def test_embedded_functions_with_protobuf_state_messages_and_egress(app, shop):
    app, types = app
    app.send("shop/cart", "e1", an_order(shop, "e1", quantity=2), value_type=types["Order"])
    app.send("shop/cart", "e1", an_order(shop, "e1", sku="pear", quantity=5), value_type=types["Order"])
    app.wait(timeout=60)
    state = app.state("shop/cart", "e1")["order"]
    assert type(state) is shop.Order  # back in the driver: the _pb2's own class
    assert [(i.sku, i.quantity) for i in state.items] == [("apple", 2), ("pear", 5)]
    assert app.state("local/receipts", "e1")["last"] == shop.Receipt(order_id="e1", item_count=7, status=1)
    receipts = [r for r in app.egress("shop/receipts") if r.order_id == "e1"]
    assert [r.item_count for r in receipts] == [2, 7]


def test_remote_sdk_function_with_protobuf_types(app, shop):
    app, types = app
    app.send("sdkshop/cart", "r1", an_order(shop, "r1", quantity=4), value_type=types["Order"])
    app.send("sdkshop/cart", "r1", an_order(shop, "r1", sku="fig", quantity=1), value_type=types["Order"])
    app.wait(timeout=60)
    state = app.state("sdkshop/cart", "r1")["order"]
    assert type(state) is shop.Order
    assert [(i.sku, i.quantity) for i in state.items] == [("apple", 4), ("fig", 1)]
    assert state.totals["eur"] == 24 and state.placed_at.seconds == 1_700_000_000
    assert app.state("local/receipts", "r1")["last"] == shop.Receipt(order_id="r1", item_count=5, status=1)
