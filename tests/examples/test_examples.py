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


def _tagged(nb, tag: str):
    cells = [cell for cell in nb.cells if tag in cell.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"one cell tagged {tag!r} expected, found {len(cells)}"
    return cells[0]


def _text(cell) -> str:
    """A cell's stdout/stderr and the text/plain of its results."""
    return "".join(o.get("text", "") or str(o.get("data", {}).get("text/plain", "")) for o in cell.get("outputs", []))


def _check_tour(nb) -> None:
    """What the tour must show: alerts, tables, a plot, exact results after the kill, a clean stop."""
    alerts = _text(_tagged(nb, "alerts"))
    found = re.search(r"(\d+) alerts from 200 transactions", alerts)
    assert found and int(found.group(1)) > 0, alerts
    assert "shady" in alerts
    for tag in ("alerts", "state", "metrics", "offline"):  # tables, rendered as HTML
        assert any("text/html" in o.get("data", {}) for o in _tagged(nb, tag).outputs), tag
    assert "fraud/transaction-manager" in _text(_tagged(nb, "metrics"))
    assert "recoveries: 1," in _text(_tagged(nb, "live"))
    assert any("image/png" in o.get("data", {}) for o in _tagged(nb, "plot").outputs)
    exact = _text(_tagged(nb, "exact"))
    found = re.search(r"alerts: (\d+), distinct transactions alerted: (\d+), expected \(harness\): (\d+)", exact)
    assert found, exact
    alerted, distinct, expected = map(int, found.groups())
    assert alerted == distinct == expected > 0, exact  # none lost, none doubled, despite the kill
    assert "alerts identical to the harness's: True" in exact
    assert "fraud reports counted: 130 of 130 sent; counts identical to the harness's: True" in exact
    assert "stopped; the last checkpoint was" in _text(_tagged(nb, "stop"))
    assert "{'fraud/counter': 55}" in _text(_tagged(nb, "offline"))  # no transaction left half-decided
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            assert o.get("output_type") != "error", f"cell {i}: {o.get('ename')}: {o.get('evalue')}"
            if o.get("output_type") == "stream":
                assert "Traceback" not in o["text"] and "Error" not in o["text"], f"cell {i}: {o['text'][-2000:]}"


def test_notebook_is_stored_with_its_outputs():
    """The committed notebook reads on GitHub: its outputs (tables, the plot) are stored, and say the same."""
    import nbformat

    nb = nbformat.read(os.path.join(ROOT, "notebooks", "rayfun_tour.ipynb"), as_version=4)
    _check_tour(nb)


@pytest.mark.timeout(300)
def test_notebook_runs_top_to_bottom():
    import nbformat
    from nbclient import NotebookClient

    path = os.path.join(ROOT, "notebooks", "rayfun_tour.ipynb")
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []  # judge this run's outputs, not the stored ones
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    _check_tour(nb)
