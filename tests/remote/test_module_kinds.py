"""The module.yaml kind registry: built-in kinds imported on first use, third-party kinds from entry points
(a real ``*.dist-info`` on ``sys.path`` in a fresh interpreter), errors that list every known kind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rayfun import module_kinds
from rayfun.module_yaml import ModuleSpecError, load_module, register_kind, registered_kinds

pytestmark = pytest.mark.timeout(120)

BUILT_IN = {
    "io.statefun.endpoints.v1/http",
    "io.statefun.endpoints.v2/http",
    "io.statefun.kafka.v1/ingress",
    "io.statefun.kafka.v1/egress",
    "io.statefun.playground.v1/ingress",
    "io.statefun.playground.v1/egress",
}

PLUGIN = """
from rayfun.module_kinds import register_kind


class AcmeSource:
    def __init__(self, spec):
        self.id, self.queue = spec["id"], spec["queue"]


def register():
    register_kind("com.acme.v1/ingress", AcmeSource)
"""

USE_PLUGIN = """
import json, sys
from rayfun.module_yaml import load_module, registered_kinds
spec = load_module("kind: com.acme.v1/ingress\\nspec: {id: acme/in, queue: q1}")
(source,) = spec.ingresses
print(json.dumps({"type": type(source).__module__ + "." + type(source).__name__, "queue": source.queue,
                  "kinds": registered_kinds(),
                  "connectors": sorted(m for m in sys.modules if m.startswith("rayfun.connectors"))}))
"""


def _distribution(root: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """A minimal installed distribution: its modules plus ``name-1.0.dist-info`` with the entry points."""
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


def _run(code: str, path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(path), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)


def test_unknown_kind_lists_every_known_kind():
    assert set(registered_kinds()) >= BUILT_IN
    with pytest.raises(ModuleSpecError) as info:
        load_module("kind: com.example/teleporter\nspec: {}")
    message = str(info.value)
    assert "unknown kind 'com.example/teleporter'" in message
    for kind in BUILT_IN:
        assert kind in message


def test_kind_from_an_entry_point(tmp_path):
    _distribution(
        tmp_path,
        "acme_rayfun",
        """
        [rayfun.module_kinds]
        acme = acme_kinds:register
        """,
        {"acme_kinds": PLUGIN},
    )
    done = _run(USE_PLUGIN, tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["type"] == "acme_kinds.AcmeSource" and out["queue"] == "q1"
    assert set(out["kinds"]) >= BUILT_IN | {"com.acme.v1/ingress"}
    assert out["connectors"] == []  # a third-party kind did not import the built-in connectors


def test_entry_point_module_and_a_broken_one(tmp_path):
    """An entry point that names a module registers on import; one that fails is named in the error of a
    kind nobody knows, and does not stop the others."""
    module_plugin = PLUGIN + '\nregister_kind("com.acme.v1/ingress", AcmeSource)\n'
    _distribution(
        tmp_path,
        "acme_rayfun",
        """
        [rayfun.module_kinds]
        acme = acme_kinds
        broken = acme_broken:register
        """,
        {"acme_kinds": module_plugin, "acme_broken": "def register():\n    raise RuntimeError('no licence')\n"},
    )
    done = _run(USE_PLUGIN, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["queue"] == "q1"
    done = _run(
        "from rayfun.module_yaml import load_module\nload_module('kind: com.nobody.v1/ingress\\nspec: {}')", tmp_path
    )
    assert done.returncode != 0
    assert "unknown kind 'com.nobody.v1/ingress'" in done.stderr
    assert "com.acme.v1/ingress" in done.stderr and "io.statefun.kafka.v1/ingress" in done.stderr
    assert "broken = acme_broken:register: RuntimeError: no licence" in done.stderr


def test_kafka_kind_imports_its_connector_on_first_use(tmp_path):
    done = _run(
        "import sys\n"
        "from rayfun.module_yaml import load_module\n"
        "load_module('kind: io.statefun.endpoints.v2/http\\nspec: {functions: a/*, urlPathTemplate: http://h/}')\n"
        "assert not [m for m in sys.modules if m.startswith('rayfun.connectors')]\n"
        "spec = load_module('kind: io.statefun.kafka.v1/egress\\nspec: {id: a/out, address: k:9092}')\n"
        "print(type(spec.egresses[0]).__module__)\n",
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "rayfun.connectors.kafka.sink"


def test_builder_named_by_string(monkeypatch):
    monkeypatch.setattr(module_kinds, "_KINDS", dict(module_kinds._KINDS))
    register_kind("com.example.v1/ingress", "collections:OrderedDict")
    (built,) = load_module("kind: com.example.v1/ingress\nspec: {id: ex/in}").ingresses
    assert dict(built) == {"id": "ex/in"}
    register_kind("com.example.v1/ingress", "collections:OrderedDict")  # the same builder again: fine
    register_kind("com.example.v2/ingress", "no_such_module_here:build")
    with pytest.raises(ModuleSpecError, match="needs the module 'no_such_module_here'"):
        load_module("kind: com.example.v2/ingress\nspec: {}")
    with pytest.raises(ValueError, match="'module:function'"):
        register_kind("com.example.v3/ingress", "no_colon")
