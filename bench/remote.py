"""Remote functions: 200,000 messages over 1,000 addresses to a counter served by the official StateFun SDK
(aiohttp, loopback), through rayfun's runtime on 2 shards. Prints messages/s and the number of HTTP requests
(per-address batching must show), then the SDK server's own limit (its handler driven directly with batches
of the same size, no HTTP, no rayfun), and last, alone, the ratio: ``remote/sdk ratio: 0.63``.

    python bench/remote.py [--messages N] [--addresses N]   (needs .venv-sdk: `make test` creates it)
"""

from __future__ import annotations

import argparse
import os
import socket
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--addresses", type=int, default=1_000)
    args = parser.parse_args()
    if not os.path.exists(SDK_PYTHON):
        raise SystemExit(f"no SDK interpreter at {SDK_PYTHON}: run `make test` (it creates .venv-sdk)")
    server, url = start_server()
    try:
        ray.init(num_cpus=2, include_dashboard=False)
        n, a = args.messages, args.addresses
        source = MemorySource(
            lambda p, k: ((TYPENAME, str(i % a), 1) for i in range(p, n, k)),
            partitions=2,
            id="bench/remote-input",
            batch_size=4096,
        )
        app = rayfun.start(StatefulFunctions(), shards=2, ingresses=[source], endpoints=[HttpEndpoint("bench/*", url)])
        started = time.perf_counter()
        app.wait(timeout=900)
        elapsed = time.perf_counter() - started
        metrics = app.shard_metrics()
        requests = sum(m["remote_requests"] for m in metrics)
        wrong = [
            i
            for i in range(0, a, max(1, a // 50))
            if app.state(TYPENAME, str(i), wait=False).get("count") != n // a + (1 if i < n % a else 0)
        ]
        app.stop()
        ray.shutdown()
    finally:
        server.terminate()
        server.wait(timeout=10)
    if wrong:
        raise SystemExit(f"WRONG state at addresses {wrong[:5]}")
    rate = n / elapsed
    batch = max(1, round(n / max(requests, 1)))
    print(
        f"rayfun -> SDK over HTTP: {n} messages in {elapsed:.2f} s = {rate:.0f} msgs/s, "
        f"{requests} HTTP requests ({n / max(requests, 1):.1f} messages per request); state exact"
    )
    limit_out = subprocess.run(
        [SDK_PYTHON, os.path.join(HERE, "remote_app.py"), "--limit", str(min(n, 100_000)), str(batch)],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    ).stdout
    limit = float(limit_out.strip().splitlines()[-1].split(":")[1].split()[0])
    print(f"SDK handler alone, batches of {batch}: {limit:.0f} msgs/s")
    print(f"remote/sdk ratio: {rate / limit:.2f}")


if __name__ == "__main__":
    main()
