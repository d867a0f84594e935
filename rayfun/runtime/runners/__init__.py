"""Function runners: how a shard invokes the functions of its key groups.

``embedded`` runs Python functions inside the shard (the hot path); ``remote`` speaks StateFun's
request-reply protocol to an HTTP endpoint. Both reach the shard only through ``RunnerServices``
(``rayfun.runtime.services``) and are handed mailbox rows by the shard's processing loop.
"""

from .embedded import EmbeddedFunction, FunctionState
from .remote import RemoteFunction, RemoteSpec

__all__ = ["EmbeddedFunction", "FunctionState", "RemoteFunction", "RemoteSpec"]
