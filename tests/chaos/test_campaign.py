"""A few fixed seeds of the fault campaign (tests/chaos/campaign.py), chosen to cover different fault
kinds, each of which must end exact; and a self-check that the oracle notices a run that is not. The full
campaign is ``.venv/bin/python bench/chaos.py --runs 30``; a failure message says how to replay its seed."""

from __future__ import annotations

import pytest

from tests.chaos.campaign import EMBEDDED, Servers, Workload, make_scenario, run_scenario, sdk_python

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

# (seed, fault kinds): kills of every sort with app.send_many and a file egress on a local dir; a damaged
# checkpoint (fallback) and a kill during a checkpoint, with the remote SDK function; S3 gone silent (a
# black hole: requests in flight never answered) and a kill during it; S3 refusing connections and a
# kill; a remote function that is unreachable and a coordinator death, on S3; two damaged checkpoints in
# one run, on S3 (the second's check once counted the first's, rightly set aside, as a wrong quarantine)
SEEDS = [
    (5, ("kill-burst", "kill-restore", "sigkill")),
    (1, ("damage", "kill-checkpoint")),
    (3, ("storage-outage", "kill")),
    (4, ("storage-outage", "kill")),
    (4, ("remote-outage", "coordinator-kill", "driver-kill")),
    (4, ("damage",)),
]


@pytest.fixture(scope="module")
def servers(ray_session, moto_s3):
    """moto (the session's) and, when .venv-sdk exists, the SDK function server (this module's)."""
    servers = Servers()
    servers.s3_options = moto_s3
    try:
        yield servers
    finally:
        servers.stop()


def require_sdk(servers: Servers, seed: int, only: tuple[str, ...]) -> None:
    """Start the SDK server the first time a seed needs it (skip without .venv-sdk: only those seeds do)."""
    if make_scenario(seed, only).remote and servers.sdk is None:
        python = sdk_python()
        if python is None:
            pytest.skip("needs the official StateFun SDK interpreter (.venv-sdk; `make .venv-sdk/.installed`)")
        servers.start_sdk(python)


@pytest.mark.parametrize("seed,only", SEEDS, ids=[f"{s}-{'+'.join(k)}" for s, k in SEEDS])
def test_seeded_faults_leave_state_and_egress_exact(servers, seed, only):
    require_sdk(servers, seed, only)
    result = run_scenario(seed, servers, only=only, timeout=150)
    print(result.line())
    assert result.exact, result.description


def test_the_oracle_notices_a_run_that_is_not_exact(servers):
    """A run without faults, checked against an outcome with one increment and one egress record too many:
    exactly those differences must be reported (the increment twice: by the interpreter's count and by the
    tally that counts it again), so the rest of the run matched, exactly."""

    def tamper(workload: Workload) -> None:
        workload.expected[(EMBEDDED, "0")] += 1
        workload.egress["never-emitted"] += 1

    result = run_scenario(7, servers, only=(), timeout=150, tamper=tamper)
    assert not result.exact
    assert "state: 1 instances differ (1 increments missing, 0 extra)" in result.description, result.description
    assert "tally: 1 instances differ" in result.description, result.description  # the slot runner's count
    assert "egress: 1 records missing, e.g. 'never-emitted'x1" in result.description, result.description
    assert "records extra" not in result.description, result.description
    assert result.replay.endswith("--seed 7 --only none")
