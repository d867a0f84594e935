"""The fraud showcase's functions under the harness: an alert fires, and the fraud count expires after
its 30-day window, in well under a second, with no Ray, Kafka or merchant service."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import time
from datetime import datetime, timedelta, timezone

import pytest

from rayfun.connectors.kafka.records import decode_producer_record
from rayfun.testing import Harness

pytestmark = pytest.mark.timeout(60)

FRAUD = pathlib.Path(__file__).resolve().parents[2] / "examples" / "fraud" / "functions.py"


@pytest.fixture
def fraud(monkeypatch):
    """The example's functions module, its merchant-scoring HTTP service stubbed (shady merchants score high)."""
    spec = importlib.util.spec_from_file_location("fraud_functions_under_test", FRAUD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    requested: list[str] = []

    class Response:
        def __init__(self, url: str) -> None:
            self.url = url

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return False

        def raise_for_status(self) -> None:
            if "/score/down" in self.url:
                raise ConnectionError("merchant service down")

        async def json(self):
            return {"score": 0.95 if "/score/shady" in self.url else 0.1}

    class Session:
        def get(self, url: str) -> Response:
            requested.append(url)
            return Response(url)

    async def http():
        return Session()

    monkeypatch.setattr(module, "_http", http)
    module.requested = requested
    return module


def transaction(fraud, h: Harness, tx: str, account: str, merchant: str, amount: int) -> None:
    value = {"id": tx, "account": account, "merchant": merchant, "amount": amount}
    h.send("fraud/transaction-manager", tx, value, value_type=fraud.Transaction)


def alerts(h: Harness, fraud) -> list[dict]:
    out = []
    for raw in h.egress(fraud.ALERTS_EGRESS):
        record = decode_producer_record(raw)
        assert record.topic == fraud.ALERTS_TOPIC
        out.append({**json.loads(record.value), "key": record.key})
    return out


def test_fraud_alert_fires_and_the_fraud_count_expires_after_30_days(fraud):
    began = time.perf_counter()
    start = datetime(2024, 3, 1, tzinfo=timezone.utc)
    h = Harness(fraud.functions, start=start)
    for _ in range(2):  # two confirmed frauds on acct-1
        h.send("fraud/counter", "acct-1", {"account": "acct-1"}, value_type=fraud.ConfirmFraud)
    transaction(fraud, h, "tx-1", "acct-1", "shady-jewels", 1000)  # frauds + risky merchant: alert
    transaction(fraud, h, "tx-2", "acct-2", "shady-jewels", 1000)  # no frauds on acct-2: no alert
    transaction(fraud, h, "tx-3", "acct-1", "down", 1500)  # merchant service down: neutral score 0.5
    h.run()
    assert [(a["transaction"], a["key"], a["merchant"]) for a in alerts(h, fraud)] == [
        ("tx-1", "acct-1", "shady-jewels"),
        ("tx-3", "acct-1", "down"),
    ]
    assert alerts(h, fraud)[0]["score"] > fraud.THRESHOLD
    assert h.state("fraud/counter", "acct-1") == {"count": 2}
    assert h.state("fraud/transaction-manager", "tx-1") == {}  # decided: its pending state is gone
    assert fraud.requested[0].endswith("/score/shady-jewels")

    h.advance(days=29)  # still inside the window (the count was written at the start)
    transaction(fraud, h, "tx-4", "acct-1", "shady-jewels", 1000)
    h.run()
    assert [a["transaction"] for a in alerts(h, fraud)][-1] == "tx-4"

    h.advance(days=1)  # 30 days after the last write: the count expires
    assert h.state("fraud/counter", "acct-1") == {}
    transaction(fraud, h, "tx-5", "acct-1", "shady-jewels", 1000)
    h.run()
    assert [a["transaction"] for a in alerts(h, fraud)] == ["tx-1", "tx-3", "tx-4"]  # tx-5: no alert now
    reports = [i.value for i in h.invocations if i.value_typename == "fraud/ReportedFraud"]
    assert [r["count"] for r in reports] == [2, 0, 2, 2, 0]
    assert h.dead_letters() == [] and h.now == start + timedelta(days=30)
    elapsed = time.perf_counter() - began
    assert elapsed < 1.0, f"the harness took {elapsed:.3f} s"
