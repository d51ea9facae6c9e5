"""Lane 2: real OOM kills on cgroup v2 (inotify on memory.events, hierarchical counters).

The VM is emulated (10-30x slower than the host), so waits are generous; nothing
here asserts a duration.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable

import pytest

from oomguard.cgroups.scratch import MIB, ScratchTree
from oomguard.records import Constraint
from tests.conftest import Collector

pytestmark = pytest.mark.vm

LIMIT = 32 * MIB
WAIT_S = 120.0
# No periodic rescan during a test: whatever is found was pushed by inotify.
PUSH_ONLY = {"resync_interval_s": 3600.0}


def _pod(uid: str) -> str:
    u = uid.replace("-", "_")
    return f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"


@pytest.mark.parametrize("with_kmsg", [True, False], ids=["kmsg", "counters-only"])
def test_inotify_detects_a_container_limit_kill(
    tree: ScratchTree, watch: Callable[..., Collector], with_kmsg: bool
) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    kwargs: dict[str, object] = dict(PUSH_ONLY)
    if not with_kmsg:
        kwargs["kmsg_path"] = None
    col = watch(**kwargs)
    pod = tree.make(_pod(uid))
    tree.enable_children(pod)
    container = tree.make(f"{_pod(uid)}/cri-containerd-{cid}.scope", limit_bytes=LIMIT)
    hog = tree.start_hog(container, "memhog")
    kills = col.wait_for(1, WAIT_S)
    assert hog.wait(timeout=WAIT_S) == -9
    assert len(kills) == 1, kills
    k = kills[0]
    assert k.cgroup == container
    assert k.identity.container_id == cid and k.identity.pod_uid == uid
    assert k.identity.runtime == "containerd" and k.identity.qos == "burstable"
    assert k.constraint is Constraint.CONTAINER
    if with_kmsg:
        assert (k.pid, k.command, k.source) == (hog.pid, "memhog", "kmsg")
    else:
        assert (k.pid, k.source) == (None, "counters")
    # Ancestors count the kill too on v2; it must stay one record.
    assert len(col.settle(5.0)) == 1


@pytest.mark.parametrize("with_kmsg", [True, False], ids=["kmsg", "counters-only"])
def test_pod_limit_kill_is_one_record_classified_pod(
    tree: ScratchTree, watch: Callable[..., Collector], with_kmsg: bool
) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    pod = tree.make(_pod(uid), limit_bytes=LIMIT)
    tree.enable_children(pod)
    container = tree.make(f"{_pod(uid)}/cri-containerd-{cid}.scope")
    kwargs: dict[str, object] = dict(PUSH_ONLY)
    if not with_kmsg:
        kwargs["kmsg_path"] = None
    col = watch(**kwargs)
    hog = tree.start_hog(container, "memhog")
    col.wait_for(1, WAIT_S)
    assert hog.wait(timeout=WAIT_S) == -9
    kills = col.settle(5.0)
    assert len(kills) == 1, kills
    assert kills[0].cgroup == container
    assert kills[0].constraint is Constraint.POD
    if with_kmsg:
        assert kills[0].oom_cgroup == pod


def test_oom_group_kill_gives_one_record_per_process(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    pod = tree.make(_pod(uid))
    tree.enable_children(pod)
    container = tree.make(f"{_pod(uid)}/cri-containerd-{cid}.scope", limit_bytes=LIMIT)
    (tree.hierarchy.fs_path(container) / "memory.oom.group").write_text("1")
    sleepers = [tree.start_sleeper(container, f"helper{i}") for i in range(2)]
    col = watch(**PUSH_ONLY)
    hog = tree.start_hog(container, "memhog")
    col.wait_for(3, WAIT_S)
    assert hog.wait(timeout=WAIT_S) == -9
    assert all(s.wait(timeout=WAIT_S) == -9 for s in sleepers)
    kills = col.settle(5.0)
    assert sorted(k.pid for k in kills if k.pid is not None) == sorted(
        p.pid for p in [hog, *sleepers]
    ), kills
    assert len(kills) == 3, [(k.pid, k.cgroup, k.source, k.command) for k in kills]
    assert all(k.group_kill for k in kills), [(k.pid, k.group_kill) for k in kills]
    assert all(k.identity.container_id == cid for k in kills)
    assert {k.command for k in kills} == {"memhog", "helper0", "helper1"}
