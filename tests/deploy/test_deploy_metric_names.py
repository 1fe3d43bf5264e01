"""Every metric the alerts and the dashboard name is one gateway/metrics.py defines (checked without Prometheus, so a
typo fails even where the live test is skipped)."""

from __future__ import annotations

import re

from deploy_support import alert_rules, dashboard_exprs
from prometheus_client import REGISTRY

from gateway import metrics

PROMQL_WORDS = {"sum", "by", "rate", "increase", "delta", "resets", "histogram_quantile", "label_replace", "or",
                "and", "unless", "on", "vector", "max", "le"}
SCRAPE = {"up"}  # Prometheus' own per-target series


def _defined() -> set[str]:
    names = set()
    for collector in vars(metrics).values():
        if collector in REGISTRY._names_to_collectors.values():
            for family in collector.describe():
                names.add(family.name)
                names.update(family.name + suffix for suffix in ("_total", "_bucket", "_count", "_sum"))
    return names


def _metric_names(expr: str) -> set[str]:
    no_strings = re.sub(r'"[^"]*"', '""', expr)
    no_labels = re.sub(r"\{[^}]*\}", "", re.sub(r"\[[^\]]*\]", "", no_strings))
    no_groupings = re.sub(r"\b(by|on|without)\s*\([^)]*\)", "", no_labels)
    return {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", no_groupings) if w not in PROMQL_WORDS}


def test_alerts_and_panels_use_only_exported_metrics() -> None:
    exprs = [(r["alert"], r["expr"]) for r in alert_rules()] + dashboard_exprs()
    known = _defined() | SCRAPE
    assert {"layer_http_requests_total", "layer_query_duration_seconds_bucket"} <= known
    unknown = {(where, name) for where, expr in exprs for name in _metric_names(expr) if name not in known}
    assert not unknown, unknown
