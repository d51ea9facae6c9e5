"""Lane 2: the reconciler with full root on cgroup v2: negative values, a real OOM kill
in which the kernel picks the victim because of the values the reconciler set, and the
kill modes (memory.oom.group) with real kills: who dies under each, and what is said.

The VM is emulated (10-30x slower than the host): waits are generous, nothing is timed.
"""

from __future__ import annotations

import secrets
import subprocess
import uuid
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from oomguard.cgroups.oom_group import OOM_GROUP_FILE, write_oom_group
from oomguard.cgroups.scratch import HOG_SOURCE, MIB, ScratchTree
from oomguard.k8s.pod_cache import ContainerKind, ContainerView, PodView
from oomguard.metrics import Metrics
from oomguard.steer.admin import AdminPolicy, load_policy
from oomguard.steer.reconciler import (
    REASON_APPLIED,
    REASON_KILL_MODE_APPLIED,
    REASON_KILL_MODE_REFUSED,
    Reconciler,
)
from oomguard.top import rank

pytestmark = pytest.mark.vm

WAIT_S = 180.0
LIMIT = 64 * MIB
PROTECTED_MIB = 36  # the protected process holds more than the sacrificial one ever will
TRUST_DB = "trusted_namespaces: {names: [db]}\n"

# Waits for "go", allocates and touches PROTECTED_MIB, says "ready", then stays.
HOLDER_SOURCE = f"""
import sys, time
sys.stdin.readline()
hoard = []
for _ in range({PROTECTED_MIB}):
    chunk = bytearray(1 << 20)
    for i in range(0, len(chunk), 4096):
        chunk[i] = 1
    hoard.append(chunk)
sys.stdout.write("ready\\n"); sys.stdout.flush()
while True:
    time.sleep(3600)
"""


class FixedPolicy:
    def __init__(self, text: str) -> None:
        self.policy: AdminPolicy = load_policy(text)

    def current(self) -> AdminPolicy:
        return self.policy


def view(name: str, container_id: str) -> ContainerView:
    return ContainerView(
        name=name,
        kind=ContainerKind.CONTAINER,
        restart_policy=None,
        memory_request_bytes=LIMIT,
        memory_limit_bytes=LIMIT,
        container_id=container_id,
        runtime="containerd",
        past_container_ids=(),
        running=True,
        restart_count=0,
    )


def guaranteed_pod(uid: str, containers: dict[str, str], annotations: dict[str, str]) -> PodView:
    return PodView(
        uid=uid,
        namespace="db",
        name="db-0",
        node_name="vm",
        annotations=MappingProxyType(annotations),
        qos_class="Guaranteed",
        priority=0,
        priority_class_name=None,
        config_hash=None,
        phase="Running",
        containers=tuple(view(n, i) for n, i in containers.items()),
        resource_version="1",
    )


def adj(proc: subprocess.Popen[bytes]) -> int:
    return int(Path(f"/proc/{proc.pid}/oom_score_adj").read_text())


def reconciler(
    tree: ScratchTree,
    events: list[tuple[str, str, str]],
    *,
    policy: str = TRUST_DB,
    state_dir: Path | None = None,
    metrics: Metrics | None = None,
) -> Reconciler:
    return Reconciler(
        tree.hierarchy,
        tree.top / "kubepods",
        node_memory_bytes=1024 * MIB,
        dry_run=False,
        policy_source=FixedPolicy(policy),
        on_event=lambda pod, type_, reason, message: events.append((type_, reason, message)),
        metrics=metrics,
        state_dir=state_dir,
        boot_id="lane2-boot",
    )


def test_negative_values_are_applied(tree: ScratchTree) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    cg = tree.make(f"kubepods/pod{uid}/{cid}")
    procs = [tree.start_sleeper(cg, "db") for _ in range(2)]
    events: list[tuple[str, str, str]] = []
    r = reconciler(tree, events)
    report = r.pass_once([guaranteed_pod(uid, {"db": cid}, {"oomguard.io/protect": "true"})])
    assert report.refused == 0 and report.errors == 0 and report.written == 2
    assert [adj(p) for p in procs] == [-998, -998]
    assert [(t, reason) for t, reason, _ in events] == [("Normal", REASON_APPLIED)]
    # Removing the annotation puts the kubelet's Guaranteed value back.
    r.pass_once([guaranteed_pod(uid, {"db": cid}, {})])
    assert [adj(p) for p in procs] == [-997, -997]


def test_kernel_kills_the_sacrificial_process_not_the_protected_one(tree: ScratchTree) -> None:
    uid, db, batch = str(uuid.uuid4()), secrets.token_hex(32), secrets.token_hex(32)
    pod_cg = tree.make(f"kubepods/pod{uid}", limit_bytes=LIMIT)  # one limit over both
    db_cg = tree.make(f"kubepods/pod{uid}/{db}")
    batch_cg = tree.make(f"kubepods/pod{uid}/{batch}")
    holder = tree.spawn(db_cg, HOLDER_SOURCE, "holder")
    hog = tree.spawn(batch_cg, HOG_SOURCE, "volunteer")
    assert holder.stdin is not None and holder.stdout is not None and hog.stdin is not None

    events: list[tuple[str, str, str]] = []
    pod = guaranteed_pod(
        uid,
        {"db": db, "batch": batch},
        {"oomguard.io/protect.db": "true", "oomguard.io/sacrifice.batch": "true"},
    )
    report = reconciler(tree, events).pass_once([pod])
    assert report.written == 2 and report.refused == 0
    assert (adj(holder), adj(hog)) == (-998, 1000)

    holder.stdin.write(b"go\n")  # the protected one allocates first, and holds on
    holder.stdin.flush()
    assert holder.stdout.readline() == b"ready\n"
    hog.stdin.write(b"go\n")  # then the volunteer grows until the pod's limit is hit
    hog.stdin.flush()
    assert hog.wait(timeout=WAIT_S) == -9
    # The holder was the larger process: without the values it would have been the victim.
    assert holder.poll() is None
    events_file = tree.hierarchy.fs_path(pod_cg) / "memory.events"
    counts = dict(line.split() for line in events_file.read_text().splitlines())
    assert int(counts["oom_kill"]) >= 1


# ---------------------------------------------------------------------------- kill modes
# memory.oom.group of a container cgroup, with several worker processes in it. Each
# container starts at what the kubelet writes on v2 (1; 0 on a node with
# singleProcessOOMKill), as the test sets it up before the agent looks.

WORKERS = 3
PROCESS = {"oomguard.io/oom-kill": "process"}
CONTAINER = {"oomguard.io/oom-kill": "container"}


def oom_group(tree: ScratchTree, cgroup: str) -> int:
    return int((tree.hierarchy.fs_path(cgroup) / OOM_GROUP_FILE).read_text())


def memory_events(tree: ScratchTree, cgroup: str) -> dict[str, int]:
    text = (tree.hierarchy.fs_path(cgroup) / "memory.events").read_text()
    return {key: int(value) for key, value in (line.split() for line in text.splitlines())}


class KillModeContainer:
    """A container cgroup with a memory limit, `WORKERS` sleeping workers and a hog that
    waits for "go"; its memory.oom.group set first as the kubelet sets it."""

    def __init__(self, tree: ScratchTree, kubelet_oom_group: int) -> None:
        self.tree = tree
        self.uid, self.cid = str(uuid.uuid4()), secrets.token_hex(32)
        self.cgroup = tree.make(f"kubepods/pod{self.uid}/{self.cid}", limit_bytes=LIMIT)
        write_oom_group(tree.hierarchy.fs_path(self.cgroup), kubelet_oom_group)
        self.workers = [tree.start_sleeper(self.cgroup, f"worker-{i}") for i in range(WORKERS)]
        self.hog = tree.spawn(self.cgroup, HOG_SOURCE, "victim")

    def pod(self, annotations: dict[str, str]) -> PodView:
        return guaranteed_pod(self.uid, {"db": self.cid}, annotations)

    @property
    def oom_group(self) -> int:
        return oom_group(self.tree, self.cgroup)

    def oom(self) -> None:
        """Let the hog grow into the limit; returns once the kernel killed it."""
        assert self.hog.stdin is not None
        self.hog.stdin.write(b"go\n")
        self.hog.stdin.flush()
        assert self.hog.wait(timeout=WAIT_S) == -9


def kill_mode_events(events: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return [e for e in events if "KillMode" in e[1]]


def test_process_mode_loses_only_the_victim(tree: ScratchTree) -> None:
    box = KillModeContainer(tree, kubelet_oom_group=1)
    events: list[tuple[str, str, str]] = []
    report = reconciler(tree, events).pass_once([box.pod(PROCESS)])
    assert report.kill_modes_written == 1 and report.kill_mode_errors == 0
    assert box.oom_group == 0
    assert kill_mode_events(events) == [
        (
            "Normal",
            REASON_KILL_MODE_APPLIED,
            "memory.oom.group: container db -> process (only the process the kernel picks "
            "dies; oomguard.io/oom-kill=process)",
        )
    ]
    box.oom()
    assert [w.poll() for w in box.workers] == [None] * WORKERS  # its siblings live on
    counts = memory_events(tree, box.cgroup)
    assert counts["oom_kill"] >= 1 and counts.get("oom_group_kill", 0) == 0


def test_container_mode_takes_every_process(tree: ScratchTree) -> None:
    box = KillModeContainer(tree, kubelet_oom_group=0)  # a node with singleProcessOOMKill
    events: list[tuple[str, str, str]] = []
    reconciler(tree, events).pass_once([box.pod(CONTAINER)])
    assert box.oom_group == 1
    assert [e[1] for e in kill_mode_events(events)] == [REASON_KILL_MODE_APPLIED]
    box.oom()
    assert [w.wait(timeout=WAIT_S) for w in box.workers] == [-9] * WORKERS
    assert memory_events(tree, box.cgroup)["oom_group_kill"] >= 1


def test_unannotated_keeps_the_kubelets_value_and_removal_restores_it(
    tree: ScratchTree, tmp_path: Path
) -> None:
    box = KillModeContainer(tree, kubelet_oom_group=1)
    events: list[tuple[str, str, str]] = []
    r = reconciler(tree, events, state_dir=tmp_path)
    r.pass_once([box.pod({})])
    assert box.oom_group == 1 and events == []  # left as the kubelet set it
    r.pass_once([box.pod(PROCESS)])
    assert box.oom_group == 0
    # The agent restarts while the annotation goes away: the state dir remembers.
    restarted = reconciler(tree, events, state_dir=tmp_path)
    report = restarted.pass_once([box.pod({})])
    assert box.oom_group == 1 and report.kill_modes_written == 1
    assert kill_mode_events(events)[-1] == (
        "Normal",
        REASON_KILL_MODE_APPLIED,
        'memory.oom.group: container db is back at 1 ("container": all its processes die '
        "together), the value before oomguard changed it (no oomguard.io/oom-kill request "
        "any more)",
    )
    restarted.pass_once([box.pod({})])
    assert box.oom_group == 1 and len(kill_mode_events(events)) == 2


def test_a_refused_mode_leaves_the_kubelets_value_and_says_why(tree: ScratchTree) -> None:
    box = KillModeContainer(tree, kubelet_oom_group=1)
    events: list[tuple[str, str, str]] = []
    r = reconciler(tree, events, policy=TRUST_DB + "oom_kill: {process: {names: [ci]}}\n")
    for _ in range(2):
        r.pass_once([box.pod(PROCESS)])
    assert box.oom_group == 1
    assert kill_mode_events(events) == [
        (
            "Warning",
            REASON_KILL_MODE_REFUSED,
            "oomguard.io/oom-kill=process refused: the oomguard policy does not let "
            "namespace db choose kill mode process for container db; memory.oom.group "
            "stays as the kubelet set it.",
        )
    ]
    box.oom()  # and the kubelet's value holds: the whole container goes
    assert [w.wait(timeout=WAIT_S) for w in box.workers] == [-9] * WORKERS


def test_a_read_only_cgroup_mount_is_refused_and_says_what_the_chart_needs(
    tree: ScratchTree,
) -> None:
    """The container cgroup bind-mounted read-only over itself: the kernel's EROFS, as
    under the chart's cgroup.readOnly: true."""
    box = KillModeContainer(tree, kubelet_oom_group=1)
    directory = str(tree.hierarchy.fs_path(box.cgroup))
    subprocess.run(["mount", "--bind", directory, directory], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", directory], check=True)
        events: list[tuple[str, str, str]] = []
        metrics = Metrics(process_metrics=False)
        r = reconciler(tree, events, metrics=metrics)
        for _ in range(2):
            report = r.pass_once([box.pod(PROCESS)])
            assert report.kill_mode_errors == 1
    finally:
        subprocess.run(["umount", directory], check=True)
    assert box.oom_group == 1
    [(type_, reason, message)] = kill_mode_events(events)
    assert (type_, reason) == ("Warning", REASON_KILL_MODE_REFUSED)
    assert "read-only (EROFS)" in message and "cgroup.readOnly: false" in message
    errors = metrics.registry.get_sample_value(
        "oomguard_kill_mode_changes_total", {"result": "error"}
    )
    assert errors == 2


def test_the_agent_end_to_end_writes_the_file_and_says_so(
    tree: ScratchTree, tmp_path: Path
) -> None:
    """`oomguard run` in the VM against the test API server over real HTTP on 127.0.0.1:
    the annotation, memory.oom.group written, the Normal Event on the pod."""
    from oomguard.agent import Agent
    from oomguard.k8s.client import KubeApi
    from oomguard.settings import load_settings
    from tests.cluster.apiserver import EVENTS, ApiServer
    from tests.cluster.test_agent import NODE, RunningAgent, app_pod, wait_for

    box = KillModeContainer(tree, kubelet_oom_group=1)
    server = ApiServer(host="127.0.0.1", port=0, bookmark_interval_s=0.5)
    server.start()
    try:
        server.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
        pod = app_pod(box.uid, box.cid)
        pod["metadata"]["annotations"] = {"oomguard.io/oom-kill.app": "process"}
        server.apply(pod)
        kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
        settings = load_settings(
            node_name=NODE,
            kubeconfig=str(kubeconfig),
            cgroup_root=str(tree.top),
            state_dir=tmp_path / "state",
            metrics_address="127.0.0.1:0",
            reconcile_interval_s=0.5,
            policy_file=tmp_path / "no-policy.yaml",
        )
        agent = Agent(settings, tree.hierarchy, KubeApi.from_kubeconfig(kubeconfig))
        namespace = pod["metadata"]["namespace"]

        def applied() -> list[dict[str, Any]]:
            return [
                e
                for e in server.objects(EVENTS, namespace)
                if e["reason"] == REASON_KILL_MODE_APPLIED
            ]

        with RunningAgent(agent):
            (event,) = wait_for(applied, WAIT_S)
            assert box.oom_group == 0
    finally:
        server.stop()
    assert event["type"] == "Normal"
    assert event["involvedObject"]["uid"] == box.uid
    assert event["message"] == (
        "memory.oom.group: container app -> process (only the process the kernel picks "
        "dies; oomguard.io/oom-kill.app=process)"
    )


def test_top_shows_each_processs_kill_mode(tree: ScratchTree) -> None:
    box = KillModeContainer(tree, kubelet_oom_group=1)
    other = KillModeContainer(tree, kubelet_oom_group=1)
    reconciler(tree, []).pass_once([box.pod(PROCESS), other.pod({})])
    rows = {row.pid: row for row in rank(tree.hierarchy, tree.top_cgroup, 0)}
    assert {rows[w.pid].kill_mode for w in box.workers} == {"process"}
    assert {rows[w.pid].kill_mode for w in other.workers} == {"container"}
    assert rows[box.workers[0].pid].to_json_dict()["kill_mode"] == "process"
