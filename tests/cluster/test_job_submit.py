"""The README's cluster commands, run as a user would on a fresh machine (an empty HOME): make the auth
token, start a head with token authentication, ``ray job submit`` an example with the README's working
dir and excludes; the job must print what the example prints and end SUCCEEDED. Authentication stays on:
a request without the token is refused."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import urllib.error
import urllib.request
import uuid

import pytest

from tests.support.ray_cluster import RAY, RayCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def readme_submit_command() -> list[str]:
    """The ``ray job submit`` command of the README's cluster section, as argv."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    found = re.search(r"^ray job submit .*?(?<!\\)\n", text, flags=re.M | re.S)
    assert found, "the README shows no `ray job submit` command"
    command = found.group(0).replace("\\\n", " ")
    return shlex.split(command, comments=True)


def test_readme_job_submit_on_a_fresh_machine(tmp_path):
    argv = readme_submit_command()
    assert argv[:3] == [RAY.rsplit("/", 1)[1], "job", "submit"] and "--" in argv, argv
    entrypoint = argv[argv.index("--") + 1 :]
    assert entrypoint == ["python", "-m", "examples.greeter"], f"the test checks the greeter's output: {entrypoint}"

    home = tmp_path / "home"  # a fresh machine: no ~/.ray/auth_token yet
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_AUTH_MODE="token")  # the README: export RAY_AUTH_MODE=token, everywhere

    made = subprocess.run([RAY, "get-auth-token", "--generate"], env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    token = (home / ".ray" / "auth_token").read_text().strip()
    assert token

    with RayCluster(env=env, token=False) as cluster:  # the token only from ~/.ray/auth_token of HOME
        cluster.start_head(num_cpus=1)

        # authentication is on: the dashboard refuses a request without the token
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(cluster.dashboard_url + "/api/jobs/", timeout=10)
        assert refused.value.code in (401, 403)

        submission = f"readme-{uuid.uuid4().hex[:8]}"
        address = argv.index("--address")
        argv[address + 1] = cluster.dashboard_url  # the README's http://127.0.0.1:8265, on this head's port
        argv = [RAY, *argv[1:]]
        argv.insert(3, f"--submission-id={submission}")
        excludes = json.loads(argv[argv.index("--runtime-env-json") + 1])["excludes"]
        assert {".venv", ".git"} <= set(excludes)
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
        out = done.stdout + done.stderr
        assert done.returncode == 0, f"{out[-4000:]}\n{cluster.logs()}"
        for line in (
            "Hello Alice!",
            "Hello again Alice, visit number 3!",
            "Hello Dave!",
            "Alice's state: {'visits': 3}",
        ):
            assert line in done.stdout, out[-4000:]
        assert f"Job '{submission}' succeeded" in out

        status = subprocess.run(
            [RAY, "job", "status", "--address", cluster.dashboard_url, submission],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0 and "succeeded" in status.stdout, status.stdout + status.stderr
        assert cluster.api(f"/api/jobs/{submission}")["status"] == "SUCCEEDED"
