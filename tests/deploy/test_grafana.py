"""deploy/grafana: the provisioned dashboard is valid JSON with a pool and a consumer
selector, shows what the issue asks for, and queries only metrics connman exports;
the provisioning files point where docker-compose.yml mounts them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from connman.metrics import METRICS

GRAFANA = Path(__file__).parents[2] / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "connman.json"
NAME = re.compile(r"\b(connman_[a-z_]+)")


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _exprs(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_selectors_for_pool_and_consumer():
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert {"datasource", "pool", "consumer"} <= set(variables)
    for name in ("pool", "consumer"):
        var = variables[name]
        assert var["type"] == "query" and var["multi"] and var["includeAll"]
        assert var["allValue"] == ".*"
    assert "connman_pool_connections_max" in variables["pool"]["definition"]
    assert "$pool" in variables["consumer"]["definition"]


def test_panels_cover_the_issue_and_use_exported_metrics():
    dashboard = _dashboard()
    exported = set()
    for doc in METRICS:
        exported |= (
            {f"{doc.name}_bucket", f"{doc.name}_count", f"{doc.name}_sum"}
            if doc.type == "histogram"
            else {doc.name}
        )
    used = set()
    for title, expr in _exprs(dashboard):
        names = set(NAME.findall(expr))
        assert names <= exported, f"panel {title!r} queries unknown {names - exported}"
        assert 'pool=~"$pool"' in expr, f"panel {title!r} ignores the pool selector"
        if "consumer" in {lab for doc in METRICS if doc.name in names for lab in doc.labels}:
            assert 'consumer=~"$consumer"' in expr, f"{title!r} ignores the consumer selector"
        used |= names
    for needed in (
        "connman_pool_connections",
        "connman_pool_pending_requests",
        "connman_pool_wait_time_seconds_bucket",
        "connman_pool_use_time_seconds_bucket",
        "connman_pool_timeouts_total",
        "connman_pool_connection_errors_total",
        "connman_pool_leaks_total",
    ):
        assert needed in used, f"no panel shows {needed}"
    quantiles = [e for _, e in _exprs(dashboard) if "histogram_quantile(0.99" in e]
    assert any("wait_time" in e for e in quantiles) and any("use_time" in e for e in quantiles)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]


def test_panels_do_not_overlap():
    cells: set[tuple[int, int]] = set()
    for panel in _dashboard()["panels"]:
        g = panel["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not (mine & cells), f"panel {panel['title']!r} overlaps another"
        cells |= mine


def test_provisioning():
    source = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    (ds,) = source["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://127.0.0.1:9090"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "connman.yml").read_text())
    (p,) = provider["providers"]
    assert p["type"] == "file" and p["options"]["path"] == "/var/lib/grafana/dashboards"


def test_rendered_picture_exists():
    png = GRAFANA / "connman-dashboard.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
