"""The core depends on no connector: connectors are plug-ins on ``rayfun.io``, never the other way round."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)

CORE = ("rayfun", "rayfun.app", "rayfun.runtime.shard", "rayfun.module_yaml", "rayfun.runtime.coordinator")


def test_core_imports_no_connector():
    code = (
        "import importlib, json, sys\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('rayfun.connectors') or m == 'connectors')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_memory_connector_reexports_the_core_names():
    from rayfun.connectors import memory
    from rayfun.messages import to_message
    from rayfun.runtime.egress_collector import MemorySink

    assert memory.MemorySink is MemorySink and memory.to_message is to_message
