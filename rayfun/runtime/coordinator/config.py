"""The application's configuration as the coordinator receives it from ``rayfun.app.run``."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...functions import StatefulFunctions
from ...io import Sink, Source

__all__ = ["NAMESPACE", "AppConfig", "AppLayout", "actor_name"]

NAMESPACE = "rayfun"  # the Ray namespace of every named rayfun actor: any driver on the cluster finds them


def actor_name(app: str | None, role: str) -> str:
    """``rayfun:<app>/<role>``: how an actor shows in Ray's dashboard and ``ray list actors``."""
    return f"rayfun:{app or 'rayfun'}/{role}"


@dataclass
class AppConfig:
    functions: StatefulFunctions
    shards: int = 2
    key_groups: int = 1024
    endpoints: list = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    sinks: list[Sink] = field(default_factory=list)
    shard_options: dict = field(default_factory=dict)
    standby: bool = True  # keep an idle shard actor ready to replace one that dies
    checkpoint_dir: str | None = None
    checkpoint_interval: float | None = 1.0
    checkpoint_options: dict = field(default_factory=dict)
    name: str | None = None  # the application's name (tags its metrics)
    log_level: str = "INFO"  # of the rayfun logger in the coordinator and shard actors (see rayfun.logs)


@dataclass(frozen=True)
class AppLayout:
    """What a driver needs to talk to a running application: no function code, so that a driver that
    attaches (``rayfun.connect``, the CLI) need not import the application's modules."""

    name: str
    shards: int
    key_groups: int
    typenames: tuple[str, ...]  # the embedded functions
    endpoints: tuple  # the remote functions' endpoints
    sink_ids: tuple[str, ...]
    checkpoint_dir: str | None
