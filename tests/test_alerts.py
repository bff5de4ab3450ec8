"""The alert rules, their promtool cases and the Grafana dashboard, against a live daemon's metrics.

promtool comes from ``make setup`` (``scripts/get-promtool`` puts it at ``.venv/tools/promtool``)
or from ``PATH``; without it these tests fail, they do not skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from world import MANAGEMENT_KEY, no_fault

from vault_rotator.daemon.daemon import Daemon
from vault_rotator.daemon.freeze import freeze
from vault_rotator.daemon.metrics import VAULT_STATUS, Metrics
from vault_rotator.emulator import Emulator
from vault_rotator.engine import reasons
from vault_rotator.engine.outcomes import OUTCOMES
from vault_rotator.engine.session import StateStore
from vault_rotator.policy import load_policies
from vault_rotator.runtime import Runtime
from vault_rotator.store.vault import VaultConnection
from vault_rotator.testing.clock import FakeClock
from vault_rotator.testing.vault_server import VaultServer

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "alerts.yaml"
RULE_CASES = REPO / "deploy" / "prometheus" / "alerts.test.yaml"
DASHBOARD = REPO / "deploy" / "grafana" / "vault-rotator.json"
ALERTING_DOC = REPO / "docs" / "alerting.md"

METRIC = re.compile(r"\b(?:vault_rotator|process|python)_[a-z0-9_]*[a-z0-9]\b")
SELECTOR = re.compile(r"\b((?:vault_rotator|process|python)_[a-z0-9_]*[a-z0-9])\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)")
SCRAPE_LABELS = {"job", "instance"}  # added by Prometheus, not by the daemon
GRAFANA_VARIABLES = {"$env": ".*", "$__rate_interval": "5m", "$__range": "1d", "$__interval": "1m"}
# The label values the daemon can emit where a rule or panel selects on them.
EMITTED = {
    ("vault_rotator_rotations_total", "outcome"): {
        *OUTCOMES,
    },
    ("vault_rotator_vault_requests_total", "status"): {"ok", "error", *VAULT_STATUS.values()},
    ("vault_rotator_webhook_deliveries_total", "result"): {"sent", "failed", "dropped"},
    ("vault_rotator_ticks_total", "result"): {"ok", "error"},
}

CONFIG = """\
environment: {env}
provider:
  type: arouter
  base_url: {base_url}
  dialect: c
  management_key:
    path: {env}/management
  usage_lag: 60s
  poll_interval: 30s
vault:
  kv_mount: secret
  state_prefix: {env}/vault-rotator
require_spending_limit: false
defaults:
  schedule: "@monthly"
  max_age: 45d
  pickup_timeout: 1h
  drain_period: 10m
  drain_timeout: 2h
keys:
  - name: app
    secret_path: {env}/app
    allowed_providers: [openai]
  - name: frozen
    secret_path: {env}/frozen
    allowed_providers: [openai]
"""


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run promtool from .venv/tools (make setup) or PATH; fail loudly when there is none."""
    local = REPO / ".venv" / "tools" / "promtool"
    tool = str(local) if os.access(local, os.X_OK) else shutil.which("promtool")
    if tool is None:
        pytest.fail(
            "promtool not found at .venv/tools/promtool nor on PATH: run `make setup` "
            "(scripts/get-promtool .venv/tools), or install Debian's prometheus package",
            pytrace=False,
        )
    return subprocess.run(
        [tool, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel but rows, including those nested in collapsed rows."""
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    """Every query of the dashboard: panel targets (PromQL) and template variable queries
    (Grafana's ``label_values(METRIC, LABEL)``)."""
    exprs = [t["expr"] for p in panels(board) for t in p["targets"]]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


def as_promql(query: str) -> str:
    """A dashboard query as plain PromQL: Grafana's variables replaced by sample values, and
    ``label_values(METRIC, LABEL)`` by its METRIC."""
    query = LABEL_VALUES.sub(r"\1", query)
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        query = query.replace(variable, value)
    return query


def matcher_problems(name: str, matchers: str, served: dict[str, set[str]]) -> list[str]:
    """Labels a selector names that the metric lacks, and values the daemon never emits."""
    problems = []
    for label, op, value in MATCHER.findall(matchers):
        if label not in served.get(name, set()) | SCRAPE_LABELS:
            problems.append(f"{name}: no label {label}")
        allowed = EMITTED.get((name, label))
        if allowed is not None and "$" not in value:
            words = value.split("|") if "~" in op else [value]
            problems += [
                f"{name}{{{label}={w!r}}}: never emitted" for w in words if w not in allowed
            ]
    return problems


def check_against_live(exprs: list[str], served: dict[str, set[str]]) -> list[str]:
    """Problems with the metric names, label names and label values ``exprs`` use."""
    all_labels = set().union(*served.values()) | SCRAPE_LABELS
    problems = []
    for expr in exprs:
        problems += [f"{n}: not served ({expr})" for n in METRIC.findall(expr) if n not in served]
        for name, matchers in SELECTOR.findall(expr):
            problems += [f"{p} ({expr})" for p in matcher_problems(name, matchers, served)]
        for group in GROUPING.findall(expr):
            labels = {label.strip() for label in group.split(",") if label.strip()}
            problems += [f"no series has label {lb} ({expr})" for lb in labels - all_labels]
        for name, label in LABEL_VALUES.findall(expr):
            if label not in served.get(name, set()):
                problems.append(f"label_values: {name} has no label {label}")
    return problems


@pytest.fixture(scope="module")
def served(vault: VaultServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """Sample names on /metrics, with their label names, of a daemon that rotated a key.

    One account (the emulator, dialect c) with two keys: ``app`` rotates to its end through
    ticks while its consumer calls with whatever Vault serves; ``frozen`` never rotates, so its
    age is labelled ``never_rotated="true"``.
    """
    env = f"m{uuid.uuid4().hex[:8]}"
    clock = FakeClock()
    emulator = Emulator(dialect="c", management_keys=[MANAGEMENT_KEY], clock=clock).start()
    conn = VaultConnection(vault.addr, vault.token)
    try:
        kv = conn.kv("secret")
        kv.write(f"{env}/management", {"key": MANAGEMENT_KEY}, cas=0)
        for name in ("app", "frozen"):
            key_id, value = emulator.seed_key(f"{name}-original", allowed_providers=["openai"])
            kv.write(f"{env}/{name}", {"api_key": value, "key_id": key_id}, cas=0)
        freeze(kv, f"{env}/vault-rotator", f"{env}/frozen", "test", at=clock())
        config = tmp_path_factory.mktemp("alerts-policies")
        (config / "policy.yaml").write_text(CONFIG.format(env=env, base_url=emulator.base_url))
        runtime = Runtime(conn, clock=clock, sleep=clock.sleep)
        daemon = Daemon(load_policies(config), runtime, metrics=Metrics(), fault=no_fault)
        ((account, keys),) = daemon.accounts().items()
        for _ in range(40):
            daemon.tick(account, keys)
            clock.advance(30)
            secret = kv.read(f"{env}/app")
            assert secret is not None
            emulator.call(str(secret.data["api_key"]))
        record = StateStore(kv, f"{env}/vault-rotator").read(env, "app")[0]
        assert [o.outcome for o in record.outcomes] == [reasons.SUCCEEDED]
        text = daemon.metrics.render().decode()
    finally:
        emulator.stop()
        conn.close()
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    assert 'never_rotated="true"' in text  # the frozen key is there, counted as never rotated
    return found


def test_promtool_accepts_the_rule_file() -> None:
    """`promtool check rules` accepts deploy/prometheus/alerts.yaml."""
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_rule_cases_pass() -> None:
    """Every `promtool test rules` case in alerts.test.yaml passes against alerts.yaml."""
    result = promtool("test", "rules", RULE_CASES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_case_and_a_quiet_one() -> None:
    """Each alert fires in some promtool case and is expected silent in another; no case names
    an alert the rules do not have (which would pass vacuously)."""
    alerts = {rule["alert"] for rule in alert_rules()}
    cases = yaml.safe_load(RULE_CASES.read_text())
    assert cases["rule_files"] == [RULES.name]
    fired: set[str] = set()
    quiet: set[str] = set()
    for test in cases["tests"]:
        for check in test["alert_rule_test"]:
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert sorted(alerts - fired) == []
    assert sorted(alerts - quiet) == []
    assert sorted((fired | quiet) - alerts) == []


def test_every_alert_has_severity_annotations_and_a_runbook_section() -> None:
    """Each alert has a severity, a summary, a description, and a runbook_url whose anchor is
    a section of docs/alerting.md."""
    headings = set(re.findall(r"^#+ (\S+)$", ALERTING_DOC.read_text(), re.MULTILINE))
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        assert annotations["runbook_url"] == f"docs/alerting.md#{name.lower()}"
        assert name in headings, f"docs/alerting.md has no section {name}"


def test_dashboard_is_valid_and_every_panel_queries_prometheus() -> None:
    """The dashboard is Grafana JSON with a data source variable, unique panel ids, panels that
    fit the 24-column grid, and at least one Prometheus query per panel."""
    board = dashboard()
    assert board["uid"] == "vault-rotator"
    assert board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    rows = [p for p in board["panels"] if p["type"] == "row"]
    ids = [p["id"] for p in [*rows, *panels(board)]]
    assert len(ids) == len(set(ids))
    shown = list(panels(board))
    assert len(shown) >= 10
    for panel in shown:
        title = panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, title
        assert panel["datasource"] == source, title
        assert panel["targets"], f"{title}: no target"
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            assert target["datasource"] == source, title


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query (Grafana's variables replaced by sample values)."""
    exprs = [as_promql(query) for query in dashboard_queries(dashboard())]
    assert [e for e in exprs if "$" in e] == []  # no Grafana variable left unknown
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_the_alerts_use_is_served(served: dict[str, set[str]]) -> None:
    """Each metric, label and selected label value in an alert expression is one a live
    daemon serves or emits (counters with _total, histograms with _bucket/_sum/_count)."""
    exprs = [rule["expr"] for rule in alert_rules()]
    assert check_against_live(exprs, served) == []
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert "vault_rotator_build_info" in used  # the scan finds what it should


def test_every_metric_the_dashboard_uses_is_served(served: dict[str, set[str]]) -> None:
    """Each metric, label and selected label value in a dashboard query is one a live daemon
    serves or emits."""
    exprs = dashboard_queries(dashboard())
    assert check_against_live(exprs, served) == []
    used = {name for expr in exprs for name in METRIC.findall(expr)}
    assert "vault_rotator_step_duration_seconds_bucket" in used  # the scan finds what it should
