"""Function runners: how a shard invokes the functions of its key groups.

``embedded`` runs Python functions inside the shard (the hot path); ``remote`` speaks StateFun's
request-reply protocol to an HTTP endpoint. Both reach the shard only through ``RunnerServices``
(``rayfun.runtime.services``) and are handed mailbox rows by the shard's processing loop.
"""

from .embedded import EmbeddedFunction
from .remote import RemoteFunction, RemoteSpec
from .state import ColumnState, FunctionState

__all__ = ["ColumnState", "EmbeddedFunction", "FunctionState", "RemoteFunction", "RemoteSpec"]
