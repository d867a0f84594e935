"""A real three-node Ray cluster on this machine (a head and two workers, ``ray start`` each, token
authentication on) runs the chaos campaign's seeded workload (cycles, delayed and cancelled messages,
expiring state, exactly-once file egress) from a driver process of its own, its shards spread over the
nodes. Mid-run, either a worker node that hosts a shard is killed for real (SIGKILL of its raylet, agents
and workers), or the driver process is SIGKILLed and a new driver resumes from the checkpoint directory.
Either way the final state of every instance and the egress multiset must be exactly what the workload
implies: nothing lost, nothing twice. ``RAYFUN_CLUSTER_SEED`` replays a seed (each test prints its own)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from tests.chaos.campaign import EMBEDDED, TALLY, compare, read_egress_files
from tests.cluster.driver import workload
from tests.support.ray_cluster import RayCluster, alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARDS = 3


def seed_of(test: str) -> int:
    seed = int(os.environ.get("RAYFUN_CLUSTER_SEED") or random.randrange(1, 1_000_000))
    print(f"{test}: seed {seed} (replay: RAYFUN_CLUSTER_SEED={seed} pytest tests/cluster/test_node_loss.py)")
    return seed


def spec_of(seed: int, work: str) -> dict:
    return {
        "seed": seed,
        "work": work,
        "shards": SHARDS,
        "instances": 100,
        "roots": 1200,
        "spread_ms": 10_000,  # most roots wait in a delayed message of up to 10 s: work stays in flight
        "interval": 0.5,
        "wait_s": 180,
    }


def three_nodes(cluster: RayCluster) -> dict[str, str]:
    cluster.start_head(num_cpus=1)
    cluster.add_worker("w1", num_cpus=1)
    cluster.add_worker("w2", num_cpus=1)
    return cluster.wait_for_nodes(timeout=120)


class Driver:
    """One driver process against the cluster (its own session: SIGKILL reaches all of it)."""

    def __init__(self, cluster: RayCluster, spec: dict, label: str) -> None:
        self.work = spec["work"]
        self.log_path = os.path.join(self.work, f"driver-{label}.log")
        env = cluster.client_env(PYTHONPATH=REPO, RAYFUN_LOG_LEVEL="INFO")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cluster.driver", json.dumps(spec)],
            cwd=REPO,  # Ray puts the driver's directory on the workers' sys.path: they import tests.chaos
            env=env,
            stdout=open(self.log_path, "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def status(self) -> dict | None:
        try:
            with open(os.path.join(self.work, f"status-{self.proc.pid}.json")) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def log(self, chars: int = 3000) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-chars:]

    def wait_for(self, check, timeout: float, what: str) -> dict:
        """Poll ``check(status)`` until true (returns that status); fail with the driver's log after
        ``timeout`` or if the driver exits."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status is not None and check(status):
                return status
            if self.proc.poll() is not None:
                pytest.fail(f"the driver exited ({self.proc.returncode}) before {what}: {self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:.0f} s (status {status}): {self.log()}")
            time.sleep(0.1)

    def finish(self, timeout: float) -> None:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the driver did not finish within {timeout:.0f} s: {self.log()}")
        assert code == 0, f"the driver failed ({code}): {self.log()}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)


def actors(cluster: RayCluster) -> dict[str, dict]:
    """Alive actors by id: node id, pid, class name (the dashboard's state API)."""
    reply = cluster.api(
        "/api/v0/actors?limit=10000&detail=1&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE", timeout=10
    )
    return {a["actor_id"]: a for a in reply["data"]["result"]["result"]}


def placement(cluster: RayCluster, status: dict) -> dict[str, list]:
    """Our node name -> the roles (``shard0``..., ``coordinator``, ``collector``, ``driver``) on it."""
    names = {node_id: name for name, node_id in cluster.node_ids().items()}
    alive = actors(cluster)
    out: dict[str, list] = {}
    roles = [(f"shard{i}", a) for i, a in enumerate(status["shards"])]
    roles += [("coordinator", status["coordinator"]), ("collector", status["collector"])]
    if status["info"].get("standby"):
        roles.append(("standby", status["info"]["standby"]))
    for role, actor_id in roles:
        actor = alive.get(actor_id)
        node = names.get(actor["node_id"], actor["node_id"]) if actor else "not alive"
        out.setdefault(node, []).append((role, actor["pid"] if actor else None))
    out.setdefault(names.get(status["driver_node"], status["driver_node"]), []).append(("driver", None))
    return out


def check_exact(spec: dict, states: dict, tallies: dict) -> None:
    wl = workload(spec)
    published = read_egress_files(os.path.join(spec["work"], "egress"))
    egress = Counter(r for _, r in published)
    held = {(EMBEDDED, i): s for i, s in states.items()}
    held.update({(TALLY, i): s for i, s in tallies.items()})  # the slot runner's function (state by column)
    problems = compare(wl, held, egress)
    assert not problems, f"seed {spec['seed']}: " + "; ".join(problems)
    assert sum(egress.values()) == sum(wl.egress.values()) > 0
    assert sum(wl.expected.values()) > 0


def finish_exact(driver: Driver, spec: dict, began: float) -> None:
    """Let the driver run to its end, then check its final state and the published egress exactly."""
    driver.finish(timeout=240)
    with open(os.path.join(spec["work"], "state.json")) as f:
        final = json.load(f)
    check_exact(spec, final["state"], final["tally"])
    print(f"exact; info {final['info']}; {time.monotonic() - began:.1f} s in all")


def manifests(work: str) -> list[int]:
    root = os.path.join(work, "cp", "manifests")
    names = os.listdir(root) if os.path.isdir(root) else []
    return sorted(int(n[3:-5]) for n in names if n.startswith("cp-") and n.endswith(".json"))


def test_worker_node_killed_mid_run_loses_nothing_and_duplicates_nothing(ray_cluster, tmp_path):
    began = time.monotonic()
    seed = seed_of("node loss")
    rng = random.Random(seed)
    ids = three_nodes(ray_cluster)
    spec = spec_of(seed, str(tmp_path))
    driver = Driver(ray_cluster, spec, "1")
    try:
        # running, two checkpoints complete, the shards on more than one node
        status = driver.wait_for(lambda s: (s["info"]["last_checkpoint"] or 0) >= 2, 120, "two checkpoints")
        where = placement(ray_cluster, status)
        shard_nodes = {node for node, roles in where.items() if any(r.startswith("shard") for r, _ in roles)}
        print(f"placement before the kill: {where}")
        assert len(shard_nodes) >= 2, f"the shards all ran on one node: {where}"
        head_roles = {r for r, _ in where.get("node_head", [])}
        # the coordinator and the in-memory egress stay on the driver's node (the head): a worker's death
        # never takes them; the standby sits where the fewest shards are (here: the head, on a tie)
        assert {"driver", "coordinator", "collector"} <= head_roles, where
        assert "standby" in head_roles, where
        # the victim: a worker node with a shard
        candidates = [n for n in ray_cluster.nodes if not n.head and n.name in shard_nodes]
        assert candidates, f"no worker node hosts a shard: {where}"
        victim = rng.choice(candidates)
        shard_pids = {pid for role, pid in where[victim.name] if role.startswith("shard")}
        assert shard_pids <= victim.pids(), f"the shard processes {shard_pids} are not among {victim.name}'s"
        time.sleep(rng.uniform(0.0, 1.5))
        before = driver.status()
        assert driver.proc.poll() is None and before["info"]["recoveries"] == 0, before
        killed_at = time.monotonic()
        killed = ray_cluster.kill_node(victim)
        published = len(read_egress_files(os.path.join(spec["work"], "egress")))
        total = sum(workload(spec).egress.values())
        assert published < total, f"all {total} egress records were published before the kill: not mid-run"
        assert not victim.pids() and not any(map(alive, shard_pids | killed))
        print(
            f"killed {victim.name} ({len(killed)} processes, shards {sorted(r for r, _ in where[victim.name])}) "
            f"{time.monotonic() - began:.1f} s in, at checkpoint {before['info']['last_checkpoint']}, "
            f"{published} of {total} egress records published"
        )
        ray_cluster.wait_node_dead(victim, timeout=60)

        # recovered onto the surviving nodes
        status = driver.wait_for(lambda s: s["info"]["recoveries"] >= 1, 60, "recovery after the node loss")
        recovered_s = time.monotonic() - killed_at
        restored = status["info"]["last_checkpoint"] or 0
        status = driver.wait_for(
            lambda s: (s["info"]["last_checkpoint"] or 0) > restored, 60, "a checkpoint after the recovery"
        )
        where = placement(ray_cluster, status)
        print(f"recovered in {recovered_s:.1f} s; placement after: {where}")
        shards_after = {role: node for node, roles in where.items() for role, _ in roles if role.startswith("shard")}
        assert len(shards_after) == SHARDS and set(shards_after.values()) <= set(ids) - {victim.name}, where
        assert ids[victim.name] not in ray_cluster.node_ids().values()

        finish_exact(driver, spec, began)
    finally:
        driver.kill()


def test_driver_killed_mid_run_a_new_driver_resumes_exactly(ray_cluster, tmp_path):
    began = time.monotonic()
    seed = seed_of("driver kill")
    rng = random.Random(seed)
    three_nodes(ray_cluster)
    spec = spec_of(seed, str(tmp_path))
    first = Driver(ray_cluster, spec, "1")
    second = None
    try:
        status = first.wait_for(lambda s: (s["info"]["last_checkpoint"] or 0) >= 2, 120, "two checkpoints")
        where = placement(ray_cluster, status)
        print(f"placement of the first driver's application: {where}")
        assert len([n for n, roles in where.items() if any(r.startswith("shard") for r, _ in roles)]) >= 2, where
        own = set(status["shards"]) | {status["coordinator"], status["collector"]}
        time.sleep(rng.uniform(0.0, 1.5))
        assert first.proc.poll() is None, f"the first driver finished before it could be killed: {first.log()}"
        first.kill()  # SIGKILL: its coordinator and shards die with it (Ray's fate sharing with the owner)
        print(
            f"first driver SIGKILLed {time.monotonic() - began:.1f} s in, near checkpoint {manifests(spec['work'])[-1]}"
        )
        deadline = time.monotonic() + 60
        while own & set(actors(ray_cluster)):
            assert time.monotonic() < deadline, f"the dead driver's actors still live: {own & set(actors(ray_cluster))}"
            time.sleep(0.2)
        newest = manifests(spec["work"])[-1]
        assert not os.path.exists(os.path.join(spec["work"], "state.json"))
        published = len(read_egress_files(os.path.join(spec["work"], "egress")))
        total = sum(workload(spec).egress.values())
        assert published < total, f"the first driver had published all {total} egress records: not mid-run"
        print(f"{published} of {total} egress records published by the first driver")

        second = Driver(ray_cluster, spec, "2")
        status = second.wait_for(lambda s: True, 120, "the second driver's start")
        assert status["first_info"]["last_checkpoint"] == newest, (status["first_info"], newest)
        print(f"second driver resumed from checkpoint {newest}; placement: {placement(ray_cluster, status)}")
        finish_exact(second, spec, began)
    finally:
        first.kill()
        if second is not None:
            second.kill()
