"""`oomguard run` given a hostile admin policy file (issue 14): it keeps running. And a
kill mode request where the node cannot honour it (cgroup v1): said once on the pod.

A ConfigMap edit the agent cannot read must not stop it (before: a nested list raised
RecursionError out of the reconcile pass and the agent exited, and crash-looped with
the same ConfigMap). What the operator should see instead: the pods keep what the last
good policy gave them, one OOMGuardPolicyInvalid Warning on the Node saying why, and
`oomguard_policy_valid` at 0 until the file is fixed.

Real cgroups and processes on lane 1, the real client over real HTTP to the test API
server; the agent runs in this process.
"""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path
from typing import Any

import pytest

from oomguard.agent import Agent
from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.cgroups.scratch import ScratchTree
from oomguard.k8s.client import KubeApi
from oomguard.settings import load_settings
from oomguard.steer.kill_plan import UNSUPPORTED_MESSAGE
from tests.cluster.apiserver import EVENTS, ApiServer
from tests.cluster.test_agent import (
    KUBELET_VALUE,
    NODE,
    PROTECTED,
    PassCounter,
    RunningAgent,
    app_pod,
    get_adj,
    set_adj,
    wait_for,
)
from tests.system.conftest import lane1_hierarchy

pytestmark = pytest.mark.system

TRUST_DB = "trusted_namespaces: {names: [db]}\n"
NESTED = "[" * 100_000 + "]" * 100_000  # 200 kB, under the 1 MiB cap


@pytest.fixture
def hierarchy() -> MemoryHierarchy:
    return lane1_hierarchy()


def replace(path: Path, text: str) -> None:
    """Change the file all at once, as the kubelet's ConfigMap update does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_an_unreadable_policy_keeps_the_last_good_one_and_says_so_once(
    apiserver: ApiServer, kubeconfig: Path, tree: ScratchTree, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(TRUST_DB)
    apiserver.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    pod = app_pod(str(uuid.uuid4()), secrets.token_hex(32))
    pod["metadata"]["namespace"] = "db"
    pod["metadata"]["annotations"] = {"oomguard.io/protect": "true"}
    apiserver.apply(pod)
    uid = pod["metadata"]["uid"]
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("//")[1]
    proc = tree.start_sleeper(tree.make(f"kubepods/burstable/pod{uid}/{cid}"), "db")
    set_adj(proc.pid, KUBELET_VALUE)
    settings = load_settings(
        node_name=NODE,
        kubeconfig=str(kubeconfig),
        cgroup_root=str(tree.top),
        state_dir=tmp_path / "state",
        metrics_address="127.0.0.1:0",
        reconcile_interval_s=0.2,
        policy_file=policy_file,
    )
    agent = Agent(settings, tree.hierarchy, KubeApi.from_kubeconfig(kubeconfig))

    def valid() -> float | None:
        return agent.metrics.registry.get_sample_value("oomguard_policy_valid")

    def invalid_events() -> list[dict[str, Any]]:
        events = apiserver.objects(EVENTS, "default")
        return [e for e in events if e["reason"] == "OOMGuardPolicyInvalid"]

    with RunningAgent(agent) as running:
        passes = PassCounter(running)
        wait_for(lambda: get_adj(proc.pid) == PROTECTED)  # the good policy trusts db
        replace(policy_file, NESTED)
        (event,) = wait_for(invalid_events)
        passes.wait_for_more(5)  # the loop goes on, and says it only once
        assert len(invalid_events()) == 1
        assert valid() == 0
        assert get_adj(proc.pid) == PROTECTED  # the last good policy is still in force
        assert running.alive()[0]

        replace(policy_file, TRUST_DB + "# fixed\n")
        wait_for(lambda: valid() == 1)
        assert running.policy.last_error is None

    assert event["type"] == "Warning"
    assert event["involvedObject"]["kind"] == "Node"
    message = event["message"]
    assert "nested more than 32 levels deep" in message
    assert "the previous policy stays in force" in message


def test_a_kill_mode_on_cgroup_v1_is_an_unsupported_warning_on_the_pod(
    apiserver: ApiServer, make_agent: Any, tree: ScratchTree
) -> None:
    """End to end on this host's cgroup v1 (lane 2 has the v2 path, the file written):
    the annotation, a real pass over a real container cgroup, one Warning on the pod."""
    if tree.hierarchy.version is not CgroupVersion.V1:
        pytest.skip("the cgroup v1 case; tests/vm/test_reconciler_v2.py has v2")
    apiserver.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    pod = app_pod(str(uuid.uuid4()), secrets.token_hex(32))
    pod["metadata"]["annotations"] = {"oomguard.io/oom-kill.app": "process"}
    apiserver.apply(pod)
    uid, namespace = pod["metadata"]["uid"], pod["metadata"]["namespace"]
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("//")[1]
    container = tree.make(f"kubepods/burstable/pod{uid}/{cid}")
    tree.start_sleeper(container, "app")
    agent = make_agent(reconcile_interval_s=0.2)

    def kill_mode_events() -> list[dict[str, Any]]:
        return [e for e in apiserver.objects(EVENTS, namespace) if "KillMode" in e["reason"]]

    with agent as running:
        passes = PassCounter(running)
        (event,) = wait_for(kill_mode_events)
        passes.wait_for_more(5)
        assert len(kill_mode_events()) == 1  # once per pod
        unsupported = running.metrics.registry.get_sample_value(
            "oomguard_kill_mode_changes_total", {"result": "unsupported"}
        )
    assert unsupported == 1
    assert (event["type"], event["reason"]) == ("Warning", "OOMKillModeUnsupported")
    assert event["message"] == UNSUPPORTED_MESSAGE
    obj = event["involvedObject"]
    assert (obj["kind"], obj["name"], obj["uid"]) == ("Pod", pod["metadata"]["name"], uid)
    assert not list(tree.top.rglob("memory.oom.group"))
