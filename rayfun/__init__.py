"""rayfun: Stateful Functions on Ray.

Write functions as with the StateFun Python SDK, run them embedded in Ray shard actors (or remotely behind
HTTP), with state and messaging that survive failures exactly once.
"""

from .ray_auth import keep_token_auth as _keep_token_auth

_keep_token_auth()  # Ray's token authentication on, before anything here imports Ray (see ray_auth.py)

from ._version import __version__ as __version__
from .app import App, ApplicationNotFound, UnknownEgress, applications, connect, start
from .checkpoint import CheckpointError, CorruptCheckpointError, read_state
from .config import CheckpointConfig
from .context import Context
from .errors import RayfunError
from .functions import StatefulFunctions, ValueSpec
from .io import DEAD_LETTER_EGRESS, DeadLetter, Sink, SinkPartition, Source, SourcePartition
from .messages import (
    Address,
    EgressMessage,
    Message,
    egress_message_builder,
    kafka_egress_message,
    kinesis_egress_message,
    message_builder,
)
from .module_yaml import load_module
from .remote import HttpEndpoint, RemoteFunctionError, RequestReplyHandler, make_app, make_handler, serve
from .storage import StorageTimeout
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
from .usercode import UserCodeError

SdkAddress = Address  # the StateFun SDK's name for it

__all__ = [
    "DEAD_LETTER_EGRESS",
    "Address",
    "App",
    "ApplicationNotFound",
    "BoolType",
    "CheckpointConfig",
    "CheckpointError",
    "Context",
    "CorruptCheckpointError",
    "DeadLetter",
    "DoubleType",
    "EgressMessage",
    "FloatType",
    "HttpEndpoint",
    "IntType",
    "LongType",
    "Message",
    "RayfunError",
    "RemoteFunctionError",
    "RequestReplyHandler",
    "SdkAddress",
    "Sink",
    "SinkPartition",
    "Source",
    "SourcePartition",
    "StatefulFunctions",
    "StorageTimeout",
    "StringType",
    "Type",
    "TypeSerializer",
    "UnknownEgress",
    "UserCodeError",
    "ValueSpec",
    "applications",
    "connect",
    "egress_message_builder",
    "kafka_egress_message",
    "kinesis_egress_message",
    "load_module",
    "make_app",
    "make_handler",
    "make_json_type",
    "make_protobuf_type",
    "message_builder",
    "read_state",
    "serve",
    "simple_type",
    "start",
]
