"""contrib/: the alert rules and the Grafana dashboard use only metrics that exist.

Every metric name in a rule or a panel query must be one `tuner metrics` really emits
(taken from a real run, not from the code's list) or one of the few node_exporter
names below. promtool (Debian package `prometheus`, installed by the test when missing) also checks
the rules' syntax, the exposition against Prometheus' naming conventions, and runs the
rules' unit tests (tests/promtool/).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import run_tuner

REPO = os.path.join(os.path.dirname(__file__), "..")
RULES = os.path.join(REPO, "contrib", "prometheus", "tuner-alerts.yml")
DASHBOARD = os.path.join(REPO, "contrib", "grafana", "tuner-dashboard.json")
RULE_TESTS = os.path.join(os.path.dirname(__file__), "promtool", "tuner-alerts-test.yml")

# node_exporter's names the contrib files may use, each from a collector enabled by default:
# netstat (collector/netstat_linux.go; its default --collector.netstat.fields keeps
# TcpExt_(Listen.*|...), docs/collectors netstat), named node_netstat_<Section>_<Field>.
NODE_EXPORTER = {
    "node_netstat_TcpExt_ListenOverflows",
    "node_netstat_TcpExt_ListenDrops",
}

# PromQL words that look like names but are not metrics.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
            "bool", "offset", "inf", "nan"}
FUNCTIONS = {"rate", "irate", "increase", "delta", "deriv", "predict_linear", "sum", "min", "max", "avg",
             "count", "topk", "bottomk", "clamp_min", "clamp_max", "abs", "max_over_time",
             "min_over_time", "avg_over_time", "label_values", "absent", "time", "vector", "scalar"}


def metric_names(expr: str) -> set:
    """The metric names an expression selects: strings, label matchers, durations and
    the label lists of by/on/... removed; names followed by '(' are functions."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "", e)
    e = re.sub(r"\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    # Grafana's label_values(metric, label): the second argument is a label.
    e = re.sub(r"\blabel_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)", r"(\1)", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word, rest = m.group(0), e[m.end():].lstrip()
        if rest.startswith("("):
            assert word in FUNCTIONS, f"unknown function {word!r} in {expr!r}"
            continue
        if word.lower() in KEYWORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def test_metric_names_extractor():
    assert metric_names('predict_linear(a_b[1h], 3600) > a_b + c{x="d e", y=~"f"}') == {"a_b", "c"}
    assert metric_names("sum by (knob, role) (rate(x_total[5m])) / on(role) y") == {"x_total", "y"}
    assert metric_names("label_values(tuner_x, instance)") == {"tuner_x"}


SERVER = "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(8); " \
         "print(s.getsockname()[1], flush=True); sys.stdin.read()"


@pytest.fixture(scope="module")
def emitted() -> set:
    """What a real `tuner metrics --target N --pid PID` run exports (with a listening
    process, so the service's metrics too)."""
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        server.stdout.readline()
        text = run_tuner("metrics", "--target", "1M", "--pid", server.pid, check_rc=0).stdout
    finally:
        server.kill()
        server.wait()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert {"tuner_capacity_connections", "tuner_listener_backlog"} <= names
    return names


def _rules():
    with open(RULES) as f:
        doc = yaml.safe_load(f)
    return [r for g in doc["groups"] for r in g["rules"]]


def test_alert_rules_use_only_exported_metrics(emitted):
    rules = _rules()
    used = set()
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        assert rule["labels"]["severity"] in ("warning", "critical")
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        unknown = names - emitted - NODE_EXPORTER
        assert not unknown, f"{rule['alert']} uses metrics nobody exports: {unknown}"
        used |= names
    # What the issue asks the rules to cover.
    alerts = {r["alert"]: r["expr"] for r in rules}
    assert "< 0.10" in alerts["TunerConnectionHeadroomLow"]
    assert "tuner_limit_utilization_ratio > 0.8" in alerts["TunerLimitUtilizationHigh"]
    assert "predict_linear(tuner_connections_open[1h], 3600)" in alerts["TunerConnectionsExhaustedWithinAnHour"]
    assert "node_netstat_TcpExt_ListenOverflows" in used


def test_the_utilization_alert_fires_where_the_report_says_near():
    """One share for both: a limit the table shows `near` is one the pager is about to
    hear of (tuner.capacity.NEAR_SHARE is the rule report, diagnose and metrics use)."""
    from tuner.capacity import NEAR_SHARE

    expr = {r["alert"]: r["expr"] for r in _rules()}["TunerLimitUtilizationHigh"]
    assert float(re.search(r"tuner_limit_utilization_ratio > ([0-9.]+)", expr).group(1)) == NEAR_SHARE


def test_dashboard_queries_use_only_exported_metrics(emitted):
    with open(DASHBOARD) as f:
        dash = json.load(f)
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    # Importable as is: no datasource of the author's, only the ${datasource} variable.
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    exprs = [variables["instance"]["definition"]]
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert set(p["gridPos"]) == {"x", "y", "w", "h"}
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            exprs.append(t["expr"])
    used = set()
    for expr in exprs:
        names = metric_names(expr.replace("$instance", "x"))
        unknown = names - emitted - NODE_EXPORTER
        assert not unknown, f"query {expr!r} uses metrics nobody exports: {unknown}"
        used |= names
    # The panels: capacity and headroom, utilization, the binding limit.
    assert {"tuner_capacity_connections", "tuner_connections_open", "tuner_limit_utilization_ratio",
            "tuner_binding_limit_info", "tuner_process_open_fds", "tuner_listener_queued"} <= used


@pytest.fixture
def promtool():
    """promtool, installed from Debian's `prometheus` package when missing (as root)."""
    from realservers import need
    return need("promtool")


def test_promtool_accepts_the_rules_and_their_unit_tests(promtool):
    check = subprocess.run([promtool, "check", "rules", RULES], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([promtool, "test", "rules", RULE_TESTS], capture_output=True, text=True,
                          cwd=os.path.dirname(RULE_TESTS))
    assert unit.returncode == 0, unit.stdout + unit.stderr


def test_promtool_finds_no_naming_problem_in_the_exposition(promtool):
    text = run_tuner("metrics", "--target", "1M", check_rc=0).stdout
    lint = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0 and not lint.stdout.strip() and "tuner_" not in lint.stderr, \
        lint.stdout + lint.stderr
