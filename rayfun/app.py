"""Starting and talking to an application: ``app = rayfun.start(functions, shards=2)``.

The same program runs in a notebook, under plain ``python`` (a local Ray is started when none is
running) and under ``ray job submit`` (``ray.init()`` then joins the job's cluster).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import ray

from .config import CheckpointConfig
from .functions import StatefulFunctions
from .io import Sink, Source
from .logs import DEFAULT_LEVEL, parse_level
from .messages import Message, to_message
from .ray_auth import keep_token_auth
from .runtime.coordinator import STOP_TIMEOUT_S, AppConfig, Coordinator
from .runtime.partitioning import DEFAULT_KEY_GROUPS, Partitioner
from .runtime.registry import TypeRegistry
from .types import Type, display_value

log = logging.getLogger("rayfun")

__all__ = ["App", "start"]


def start(
    functions: StatefulFunctions,
    *,
    shards: int = 2,
    ingresses: Sequence[Source] = (),
    egresses: Sequence[Sink] = (),
    endpoints: Sequence[Any] = (),
    key_groups: int = DEFAULT_KEY_GROUPS,
    checkpoint: CheckpointConfig | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_interval: float | None = 1.0,
    retain: int = 3,
    storage_options: dict | None = None,
    checkpoint_compression: str = "lz4",
    checkpoint_key: str | bytes | None = None,
    shard_options: dict | None = None,
    standby: bool = True,
    ray_init: dict | None = None,
    name: str | None = None,
    module: str | None = None,
    log_level: str = DEFAULT_LEVEL,
) -> App:
    """Start an application on Ray and return its handle.

    ``ingresses`` are sources (``rayfun.connectors.memory.MemorySource``, ``rayfun.connectors.kafka.KafkaSource``,
    ...), ``egresses`` are sinks keyed by their id; an egress that functions use but nobody declared is kept in
    memory and read with ``app.egress(id)``. ``shard_options`` go to Ray's ``.options()`` of every shard actor (e.g.
    ``{"num_cpus": 1}`` to reserve a core each). ``standby`` keeps one more, idle shard actor (with the same
    options) ready to replace a shard that dies: a recovery then starts no process, which saves about a second.
    ``ray_init`` is passed to ``ray.init`` when no Ray is running yet. ``module`` is a StateFun module.yaml (a path
    or its text): its endpoints, ingresses and egresses are added to the ones given here. ``name`` names the
    coordinator actor ``rayfun:<name>`` (for operators: it can be found with Ray's state API). ``log_level``
    is the level of the ``rayfun`` logger in the actors (default ``$RAYFUN_LOG_LEVEL`` or INFO); rayfun
    never configures a worker's root logger.

    With ``checkpoint=CheckpointConfig(dir=...)`` (see ``rayfun.CheckpointConfig``) state, timers, in-flight
    messages and source positions are checkpointed every ``interval`` seconds, egress is published exactly
    once, and a failed shard rolls everything back to the last complete checkpoint. Starting again with
    the same ``dir`` resumes there. The keywords ``checkpoint_dir``, ``checkpoint_interval``, ``retain``,
    ``storage_options``, ``checkpoint_compression`` and ``checkpoint_key`` are a shorthand for the same
    fields (not to be mixed with ``checkpoint=``).
    """
    if not isinstance(functions, StatefulFunctions):
        raise TypeError("start() takes a StatefulFunctions")
    if shards < 1:
        raise ValueError("shards must be >= 1")
    if module is not None:
        from .module_yaml import load_module

        spec = load_module(module)
        endpoints = [*endpoints, *spec.endpoints]
        ingresses = [*ingresses, *spec.ingresses]
        egresses = [*egresses, *spec.egresses]
    ids = [s.id for s in egresses]
    if len(set(ids)) != len(ids):
        raise ValueError(f"two egresses share an id: {ids}")
    loose = {
        "checkpoint_dir": (checkpoint_dir, None),
        "checkpoint_interval": (checkpoint_interval, 1.0),
        "retain": (retain, 3),
        "storage_options": (storage_options, None),
        "checkpoint_compression": (checkpoint_compression, "lz4"),
        "checkpoint_key": (checkpoint_key, None),
    }
    if checkpoint is None:
        checkpoint = CheckpointConfig(
            dir=checkpoint_dir,
            interval=checkpoint_interval,
            retain=retain,
            storage_options=dict(storage_options or {}),
            compression=checkpoint_compression,
            key=checkpoint_key,
        )
    elif mixed := [k for k, (value, default) in loose.items() if value != default]:
        raise TypeError(f"pass checkpoint=CheckpointConfig(...) or the keywords {mixed}, not both")
    checkpoint = checkpoint.resolved()
    level = logging.getLevelName(parse_level(log_level))  # an unknown level is refused before Ray starts
    if not ray.is_initialized():
        _init_ray(ray_init or {})
    config = AppConfig(
        functions=functions,
        shards=shards,
        key_groups=key_groups,
        endpoints=list(endpoints),
        sources=list(ingresses),
        sinks=list(egresses),
        shard_options=dict(shard_options or {}),
        standby=standby,
        checkpoint_dir=checkpoint.dir,
        checkpoint_interval=checkpoint.interval,
        checkpoint_options=checkpoint.store_options(),
        name=name,
        log_level=level,
    )
    options: dict[str, Any] = {"num_cpus": 0, "max_concurrency": 1000}
    if name:
        options["name"] = f"rayfun:{name}"
    coordinator = ray.remote(Coordinator).options(**options).remote(config)
    # Ray types the handle as ActorHandle | type[Coordinator]; an actor method's .remote is made at runtime
    ray.get(coordinator.start.remote())  # type: ignore[union-attr]
    return App(config, coordinator)


# ray.init arguments that only make sense when it starts a local Ray; joining a cluster rejects them
_LOCAL_ONLY = {
    "num_cpus",
    "num_gpus",
    "resources",
    "object_store_memory",
    "include_dashboard",
    "dashboard_host",
    "dashboard_port",
}


def _init_ray(options: dict) -> None:
    """``ray.init`` that lets one program run on a laptop and under ``ray job submit`` unchanged: when
    joining an existing cluster (``RAY_ADDRESS``, set by ``ray job submit``), local sizing is dropped."""
    keep_token_auth()  # see ray_auth.py
    if os.environ.get("RAY_ADDRESS") or options.get("address"):
        dropped = sorted(set(options) & _LOCAL_ONLY)
        if dropped:
            log.info("joining the Ray cluster at %s: ignoring %s", os.environ.get("RAY_ADDRESS"), dropped)
        options = {k: v for k, v in options.items() if k not in _LOCAL_ONLY}
    ray.init(**options)


class App:
    """A running application: send messages in, read egress and state out, wait, stop."""

    def __init__(self, config: AppConfig, coordinator) -> None:
        self._config = config
        self._coordinator = coordinator
        self._partitioner = Partitioner(config.key_groups, config.shards)
        self._registry = TypeRegistry(config.functions, config.endpoints)
        self._collector = ray.get(coordinator.collector_handle.remote())
        self._pending_refs: list = []
        self._calls = 0

    # -- in ---------------------------------------------------------------------------------------------

    def send(self, typename: str, id: str, value: Any, value_type: Type | None = None) -> None:
        """Send one message to ``typename``/``id`` (the type is inferred for int, float, str and bool)."""
        self.send_many([(typename, id, value)], value_type=value_type)

    def send_many(self, records: Iterable[Message | tuple[str, str, Any]], value_type: Type | None = None) -> None:
        """Send many messages, batched: one Ray call per shard."""
        out: dict[int, list[tuple]] = {}
        for record in records:
            m = to_message(record, value_type)
            if m.target_typename not in self._registry:
                raise ValueError(f"unknown function type {m.target_typename!r} (bound: {self._registry.describe()})")
            dest = self._partitioner.shard_of(m.target_typename, m.target_id)
            out.setdefault(dest, []).append((m.target_typename, m.target_id, None, m.value_type_name, m.payload))
        if out:  # through the coordinator, which re-sends them after a rollback until a checkpoint has them
            self._pending_refs.append(self._coordinator.send.remote(self._calls, out))
            self._calls += 1
        if len(self._pending_refs) > 64:
            ray.get(self._pending_refs)
            self._pending_refs.clear()

    # -- waiting ----------------------------------------------------------------------------------------

    def wait(self, timeout: float | None = 60.0, timers: bool = True) -> None:
        """Block until the application is idle: every message processed (and, with ``timers``, every delayed
        message delivered) and every finite source read to its end. Raises TimeoutError otherwise."""
        ray.get(self._pending_refs)
        self._pending_refs.clear()
        if not ray.get(self._coordinator.wait_idle.remote(timeout, timers)):
            raise TimeoutError(
                f"the application did not become idle within {timeout} s "
                f"(pass timers=False to ignore pending delayed messages)"
            )

    # -- out --------------------------------------------------------------------------------------------

    def egress(self, egress_id: str, wait: bool = True, timeout: float | None = 60.0) -> list[Any]:
        """Records emitted so far to an in-memory egress, decoded where the type is known.

        ``egress_id`` is the egress typename (``example/greetings``) or just its name (``greetings``) when
        that is unambiguous. With ``wait`` (default) it first waits until the application is idle and
        publishes what is pending (with checkpoints: takes one, since exactly-once records are published
        when their checkpoint completes); without, it shows what has been published so far.
        """
        if wait:
            self.wait(timeout=timeout, timers=False)
            ray.get(self._coordinator.flush.remote())
        egress_id = self._resolve_egress(egress_id)
        records = ray.get(self._collector.records.remote(egress_id))
        return [display_value(vtype, payload) for vtype, payload in records]

    def _resolve_egress(self, egress_id: str) -> str:
        if "/" in egress_id:
            return egress_id
        ids = set(ray.get(self._collector.egress_ids.remote()))
        ids.update(s.id for s in self._config.sinks)
        matches = sorted(i for i in ids if i.rpartition("/")[2] == egress_id)
        if len(matches) > 1:
            raise ValueError(f"egress name {egress_id!r} is ambiguous: {matches}")
        return matches[0] if matches else egress_id

    def state(self, typename: str, id: str, wait: bool = True, timeout: float | None = 60.0) -> dict[str, Any]:
        """The current state of one instance, ``{state name: value}`` (empty state: ``{}``)."""
        if wait:
            self.wait(timeout=timeout, timers=False)
        shards = ray.get(self._coordinator.shard_handles.remote())  # they change after a rollback
        return ray.get(shards[self._partitioner.shard_of(typename, id)].get_state.remote(typename, id))

    def checkpoint(self) -> int:
        """Take a checkpoint now and return its id once it is complete (needs ``checkpoint_dir``)."""
        return ray.get(self._coordinator.checkpoint.remote())

    def info(self) -> dict:
        """Generation (rollbacks so far), last complete checkpoint, recoveries and the last one's duration."""
        return ray.get(self._coordinator.info.remote())

    def metrics(self) -> list[dict]:
        """Per-shard counters: processed, dead letters, egress records, timers, backlog, ..."""
        return ray.get(self._coordinator.statuses.remote())

    # -- lifecycle --------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the shards and the coordinator (sinks are flushed and closed)."""
        if self._coordinator is None:
            return
        try:
            ray.get(self._coordinator.stop.remote(), timeout=STOP_TIMEOUT_S + 30)
        except ray.exceptions.GetTimeoutError:  # the shards it owns die with it (Ray's fate sharing)
            log.warning("the coordinator did not stop in time: killing it and its shards")
        finally:
            ray.kill(self._coordinator)
            self._coordinator = None

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
