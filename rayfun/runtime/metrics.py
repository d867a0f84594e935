"""What a shard counts per function type and per remote endpoint, and its export to Ray's metrics.

Counting is plain attribute arithmetic on the hot path, once per *run* of messages for one function type
(a runner counts itself), once per invocation with effects, once per remote request; never a Ray call per
message. A shard *publishes* what it counted to ``ray.util.metrics`` (so Ray's Prometheus endpoint, its
dashboard and Grafana show it) at most every METRICS_INTERVAL_S, as deltas of its counters. Latency
histograms are fed a bounded sample per interval (LATENCY_SAMPLES per function type or endpoint), which
keeps the cost flat at any rate; the sums and counts in the tidy table (``app.metrics()``) are exact.

Names follow StateFun's metrics where it has one (``in`` -> invocations, ``out-local``/``out-remote`` ->
messages_out, ``out-egress`` -> egress, ``num-backlog-messages`` -> backlog, ``remote-invocation-failures``
and ``remote-invocation-latency`` -> the endpoint's failures and request latency). Every metric is tagged
``application``; per-function ones with ``function_type`` and ``shard``, per-endpoint ones with ``endpoint``.
Counts include work redone after a rollback (they count work done, not the application's logical result).
"""

from __future__ import annotations

import time
from typing import Any

from ..constants import LATENCY_SAMPLES, METRICS_INTERVAL_S

__all__ = ["SHARD_METRICS", "EndpointLatency", "FunctionCounts", "MetricsPublisher", "function_rows"]

#: the keys of a shard's row in ``app.shard_metrics()`` (a ShardStatus's fields and counters, internals out)
SHARD_METRICS = (
    "node",
    "pid",
    "processed",
    "ingested",
    "backlog",
    "in_progress",
    "timers",
    "timers_fired",
    "egress",
    "dead_letters",
    "remote_requests",
    "remote_failures",
    "sources_exhausted",
    "generation",
    "epoch",
    "cpu_s",
    "taken_at",
    "failure",
)

#: histogram bucket bounds in seconds (Ray wants them fixed when the metric is made)
LATENCY_BOUNDS_S = [0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]
BATCH_BOUNDS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]


class FunctionCounts:
    """What one shard counted for one function type (cumulative over the shard actor's life)."""

    __slots__ = ("busy_s", "dead_letters", "egress", "invocations", "latency_count", "messages_out", "samples")

    def __init__(self) -> None:
        self.invocations = 0  # messages handed to the function (StateFun's "in")
        self.messages_out = 0  # messages it sent to functions
        self.egress = 0  # records it sent to egresses
        self.dead_letters = 0  # its messages that became dead letters (failures, unknown targets)
        self.busy_s = 0.0  # time spent in its invocations (embedded) or waiting for its answers (remote)
        self.latency_count = 0  # invocations (embedded) or requests (remote) that busy_s covers
        self.samples: list[float] = []  # latencies (s) since the last publish, at most LATENCY_SAMPLES

    def timed(self, seconds: float, invocations: int) -> None:
        """``invocations`` took ``seconds`` together (a run of embedded calls, or one remote batch)."""
        self.busy_s += seconds
        self.latency_count += invocations
        if len(self.samples) < LATENCY_SAMPLES:
            self.samples.append(seconds / invocations)

    def as_dict(self) -> dict[str, Any]:
        return {
            "invocations": self.invocations,
            "messages_out": self.messages_out,
            "egress": self.egress,
            "dead_letters": self.dead_letters,
            "busy_s": self.busy_s,
            "latency_count": self.latency_count,
        }


class EndpointLatency:
    """Samples of one endpoint client's answered calls since the last publish (its counts are its
    ``stats``, see remote/client.py)."""

    __slots__ = ("batch_sizes", "latency_s")

    def __init__(self) -> None:
        self.latency_s: list[float] = []  # from the first attempt to the answer, retries included
        self.batch_sizes: list[int] = []  # messages per call

    def answered(self, seconds: float, batch: int) -> None:
        if len(self.latency_s) < LATENCY_SAMPLES:
            self.latency_s.append(seconds)
            self.batch_sizes.append(batch)


def function_rows(statuses: list[dict]) -> list[dict[str, Any]]:
    """The tidy table ``app.metrics()`` returns: one row per function type, summed over the shards."""
    rows: dict[str, dict[str, Any]] = {}
    for status in statuses:
        backlog = status.get("function_backlog", {})
        for typename, counts in status.get("functions", {}).items():
            row = rows.setdefault(
                typename,
                {
                    "function_type": typename,
                    "invocations": 0,
                    "messages_out": 0,
                    "egress": 0,
                    "dead_letters": 0,
                    "backlog": 0,
                    "busy_s": 0.0,
                    "latency_count": 0,
                },
            )
            for key in ("invocations", "messages_out", "egress", "dead_letters", "busy_s", "latency_count"):
                row[key] += counts[key]
            row["backlog"] += backlog.get(typename, 0)
    out = []
    for typename in sorted(rows):
        row = rows[typename]
        count = row.pop("latency_count")
        busy = row.pop("busy_s")
        row["mean_latency_ms"] = round(1000 * busy / count, 4) if count else None
        out.append(row)
    return out


def _counters(metrics: Any, prefix: str, tags: tuple[str, ...], **described: str) -> dict[str, Any]:
    """One Ray counter per ``key=description``, named ``prefix + key``, keyed by ``key``."""
    return {key: metrics.Counter(prefix + key, what, tag_keys=tags) for key, what in described.items()}


class MetricsPublisher:
    """A shard's Ray metrics: made once per actor, fed the deltas of its counters every interval."""

    def __init__(self, app_name: str, shard: int) -> None:
        from ray.util import metrics

        self.app_name = app_name
        self.shard = shard
        self.next_at = 0.0
        fn_tags = ("application", "function_type", "shard")
        ep_tags = ("application", "endpoint", "shard")
        self._fn_counters = _counters(
            metrics,
            "rayfun_function_",
            fn_tags,
            invocations="messages handed to the function (StateFun's 'in')",
            messages_out="messages the function sent to functions",
            egress="records the function sent to egresses",
            dead_letters="the function's messages that became dead letters",
        )
        self._fn_latency = metrics.Histogram(
            "rayfun_function_invocation_latency_seconds",
            "invocation latency (embedded: the call; remote: the request), sampled",
            boundaries=LATENCY_BOUNDS_S,
            tag_keys=fn_tags,
        )
        self._fn_backlog = metrics.Gauge(
            "rayfun_function_backlog", "messages waiting for a remote function's answer", tag_keys=fn_tags
        )
        self._ep_counters = _counters(
            metrics,
            "rayfun_endpoint_",
            ep_tags,
            requests="HTTP requests to the endpoint (attempts)",
            retries="attempts after the first",
            failures="calls that failed after their retries",
        )
        self._ep_latency = metrics.Histogram(
            "rayfun_endpoint_request_latency_seconds",
            "a call's time to its answer, retries included, sampled",
            boundaries=LATENCY_BOUNDS_S,
            tag_keys=ep_tags,
        )
        self._ep_batch = metrics.Histogram(
            "rayfun_endpoint_batch_size", "messages per request, sampled", boundaries=BATCH_BOUNDS, tag_keys=ep_tags
        )
        shard_tags = ("application", "shard")
        self._backlog = metrics.Gauge(
            "rayfun_shard_backlog", "messages accepted by the shard and not yet done", tag_keys=shard_tags
        )
        self._lag = metrics.Gauge(
            "rayfun_source_lag", "records the source partition has not read yet", tag_keys=(*shard_tags, "source")
        )
        self._published: dict[tuple, float] = {}
        self._processed = 0.0  # the shard's processed count at the last publish

    @classmethod
    def for_actor(cls, app_name: str, shard: int) -> MetricsPublisher | None:
        """The publisher of a shard actor; None outside Ray (a shard core driven by a unit test)."""
        import ray

        if not ray.is_initialized():
            return None
        return cls(app_name, shard)

    def behind(self, processed: float) -> bool:
        """Ray has not seen the shard's latest counts (the loop then wakes for one more publish)."""
        return processed != self._processed

    def publish(
        self,
        functions: dict[str, FunctionCounts],
        endpoints: dict[str, tuple[dict[str, int], EndpointLatency]],
        backlog: int,
        function_backlog: dict[str, int],
        source_lag: dict[str, int],
        processed: float,
    ) -> None:
        """Hand Ray what changed since the last publish (a few calls per function type and endpoint)."""
        self.next_at = time.monotonic() + METRICS_INTERVAL_S
        self._processed = processed
        shard = str(self.shard)
        app = self.app_name
        for typename, counts in functions.items():
            tags = {"application": app, "function_type": typename, "shard": shard}
            for key, counter in self._fn_counters.items():
                self._inc(counter, (key, typename), getattr(counts, key), tags)
            for sample in counts.samples:
                self._fn_latency.observe(sample, tags)
            counts.samples.clear()
            self._fn_backlog.set(function_backlog.get(typename, 0), tags)
        for name, (stats, ep) in endpoints.items():
            tags = {"application": app, "endpoint": name, "shard": shard}
            for key, counter in self._ep_counters.items():
                self._inc(counter, ("endpoint", key, name), stats[key], tags)
            for latency, size in zip(ep.latency_s, ep.batch_sizes):
                self._ep_latency.observe(latency, tags)
                self._ep_batch.observe(size, tags)
            ep.latency_s.clear()
            ep.batch_sizes.clear()
        self._backlog.set(backlog, {"application": app, "shard": shard})
        for source, lag in source_lag.items():
            self._lag.set(lag, {"application": app, "shard": shard, "source": source})

    def _inc(self, counter, key: tuple, total: float, tags: dict[str, str]) -> None:
        delta = total - self._published.get(key, 0)
        if delta > 0:
            counter.inc(delta, tags)
            self._published[key] = total
