"""Fixtures for the remote-function tests: function servers in subprocesses, and the SDK's interpreter.

The official SDK pins protobuf<4, so it runs only in its own interpreter: ``RAYFUN_SDK_PYTHON`` (default
``.venv-sdk/bin/python`` under the repository root; ``make test`` creates it). Tests needing it skip,
saying why, when it is absent. Every server started here is stopped when its fixture ends.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import free_port, stop, wait_for_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
INT, LONG, STRING, BOOL = (f"io.statefun.types/{t}" for t in ("int", "long", "string", "bool"))


def run(coro: Awaitable[Any], timeout: float = 60) -> Any:
    """Run one async scenario to completion on a fresh event loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def _sdk_python_path() -> Path:
    configured = os.environ.get("RAYFUN_SDK_PYTHON")
    path = Path(configured) if configured else REPO / ".venv-sdk" / "bin" / "python"
    return path if path.is_absolute() else REPO / path


@pytest.fixture(scope="session")
def sdk_python() -> str:
    """The interpreter that has the official ``statefun`` SDK (skips the test when there is none)."""
    path = _sdk_python_path()
    if not path.exists():
        pytest.skip(
            f"official StateFun SDK interpreter not found at {path} (set RAYFUN_SDK_PYTHON, or run "
            f"`make test`, which creates .venv-sdk)"
        )
    probe = subprocess.run([str(path), "-c", "import statefun, aiohttp"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"{path} cannot import the StateFun SDK and aiohttp: {probe.stderr.strip()[-300:]}")
    return str(path)


def _start_server(argv: list[str], port: int, name: str) -> Iterator[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        argv + [str(port)], cwd=str(REPO), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_port(proc, port, name)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture(scope="module")
def sdk_server(sdk_python: str) -> Iterator[str]:
    """Base URL of ``sdk_functions.py`` served by the official SDK (paths ``/statefun[/<name>]``)."""
    yield from _start_server([sdk_python, str(HERE / "sdk_functions.py")], free_port(), "SDK function server")


@pytest.fixture(scope="module")
def rayfun_server() -> Iterator[str]:
    """Base URL of ``rayfun_functions.py`` served by ``rayfun.remote.serve``."""
    yield from _start_server([sys.executable, str(HERE / "rayfun_functions.py")], free_port(), "rayfun function server")


@pytest.fixture(params=["sdk", "rayfun"])
def function_server(request: pytest.FixtureRequest) -> str:
    """The same functions, served once by the official SDK and once by rayfun."""
    return request.getfixturevalue(f"{request.param}_server")
