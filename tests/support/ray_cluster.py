"""A real multi-node Ray cluster on this machine, made with ``ray start`` as an operator would: a head and
worker nodes, each a ``ray start --block`` process in its own session with its own ports and temp dir,
token authentication on, everything that Ray lets bind to loopback bound there. A worker node can be
killed for real (SIGKILL of every process of the node: raylet, agents, workers); ``stop`` kills what is
left, by process session, and always runs (``with RayCluster(...) as cluster``, or the ``ray_cluster``
fixture of ``tests/cluster/conftest.py``). Every wait is bounded.

Ray binds what it can to loopback here (the dashboard: ``--dashboard-host 127.0.0.1``); its gRPC servers
listen on every interface whatever one asks, and ``ray start --node-ip-address 127.0.0.1`` is replaced by
the machine's address (``resolve_ip_for_localhost``): every node has the machine's IP, clients reach the
GCS at ``127.0.0.1:<port>``, and the token guards it all.

Each node is told apart by a custom resource named after it (``{"node_head": 1}``, ``{"node_w1": 1}``),
so a test can place an actor on a node or find which node a process is on.

Plain exceptions, no pytest: usable from a script too.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

RAY = os.path.join(os.path.dirname(sys.executable), "ray")  # the CLI of the interpreter running the tests

# Node death is noticed by the GCS's health checks: every period, a node failing this many in a row is
# dead. Ray's defaults (3 s, 5 failures, 10 s timeout) take 15-30 s; a test wants a few seconds.
FAST_NODE_DEATH = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 1000,
    "health_check_failure_threshold": 3,
}

START_ATTEMPTS = 3  # launches of a node's ``ray start`` that timed out on a busy machine
WORKER_PORTS = 100  # per node: one port per worker process (shards, standby, coordinator, job supervisor...)


class ClusterError(RuntimeError):
    pass


def _bindable(port: int) -> bool:
    # Ray's gRPC servers listen on every interface: the port must be free there, not only on loopback
    with socket.socket() as s:
        try:
            s.bind(("", port))
            return True
        except OSError:
            return False


class _Ports:
    """Free ports for one cluster, none handed out twice (a port picked and released can be picked again
    by the kernel: the cluster remembers what it gave)."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def one(self) -> int:
        for _ in range(100):
            with socket.socket() as s:
                s.bind(("", 0))
                port = s.getsockname()[1]
            if port not in self.taken:
                self.taken.add(port)
                return port
        raise ClusterError("no free port")

    def block(self, count: int) -> tuple[int, int]:
        """``count`` consecutive free ports (a worker port range), below the kernel's ephemeral range
        (usually from 32768) so that ports picked by ``one`` cannot fall inside it."""
        for _ in range(200):
            base = random.randrange(20000, 32000 - count)
            ports = range(base, base + count)
            if not self.taken.intersection(ports) and all(_bindable(p) for p in ports):
                self.taken.update(ports)
                return base, base + count - 1
        raise ClusterError(f"no {count} consecutive free ports")


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), int(fields[3])


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


@dataclass
class Node:
    """One ``ray start --block`` process and everything it started. ``name`` is also its resource."""

    name: str
    head: bool
    temp_dir: str
    num_cpus: int
    resources: dict
    ports: dict
    log_path: str
    proc: subprocess.Popen | None = None
    killed: bool = False
    starts: int = 0  # how often its ``ray start`` was launched (a start that timed out is launched again)
    _log: object = field(default=None, repr=False)

    @property
    def resource(self) -> str:
        return self.name

    def pids(self) -> set[int]:
        """Every live process of this node: those in the session of its ``ray start`` (started with a new
        session; Ray does not start new sessions for its processes) and the descendants of any of them."""
        if self.proc is None:
            return set()
        sid = self.proc.pid
        parents: dict[int, int] = {}
        found: set[int] = set()
        for pid in _all_pids():
            stat = _proc_stat(pid)
            if stat is None:
                continue
            parents[pid] = stat[0]
            if stat[1] == sid:
                found.add(pid)
        grew = True
        while grew:
            grew = False
            for pid, parent in parents.items():
                if parent in found and pid not in found:
                    found.add(pid)
                    grew = True
        return {p for p in found if not _zombie(p)}

    def kill(self, timeout: float = 15.0) -> set[int]:
        """SIGKILL every process of the node (the ``ray start`` process, its raylet, agents and workers),
        again and again until none is left; returns the pids killed. Raises if any survives ``timeout``."""
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if self.proc is not None and self.proc.poll() is None:
                pids.add(self.proc.pid)
            if not pids:
                break
            if time.monotonic() > deadline:
                raise ClusterError(f"node {self.name}: processes {sorted(pids)} survived SIGKILL")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise ClusterError(f"node {self.name}: ray start did not exit after SIGKILL") from None
        self.killed = True
        return killed

    def log_tail(self, chars: int = 2000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-chars:]
        except OSError:
            return ""


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped by its parent, does not)."""
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


class RayCluster:
    """A head (``start_head``) and worker nodes (``add_worker``) on this machine. ``root``: a short
    directory for the nodes' temp dirs and logs (Ray's unix socket paths must stay under ~107 characters:
    by default a fresh ``/tmp/rcXXXXXX``, removed by ``stop``). ``env``: the environment of every node and
    client (default: this process's). ``token``: Ray's auth token; by default a new one, in
    ``root/auth_token``, given to every process through ``RAY_AUTH_TOKEN_PATH`` (the user's
    ``~/.ray/auth_token`` is neither read nor written); ``token=False`` leaves finding it to Ray
    (``~/.ray/auth_token`` of ``env``'s HOME). Token authentication is always on (``RAY_AUTH_MODE=token``).
    """

    def __init__(
        self,
        root: str | None = None,
        *,
        env: dict | None = None,
        token: bool = True,
        system_config: dict | None = None,
    ) -> None:
        self._own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="rc", dir="/tmp")
        os.makedirs(self.root, exist_ok=True)
        self.system_config = dict(FAST_NODE_DEATH if system_config is None else system_config)
        self._ports = _Ports()
        self.nodes: list[Node] = []
        base = dict(os.environ if env is None else env)
        for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            base.pop(key, None)  # nothing of an outer Ray leaks in
        base["RAY_AUTH_MODE"] = "token"  # never off
        # the venv's bin first, as if activated: `python` in a job's entrypoint is this interpreter
        base["PATH"] = os.path.dirname(sys.executable) + os.pathsep + base.get("PATH", "")
        base.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        self.token_path: str | None = None
        if token:
            self.token_path = os.path.join(self.root, "auth_token")
            with open(os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(secrets.token_hex(32))
            base["RAY_AUTH_TOKEN_PATH"] = self.token_path
        self.node_env = base

    # -- addresses and clients ------------------------------------------------------------------------

    @property
    def head(self) -> Node:
        if not self.nodes or not self.nodes[0].head:
            raise ClusterError("no head started")
        return self.nodes[0]

    @property
    def address(self) -> str:
        """The GCS address (``ray.init(address=...)``, ``RAY_ADDRESS`` of a driver)."""
        return f"127.0.0.1:{self.head.ports['port']}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard's HTTP address (``ray job submit --address``, the state API)."""
        return f"http://127.0.0.1:{self.head.ports['dashboard_port']}"

    def client_env(self, **extra: str) -> dict:
        """The environment for a driver or a CLI call against this cluster (``RAY_ADDRESS`` set)."""
        return {**self.node_env, "RAY_ADDRESS": self.address, **extra}

    def token(self) -> str:
        path = self.token_path or os.path.join(self.node_env.get("HOME", os.path.expanduser("~")), ".ray", "auth_token")
        with open(path) as f:
            return f.read().strip()

    def ray_cli(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``ray ARGS`` against the cluster, bounded by ``timeout``."""
        done = subprocess.run(
            [RAY, *args], env=self.client_env(), capture_output=True, text=True, timeout=timeout, cwd=self.root
        )
        if check and done.returncode != 0:
            raise ClusterError(
                f"ray {' '.join(args)} exited {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        return done

    # -- nodes ----------------------------------------------------------------------------------------

    def start_head(self, num_cpus: int = 1, resources: dict | None = None, timeout: float = 90.0) -> Node:
        if self.nodes:
            raise ClusterError("the head is the first node")
        node = self._node("head", True, num_cpus, resources)
        try:
            while True:
                try:
                    self._wait_head(node, timeout)
                    return node
                except ClusterError:
                    if not self._restart(node):
                        raise
        except BaseException:
            self.stop()
            raise

    def add_worker(self, name: str | None = None, num_cpus: int = 1, resources: dict | None = None) -> Node:
        """Start a worker node (``wait_for_nodes`` waits until it has joined)."""
        return self._node(name or f"w{len(self.nodes)}", False, num_cpus, resources)

    def _node(self, name: str, head: bool, num_cpus: int, resources) -> Node:
        temp_dir = os.path.join(self.root, name)
        os.makedirs(temp_dir, exist_ok=True)
        node = Node(
            name=f"node_{name}",
            head=head,
            temp_dir=temp_dir,
            num_cpus=num_cpus,
            resources={f"node_{name}": 1, **(resources or {})},
            ports={},
            log_path=os.path.join(self.root, f"{name}.log"),
        )
        self.nodes.append(node)
        self._spawn(node)
        return node

    def _restart(self, node: Node) -> bool:
        """Launch a node again whose ``ray start`` gave up on a busy machine (Ray waits 30 s at most for a
        raylet to register: "The current node timed out during startup"); False if it failed otherwise
        or was launched ``START_ATTEMPTS`` times already."""
        if node.proc is None or node.proc.poll() is None or node.starts >= START_ATTEMPTS:
            return False
        if "timed out during startup" not in node.log_tail(4000):
            return False
        node.kill()  # whatever it left running
        node.killed = False
        print(f"RayCluster: {node.name} timed out during startup; starting it again", file=sys.stderr)
        self._spawn(node)
        return True

    def _spawn(self, node: Node) -> None:
        """Launch the node's ``ray start --block`` on fresh ports."""
        ports = {}
        if node.head:
            ports = {
                "port": self._ports.one(),
                "dashboard_port": self._ports.one(),
                "ray_client_server_port": self._ports.one(),
            }
            args = ["--head", "--dashboard-host", "127.0.0.1"]
        else:
            args = ["--address", self.address]
        ports.update(
            node_manager_port=self._ports.one(),
            object_manager_port=self._ports.one(),
            dashboard_agent_listen_port=self._ports.one(),
            dashboard_agent_grpc_port=self._ports.one(),
            runtime_env_agent_port=self._ports.one(),
            metrics_export_port=self._ports.one(),
        )
        node.ports = ports
        low, high = self._ports.block(WORKER_PORTS)
        cmd = [
            RAY,
            "start",
            *args,
            "--block",
            # Ray replaces a loopback address by the machine's (see above); given, it does so on every
            # node alike (a worker left to guess would take the address it reaches the head by: 127.0.0.1)
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(node.num_cpus),
            "--resources",
            json.dumps(node.resources),
            "--temp-dir",
            node.temp_dir,
            "--min-worker-port",
            str(low),
            "--max-worker-port",
            str(high),
            "--disable-usage-stats",
        ]
        for key, port in ports.items():
            cmd += [f"--{key.replace('_', '-')}", str(port)]
        if node.head and self.system_config:
            cmd += ["--system-config", json.dumps(self.system_config)]
        if node._log is not None:
            node._log.close()
        node._log = open(node.log_path, "a")
        node.starts += 1
        # a session of its own: every process the node starts can be found (and killed) by it
        node.proc = subprocess.Popen(
            cmd, env=self.node_env, stdout=node._log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root
        )

    def api(self, path: str, timeout: float = 5.0):
        """GET the dashboard's HTTP API at ``path`` with the token; the decoded JSON."""
        request = urllib.request.Request(self.dashboard_url + path, headers={"Authorization": f"Bearer {self.token()}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def _wait_head(self, node: Node, timeout: float) -> None:
        """Until the dashboard answers ``/api/version`` (it starts after the GCS) with the token."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if node.proc.poll() is not None:
                raise ClusterError(f"the head exited with {node.proc.returncode}: {node.log_tail()}")
            try:
                self.api("/api/version", timeout=2)
                return
            except (OSError, urllib.error.URLError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"the head's dashboard did not answer within {timeout:.0f} s ({last}): {node.log_tail()}"
                )
            time.sleep(0.25)

    def alive_nodes(self) -> list[dict]:
        """The nodes the cluster counts as alive (the dashboard's state API), with their resources."""
        reply = self.api("/api/v0/nodes?limit=100&detail=1&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE")
        return reply["data"]["result"]["result"]

    def node_ids(self) -> dict[str, str]:
        """Our node name (``node_w1``) -> Ray node id, for the nodes alive."""
        out = {}
        # a node launched again after a start that timed out may briefly have two registrations: the newest
        for info in sorted(self.alive_nodes(), key=lambda i: i.get("start_time_ms") or 0):
            for node in self.nodes:
                if node.resource in (info.get("resources_total") or {}):
                    out[node.name] = info["node_id"]
        return out

    def wait_for_nodes(self, timeout: float = 90.0) -> dict[str, str]:
        """Until every node started and not killed is alive in the cluster; returns ``node_ids()``."""
        want = {n.name for n in self.nodes if not n.killed}
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            for node in self.nodes:
                if not node.killed and node.proc.poll() is not None and not self._restart(node):
                    raise ClusterError(f"node {node.name} exited with {node.proc.returncode}: {node.log_tail()}")
            try:
                ids = self.node_ids()
                if want <= set(ids):
                    return ids
                last = f"alive: {sorted(ids)}"
            except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise ClusterError(f"nodes {sorted(want)} not all alive within {timeout:.0f} s ({last})")
            time.sleep(0.25)

    def wait_node_dead(self, node: Node, timeout: float = 60.0) -> None:
        """Until the cluster no longer counts ``node`` as alive (its health checks failed)."""
        deadline = time.monotonic() + timeout
        while node.name in self.node_ids():
            if time.monotonic() > deadline:
                raise ClusterError(f"node {node.name} still alive {timeout:.0f} s after it was killed")
            time.sleep(0.25)

    def kill_node(self, node: Node, timeout: float = 15.0) -> set[int]:
        """SIGKILL every process of a worker node (not the head: that is the cluster)."""
        if node.head:
            raise ClusterError("kill a worker node, not the head")
        return node.kill(timeout)

    # -- the end --------------------------------------------------------------------------------------

    def stop(self, timeout: float = 30.0) -> None:
        """Kill every process of every node (workers first), then remove ``root`` if it was ours. Safe to
        call twice; never raises for a process that will not die (it says so on stderr)."""
        for node in reversed(self.nodes):
            if node.proc is None:
                continue
            try:
                node.kill(timeout)
            except ClusterError as exc:
                print(f"RayCluster.stop: {exc}", file=sys.stderr)
            finally:
                if node._log is not None:
                    node._log.close()
                    node._log = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self, chars: int = 1500) -> str:
        """The tail of every node's ``ray start`` output (for a failure message)."""
        return "\n".join(f"--- {n.name} ---\n{n.log_tail(chars)}" for n in self.nodes)
