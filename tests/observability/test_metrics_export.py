"""Ray's Prometheus endpoint shows what rayfun counts: a real one-node cluster (``ray start`` with its own
metrics export port), a driver running a workload with embedded and remote functions, an egress, dead
letters and checkpoints; the test scrapes the endpoint over HTTP, as Prometheus would, and checks the
figures against what the workload implies and against ``app.metrics()``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict

import pytest

from tests.observability.metrics_driver import COUNTER, MESSAGES, REMOTE
from tests.support.ray_cluster import RayCluster
from tests.support.servers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format -> metric name -> [(labels, value)]."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for line in text.splitlines():
        found = SAMPLE.match(line)
        if found and not line.startswith("#"):
            name, labels, value = found.groups()
            out[name].append((dict(LABEL.findall(labels or "")), float(value)))
    return out


def total(samples, metric: str, **labels: str) -> float:
    """The sum of ``metric`` over the series whose labels match (Ray prefixes custom metrics ``ray_``,
    and Prometheus counters end in ``_total``)."""
    found = [
        value
        for name in (f"ray_{metric}", f"ray_{metric}_total")
        for tags, value in samples.get(name, [])
        if all(tags.get(k) == v for k, v in labels.items())
    ]
    return sum(found)  # 0 when there is no such series (Ray exports a counter once it moved)


@pytest.fixture
def ray_cluster():
    with RayCluster() as cluster:
        yield cluster


def test_the_prometheus_endpoint_shows_rayfun_figures(ray_cluster, tmp_path):
    head = ray_cluster.start_head(num_cpus=2)
    url = f"http://127.0.0.1:{head.ports['metrics_export_port']}/metrics"
    env = ray_cluster.client_env(RAYFUN_METRICS_INTERVAL_S="0.5", PYTHONPATH=REPO)
    driver = subprocess.Popen(
        [sys.executable, "-m", "tests.observability.metrics_driver", str(tmp_path), str(free_port())],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        table = None
        deadline = time.monotonic() + 240
        assert driver.stdout is not None
        for line in driver.stdout:
            if line.startswith("["):
                table = {row["function_type"]: row for row in json.loads(line)}
            if line.strip() == "READY" or time.monotonic() > deadline:
                break
        assert table is not None, f"the driver ended early (exit {driver.poll()})"
        typos = sum(1 for i in range(MESSAGES) if i % 8 == 7)
        assert table[COUNTER]["invocations"] == MESSAGES
        assert table[COUNTER]["egress"] == MESSAGES - typos  # a failed invocation has no effects
        assert table[COUNTER]["dead_letters"] == typos
        assert table[REMOTE]["invocations"] == MESSAGES - typos
        assert table[REMOTE]["mean_latency_ms"] > 0

        app = {"application": "observed"}
        wanted = {
            ("rayfun_function_invocations", COUNTER): MESSAGES,
            ("rayfun_function_invocations", REMOTE): MESSAGES - typos,
            ("rayfun_function_egress", COUNTER): MESSAGES - typos,
            ("rayfun_function_dead_letters", COUNTER): typos,
        }
        samples: dict = {}
        seen: dict = {}
        deadline = time.monotonic() + 90  # Ray's agents export every few seconds
        while time.monotonic() < deadline:
            samples = scrape(url)
            seen = {key: total(samples, key[0], function_type=key[1], **app) for key in wanted}
            if seen == wanted and total(samples, "rayfun_checkpoints_completed", **app) >= 1:
                break
            time.sleep(2)
        rayfun_names = sorted({n for n in samples if "rayfun" in n})
        assert seen == wanted, f"scraped {seen}; rayfun metrics there: {rayfun_names}"
        assert total(samples, "rayfun_checkpoints_completed", **app) >= 1
        assert total(samples, "rayfun_endpoint_requests", endpoint=REMOTE, **app) >= 1
        assert total(samples, "rayfun_endpoint_failures", endpoint=REMOTE, **app) == 0
        latency = total(samples, "rayfun_function_invocation_latency_seconds_count", function_type=COUNTER, **app)
        assert latency >= 1, rayfun_names
        requests = total(samples, "rayfun_endpoint_request_latency_seconds_count", endpoint=REMOTE, **app)
        assert requests >= 1, rayfun_names
        assert total(samples, "rayfun_shard_backlog", **app) == 0  # idle
        assert 0 <= total(samples, "rayfun_checkpoint_age_seconds", **app) < 120
    finally:
        if driver.stdin:
            driver.stdin.close()
        try:
            driver.wait(60)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait(10)
