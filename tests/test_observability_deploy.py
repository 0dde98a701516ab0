"""deploy/prometheus and deploy/grafana (issue 13), checked without a Prometheus server: promtool
(Debian's `prometheus` package) checks the config and the rules and runs the rules' unit tests; with
CI set a missing promtool fails (.ci/run installs it), elsewhere the YAML is parsed and checked.
That the rules and the dashboard read metrics the stack exports is shown on a live stack
(tests/test_observability.py)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import in_ci

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "takeback-alerts.yml"
ALERT_TESTS = PROMETHEUS / "takeback-alerts.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "takeback-dashboard.json"
SEVERITIES = {"info", "warning", "critical"}


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def promtool() -> str | None:
    found = shutil.which("promtool")
    if found is None and in_ci():
        pytest.fail("promtool is not installed: in CI the alert rules must be checked by it (.ci/run installs Debian's prometheus)", pytrace=False)
    return found


def test_promtool_accepts_the_config_and_rules_and_their_unit_tests_pass():
    tool = promtool()
    if tool is None:
        pytest.skip("promtool is not installed here (apt-get install prometheus); the structure is checked by the other tests")
    for arguments in (["check", "config", "prometheus.yml"], ["check", "rules", ALERTS.name], ["test", "rules", ALERT_TESTS.name]):
        run = subprocess.run([tool, *arguments], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, f"promtool {' '.join(arguments)}:\n{run.stdout}\n{run.stderr}"


def test_every_alert_says_what_it_means_and_is_unit_tested_and_documented():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == [ALERTS.name]
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    # What the issue asks to be alerted on, at least.
    expressions = " ".join(rule["expr"] for rule in rules)
    for metric in ("takeback_deals_at_risk", "takeback_emails_failed_total", "temporal_workflow_task_schedule_to_start_latency_seconds_bucket",
                   "takeback_activity_failures_total", 'takeback_http_requests_total{status="5xx"}'):
        assert metric in expressions, metric
    tested = {case["alertname"] for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]}
    readme = (ROOT / "README.md").read_text()
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        assert rule["alert"] in tested, f"{rule['alert']} has no case in {ALERT_TESTS.name}"
        assert rule["alert"] in readme, f"README does not say what to do when {rule['alert']} fires"


def test_the_dashboard_is_valid_grafana_json_over_the_provisioned_datasource():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasource = yaml.safe_load((ROOT / "deploy/grafana/datasources.yml").read_text())["datasources"][0]
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        assert panel["targets"] and all(target["expr"].strip() for target in panel["targets"]), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
