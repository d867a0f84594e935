"""Remote functions: 200,000 messages over 1,000 addresses to a counter served by the official StateFun SDK
(aiohttp, loopback), through rayfun's runtime on 2 shards. Prints messages/s and the number of HTTP requests
(per-address batching must show), then the SDK server's own limit (its handler driven directly with batches
of the same size, no HTTP, no rayfun), measured right after, and their ratio; ``--rounds`` such pairs (a
noisy neighbour slows both halves of a pair alike), and last, alone, the median ratio:
``remote/sdk ratio: 0.63``. Each round also drives the same server with the same requests from a plain
aiohttp client (no rayfun): the handler's limit has no HTTP in it, and on two cores the server's own HTTP
work keeps any client below it; rayfun's rate over that client's is printed beside.

    python bench/remote.py [--messages N] [--addresses N] [--rounds N]   (needs .venv-sdk: `make test` creates it)
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import time

import ray

import rayfun
from rayfun import HttpEndpoint, StatefulFunctions
from rayfun.connectors.memory import MemorySource

HERE = os.path.dirname(os.path.abspath(__file__))
SDK_PYTHON = os.environ.get("RAYFUN_SDK_PYTHON", os.path.join(HERE, "..", ".venv-sdk", "bin", "python"))
TYPENAME = "bench/remote-counter"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([SDK_PYTHON, os.path.join(HERE, "remote_app.py"), str(port)])
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}/statefun"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the SDK function server did not start")
            time.sleep(0.05)


def through_rayfun(url: str, n: int, a: int) -> tuple[float, int]:
    """(msgs/s, HTTP requests) of one run of ``n`` messages over ``a`` addresses; the state is checked."""
    source = MemorySource(
        lambda p, k: ((TYPENAME, str(i % a), 1) for i in range(p, n, k)),
        partitions=2,
        id="bench/remote-input",
        batch_size=4096,
    )
    app = rayfun.start(StatefulFunctions(), shards=2, ingresses=[source], endpoints=[HttpEndpoint("bench/*", url)])
    try:
        started = time.perf_counter()
        app.wait(timeout=900)
        elapsed = time.perf_counter() - started
        requests = sum(m["remote_requests"] for m in app.shard_metrics())
        wrong = [
            i
            for i in range(0, a, max(1, a // 50))
            if app.state(TYPENAME, str(i), wait=False).get("count") != n // a + (1 if i < n % a else 0)
        ]
    finally:
        app.stop()
    if wrong:
        raise SystemExit(f"WRONG state at addresses {wrong[:5]}")
    return n / elapsed, requests


def _remote_app_rate(*args: str) -> float:
    """Run ``remote_app.py`` with ``args`` in the SDK's interpreter; the msgs/s its last line prints."""
    out = subprocess.run(
        [SDK_PYTHON, os.path.join(HERE, "remote_app.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    return float(out.strip().splitlines()[-1].split(":")[1].split()[0])


def sdk_limit(n: int, batch: int) -> float:
    """The SDK handler's own rate for requests of ``batch`` invocations (its own process, no HTTP)."""
    return _remote_app_rate("--limit", str(min(n, 100_000)), str(batch))


def http_limit(url: str, n: int, batch: int) -> float:
    """The same server's rate for the same requests from a plain aiohttp client (no rayfun): the most any
    client gets from it, HTTP included."""
    return _remote_app_rate("--http-limit", url, str(min(n, 100_000)), str(batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--addresses", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs (rayfun, then the SDK alone)")
    args = parser.parse_args()
    if not os.path.exists(SDK_PYTHON):
        raise SystemExit(f"no SDK interpreter at {SDK_PYTHON}: run `make test` (it creates .venv-sdk)")
    n, a = args.messages, args.addresses
    ratios, of_http = [], []
    server, url = start_server()
    try:
        ray.init(num_cpus=2, include_dashboard=False)
        # pairs, each measured back to back: a noisy neighbour then slows both halves of a pair alike
        for round_ in range(1, args.rounds + 1):
            rate, requests = through_rayfun(url, n, a)
            batch = max(1, round(n / max(requests, 1)))
            limit = sdk_limit(n, batch)
            plain = http_limit(url, n, batch)
            ratios.append(rate / limit)
            of_http.append(rate / plain)
            print(
                f"round {round_}: rayfun -> SDK over HTTP {rate:.0f} msgs/s ({requests} HTTP requests, "
                f"{n / max(requests, 1):.1f} messages per request; state exact); SDK handler alone, batches of "
                f"{batch}: {limit:.0f} msgs/s; ratio {rate / limit:.2f}; a plain aiohttp client -> the same "
                f"server: {plain:.0f} msgs/s ({plain / limit:.2f} of the handler alone; rayfun {rate / plain:.2f} of it)"
            )
        ray.shutdown()
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"rayfun / a plain HTTP client of the same server: {statistics.median(of_http):.2f} (median)")
    print(f"remote/sdk ratio: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
