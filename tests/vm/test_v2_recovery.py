"""Lane 2: kills while the agent was down, found from cgroup v2's counters alone.

Without the kernel log, which limit a recovered kill hit is told by each cgroup's own
`oom` count (memory.events.local), kept beside the `oom_kill` counts in the snapshot: the
cgroup whose count rose while the agent was down is the one that hit its limit.
"""

from __future__ import annotations

import secrets
import uuid

import pytest

from oomguard.cgroups.scratch import ScratchTree
from oomguard.records import Constraint
from tests.system.test_recovery import LIMIT, running

pytestmark = pytest.mark.vm

WAIT_S = 120.0  # the VM is emulated: generous, never asserted as a duration


def oom_kill(tree: ScratchTree, cgroup: str) -> None:
    hog = tree.start_hog(cgroup, "memhog")
    assert hog.wait(timeout=WAIT_S) == -9


def _pod(uid: str) -> str:
    u = uid.replace("-", "_")
    return f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"


def test_a_container_limit_kill_while_down_is_the_containers(tree: ScratchTree) -> None:
    uid = str(uuid.uuid4())
    cg = tree.make(f"{_pod(uid)}/cri-containerd-{secrets.token_hex(32)}.scope", limit_bytes=LIMIT)
    with running(tree, kmsg=False) as first:
        first.turn(1.0)
    assert first.counters == {} and first.limit_hits == {}  # v2: `oom` counts are kept
    oom_kill(tree, cg)
    with running(
        tree, kmsg=False, counter_baseline=first.counters, limit_hits_baseline=first.limit_hits
    ) as second:
        (kill,) = second.wait_for(1, timeout_s=WAIT_S)
        assert (kill.cgroup, kill.source, kill.pid) == (cg, "counters", None)
        assert kill.constraint is Constraint.CONTAINER
        assert second.turn(1.0) == [kill]


def test_a_pod_limit_kill_while_down_is_the_pods(tree: ScratchTree) -> None:
    uid = str(uuid.uuid4())
    pod = tree.make(_pod(uid), limit_bytes=LIMIT)
    tree.enable_children(pod)
    cg = tree.make(f"{_pod(uid)}/cri-containerd-{secrets.token_hex(32)}.scope")  # no limit
    with running(tree, kmsg=False) as first:
        first.turn(1.0)
    oom_kill(tree, cg)
    with running(
        tree, kmsg=False, counter_baseline=first.counters, limit_hits_baseline=first.limit_hits
    ) as second:
        (kill,) = second.wait_for(1, timeout_s=WAIT_S)
        assert (kill.cgroup, kill.source) == (cg, "counters")
        assert kill.identity.pod_path == pod
        assert kill.constraint is Constraint.POD
