"""The legacy StateFun 3.0 module.yaml (``version: "3.0"``, one ``module:`` document) loads as StateFun 3.1+
reads it: each component becomes the kind + spec it stands for; versions 1.0 and 2.0 are refused clearly."""

from __future__ import annotations

import pytest

from rayfun.module_yaml import ModuleSpecError, load_module
from tests.remote.conftest import HERE

pytestmark = pytest.mark.timeout(30)

MODULES = HERE / "modules"


def test_a_statefun_3_0_module_loads():
    pytest.importorskip("confluent_kafka")
    module = load_module(MODULES / "statefun-3.0.yaml")
    bar, baz = module.endpoints
    assert bar.functions == "com.foo.bar/*"
    assert bar.url_path_template == "http://bar.foo.com:8080/functions/{function.name}"
    assert (bar.call_timeout, bar.connect_timeout, bar.read_timeout) == (60.0, 10.0, 10.0)
    assert bar.max_num_batch_requests == 10000
    assert (baz.functions, baz.call_timeout) == ("com.foo.baz/greeter", 60.0)  # the v1 (okhttp) defaults
    [source] = module.ingresses
    assert source.id == "com.mycomp.igal/names"
    assert source.bootstrap == "kafka-broker:9092"
    assert source.consumer_group == "greeter"
    [topic] = source.topics.values()
    assert (topic.topic, topic.value_type, topic.targets) == ("names", "com.mycomp.igal/Name", ("com.foo.bar/greeter",))
    assert source.properties == {"max.poll.records": 100}
    [sink] = module.egresses
    assert sink.id == "com.mycomp.foo/bar"
    assert sink.delivery == "exactly-once"


def test_the_same_module_in_the_3_1_format_gives_the_same_endpoints():
    legacy = load_module(
        'version: "3.0"\nmodule:\n  meta: {type: remote}\n  spec:\n    endpoints:\n'
        "      - endpoint: {meta: {kind: http}, spec: {functions: a/*, urlPathTemplate: 'http://h/{function.name}', "
        "timeouts: {call: 30s}}}\n"
    )
    current = load_module(
        "kind: io.statefun.endpoints.v1/http\nspec: {functions: a/*, urlPathTemplate: 'http://h/{function.name}', "
        "timeouts: {call: 30s}}\n"
    )
    assert vars(legacy.endpoints[0]) == vars(current.endpoints[0])


def test_versions_1_0_and_2_0_are_refused_naming_the_supported_ones():
    with pytest.raises(ModuleSpecError, match=r"version '2.0' is not supported; rayfun reads version '3.0'") as info:
        load_module(MODULES / "statefun-2.0.yaml")
    assert "kind:" in str(info.value) and "statefun-2.0.yaml" in str(info.value)
    with pytest.raises(ModuleSpecError, match=r"version '1.0' is not supported"):
        load_module('version: "1.0"\nmodule: {meta: {type: remote}, spec: {functions: []}}')
    with pytest.raises(ModuleSpecError, match=r"version 2.0 is not supported"):  # unquoted: a YAML float
        load_module("version: 2.0\nmodule: {meta: {type: remote}}")
    with pytest.raises(ModuleSpecError, match=r"version None is not supported"):
        load_module("module: {meta: {type: remote}}")


BASE = 'version: "3.0"\nmodule:\n  meta: {type: remote}\n  spec:\n'


@pytest.mark.parametrize(
    "text, message",
    [
        ('version: "3.0"\nmodule: {meta: {type: embedded}, spec: {}}', "only remote modules"),
        (BASE + "    functions: []\n", r"unknown key \['functions'\] in module.spec"),
        (BASE + "    endpoints:\n      - endpoint: {meta: {kind: grpc}, spec: {}}\n", "only http endpoints"),
        (
            BASE + "    endpoints:\n      - endpoint: {meta: {kind: http}, spec: {functions: a/*}}\n",
            r"module.spec.endpoints\[1\] \(http, read as kind io.statefun.endpoints.v1/http\): missing required key 'urlPathTemplate'",
        ),
        (
            BASE + "    ingresses:\n      - ingress: {meta: {type: io.statefun.kafka/ingress}, spec: {}}\n",
            r"missing ingress.meta.id",
        ),
        (
            BASE
            + "    ingresses:\n      - ingress: {meta: {type: statefun.kafka.io/protobuf-ingress, id: a/b}, spec: {}}\n",
            "unknown kind 'statefun.kafka.io/protobuf-ingress'",
        ),
        (BASE + "    egresses:\n      - {meta: {type: io.statefun.kafka/egress}}\n", r"expected '- egress: \{meta"),
        (BASE + "    egresses: {}\n", "module.spec.egresses must be a list"),
    ],
)
def test_bad_3_0_modules(text, message):
    with pytest.raises(ModuleSpecError, match=message):
        load_module(text)
