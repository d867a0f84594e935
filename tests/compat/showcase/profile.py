"""``UserProfile`` (showcase.proto) as a message class, without generated code.

A ``_pb2`` that today's protoc writes does not import under the SDK's protobuf 3.x, and one generated at test
time would not import in the Ray workers. So the descriptor of showcase.proto is built here with
``descriptor_pb2`` (the same in protobuf 3.x and later), in a pool of its own; the test compares it with what
protoc makes of showcase.proto."""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "rayfun.showcase"
FIELDS = ("name", "favorite_ice_cream", "favorite_tv_show")


def file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="showcase.proto", package=PACKAGE, syntax="proto3")
    message = file.message_type.add(name="UserProfile")
    for number, name in enumerate(FIELDS, start=1):
        camel = name.split("_")[0] + "".join(part.title() for part in name.split("_")[1:])
        message.field.add(
            name=name,
            number=number,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
            json_name=camel,
        )
    return file


def _message_class(full_name: str):
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_descriptor())
    descriptor = pool.FindMessageTypeByName(full_name)
    if hasattr(message_factory, "GetMessageClass"):  # protobuf 4.21 and later
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)  # protobuf 3.x


UserProfile = _message_class(f"{PACKAGE}.UserProfile")
