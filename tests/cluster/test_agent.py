"""`oomguard run` end to end: a real OOM kill (lane 1) to an Event on the right pod.

Real cgroups and a real kill on the host's cgroup v1, the real `kubernetes` client over
real HTTP against the test API server; the agent runs in this process so the test can
stop and restart it on the same state directory.
"""

from __future__ import annotations

import secrets
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from oomguard.agent import Agent
from oomguard.cgroups.hierarchy import MemoryHierarchy
from oomguard.cgroups.scratch import MIB, ScratchTree
from tests.cluster.apiserver import EVENTS, ApiServer
from tests.system.conftest import lane1_hierarchy

pytestmark = pytest.mark.system

NODE = "node-a"
NS = "shop"


def app_pod(uid: str, cid: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "cart-7d9f", "namespace": NS, "uid": uid},
        "spec": {
            "nodeName": NODE,
            "containers": [
                {"name": "app", "image": "cart", "resources": {"limits": {"memory": "48Mi"}}},
                {"name": "sidecar", "image": "proxy"},
            ],
        },
        "status": {
            "phase": "Running",
            "qosClass": "Burstable",
            "containerStatuses": [
                {"name": "app", "containerID": f"containerd://{cid}", "state": {"running": {}}},
                {
                    "name": "sidecar",
                    "containerID": "containerd://" + "e" * 64,
                    "state": {"running": {}},
                },
            ],
        },
    }


class RunningAgent:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.thread = threading.Thread(target=agent.run, daemon=True)

    def __enter__(self) -> Agent:
        self.agent.start()
        self.thread.start()
        return self.agent

    def __exit__(self, *exc: object) -> None:
        self.agent.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()


@pytest.fixture
def hierarchy() -> MemoryHierarchy:
    return lane1_hierarchy()


class PassCounter:
    """Counts the agent's reconcile passes as they end (its Events are posted by then).

    "Several more passes changed nothing" needs those passes to have happened: a pause
    proves nothing on a loaded machine, a count of finished passes does."""

    def __init__(self, agent: Agent) -> None:
        self.passes = 0
        inner = agent.reconciler.pass_once

        def counted(pods: Any) -> Any:
            try:
                return inner(pods)
            finally:
                self.passes += 1

        agent.reconciler.pass_once = counted  # type: ignore[method-assign]

    def wait_for_more(self, passes: int = 3) -> None:
        target = self.passes + passes
        wait_for(lambda: self.passes >= target)


def scrape(port: int) -> str:
    """The agent's /metrics page."""
    text: str = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    return text


def wait_for(predicate: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_real_kill_becomes_an_event_on_the_pod_and_a_restart_resends_nothing(
    apiserver: ApiServer, make_agent: Any, tree: ScratchTree
) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    apiserver.apply(app_pod(uid, cid))
    container = tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=48 * MIB)
    # A second pod, for a later kill after the restart (see below).
    marker_uid, marker_cid = str(uuid.uuid4()), secrets.token_hex(32)
    marker = app_pod(marker_uid, marker_cid)
    marker["metadata"]["name"] = "marker-1"
    marker["status"]["containerStatuses"][1]["containerID"] = "containerd://" + "a" * 64
    apiserver.apply(marker)
    marker_cg = tree.make(f"kubepods/burstable/pod{marker_uid}/{marker_cid}", limit_bytes=48 * MIB)
    with make_agent() as agent:
        wait_for(lambda: agent.ready()[0])
        hog = tree.start_hog(container, "cart-worker")
        assert hog.wait(timeout=30) == -9
        (event,) = wait_for(lambda: apiserver.objects(EVENTS, NS))
        port = agent._server.port if agent._server else 0

        metrics = wait_for(
            lambda: "oomguard_events_sent_total 1.0" in (text := scrape(port)) and text, 10
        )
    assert event["type"] == "Warning"
    assert event["reason"] == "OOMKilled"
    assert event["count"] == 1
    assert event["reportingComponent"] == "oomguard"
    assert event["reportingInstance"] == NODE
    assert event["source"] == {"component": "oomguard", "host": NODE}
    obj = event["involvedObject"]
    assert (obj["kind"], obj["namespace"], obj["name"], obj["uid"]) == ("Pod", NS, "cart-7d9f", uid)
    assert obj["fieldPath"] == "spec.containers{app}"
    assert "cart-worker" in event["message"] and str(hog.pid) in event["message"]
    assert (
        'oomguard_oom_kills_total{constraint="container",container="app",'
        'namespace="shop",pod="cart-7d9f"} 1.0'
    ) in metrics

    # A restart on the same state directory reads the kill back from kmsg and must not
    # report it again. Checked once it has gone past it: a later kill, whose kernel
    # report comes after the replayed one, has its Event.
    with make_agent() as again:
        wait_for(lambda: again.ready()[0])
        assert tree.start_hog(marker_cg, "marker").wait(timeout=30) == -9

        def on_pod(pod_uid: str) -> list[dict[str, Any]]:
            return [
                e for e in apiserver.objects(EVENTS, NS) if e["involvedObject"]["uid"] == pod_uid
            ]

        wait_for(lambda: on_pod(marker_uid))
    assert len(apiserver.objects(EVENTS, NS)) == 2
    (after,) = on_pod(uid)
    assert after["count"] == 1 and after["metadata"] == event["metadata"]  # not touched


def test_annotations_adjust_processes_and_say_so_in_events(
    apiserver: ApiServer, make_agent: Any, tree: ScratchTree
) -> None:
    sacrificed = app_pod(str(uuid.uuid4()), secrets.token_hex(32))
    sacrificed["metadata"]["annotations"] = {"oomguard.io/sacrifice": "true"}
    invalid = app_pod(str(uuid.uuid4()), secrets.token_hex(32))
    invalid["metadata"]["name"] = "typo-1"
    invalid["status"]["containerStatuses"][1]["containerID"] = "containerd://" + "f" * 64
    invalid["metadata"]["annotations"] = {"oomguard.io/oom-score-adj": "+5"}
    procs = {}
    for pod in (sacrificed, invalid):
        apiserver.apply(pod)
        uid = pod["metadata"]["uid"]
        cid = pod["status"]["containerStatuses"][0]["containerID"].split("//")[1]
        cg = tree.make(f"kubepods/burstable/pod{uid}/{cid}")
        procs[pod["metadata"]["name"]] = tree.start_sleeper(cg, "worker")

    def adj(name: str) -> int:
        with open(f"/proc/{procs[name].pid}/oom_score_adj") as f:
            return int(f.read())

    def reasons() -> set[tuple[str, str, str]]:
        return {
            (e["involvedObject"]["name"], e["type"], e["reason"])
            for e in apiserver.objects(EVENTS, NS)
        }

    with make_agent(reconcile_interval_s=0.2) as agent:
        passes = PassCounter(agent)
        wait_for(lambda: agent.ready()[0])
        wait_for(lambda: adj("cart-7d9f") == 1000)
        wait_for(lambda: ("typo-1", "Warning", "OOMScoreAdjInvalid") in reasons())
        wait_for(lambda: ("cart-7d9f", "Normal", "OOMScoreAdjApplied") in reasons())
        passes.wait_for_more(3)  # several more passes: no repeated Events, nothing else
        assert adj("typo-1") == 0
        events = apiserver.objects(EVENTS, NS)
    assert len(events) == 2, [(e["reason"], e["message"]) for e in events]
    warning = next(e for e in events if e["type"] == "Warning")
    assert "+5" in warning["message"]
    assert apiserver.requests(resource="namespaces") == []  # no selector: never asked


def test_kill_of_an_unknown_container_is_reported_on_the_node_with_its_uid(
    apiserver: ApiServer, make_agent: Any, tree: ScratchTree
) -> None:
    """No pod on this node runs the container (say, started by hand with crictl): the
    kill goes on the Node, tied to the Node's uid (read with `nodes get`)."""
    node = apiserver.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    container = tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=48 * MIB)
    with make_agent(pod_wait_s=0.5) as agent:
        wait_for(lambda: agent.ready()[0])
        hog = tree.start_hog(container, "stray")
        assert hog.wait(timeout=30) == -9
        (event,) = wait_for(lambda: apiserver.objects(EVENTS, "default"))
    obj = event["involvedObject"]
    assert (obj["kind"], obj["name"], obj["uid"]) == ("Node", NODE, node["metadata"]["uid"])
    assert event["reason"] == "OOMKilled"
    assert f"container {cid[:12]} is not in this node's pods" in event["message"]
    assert '"stray"' in event["message"] and str(hog.pid) in event["message"]


SELECTOR_POLICY = """\
trusted_namespaces:
  selector:
    matchLabels: {oomguard.io/trusted: "true"}
"""
KUBELET_VALUE = 999  # what the kubelet gives app_pod's containers (no memory request)
PROTECTED = 3  # the default policy's protect value for Burstable pods


def set_adj(pid: int, value: int) -> None:
    with open(f"/proc/{pid}/oom_score_adj", "w") as f:
        f.write(str(value))


def get_adj(pid: int) -> int:
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())


def test_namespaces_trusted_by_label_selector_may_ask_for_protection(
    apiserver: ApiServer, make_agent: Any, tree: ScratchTree, tmp_path: Path
) -> None:
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(SELECTOR_POLICY)
    for name, labels in (("db", {"oomguard.io/trusted": "true"}), (NS, {"team": "shop"})):
        apiserver.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        )
    pids = {}
    for namespace, sidecar_id in (("db", "d" * 64), (NS, "f" * 64)):
        pod = app_pod(str(uuid.uuid4()), secrets.token_hex(32))
        pod["metadata"]["namespace"] = namespace
        pod["metadata"]["annotations"] = {"oomguard.io/protect": "true"}
        pod["status"]["containerStatuses"][1]["containerID"] = "containerd://" + sidecar_id
        apiserver.apply(pod)
        uid = pod["metadata"]["uid"]
        cid = pod["status"]["containerStatuses"][0]["containerID"].split("//")[1]
        proc = tree.start_sleeper(tree.make(f"kubepods/burstable/pod{uid}/{cid}"), "worker")
        set_adj(proc.pid, KUBELET_VALUE)  # as the kubelet would have left it
        pids[namespace] = proc.pid

    def reasons(namespace: str) -> dict[str, str]:
        return {e["reason"]: e["message"] for e in apiserver.objects(EVENTS, namespace)}

    with make_agent(reconcile_interval_s=0.2, policy_file=policy_file) as agent:
        passes = PassCounter(agent)
        wait_for(lambda: agent.ready()[0])
        wait_for(lambda: "OOMScoreAdjRefused" in reasons(NS))
        # Lowering to 3 needs no CAP_SYS_RESOURCE here (3 is above the process's floor,
        # 0): the selector-trusted pod is protected, whatever the agent's capabilities.
        wait_for(lambda: get_adj(pids["db"]) == PROTECTED)
        wait_for(lambda: "OOMScoreAdjApplied" in reasons("db"))
        passes.wait_for_more(3)  # several more passes: labels come from the cache
        assert get_adj(pids[NS]) == KUBELET_VALUE  # refused: the kubelet's value stays
        assert get_adj(pids["db"]) == PROTECTED
    assert "trust namespace shop" in reasons(NS)["OOMScoreAdjRefused"]
    assert "OOMScoreAdjRefused" not in reasons("db")
    assert "OOMScoreAdjApplied" not in reasons(NS)
    # One list, then one watch (server-side timeout 5 minutes): nothing per namespace,
    # per pod or per pass.
    assert [r.verb for r in apiserver.requests(resource="namespaces")] == ["list", "watch"]
