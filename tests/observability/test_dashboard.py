"""The Grafana dashboard shipped in ``dashboards/rayfun.json`` is valid and asks only for metrics that rayfun
exports, under the names Ray's Prometheus endpoint gives them (``ray_`` prefix; counters ``_total``,
histograms ``_bucket``), so a renamed metric cannot leave a panel silently empty."""

from __future__ import annotations

import json
import os
import re

import pytest
from ray.util import metrics

from rayfun.runtime.coordinator.checkpoints import CheckpointMetrics
from rayfun.runtime.coordinator.supervisor import RecoveryMetrics
from rayfun.runtime.metrics import MetricsPublisher

DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "..", "dashboards", "rayfun.json")


@pytest.fixture
def exported(monkeypatch) -> dict[str, str]:
    """Every metric rayfun makes: Prometheus name -> kind, recorded by making them with Ray's classes
    replaced by recorders."""
    made: dict[str, str] = {}

    def recorder(kind: str, suffix: str):
        class Recorder:
            def __init__(self, name: str, description: str = "", *args, tag_keys=(), **kwargs) -> None:
                made[f"ray_{name}{suffix}"] = kind
                self.tag_keys = tag_keys

            def set_default_tags(self, tags) -> None:
                assert set(tags) <= set(self.tag_keys)

        return Recorder

    monkeypatch.setattr(metrics, "Counter", recorder("counter", "_total"))
    monkeypatch.setattr(metrics, "Gauge", recorder("gauge", ""))
    monkeypatch.setattr(metrics, "Histogram", recorder("histogram", "_bucket"))
    MetricsPublisher("app", 0)
    CheckpointMetrics("app")
    RecoveryMetrics("app")
    return made


def test_the_dashboard_asks_only_for_exported_metrics(exported):
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(dashboard["panels"]) >= 10 and exprs
    asked = {name for expr in exprs for name in re.findall(r"\bray_rayfun_\w+", expr)}
    missing = sorted(asked - set(exported))
    assert not missing, f"the dashboard asks for metrics rayfun does not export: {missing}"
    # and every metric rayfun exports is on some panel
    unused = sorted(set(exported) - asked)
    assert not unused, f"metrics no panel shows: {unused}"
    for expr in exprs:
        assert 'application=~"$application"' in expr, expr
