"""`oomguard run`: a new container of a governed pod gets the policy's value at once.

A container that (re)starts gets a new cgroup; its first process is given the kubelet's
value by the runtime (after joining the cgroup, as runc's `runc init` does) and then
execs the entrypoint. The agent must bring it to the policy's value without waiting for
a reconcile pass: the pass interval here is 300 s and the pods' statuses never name the
new container IDs, so only the new-container path can do it (a counted pass proves no
other pass ran). Values are asserted, not times (bench/new_container_steer.py times it).

Real cgroups shaped like the kubelet's and real processes on lane 1 (cgroup v1, root),
the real client over real HTTP to the test API server; the agent runs in this process.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from oomguard.cgroups.hierarchy import MemoryHierarchy
from oomguard.cgroups.scratch import ScratchTree
from oomguard.steer.new_containers import NewContainerSteering
from tests.cluster.apiserver import ApiServer
from tests.cluster.test_agent import (
    KUBELET_VALUE,
    NODE,
    PassCounter,
    app_pod,
    get_adj,
    wait_for,
)
from tests.system.conftest import lane1_hierarchy

pytestmark = pytest.mark.system

SACRIFICED = 1000  # what oomguard.io/sacrifice gives app_pod's containers (kubelet: 999)

# A container's first process the way runc starts it: in the cgroup first (here it
# joins by itself), then the runtime's write of the kubelet's value to itself, a moment
# as `runc init` waiting for `runc start`, then the entrypoint.
FIRST_PROCESS = r"""
import os, sys, time
procs, value = sys.argv[1], sys.argv[2]
with open(procs, "w") as f:
    f.write(str(os.getpid()))
time.sleep(0.02)
with open("/proc/self/oom_score_adj", "w") as f:
    f.write(value)
time.sleep(0.02)
os.execvp("sleep", ["sleep", "600"])
"""


@pytest.fixture
def hierarchy() -> MemoryHierarchy:
    return lane1_hierarchy()


class Node:
    """Pods in the test API server and their cgroups in the scratch tree."""

    def __init__(self, apiserver: ApiServer, tree: ScratchTree) -> None:
        self.apiserver = apiserver
        self.tree = tree
        self.procs: list[subprocess.Popen[bytes]] = []

    def pod(self, name: str, annotations: dict[str, str], *, sidecar_live: bool = False) -> str:
        """A Running pod whose `app` container is about to restart: its status names an
        old container ID with no cgroup. Returns the pod UID."""
        uid = str(uuid.uuid4())
        pod = app_pod(uid, secrets.token_hex(32))
        pod["metadata"]["name"] = name
        pod["metadata"]["annotations"] = annotations
        sidecar = secrets.token_hex(32)
        pod["status"]["containerStatuses"][1]["containerID"] = f"containerd://{sidecar}"
        self.apiserver.apply(pod)
        self.tree.make(f"kubepods/burstable/pod{uid}")
        if sidecar_live:
            self.tree.make(f"kubepods/burstable/pod{uid}/{sidecar}")
        return uid

    def start_container(self, uid: str) -> subprocess.Popen[bytes]:
        """A new container cgroup in the pod, and its first process."""
        cgroup = self.tree.make(f"kubepods/burstable/pod{uid}/{secrets.token_hex(32)}")
        procs = self.tree.hierarchy.fs_path(cgroup) / "cgroup.procs"
        proc = subprocess.Popen(
            [sys.executable, "-c", FIRST_PROCESS, str(procs), str(KUBELET_VALUE)]
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def node(apiserver: ApiServer, tree: ScratchTree) -> Iterator[Node]:
    n = Node(apiserver, tree)
    try:
        yield n
    finally:
        n.close()


def runs_sleep(pid: int) -> bool:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip() == "sleep"


def test_a_new_container_of_a_governed_pod_gets_the_policy_value_without_a_pass(
    apiserver: ApiServer, make_agent: Any, node: Node
) -> None:
    apiserver.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    # Left alone: no annotation; and one whose candidates (app restarting, sidecar with
    # no cgroup either) want different values: the pass decides once it knows the name.
    plain = node.pod("plain-0", {})
    ambiguous = node.pod("ambiguous-0", {"oomguard.io/sacrifice.app": "true"})
    # Steered: the whole pod asks; and one where only app can be the new container (the
    # sidecar's cgroup is live), so app's own annotation decides.
    governed = node.pod("governed-0", {"oomguard.io/sacrifice": "true"})
    only_app = node.pod("only-app-0", {"oomguard.io/sacrifice.app": "true"}, sidecar_live=True)
    running = make_agent(reconcile_interval_s=300)
    passes = PassCounter(running.agent)
    with running as agent:
        wait_for(lambda: agent.ready()[0] and passes.passes == 1)
        started = {uid: node.start_container(uid) for uid in (plain, ambiguous, governed, only_app)}
        for uid in (governed, only_app):
            wait_for(lambda uid=uid: runs_sleep(started[uid].pid))
            wait_for(lambda uid=uid: get_adj(started[uid].pid) == SACRIFICED, timeout_s=10)
        for uid in (plain, ambiguous):  # their notices came first: decided by now
            wait_for(lambda uid=uid: runs_sleep(started[uid].pid))
        steering = agent.new_containers
        assert isinstance(steering, NewContainerSteering)
        wait_for(lambda: steering.following == 0)  # every window over: nothing more comes
        counters = steering.counters
        assert passes.passes == 1  # only the pass at start: the new path did it
    assert get_adj(started[plain].pid) == KUBELET_VALUE
    assert get_adj(started[ambiguous].pid) == KUBELET_VALUE
    assert counters.noticed == 4
    assert counters.followed == 2
    assert counters.left_to_pass == 1
    assert counters.written == 2
