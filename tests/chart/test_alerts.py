"""The chart's alerts (a PrometheusRule) and dashboard (a ConfigMap for Grafana's sidecar).

Rendered with `helm template` like the rest of the chart; the rule groups are checked and
unit-tested with promtool (`promtool check rules`, `promtool test rules`: input series as
Prometheus stores them after the chart's ServiceMonitor scraped the agents, and the
alerts that must, and must not, fire with their labels and annotations). The dashboard's
queries may use only metric names the agent exposes (read from a real `Metrics`
registry), only variables the dashboard defines, and each must parse (promtool 2.42 has
no expression checker: they go through `promtool check rules` as recording rules).

promtool comes from Debian's `prometheus` package; without it these tests skip, saying
so, except under CI (CI=true), where a missing install step in .ci/run must fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from oomguard.metrics import Metrics
from tests.chart.conftest import CHART, NAMESPACE, RELEASE, Helm, Rendered

DASHBOARD_FILE = CHART / "dashboards" / "oomguard.json"
README = CHART / "README.md"
RUNBOOK = "https://github.com/oomguard/oomguard/blob/main/charts/oomguard/README.md"
JOB = RELEASE  # the ServiceMonitor's job: the Service's name, the release's full name

# Not the agent's: Prometheus' own scrape health, and kube-state-metrics' (only in
# OomguardAgentsMissing and OomguardMemoryHeadroomLow, which say they need it).
PROMETHEUS_METRICS = frozenset({"up"})
KUBE_STATE_METRICS = frozenset(
    {"kube_daemonset_status_desired_number_scheduled", "kube_pod_container_resource_limits"}
)

ALERTS = (
    "OomguardOOMKill",
    "OomguardSystemOOMKill",
    "OomguardOOMImminent",
    "OomguardNodeOOMImminent",
    "OomguardMemoryHeadroomLow",
    "OomguardAgentDown",
    "OomguardAgentsMissing",
    "OomguardAgentAbsent",
    "OomguardAgentNotReady",
    "OomguardEventsFailing",
    "OomguardEventsDropped",
    "OomguardPolicyInvalid",
    "OomguardKillModeWriteErrors",
    "OomguardScoreWriteErrors",
)
OFF_BY_DEFAULT = frozenset({"OomguardMemoryHeadroomLow"})

EXTRA_RULE = {
    "alert": "OomguardStateWriteErrors",
    "expr": "increase(oomguard_state_write_errors_total[10m]) > 0",
    "labels": {"severity": "warning"},
    "annotations": {"summary": "oomguard cannot write its state directory"},
}

# Both features on, as a kube-prometheus-stack user sets them.
MONITORING_VALUES: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {
        "enabled": True,
        "namespace": "monitoring",
        "additionalLabels": {"release": "kube-prometheus-stack"},
        "rules": {
            "OomguardMemoryHeadroomLow": {"enabled": True},
            "OomguardAgentDown": {"severity": "critical"},
        },
        "extraRules": [EXTRA_RULE],
    },
    "grafanaDashboard": {
        "enabled": True,
        "namespace": "monitoring",
        "annotations": {"grafana_folder": "Kubernetes"},
    },
}

# Grafana's own variables, and what stands in for them when a query is parsed.
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__range": "6h", "__interval": "1m"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def promtool() -> Path:
    found = shutil.which("promtool")
    if found is None:
        why = (
            "promtool is not installed: apt-get install --no-install-recommends prometheus "
            "(Debian's package has it; .ci/run installs it)"
        )
        if _in_ci():
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return Path(found)


def _run_promtool(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def _values_file(tmp: Path, values: dict[str, Any], name: str = "values.yaml") -> Path:
    """A values file; a new name for each set (Helm.template caches renders by path)."""
    path = tmp / name
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def monitoring_values(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _values_file(tmp_path_factory.mktemp("monitoring"), MONITORING_VALUES)


@pytest.fixture(scope="module")
def monitoring(helm3: Helm, monitoring_values: Path) -> Rendered:
    return helm3.template((monitoring_values,))


def _rule(rendered: Rendered) -> dict[str, Any]:
    return rendered.one("PrometheusRule")


def _dashboard_config_map(rendered: Rendered) -> dict[str, Any]:
    found = [cm for cm in rendered.of_kind("ConfigMap") if "oomguard.json" in cm.get("data", {})]
    assert len(found) == 1, f"expected one dashboard ConfigMap, rendered {len(found)}"
    return found[0]


def _alerts(rule: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        entry["alert"]: entry
        for group in rule["spec"]["groups"]
        for entry in group["rules"]
        if "alert" in entry
    }


def _write_rules(rule: dict[str, Any], path: Path) -> Path:
    """The PrometheusRule's spec as a Prometheus rules file (what the operator does)."""
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


# --------------------------------------------------------------------------- the objects


def test_off_by_default(helm3: Helm) -> None:
    rendered = helm3.template()
    assert not rendered.of_kind("PrometheusRule")
    assert [cm["metadata"]["name"] for cm in rendered.of_kind("ConfigMap")] == [f"{RELEASE}-policy"]


def test_prometheus_rule_is_selected_by_the_operator(monitoring: Rendered) -> None:
    rule = _rule(monitoring)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["name"] == RELEASE
    assert rule["metadata"]["namespace"] == "monitoring"
    labels = rule["metadata"]["labels"]
    # The chart's labels, and the one kube-prometheus-stack's ruleSelector asks for.
    assert monitoring.daemonset["metadata"]["labels"].items() <= labels.items()
    assert labels["release"] == "kube-prometheus-stack"
    assert set(rule["spec"]) == {"groups"}
    names = [group["name"] for group in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), names
    assert names[-1] == "oomguard.extra"


def test_every_alert_is_documented_and_labelled(monitoring: Rendered) -> None:
    alerts = _alerts(_rule(monitoring))
    assert set(alerts) == {*ALERTS, EXTRA_RULE["alert"]}
    anchors = _readme_anchors()
    for name in ALERTS:
        alert = alerts[name]
        assert alert["labels"]["severity"] in ("critical", "warning", "info"), name
        assert set(alert["annotations"]) == {"summary", "description", "runbook_url"}, name
        url = alert["annotations"]["runbook_url"]
        assert url == f"{RUNBOOK}#{name.lower()}"
        assert name.lower() in anchors, f"README has no section for {name} ({url})"
        assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["for"]
        # The labels it is about are in the words a human reads.
        description = alert["annotations"]["description"]
        assert "{{ $labels." in description or "$value" in description, name
    assert alerts["OomguardAgentDown"]["labels"]["severity"] == "critical"  # overridden
    assert alerts[EXTRA_RULE["alert"]] == EXTRA_RULE


def _readme_anchors() -> set[str]:
    """GitHub's anchors for the README's headings: lower case, punctuation dropped."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", README.read_text(), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_values_choose_each_alert(helm3: Helm, tmp_path: Path) -> None:
    values = {
        "prometheusRule": {
            "enabled": True,
            "additionalRuleLabels": {"team": "platform"},
            "rules": {
                "OomguardOOMKill": {"severity": "critical", "for": "1m"},
                "OomguardEventsDropped": {"enabled": False},
                "OomguardAgentAbsent": {"enabled": False},
            },
        }
    }
    rule = _rule(helm3.template((_values_file(tmp_path, values),)))
    assert rule["metadata"]["namespace"] == NAMESPACE
    alerts = _alerts(rule)
    assert set(alerts) == set(ALERTS) - OFF_BY_DEFAULT - {
        "OomguardEventsDropped",
        "OomguardAgentAbsent",
    }
    assert alerts["OomguardOOMKill"]["labels"] == {"severity": "critical", "team": "platform"}
    assert alerts["OomguardOOMKill"]["for"] == "1m"
    assert alerts["OomguardAgentDown"]["labels"] == {"severity": "warning", "team": "platform"}
    assert all(group["rules"] for group in rule["spec"]["groups"])


def test_every_alert_can_be_turned_off(helm3: Helm, tmp_path: Path) -> None:
    """All off and no extra rules: a valid, empty PrometheusRule, not a broken one."""
    values = {
        "prometheusRule": {
            "enabled": True,
            "rules": {name: {"enabled": False} for name in ALERTS},
        }
    }
    rule = _rule(helm3.template((_values_file(tmp_path, values),)))
    assert rule["spec"] == {"groups": []}


def test_rules_select_the_agents_by_their_scrape_job(helm3: Helm, tmp_path: Path) -> None:
    """`up{job=...}` is the ServiceMonitor's job: the Operator names it after the Service."""
    values = {"fullnameOverride": "node-oom-agent", **MONITORING_VALUES}
    rendered = helm3.template((_values_file(tmp_path, values),))
    service = rendered.one("Service")["metadata"]["name"]
    monitor = rendered.one("ServiceMonitor")
    assert service == "node-oom-agent"
    assert "jobLabel" not in monitor["spec"], "a jobLabel would change the job the rules use"
    jobs = set()
    for alert in _alerts(_rule(rendered)).values():
        jobs.update(re.findall(r'job="([^"]*)"', alert["expr"]))
    assert jobs == {service}
    daemonsets = re.findall(
        r'daemonset="([^"]*)"', _alerts(_rule(rendered))["OomguardAgentsMissing"]["expr"]
    )
    assert daemonsets == [rendered.daemonset["metadata"]["name"]]

    values["prometheusRule"] = {**MONITORING_VALUES["prometheusRule"], "job": "oomguard-pods"}
    rendered = helm3.template((_values_file(tmp_path, values, "job.yaml"),))
    for alert in _alerts(_rule(rendered)).values():
        assert set(re.findall(r'job="([^"]*)"', alert["expr"])) <= {"oomguard-pods"}


def test_service_monitor_keeps_the_victims_labels(monitoring: Rendered) -> None:
    (endpoint,) = monitoring.one("ServiceMonitor")["spec"]["endpoints"]
    assert endpoint.get("honorLabels") is True


BAD_VALUES = [
    pytest.param(
        {"prometheusRule": {"rules": {"OomguardOOMKills": {"enabled": False}}}},
        "OomguardOOMKills",
        id="unknown-alert",
    ),
    pytest.param(
        {"prometheusRule": {"rules": {"OomguardOOMKill": {"severity": ""}}}},
        "severity",
        id="empty-severity",
    ),
    pytest.param(
        {"prometheusRule": {"rules": {"OomguardAgentDown": {"for": "10 minutes"}}}},
        "for",
        id="not-a-duration",
    ),
    pytest.param(
        {"prometheusRule": {"extraRules": [{"alert": "Mine"}]}},
        "expr",
        id="extra-rule-without-expr",
    ),
    pytest.param(
        {"prometheusRule": {"additionalLabels": {"release": "kube prometheus"}}},
        "additionalLabels",
        id="label-value-with-a-space",
    ),
    pytest.param(
        {"prometheusRule": {"runbookUrl": "https://example.com/runbook#x"}},
        "runbookUrl",
        id="runbook-url-with-fragment",
    ),
    pytest.param({"grafanaDashboard": {"labelValue": 1}}, "labelValue", id="label-value-type"),
    pytest.param({"grafanaDashboard": {"folder": "x"}}, "folder", id="dashboard-typo"),
]


@pytest.mark.parametrize(("values", "key"), BAD_VALUES)
def test_bad_values_are_refused(
    helm3: Helm, tmp_path: Path, values: dict[str, Any], key: str
) -> None:
    done = helm3.run(
        "template", RELEASE, str(CHART), "--values", str(_values_file(tmp_path, values))
    )
    assert done.returncode != 0, f"helm template accepted {values}"
    said = done.stdout + done.stderr
    assert "values don't meet the specifications of the schema" in said, said
    assert key in said, f"the message does not name {key!r}:\n{said}"


@pytest.mark.parametrize("helm_name", ["helm3", "helm4"])
def test_helm_lint_strict(
    request: pytest.FixtureRequest, monitoring_values: Path, helm_name: str
) -> None:
    helm: Helm = request.getfixturevalue(helm_name)
    done = helm.run("lint", "--strict", str(CHART), "--values", str(monitoring_values))
    assert done.returncode == 0, done.stdout + done.stderr


def test_helm4_renders_the_same(helm4: Helm, monitoring: Rendered, monitoring_values: Path) -> None:
    assert helm4.template((monitoring_values,)).objects == monitoring.objects


def test_notes_say_where_alerts_and_dashboard_are(helm4: Helm, monitoring_values: Path) -> None:
    done = helm4.run(
        *("install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"),
        *("--values", str(monitoring_values)),
    )
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert f"PrometheusRule monitoring/{RELEASE}" in notes
    assert f'ConfigMap monitoring/{RELEASE}-dashboard, labelled grafana_dashboard="1"' in notes


# --------------------------------------------------------------------------- promtool


def test_promtool_accepts_the_rules(promtool: Path, monitoring: Rendered, tmp_path: Path) -> None:
    path = _write_rules(_rule(monitoring), tmp_path / "rules.yaml")
    done = _run_promtool(promtool, "check", "rules", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS) + 1} rules found" in done.stdout


def test_promtool_check_can_fail(promtool: Path, monitoring: Rendered, tmp_path: Path) -> None:
    """The check above is a real one: a broken expression or template is refused."""
    rule = json.loads(json.dumps(_rule(monitoring)))
    rule["spec"]["groups"][0]["rules"][0]["expr"] += " +"
    path = _write_rules(rule, tmp_path / "rules.yaml")
    assert _run_promtool(promtool, "check", "rules", str(path), cwd=tmp_path).returncode != 0
    rule = json.loads(json.dumps(_rule(monitoring)))
    rule["spec"]["groups"][0]["rules"][0]["annotations"]["summary"] = "{{ $labels.pod "
    path = _write_rules(rule, tmp_path / "rules.yaml")
    assert _run_promtool(promtool, "check", "rules", str(path), cwd=tmp_path).returncode != 0


def _series(metric: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{metric}{{{inner}}}", "values": values}


def _agent(node: str) -> dict[str, str]:
    """The target labels the ServiceMonitor gives one node's agent."""
    return {
        "job": JOB,
        "namespace": NAMESPACE,
        "pod": f"oomguard-{node[-1]}",
        "node": node,
        "instance": f"10.0.0.{ord(node[-1]) - 96}:9753",
    }


def _victim(
    namespace: str, pod: str, container: str, node: str = "node-a", **labels: str
) -> dict[str, str]:
    """A kill or warning series with the victim's labels (honorLabels) and the agent's."""
    agent = _agent(node)
    return {
        "job": JOB,
        "namespace": namespace,
        "pod": pod,
        "container": container,
        **labels,
        "node": agent["node"],
        "instance": agent["instance"],
    }


def _runbook(alert: str) -> str:
    return f"{RUNBOOK}#{alert.lower()}"


def _kill_annotations(container: str, namespace: str, pod: str, times: int) -> dict[str, str]:
    return {
        "summary": f"OOM kill in {namespace}/{pod} (container {container})",
        "description": (
            f'Container "{container}" of pod {namespace}/{pod} on node node-a was OOM-killed '
            f"{times} time(s) in the last 10 minutes: it ran out of its own memory limit. The "
            "Warning Event on the pod names the process killed and its memory: kubectl -n "
            f"{namespace} get events --field-selector involvedObject.name={pod}"
        ),
        "runbook_url": _runbook("OomguardOOMKill"),
    }


def _kill_alert(container: str, namespace: str, pod: str, times: int) -> dict[str, Any]:
    return {
        "exp_labels": {
            "severity": "warning",
            "namespace": namespace,
            "pod": pod,
            "container": container,
            "constraint": "container",
            "node": "node-a",
        },
        "exp_annotations": _kill_annotations(container, namespace, pod, times),
    }


def _agent_labels(node: str, **extra: str) -> dict[str, str]:
    return {**_agent(node), **extra}


KILLS = "oomguard_oom_kills_total"
WARNINGS = "oomguard_oom_warnings_total"
K8S = "kube-state-metrics"


def _unit_tests() -> list[dict[str, Any]]:
    """promtool test groups: a 30 s scrape and rule interval; "_x10" is 10 missing
    samples (5 minutes before the series exists), "1x60" 61 samples of 1."""
    no_pod = {"job": JOB, "node": "node-a", "instance": _agent("node-a")["instance"]}
    kills = {
        "name": "kills: a pod's first kill, a second, old kills, a gap, kills outside pods",
        "interval": "30s",
        "input_series": [
            _series("up", _agent("node-a"), "1x140"),
            # node-b's agent cannot be scraped from 20m to 40m.
            _series("up", _agent("node-b"), "1x40 0x40 1x100"),
            # cart-1's series appears with its first kill at 5m, at 1; a second at 10m.
            _series(
                KILLS, _victim("shop", "cart-1", "app", constraint="container"), "_x10 1x10 2x120"
            ),
            # Killed before the data starts: an old count that does not move.
            _series(KILLS, _victim("shop", "old-0", "app", constraint="container"), "3x140"),
            # Killed long ago on node-b; the series is back after the gap, unchanged.
            _series(
                KILLS,
                _victim("shop", "gap-0", "app", constraint="container", node="node-b"),
                "2x40 _x40 2x100",
            ),
            # Series of kills in no pod exist from the start at 0; a system OOM at 25m.
            _series(KILLS, {**no_pod, "constraint": "system"}, "0x50 1x90"),
            _series(KILLS, {**no_pod, "constraint": "container"}, "0x140"),
        ],
        "alert_rule_test": [
            {"eval_time": "4m", "alertname": "OomguardOOMKill", "exp_alerts": []},
            {
                "eval_time": "6m",
                "alertname": "OomguardOOMKill",
                "exp_alerts": [_kill_alert("app", "shop", "cart-1", 1)],
            },
            {
                "eval_time": "12m",
                "alertname": "OomguardOOMKill",
                "exp_alerts": [_kill_alert("app", "shop", "cart-1", 2)],
            },
            {
                "eval_time": "17m",
                "alertname": "OomguardOOMKill",
                "exp_alerts": [_kill_alert("app", "shop", "cart-1", 1)],
            },
            # 10 minutes after the last kill, resolved.
            {"eval_time": "21m", "alertname": "OomguardOOMKill", "exp_alerts": []},
            # gap-0's series is back after the gap: no new kill.
            {"eval_time": "41m", "alertname": "OomguardOOMKill", "exp_alerts": []},
            {"eval_time": "46m", "alertname": "OomguardOOMKill", "exp_alerts": []},
            {"eval_time": "24m", "alertname": "OomguardSystemOOMKill", "exp_alerts": []},
            {
                "eval_time": "26m",
                "alertname": "OomguardSystemOOMKill",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "warning",
                            "constraint": "system",
                            "node": "node-a",
                        },
                        "exp_annotations": {
                            "summary": "OOM kill outside any pod on node node-a",
                            "description": (
                                "1 process(es) in no pod (a system daemon, or a kill oomguard "
                                "could not attribute to a pod) were OOM-killed on node node-a "
                                "in the last 10 minutes: they ran out of the node's memory (a "
                                "system-wide OOM). The Warning Event on the Node names them: "
                                "kubectl get events -A --field-selector "
                                "involvedObject.kind=Node,involvedObject.name=node-a"
                            ),
                            "runbook_url": _runbook("OomguardSystemOOMKill"),
                        },
                    }
                ],
            },
            {"eval_time": "40m", "alertname": "OomguardSystemOOMKill", "exp_alerts": []},
        ],
    }

    storm = {
        "name": "a kill storm: one alert per container, no Event alert",
        "interval": "30s",
        "input_series": [
            _series("up", _agent("node-a"), "1x70"),
            # batch-7 is killed every 30 s from 5m on; the agent delivers (one Event, its
            # count rising), nothing is refused or dropped.
            _series(
                KILLS, _victim("batch", "batch-7", "worker", constraint="container"), "_x10 1+1x60"
            ),
            _series("oomguard_events_sent_total", _agent("node-a"), "0x10 0+1x60"),
            _series("oomguard_events_failed_total", _agent("node-a"), "0x70"),
            _series("oomguard_events_dropped_total", _agent("node-a"), "0x70"),
            # Elsewhere, the API refused one Event for good, and a full queue dropped 5 kills.
            _series("oomguard_events_failed_total", _agent("node-b"), "0x10 1x60"),
            _series("oomguard_events_dropped_total", _agent("node-c"), "0x10 5x60"),
        ],
        "alert_rule_test": [
            {
                "eval_time": "12m",
                "alertname": "OomguardOOMKill",
                "exp_alerts": [_kill_alert("worker", "batch", "batch-7", 15)],
            },
            {
                "eval_time": "6m",
                "alertname": "OomguardEventsFailing",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "warning", **_agent("node-b")},
                        "exp_annotations": {
                            "summary": "oomguard on node node-b cannot deliver OOM Events",
                            "description": (
                                "The API refused 1 OOM kill Event(s) from the agent "
                                "kube-system/oomguard-b on node node-b for good in the last 15 "
                                "minutes (a 403 or 422): those kills are in the agent's log and "
                                "metrics but not on their pods. Usually RBAC (events create, "
                                "patch) or a namespace being deleted; the agent's log has the "
                                "API's answer: kubectl -n kube-system logs oomguard-b"
                            ),
                            "runbook_url": _runbook("OomguardEventsFailing"),
                        },
                    }
                ],
            },
            {"eval_time": "21m", "alertname": "OomguardEventsFailing", "exp_alerts": []},
            {
                "eval_time": "6m",
                "alertname": "OomguardEventsDropped",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "warning", **_agent("node-c")},
                        "exp_annotations": {
                            "summary": "oomguard on node node-c dropped OOM kills undelivered",
                            "description": (
                                "The agent kube-system/oomguard-c on node node-c discarded 5 "
                                "OOM kill(s) without an Event in the last 15 minutes because its "
                                "queue of Events was full: the API was unreachable for long, or "
                                "kills hit more distinct containers at once than the queue "
                                "holds. Repeated kills of the same container are merged into "
                                "one Event before anything is dropped."
                            ),
                            "runbook_url": _runbook("OomguardEventsDropped"),
                        },
                    }
                ],
            },
            # The storm on node-a never fires either Event alert.
            {"eval_time": "25m", "alertname": "OomguardEventsDropped", "exp_alerts": []},
            {"eval_time": "25m", "alertname": "OomguardEventsFailing", "exp_alerts": []},
        ],
    }

    warnings = {
        "name": "warnings and headroom",
        "interval": "30s",
        "input_series": [
            _series("up", _agent("node-a"), "1x100"),
            _series("up", _agent("node-b"), "1x100"),
            _series(
                WARNINGS,
                _victim("shop", "cart-1", "app", constraint="container", signal="threshold"),
                "_x4 1x60",
            ),
            # A node-allocatable warning: no namespace, pod or container.
            _series(
                WARNINGS,
                {
                    "job": JOB,
                    "constraint": "node-allocatable",
                    "signal": "pressure",
                    **{"node": "node-b", "instance": _agent("node-b")["instance"]},
                },
                "_x4 1x60",
            ),
            # 20 MiB of a 512 MiB limit left (3.9 %), all along; 300 MiB left; a container
            # limited only by its pod's limit (kube-state-metrics has no limit for it).
            _series(
                "oomguard_memory_headroom_bytes", _victim("shop", "cart-1", "app"), "20971520x100"
            ),
            _series(
                "oomguard_memory_headroom_bytes",
                _victim("shop", "cart-1", "proxy"),
                "314572800x100",
            ),
            _series(
                "oomguard_memory_headroom_bytes", _victim("shop", "cart-2", "app"), "1048576x100"
            ),
            _series(
                "kube_pod_container_resource_limits",
                {
                    "job": K8S,
                    "namespace": "shop",
                    "pod": "cart-1",
                    "container": "app",
                    "resource": "memory",
                    "unit": "byte",
                },
                "536870912x100",
            ),
            _series(
                "kube_pod_container_resource_limits",
                {
                    "job": K8S,
                    "namespace": "shop",
                    "pod": "cart-1",
                    "container": "proxy",
                    "resource": "memory",
                    "unit": "byte",
                },
                "536870912x100",
            ),
        ],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "OomguardOOMImminent", "exp_alerts": []},
            {
                "eval_time": "3m",
                "alertname": "OomguardOOMImminent",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "warning",
                            "namespace": "shop",
                            "pod": "cart-1",
                            "container": "app",
                            "constraint": "container",
                            "signal": "threshold",
                            "node": "node-a",
                        },
                        "exp_annotations": {
                            "summary": "shop/cart-1: container app is close to an OOM kill",
                            "description": (
                                'Container "app" of pod shop/cart-1 on node node-a is close to '
                                "its own memory limit: its working set crossed the warning "
                                "threshold. The OOMImminent Event on the pod says the limit, "
                                "the working set and what the kernel is doing; raise the limit "
                                "or find what grows before the OOM killer does: kubectl -n shop "
                                "get events --field-selector "
                                "involvedObject.name=cart-1,reason=OOMImminent"
                            ),
                            "runbook_url": _runbook("OomguardOOMImminent"),
                        },
                    }
                ],
            },
            {"eval_time": "13m", "alertname": "OomguardOOMImminent", "exp_alerts": []},
            {
                "eval_time": "3m",
                "alertname": "OomguardNodeOOMImminent",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "warning",
                            "constraint": "node-allocatable",
                            "signal": "pressure",
                            "node": "node-b",
                        },
                        "exp_annotations": {
                            "summary": "Node node-b is close to OOM-killing pods",
                            "description": (
                                "The pods of node node-b together are close to the memory "
                                "allocatable to all pods of the node (node pressure): it stalls "
                                "on memory pressure. When it runs out, the OOM killer picks a "
                                "victim among all its pods. The OOMImminent Event on the Node "
                                "says how close: kubectl get events -A --field-selector "
                                "involvedObject.kind=Node,involvedObject.name=node-b,"
                                "reason=OOMImminent"
                            ),
                            "runbook_url": _runbook("OomguardNodeOOMImminent"),
                        },
                    }
                ],
            },
            {"eval_time": "29m", "alertname": "OomguardMemoryHeadroomLow", "exp_alerts": []},
            {
                "eval_time": "31m",
                "alertname": "OomguardMemoryHeadroomLow",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "info",
                            "namespace": "shop",
                            "pod": "cart-1",
                            "container": "app",
                            "node": "node-a",
                        },
                        "exp_annotations": {
                            "summary": "shop/cart-1: container app has little memory headroom",
                            "description": (
                                'Container "app" of pod shop/cart-1 on node node-a has had only '
                                "3.9% of its memory limit left between its working set (memory "
                                "the kernel cannot reclaim) and the limit that binds it, for a "
                                "long time. It is one allocation burst away from an OOM kill."
                            ),
                            "runbook_url": _runbook("OomguardMemoryHeadroomLow"),
                        },
                    }
                ],
            },
        ],
    }

    agents = {
        "name": "agents: down, missing from a node, not ready",
        "interval": "30s",
        "input_series": [
            _series("up", _agent("node-a"), "1x60"),
            _series("up", _agent("node-b"), "1x10 0x50"),  # down from 5m
            _series("up", _agent("node-c"), "1x60"),
            # The DaemonSet should run on 4 nodes: node-d has no agent at all.
            _series(
                "kube_daemonset_status_desired_number_scheduled",
                {"job": K8S, "namespace": NAMESPACE, "daemonset": RELEASE},
                "4x60",
            ),
            _series("oomguard_ready", _agent("node-a"), "0x60"),  # never ready
            _series("oomguard_ready", _agent("node-c"), "1x2 0x10 1x50"),  # 5 minutes not
        ],
        "alert_rule_test": [
            {"eval_time": "14m", "alertname": "OomguardAgentDown", "exp_alerts": []},
            {
                "eval_time": "16m",
                "alertname": "OomguardAgentDown",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "critical", **_agent("node-b")},
                        "exp_annotations": {
                            "summary": "oomguard agent down on node node-b",
                            "description": (
                                "Prometheus cannot scrape the oomguard agent "
                                "kube-system/oomguard-b on node node-b (10.0.0.2:9753). While the "
                                "agent is down, OOM kills on that node get no Event and pods' "
                                "oom_score_adj requests are not applied to new processes: "
                                "kubectl -n kube-system describe pod oomguard-b"
                            ),
                            "runbook_url": _runbook("OomguardAgentDown"),
                        },
                    }
                ],
            },
            {"eval_time": "14m", "alertname": "OomguardAgentsMissing", "exp_alerts": []},
            {
                "eval_time": "16m",
                "alertname": "OomguardAgentsMissing",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "warning"},
                        "exp_annotations": {
                            "summary": "oomguard runs on fewer nodes than it should",
                            "description": (
                                "1 node(s) that DaemonSet kube-system/oomguard should run on "
                                "have no oomguard agent that Prometheus scrapes "
                                "(kube-state-metrics' desired count minus the targets of job "
                                "oomguard): OOM kills there go unreported. Look for pods that "
                                "are not scheduled or not running: kubectl -n kube-system get "
                                "pods -o wide -l "
                                "app.kubernetes.io/name=oomguard,app.kubernetes.io/instance=oomguard"
                            ),
                            "runbook_url": _runbook("OomguardAgentsMissing"),
                        },
                    }
                ],
            },
            {"eval_time": "16m", "alertname": "OomguardAgentAbsent", "exp_alerts": []},
            {"eval_time": "9m", "alertname": "OomguardAgentNotReady", "exp_alerts": []},
            {
                "eval_time": "11m",
                "alertname": "OomguardAgentNotReady",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "warning", **_agent("node-a")},
                        "exp_annotations": {
                            "summary": "oomguard agent not ready on node node-a",
                            "description": (
                                "The oomguard agent kube-system/oomguard-a on node node-a is "
                                "running but not ready: its list of the node's pods is not in "
                                "(API unreachable, RBAC) or its cgroups are not watched (a wrong "
                                "agent.cgroupRoot). Its /readyz and its log say why: kubectl -n "
                                "kube-system logs oomguard-a"
                            ),
                            "runbook_url": _runbook("OomguardAgentNotReady"),
                        },
                    }
                ],
            },
        ],
    }

    absent = {
        "name": "no agent scraped at all, without kube-state-metrics",
        "interval": "30s",
        "input_series": [_series("up", {"job": "node-exporter", "instance": "n:9100"}, "1x40")],
        "alert_rule_test": [
            {"eval_time": "14m", "alertname": "OomguardAgentAbsent", "exp_alerts": []},
            {
                "eval_time": "16m",
                "alertname": "OomguardAgentAbsent",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "warning", "job": JOB},
                        "exp_annotations": {
                            "summary": "Prometheus scrapes no oomguard agent",
                            "description": (
                                "Prometheus has no target of job oomguard: the ServiceMonitor "
                                "is missing or not selected by your Prometheus "
                                "(serviceMonitor.enabled, serviceMonitor.labels), or the agents "
                                "run nowhere. OOM kills, warnings and the other oomguard alerts "
                                "cannot be seen."
                            ),
                            "runbook_url": _runbook("OomguardAgentAbsent"),
                        },
                    }
                ],
            },
            # Without kube-state-metrics there is no desired count: never fires.
            {"eval_time": "20m", "alertname": "OomguardAgentsMissing", "exp_alerts": []},
        ],
    }

    gone = {
        "name": "every agent gone, with kube-state-metrics",
        "interval": "30s",
        "input_series": [
            _series(
                "kube_daemonset_status_desired_number_scheduled",
                {"job": K8S, "namespace": NAMESPACE, "daemonset": RELEASE},
                "2x40",
            ),
            # Another release's DaemonSet of the same name elsewhere does not count.
            _series(
                "kube_daemonset_status_desired_number_scheduled",
                {"job": K8S, "namespace": "other", "daemonset": RELEASE},
                "9x40",
            ),
        ],
        "promql_expr_test": [],
        "alert_rule_test": [
            {
                "eval_time": "16m",
                "alertname": "OomguardAgentsMissing",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "warning"},
                        "exp_annotations": {
                            "summary": "oomguard runs on fewer nodes than it should",
                            "description": (
                                "2 node(s) that DaemonSet kube-system/oomguard should run on "
                                "have no oomguard agent that Prometheus scrapes "
                                "(kube-state-metrics' desired count minus the targets of job "
                                "oomguard): OOM kills there go unreported. Look for pods that "
                                "are not scheduled or not running: kubectl -n kube-system get "
                                "pods -o wide -l "
                                "app.kubernetes.io/name=oomguard,app.kubernetes.io/instance=oomguard"
                            ),
                            "runbook_url": _runbook("OomguardAgentsMissing"),
                        },
                    }
                ],
            },
        ],
    }

    steering = {
        "name": "policy rejected; kill mode and score write errors",
        "interval": "30s",
        "input_series": [
            _series("oomguard_policy_valid", _agent("node-a"), "1x60"),
            _series("oomguard_policy_valid", _agent("node-b"), "1x10 0x50"),
            _series("oomguard_policy_valid", _agent("node-c"), "1x10 0x50"),
            # One failed write on node-a (a one-off); failing on every pass on node-b.
            _series(
                "oomguard_kill_mode_changes_total",
                _agent_labels("node-a", result="error"),
                "0x10 1x60",
            ),
            _series(
                "oomguard_kill_mode_changes_total",
                _agent_labels("node-b", result="error"),
                "0x10 0+1x60",
            ),
            _series(
                "oomguard_score_adjustments_total",
                _agent_labels("node-c", result="error"),
                "0x10 0+1x60",
            ),
            _series(
                "oomguard_score_adjustments_total",
                _agent_labels("node-a", result="applied"),
                "0+5x70",
            ),
        ],
        "alert_rule_test": [
            {"eval_time": "9m", "alertname": "OomguardPolicyInvalid", "exp_alerts": []},
            {
                "eval_time": "11m",
                "alertname": "OomguardPolicyInvalid",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "warning", "job": JOB, "namespace": NAMESPACE},
                        "exp_annotations": {
                            "summary": "oomguard rejects its admin policy",
                            "description": (
                                "2 oomguard agent(s) of job oomguard in namespace kube-system "
                                "reject the admin policy file as it is now: the previous policy "
                                "(or the default one) stays in force. The agent log says what is "
                                "wrong: kubectl -n kube-system logs -l "
                                "app.kubernetes.io/name=oomguard | grep -i policy"
                            ),
                            "runbook_url": _runbook("OomguardPolicyInvalid"),
                        },
                    }
                ],
            },
            {"eval_time": "19m", "alertname": "OomguardKillModeWriteErrors", "exp_alerts": []},
            {
                "eval_time": "22m",
                "alertname": "OomguardKillModeWriteErrors",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "warning",
                            **_agent_labels("node-b", result="error"),
                        },
                        "exp_annotations": {
                            "summary": "oomguard cannot write kill modes on node node-b",
                            "description": (
                                "Writes of memory.oom.group keep failing on node node-b: pods' "
                                "oomguard.io/oom-kill requests there are not applied. Most often "
                                "the cgroup mount is read-only (the chart's cgroup.readOnly: "
                                "true; kill modes need false), else EACCES. The agent log names "
                                "the error: kubectl -n kube-system logs oomguard-b"
                            ),
                            "runbook_url": _runbook("OomguardKillModeWriteErrors"),
                        },
                    }
                ],
            },
            {
                "eval_time": "22m",
                "alertname": "OomguardScoreWriteErrors",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "warning",
                            **_agent_labels("node-c", result="error"),
                        },
                        "exp_annotations": {
                            "summary": "oomguard cannot write oom_score_adj on node node-c",
                            "description": (
                                "Writes of /proc/PID/oom_score_adj keep failing on node node-c: "
                                "pods' protection and sacrifice requests there are not applied. "
                                "Check the agent's capabilities (SYS_RESOURCE, DAC_OVERRIDE in "
                                "securityContext.capabilities.add) and its log: kubectl -n "
                                "kube-system logs oomguard-c"
                            ),
                            "runbook_url": _runbook("OomguardScoreWriteErrors"),
                        },
                    }
                ],
            },
        ],
    }
    return [kills, storm, warnings, agents, absent, gone, steering]


def test_alerts_fire_as_documented(promtool: Path, monitoring: Rendered, tmp_path: Path) -> None:
    _write_rules(_rule(monitoring), tmp_path / "rules.yaml")
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "30s",
        "tests": _unit_tests(),
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False, width=1000))
    done = _run_promtool(promtool, "test", "rules", "tests.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_unit_test() -> None:
    tested = {
        case["alertname"]
        for group in _unit_tests()
        for case in group["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == set(ALERTS)


# --------------------------------------------------------------------------- the dashboard


def test_dashboard_config_map_is_found_by_grafanas_sidecar(
    monitoring: Rendered, kubernetes_validate: Any
) -> None:
    config_map = _dashboard_config_map(monitoring)
    metadata = config_map["metadata"]
    assert metadata["namespace"] == "monitoring"
    assert metadata["labels"]["grafana_dashboard"] == "1"
    assert monitoring.daemonset["metadata"]["labels"].items() <= metadata["labels"].items()
    assert metadata["annotations"] == {"grafana_folder": "Kubernetes"}
    assert json.loads(config_map["data"]["oomguard.json"]) == json.loads(DASHBOARD_FILE.read_text())
    kubernetes_validate.validate(config_map, kubernetes_validate.latest_version(), strict=True)


def test_dashboard_label_can_be_another_sidecars(helm3: Helm, tmp_path: Path) -> None:
    values = {
        "grafanaDashboard": {
            "enabled": True,
            "label": "grafana.example.com/dashboard",
            "labelValue": "oomguard",
        }
    }
    config_map = _dashboard_config_map(helm3.template((_values_file(tmp_path, values),)))
    labels = config_map["metadata"]["labels"]
    assert labels["grafana.example.com/dashboard"] == "oomguard"
    assert "grafana_dashboard" not in labels
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert "annotations" not in config_map["metadata"]


def _dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD_FILE.read_text()))


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every variable's label_values query."""
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"])
        assert match, f"variable {variable['name']}: not label_values(selector, label)"
        yield f"variable {variable['name']}", match.group(1)


def test_dashboard_is_grafana_json() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "oomguard"
    assert dashboard["schemaVersion"] >= 39
    ids = [panel["id"] for panel in _panels(dashboard)]
    assert all(isinstance(pid, int) for pid in ids) and len(ids) == len(set(ids)), ids
    for panel in _panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "pod"):
        assert variables[name]["type"] == "query" and variables[name]["multi"]
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"


def _used_variables(text: str) -> set[str]:
    return {a or b for a, b in re.findall(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))", text)}


def test_dashboard_defines_every_variable_it_uses() -> None:
    dashboard = _dashboard()
    defined: list[str] = []
    for variable in dashboard["templating"]["list"]:
        used = _used_variables(json.dumps(variable)) - set(GRAFANA_BUILTINS)
        assert used <= set(defined), f"variable {variable['name']} uses {used - set(defined)}"
        defined.append(variable["name"])
    used = _used_variables(json.dumps(dashboard["panels"])) - set(GRAFANA_BUILTINS)
    assert used <= set(defined), f"undefined variables: {used - set(defined)}"
    assert set(defined) <= used | {
        v for var in dashboard["templating"]["list"] for v in _used_variables(json.dumps(var))
    }, "a variable nothing uses"


# PromQL words that are not metric names.
_KEYWORDS = frozenset(
    {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "atan2"}
)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (its selectors, and __name__ matchers)."""
    names: set[str] = set()
    for alternatives in re.findall(r'__name__\s*=~?\s*"([^"]*)"', expr):
        assert re.fullmatch(r"[\w:]+(\|[\w:]+)*", alternatives), alternatives
        names.update(alternatives.split("|"))
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    for match in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, call = match.groups()
        if not call and word not in _KEYWORDS:
            names.add(word)
    return names


def test_metric_names_finds_what_a_query_reads() -> None:
    expr = (
        'sum by (a, b) (rate(x_total{job=~"$job",c="d(e)"}[5m] offset 1h)) / on (a) '
        'group_left max(y) > 0 or vector(0) unless {__name__=~"p|q:r",f="g"} and 2e3'
    )
    assert metric_names(expr) == {"x_total", "y", "p", "q:r"}


def exposed_metric_names() -> set[str]:
    """What a real agent's registry exposes (sample names: counters with _total)."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


def _rule_exprs(rendered: Rendered) -> Iterable[tuple[str, str]]:
    for name, alert in _alerts(_rule(rendered)).items():
        yield name, alert["expr"]


def test_queries_read_only_metrics_that_exist(monitoring: Rendered) -> None:
    exposed = exposed_metric_names() | PROMETHEUS_METRICS
    dashboard = _dashboard()
    used: set[str] = set()
    for where, expr in _queries(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: reads no metric: {expr}"
        assert names <= exposed, f"{where} reads {names - exposed}, which no agent exposes"
        used |= names
    # Every panel the issue asks for has its metric.
    assert {
        "oomguard_oom_kills_total",
        "oomguard_oom_warnings_total",
        "oomguard_memory_headroom_bytes",
        "up",
        "oomguard_ready",
        "oomguard_events_sent_total",
        "oomguard_events_failed_total",
        "oomguard_events_dropped_total",
        "oomguard_kill_mode_changes_total",
        "oomguard_score_adjustments_total",
    } <= used
    for name, expr in _rule_exprs(monitoring):
        if name == EXTRA_RULE["alert"]:
            continue
        names = metric_names(expr)
        unknown = names - exposed - KUBE_STATE_METRICS
        assert not unknown, f"{name} reads {unknown}, which no agent exposes"


def _concrete(expr: str, values: dict[str, str] | None = None) -> str:
    """A dashboard query with Grafana's variables replaced, as Grafana sends it: the
    builtins by `GRAFANA_BUILTINS` or `values`, the dashboard's by `values` or "x"."""
    chosen = {**GRAFANA_BUILTINS, **(values or {})}
    return re.sub(
        r"\$\{?(\w+)\}?",
        lambda match: chosen.get(match.group(1), "x"),
        expr,
    )


def _panel_expr(panel_id: int) -> str:
    (panel,) = [p for p in _panels(_dashboard()) if p["id"] == panel_id]
    (target,) = panel["targets"]
    return str(target["expr"])


def test_dashboard_counts_a_pods_first_kill(promtool: Path, tmp_path: Path) -> None:
    """The kills table (panel 8) over the alerts' unit-test data, a 10 minute range and
    every namespace and pod: cart-1's first kill counts, old-0's old count does not."""
    chosen = {"__range": "10m", "job": JOB, "namespace": ".*", "pod": ".*"}
    expr = _concrete(_panel_expr(8), chosen)
    (kills,) = [group for group in _unit_tests() if group["name"].startswith("kills")]
    labels = '{constraint="container",container="app",namespace="shop",pod="cart-1"}'
    tests = {
        "evaluation_interval": "30s",
        "tests": [
            {
                "interval": "30s",
                "input_series": kills["input_series"],
                "promql_expr_test": [
                    {"expr": expr, "eval_time": "4m", "exp_samples": []},
                    {
                        "expr": expr,
                        "eval_time": "6m",
                        "exp_samples": [{"labels": labels, "value": 1}],
                    },
                    {
                        "expr": expr,
                        "eval_time": "12m",
                        "exp_samples": [{"labels": labels, "value": 2}],
                    },
                    {"expr": expr, "eval_time": "41m", "exp_samples": []},
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False, width=1000))
    done = _run_promtool(promtool, "test", "rules", "tests.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_queries_parse(promtool: Path, tmp_path: Path) -> None:
    queries = list(_queries(_dashboard()))
    rules = [
        {"record": f"dashboard:query_{index}", "expr": _concrete(expr)}
        for index, (_, expr) in enumerate(queries)
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = _run_promtool(promtool, "check", "rules", str(path), cwd=tmp_path)
    where = "\n".join(f"query_{i}: {w}" for i, (w, _) in enumerate(queries))
    assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{where}"
