"""Remote functions: StateFun's request-reply protocol (v3) over HTTP, both ways.

- calling functions served elsewhere (any StateFun SDK): ``HttpEndpoint`` says where and how,
  ``RemoteFunctionClient`` makes the calls (the runtime uses it; users only declare endpoints);
- serving rayfun's own ``StatefulFunctions`` to a StateFun runtime (rayfun's or Flink's): ``serve``,
  ``make_app`` (aiohttp) or ``RequestReplyHandler`` (any web server, as with the SDK).

The wire format lives in ``rayfun.remote.protocol``; module.yaml parsing in ``rayfun.module_yaml``.
"""

from .client import RemoteFunctionClient, RemoteFunctionError
from .endpoint import HttpEndpoint
from .serve import RequestReplyHandler, make_app, make_handler, serve

__all__ = [
    "HttpEndpoint",
    "RemoteFunctionClient",
    "RemoteFunctionError",
    "RequestReplyHandler",
    "make_app",
    "make_handler",
    "serve",
]
