"""The StateFun playground's HTTP I/O (``io.statefun.playground.v1``) on real Ray and real loopback HTTP:
the greeter served by the official SDK and embedded, bad requests answered 4xx with nothing lost, and a
shard killed mid-run with every acknowledged PUT processed once and every GET record seen once."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

import rayfun
from rayfun import IntType, StatefulFunctions, ValueSpec, egress_message_builder, make_json_type
from tests.remote.conftest import _start_server, sdk_python  # noqa: F401 (a fixture)
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent.parent
EXAMPLE = REPO / "examples" / "playground"
EGRESS_RECORD = make_json_type("io.statefun.playground/EgressRecord")


def _module(ingress_port: int, egress_port: int, function_port: int) -> str:
    """examples/playground/module.yaml with the ports of this test."""
    text = (EXAMPLE / "module.yaml").read_text()
    return (
        text.replace("8090", str(ingress_port))
        .replace("8091", str(egress_port))
        .replace("127.0.0.1:8000", f"127.0.0.1:{function_port}")
    )


def put(port: int, path: str, body: bytes, content_type: str | None, method: str = "PUT") -> tuple[int, str]:
    """What ``curl -X PUT -H "Content-Type: ..." -d BODY localhost:PORT/PATH`` does: (status, body)."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=90)  # urllib would add a Content-Type
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def get(port: int, topic: str) -> tuple[int, bytes]:
    """``curl -X GET localhost:PORT/TOPIC``: (status, body)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{topic}", timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def drain(port: int, topic: str, expected: int, timeout: float = 60.0) -> list[bytes]:
    """GET records until ``expected`` came (or ``timeout``), then one more GET that must be 404."""
    records: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(records) < expected and time.monotonic() < deadline:
        status, body = get(port, topic)
        if status == 200:
            records.append(body)
        else:
            assert status == 404, (status, body)
            time.sleep(0.1)
    return records


def closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def greet(ingress: int, name: str) -> tuple[int, str]:
    """The playground README's curl command for the greeter."""
    return put(
        ingress, f"/example/person/{name}", json.dumps({"name": name}).encode(), "application/vnd.example/GreetRequest"
    )


def _run_greeter(functions: StatefulFunctions, module: str, ingress: int, egress: int, tmp_path: Path) -> None:
    app = rayfun.start(functions, shards=2, module=module, checkpoint_dir=str(tmp_path / "cp"), checkpoint_interval=0.2)
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # a PUT returns once a checkpoint has it
            answers = list(pool.map(lambda n: greet(ingress, n), ["Bob", "Alice", "Joe"]))
        assert answers == [(200, "")] * 3
        assert greet(ingress, "Bob") == (200, "")
        greetings = drain(egress, "greetings", 4)
        assert sorted(g.decode() for g in greetings) == sorted(
            ["Hello Bob!", "Hello Alice!", "Hello Joe!", "Hello again Bob, visit number 2!"]
        )
        assert get(egress, "greetings")[0] == 404  # popped: each record once
        assert app.state("example/person", "Bob") == {"visits": 2}
    finally:
        app.stop()
    assert closed(ingress) and closed(egress)  # both servers stop with the application


def test_greeter_served_by_the_official_sdk(ray_session, sdk_python, tmp_path):  # noqa: F811
    ingress, egress, function_port = free_port(), free_port(), free_port()
    for _ in _start_server([sdk_python, str(EXAMPLE / "serve.py")], function_port, "SDK greeter"):
        _run_greeter(StatefulFunctions(), _module(ingress, egress, function_port), ingress, egress, tmp_path)


def test_greeter_embedded_is_the_sdk_code_with_another_import(ray_session, tmp_path):
    sdk = (EXAMPLE / "greeter.py").read_text().splitlines()
    embedded = (EXAMPLE / "greeter_embedded.py").read_text().splitlines()
    code = [i for i, line in enumerate(sdk) if not line.startswith('"""') and not line.startswith("playground egress")]
    differ = [i for i in code if sdk[i] != embedded[i]]
    assert len(sdk) == len(embedded) and [sdk[i].split()[:2] for i in differ] == [["from", "statefun"]]
    from examples.playground.greeter_embedded import functions

    ingress, egress = free_port(), free_port()
    _run_greeter(functions, _module(ingress, egress, free_port()), ingress, egress, tmp_path)


def _counter_functions() -> StatefulFunctions:
    """``test/counter``: counts its messages and emits ``id:seq:count`` (seq from the JSON body)."""
    functions = StatefulFunctions()

    @functions.bind("test/counter", specs=[ValueSpec("count", IntType)])
    def counter(context, message):
        count = (context.storage.count or 0) + 1
        context.storage.count = count
        seq = json.loads(message.raw_value())["seq"]
        record = {"topic": "out", "payload": f"{context.address.id}:{seq}:{count}"}
        context.send_egress(egress_message_builder("io.statefun.playground/egress", record, EGRESS_RECORD))

    return functions


def _start_counter(tmp_path: Path, ingress: int, egress: int, **kwargs) -> rayfun.App:
    module = f"""
kind: io.statefun.playground.v1/ingress
spec: {{port: {ingress}}}
---
kind: io.statefun.playground.v1/egress
spec: {{port: {egress}, topics: [out]}}
"""
    return rayfun.start(
        _counter_functions(),
        shards=2,
        module=module,
        checkpoint_dir=str(tmp_path / "cp"),
        checkpoint_interval=0.2,
        **kwargs,
    )


def _send(ingress: int, seq: int, id: str = "c0") -> tuple[int, str]:
    return put(ingress, f"/test/counter/{id}", json.dumps({"seq": seq}).encode(), "application/vnd.test/Count")


def test_bad_requests_are_4xx_naming_the_cause_and_lose_nothing(ray_session, tmp_path):
    ingress, egress = free_port(), free_port()
    app = _start_counter(tmp_path, ingress, egress)
    try:
        body = json.dumps({"seq": 0}).encode()
        cases = [
            (put(ingress, "/test/counter", body, "application/vnd.test/Count"), 404, "/<namespace>/<type>/<id>"),
            (put(ingress, "/test/counter/c0/x", body, "application/vnd.test/Count"), 404, "/<namespace>/<type>/<id>"),
            (put(ingress, "/test/counter/c0", body, None), 415, "missing Content-Type"),
            (put(ingress, "/test/counter/c0", body, "application/json"), 415, "application/json"),
            (put(ingress, "/test/counter/c0", body, "application/vnd.nonamespace"), 415, "nonamespace"),
            (put(ingress, "/test/nobody/c0", body, "application/vnd.test/Count"), 404, "test/nobody"),
            (put(ingress, "/test/counter/c0", b"", None, method="GET"), 405, "PUT"),
        ]
        for (status, text), expected, cause in cases:
            assert status == expected and cause in text, (status, text, cause)
        assert get(egress, "elsewhere") == (404, b"unknown topic 'elsewhere' (topics: out)\n")
        assert get(egress, "out")[0] == 404  # nothing yet, and none of the bad requests got in
        assert _send(ingress, 1) == (200, "")
        assert drain(egress, "out", 1) == [b"c0:1:1"]
        assert app.state("test/counter", "c0") == {"count": 1}
    finally:
        app.stop()


def test_a_port_in_use_fails_the_start_clearly(ray_session, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(Exception, match=f"cannot listen on 127.0.0.1:{port}"):
            _start_counter(tmp_path, port, free_port())


@pytest.mark.slow
def test_a_shard_killed_mid_run_keeps_every_acknowledged_put_exactly_once(ray_session, tmp_path):
    import ray

    ingress, egress = free_port(), free_port()
    ids, n = [f"c{i}" for i in range(8)], 240
    app = _start_counter(tmp_path, ingress, egress, standby=False)
    acked: set[int] = set()
    got: list[bytes] = []
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = {pool.submit(_send, ingress, seq, ids[seq % len(ids)]): seq for seq in range(n)}
            time.sleep(1.0)
            shards = ray.get(app._coordinator.shard_handles.remote())
            ray.kill(shards[0], no_restart=True)
            for future in concurrent.futures.as_completed(futures, timeout=150):
                status, text = future.result()
                if status == 200:
                    acked.add(futures[future])
                else:  # not acknowledged: the client cannot tell, it may retry (at-least-once for it)
                    assert status in (503, 504), (status, text)
        assert app.info()["recoveries"] >= 1
        assert len(acked) >= n // 2, f"only {len(acked)} of {n} PUTs acknowledged"
        app.wait(timeout=60)
        app.checkpoint()  # the last epoch's records become visible
        got = drain(egress, "out", len(acked), timeout=30)
        time.sleep(0.5)
        got += drain(egress, "out", 0, timeout=0)
        counts = {id: app.state("test/counter", id).get("count", 0) for id in ids}
    finally:
        app.stop()
    records = Counter(r.decode() for r in got)
    assert [r for r, c in records.items() if c > 1] == []  # no GET record seen twice
    seqs = Counter(int(r.split(":")[1]) for r in records)
    assert [s for s, c in seqs.items() if c > 1] == []  # no PUT processed twice
    assert acked <= set(seqs), f"acknowledged but lost: {sorted(acked - set(seqs))[:10]}"
    for id in ids:  # the state rolled back with the input: each id's counts are exactly 1..count
        mine = sorted(int(r.split(":")[2]) for r in records if r.startswith(id + ":"))
        assert mine == list(range(1, counts[id] + 1)), id


def test_egress_records_it_cannot_take_are_rejected_for_the_dead_letters():
    """No Ray: a partition publishes the good records and names each bad one (the runtime dead-letters them)."""
    from types import SimpleNamespace

    from rayfun.connectors.playground import EGRESS_ID, PlaygroundEgressRecordError, _EgressPartition
    from rayfun.messages import kafka_egress_message

    published: list = []
    server = SimpleNamespace(publish=SimpleNamespace(remote=lambda *args: published.append(args)))
    partition = _EgressPartition(EGRESS_ID, server, 3, ("out",))
    good = egress_message_builder(EGRESS_ID, {"topic": "out", "payload": {"n": 1}}, EGRESS_RECORD)
    kafka = kafka_egress_message(typename=EGRESS_ID, topic="out", key="k", value="v")
    elsewhere = egress_message_builder(EGRESS_ID, {"topic": "other", "payload": "x"}, EGRESS_RECORD)
    wrong = egress_message_builder(EGRESS_ID, 7, IntType)
    with pytest.raises(PlaygroundEgressRecordError) as info:
        partition.write_batch([good, kafka, elsewhere, wrong], 5)
    assert published == [(3, 5, [("out", b'{"n": 1}'), ("out", b"v")])]
    reasons = [reason for _, reason in info.value.rejected]
    assert "unknown topic 'other'" in reasons[0] and "io.statefun.types/int" in reasons[1]
