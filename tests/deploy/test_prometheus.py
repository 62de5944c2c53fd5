"""deploy/prometheus: the scrape config and the alert rules pass ``promtool check``,
the rules' unit tests pass ``promtool test rules``, and every metric the rules use is
one connman exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from connman.metrics import DEFAULT_PORT, METRICS

DEPLOY = Path(__file__).parents[2] / "deploy" / "prometheus"
RULES = sorted((DEPLOY / "rules").glob("*.yml"))
NAME = re.compile(r"\b(connman_[a-z_]+)")


@pytest.fixture(scope="module")
def promtool(find_tool) -> str:
    return find_tool("promtool", "/usr/bin/promtool", package="prometheus")


def _run(promtool: str, *args: str) -> str:
    result = subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, cwd=DEPLOY, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_check_config(promtool):
    out = _run(promtool, "check", "config", "prometheus.yml")
    assert "SUCCESS" in out and f"{len(RULES)} rule files found" in out


def test_check_rules(promtool):
    assert RULES
    out = _run(promtool, "check", "rules", *(str(p.relative_to(DEPLOY)) for p in RULES))
    assert "SUCCESS" in out


def test_rule_unit_tests(promtool):
    tests = sorted((DEPLOY / "tests").glob("*.yml"))
    assert tests
    out = _run(promtool, "test", "rules", *(str(p.relative_to(DEPLOY)) for p in tests))
    assert "SUCCESS" in out and "FAILED" not in out


def exported_names() -> set[str]:
    """Every series name a scrape can hold, with the histogram suffixes."""
    names: set[str] = set()
    for doc in METRICS:
        if doc.type == "histogram":
            names |= {f"{doc.name}_bucket", f"{doc.name}_count", f"{doc.name}_sum"}
        else:
            names.add(doc.name)
    return names


def test_rules_use_exported_metrics_and_every_alert_is_tested():
    exported = exported_names()
    alerts: set[str] = set()
    for path in RULES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                alerts.add(rule["alert"])
                used = set(NAME.findall(rule["expr"]))
                assert used <= exported, f"{rule['alert']} uses unknown {used - exported}"
                assert rule["labels"]["severity"] in ("warning", "critical")
                assert {"summary", "description"} <= set(rule["annotations"])
    tested: set[str] = set()
    for path in (DEPLOY / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check["exp_alerts"]:
                    tested.add(check["alertname"])
    assert alerts == tested, f"alerts never shown firing in a rule test: {alerts - tested}"
    expected = {
        "ConnmanPoolSaturated",
        "ConnmanAcquireTimeouts",
        "ConnmanLeaseLeaks",
        "ConnmanStorageDegraded",
        "ConnmanPoolDown",
    }
    assert expected <= alerts


def test_scrape_target_is_connmans_default_port():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "connman"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"127.0.0.1:{DEFAULT_PORT}"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
