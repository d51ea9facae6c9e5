"""`oomguard run` and a container runc really starts: at the policy's value with no pass.

tests/cluster/test_agent_new_containers.py plays the runtime's part with a Python
process; here runc itself starts the container (`runc run --detach`), from a bundle
shaped as the kubelet asks for one: `linux.cgroupsPath` in the kubelet's cgroupfs
layout (`/kubepods/burstable/pod<UID>/<64-hex id>`, inside the test's scratch tree: see
tests/cluster/runc.py), the kubelet's oom_score_adj in `process.oomScoreAdj`, a
read-only rootfs. runc makes the cgroup, puts its init in, the init writes the value to
itself and execs the entrypoint: the agent must bring it to the policy's value from the
cgroup watch alone. The pass interval is 300 s and the pod's status names the old
container ID, so only the new-container path can do it (a counted pass proves no other
pass ran). A container of an unannotated pod keeps the kubelet's value.

Lane 1 (cgroup v1, root); skipped without runc, unshare or a static busybox, but under
CI (CI=true, where .ci/run installs runc) a missing runc fails. Values are asserted, not
times (`bench/new_container_steer.py --runc` times it).
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oomguard.cgroups.hierarchy import MemoryHierarchy, own_cgroup
from oomguard.cgroups.scratch import MIB, ScratchTree
from oomguard.steer.new_containers import NewContainerSteering
from tests.cluster.apiserver import ApiServer
from tests.cluster.runc import Runc, missing_tools
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
LIMIT = 48 * MIB  # app_pod's memory limit, which the kubelet hands runc


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture
def hierarchy() -> MemoryHierarchy:
    return lane1_hierarchy()


@pytest.fixture
def runc(tree: ScratchTree, tmp_path: Path) -> Iterator[Runc]:
    missing = missing_tools()
    if missing:
        why = f"starting real containers needs {', '.join(missing)}"
        if in_ci() and "runc" in missing:
            pytest.fail(f"{why} (.ci/run installs runc)", pytrace=False)
        pytest.skip(why)
    r = Runc(tree, tmp_path)
    try:
        yield r
    finally:
        r.close()


def restarting_pod(apiserver: ApiServer, tree: ScratchTree, name: str, annotations: Any) -> str:
    """A Running pod whose `app` container is restarting (its status names an old ID with
    no cgroup) and whose sidecar runs; returns the UID."""
    uid, sidecar = str(uuid.uuid4()), secrets.token_hex(32)
    pod = app_pod(uid, secrets.token_hex(32))
    pod["metadata"]["name"] = name
    pod["metadata"]["annotations"] = annotations
    pod["status"]["containerStatuses"][1]["containerID"] = f"containerd://{sidecar}"
    apiserver.apply(pod)
    tree.make(f"kubepods/burstable/pod{uid}/{sidecar}")
    return uid


def runs_sleep(pid: int) -> bool:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip() == "sleep"


def test_a_container_runc_starts_gets_the_policy_value_without_a_pass(
    apiserver: ApiServer, make_agent: Any, tree: ScratchTree, runc: Runc
) -> None:
    apiserver.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    governed = restarting_pod(apiserver, tree, "db-0", {"oomguard.io/sacrifice": "true"})
    plain = restarting_pod(apiserver, tree, "web-0", {})
    running = make_agent(reconcile_interval_s=300)
    passes = PassCounter(running.agent)
    with running as agent:
        wait_for(lambda: agent.ready()[0] and passes.passes == 1)
        started = {}
        for uid in (governed, plain):
            cid = secrets.token_hex(32)  # containerd's IDs are runc's container IDs
            relative = f"kubepods/burstable/pod{uid}/{cid}"
            started[uid] = runc.run(cid, relative, KUBELET_VALUE, LIMIT)
        for container in started.values():
            wait_for(lambda c=container: runs_sleep(c.pid))  # the entrypoint runs
        wait_for(lambda: get_adj(started[governed].pid) == SACRIFICED, 10)
        steering = agent.new_containers
        assert isinstance(steering, NewContainerSteering)
        wait_for(lambda: steering.following == 0)  # every window over: nothing more comes
        counters = dataclasses.replace(steering.counters)
        assert passes.passes == 1  # only the pass at start: the new path did it
        assert get_adj(started[governed].pid) == SACRIFICED
        assert get_adj(started[plain].pid) == KUBELET_VALUE  # runc's write, left alone
        for container in started.values():  # where the kubelet's layout puts it
            assert own_cgroup(tree.hierarchy, container.pid) == container.cgroup
    assert (counters.noticed, counters.followed) == (2, 1)
    assert counters.written >= 1  # runc's init (its stages, if seen before they exec)
    assert (counters.left_to_pass, counters.unknown_pod, counters.dropped) == (0, 0, 0)
    assert (counters.refused, counters.errors) == (0, 0)
