"""``rayfun run module.yaml``: a remote-only StateFun application (functions served by the official SDK,
Kafka in and out, no Python of the user's), stopped with SIGTERM (a savepoint, exit 0) and run again: the
second run resumes exactly where the first stopped. ``rayfun status`` / ``rescale`` / ``stop`` by name."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.connectors.conftest import produce, read_topic
from tests.remote.conftest import _start_server
from tests.support.servers import free_port

REPO = Path(__file__).resolve().parent.parent.parent
MODULE = """
kind: io.statefun.endpoints.v2/http
spec:
  functions: cli/*
  urlPathTemplate: {url}/statefun
---
kind: io.statefun.kafka.v1/ingress
spec:
  id: cli/in
  address: {bootstrap}
  consumerGroupId: cli-{name}
  startupPosition:
    type: earliest
  topics:
    - topic: {source}
      valueType: cli/Record  # raw bytes (io.statefun.types/string would need the protobuf wrapper)
      targets:
        - cli/counter
---
kind: io.statefun.kafka.v1/egress
spec:
  id: cli/out
  address: {bootstrap}
  deliverySemantic:
    type: exactly-once
    transactionTimeout: 1min
"""
KEYS = [f"k{i}" for i in range(12)]


def _env(address: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), RAY_ADDRESS=address)


def _rayfun(*args: str, address: str) -> subprocess.Popen:
    """``rayfun ...`` as a user runs it (``python -m rayfun`` is the console script's entry point)."""
    return subprocess.Popen(
        [sys.executable, "-m", "rayfun", *args], cwd=str(REPO), env=_env(address), stderr=subprocess.PIPE, text=True
    )


def _rayfun_out(*args: str, address: str) -> str:
    """``rayfun ...`` to its end: what it printed (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, "-m", "rayfun", *args],
        cwd=str(REPO),
        env=_env(address),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"rayfun {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout


def _counts(bootstrap: str, topic: str) -> dict[str, list[int]]:
    """Per key, the counts the function wrote, in topic order (read_committed: published ones only)."""
    seen: dict[str, list[int]] = collections.defaultdict(list)
    for _, _, key, value in read_topic(bootstrap, topic, timeout=5):
        k, _, n = value.decode().partition(":")
        assert k == key.decode()
        seen[k].append(int(n))
    return seen


def _wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"rayfun run exited ({proc.returncode}) before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.5)
    proc.kill()
    raise AssertionError(
        f"timed out after {timeout} s waiting for {what}; rayfun run said: {proc.stderr.read()[-3000:]}"
    )


def _stop_with_sigterm(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, f"rayfun run exited {proc.returncode} on SIGTERM: {err[-3000:]}"
    return err


@pytest.mark.slow
def test_run_module_yaml_stops_with_a_savepoint_and_resumes_exactly(kafka_broker, sdk_python, ray_session, tmp_path):
    address = ray_session.get_runtime_context().gcs_address
    name = f"cli-{uuid.uuid4().hex[:6]}"
    source, sink = f"in-{name}", f"out-{name}"
    kafka_broker.create_topics([source, sink], partitions=2)
    bootstrap = kafka_broker.bootstrap
    server = _start_server(
        [sdk_python, str(Path(__file__).parent / "sdk_counter.py"), sink], free_port(), "SDK counter"
    )
    url = next(server)
    try:
        module = tmp_path / "module.yaml"
        module.write_text(MODULE.format(url=url, bootstrap=bootstrap, name=name, source=source))
        checkpoints = str(tmp_path / "cp")
        sent = collections.Counter()

        def feed(n: int) -> None:
            records = [(KEYS[i % len(KEYS)], f"r{i}") for i in range(n)]
            produce(bootstrap, source, records)
            sent.update(k for k, _ in records)

        feed(300)
        run = ["run", str(module), "--name", name, "--shards", "2", "--checkpoint-dir", checkpoints]
        first = _rayfun(*run, "--checkpoint-interval", "0.5", address=address)
        _wait_until(lambda: sum(map(len, _counts(bootstrap, sink).values())) >= 50, 60, "the first output", first)
        feed(300)  # more arrives while it runs: the savepoint cuts somewhere in the middle
        status = _rayfun_out("status", name, address=address)
        assert f"{name}: running, 2 shards" in status, status
        assert _rayfun_out("rescale", name, "3", address=address).startswith(f"{name}: 3 shards")
        err = _stop_with_sigterm(first)
        assert "savepoint: checkpoint" in err, err
        after_first = _counts(bootstrap, sink)
        assert _rayfun_out("status", address=address).strip() != name  # it is gone from the cluster

        feed(300)
        second = _rayfun(*run, address=address)
        total = sum(sent.values())
        _wait_until(lambda: sum(map(len, _counts(bootstrap, sink).values())) >= total, 180, "all output", second)
        assert "stopped with a savepoint" in _rayfun_out("stop", name, address=address)
        assert second.wait(timeout=60) == 0, second.stderr.read()[-3000:]

        final = _counts(bootstrap, sink)
        assert {k: sorted(v) for k, v in final.items()} == {k: list(range(1, n + 1)) for k, n in sent.items()}
        for key, counts in after_first.items():  # the second run went on from the first one's counts
            assert final[key][: len(counts)] == counts
        assert any(len(c) < sent[k] for k, c in after_first.items()), "the first run had read everything"
    finally:
        server.close()


def test_the_owning_run_waits_until_whoever_stopped_it_has_the_savepoint_id(ray_session, tmp_path):
    """``rayfun stop`` from another driver: the coordinator belongs to ``rayfun run``'s driver, whose exit
    ends it. ``rayfun run`` leaves once the state says stopped; if it left before the stopping driver had its
    answer, that driver saw the actor die and printed "stopped" with no savepoint (seen once in CI)."""
    import threading

    import rayfun
    from examples.greeter import functions
    from rayfun.cli.operate import _await_stop_answer
    from rayfun.connectors.memory import MemorySource

    name = f"handshake-{uuid.uuid4().hex[:6]}"
    source = MemorySource([("example/person", "Ann", "visit")] * 20, id="example/names")
    owner = rayfun.start(functions, shards=1, ingresses=[source], name=name, checkpoint_dir=str(tmp_path / "cp"))
    try:
        other = rayfun.connect(name)
        saved = ray_session.get(other._coordinator.stop.remote(True), timeout=120)  # stopped, not yet answered
        assert saved is not None and owner.info()["state"] == "stopped"
        waiter = threading.Thread(target=_await_stop_answer, args=(owner,), daemon=True)
        waiter.start()
        waiter.join(1.5)
        assert waiter.is_alive(), "rayfun run would have exited before the stopping driver had its answer"
        ray_session.get(other._coordinator.answer_received.remote(), timeout=30)
        waiter.join(10)
        assert not waiter.is_alive()

        with pytest.raises(rayfun.ApplicationNotFound, match="has stopped"):  # not a bare error about 0 shards
            rayfun.connect(name)
    finally:
        owner.stop()

    # App.stop from an attached driver (as `rayfun stop` does) gives the answer by itself
    owner = rayfun.start(functions, shards=1, ingresses=[], name=name, checkpoint_dir=str(tmp_path / "cp2"))
    try:
        assert isinstance(rayfun.connect(name).stop(savepoint=True), int)
        assert owner.info()["stop_answered"] and owner.info()["state"] == "stopped"
    finally:
        owner.stop()
