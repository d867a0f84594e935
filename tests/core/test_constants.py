"""Tuning knobs live in rayfun.constants and can be set from the environment, with a clear error for a
value that is not a number."""

from __future__ import annotations

import os
import subprocess
import sys


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def test_an_environment_variable_sets_a_knob_everywhere_it_is_used():
    out = _run(
        "from rayfun import constants\nfrom rayfun.runtime.coordinator import supervisor\n"
        "from rayfun.runtime.shard import ShardConfig\nimport dataclasses\n"
        "print(constants.STATUS_TIMEOUT_S, supervisor.STATUS_TIMEOUT_S,"
        " {f.name: f.default for f in dataclasses.fields(ShardConfig)}['mailbox_high'])",
        RAYFUN_STATUS_TIMEOUT_S="3.5",
        RAYFUN_MAILBOX_HIGH="1000",
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3.5", "3.5", "1000"]


def test_a_bad_value_names_the_variable():
    out = _run("import rayfun", RAYFUN_MAILBOX_HIGH="lots")
    assert out.returncode != 0 and "RAYFUN_MAILBOX_HIGH='lots' is not an integer" in out.stderr
