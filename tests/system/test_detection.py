"""Real OOM kills in kubepods-shaped cgroups on the host (cgroup v1), caught and attributed."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable

import pytest

from oomguard.cgroups.scratch import MIB, ScratchTree
from oomguard.records import Constraint
from tests.conftest import Collector

pytestmark = pytest.mark.system

LIMIT = 48 * MIB


def _shape(driver: str, qos: str, runtime: str, uid: str, cid: str) -> str:
    """A container cgroup path as kubelet and the runtime would make it."""
    if driver == "cgroupfs":
        qos_dir = "" if qos == "guaranteed" else f"{qos}/"
        leaf = {"plain": cid, "containerd": f"cri-containerd-{cid}"}[runtime]
        return f"kubepods/{qos_dir}pod{uid}/{leaf}"
    u = uid.replace("-", "_")
    prefix = {"containerd": "cri-containerd", "cri-o": "crio", "docker": "docker"}[runtime]
    if qos == "guaranteed":
        return f"kubepods.slice/kubepods-pod{u}.slice/{prefix}-{cid}.scope"
    return f"kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{u}.slice/{prefix}-{cid}.scope"


SHAPES = [
    ("cgroupfs", "burstable", "plain"),
    ("cgroupfs", "besteffort", "containerd"),
    ("cgroupfs", "guaranteed", "plain"),
    ("systemd", "burstable", "containerd"),
    ("systemd", "besteffort", "cri-o"),
    ("systemd", "burstable", "docker"),
    ("systemd", "guaranteed", "containerd"),
]


@pytest.mark.parametrize(("driver", "qos", "runtime"), SHAPES, ids=["-".join(s) for s in SHAPES])
def test_kill_is_caught_and_attributed(
    tree: ScratchTree, watch: Callable[..., Collector], driver: str, qos: str, runtime: str
) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    col = watch()  # started before the container exists: it must be picked up live
    container = tree.make(_shape(driver, qos, runtime, uid, cid), limit_bytes=LIMIT)
    hog = tree.start_hog(container, "memhog")
    kills = col.wait_for(1)
    assert hog.wait(timeout=30) == -9
    assert len(kills) == 1, kills
    k = kills[0]
    assert k.pid == hog.pid
    assert k.command == "memhog"
    assert k.cgroup == container
    assert k.constraint is Constraint.CONTAINER
    assert k.identity.container_id == cid
    assert k.identity.pod_uid == uid
    assert k.identity.qos == qos
    expected_runtime = None if runtime == "plain" else runtime
    if driver == "cgroupfs" and runtime == "containerd":
        expected_runtime = "containerd"
    assert k.identity.runtime == expected_runtime
    assert k.source == "kmsg"
    assert k.memory_limit_bytes == LIMIT
    # The hog's interpreter (a few MiB) was charged before it moved in, so RSS may
    # exceed the limit by that much.
    assert k.anon_rss_bytes is not None and 0.5 * LIMIT < k.anon_rss_bytes <= LIMIT + 16 * MIB
    assert k.oom_score_adj == 0
    # The counter signal of the same kill must not make a second record.
    assert len(col.settle(2.5)) == 1


def test_two_kills_in_one_container_are_two_records(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    container = tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=LIMIT)
    col = watch()
    first = tree.start_hog(container, "hog-one")
    col.wait_for(1)
    assert first.wait(timeout=30) == -9
    second = tree.start_hog(container, "hog-two")
    kills = col.wait_for(2)
    assert second.wait(timeout=30) == -9
    assert [k.pid for k in kills] == [first.pid, second.pid]
    assert [k.command for k in kills] == ["hog-one", "hog-two"]
    assert kills[0].kmsg_seq != kills[1].kmsg_seq
    assert len(col.settle(2.5)) == 2


def test_non_pid1_process_killed_while_first_process_survives(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    container = tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=LIMIT)
    main = tree.start_sleeper(container, "app-main")
    col = watch()
    worker = tree.start_hog(container, "worker")
    kills = col.wait_for(1)
    assert worker.wait(timeout=30) == -9
    assert main.poll() is None, "the container's first process must survive"
    assert [(k.pid, k.command) for k in kills] == [(worker.pid, "worker")]
    assert kills[0].identity.container_id == cid


def test_kmsg_unreadable_gives_record_from_counters(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    container = tree.make(f"kubepods/besteffort/pod{uid}/{cid}", limit_bytes=LIMIT)
    # No /dev/kmsg and no syslog(2) fallback (tests/system/test_syslog_detection.py).
    col = watch(kmsg_path=str(tree.top / "no-such-kmsg"), syslog_fallback=False)
    assert col.watcher.kernel_log.reader is None
    assert col.watcher.kernel_log_error and "kmsg" in col.watcher.kernel_log_error
    hog = tree.start_hog(container, "memhog")
    kills = col.wait_for(1)
    assert hog.wait(timeout=30) == -9
    assert len(kills) == 1
    k = kills[0]
    assert k.source == "counters"
    assert k.pid is None and not k.victim_known
    assert k.cgroup == container
    assert k.identity.container_id == cid and k.identity.pod_uid == uid
    assert k.constraint is Constraint.CONTAINER
    assert k.memory_limit_bytes == LIMIT


@pytest.mark.parametrize("with_kmsg", [True, False], ids=["kmsg", "counters-only"])
def test_pod_limit_kill_is_classified_pod(
    tree: ScratchTree, watch: Callable[..., Collector], with_kmsg: bool
) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    pod = tree.make(f"kubepods/burstable/pod{uid}", limit_bytes=LIMIT)
    container = tree.make(f"kubepods/burstable/pod{uid}/{cid}")
    kwargs: dict[str, object] = {}
    if not with_kmsg:
        kwargs = {"kmsg_path": str(tree.top / "no-such-kmsg"), "syslog_fallback": False}
    col = watch(**kwargs)
    hog = tree.start_hog(container, "memhog")
    kills = col.wait_for(1)
    assert hog.wait(timeout=30) == -9
    assert len(col.settle(2.5)) == 1
    k = kills[0]
    assert k.cgroup == container
    assert k.constraint is Constraint.POD
    if with_kmsg:
        assert k.oom_cgroup == pod


def test_removed_container_cgroup_is_dropped(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    col = watch()
    container = tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=LIMIT)
    col.settle(0.3)
    assert col.watcher.watch.is_watched(container)
    tree.hierarchy.fs_path(container).rmdir()
    col.settle(0.3)
    assert not col.watcher.watch.is_watched(container)
    assert col.kills == []


@pytest.mark.parametrize("live", [True, False], ids=["watching-live", "fell-behind"])
def test_kills_past_the_kernels_report_rate_limit_keep_container_and_reason(
    tree: ScratchTree, watch: Callable[..., Collector], live: bool
) -> None:
    # The kernel prints at most 10 OOM report headers per 5 s; past that only the bare
    # "Killed process" line comes, without memcgs. Each kill must still be one record
    # with its container and the limit it hit (never "the node ran out"). Watching
    # live, each bare line pairs by time with its cgroup's counter increase and names
    # the victim; when the watcher fell behind a burst, a victim it cannot place stays
    # unknown rather than being blamed on another container. A victim named is never
    # another container's, nor another process's on this host.
    containers = []
    for _ in range(3):
        uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
        containers.append(
            (cid, tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=32 * MIB))
        )
    col = watch()
    hogs = []
    for i in range(15):
        cid, cg = containers[i % 3]
        hog = tree.start_hog(cg, f"storm{i}")
        if live:
            col.wait_for(i + 1)
        assert hog.wait(timeout=30) == -9
        hogs.append((hog.pid, cid))
    col.wait_for(15, 60)
    kills = col.settle(3.0)
    assert len(kills) == 15
    container_of = dict(hogs)
    per_container = {cid: 0 for cid, _ in containers}
    for k in kills:
        assert k.constraint is Constraint.CONTAINER, k
        assert k.identity.container_id in per_container, k
        per_container[k.identity.container_id] += 1
        if k.pid is not None:
            assert container_of.get(k.pid) == k.identity.container_id, k
    assert sorted(per_container.values()) == [5, 5, 5]
    pids = [k.pid for k in kills if k.pid is not None]
    assert len(pids) == len(set(pids)), "a victim reported twice"
    if live:
        if len(pids) < 15:
            col.skip_if_the_kernel_could_not_tell("victims not named")
        assert sorted(pids) == sorted(container_of)
