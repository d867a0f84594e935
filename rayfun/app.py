"""Starting and talking to an application: ``app = rayfun.start(functions, shards=2)``, or attaching to
one started elsewhere on the same Ray cluster: ``app = rayfun.connect("fraud")``.

The same program runs in a notebook, under plain ``python`` (a local Ray is started when none is
running) and under ``ray job submit`` (``ray.init()`` then joins the job's cluster). Every actor of an
application is named ``rayfun:<name>/<role>`` in Ray's ``rayfun`` namespace (``coordinator``,
``shard-3``, ``standby-1``), so that the dashboard shows them and any driver finds them.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import ray

from .config import CheckpointConfig
from .errors import RayfunError
from .functions import StatefulFunctions
from .io import DEAD_LETTER_EGRESS, Sink, Source
from .logs import DEFAULT_LEVEL, parse_level
from .messages import Message, to_message
from .ray_auth import keep_token_auth
from .runtime.coordinator import STOP_TIMEOUT_S, AppConfig, Coordinator
from .runtime.coordinator.config import NAMESPACE, AppLayout, actor_name
from .runtime.coordinator.fleet import on_this_node
from .runtime.metrics import SHARD_METRICS, function_rows
from .runtime.partitioning import DEFAULT_KEY_GROUPS, Partitioner
from .runtime.registry import TypeRegistry
from .types import Type, display_value
from .usercode import UserCode, user_code_error

log = logging.getLogger("rayfun")


class UnknownEgress(RayfunError, ValueError):
    """``app.egress(id)`` of an egress that nothing emitted to and nothing declares (likely a typo)."""


def _get(refs: Any, timeout: float | None = None) -> Any:
    """``ray.get``, except that an error raised in the application's actors reaches the caller as itself
    (rayfun's own exception, or the cause's own type, with its message), not as a ``RayTaskError``
    wrapping a remote traceback (which Ray has logged already)."""
    try:
        return ray.get(refs, timeout=timeout)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
            raise cause from None
        raise


__all__ = ["App", "ApplicationNotFound", "UnknownEgress", "applications", "connect", "start"]


class ApplicationNotFound(RayfunError, LookupError):
    """No application of that name runs on the Ray cluster (or it has stopped)."""


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
    ...), ``egresses`` are sinks keyed by their id. With no sink declared at all (here or in ``module``), every
    egress is kept in memory and read with ``app.egress(id)``; once any is declared, a record sent to an id
    that none declares is a dead letter (``rayfun/dead-letters``) naming it, so a typo does not go unseen. ``shard_options`` go to Ray's ``.options()`` of every shard actor (e.g.
    ``{"num_cpus": 1}`` to reserve a core each). ``standby`` keeps one more, idle shard actor (with the same
    options) ready to replace a shard that dies: a recovery then starts no process, which saves about a second.
    ``ray_init`` is passed to ``ray.init`` when no Ray is running yet. ``module`` is a StateFun module.yaml (a path
    or its text): its endpoints, ingresses and egresses are added to the ones given here. ``name`` names the
    application (default: a new ``app-xxxxxx``): its actors are ``rayfun:<name>/coordinator``,
    ``.../shard-N`` and ``.../standby-K`` in Ray's ``rayfun`` namespace, and ``rayfun.connect(name)`` or
    ``rayfun status NAME`` find it from any driver on the cluster; one name runs once per cluster. Shards
    are spread over the cluster's nodes unless ``shard_options`` place them (``scheduling_strategy``,
    ``resources``); the coordinator stays on the driver's node. ``log_level``
    is the level of the ``rayfun`` logger in the actors (default ``$RAYFUN_LOG_LEVEL`` or INFO); rayfun
    never configures a worker's root logger. The actors import the application's modules themselves: ship
    packages the workers lack with the job, ``ray.init(runtime_env={"py_modules": [path]})`` (or
    ``ray_init={"runtime_env": ...}`` here); a module they cannot import is a ``rayfun.UserCodeError``
    naming it (see docs/usercode.md).

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
    name = name or f"app-{uuid.uuid4().hex[:6]}"
    _claim(name)
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
    code = UserCode.pack(config)  # each actor loads it itself, to report a missing module (rayfun.usercode)
    options: dict[str, Any] = {
        "num_cpus": 0,
        "max_concurrency": 1000,
        "name": actor_name(name, "coordinator"),
        "namespace": NAMESPACE,
        # on the driver's node (under ray job submit: the head's): a worker node that dies takes shards
        # with it, which a recovery replaces, but never the coordinator
        "scheduling_strategy": on_this_node(),
    }
    coordinator = ray.remote(Coordinator).options(**options).remote(code)
    try:
        # Ray types the handle as ActorHandle | type[Coordinator]; an actor method's .remote is made at runtime
        _get(coordinator.start.remote())  # type: ignore[union-attr]
    except BaseException as exc:
        ray.kill(coordinator)  # type: ignore[arg-type]
        error = user_code_error(exc, driver=True)
        if error is not None:
            raise error from None  # one line naming the module and the fix, not Ray's nested traceback
        raise
    return App(coordinator, owner=True)


def _claim(name: str) -> None:
    """Refuse a name that a running application has; take over the name of one that has stopped."""
    try:
        existing = ray.get_actor(actor_name(name, "coordinator"), namespace=NAMESPACE)
    except ValueError:
        return
    try:
        state = _get(existing.info.remote(), timeout=10)["state"]
    except Exception:  # dead or stuck: its name is free once it is gone
        state = "unknown"
    if state == "running" or state == "starting" or state == "stopping":
        raise RayfunError(
            f"an application named {name!r} is already {state} on this Ray cluster "
            f"(attach with rayfun.connect({name!r}), stop it with `rayfun stop {name}`, or pick another name)"
        )
    ray.kill(existing)


def connect(name: str, *, address: str | None = None) -> App:
    """Attach to the application ``name`` running on this Ray cluster (started elsewhere: ``rayfun run``, a
    job, another notebook): an ``App`` to send to, read state and egress from, checkpoint, rescale and
    stop. Joins the cluster at ``address`` (default ``RAY_ADDRESS`` or the local one) if this program is
    not connected yet. The application's functions need not be importable here."""
    if not ray.is_initialized():
        keep_token_auth()
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=False)
    try:
        coordinator = ray.get_actor(actor_name(name, "coordinator"), namespace=NAMESPACE)
    except ValueError:
        running = applications()
        raise ApplicationNotFound(
            f"no rayfun application named {name!r} on this Ray cluster "
            f"(running: {', '.join(running) if running else 'none'})"
        ) from None
    if _get(coordinator.info.remote())["state"] in ("stopping", "stopped"):  # its shards are gone
        raise ApplicationNotFound(f"the rayfun application {name!r} has stopped")
    return App(coordinator, owner=False)


def applications() -> list[str]:
    """The names of the rayfun applications on the Ray cluster this program is connected to."""
    suffix = "/coordinator"
    names = ray.util.list_named_actors(all_namespaces=True)
    return sorted(
        entry["name"][len("rayfun:") : -len(suffix)]
        for entry in names
        if entry.get("namespace") == NAMESPACE
        and entry["name"].startswith("rayfun:")
        and entry["name"].endswith(suffix)
    )


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
    """A running application: send messages in, read egress and state out, wait, checkpoint, rescale, stop.

    ``rayfun.start`` returns the one that owns the application (it ends with this driver); ``rayfun.connect``
    returns one attached to an application that another driver owns."""

    def __init__(self, coordinator, owner: bool = True) -> None:
        self._coordinator = coordinator
        self._owner = owner
        self._driver_id = uuid.uuid4().hex  # this driver's numbering of its sends (see DriverChannel)
        self._collector = _get(coordinator.collector_handle.remote())
        self._pending_refs: list = []
        self._calls = 0
        self._refresh(_get(coordinator.layout.remote()))

    def _refresh(self, layout: AppLayout) -> None:
        self._layout = layout
        self._partitioner = Partitioner(layout.key_groups, layout.shards)
        self._registry = TypeRegistry(layout.typenames, layout.endpoints)

    @property
    def name(self) -> str:
        """The application's name (``rayfun.connect(name)`` attaches to it)."""
        return self._layout.name

    @property
    def shards(self) -> int:
        return self._layout.shards

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
            ref = self._coordinator.send.remote(self._driver_id, self._calls, out, self._layout.shards)
            self._pending_refs.append(ref)
            self._calls += 1
        if len(self._pending_refs) > 64:
            self._settle()

    def _settle(self) -> None:
        """Wait for the sends in flight; learn a new shard count if one happened meanwhile (a rescale)."""
        counts = _get(self._pending_refs)
        self._pending_refs.clear()
        if any(count != self._layout.shards for count in counts):
            self._refresh(_get(self._coordinator.layout.remote()))

    # -- waiting ----------------------------------------------------------------------------------------

    def wait(self, timeout: float | None = 60.0, timers: bool = True) -> None:
        """Block until the application is idle: every message processed (and, with ``timers``, every delayed
        message delivered) and every finite source read to its end. Raises TimeoutError otherwise."""
        self._settle()
        verdict = _get(self._coordinator.wait_idle.remote(timeout, timers))
        if not verdict:
            hint = " (pass timers=False to ignore pending delayed messages)" if "timer" in verdict.reason else ""
            raise TimeoutError(f"the application did not become idle within {timeout} s: {verdict.reason}{hint}")

    # -- out --------------------------------------------------------------------------------------------

    def egress(
        self, egress_id: str, wait: bool = True, timeout: float | None = 60.0, timers: bool = False
    ) -> list[Any]:
        """Records emitted so far to an in-memory egress, decoded where the type is known.

        ``egress_id`` is the egress typename (``example/greetings``) or just its name (``greetings``) when
        that is unambiguous; an id that no function has emitted to and no sink declares raises
        ``UnknownEgress`` naming the known ones (a typo would otherwise read as "nothing yet"). With
        ``wait`` (default) it first waits until the application is idle and publishes what is pending
        (with checkpoints: takes one, since exactly-once records are published when their checkpoint
        completes); without, it shows what has been published so far. Delayed messages (``send_after``)
        still pending do not keep an application from being idle: ``timers=True`` waits for them to fire
        too (and for what they cause), so records they lead to are in the answer.
        """
        if wait:
            self.wait(timeout=timeout, timers=timers)
            _get(self._coordinator.flush.remote())
        egress_id = self._resolve_egress(egress_id)
        records = _get(self._collector.records.remote(egress_id))
        if not records:
            known = self._known_egresses()
            if egress_id not in known:
                raise UnknownEgress(
                    f"no function has emitted to egress {egress_id!r} and no sink declares it; "
                    f"known egresses: {sorted(known) or 'none yet'}"
                )
        return [display_value(vtype, payload) for vtype, payload in records]

    def _known_egresses(self) -> set[str]:
        ids = set(_get(self._collector.egress_ids.remote()))
        ids.update(self._layout.sink_ids)
        ids.add(DEAD_LETTER_EGRESS)
        return ids

    def _resolve_egress(self, egress_id: str) -> str:
        if "/" in egress_id:
            return egress_id
        matches = sorted(i for i in self._known_egresses() if i.rpartition("/")[2] == egress_id)
        if len(matches) > 1:
            raise ValueError(f"egress name {egress_id!r} is ambiguous: {matches}")
        return matches[0] if matches else egress_id

    def state(
        self, typename: str, id: str, wait: bool = True, timeout: float | None = 60.0, timers: bool = False
    ) -> dict[str, Any]:
        """The current state of one instance, ``{state name: value}`` (empty state: ``{}``); ``wait`` and
        ``timers`` as for ``egress``."""
        if wait:
            self.wait(timeout=timeout, timers=timers)
        shards = _get(self._coordinator.shard_handles.remote())  # they change after a rollback or a rescale
        owner = Partitioner(self._layout.key_groups, len(shards)).shard_of(typename, id)
        return _get(shards[owner].get_state.remote(typename, id))

    def checkpoint(self) -> int:
        """Take a checkpoint now and return its id once it is complete (needs ``checkpoint_dir``)."""
        return _get(self._coordinator.checkpoint.remote())

    def info(self) -> dict:
        """Name, state, shards, generation (rollbacks so far), last complete checkpoint, recoveries and the
        last one's duration, rescales."""
        return _get(self._coordinator.info.remote())

    def rescale(self, shards: int) -> int | None:
        """Change the number of shards while the application runs, without a restart: a checkpoint, then
        every shard restored from it at the new count (exactly once throughout). Returns that checkpoint's
        id. Needs checkpoints; a failed rescale raises and leaves the application as it was."""
        self._settle()
        checkpoint = _get(self._coordinator.rescale.remote(shards))
        self._refresh(_get(self._coordinator.layout.remote()))
        return checkpoint

    def metrics(self, by_shard: bool = False) -> list[dict]:
        """What each function type did, as a tidy table (one row per type; ``by_shard``: per shard and
        type, with a ``shard`` column): ``invocations`` (messages handed to it), ``messages_out``,
        ``egress``, ``dead_letters``, ``backlog`` (messages a remote type holds) and ``mean_latency_ms``
        (embedded: per call; remote: per request). Counts are of work done since each shard actor started,
        so work redone after a rollback counts again. ``pandas.DataFrame(app.metrics())`` or
        ``pyarrow.Table.from_pylist(...)`` makes it a frame. The same figures reach Ray's metrics
        (Prometheus, Grafana: see docs/metrics.md)."""
        statuses = self._statuses()
        if not by_shard:
            return function_rows(statuses)
        return [{"shard": st["index"], **row} for st in statuses for row in function_rows([st])]

    def shard_metrics(self) -> list[dict]:
        """One row per shard, for operators: where it runs and what it holds (``processed``, ``ingested``,
        ``backlog``, ``timers``, ``egress``, ``dead_letters``, remote requests and failures, the rollback
        ``generation`` and checkpoint ``epoch``, ``failure``: why it asks for a rollback, or None)."""
        return [{"shard": st["index"], **{key: st.get(key) for key in SHARD_METRICS}} for st in self._statuses()]

    def _statuses(self) -> list[dict]:
        """Every live shard's full status, the runtime's internals included (tests and diagnostics)."""
        return _get(self._coordinator.statuses.remote())

    # -- lifecycle --------------------------------------------------------------------------------------

    def stop(self, savepoint: bool = False) -> int | None:
        """Stop the shards and the coordinator (sinks are flushed and closed). With ``savepoint``, first a
        checkpoint with the sources paused, whose id is returned: starting the application again with the
        same checkpoint directory resumes exactly there (a failed savepoint raises, and nothing stops).
        An attached ``App`` (``rayfun.connect``) stops the application too; its owner then sees it stopped."""
        if self._coordinator is None:
            return None
        if self._pending_refs:
            self._settle()
        saved = None
        try:
            saved = _get(self._coordinator.stop.remote(savepoint), timeout=STOP_TIMEOUT_S + 60)
        except ray.exceptions.GetTimeoutError:  # the shards it owns die with it (Ray's fate sharing)
            log.warning("the coordinator did not stop in time: killing it and its shards")
            ray.kill(self._coordinator)
        except ray.exceptions.RayActorError:  # stopped (and ended) already, or it died meanwhile
            if savepoint:
                log.warning("the application ended before it took the savepoint: none was taken")
        else:
            if self._owner:
                ray.kill(self._coordinator)
            else:  # the owning driver waits for this before it exits (see Coordinator.stop_answered)
                try:
                    _get(self._coordinator.answer_received.remote(), timeout=10)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    pass
        self._coordinator = None
        return saved

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
