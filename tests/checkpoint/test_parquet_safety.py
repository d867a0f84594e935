"""Reading a checkpoint never runs code, even with the lowest pyarrow rayfun allows (CVE-2023-47248: a
crafted Parquet or Arrow IPC file in a bucket someone else can write). The probe runs in ``.venv-floor``
(``make test`` creates it with exactly the floor of pyproject.toml), loading ``rayfun/checkpoint/fileformat.py``
alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _floor() -> str:
    match = re.search(r'"pyarrow>=([0-9.]+)"', (REPO / "pyproject.toml").read_text())
    assert match, "pyproject.toml names no pyarrow floor"
    return match.group(1)


def test_crafted_parquet_and_arrow_files_run_no_code_with_the_lowest_allowed_pyarrow(tmp_path):
    python = Path(os.environ.get("RAYFUN_FLOOR_PYTHON", REPO / ".venv-floor" / "bin" / "python"))
    if not python.exists():
        pytest.skip(f"no interpreter with the lowest allowed pyarrow at {python} (run `make test`)")
    out = subprocess.run(
        [
            str(python),
            str(Path(__file__).parent / "parquet_probe.py"),
            str(REPO / "rayfun" / "checkpoint" / "fileformat.py"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    outcome = json.loads(out.stdout.strip().splitlines()[-1])
    assert outcome["pyarrow"] == _floor(), f"{python} has pyarrow {outcome['pyarrow']}, the floor is {_floor()}"
    for kind in ("parquet", "arrow"):
        assert outcome["code_ran_with_auto_load"][kind], f"the crafted {kind} file does not exercise the hole"
        assert not outcome["code_ran_in_rayfun_read"][kind], f"reading the crafted {kind} file ran code: {outcome}"
    assert outcome["read_file"] == "ok", f"the row-group reader failed on the lowest pyarrow: {outcome}"
