"""Lane 2: the reconciler with full root on cgroup v2: negative values, and a real OOM kill
in which the kernel picks the victim because of the values the reconciler set.

The VM is emulated (10-30x slower than the host): waits are generous, nothing is timed.
"""

from __future__ import annotations

import secrets
import subprocess
import uuid
from pathlib import Path
from types import MappingProxyType

import pytest

from oomguard.cgroups.scratch import HOG_SOURCE, MIB, ScratchTree
from oomguard.k8s.pod_cache import ContainerKind, ContainerView, PodView
from oomguard.steer.admin import AdminPolicy, load_policy
from oomguard.steer.reconciler import REASON_APPLIED, Reconciler

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


def reconciler(tree: ScratchTree, events: list[tuple[str, str, str]]) -> Reconciler:
    return Reconciler(
        tree.hierarchy,
        tree.top / "kubepods",
        node_memory_bytes=1024 * MIB,
        dry_run=False,
        policy_source=FixedPolicy(TRUST_DB),
        on_event=lambda pod, type_, reason, message: events.append((type_, reason, message)),
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
