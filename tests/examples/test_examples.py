"""The examples are part of the product: they must run and say what they should."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_example(*argv: str, timeout: int = 240) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fraud_showcase_alerts_reach_kafka_exactly_once(tmp_path):
    out = run_example("-m", "examples.fraud", "--checkpoint-dir", str(tmp_path / "cp"))
    found = re.search(r"(\d+) alerts in Kafka from 300 transactions \((\d+) egress records", out)
    assert found, out
    in_kafka, emitted = map(int, found.groups())
    assert in_kafka == emitted > 0
    assert "fraud count of acct-0: {'count': 2}" in out


@pytest.mark.timeout(200)
def test_greeter_and_ping_pong():
    out = run_example("examples/greeter.py")
    assert "Hello again Alice, visit number 3!" in out and "Alice's state: {'visits': 3}" in out
    out = run_example("examples/ping_pong.py")
    assert "game g3: last hit by example/pong" in out


@pytest.mark.timeout(300)
def test_notebook_runs_top_to_bottom():
    import nbformat
    from nbclient import NotebookClient

    path = os.path.join(ROOT, "notebooks", "rayfun_tour.ipynb")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    outputs = {
        i: "".join(o.get("text", "") or str(o.get("data", {}).get("text/plain", "")) for o in cell.get("outputs", []))
        for i, cell in enumerate(nb.cells)
    }
    assert "alice: cannot withdraw 80" in outputs[5]
    assert "'alice': ({'balance': 50}, {'events': 1})" in outputs[6]
    assert "'bob': ({'balance': 500}, {'events': 2})" in outputs[6]
    assert "example/account" in outputs[8]
