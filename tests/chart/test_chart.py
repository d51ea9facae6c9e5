"""The Helm chart: lint, render, validate offline, least privilege, policy, bad values.

Every render test runs over the defaults and each value set in tests/chart/values/.
Objects are validated with kubernetes-validate --strict (unknown fields are errors)
against the oldest Kubernetes the chart supports and the newest the validator knows.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

import oomguard
from oomguard.k8s.rbac import RBAC
from oomguard.steer.admin import AdminPolicy, load_policy
from tests.chart.conftest import (
    CHART,
    NAMESPACE,
    REPO,
    VALUE_SETS,
    Helm,
    Rendered,
    parse_objects,
    values_of,
)

SETS = list(VALUE_SETS)
OLDEST_KUBERNETES = "1.25.0"  # Chart.yaml kubeVersion
# Kinds of CRDs the chart may render; kubernetes-validate has no schema for them, so
# test_service_monitor checks them instead.
CRD_KINDS = frozenset({"ServiceMonitor"})

# `oomguard run`'s flags (a public contract; issue 3).
CONTRACT_FLAGS = frozenset(
    {
        "--node-name",
        "--kubeconfig",
        "--cgroup-root",
        "--state-dir",
        "--metrics-address",
        "--dry-run",
        "--log-format",
        "--policy-file",
        "--event-window-s",
        "--event-update-interval-s",
        "--api-qps",
        "--api-burst",
        "--reconcile-interval-s",
        "--kmsg-path",
    }
)

# What the agent does with the API, and so all the ClusterRole may grant:
# (apiGroup, resource) -> verbs.
EXPECTED_RBAC: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): frozenset({"list", "watch"}),
    ("", "events"): frozenset({"create", "patch"}),
    ("", "nodes"): frozenset({"get"}),
    # Namespace labels for the policy's selectors: granted whatever the policy says, so a
    # policy edit never needs a chart upgrade (the agent reads them only while it has one).
    ("", "namespaces"): frozenset({"list", "watch"}),
}
ADDED_CAPABILITIES = ("SYS_RESOURCE", "DAC_OVERRIDE", "SYSLOG")


def _load_render_script() -> Any:
    spec = importlib.util.spec_from_file_location(
        "render_manifests", REPO / "scripts" / "render_manifests.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _value_args(value_set: str) -> list[str]:
    path = VALUE_SETS[value_set]
    return [] if path is None else ["--values", str(path)]


def _pod_spec(rendered: Rendered) -> dict[str, Any]:
    return dict(rendered.daemonset["spec"]["template"]["spec"])


def _flags(container: Mapping[str, Any]) -> dict[str, str | None]:
    args = list(container["args"])
    assert args[0] == "run", f"the container must run `oomguard run`, args are {args}"
    flags: dict[str, str | None] = {}
    for arg in args[1:]:
        name, _, value = arg.partition("=")
        flags[name] = value if "=" in arg else None
    return flags


# --------------------------------------------------------------------------- lint, render


@pytest.mark.parametrize("value_set", SETS)
def test_helm_lint_strict(helm3: Helm, value_set: str) -> None:
    done = helm3.run("lint", "--strict", str(CHART), *_value_args(value_set))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("value_set", SETS)
def test_every_object_is_valid_kubernetes(
    helm3: Helm, kubernetes_validate: Any, value_set: str
) -> None:
    rendered = helm3.template_set(value_set)
    kinds = {obj["kind"] for obj in rendered.objects}
    assert {"DaemonSet", "ConfigMap", "Service"} <= kinds
    versions = (OLDEST_KUBERNETES, kubernetes_validate.latest_version())
    for obj in rendered.objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in CRD_KINDS:
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(part) for part in error.path)
                pytest.fail(f"{name} is not valid Kubernetes {version}: {where}: {error.message}")


def test_manifest_passes_the_kubernetes_validate_command(kubernetes_validate: Any) -> None:
    """The command a user would run on manifests/, as well as the library calls above."""
    done = subprocess.run(
        [
            *(sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet"),
            *("--kubernetes-version", kubernetes_validate.latest_version()),
            str(REPO / "manifests" / "oomguard.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_validation_is_strict(helm3: Helm, kubernetes_validate: Any) -> None:
    """The validator refuses an unknown field: the test above would catch a template typo."""
    daemonset = json.loads(json.dumps(helm3.template_set("defaults").daemonset))
    daemonset["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilege"] = False
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, kubernetes_validate.latest_version(), strict=True)


@pytest.mark.parametrize("value_set", SETS)
def test_helm4_renders_the_same(helm3: Helm, helm4: Helm, value_set: str) -> None:
    """Helm 4 renders the same objects (it only spaces the documents differently)."""
    three = helm3.template_set(value_set)
    four = helm4.template_set(value_set)
    sources3 = re.findall(r"^# Source: .*$", three.text, re.MULTILINE)
    sources4 = re.findall(r"^# Source: .*$", four.text, re.MULTILINE)
    assert sources3 == sources4
    assert three.objects == four.objects


def test_helm4_lint_strict(helm4: Helm) -> None:
    done = helm4.run("lint", "--strict", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr


def test_manifests_and_schema_are_current(helm3: Helm) -> None:
    script = _load_render_script()
    schema_path = CHART / "values.schema.json"
    assert schema_path.read_text() == script.schema_text(json.loads(schema_path.read_text())), (
        "values.schema.json's policy definitions differ from oomguard.steer.admin.AdminPolicy; "
        "run: python scripts/render_manifests.py"
    )
    manifest = REPO / "manifests" / "oomguard.yaml"
    assert manifest.exists(), "manifests/oomguard.yaml is missing; run scripts/render_manifests.py"
    assert manifest.read_text() == script.render_manifest(helm3.binary), (
        "manifests/oomguard.yaml is stale; run: python scripts/render_manifests.py"
    )
    for obj in parse_objects(manifest.read_text()):
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]


def test_notes_render(helm4: Helm) -> None:
    """NOTES.txt renders only on install; Helm 4's client-side dry run needs no cluster."""
    done = helm4.run(
        "install", "oomguard", str(CHART), "--namespace", NAMESPACE, "--dry-run=client"
    )
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "oomguard.io/protect" in notes
    assert "--field-selector reportingComponent=oomguard" in notes
    assert "cgroup.readOnly=false" in notes


# --------------------------------------------------------------------------- bad values


BAD_VALUES = [
    pytest.param({"tolerationz": []}, "tolerationz", id="typo-top-level"),
    pytest.param({"agent": {"dryrun": True}}, "dryrun", id="typo-nested"),
    pytest.param({"agent": {"eventWindowS": "600"}}, "eventWindowS", id="string-for-integer"),
    pytest.param({"agent": {"logFormat": "yaml"}}, "logFormat", id="not-in-enum"),
    pytest.param({"cgroup": {"readOnly": "false"}}, "readOnly", id="string-for-boolean"),
    pytest.param(
        {"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}},
        "add",
        id="capability-not-needed",
    ),
    pytest.param({"updateStrategy": {"maxUnavailable": 0}}, "maxUnavailable", id="zero-rollout"),
    pytest.param({"state": {"hostPath": "/"}}, "hostPath", id="state-dir-is-root"),
    pytest.param(
        {"policy": {"trusted_namespace": {"names": ["databases"]}}},
        "trusted_namespace",
        id="policy-typo",
    ),
    pytest.param({"policy": {"allow_never_kill": "yes"}}, "allow_never_kill", id="policy-type"),
    pytest.param(
        {"policy": {"qos": {"Burstable": {"lowest": 5000}}}}, "lowest", id="policy-out-of-range"
    ),
    pytest.param(
        {"policy": {"defaults": [{"namespaces": {"names": ["Batch"]}, "request": "protect"}]}},
        "names",
        id="policy-namespace-not-a-dns-label",
    ),
]


@pytest.mark.parametrize("helm_major", [3, 4])
@pytest.mark.parametrize(("values", "key"), BAD_VALUES)
def test_bad_values_are_refused(
    helm3: Helm,
    helm4: Helm,
    tmp_path: Path,
    helm_major: int,
    values: dict[str, Any],
    key: str,
) -> None:
    helm = helm3 if helm_major == 3 else helm4
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    for command in ("template", "lint"):
        args = [command, "oomguard", str(CHART)] if command == "template" else [command]
        if command == "lint":
            args.append(str(CHART))
        done = helm.run(*args, "--values", str(path))
        assert done.returncode != 0, f"helm {command} accepted {values}"
        said = done.stdout + done.stderr
        assert "values don't meet the specifications of the schema" in said, said
        assert key in said, f"the message does not name {key!r}:\n{said}"
        assert "kind:" not in done.stdout, "a refused render printed manifests"


def test_cross_field_policy_rules_are_the_agents(helm3: Helm, tmp_path: Path) -> None:
    """What JSON schema cannot say (a class's bounds against another's) the agent refuses.

    helm accepts it; the agent keeps its last good policy and says why. This pins that
    split, so a reader of values.schema.json knows the schema is not the whole check.
    """
    policy = {"qos": {"Burstable": {"lowest": -998}}}
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"policy": policy}))
    rendered = helm3.template((path,))
    text = rendered.one("ConfigMap")["data"]["policy.yaml"]
    with pytest.raises(ValueError, match="must stay above -997"):
        load_policy(text)


# --------------------------------------------------------------------------- the DaemonSet


@pytest.mark.parametrize("value_set", SETS)
def test_security_context_is_least_privilege(helm3: Helm, value_set: str) -> None:
    rendered = helm3.template_set(value_set)
    pod = _pod_spec(rendered)
    assert pod["hostPID"] is True
    assert not pod.get("hostNetwork") and not pod.get("hostIPC")
    assert "securityContext" not in pod or "privileged" not in pod["securityContext"]
    context = rendered.container["securityContext"]
    kmsg = values_of(value_set).get("kmsg", {})
    if kmsg.get("enabled", True) and kmsg.get("privileged", False):
        # The admin's opt-in for /dev/kmsg; the API forbids allowPrivilegeEscalation
        # false beside privileged, so it must not be rendered.
        assert context["privileged"] is True
        assert "allowPrivilegeEscalation" not in context
    else:
        assert context["privileged"] is False
        assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert context["runAsUser"] == 0 and context["runAsNonRoot"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    added = context["capabilities"].get("add", [])
    assert set(added) <= set(ADDED_CAPABILITIES), added
    if value_set == "defaults":
        assert added == list(ADDED_CAPABILITIES)


@pytest.mark.parametrize("value_set", SETS)
def test_daemonset_runs_the_agent_as_contracted(helm3: Helm, value_set: str) -> None:
    values = values_of(value_set)
    rendered = helm3.template_set(value_set)
    daemonset = rendered.daemonset
    pod = _pod_spec(rendered)
    container = rendered.container
    flags = _flags(container)
    assert set(flags) <= CONTRACT_FLAGS, f"not `oomguard run` flags: {set(flags) - CONTRACT_FLAGS}"
    assert container["env"] == [
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    ]

    # Every node, as node-critical.
    assert pod["priorityClassName"] == "system-node-critical"
    if "tolerations" not in values:
        assert pod["tolerations"] == [{"operator": "Exists"}]
    strategy = daemonset["spec"]["updateStrategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] not in (0, "0%")

    # Volumes: where each is mounted, how, and what the flags say about it.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert set(volumes) == set(mounts)
    assert volumes["cgroup"]["hostPath"] == {"path": "/sys/fs/cgroup", "type": "Directory"}
    assert mounts["cgroup"]["mountPath"] == "/sys/fs/cgroup"
    assert mounts["cgroup"]["readOnly"] is values.get("cgroup", {}).get("readOnly", True)
    if values.get("kmsg", {}).get("enabled", True):
        assert volumes["kmsg"]["hostPath"] == {"path": "/dev/kmsg", "type": "CharDevice"}
        assert mounts["kmsg"] == {"name": "kmsg", "mountPath": "/dev/kmsg", "readOnly": True}
        assert "--kmsg-path" not in flags  # the default: /dev/kmsg, else syslog(2)
    else:
        assert "kmsg" not in volumes
        assert flags["--kmsg-path"] == ""  # no kernel log at all: counters only
    state_host = values.get("state", {}).get("hostPath", "/var/lib/oomguard")
    assert volumes["state"]["hostPath"] == {"path": state_host, "type": "DirectoryOrCreate"}
    assert mounts["state"]["mountPath"] == flags["--state-dir"] == "/var/lib/oomguard"
    assert not mounts["state"].get("readOnly")
    config_map = rendered.one("ConfigMap")
    assert volumes["policy"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert "subPath" not in mounts["policy"], "a subPath mount never sees ConfigMap updates"
    policy_file = flags["--policy-file"]
    assert policy_file == f"{mounts['policy']['mountPath']}/policy.yaml"
    assert set(config_map["data"]) == {"policy.yaml"}
    assert "tmp" in volumes and volumes["tmp"]["emptyDir"]["sizeLimit"]

    # Metrics and probes on the port the agent listens on.
    port = values.get("metrics", {}).get("port", 9753)
    address = flags["--metrics-address"]
    assert address is not None and address.endswith(f":{port}")
    assert container["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    service = rendered.one("Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == daemonset["spec"]["selector"]["matchLabels"]
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()

    # Agent settings passed through.
    agent = values.get("agent", {})
    assert ("--dry-run" in flags) is agent.get("dryRun", False)
    assert flags["--log-format"] == agent.get("logFormat", "json")
    assert flags["--event-window-s"] == str(agent.get("eventWindowS", 600))
    assert flags["--event-update-interval-s"] == str(agent.get("eventUpdateIntervalS", 10))
    assert flags["--api-qps"] == str(agent.get("apiQps", 5))
    assert flags["--api-burst"] == str(agent.get("apiBurst", 25))
    assert flags["--reconcile-interval-s"] == str(agent.get("reconcileIntervalS", 5))
    assert flags.get("--cgroup-root") == (agent.get("cgroupRoot") or None)

    # Sized resources: a memory limit always, so a leak stops at the agent.
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


def test_default_image_is_the_charts_app_version(helm3: Helm) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert chart["appVersion"] == oomguard.__version__ == pyproject["project"]["version"]
    image = helm3.template_set("defaults").container["image"]
    assert image.endswith(f":{chart['appVersion']}")
    image = helm3.template_set("restricted").container["image"]
    assert image == ("registry.example.internal/platform/oomguard@sha256:" + "0123456789abcdef" * 4)


_RUN_CLI = "import sys; from oomguard.cli import main; sys.exit(main())"


def test_rendered_flags_are_accepted_by_the_agent(helm3: Helm) -> None:
    """Each flag the chart passes is one `oomguard run --help` lists."""
    done = subprocess.run(
        [sys.executable, "-c", _RUN_CLI, "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # A CLI that cannot print its help is broken, and the chart would start an agent that
    # exits at once: a failure, never a skip.
    assert done.returncode == 0, (
        f"`oomguard run --help` exited {done.returncode}: {done.stderr.strip()[-2000:]}"
    )
    for value_set in SETS:
        for flag in _flags(helm3.template_set(value_set).container):
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", done.stdout), (
                f"`oomguard run --help` does not list {flag} ({value_set})"
            )


# --------------------------------------------------------------------------- RBAC


def _grants(rules: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], frozenset[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert not rule.get("nonResourceURLs") and not rule.get("resourceNames"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return {key: frozenset(verbs) for key, verbs in grants.items()}


@pytest.mark.parametrize("value_set", SETS)
def test_cluster_role_grants_exactly_what_the_agent_uses(helm3: Helm, value_set: str) -> None:
    rendered = helm3.template_set(value_set)
    assert not rendered.of_kind("Role") and not rendered.of_kind("RoleBinding")
    if not values_of(value_set).get("rbac", {}).get("create", True):
        assert not rendered.of_kind("ClusterRole") and not rendered.of_kind("ClusterRoleBinding")
        return
    role = rendered.one("ClusterRole")
    assert "aggregationRule" not in role
    assert _grants(role["rules"]) == EXPECTED_RBAC
    binding = rendered.one("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    account = _pod_spec(rendered)["serviceAccountName"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    if values_of(value_set).get("serviceAccount", {}).get("create", True):
        assert rendered.one("ServiceAccount")["metadata"]["name"] == account


def test_the_reviewed_list_is_the_agents_own() -> None:
    """EXPECTED_RBAC (reviewed here) is oomguard.k8s.rbac.RBAC, the list of API calls
    the agent makes; its process tests check that each is used and that they suffice."""
    assert RBAC == EXPECTED_RBAC


# --------------------------------------------------------------------------- policy


def _policy_text(rendered: Rendered) -> str:
    return str(rendered.one("ConfigMap")["data"]["policy.yaml"])


@pytest.mark.parametrize("value_set", SETS)
def test_policy_config_map_loads_in_the_agents_model(helm3: Helm, value_set: str) -> None:
    loaded = load_policy(_policy_text(helm3.template_set(value_set)))
    assert loaded == AdminPolicy.model_validate(values_of(value_set).get("policy", {}))


def test_example_policies_say_something(helm3: Helm) -> None:
    """The example value sets exercise the policy, not just the defaults."""
    example = load_policy(_policy_text(helm3.template_set("policy-example")))
    assert example.trusts("databases", {})
    assert example.trusts("payments", {"oomguard.io/trusted": "true", "tier": "critical"})
    assert not example.trusts("payments", {"oomguard.io/trusted": "true"})  # every part holds
    assert not example.trusts("default", {})
    rule = example.default_for("batch", {})
    assert rule is not None and rule.request == "sacrifice"
    restricted = load_policy(_policy_text(helm3.template_set("restricted")))
    assert restricted.allow_never_kill and restricted.qos.guaranteed.lowest == -1000


# --------------------------------------------------------------------------- metrics


def test_service_monitor(helm3: Helm) -> None:
    assert not helm3.template_set("defaults").of_kind("ServiceMonitor")
    rendered = helm3.template_set("policy-example")
    monitor = rendered.one("ServiceMonitor")
    service = rendered.one("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "1m"
    assert service["spec"]["clusterIP"] == "None"


# --------------------------------------------------------------------------- values


def test_every_value_is_commented() -> None:
    """Each leaf of values.yaml has a comment (above or inline) saying why its default."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key = re.compile(r"^(\s*)([A-Za-z][\w.-]*):(.*)$")
    missing = []
    for index, line in enumerate(lines):
        match = key.match(line)
        if not match:
            continue
        indent, name, rest = match.groups()
        following = next((later for later in lines[index + 1 :] if later.strip()), "")
        nested = rest.strip() == "" and (
            len(following) - len(following.lstrip()) > len(indent)
            and not following.lstrip().startswith("-")
        )
        if nested or "#" in rest:
            continue
        above = lines[index - 1].strip() if index else ""
        if not above.startswith("#"):
            missing.append(f"line {index + 1}: {name}")
    assert not missing, "values without a comment saying why: " + ", ".join(missing)


def _loose_objects(node: Any, path: str = "") -> Iterable[str]:
    """Schema objects that would accept keys nobody reads."""
    if isinstance(node, dict):
        if node.get("type") == "object" and "additionalProperties" not in node:
            yield path or "(root)"
        for name, child in node.items():
            yield from _loose_objects(child, f"{path}/{name}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _loose_objects(child, f"{path}/{index}")


def test_values_schema_is_closed() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    # Free-form on purpose: Helm's `global`, and Kubernetes affinity terms (validated
    # as part of the rendered DaemonSet instead).
    allowed = {
        "/properties/global",
        "/properties/affinity/properties/nodeAffinity",
        "/properties/affinity/properties/podAffinity",
        "/properties/affinity/properties/podAntiAffinity",
    }
    assert set(_loose_objects(schema)) <= allowed
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(defaults) == set(schema["properties"]) - {"global"}
