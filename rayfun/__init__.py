"""rayfun: Stateful Functions on Ray.

Write functions as with the StateFun Python SDK, run them embedded in Ray shard actors (or remotely behind
HTTP), with state and messaging that survive failures exactly once.
"""

from .app import App, start
from .checkpoint import CorruptCheckpointError, read_state
from .context import Context
from .functions import StatefulFunctions, ValueSpec
from .io import DEAD_LETTER_EGRESS, DeadLetter, Sink, SinkPartition, Source, SourcePartition
from .module_yaml import load_module
from .remote import HttpEndpoint, RemoteFunctionError, make_app, make_handler, serve
from .messages import (
    Address,
    EgressMessage,
    Message,
    egress_message_builder,
    kafka_egress_message,
    kinesis_egress_message,
    message_builder,
)
from .types import (
    BoolType,
    DoubleType,
    FloatType,
    IntType,
    LongType,
    StringType,
    Type,
    TypeSerializer,
    make_json_type,
    make_protobuf_type,
    simple_type,
)

SdkAddress = Address  # the StateFun SDK's name for it

__all__ = [
    "start", "App", "StatefulFunctions", "ValueSpec", "Context", "Message", "EgressMessage", "Address",
    "SdkAddress", "message_builder", "egress_message_builder", "kafka_egress_message", "kinesis_egress_message",
    "Type", "TypeSerializer", "BoolType", "IntType", "LongType", "FloatType", "DoubleType", "StringType",
    "make_json_type", "make_protobuf_type", "simple_type", "Source", "SourcePartition", "Sink",
    "SinkPartition", "DeadLetter", "DEAD_LETTER_EGRESS", "read_state", "CorruptCheckpointError",
    "HttpEndpoint", "RemoteFunctionError", "serve", "make_app", "make_handler", "load_module",
]
