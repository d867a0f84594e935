"""``rayfun run`` / ``status`` / ``stop`` / ``rescale``: applications on a Ray cluster.

``rayfun run`` is the application's driver: it starts it (embedded functions from ``package.module:attr``,
or a StateFun ``module.yaml`` of remote functions and I/O, no Python needed), shows a status line, and on
SIGTERM or Ctrl-C stops it with a savepoint, so that ``rayfun run`` again resumes exactly there. The other
commands attach to a running application by name from any shell that reaches the same cluster.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import time
from typing import Any

import click

from ..logs import DEFAULT_LEVEL
from .errors import CliError
from .inspect import parse_storage_options

__all__ = ["COMMANDS"]

_address = click.option(
    "--address",
    envvar="RAY_ADDRESS",
    default=None,
    help="The Ray cluster (default: $RAY_ADDRESS, else the one running on this machine).",
)


def _join(address: str | None) -> None:
    """Join a running Ray cluster, or say in one line that there is none (Ray itself would retry a dead
    address for minutes)."""
    import ray

    from ..ray_auth import keep_token_auth

    keep_token_auth()
    resolved = _reachable(address)
    ray.init(address=resolved, log_to_driver=False, logging_level=logging.ERROR)


def _reachable(address: str | None) -> str:
    """The cluster's GCS address, once something answers there (within a few seconds)."""
    import socket

    from ray._private.services import canonicalize_bootstrap_address

    hint = "start one with `ray start --head`, or pass --address (rayfun run prints its Ray's address)"
    try:
        resolved = canonicalize_bootstrap_address(address or "auto")
    except ConnectionError as exc:
        raise CliError(f"no Ray cluster found on this machine: {hint}") from exc
    if not resolved:
        raise CliError(f"no Ray cluster at {address}: {hint}")
    host, _, port = resolved.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except (OSError, ValueError) as exc:
        raise CliError(f"no Ray cluster answers at {resolved} ({exc}): {hint}") from exc
    return resolved


def _connect(name: str, address: str | None):
    from .. import ApplicationNotFound, connect

    _join(address)
    try:
        return connect(name)
    except ApplicationNotFound as exc:
        raise CliError(str(exc)) from exc


# -- run ------------------------------------------------------------------------------------------------


def load_application(target: str) -> tuple[Any, str | None]:
    """``(functions, module.yaml path)`` for what ``rayfun run`` was given: a module.yaml (remote functions
    only) or ``package.module:attr`` naming a ``StatefulFunctions`` (imported from the working directory)."""
    from .. import StatefulFunctions

    if target.endswith((".yaml", ".yml")) or os.path.isfile(target):
        if not os.path.isfile(target):
            raise CliError(f"{target}: no such file")
        return StatefulFunctions(), target
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise CliError(f"{target!r}: expected a module.yaml or package.module:functions")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r} (from {os.getcwd()}): {exc}") from exc
    functions = getattr(module, attr, None)
    if not isinstance(functions, StatefulFunctions):
        raise CliError(f"{target}: {attr!r} is {type(functions).__name__}, not a rayfun.StatefulFunctions")
    return functions, None


class _Stop:
    """SIGTERM / Ctrl-C: the first asks for a stop with a savepoint, a second for a stop without one."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, signum, frame) -> None:
        self.requests += 1
        if self.requests > 1:
            click.echo("\nrayfun: stopping without a savepoint", err=True)

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self)
        signal.signal(signal.SIGINT, self)


def status_line(info: dict, metrics: list[dict], rate: float) -> str:
    """One line for a terminal: throughput, backlog, the last checkpoint."""
    backlog = sum(m.get("backlog", 0) for m in metrics)
    age = info.get("last_checkpoint_age_s")
    checkpoint = "no checkpoints" if info.get("checkpoint_dir") is None else f"checkpoint {info.get('last_checkpoint')}"
    if age is not None and info.get("last_checkpoint") is not None:
        checkpoint += f" ({age:.0f} s ago)"
    extra = f", recoveries {info['recoveries']}" if info.get("recoveries") else ""
    return (
        f"{info.get('name')}: {info.get('state')}, {info.get('shards')} shards, {rate:,.0f} msgs/s, "
        f"backlog {backlog:,}, {checkpoint}{extra}"
    )


@click.command("run")
@click.argument("target", metavar="APP")
@click.option("--name", help="The application's name (default: from APP). `rayfun status NAME` finds it.")
@click.option("--shards", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--checkpoint-dir",
    metavar="URL",
    help="Where checkpoints go: a directory or s3://... (default: ./checkpoints/NAME). A run resumes there.",
)
@click.option("--no-checkpoints", is_flag=True, help="Run without checkpoints (no exactly-once, no savepoint).")
@click.option("--checkpoint-interval", type=float, default=1.0, show_default=True, help="Seconds.")
@click.option("--storage-option", multiple=True, metavar="KEY=VALUE", help="For fsspec (e.g. endpoint_url=...).")
@click.option("--module", "module_yaml", metavar="FILE", help="A module.yaml whose endpoints and I/O are added.")
@click.option("--num-cpus", type=int, help="CPUs of the local Ray this starts when no cluster is running.")
@click.option("--log-level", default=None, help="Of the rayfun logger in the actors (default INFO).")
@_address
@click.pass_context
def run(
    ctx: click.Context,
    target: str,
    name: str | None,
    shards: int,
    checkpoint_dir: str | None,
    no_checkpoints: bool,
    checkpoint_interval: float,
    storage_option: tuple[str, ...],
    module_yaml: str | None,
    num_cpus: int | None,
    log_level: str | None,
    address: str | None,
) -> None:
    """Run APP until stopped: a StateFun module.yaml, or package.module:functions (embedded).

    SIGTERM or Ctrl-C stops it with a savepoint (sources paused, in-flight work captured, egress
    published) and exits 0; running it again with the same checkpoint directory resumes exactly there."""
    import ray

    import rayfun

    functions, module = load_application(target)
    if module_yaml is not None:
        if module is not None:
            raise CliError("APP is a module.yaml already: --module adds one to embedded functions")
        module = module_yaml
    name = name or _default_name(target)
    if not no_checkpoints and checkpoint_dir is None:
        checkpoint_dir = os.path.join("checkpoints", name)
    stop = _Stop()
    options: dict[str, Any] = {"log_to_driver": ctx.obj.get("verbose", False)}
    if address:
        options["address"] = address
    if num_cpus is not None:
        options["num_cpus"] = num_cpus
    app = rayfun.start(
        functions,
        shards=shards,
        module=module,
        name=name,
        checkpoint=None
        if no_checkpoints
        else rayfun.CheckpointConfig(
            dir=checkpoint_dir, interval=checkpoint_interval, storage_options=parse_storage_options(storage_option)
        ),
        ray_init=options,
        log_level=log_level or DEFAULT_LEVEL,
    )
    stop.install()  # after ray.init, which sets handlers of its own
    resumed = app.info()["last_checkpoint"]
    click.echo(
        f"rayfun: {name} running ({shards} shards"
        + (f", checkpoints in {checkpoint_dir}" if checkpoint_dir and not no_checkpoints else "")
        + (f", resumed from checkpoint {resumed}" if resumed is not None else "")
        + f", Ray at {ray.get_runtime_context().gcs_address}); stop with Ctrl-C, SIGTERM or `rayfun stop {name}`",
        err=True,
    )
    try:
        ended = _watch(app, stop)
    except ray.exceptions.RayActorError as exc:
        raise CliError(f"{name}: its coordinator died ({str(exc).splitlines()[0]}); run again to resume") from exc
    if ended == "stopped elsewhere":
        click.echo(f"rayfun: {name} was stopped (rayfun stop)", err=True)
        return
    savepoint = not no_checkpoints and stop.requests < 2
    click.echo(f"rayfun: stopping {name}" + (" with a savepoint" if savepoint else ""), err=True)
    try:
        saved = app.stop(savepoint=savepoint)
    except rayfun.RayfunError as exc:
        app.stop()
        raise CliError(f"{exc}; stopped without it, a new run resumes from the newest complete checkpoint") from exc
    if saved is not None:
        click.echo(
            f"rayfun: savepoint: checkpoint {saved} in {checkpoint_dir}; `rayfun run` again resumes there", err=True
        )


def _default_name(target: str) -> str:
    base = os.path.basename(target).rsplit(".", 1)[0] if ":" not in target else target.partition(":")[0]
    name = base.replace("/", "-").replace(".", "-").replace("_", "-")
    return "module" if name in ("module", "") else name


def _await_stop_answer(app) -> None:
    """Another driver stopped the application: stay until it has the answer (the savepoint's id), for
    this process owns the coordinator, and its exit would end the coordinator before it could reply."""
    import ray

    from ..constants import STOP_TIMEOUT_S

    deadline = time.monotonic() + STOP_TIMEOUT_S + 30
    while time.monotonic() < deadline:
        try:
            info = app.info()
        except ray.exceptions.RayActorError:
            return
        if info["state"] == "stopped" and info.get("stop_answered"):
            return
        time.sleep(0.1)
    click.echo(f"rayfun: {info.get('name')}: the driver that stopped it did not confirm its answer in time", err=True)


def _watch(app, stop: _Stop) -> str:
    """Until a stop is asked for here ("signal") or the application was stopped by another driver."""
    tty = sys.stderr.isatty()
    last: tuple[float, int | None] = (time.monotonic(), None)
    while not stop.requests:
        time.sleep(0.2)
        now = time.monotonic()
        if now - last[0] < 1.0 and last[1] is not None:
            continue
        info = app.info()
        if info["state"] in ("stopping", "stopped"):
            _await_stop_answer(app)
            return "stopped elsewhere"
        if tty:
            metrics = app.shard_metrics()
            processed = sum(m.get("processed", 0) for m in metrics)
            rate = 0.0 if last[1] is None else max(0.0, (processed - last[1]) / (now - last[0]))
            click.echo("\r\x1b[2K" + status_line(info, metrics, rate), err=True, nl=False)
            last = (now, processed)
        else:
            last = (now, 0)
    if tty:
        click.echo("", err=True)
    return "signal"


# -- status, stop, rescale ------------------------------------------------------------------------------


@click.command("status")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="The application's info and per-shard metrics as JSON.")
@_address
def status(name: str | None, as_json: bool, address: str | None) -> None:
    """The state of application NAME (without NAME: the applications running on the cluster)."""
    import rayfun

    if name is None:
        _join(address)
        names = rayfun.applications()
        click.echo("\n".join(names) if names else "no rayfun applications are running on this cluster")
        return
    app = _connect(name, address)
    info, metrics = app.info(), app.shard_metrics()
    if as_json:
        click.echo(json.dumps({"info": info, "shards": metrics}, default=str))
        return
    click.echo(status_line(info, metrics, 0.0).replace(", 0 msgs/s", ""))
    headers = ("shard", "node", "processed", "backlog", "timers", "egress", "dead letters", "failure")
    rows = [
        (
            str(m["shard"]),
            (m.get("node") or "")[:12],
            f"{m.get('processed', 0):,}",
            f"{m.get('backlog', 0):,}",
            f"{m.get('timers', 0):,}",
            f"{m.get('egress', 0):,}",
            f"{m.get('dead_letters', 0):,}",
            m.get("failure") or "",
        )
        for m in sorted(metrics, key=lambda m: m["shard"])
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    if info.get("last_failure"):
        click.echo(f"last failure: {info['last_failure']}")


@click.command("stop")
@click.argument("name")
@click.option("--no-savepoint", is_flag=True, help="Stop at once, without a final checkpoint.")
@_address
def stop_command(name: str, no_savepoint: bool, address: str | None) -> None:
    """Stop application NAME, with a savepoint unless told otherwise (the next run resumes there)."""
    app = _connect(name, address)
    savepoint = not no_savepoint and app.info().get("checkpoint_dir") is not None
    saved = app.stop(savepoint=savepoint)
    if savepoint and saved is None:  # the coordinator ended before it answered (it died, or another stop won)
        click.echo(
            f"{name}: stopped, without a savepoint (the application ended before it could take one); "
            "a new run resumes from the newest complete checkpoint",
            err=True,
        )
        return
    click.echo(f"{name}: stopped" + (f" with a savepoint: checkpoint {saved}" if saved is not None else ""))


@click.command("rescale")
@click.argument("name")
@click.argument("shards", type=click.IntRange(min=1))
@_address
def rescale(name: str, shards: int, address: str | None) -> None:
    """Change the number of shards of running application NAME (a checkpoint, then the new layout)."""
    app = _connect(name, address)
    began = time.monotonic()
    checkpoint = app.rescale(shards)
    click.echo(f"{name}: {shards} shards (from checkpoint {checkpoint}, {time.monotonic() - began:.1f} s)")


COMMANDS: list[click.Command] = [run, status, stop_command, rescale]
