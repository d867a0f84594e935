"""module.yaml: StateFun's endpoint kinds, durations, rayfun's extra keys, plug-in kinds, clear errors."""

from __future__ import annotations

import pickle
from datetime import timedelta

import pytest

from rayfun import module_kinds
from rayfun.module_yaml import ModuleSpecError, load_module, register_kind, registered_kinds
from rayfun.remote import HttpEndpoint
from rayfun.remote.endpoint import parse_duration

pytestmark = pytest.mark.timeout(30)

PLAYGROUND = """
kind: io.statefun.endpoints.v2/http
spec:
  functions: example/*
  urlPathTemplate: http://functions:8000/statefun
  transport:
    type: io.statefun.transports.v1/async
---
kind: io.statefun.endpoints.v2/http
spec:
  functions: com.example/greeter
  urlPathTemplate: https://fns.example.com:8443/{function.name}
  maxNumBatchRequests: 50
  maxRetries: 5
  onFailure: dead-letter
  maxConcurrentRequests: 16
  transport:
    call: 1 min
    connect: 5s
    pool_ttl: 30s
    pool_size: 64
    payload_max_bytes: 1048576
    trust_cacerts: file:/etc/ssl/ca.pem
    client_cert: /etc/ssl/client.pem
    client_key: file:///etc/ssl/client.key
"""


def test_v2_endpoints():
    spec = load_module(PLAYGROUND)
    assert spec.ingresses == [] and spec.egresses == []
    default, custom = spec.endpoints
    assert default == HttpEndpoint("example/*", "http://functions:8000/statefun")
    assert (default.call_timeout, default.connect_timeout, default.read_timeout) == (120.0, 20.0, None)
    assert default.max_num_batch_requests == 1000 and default.on_failure == "restart" and default.max_retries is None
    assert custom.functions == "com.example/greeter"
    assert custom.url_for("com.example/greeter") == "https://fns.example.com:8443/greeter"
    assert (custom.call_timeout, custom.connect_timeout, custom.pool_ttl) == (60.0, 5.0, 30.0)
    assert (custom.max_num_batch_requests, custom.max_retries, custom.on_failure) == (50, 5, "dead-letter")
    assert (custom.max_concurrent_requests, custom.pool_size, custom.payload_max_bytes) == (16, 64, 1048576)
    assert (custom.ca_file, custom.client_cert, custom.client_key) == (
        "/etc/ssl/ca.pem",
        "/etc/ssl/client.pem",
        "/etc/ssl/client.key",
    )
    assert pickle.loads(pickle.dumps(custom)) == custom


def test_nested_timeouts_win_and_okhttp_defaults():
    spec = load_module("""
kind: io.statefun.endpoints.v2/http
spec:
  functions: a/*
  urlPathTemplate: http://h/{function.name}
  transport: {call: 5m, connect: 30s, timeouts: {call: 90sec, read: 10 s}}
---
kind: io.statefun.endpoints.v2/http
spec:
  functions: b/*
  urlPathTemplate: http://h/
  transport: {type: io.statefun.transports.v1/okhttp, timeouts: {read: 2s}}
---
kind: io.statefun.endpoints.v1/http
spec:
  functions: c/fn
  urlPathTemplate: http://h/c
  timeouts: {call: 30000, connect: 15s, read: 20seconds, write: 10s}
""")
    a, b, c = spec.endpoints
    assert (a.call_timeout, a.connect_timeout, a.read_timeout) == (90.0, 30.0, 10.0)
    assert (b.call_timeout, b.connect_timeout, b.read_timeout) == (60.0, 10.0, 2.0)
    assert (c.call_timeout, c.connect_timeout, c.read_timeout) == (30.0, 15.0, 20.0)  # a bare number is ms


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("1 min", 60),
        ("1min", 60),
        ("2m", 120),
        ("15min", 900),
        ("10 sec", 10),
        ("20s", 20),
        ("30seconds", 30),
        ("500ms", 0.5),
        ("250", 0.25),
        ("1h", 3600),
        ("1.5 s", 1.5),
        (timedelta(minutes=2), 120),
        (3, 3.0),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["soon", "5 fortnights", "-3s", "1 min 2s"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_endpoint_matching():
    ns = HttpEndpoint("example/*", "http://h:1/statefun/{function.name}")
    assert ns.matches("example/greeter") and not ns.matches("example.sub/greeter") and not ns.matches("other/x")
    assert ns.url_for("example/greeter") == "http://h:1/statefun/greeter"
    one = HttpEndpoint("example/greeter", "http://h:1/statefun")
    assert one.matches("example/greeter") and not one.matches("example/other")
    assert one.url_for("example/greeter") == "http://h:1/statefun"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(functions="example", url_path_template="http://h/"), "namespace/name"),
        (dict(functions="ex*/a", url_path_template="http://h/"), "'\\*' may only"),
        (dict(functions="ex/a", url_path_template="functions:8000/statefun"), "absolute http"),
        (dict(functions="ex/a", url_path_template="http+unix:///tmp/s.sock/statefun"), "unix-socket"),
        (dict(functions="ex/a", url_path_template="http://h/", on_failure="ignore"), "on_failure"),
        (dict(functions="ex/a", url_path_template="http://h/", max_retries=-1), "max_retries"),
        (dict(functions="ex/a", url_path_template="http://h/", call_timeout="soon"), "call_timeout"),
        (dict(functions="ex/a", url_path_template="http://h/", ca_file="/ca.pem"), "https"),
        (dict(functions="ex/a", url_path_template="http://h/", max_concurrent_requests=0), "max_concurrent"),
    ],
)
def test_endpoint_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HttpEndpoint(**kwargs)


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/*}",
            "document 1 of 1 .*missing required key 'urlPathTemplate'",
        ),
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/*, urlPathTemplate: 'http://h/', maxBatch: 3}",
            "unknown key \\['maxBatch'\\]",
        ),
        (
            "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: a/*\n  urlPathTemplate: http://h/\n"
            "  transport: {type: io.statefun.transports.v1/carrier-pigeon}",
            "unknown transport type",
        ),
        (
            "kind: io.statefun.endpoints.v1/http\nspec: {functions: a/*, urlPathTemplate: 'http://h/', "
            "timeouts: {call: 1s, read: 5s}}",
            "must not exceed",
        ),
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/*, urlPathTemplate: 'http://h/', onFailure: skip}",
            "on_failure",
        ),
        (
            "kind: io.statefun.endpoints.v2/http\nspec:\n  functions: a/*\n  urlPathTemplate: https://h/\n"
            "  transport: {trust_cacerts: 'classpath:ca.pem'}",
            "classpath",
        ),
        (
            "---\nkind: io.statefun.endpoints.v2/http\nspec: {functions: a/*, urlPathTemplate: 'http://h/'}\n---\n"
            "kind: com.example/teleporter\nspec: {}",
            "document 2 of 2 \\(kind com.example/teleporter\\): unknown kind",
        ),
        ("spec: {}", "missing 'kind'"),
        ("kind: io.statefun.endpoints.v2/http", "'spec' must be a mapping"),
        ("kind: io.statefun.endpoints.v2/http\nspec: {}\nextra: 1", "unexpected top-level keys"),
        ("version: '3.0'\nmodule: {meta: {type: remote}}", "version 3.0 module declares no endpoints"),
        ("- just\n- a list", "expected a mapping"),
        ("kind: [unclosed", "not valid YAML"),
        ("---\n---\n", "declares nothing"),
        (
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/*, urlPathTemplate: 'http://h/'}\n---\n"
            "kind: io.statefun.endpoints.v2/http\nspec: {functions: a/*, urlPathTemplate: 'http://h2/'}",
            "two endpoints serve 'a/\\*'",
        ),
    ],
)
def test_bad_modules(text, message):
    with pytest.raises(ModuleSpecError, match=message):
        load_module(text)


def test_files_and_missing_files(tmp_path):
    path = tmp_path / "module.yaml"
    path.write_text(PLAYGROUND)
    assert len(load_module(path).endpoints) == 2
    assert len(load_module(str(path)).endpoints) == 2
    assert len(load_module(f"file://{path}").endpoints) == 2
    with pytest.raises(ModuleSpecError, match="not found"):
        load_module(str(tmp_path / "nope.yaml"))


def test_registered_kinds_are_pluggable(monkeypatch):
    monkeypatch.setattr(module_kinds, "_KINDS", dict(module_kinds._KINDS))

    class Ingress:
        def __init__(self, spec):
            if "topic" not in spec:
                raise ValueError("needs a topic")
            self.id, self.topic = spec["id"], spec["topic"]

    register_kind("com.example.io/ingress", Ingress)
    register_kind("com.example.io/sink", lambda spec: ("sink", spec["id"]), "egresses")
    assert "com.example.io/ingress" in registered_kinds()
    spec = load_module(
        "kind: com.example.io/ingress\nspec: {id: ex/in, topic: t}\n---\nkind: com.example.io/sink\nspec: {id: ex/out}"
    )
    assert [i.topic for i in spec.ingresses] == ["t"] and spec.egresses == [("sink", "ex/out")]
    with pytest.raises(ModuleSpecError, match="document 1 of 1 \\(kind com.example.io/ingress\\): needs a topic"):
        load_module("kind: com.example.io/ingress\nspec: {id: ex/in}")
    with pytest.raises(ModuleSpecError, match="missing key 'id'"):
        load_module("kind: com.example.io/sink\nspec: {}")
    with pytest.raises(ModuleSpecError, match="two ingresses have the id 'ex/in'"):
        load_module(
            "kind: com.example.io/ingress\nspec: {id: ex/in, topic: a}\n---\n"
            "kind: com.example.io/ingress\nspec: {id: ex/in, topic: b}"
        )
    with pytest.raises(ValueError, match="already registered"):
        register_kind("com.example.io/ingress", lambda spec: None)
    with pytest.raises(ValueError, match="pass section="):
        register_kind("com.example.io/thing", lambda spec: None)
