"""A seeded fault campaign against rayfun's exactly-once guarantee.

A seed picks a scenario: how work comes in (a ``MemorySource``, ``app.send_many`` from a driver thread, or
both), which functions run (the embedded interpreter, plus in some seeds a remote copy served by the
official StateFun SDK that the embedded one messages both ways), 2-3 shards, a checkpoint interval, where
checkpoints live (a local directory or S3 through a loopback proxy in front of moto_server), which egress
(in memory or a per-epoch file egress), and a few faults at seeded moments while work is in flight: shard
kills (``ray.kill``, SIGKILL, bursts, during a restore, during a checkpoint), storage outages (on S3: refused,
or silent with requests in flight, see tests/support/proxy.py), a damaged
newest checkpoint, a failing remote function, coordinator and driver deaths. The oracle then compares the
final state of every instance and the egress multiset with what the workload implies, exactly (the only
allowance: records of an epoch whose checkpoint was damaged may be published again, since that checkpoint
no longer exists), and checks that checkpoints resume after every storage, damage and remote fault.

``run_scenario(seed, servers)`` runs one seed and returns a ``Result``; ``bench/chaos.py`` runs many.
``python -m tests.chaos.campaign driver SPEC`` is the driver program that driver-death scenarios SIGKILL.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace

from rayfun.constants import STORAGE_CALL_TIMEOUT_S
from tests.chaos.workload import SCRATCH_TTL, let_scratch_expire
from tests.support.proxy import TcpProxy
from tests.support.servers import MOTO_BUCKET, free_port, s3_options, start_moto, stop, wait_for_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EMBEDDED = "chaos/interpreter"
TALLY = "chaos/tally"  # one int per embedded instance, summing its increments: the slot runner's kind (ColumnState)
REMOTE = "chaosr/interpreter"
EGRESS = "chaos/out"
COMMANDS = "chaos/Commands"
BUCKET = MOTO_BUCKET
RAY_NAMESPACE = "rayfun-campaign"

KINDS = (
    "kill",
    "sigkill",
    "kill-burst",
    "kill-restore",
    "kill-checkpoint",
    "storage-outage",
    "damage",
    "remote-outage",
    "coordinator-kill",
    "driver-kill",
)
PROCESS_KINDS = ("coordinator-kill", "driver-kill")
HEAL_TIMEOUT_S = 20.0  # checkpoints must resume this soon after a storage, damage or remote fault heals
RECOVERY_TIMEOUT_S = 30.0


# -- the workload ---------------------------------------------------------------------------------------


def run_commands(context, commands: list, api) -> None:
    """The interpreter, shared verbatim by the embedded function and the SDK-served one (its source is
    shipped to the SDK server), so both types behave identically. ``api`` holds the SDK's builders."""
    for command in commands:
        kind = command[0]
        if kind == "inc":
            context.storage.count = (context.storage.count or 0) + 1
            context.storage.scratch = 1
        elif kind == "send":
            context.send(api.message_builder(command[1], str(command[2]), value=command[3], value_type=api.Commands))
        elif kind == "after":
            context.send_after(
                api.timedelta(milliseconds=command[4]),
                api.message_builder(command[1], str(command[2]), value=command[3], value_type=api.Commands),
            )
        elif kind == "cancelled":  # a delayed increment cancelled at once: it must never land
            context.send_after(
                api.timedelta(milliseconds=200),
                api.message_builder(command[1], str(command[2]), value=[["inc"]], value_type=api.Commands),
                cancellation_token=command[3],
            )
            context.cancel_delayed_message(command[3])
        elif kind == "egress":
            context.send_egress(api.egress_message_builder(api.EGRESS, command[1], api.StringType))


def build_functions():
    """The embedded interpreter (the remote one is served by the SDK server, see ``SDK_SERVER``)."""
    from rayfun import (
        IntType,
        StatefulFunctions,
        StringType,
        ValueSpec,
        egress_message_builder,
        make_json_type,
        message_builder,
    )

    api = SimpleNamespace(
        message_builder=message_builder,
        egress_message_builder=egress_message_builder,
        StringType=StringType,
        Commands=make_json_type(COMMANDS),
        timedelta=timedelta,
        EGRESS=EGRESS,
    )
    functions = StatefulFunctions()

    @functions.bind(
        EMBEDDED,
        specs=[
            ValueSpec("count", IntType),
            ValueSpec("scratch", IntType, expire_after_write=SCRATCH_TTL),
        ],
    )
    def interpreter(context, message):
        commands = message.as_type(api.Commands)
        run_commands(context, commands, api)
        increments = sum(1 for command in commands if command[0] == "inc")
        if increments:  # the tally at the same id must end equal to the count
            context.send(message_builder(TALLY, context.address.id, int_value=increments))

    @functions.bind(TALLY, specs=[ValueSpec("total", IntType)])
    def tally(context, message):
        context.storage.total = (context.storage.total or 0) + message.as_int()

    return functions


class Workload:
    """Seeded command trees over one or two function types, with the exact expected outcome: increments
    per instance and the egress multiset (unique labels). Modelled on ``workload.Generator``; roots are
    mostly wrapped in a delayed message of up to ``spread_ms``, so work stays in flight for that long
    however fast the records are read."""

    def __init__(
        self,
        seed: int,
        types: tuple[str, ...],
        instances: int,
        roots: int,
        spread_ms: int,
        depth: int = 4,
        remote_share: float = 0.3,
    ):
        self.rng = random.Random(seed)
        self.seed, self.types, self.instances, self.depth = seed, types, instances, depth
        self.remote_share = remote_share
        self.expected: Counter = Counter()
        self.egress: Counter = Counter()
        self._labels = 0
        self.records: list[tuple[str, str, list]] = []
        for _ in range(roots):
            typename, target = self._pick()
            commands = self._commands(typename, target, self.rng.randrange(1, depth + 1))
            if self.rng.random() < 0.8:
                later_type, later = self._pick()
                commands = [
                    [
                        "after",
                        later_type,
                        later,
                        self._commands(later_type, later, depth),
                        self.rng.randrange(1, spread_ms),
                    ]
                ] + commands
            self.records.append((typename, str(target), commands))

    def _pick(self) -> tuple[str, int]:
        typename = self.types[-1] if len(self.types) > 1 and self.rng.random() < self.remote_share else self.types[0]
        return typename, self.rng.randrange(self.instances)

    def _commands(self, current_type: str, current: int, depth: int) -> list:
        out: list = []
        if depth > 0:
            for _ in range(self.rng.randint(1, 3)):
                roll = self.rng.random()
                if roll < 0.35:
                    out.append(["inc"])
                    self.expected[(current_type, str(current))] += 1
                elif roll < 0.7:
                    t, target = self._pick()
                    out.append(["send", t, target, self._commands(t, target, depth - 1)])
                elif roll < 0.8:
                    t, target = self._pick()
                    out.append(["after", t, target, self._commands(t, target, depth - 1), self.rng.randint(1, 40)])
                elif roll < 0.88:
                    self._labels += 1
                    t, target = self._pick()
                    out.append(["cancelled", t, target, f"tok-{self.seed}-{self._labels}"])
                else:
                    self._labels += 1
                    label = f"s{self.seed}-e{self._labels}"
                    out.append(["egress", label])
                    self.egress[label] += 1
        if not out:
            out.append(["inc"])
            self.expected[(current_type, str(current))] += 1
        return out


# The remote interpreter, served by the official SDK in its own interpreter: ``python -c SDK_SERVER PORT
# FLAG``. While the file FLAG exists it answers HTTP 500 (a function that fails for a while).
SDK_SERVER = (
    textwrap.dedent(f"""
    import os, sys
    from datetime import timedelta
    from types import SimpleNamespace
    from aiohttp import web
    from statefun import (IntType, RequestReplyHandler, StatefulFunctions, StringType, ValueSpec,
                          egress_message_builder, make_json_type, message_builder)

    api = SimpleNamespace(message_builder=message_builder, egress_message_builder=egress_message_builder,
                          StringType=StringType, Commands=make_json_type({COMMANDS!r}), timedelta=timedelta,
                          EGRESS={EGRESS!r})
    functions = StatefulFunctions()
    FLAG = sys.argv[2]

    @functions.bind({REMOTE!r}, specs=[ValueSpec("count", IntType),
                                       ValueSpec("scratch", IntType, expire_after_write=timedelta(milliseconds={SCRATCH_TTL // timedelta(milliseconds=1)}))])
    def interpreter(context, message):
        run_commands(context, message.as_type(api.Commands), api)

    handler = RequestReplyHandler(functions)

    async def handle(request):
        body = await request.read()
        if os.path.exists(FLAG):
            return web.Response(status=500, text="failing on purpose (campaign flag file)")
        return web.Response(body=await handler.handle_async(body), content_type="application/octet-stream")

    app = web.Application()
    app.router.add_post("/statefun", handle)
""")
    + inspect.getsource(run_commands)
    + textwrap.dedent("""
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
""")
)


# -- servers and proxies --------------------------------------------------------------------------------


@dataclass
class SdkServer:
    """The SDK function server of a campaign: ``port``; it answers 500 while ``flag`` exists."""

    port: int
    flag: str


class Servers:
    """The long-lived servers a campaign needs (moto_server, the SDK function server); ``stop`` ends all."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.s3_options: dict | None = None
        self.sdk: SdkServer | None = None
        self._tmp = tempfile.mkdtemp(prefix="campaign-servers-")

    def start_moto(self) -> dict:
        proc, self.s3_options = start_moto()
        self.procs.append(proc)
        return self.s3_options

    def start_sdk(self, python: str) -> SdkServer:
        port = free_port()
        flag = os.path.join(self._tmp, "sdk-fail")
        proc = subprocess.Popen(
            [python, "-c", SDK_SERVER, str(port), flag], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.procs.append(proc)
        wait_for_port(proc, port, "SDK function server")
        self.sdk = SdkServer(port, flag)
        return self.sdk

    def stop(self) -> None:
        for proc in self.procs:
            stop(proc)
        self.procs.clear()
        shutil.rmtree(self._tmp, ignore_errors=True)


def sdk_python() -> str | None:
    """The interpreter with the official SDK (``RAYFUN_SDK_PYTHON`` or .venv-sdk), if there is one."""
    path = os.environ.get("RAYFUN_SDK_PYTHON") or os.path.join(REPO, ".venv-sdk", "bin", "python")
    path = path if os.path.isabs(path) else os.path.join(REPO, path)
    return path if os.path.exists(path) else None


# -- scenarios ------------------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    at_s: float  # not before this many seconds after the application (re)started
    duration_s: float = 0.0  # outages
    mode: str = ""  # storage: "refuse" | "blackhole" on S3, - locally; remote: "500" | "refuse"; damage: "truncate" | "manifest"


@dataclass
class Scenario:
    seed: int
    shards: int
    interval: float
    storage: str  # "local" | "s3"
    feed: str  # "source" | "driver" | "both"
    remote: bool
    file_egress: bool
    instances: int
    roots: int
    spread_ms: int
    faults: list[Fault]

    def describe(self) -> str:
        faults = ", ".join(
            f"{f.kind}{'/' + f.mode if f.mode else ''}@{f.at_s:.1f}s"
            + (f" for {f.duration_s:.1f}s" if f.duration_s else "")
            for f in self.faults
        )
        return (
            f"{self.shards} shards, cp every {self.interval}s on {self.storage}, feed={self.feed}, "
            f"remote={'yes' if self.remote else 'no'}, egress={'file' if self.file_egress else 'memory'}, "
            f"{self.roots} roots over {self.instances} instances/type; faults: {faults or 'none'}"
        )


def make_scenario(seed: int, only: tuple[str, ...] | None = None) -> Scenario:
    """The scenario of ``seed``: a pure function of the seed (and ``only``), so one seed replays it."""
    rng = random.Random(seed)
    kinds = KINDS if only is None else tuple(only)
    picked = [rng.choice(kinds) for _ in range(rng.randint(2, 4))] if kinds else []
    # one process death at most (the driver's is the first phase), one coordinator kill at most
    process = [k for k in picked if k in PROCESS_KINDS][:1]
    picked = [k for k in picked if k not in PROCESS_KINDS]
    if process:
        picked.insert(0 if process[0] == "driver-kill" else rng.randrange(len(picked) + 1), process[0])
    remote = "remote-outage" in picked or rng.random() < 0.35
    spread_ms = rng.randint(9000, 14000)
    faults, at = [], 0.0
    for kind in picked:
        at = max(at + rng.uniform(0.5, 2.0), rng.uniform(1.0, spread_ms / 1000 - 2))
        fault = Fault(kind, round(at, 2))
        if kind == "storage-outage":
            fault.duration_s = round(rng.uniform(3, 8), 1)
        elif kind == "remote-outage":
            fault.duration_s = round(rng.uniform(3, 6), 1)
            fault.mode = rng.choice(["500", "refuse"])
        elif kind == "damage":
            fault.mode = rng.choice(["truncate", "manifest"])
        faults.append(fault)
    scenario = Scenario(
        seed=seed,
        shards=rng.randint(2, 3),
        interval=round(rng.uniform(0.2, 0.5), 2),
        storage=rng.choice(["local", "s3"]),
        feed="source" if process else rng.choice(["source", "driver", "both"]),
        remote=remote,
        file_egress=bool(process) or "damage" in picked or rng.random() < 0.3,
        instances=rng.randint(60, 150),
        roots=rng.randint(1500, 3000) if not remote else rng.randint(800, 1500),
        spread_ms=spread_ms,
        faults=faults,
    )
    if scenario.storage == "s3":  # drawn apart, so that the seeds from before this choice keep their scenarios
        modes = random.Random(f"{seed}/storage-outage")
        for fault in faults:
            if fault.kind == "storage-outage":
                fault.mode = modes.choice(["refuse", "blackhole"])
    return scenario


# -- the oracle -----------------------------------------------------------------------------------------


def read_egress_files(root: str) -> list[tuple[int, str]]:
    """Every record of the file egress (``dir_sink.DirSink``: one file per partition and epoch) with its
    epoch."""
    out: list[tuple[int, str]] = []
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        if name.endswith(".json"):
            epoch = int(name.rsplit("-e", 1)[1].split(".")[0])
            with open(os.path.join(root, name)) as f:
                out.extend((epoch, r) for r in json.load(f))
    return out


def _examples(counter: Counter, n: int = 3) -> str:
    return ", ".join(f"{k!r}x{v}" for k, v in list(counter.items())[:n])


def compare(
    workload: Workload, states: dict[tuple[str, str], dict], egress: Counter, allowed_extra: Counter | None = None
) -> list[str]:
    """What differs from the workload's outcome, as sentences (empty: exact). ``allowed_extra`` are records
    that may appear once more than expected (those of damaged checkpoints' epochs)."""
    problems = []
    wrong = {}
    for typename in workload.types:
        for i in range(workload.instances):
            key = (typename, str(i))
            state = states.get(key, {})
            if state.get("count", 0) != workload.expected[key] or "scratch" in state:
                wrong[key] = (state, workload.expected[key])
    tallies = {}  # the slot runner's function (state held by column) counts the embedded increments again
    if EMBEDDED in workload.types:
        for i in range(workload.instances):
            total = states.get((TALLY, str(i)), {}).get("total", 0)
            if total != workload.expected[(EMBEDDED, str(i))]:
                tallies[i] = (total, workload.expected[(EMBEDDED, str(i))])
    if tallies:
        sample = "; ".join(f"{TALLY}/{i}: total {t} expected {e}" for i, (t, e) in list(tallies.items())[:3])
        problems.append(f"tally: {len(tallies)} instances differ, e.g. {sample}")
    if wrong:
        lost = sum(max(0, e - s.get("count", 0)) for s, e in wrong.values())
        twice = sum(max(0, s.get("count", 0) - e) for s, e in wrong.values())
        sample = "; ".join(f"{t}/{i}: {s} expected count {e}" for (t, i), (s, e) in list(wrong.items())[:3])
        problems.append(
            f"state: {len(wrong)} instances differ ({lost} increments missing, {twice} extra), e.g. {sample}"
        )
    missing = workload.egress - egress
    extra = egress - workload.egress
    unexplained = extra - (allowed_extra or Counter())
    if missing:
        problems.append(f"egress: {sum(missing.values())} records missing, e.g. {_examples(missing)}")
    if unexplained:
        problems.append(f"egress: {sum(unexplained.values())} records extra, e.g. {_examples(unexplained)}")
    return problems


# -- one run --------------------------------------------------------------------------------------------


@dataclass
class Result:
    seed: int
    exact: bool
    description: str  # one paragraph: what differed (or "exact"), the scenario, what the faults did
    faults: list[str]  # what each fault did, as it happened
    scenario: str
    replay: str
    duration_s: float
    notes: list[str] = field(default_factory=list)
    timings: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One line for a run: the verdict with the scenario and what the faults did."""
        if not self.exact:
            return f"seed {self.seed}: NOT EXACT ({self.duration_s:.0f}s): {self.description}"
        return (
            f"seed {self.seed}: exact ({self.duration_s:.0f}s: {', '.join(self.timings)}); {self.scenario}; "
            f"did: {'; '.join(self.faults) or '-'}"
        )


class Timeout(Exception):
    """Raised inside a run's thread once the run was cancelled (it took too long): unwinds it at once."""


class _Run:
    """One scenario, executed: start, feed, inject the faults in order, then check the outcome."""

    def __init__(self, scenario: Scenario, servers: Servers, work: str, only: tuple[str, ...] | None):
        self.sc = scenario
        self.servers = servers
        self.work = work
        self.only = only
        self.rng = random.Random(scenario.seed * 7919 + 1)
        types = (EMBEDDED, REMOTE) if scenario.remote else (EMBEDDED,)
        self.workload = Workload(scenario.seed, types, scenario.instances, scenario.roots, scenario.spread_ms)
        records = self.workload.records
        if scenario.feed == "source":
            self.source_records, self.driver_records = records, []
        elif scenario.feed == "driver":
            self.source_records, self.driver_records = [], records
        else:
            self.source_records, self.driver_records = records[::2], records[1::2]
        self.app = None
        self.apps: list = []  # every application started (all are stopped at the end)
        self.driver: subprocess.Popen | None = None
        self.cancelled = threading.Event()
        self.did: list[str] = []
        self.violations: list[str] = []
        self.notes: list[str] = []
        self.timings: list[str] = []  # where the run's time went (started, faults done, idle, checked)
        self.damaged_epochs: set[int] = set()
        self.immutable: list[str] = []
        self.lock = threading.Lock()
        self.outages: dict[str, SimpleNamespace] = {}  # resource -> the outage under way (label, up, timer)
        self.healed: list[tuple[str, int]] = []  # outages ended: label, last checkpoint at the end
        self.proxies: list[TcpProxy] = []
        self.s3_proxy: TcpProxy | None = None
        self.sdk_proxy: TcpProxy | None = None
        self.names = 0
        self.egress_dir = os.path.join(work, "egress")
        if scenario.storage == "s3":
            if servers.s3_options is None:
                raise RuntimeError(f"seed {scenario.seed} needs S3: start moto_server (Servers.start_moto)")
            moto_port = int(servers.s3_options["client_kwargs"]["endpoint_url"].rsplit(":", 1)[1])
            self.s3_proxy = TcpProxy(moto_port)
            self.proxies.append(self.s3_proxy)
            self.checkpoint_dir = f"s3://{BUCKET}/campaign-{scenario.seed}-{uuid.uuid4().hex[:8]}"
            self.storage_options: dict | None = s3_options(self.s3_proxy.port)
        else:
            self.checkpoint_dir = os.path.join(work, "cp")
            self.storage_options = None
        if scenario.remote:
            if servers.sdk is None:
                raise RuntimeError(f"seed {scenario.seed} needs the SDK function server (Servers.start_sdk)")
            self.sdk_proxy = TcpProxy(servers.sdk.port)
            self.proxies.append(self.sdk_proxy)

    # -- the application ------------------------------------------------------------------------------

    def spec(self) -> dict:
        """What a driver process needs to start the same application (see ``driver_main``)."""
        return {
            "seed": self.sc.seed,
            "only": None if self.only is None else list(self.only),
            "checkpoint_dir": self.checkpoint_dir,
            "storage_options": self.storage_options,
            "egress_dir": self.egress_dir,
            "sdk_port": self.sdk_proxy.port if self.sdk_proxy else None,
        }

    def start_app(self):
        started = time.monotonic()
        self.names += 1
        name = f"campaign-{self.sc.seed}-{os.getpid()}-{self.names}"
        app = start_application(self.sc, self.source_records, self.spec(), name)
        self.apps.append(app)
        self.app = app
        self.timings.append(f"start {time.monotonic() - started:.1f}s")
        return app

    def info(self) -> dict:
        import ray

        return ray.get(self.app._coordinator.info.remote(), timeout=30)

    def _activity(self) -> dict:
        """What moves when anything runs: the generation, recoveries and messages processed."""
        info = self.info()
        processed = sum(st.get("processed", 0) for st in self.app._statuses())
        return {"generation": info.get("generation"), "recoveries": info.get("recoveries"), "processed": processed}

    def shards(self) -> list:
        import ray

        return ray.get(self.app._coordinator.shard_handles.remote(), timeout=30)

    def sleep(self, seconds: float) -> None:
        if self.cancelled.wait(max(0.0, seconds)):
            raise Timeout()

    def wait_for(self, check: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                return False
            self.sleep(poll)
        return True

    # -- feeding --------------------------------------------------------------------------------------

    def feed(self) -> None:
        """``app.send_many`` in batches spread over the first half of the workload's span (a failure is a
        violation: the driver's sends must go through faults)."""
        try:
            self._feed()
        except Exception as exc:
            if not self.cancelled.is_set():
                self.violations.append(f"app.send_many failed: {type(exc).__name__}: {exc}".splitlines()[0])

    def _feed(self) -> None:
        records = self.driver_records
        batches = max(1, min(40, len(records) // 40))
        size = -(-len(records) // batches)
        gap = self.sc.spread_ms / 1000 / 2 / batches
        for k in range(0, len(records), size):
            if self.cancelled.is_set():
                return
            self.app.send_many(records[k : k + size], value_type=commands_type())
            self.cancelled.wait(gap)

    # -- faults ---------------------------------------------------------------------------------------

    def kill_shard(self, how: str = "ray", victim: int | None = None) -> int:
        import ray

        shards = self.shards()
        victim = self.rng.randrange(len(shards)) if victim is None else victim
        if how == "sigkill":
            pid = ray.get(shards[victim].status.remote(), timeout=10).pid
            os.kill(pid, signal.SIGKILL)
        else:
            ray.kill(shards[victim], no_restart=True)
        return victim

    def wait_recovered(self, before: int, label: str) -> bool:
        ok = self.wait_for(lambda: self.info()["recoveries"] > before, RECOVERY_TIMEOUT_S)
        if not ok:
            self.violations.append(f"{label}: no recovery within {RECOVERY_TIMEOUT_S:.0f} s (info {self.info()})")
        return ok

    def expect_checkpoints(self, label: str) -> None:
        """After a fault healed: the job must take checkpoints again."""
        healed = self.info()["last_checkpoint"] or 0
        if self.wait_for(lambda: (self.info()["last_checkpoint"] or 0) > healed, HEAL_TIMEOUT_S):
            self.did.append(f"{label}: checkpoints resumed past {healed}")
        else:
            self.did.append(f"{label}: checkpoints did NOT resume")
            self.violations.append(
                f"checkpoints did not resume after {label}: last_checkpoint stayed at "
                f"{healed} for {HEAL_TIMEOUT_S:.0f} s (info {self.info()})"
            )

    def begin_outage(
        self,
        resource: str,
        label: str,
        duration: float,
        down: Callable[[], None],
        up: Callable[[], None],
        heal_within: float = HEAL_TIMEOUT_S,
    ) -> None:
        """Take ``resource`` down now and heal it ``duration`` seconds later (a timer), while the next
        faults go on: a shard killed during a storage outage must restore through it. An outage of a
        resource already down extends that one. Checkpoints must resume within ``heal_within`` of the heal."""
        with self.lock:
            outage = self.outages.get(resource)
            extends = outage is not None
            if extends:
                outage.timer.cancel()
            else:
                down()
                outage = self.outages[resource] = SimpleNamespace(
                    label=label, up=up, recoveries=self.info()["recoveries"], heal_within=heal_within
                )
            outage.heal_within = max(outage.heal_within, heal_within)
            outage.heal_at = max(getattr(outage, "heal_at", 0.0), time.monotonic() + duration)
            outage.timer = threading.Timer(outage.heal_at - time.monotonic(), self._heal, args=(resource,))
            outage.timer.daemon = True
            outage.timer.start()
        self.did.append(f"{label} for {duration:.1f}s" + (" (extends the one under way)" if extends else ""))

    def _heal(self, resource: str) -> None:
        with self.lock:
            outage = self.outages.get(resource)
            if outage is None:
                return
            outage.up()
            try:
                info = self.info()
                self.healed.append(
                    (
                        f"{outage.label} ({info['recoveries'] - outage.recoveries} rollbacks meanwhile)",
                        info["last_checkpoint"] or 0,
                        outage.heal_within,
                    )
                )
            finally:  # only now: an outage is always either under way or in ``healed``
                del self.outages[resource]

    def check_heals(self, wait: bool) -> None:
        """After each outage that healed (with ``wait``: after all, once they heal) the job must take
        checkpoints again, past the one it had when the outage ended."""
        if wait:
            self.wait_for(lambda: not self.outages, 60)
        while self.healed:
            label, healed, within = self.healed.pop(0)
            began = time.monotonic()
            if self.wait_for(lambda: (self.info()["last_checkpoint"] or 0) > healed, within):
                self.did.append(
                    f"after {label}: checkpoints resumed past {healed} ({time.monotonic() - began:.1f}s later)"
                )
            else:
                self.did.append(f"after {label}: checkpoints did NOT resume")
                self.violations.append(
                    f"checkpoints did not resume after {label}: last_checkpoint stayed at "
                    f"{healed} for {within:.0f} s after it healed (info {self.info()})"
                )

    def fault_kill(self, f: Fault) -> None:
        before = self.info()["recoveries"]
        victim = self.kill_shard("sigkill" if f.kind == "sigkill" else "ray")
        self.did.append(f"{f.kind} shard {victim}")
        self.wait_recovered(before, f.kind)

    fault_sigkill = fault_kill

    def fault_kill_burst(self, f: Fault) -> None:
        victims = []
        for _ in range(self.rng.randint(2, 3)):
            before = self.info()["recoveries"]
            victims.append(self.kill_shard(self.rng.choice(["ray", "sigkill"])))
            if not self.wait_recovered(before, "kill-burst"):
                break
        self.did.append(f"kill-burst shards {victims} (each at once after the previous recovery)")

    def fault_kill_restore(self, f: Fault) -> None:
        info = self.info()
        first = self.kill_shard()
        hit = self.wait_for(lambda: self.info()["generation"] > info["generation"], 10, poll=0.005)
        second = self.kill_shard()
        self.did.append(
            f"kill-restore shards {first} then {second} ({'while restoring' if hit else 'restore not seen'})"
        )
        self.wait_recovered(info["recoveries"], "kill-restore")

    def fault_kill_checkpoint(self, f: Fault) -> None:
        import ray

        shards = self.shards()

        def in_checkpoint() -> bool:
            last = self.info()["last_checkpoint"] or 0
            return any(st.epoch > last for st in ray.get([s.status.remote() for s in shards], timeout=10))

        before = self.info()["recoveries"]
        hit = self.wait_for(in_checkpoint, 10, poll=0.005)
        victim = self.kill_shard()
        self.did.append(f"kill-checkpoint shard {victim} ({'during a checkpoint' if hit else 'no checkpoint seen'})")
        self.wait_recovered(before, "kill-checkpoint")

    def fault_storage_outage(self, f: Fault) -> None:
        if self.s3_proxy is not None and f.mode == "blackhole":
            # a request in flight, or sent meanwhile, may wait until rayfun gives it up (STORAGE_CALL_TIMEOUT_S)
            self.begin_outage(
                "storage",
                "S3 silent (proxy black-holes)",
                f.duration_s,
                self.s3_proxy.blackhole,
                self.s3_proxy.up,
                heal_within=HEAL_TIMEOUT_S + STORAGE_CALL_TIMEOUT_S,
            )
        elif self.s3_proxy is not None:
            self.begin_outage(
                "storage", "S3 unreachable (proxy resets)", f.duration_s, self.s3_proxy.down, self.s3_proxy.up
            )
        else:
            self.begin_outage(
                "storage",
                "checkpoint dirs immutable (chattr +i)",
                f.duration_s,
                self.make_immutable,
                self.release_immutable,
            )

    def make_immutable(self) -> None:
        for d in (os.path.join(self.checkpoint_dir, d) for d in ("manifests", "data")):
            if os.path.isdir(d):
                subprocess.run(["chattr", "+i", d], check=True)
                self.immutable.append(d)

    def release_immutable(self) -> None:
        while self.immutable:
            subprocess.run(["chattr", "-i", self.immutable.pop()], check=False)

    def fault_remote_outage(self, f: Fault) -> None:
        if f.mode == "500":
            flag = self.servers.sdk.flag
            self.begin_outage(
                "remote",
                "remote function answers 500",
                f.duration_s,
                lambda: open(flag, "w").close(),
                lambda: os.unlink(flag),
            )
        else:
            self.begin_outage(
                "remote", "remote function unreachable", f.duration_s, self.sdk_proxy.down, self.sdk_proxy.up
            )

    def _fs(self):
        import fsspec

        if self.s3_proxy is None:
            return fsspec.filesystem("file"), self.checkpoint_dir
        direct = self.servers.s3_options  # straight to moto: the damage must not depend on the proxy
        return fsspec.filesystem("s3", **direct), self.checkpoint_dir[len("s3://") :]

    def _store(self):
        from rayfun.checkpoint.store import CheckpointStore

        options = None if self.s3_proxy is None else self.servers.s3_options  # straight to moto
        return CheckpointStore(self.checkpoint_dir, storage_options=options)

    def quarantined_ids(self) -> set[int]:
        """The checkpoints the store set aside as damaged, as the store itself lists them."""
        return set(self._store().quarantined_ids())

    def complete_ids(self) -> list[int]:
        """The checkpoints with a manifest (complete), oldest first."""
        return list(self._store().checkpoint_ids())

    def fault_damage(self, f: Fault) -> None:
        fs, root = self._fs()
        set_aside_before = self.quarantined_ids()  # an earlier damage fault's, rightly set aside then
        newest = max(self.info()["last_checkpoint"] or 0, 0)
        if newest < 2 and not self.wait_for(lambda: (self.info()["last_checkpoint"] or 0) >= 2, 10):
            self.did.append("damage skipped (fewer than 2 checkpoints)")
            return
        newest = self.info()["last_checkpoint"]
        # The replay republishes all that checkpoint ``newest`` published: its epoch's records and those of
        # any epoch whose own checkpoint failed since the one before it (they were published with it)
        previous = max((i for i in self.complete_ids() if i < newest), default=0)
        manifest = f"{root}/manifests/cp-{newest:010d}.json"
        files = (
            []
            if f.mode == "manifest"
            else sorted(p for p in fs.find(f"{root}/data/cp-{newest:010d}") if p.endswith((".parquet", ".arrow")))
        )
        if not files:  # asked for, or the checkpoint wrote no files (nothing changed): damage its manifest
            fs.pipe_file(manifest, b"{ this is not a manifest")
            what = f"manifest of checkpoint {newest} overwritten with garbage"
        else:
            victim = self.rng.choice(files)
            data = fs.cat_file(victim)
            fs.pipe_file(victim, data[: len(data) // 2])
            what = f"{os.path.basename(victim)} of checkpoint {newest} truncated to {len(data) // 2} bytes"
        info = self.info()
        self.kill_shard()
        self.damaged_epochs.update(range(previous + 1, (info["last_checkpoint"] or 0) + 1))
        self.wait_recovered(info["recoveries"], "damage")
        # A checkpoint may complete between the damage and the kill (it references the damaged file and
        # is set aside too): its epoch's egress was published and is then replayed. Which ones were set
        # aside is the store's word; one older than the damaged checkpoint would be a wrong quarantine.
        set_aside = self.quarantined_ids() - set_aside_before
        older = sorted(i for i in set_aside if i < newest)
        if older:
            self.violations.append(f"checkpoints {older}, older than the damaged {newest}, were set aside")
        self.damaged_epochs.update(i for i in set_aside if i >= newest)
        after = self.info()["last_checkpoint"]
        self.did.append(f"{what}, then a shard killed: restored checkpoint {after}")
        self.expect_checkpoints("the damaged checkpoint")

    def fault_coordinator_kill(self, f: Fault) -> None:
        import ray

        coordinator = self.app._coordinator
        last = self.info()["last_checkpoint"]
        ray.kill(coordinator)
        self.app._coordinator = None  # dead: nothing to stop
        self.did.append(f"coordinator killed (last checkpoint {last})")
        self.sleep(self.rng.uniform(0.2, 1.0))
        self.start_app()
        self.did[-1] += f", restarted from checkpoint {self.info()['last_checkpoint']}"

    # -- the whole run --------------------------------------------------------------------------------

    def launch_driver(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        import ray

        address = ray.get_runtime_context().gcs_address
        self.driver = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.campaign", "driver", address, json.dumps(self.spec())],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.work, "driver.log"), "w"),
        )
        return self.driver

    def driver_log(self) -> str:
        with open(os.path.join(self.work, "driver.log"), errors="replace") as f:
            tail = f.read()[-600:].strip().replace("\n", " | ")
        return f"driver log: {tail}" if tail else "the driver logged nothing"

    def manifests(self) -> int:
        fs, root = self._fs()
        try:
            return len([p for p in fs.ls(f"{root}/manifests") if p.endswith(".json")])
        except FileNotFoundError:
            return 0

    def driver_phase(self, f: Fault) -> None:
        proc = self.launch_driver()
        if not self.wait_for(lambda: proc.poll() is not None or self.manifests() >= 2, 60):
            self.violations.append(f"the driver took no 2 checkpoints within 60 s ({self.driver_log()})")
        self.sleep(max(0.0, f.at_s - 2) + self.rng.uniform(0.2, 1.5))
        if proc.poll() is not None:
            self.violations.append(
                f"the driver exited ({proc.returncode}) before it could be killed ({self.driver_log()})"
            )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        count = self.manifests()
        self.did.append(f"driver SIGKILLed ({count} manifests)")
        self.sleep(self.rng.uniform(0.2, 1.0))
        self.start_app()
        self.did[-1] += f", resumed from checkpoint {self.info()['last_checkpoint']}"

    def execute(self) -> None:
        faults = list(self.sc.faults)
        if faults and faults[0].kind == "driver-kill":
            self.driver_phase(faults.pop(0))
        else:
            self.start_app()
        began = time.monotonic()
        feeder = None
        if self.driver_records:
            feeder = threading.Thread(target=self.feed, daemon=True, name="campaign-feeder")
            feeder.start()
        for f in faults:
            self.sleep(began + f.at_s - time.monotonic())
            self.check_heals(wait=f.kind in ("damage", "coordinator-kill"))  # those need the storage up
            getattr(self, "fault_" + f.kind.replace("-", "_"))(f)
        self.check_heals(wait=True)
        if feeder is not None:
            feeder.join()
        self.timings.append(f"faults done {time.monotonic() - began:.1f}s")
        self.check(began)

    def check(self, began: float) -> None:
        app = self.app
        try:
            app.wait(timeout=90)
            self.timings.append(f"idle {time.monotonic() - began:.1f}s")
        except TimeoutError as exc:
            keys = (
                "generation",
                "backlog",
                "in_progress",
                "early",
                "outstanding",
                "sources_busy",
                "timers",
                "sent",
                "received",
                "failure",
            )
            shards = [{k: st.get(k) for k in keys} for st in app._statuses()]
            self.violations.append(f"not idle after the faults: {exc} (info {self.info()}; shards {shards})")
            return
        let_scratch_expire()
        at_idle = self._activity()
        if self.sc.file_egress:
            app.checkpoint()  # publishes the last epoch
            published = read_egress_files(self.egress_dir)
            egress = Counter(r for _, r in published)
            allowed = Counter(r for epoch, r in published if epoch in self.damaged_epochs)
        else:
            egress = Counter(app.egress(EGRESS, timeout=60))
            allowed = Counter()
        states = {
            (t, str(i)): app.state(t, str(i), wait=False)
            for t in (*self.workload.types, TALLY)
            for i in range(self.workload.instances)
        }
        self.violations.extend(compare(self.workload, states, egress, allowed))
        at_check = self._activity()
        if at_check != at_idle:  # nothing may run once idle: say what did (a replay rewrites fresh scratch values)
            self.notes.append(f"after app.wait() declared idle, before the states were read: {at_idle} -> {at_check}")
        self.timings.append(f"checked {time.monotonic() - began:.1f}s")
        if self.damaged_epochs:
            self.notes.append(
                f"duplicates allowed for the records of damaged epochs {sorted(self.damaged_epochs)}"
                f" ({sum((egress - self.workload.egress).values())} seen)"
            )

    def cleanup(self) -> None:
        import ray

        self.cancelled.set()
        with self.lock:
            for outage in self.outages.values():
                outage.timer.cancel()
            self.outages.clear()
        self.release_immutable()
        if self.servers.sdk is not None and os.path.exists(self.servers.sdk.flag):
            os.unlink(self.servers.sdk.flag)
        if self.driver is not None and self.driver.poll() is None:
            self.driver.kill()
            self.driver.wait(timeout=30)
        for app in self.apps:
            if app._coordinator is None:
                continue
            try:
                app.stop()
            except Exception:
                try:
                    ray.kill(app._coordinator)
                except Exception:
                    pass
                app._coordinator = None
        for proxy in self.proxies:
            proxy.close()


def commands_type():
    """The JSON type of command lists (created lazily: rayfun is imported only where it runs)."""
    from rayfun import make_json_type

    return make_json_type(COMMANDS)


def start_application(sc: Scenario, source_records: list, spec: dict, name: str):
    """Start (or resume, when the checkpoint dir holds checkpoints) the scenario's application."""
    import rayfun
    from rayfun.connectors.memory import MemorySource
    from tests.chaos.dir_sink import DirSink

    ingresses = []
    if source_records:
        ingresses.append(
            MemorySource(
                source_records, partitions=sc.shards, id="chaos/commands", batch_size=50, value_type=commands_type()
            )
        )
    egresses = [DirSink(EGRESS, spec["egress_dir"])] if sc.file_egress else []
    endpoints = []
    if spec["sdk_port"] is not None:
        endpoints.append(
            rayfun.HttpEndpoint(
                functions="chaosr/*",
                url_path_template=f"http://127.0.0.1:{spec['sdk_port']}/statefun",
                call_timeout=2.0,
                connect_timeout=1.0,
                on_failure="restart",
            )
        )
    return rayfun.start(
        build_functions(),
        shards=sc.shards,
        ingresses=ingresses,
        egresses=egresses,
        endpoints=endpoints,
        checkpoint_dir=spec["checkpoint_dir"],
        storage_options=spec["storage_options"],
        checkpoint_interval=sc.interval,
        name=name,
    )


def replay_command(seed: int, only: tuple[str, ...] | None = None) -> str:
    """The command that runs this seed again (``--only none``: without faults)."""
    return f".venv/bin/python bench/chaos.py --runs 1 --seed {seed}" + (
        "" if only is None else f" --only {','.join(only) or 'none'}"
    )


def run_scenario(
    seed: int,
    servers: Servers,
    *,
    only: tuple[str, ...] | None = None,
    timeout: float = 150.0,
    tamper: Callable[[Workload], None] | None = None,
) -> Result:
    """Run the scenario of ``seed`` against the running Ray, bounded by ``timeout`` seconds (a run that
    takes longer is not exact: "timed out"). ``tamper`` edits the expected outcome before the check (a
    self-test that the oracle notices a broken run)."""
    sc = make_scenario(seed, only)
    work = tempfile.mkdtemp(prefix=f"campaign-{seed}-")
    began = time.monotonic()
    run = _Run(sc, servers, work, only)
    if tamper is not None:
        tamper(run.workload)
    error: list[str] = []

    def body() -> None:
        try:
            run.execute()
        except Timeout:
            pass
        except Exception as exc:
            error.append(f"the harness failed: {type(exc).__name__}: {exc}".splitlines()[0])
            run.notes.append(traceback.format_exc())

    thread = threading.Thread(target=body, daemon=True, name=f"campaign-{seed}")
    try:
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            error.append(f"timed out after {timeout:.0f} s")
    finally:
        stopping = time.monotonic()
        run.cleanup()
        thread.join(30)
        run.timings.append(f"stopped in {time.monotonic() - stopping:.1f}s")
        shutil.rmtree(work, ignore_errors=True)
        if sc.storage == "s3" and servers.s3_options is not None:
            try:
                import s3fs

                s3fs.S3FileSystem(**servers.s3_options).rm(run.checkpoint_dir, recursive=True)
            except Exception:
                pass
    problems = error + run.violations
    replay = replay_command(seed, only)
    exact = not problems
    description = (
        ("exact" if exact else " ".join(p.rstrip(".") + "." for p in problems))
        + f" Scenario: {sc.describe()}. Faults did: {'; '.join(run.did) or 'nothing'}."
        + (f" Notes: {' '.join(n for n in run.notes if not n.startswith('Traceback'))}" if run.notes else "")
        + f" Replay: {replay}"
    )
    return Result(
        seed=seed,
        exact=exact,
        description=description,
        faults=run.did,
        scenario=sc.describe(),
        replay=replay,
        duration_s=time.monotonic() - began,
        notes=run.notes,
        timings=run.timings,
    )


def driver_main(address: str, spec: dict) -> None:
    """A driver program for driver-death scenarios: start the scenario's application and keep it running
    until SIGKILLed (its coordinator and shards die with it)."""
    import ray

    ray.init(address=address, log_to_driver=False, namespace=RAY_NAMESPACE)
    only = None if spec["only"] is None else tuple(spec["only"])
    sc = make_scenario(spec["seed"], only)
    workload = Workload(sc.seed, (EMBEDDED, REMOTE) if sc.remote else (EMBEDDED,), sc.instances, sc.roots, sc.spread_ms)
    app = start_application(sc, workload.records, spec, f"campaign-driver-{os.getpid()}")
    while True:  # what it logs is shown when the driver misbehaves
        print(app.info(), file=sys.stderr, flush=True)
        time.sleep(1)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "driver":
        driver_main(sys.argv[2], json.loads(sys.argv[3]))
    else:
        sys.exit("usage: python -m tests.chaos.campaign driver RAY_ADDRESS SPEC_JSON")
