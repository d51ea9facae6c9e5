"""`oomguard run` warns before the kill: an OOMImminent Event on the right pod and
container while the container still lives, then the OOMKilled one (lane 1).

Real cgroups (kubepods-shaped, below our own), a real process growing into its real
limit until the kernel kills it, the agent as `run` wires it, the real `kubernetes`
client over HTTP to the test API server.
"""

from __future__ import annotations

import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from oomguard.cgroups.hierarchy import MemoryHierarchy
from oomguard.cgroups.path import parse_cgroup_path
from oomguard.cgroups.scratch import MIB, ScratchTree
from oomguard.records import Constraint, OomKill, OomWarning
from tests.cluster.apiserver import EVENTS, ApiServer
from tests.cluster.test_agent import NS, app_pod, scrape, wait_for
from tests.system.conftest import lane1_hierarchy

pytestmark = pytest.mark.system

LIMIT_MIB = 256
RATE_MIB_S = 30.0  # early level (75 %) after ~6 s, the limit ~2 s later


@pytest.fixture
def hierarchy() -> MemoryHierarchy:
    return lane1_hierarchy()


def growing_pod(
    apiserver: ApiServer,
    tree: ScratchTree,
    annotations: dict[str, str] | None = None,
    name: str = "cart-7d9f",
) -> tuple[str, str]:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    pod = app_pod(uid, cid)
    pod["metadata"]["name"] = name
    pod["status"]["containerStatuses"][1]["containerID"] = "containerd://" + secrets.token_hex(32)
    pod["spec"]["containers"][0]["resources"]["limits"]["memory"] = f"{LIMIT_MIB}Mi"
    if annotations:
        pod["metadata"]["annotations"] = annotations
    apiserver.apply(pod)
    cgroup = tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=LIMIT_MIB * MIB)
    return uid, cgroup


def by_reason(apiserver: ApiServer, reason: str) -> list[dict[str, Any]]:
    return [e for e in apiserver.objects(EVENTS, NS) if e["reason"] == reason]


def test_growing_container_gets_oom_imminent_before_oom_killed(
    apiserver: ApiServer, make_agent: Any, tree: ScratchTree
) -> None:
    uid, cgroup = growing_pod(apiserver, tree)
    with make_agent() as agent:
        wait_for(lambda: agent.ready()[0])
        port = agent._server.port if agent._server else 0
        grower = tree.start_grower(cgroup, RATE_MIB_S, name="leaky")
        (warning,) = wait_for(lambda: by_reason(apiserver, "OOMImminent"), 60)
        alive_when_warned = grower.poll() is None
        headroom_seen = 'oomguard_memory_headroom_bytes{container="app"' in scrape(port)
        assert grower.wait(timeout=60) == -9
        (kill,) = wait_for(lambda: by_reason(apiserver, "OOMKilled"), 30)
        metrics = wait_for(lambda: "oom_warnings_total{" in (text := scrape(port)) and text)
    assert alive_when_warned, "the warning came after the kill"
    assert warning["type"] == "Warning"
    obj = warning["involvedObject"]
    assert (obj["kind"], obj["name"], obj["uid"]) == ("Pod", "cart-7d9f", uid)
    assert obj["fieldPath"] == "spec.containers{app}"
    assert warning["count"] == 1  # one episode, one warning
    message = warning["message"]
    assert message.startswith('Container "app" is close to an OOM kill: working set'), message
    assert "(256.0 MiB)" in message, message
    assert kill["involvedObject"]["fieldPath"] == "spec.containers{app}"
    assert headroom_seen
    assert 'namespace="shop",pod="cart-7d9f"' in metrics
    assert 'oomguard_oom_warnings_total{constraint="container",container="app"' in metrics


def test_warn_at_off_and_refused_values(
    apiserver: ApiServer, make_agent: Any, tree: ScratchTree
) -> None:
    """`off` silences the pod's warnings (the kill is still reported); a value outside
    the policy (default 50..99 %) is refused once, on the pod, and the default applies."""
    _, quiet = growing_pod(apiserver, tree, {"oomguard.io/warn-at": "off"}, "cart-quiet")
    uid, refused = growing_pod(apiserver, tree, {"oomguard.io/warn-at": "20%"}, "cart-refused")
    with make_agent() as agent:
        wait_for(lambda: agent.ready()[0])
        (said,) = wait_for(lambda: by_reason(apiserver, "OOMWarnAtRefused"), 30)
        quiet_grower = tree.start_grower(quiet, RATE_MIB_S, name="quiet")
        assert quiet_grower.wait(timeout=60) == -9
        wait_for(lambda: by_reason(apiserver, "OOMKilled"), 30)
        refused_grower = tree.start_grower(refused, RATE_MIB_S, name="refused")
        (warning,) = wait_for(lambda: by_reason(apiserver, "OOMImminent"), 60)
        assert refused_grower.wait(timeout=60) == -9
        wait_for(lambda: len(by_reason(apiserver, "OOMKilled")) == 2, 30)
    assert warning["involvedObject"]["uid"] == uid  # the quiet pod got none
    assert said["involvedObject"]["uid"] == uid and said["type"] == "Warning"
    assert "20%" in said["message"] and "50%..99%" in said["message"]
    assert "warns at 90%" in warning["message"]
    assert len(by_reason(apiserver, "OOMWarnAtRefused")) == 1


def test_node_allocatable_warning_goes_on_the_node(
    apiserver: ApiServer, make_agent: Any, tree: ScratchTree
) -> None:
    """A container with no limit of its own, bound by the limit of all pods: the
    warning is about the node-allocatable cgroup, on the Node."""
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    pod = app_pod(uid, cid)
    del pod["spec"]["containers"][0]["resources"]
    apiserver.apply(pod)
    cgroup = tree.make(f"kubepods/burstable/pod{uid}/{cid}")
    tree.set_limit(tree.top / "kubepods", LIMIT_MIB * MIB)
    with make_agent() as agent:
        wait_for(lambda: agent.ready()[0])
        grower = tree.start_grower(cgroup, RATE_MIB_S, name="unbounded")

        def on_node() -> list[dict[str, Any]]:
            return [
                e
                for e in apiserver.objects(EVENTS, "default")
                if e["reason"] == "OOMImminent" and e["involvedObject"]["kind"] == "Node"
            ]

        (warning,) = wait_for(on_node, 60)
        assert grower.wait(timeout=60) == -9
    assert warning["involvedObject"]["name"] == "node-a"
    assert warning["message"].startswith("The node's pods are close to an OOM kill"), warning[
        "message"
    ]
    assert not by_reason(apiserver, "OOMImminent")  # nothing on the pod: no limit of its own


def test_a_kill_that_overtakes_its_warning_gets_the_kill_event_alone(
    apiserver: ApiServer, make_agent: Any, tree: ScratchTree
) -> None:
    """A container that races from the warning level to its limit within the hold
    (WARNING_HOLD_S): nobody could act on the warning, the OOMKilled Event says it all.
    Nor is a warning sent that reaches the agent just after its cgroup's kill (the
    warning thread looked while the victim's memory was not yet freed). A warning no
    kill follows is sent after the hold.

    The records are put on the agent's queue, the boundary the detector and warning
    threads feed (a real kill does not reliably come within milliseconds of a real
    warning); the rest is the agent as `run` wires it, over HTTP."""
    raced_uid, raced_cid = str(uuid.uuid4()), secrets.token_hex(32)
    apiserver.apply(app_pod(raced_uid, raced_cid))
    slow_uid, slow_cid = str(uuid.uuid4()), secrets.token_hex(32)
    slow = app_pod(slow_uid, slow_cid)
    slow["metadata"]["name"] = "slow-1"
    slow["status"]["containerStatuses"][1]["containerID"] = "containerd://" + "c" * 64
    apiserver.apply(slow)
    late_uid, late_cid = str(uuid.uuid4()), secrets.token_hex(32)
    late = app_pod(late_uid, late_cid)
    late["metadata"]["name"] = "late-1"
    late["status"]["containerStatuses"][1]["containerID"] = "containerd://" + "d" * 64
    apiserver.apply(late)
    raced = tree.make(f"kubepods/burstable/pod{raced_uid}/{raced_cid}", limit_bytes=64 * MIB)
    after = tree.make(f"kubepods/burstable/pod{late_uid}/{late_cid}", limit_bytes=64 * MIB)
    leaking = tree.make(f"kubepods/burstable/pod{slow_uid}/{slow_cid}", limit_bytes=64 * MIB)
    with make_agent() as agent:
        wait_for(lambda: agent.ready()[0])
        agent._kills.put(warning_record(raced))
        time.sleep(0.1)  # the kill comes 100 ms later, well inside the hold
        agent._kills.put(kill_record(raced))
        agent._kills.put(kill_record(after))
        agent._kills.put(warning_record(after))  # its look raced the kill
        agent._kills.put(warning_record(leaking))
        wait_for(
            lambda: (
                len(by_reason(apiserver, "OOMKilled")) == 2 and by_reason(apiserver, "OOMImminent")
            )
        )
        time.sleep(0.5)  # past the hold of any warning still held
    (warned,) = by_reason(apiserver, "OOMImminent")
    assert warned["involvedObject"]["uid"] == slow_uid
    killed = by_reason(apiserver, "OOMKilled")
    assert {k["involvedObject"]["uid"] for k in killed} == {raced_uid, late_uid}


def warning_record(cgroup: str) -> OomWarning:
    return OomWarning(
        time=datetime.now(UTC),
        cgroup=cgroup,
        identity=parse_cgroup_path(cgroup),
        constraint=Constraint.CONTAINER,
        signal="threshold",
        limit_bytes=64 * MIB,
        working_set_bytes=60 * MIB,
        usage_bytes=60 * MIB,
        warn_at_percent=90,
    )


def kill_record(cgroup: str) -> OomKill:
    return OomKill(
        time=datetime.now(UTC),
        kernel_time_us=None,
        kmsg_seq=None,
        constraint=Constraint.CONTAINER,
        cgroup=cgroup,
        oom_cgroup=cgroup,
        identity=parse_cgroup_path(cgroup),
        pid=4242,
        command="racer",
        uid=0,
        rss_bytes=64 * MIB,
        anon_rss_bytes=64 * MIB,
        file_rss_bytes=0,
        shmem_rss_bytes=0,
        oom_score_adj=0,
        memory_limit_bytes=64 * MIB,
        memory_usage_bytes=64 * MIB,
        source="kmsg",
    )
