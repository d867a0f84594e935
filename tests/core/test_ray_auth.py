"""Ray's token authentication is on for the Ray that rayfun (and these tests) start: a driver without the
token is refused. Ray 2.5x-2.6x leave it off by default and read the setting when ``ray`` is imported, so
a Ray imported before rayfun used to start an authenticated cluster its own driver could not talk to."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)

JOIN = """
import ray, sys
try:
    ray.init(address=sys.argv[1], log_to_driver=False)
    print("joined")
except Exception as exc:
    print("refused", type(exc).__name__)
"""


def test_the_tests_ray_requires_the_token(ray_session, tmp_path):
    from ray._raylet import AuthenticationMode, get_authentication_mode

    assert get_authentication_mode() == AuthenticationMode.TOKEN
    address = ray_session.get_runtime_context().gcs_address
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    bad = tmp_path / "token"
    bad.write_text("not-the-token")
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(bad))
    out = subprocess.run([sys.executable, "-c", JOIN, address], env=env, capture_output=True, text=True, timeout=90)
    assert "refused" in out.stdout, out.stdout + out.stderr[-2000:]
    env.pop("RAY_AUTH_TOKEN_PATH")  # the user's own token in ~/.ray/auth_token
    out = subprocess.run([sys.executable, "-c", JOIN, address], env=env, capture_output=True, text=True, timeout=90)
    assert "joined" in out.stdout, out.stdout + out.stderr[-2000:]


def test_ray_imported_before_rayfun_starts_an_authenticated_ray_it_can_use(tmp_path):
    script = (
        "import ray\nimport rayfun\nray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "from ray._raylet import AuthenticationMode, get_authentication_mode\n"
        "print(ray.get(ray.put('ok')), get_authentication_mode() == AuthenticationMode.TOKEN)\nray.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=110)
    assert out.stdout.strip().endswith("ok True"), out.stdout + out.stderr[-2000:]
