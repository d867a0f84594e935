"""A function written with the official SDK whose state and messages are protobuf types (tests/remote/protos/
shop.proto). Runs in the SDK's interpreter, whose protobuf (3.x) cannot import code that a new protoc
generates, so the message classes are built here from the serialized descriptors the test writes.

``python sdk_protobuf_functions.py DESCRIPTOR_SET_FILE PORT``
"""

import sys

from aiohttp import web
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from statefun import RequestReplyHandler, StatefulFunctions, ValueSpec, make_protobuf_type, message_builder


def classes(path):
    files = descriptor_pb2.FileDescriptorSet()
    with open(path, "rb") as f:
        files.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    factory = message_factory.MessageFactory(pool)
    return [factory.GetPrototype(pool.FindMessageTypeByName(f"rayfun.test.shop.{n}")) for n in ("Order", "Receipt")]


OrderCls, ReceiptCls = classes(sys.argv[1])
Order, Receipt = make_protobuf_type(OrderCls), make_protobuf_type(ReceiptCls)
functions = StatefulFunctions()


@functions.bind("sdkshop/cart", specs=[ValueSpec("order", Order)])
def cart(context, message):
    order = message.as_type(Order)
    kept = context.storage.order or OrderCls(id=order.id)
    kept.items.extend(order.items)
    for k, v in order.totals.items():
        kept.totals[k] = kept.totals[k] + v
    kept.status = order.status
    kept.placed_at.CopyFrom(order.placed_at)
    context.storage.order = kept
    receipt = ReceiptCls(order_id=kept.id, item_count=sum(i.quantity for i in kept.items), status=kept.status)
    context.send(message_builder("local/receipts", kept.id, value=receipt, value_type=Receipt))


handler = RequestReplyHandler(functions)


async def handle(request):
    return web.Response(body=await handler.handle_async(await request.read()), content_type="application/octet-stream")


app = web.Application()
app.add_routes([web.post("/statefun", handle)])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None)
