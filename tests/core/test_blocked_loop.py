"""A shard whose event loop is blocked in one sink call is waited for (and warned about), not taken for dead;
one blocked for longer than LOOP_STALL_S is replaced, with a reason that names the call, and loses nothing; a
recovery whose restore gets stuck so starts over instead of waiting forever.

Before: the coordinator took any shard that did not answer a status call within 10 s for dead, so a sink
call that took 15 s (a slow broker, well inside the sink's own timeouts) had a healthy shard killed and the
application rolled back; a broker that stayed slow got every replacement killed the same way. The health
check is now answered on the shard's own thread (a Ray concurrency group) and says how long the loop has
been blocked, and in what.

The knobs are set small for this application's job (its ``runtime_env``), in a second driver on the test
session's Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

DRIVER = r"""
import json, os, sys, time
import ray
from rayfun.ray_auth import keep_token_auth
keep_token_auth()
ray.init(address={address!r}, log_to_driver=True, runtime_env={{"env_vars": {{
    "RAYFUN_STATUS_TIMEOUT_S": "3", "RAYFUN_LOOP_STALL_S": "15", "RAYFUN_HEARTBEAT_S": "0.2"}}}})
import rayfun
from rayfun import IntType, StatefulFunctions, StringType, ValueSpec
from rayfun.connectors.memory import MemorySource
from rayfun.io import DeliverySemantic, Sink, SinkPartition
from rayfun.messages import egress_message_builder

class StallOnce(SinkPartition):
    def __init__(self, flag, seconds):
        self.flag, self.seconds = flag, seconds
    def write_batch(self, records, epoch):
        try:
            os.close(os.open(self.flag, os.O_CREAT | os.O_EXCL))  # the first write anywhere blocks, once
        except FileExistsError:
            return
        time.sleep(self.seconds)

class StallingSink(Sink):
    id = "t/out"
    delivery = DeliverySemantic.AT_LEAST_ONCE
    def __init__(self, flag, seconds, armed=None):
        self.flag, self.seconds, self.armed = flag, seconds, armed
    def build_partition(self, index, count):
        if self.armed is not None and os.path.exists(self.armed):  # a start that blocks (once), once armed
            try:
                os.close(os.open(self.armed + ".fired", os.O_CREAT | os.O_EXCL))
                time.sleep(40)
            except FileExistsError:
                pass
        return StallOnce(self.flag, self.seconds)

functions = StatefulFunctions()

@functions.bind("t/counter", specs=[ValueSpec("n", IntType)])
def counter(context, message):
    context.storage.n = (context.storage.n or 0) + message.as_int()
    context.send_egress(egress_message_builder("t/out", context.address.id, StringType))

phase = {phase!r}
started = time.monotonic()
def progress(what):
    print(f"[{{time.monotonic() - started:6.1f}} s] {{phase}}: {{what}}", file=sys.stderr, flush=True)

def source():
    return MemorySource(
        lambda p, k: (("t/counter", str(i % 10), 1) for i in range(p, 3000, k)), partitions=2, id="t/in"
    )

if phase in ("slow", "stuck"):
    sink = StallingSink(os.path.join({tmp!r}, phase), {{"slow": 6.0, "stuck": 40.0}}[phase])
else:  # a replacement whose restore blocks in its sink's start: the recovery starts over instead of waiting
    armed = os.path.join({tmp!r}, "armed")
    sink = StallingSink(armed + ".write", 0.0, armed)
app = rayfun.start(functions, shards=2, ingresses=[source()], egresses=[sink])
progress("started")
try:
    app.wait(timeout=120)
    progress("drained")
    if phase == "restore":
        open(armed, "w").close()
        ray.kill(ray.get(app._coordinator.shard_handles.remote())[0], no_restart=True)
        deadline = time.monotonic() + 90
        while app.info()["recoveries"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        progress("recovering")
        app.wait(timeout=120)
        progress("drained again")
    info = app.info()
    results = {{
        "recoveries": info["recoveries"],
        "last_failure": info["last_failure"],
        "state": [app.state("t/counter", str(i), wait=False).get("n") for i in range(10)],
    }}
    if phase == "restore":
        results["fired"] = os.path.exists(armed + ".fired")
finally:
    app.stop()
    progress("stopped")
print("RESULTS " + json.dumps(results))
"""


def run_phase(ray_session, tmp_path, phase: str) -> tuple[dict, str]:
    """Runs one phase's application in its own driver; returns its results and everything it printed."""
    address = ray_session.get_runtime_context().gcs_address
    try:
        out = subprocess.run(
            [sys.executable, "-c", DRIVER.format(address=address, tmp=str(tmp_path), phase=phase)],
            capture_output=True,
            text=True,
            timeout=210,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
    except subprocess.TimeoutExpired as timeout:
        printed = timeout.stderr.decode(errors="replace") if isinstance(timeout.stderr, bytes) else timeout.stderr
        pytest.fail(f"the {phase} driver ran past {timeout.timeout} s; it printed:\n{(printed or '')[-4000:]}")
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULTS ")]
    assert out.returncode == 0 and lines, out.stderr[-4000:]
    return json.loads(lines[-1][len("RESULTS ") :]), out.stdout + out.stderr


def test_a_slow_sink_call_is_waited_for(ray_session, tmp_path):
    """A write that blocks 6 s: longer than the health timeout (3 s), shorter than LOOP_STALL_S (15 s)."""
    slow, everything = run_phase(ray_session, tmp_path, "slow")
    assert slow["recoveries"] == 0, slow
    assert slow["state"] == [300] * 10
    assert "its event loop has been blocked for" in everything and "egress t/out: publishing" in everything


def test_a_stuck_sink_call_gets_its_shard_replaced(ray_session, tmp_path):
    """A write that blocks 40 s, past LOOP_STALL_S: replaced, rolled back, nothing lost."""
    stuck, everything = run_phase(ray_session, tmp_path, "stuck")
    assert stuck["recoveries"] >= 1, stuck
    assert "event loop has been blocked for" in stuck["last_failure"], stuck
    assert "egress t/out: publishing" in stuck["last_failure"], stuck
    assert stuck["state"] == [300] * 10


def test_a_restore_stuck_in_a_sink_start_starts_over(ray_session, tmp_path):
    """A replacement whose restore blocks 40 s in its sink's start: the recovery starts over."""
    restore, everything = run_phase(ray_session, tmp_path, "restore")
    assert restore["fired"] and restore["recoveries"] >= 1, restore
    assert "while restoring the shards" in everything and "recovering again" in everything
    assert "opening its partition" in restore["last_failure"], restore
    assert restore["state"] == [300] * 10
