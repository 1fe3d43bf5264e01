"""deploy/prometheus through Debian's promtool: the configuration and the rules load, and every alert has a
`promtool test rules` case that fires it."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from deploy_support import NO_PROMETHEUS, PROMETHEUS_DIR, alert_rules, which_prometheus

TOOLS = which_prometheus()
pytestmark = pytest.mark.skipif(TOOLS is None, reason=NO_PROMETHEUS)


def _promtool(*args: str) -> str:
    assert TOOLS is not None
    done = subprocess.run([TOOLS[1], *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_promtool_checks_the_scrape_config_and_the_rules() -> None:
    assert "SUCCESS" in _promtool("check", "config", "prometheus.yml")
    out = _promtool("check", "rules", "alerts.yml")
    assert f"SUCCESS: {len(alert_rules())} rules found" in out


def test_promtool_unit_tests_fire_every_alert() -> None:
    cases = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t.get("exp_alerts")}
    assert fired == {rule["alert"] for rule in alert_rules()}
    assert "SUCCESS" in _promtool("test", "rules", "alerts_test.yml")
