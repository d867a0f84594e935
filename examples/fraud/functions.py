"""StateFun's fraud-detection showcase as rayfun functions.

Transactions and confirmed-fraud reports come in from Kafka; alerts go out to Kafka.

- ``fraud/counter`` (id = account): how many frauds were confirmed on the account in the last 30 days
  (the state expires 30 days after its last write); answers ``fraud/transaction-manager`` queries.
- ``fraud/merchant`` (id = merchant): asks a third-party merchant-scoring service over HTTP (an
  ``async`` function: other instances go on while it waits) and answers with the merchant's score.
- ``fraud/transaction-manager`` (id = transaction): fans a transaction out to the counter and the merchant
  scorer, collects both answers, asks the model, and emits an alert when the model says so.
- ``fraud/model`` (id = transaction): scores the features; a stand-in for a real model.
"""

from __future__ import annotations

import math
import os
from datetime import timedelta

import aiohttp

from rayfun import IntType, StatefulFunctions, ValueSpec, kafka_egress_message, make_json_type, message_builder

Transaction = make_json_type("fraud/Transaction")  # {"id", "account", "merchant", "amount"}
ConfirmFraud = make_json_type("fraud/ConfirmFraud")  # {"account"}
QueryFraud = make_json_type("fraud/QueryFraud")  # {}
ReportedFraud = make_json_type("fraud/ReportedFraud")  # {"count"}
QueryMerchant = make_json_type("fraud/QueryMerchant")  # {}
MerchantScore = make_json_type("fraud/MerchantScore")  # {"score"} or {"error"}
FeatureVector = make_json_type("fraud/FeatureVector")  # {"amount", "frauds", "merchant_score"}
FraudScore = make_json_type("fraud/FraudScore")  # {"score"}
Pending = make_json_type("fraud/Pending")  # the manager's partial view of one transaction

ALERTS_EGRESS = "fraud/alerts"
ALERTS_TOPIC = "alerts"
THRESHOLD = 0.8

functions = StatefulFunctions()


@functions.bind("fraud/counter", specs=[ValueSpec("count", IntType, expire_after_write=timedelta(days=30))])
def fraud_count(context, message):
    if message.is_type(ConfirmFraud):
        context.storage.count = (context.storage.count or 0) + 1
    elif message.is_type(QueryFraud):
        context.send(
            message_builder(
                context.caller.typename,
                context.caller.id,
                value={"count": context.storage.count or 0},
                value_type=ReportedFraud,
            )
        )


_session: aiohttp.ClientSession | None = None


async def _http() -> aiohttp.ClientSession:
    global _session  # one pooled client per shard process
    if _session is None or _session.closed:
        _session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
    return _session


@functions.bind("fraud/merchant")
async def merchant_score(context, message):
    url = os.environ.get("FRAUD_MERCHANT_SERVICE", "http://127.0.0.1:8089")
    try:
        session = await _http()
        async with session.get(f"{url}/score/{context.address.id}") as response:
            response.raise_for_status()
            answer = {"score": float((await response.json())["score"])}
    except Exception as exc:  # the service is third-party: an outage must not stall transactions
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    context.send(message_builder(context.caller.typename, context.caller.id, value=answer, value_type=MerchantScore))


@functions.bind("fraud/transaction-manager", specs=[ValueSpec("pending", Pending)])
def transaction_manager(context, message):
    me = context.address.id
    if message.is_type(Transaction):
        tx = message.as_type(Transaction)
        context.storage.pending = {"tx": tx}
        context.send(message_builder("fraud/counter", tx["account"], value={}, value_type=QueryFraud))
        context.send(message_builder("fraud/merchant", tx["merchant"], value={}, value_type=QueryMerchant))
        return
    pending = context.storage.pending
    if pending is None:
        return  # an answer for a transaction already decided
    if message.is_type(ReportedFraud):
        pending["frauds"] = message.as_type(ReportedFraud)["count"]
    elif message.is_type(MerchantScore):
        pending["merchant"] = message.as_type(MerchantScore)
    elif message.is_type(FraudScore):
        score = message.as_type(FraudScore)["score"]
        tx = pending["tx"]
        if score > THRESHOLD:
            alert = (
                f'{{"transaction": "{me}", "account": "{tx["account"]}", "merchant": "{tx["merchant"]}", '
                f'"amount": {tx["amount"]}, "score": {score:.3f}}}'
            )
            context.send_egress(kafka_egress_message(ALERTS_EGRESS, topic=ALERTS_TOPIC, key=tx["account"], value=alert))
        del context.storage.pending
        return
    if "frauds" in pending and "merchant" in pending:
        merchant = pending["merchant"]
        features = {
            "amount": pending["tx"]["amount"],
            "frauds": pending["frauds"],
            "merchant_score": merchant.get("score", 0.5),
        }  # unknown merchant risk: neutral
        context.send(message_builder("fraud/model", me, value=features, value_type=FeatureVector))
    context.storage.pending = pending


@functions.bind("fraud/model")
def model(context, message):
    f = message.as_type(FeatureVector)
    z = -4.0 + 1.6 * f["frauds"] + 2.5 * f["merchant_score"] + 0.0008 * f["amount"]
    context.send(
        message_builder(
            context.caller.typename, context.caller.id, value={"score": 1 / (1 + math.exp(-z))}, value_type=FraudScore
        )
    )
