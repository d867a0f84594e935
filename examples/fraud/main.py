"""The fraud-detection showcase, end to end on a laptop: `make demo` runs this.

It starts what a real deployment already has: a Kafka-compatible broker (Tansu, on loopback) with the
topics ``transactions``, ``confirmed-fraud`` and ``alerts``, and a small third-party merchant-scoring
service (HTTP, loopback). It writes sample traffic to Kafka, runs the rayfun application (embedded
functions, 2 shards, exactly-once with checkpoints in ./checkpoints/fraud), reads the alerts back from
Kafka (read_committed), prints them, and stops everything.

Against real infrastructure, point ``--bootstrap`` at your Kafka and ``FRAUD_MERCHANT_SERVICE`` at the
scoring service, and run the same program with ``ray job submit --working-dir . -- python -m examples.fraud ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import sys
import threading
import time

# Run as a module (`python -m examples.fraud`, also under `ray job submit --working-dir .`) or as a script
# (`python examples/fraud/main.py`): either way the functions come from the package `examples.fraud`, a
# name the shard workers can import too (from the job's working directory, or the driver's sys.path).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import rayfun
from examples.fraud.functions import ALERTS_EGRESS, ALERTS_TOPIC, functions
from rayfun.connectors.kafka import KafkaBroker, KafkaSink, KafkaSource, KafkaTopic, create_topics


def merchant_service(port: int) -> threading.Thread:
    """A stand-in for the third-party merchant-scoring API: GET /score/<merchant> -> {"score": 0..1}."""
    from aiohttp import web

    async def score(request):
        merchant = request.match_info["merchant"]
        risky = merchant.startswith("shady")
        return web.json_response({"score": 0.95 if risky else round(random.Random(merchant).uniform(0, 0.4), 3)})

    def serve():
        import asyncio

        asyncio.set_event_loop(asyncio.new_event_loop())
        app = web.Application()
        app.router.add_get("/score/{merchant}", score)
        web.run_app(app, host="127.0.0.1", port=port, print=None, handle_signals=False, access_log=None)

    thread = threading.Thread(target=serve, daemon=True, name="merchant-service")
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return thread
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the merchant service did not start")


def produce_sample_traffic(bootstrap: str, transactions: int, seed: int = 7) -> None:
    from confluent_kafka import Producer

    rng = random.Random(seed)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    accounts = [f"acct-{i}" for i in range(50)]
    for account in accounts[:5]:  # five accounts with confirmed frauds
        for _ in range(2):
            producer.produce("confirmed-fraud", key=account, value=json.dumps({"account": account}))
    producer.flush(30)
    time.sleep(0.5)  # let the fraud reports land before the transactions (they are separate topics)
    for i in range(transactions):
        account = rng.choice(accounts)
        merchant = rng.choice(["shady-electronics", "grocer", "bookshop", "cafe", "airline", "shady-jewels"])
        tx = {"id": f"tx-{i}", "account": account, "merchant": merchant, "amount": rng.randint(5, 3000)}
        producer.produce("transactions", key=tx["id"], value=json.dumps(tx))
    producer.flush(30)


def read_alerts(bootstrap: str, partitions: int = 2, timeout: float = 10.0) -> list[dict]:
    """Every committed alert: read each partition of the topic from the start to its end."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"demo-reader-{os.getpid()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    assigned = [TopicPartition(ALERTS_TOPIC, p, OFFSET_BEGINNING) for p in range(partitions)]
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(ALERTS_TOPIC, p), timeout=timeout)[1]
        for p in range(partitions)
    }
    consumer.assign(assigned)
    alerts, positions, deadline = [], {p: 0 for p in range(partitions)}, time.monotonic() + timeout
    while any(positions[p] < ends[p] for p in ends) and time.monotonic() < deadline:
        for record in consumer.consume(500, timeout=0.5):
            if record.error() is None:
                positions[record.partition()] = record.offset() + 1
                if not (record.key() or b"").startswith(b"__"):
                    alerts.append(json.loads(record.value()))
    consumer.close()
    return alerts


def main() -> None:
    parser = argparse.ArgumentParser(description="rayfun fraud-detection showcase")
    parser.add_argument("--transactions", type=int, default=300)
    parser.add_argument("--bootstrap", help="an existing Kafka; default: start a Tansu broker on loopback")
    parser.add_argument("--checkpoint-dir", default="checkpoints/fraud")
    parser.add_argument(
        "--fresh", action="store_true", default=True, help="start from scratch (remove the checkpoint directory first)"
    )
    args = parser.parse_args()

    broker = None
    if args.bootstrap is None:
        broker = KafkaBroker().start()
        bootstrap = broker.bootstrap
        print(f"Kafka (Tansu) on {bootstrap}")
    else:
        bootstrap = args.bootstrap
    port = int(os.environ.get("FRAUD_MERCHANT_PORT", "0")) or _free_port()
    os.environ["FRAUD_MERCHANT_SERVICE"] = f"http://127.0.0.1:{port}"
    merchant_service(port)
    if args.fresh:
        shutil.rmtree(args.checkpoint_dir, ignore_errors=True)
    app = None
    try:
        create_topics(bootstrap, ["transactions", "confirmed-fraud", ALERTS_TOPIC], partitions=2)
        produce_sample_traffic(bootstrap, args.transactions)
        ingress = KafkaSource(
            "fraud/in",
            bootstrap,
            [
                KafkaTopic("transactions", value_type="fraud/Transaction", targets=["fraud/transaction-manager"]),
                KafkaTopic("confirmed-fraud", value_type="fraud/ConfirmFraud", targets=["fraud/counter"]),
            ],
            consumer_group="fraud-demo",
            startup="earliest",
        )
        egress = KafkaSink(ALERTS_EGRESS, bootstrap, delivery="exactly-once")
        app = rayfun.start(
            functions,
            shards=2,
            ingresses=[ingress],
            egresses=[egress],
            checkpoint_dir=args.checkpoint_dir,
            checkpoint_interval=1.0,
            ray_init={
                "num_cpus": 2,
                "include_dashboard": False,
                "runtime_env": {"env_vars": {"FRAUD_MERCHANT_SERVICE": os.environ["FRAUD_MERCHANT_SERVICE"]}},
            },
        )
        app.wait(timeout=120)
        app.checkpoint()  # alerts are published exactly once, when their checkpoint completes
        alerts = read_alerts(bootstrap)
        emitted = sum(m["egress"] for m in app.metrics())
        print(
            f"{len(alerts)} alerts in Kafka from {args.transactions} transactions "
            f"({emitted} egress records emitted by the functions):"
        )
        for alert in sorted(alerts, key=lambda a: -a["score"])[:10]:
            print(
                f"  {alert['transaction']:>7}  {alert['account']:<8} at {alert['merchant']:<18} "
                f"{alert['amount']:>5}  score {alert['score']}"
            )
        print("fraud count of acct-0:", app.state("fraud/counter", "acct-0", wait=False))
        print(f"checkpoints in {args.checkpoint_dir}: state readable offline with rayfun.read_state()")
        table = rayfun.read_state(args.checkpoint_dir, function_types=["fraud/counter"])
        print(f"  {table.num_rows} fraud/counter rows in the newest checkpoint")
    finally:
        if app is not None:
            app.stop()
        if broker is not None:
            broker.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
