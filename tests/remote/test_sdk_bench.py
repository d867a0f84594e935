"""bench/sdk_handler_limit.py still runs (briefly) in the SDK's interpreter and reports its headline."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.remote.conftest import REPO

pytestmark = pytest.mark.timeout(120)


def test_sdk_handler_limit_bench_runs(sdk_python):
    proc = subprocess.run(
        [
            sdk_python,
            str(REPO / "bench" / "sdk_handler_limit.py"),
            "--batch",
            "1",
            "5",
            "--keys",
            "10",
            "--seconds",
            "0.3",
        ],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"sdk handler: \d+ msgs/s", last), proc.stdout
    assert int(last.split()[2]) > 0
