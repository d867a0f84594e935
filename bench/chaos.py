"""A seeded fault campaign against rayfun's exactly-once guarantee (see tests/chaos/campaign.py).

Runs N scenarios one after another (run i uses seed S+i), one line each, and on the last line
``chaos: K/N runs exact``; exits 0 only if every run was exact. It starts its own local Ray, moto_server
and the SDK function server (when .venv-sdk exists), and stops them all at the end.

    .venv/bin/python bench/chaos.py --runs 30 --seed 1000
    .venv/bin/python bench/chaos.py --runs 1 --seed 1234                 # replay one seed
    .venv/bin/python bench/chaos.py --runs 5 --only damage,kill-burst    # only these fault kinds
    .venv/bin/python bench/chaos.py --runs 1 --only none                 # no faults: the reference run
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

from tests.chaos.campaign import KINDS, Servers, make_scenario, run_scenario, sdk_python


def parse_only(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    if text == "none":
        return ()
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown fault kind(s) {unknown}; choose from {', '.join(KINDS)} or none")
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1000, help="the first seed; run i uses seed+i")
    parser.add_argument(
        "--only", type=parse_only, default=None, help=f"comma-separated fault kinds ({', '.join(KINDS)}), or none"
    )
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds per run before it counts as hung")
    parser.add_argument("--log-to-driver", action="store_true", help="show the Ray workers' logs")
    args = parser.parse_args()

    import ray

    seeds = [args.seed + i for i in range(args.runs)]
    scenarios = [make_scenario(s, args.only) for s in seeds]
    servers = Servers()
    exact = 0
    try:
        # as tests/conftest.py: Ray's token authentication stays on (the driver processes that driver-death
        # scenarios start find the token in ~/.ray/auth_token)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=args.log_to_driver)
        if any(sc.storage == "s3" for sc in scenarios):
            servers.start_moto()
        python = sdk_python()
        if any(sc.remote for sc in scenarios):
            if python is None:
                print("the SDK interpreter (.venv-sdk) is missing: run `make .venv-sdk/.installed`", file=sys.stderr)
                return 2
            servers.start_sdk(python)
        for seed in seeds:
            result = run_scenario(seed, servers, only=args.only, timeout=args.timeout)
            exact += result.exact
            print(result.line(), flush=True)
    finally:
        servers.stop()
        ray.shutdown()
    print(f"chaos: {exact}/{args.runs} runs exact")
    return 0 if exact == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
