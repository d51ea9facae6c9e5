"""The reconciler against real processes in nested, kubepods-shaped cgroups (lane 1, v1).

Every pod, container and process here is made by the test, below the test's own memory
cgroup; the reconciler's root is the test's tree, so nothing else can be touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

import oomguard.steer.apply as apply_module
from oomguard.cgroups.hierarchy import CgroupVersion
from oomguard.cgroups.oom_group import OOM_GROUP_FILE
from oomguard.cgroups.scratch import ScratchTree
from oomguard.k8s.pod_cache import ContainerKind, ContainerView, PodView
from oomguard.proc.handle import ProcHandle
from oomguard.state.files import read_boot_id
from oomguard.steer.admin import AdminPolicy, load_policy
from oomguard.steer.kill_plan import UNSUPPORTED_MESSAGE
from oomguard.steer.reconciler import (
    REASON_APPLIED,
    REASON_INVALID,
    REASON_KILL_MODE_UNSUPPORTED,
    REASON_REFUSED,
    PassReport,
    Reconciler,
)
from oomguard.steer.score_state import STATE_FILE

pytestmark = pytest.mark.system

MIB = 1024 * 1024
NODE_MEMORY = 1000 * MIB  # a Burstable pod requesting 100 MiB gets 900 from the kubelet
REQUEST = 100 * MIB
KUBELET_BURSTABLE = 900
CAP_SYS_RESOURCE = 24


class FixedPolicy:
    def __init__(self, text: str = "{}") -> None:
        self.policy: AdminPolicy = load_policy(text)

    def current(self) -> AdminPolicy:
        return self.policy


Event = tuple[str, str, str, str]  # pod name, type, reason, message


def has_cap_sys_resource() -> bool:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def cid() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex


def container(name: str, container_id: str, kind: ContainerKind = ContainerKind.CONTAINER) -> Any:
    return ContainerView(
        name=name,
        kind=kind,
        restart_policy=None,
        memory_request_bytes=REQUEST,
        memory_limit_bytes=None,
        container_id=container_id,
        runtime="containerd",
        past_container_ids=(),
        running=True,
        restart_count=0,
    )


def pod(
    name: str,
    uid: str,
    containers: Mapping[str, str],
    annotations: Mapping[str, str] | None = None,
    *,
    namespace: str = "default",
    qos: str = "Burstable",
) -> PodView:
    return PodView(
        uid=uid,
        namespace=namespace,
        name=name,
        node_name="node-1",
        annotations=MappingProxyType(dict(annotations or {})),
        qos_class=qos,
        priority=0,
        priority_class_name=None,
        config_hash=None,
        phase="Running",
        containers=tuple(container(n, i) for n, i in containers.items()),
        resource_version="1",
    )


class Node:
    """A fake node inside the scratch tree: pods' cgroups and their processes."""

    def __init__(self, tree: ScratchTree) -> None:
        self.tree = tree
        self.procs: list[subprocess.Popen[bytes]] = []

    def container_cgroup(self, uid: str, container_id: str, qos: str = "Burstable") -> str:
        level = "" if qos == "Guaranteed" else f"{qos.lower()}/"
        return self.tree.make(f"kubepods/{level}pod{uid}/{container_id}")

    def start(self, cgroup: str, adj: int | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "600"])
        self.procs.append(proc)
        (self.tree.hierarchy.fs_path(cgroup) / "cgroup.procs").write_text(str(proc.pid))
        if adj is not None:
            set_adj(proc.pid, adj)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def node(tree: ScratchTree) -> Iterator[Node]:
    n = Node(tree)
    try:
        yield n
    finally:
        n.close()


def adj(proc: subprocess.Popen[bytes] | int) -> int:
    pid = proc if isinstance(proc, int) else proc.pid
    return int(Path(f"/proc/{pid}/oom_score_adj").read_text())


def set_adj(pid: int, value: int) -> None:
    Path(f"/proc/{pid}/oom_score_adj").write_text(str(value))


def make_reconciler(
    tree: ScratchTree, policy: str = "{}", *, dry_run: bool = False, state_dir: Path | None = None
) -> tuple[Reconciler, list[Event]]:
    events: list[Event] = []

    def on_event(p: PodView, type_: str, reason: str, message: str) -> None:
        events.append((p.name, type_, reason, message))

    r = Reconciler(
        tree.hierarchy,
        tree.top / "kubepods",
        node_memory_bytes=NODE_MEMORY,
        dry_run=dry_run,
        policy_source=FixedPolicy(policy),
        on_event=on_event,
        state_dir=state_dir,
        boot_id=read_boot_id(),
    )
    return r, events


SACRIFICE = {"oomguard.io/sacrifice": "true"}


def test_sacrifice_applies_to_every_process_and_nothing_else(node: Node, tree: ScratchTree) -> None:
    # Pod A: two containers, the sacrifice asked for "app" only; app has a nested cgroup.
    uid_a, app, helper = str(uuid.uuid4()), cid(), cid()
    app_cg = node.container_cgroup(uid_a, app)
    helper_cg = node.container_cgroup(uid_a, helper)
    nested_cg = tree.make(f"kubepods/burstable/pod{uid_a}/{app}/worker/deeper")
    app_procs = [node.start(app_cg, KUBELET_BURSTABLE) for _ in range(3)]
    app_procs += [node.start(nested_cg, KUBELET_BURSTABLE) for _ in range(2)]
    helper_procs = [node.start(helper_cg, KUBELET_BURSTABLE) for _ in range(2)]
    # Pod B: unannotated, processes at a value the policy would never pick.
    uid_b, b_id = str(uuid.uuid4()), cid()
    b_procs = [node.start(node.container_cgroup(uid_b, b_id), 123) for _ in range(2)]
    # Pod C: sacrifice for the whole pod.
    uid_c, c_id = str(uuid.uuid4()), cid()
    c_procs = [node.start(node.container_cgroup(uid_c, c_id), KUBELET_BURSTABLE)]

    pods = [
        pod("a", uid_a, {"app": app, "helper": helper}, {"oomguard.io/sacrifice.app": "true"}),
        pod("b", uid_b, {"main": b_id}),
        pod("c", uid_c, {"main": c_id}, SACRIFICE),
    ]
    r, events = make_reconciler(tree)
    report = r.pass_once(pods)

    assert [adj(p) for p in app_procs] == [1000] * 5
    assert [adj(p) for p in c_procs] == [1000]
    assert [adj(p) for p in helper_procs] == [KUBELET_BURSTABLE] * 2  # other container
    assert [adj(p) for p in b_procs] == [123, 123]  # unannotated pod
    assert report.written == 6 and report.processes_seen == 6
    assert report.refused == report.errors == report.gone == 0
    assert report.desired == {"default/a/app": 1000, "default/c/main": 1000}
    assert report.containers["default/a/app"].cgroups == 3  # app, worker, worker/deeper
    applied = [e for e in events if e[2] == REASON_APPLIED]
    assert sorted(e[0] for e in applied) == ["a", "c"]
    assert all(e[1] == "Normal" for e in applied)
    assert "oomguard.io/sacrifice.app" in applied[0][3]

    again = r.pass_once(pods)
    assert again.written == 0 and again.already_right == 6
    assert len(events) == 2  # no new Event when nothing changed


def test_a_process_started_after_a_pass_is_brought_in_line(node: Node, tree: ScratchTree) -> None:
    uid, c = str(uuid.uuid4()), cid()
    cg = node.container_cgroup(uid, c)
    first = node.start(cg, KUBELET_BURSTABLE)
    pods = [pod("p", uid, {"main": c}, SACRIFICE)]
    r, events = make_reconciler(tree)
    assert r.pass_once(pods).written == 1
    late = node.start(cg, KUBELET_BURSTABLE)  # an exec'd process, with the runtime's value
    report = r.pass_once(pods)
    assert report.written == 1 and report.already_right == 1
    assert adj(first) == adj(late) == 1000
    assert len([e for e in events if e[2] == REASON_APPLIED]) == 1


def test_a_new_container_is_found_without_a_restart(node: Node, tree: ScratchTree) -> None:
    r, _ = make_reconciler(tree)
    uid1, c1 = str(uuid.uuid4()), cid()
    node.start(node.container_cgroup(uid1, c1), KUBELET_BURSTABLE)
    assert r.pass_once([pod("one", uid1, {"main": c1}, SACRIFICE)]).written == 1
    uid2, c2 = str(uuid.uuid4()), cid()  # created after the index was built
    p2 = node.start(node.container_cgroup(uid2, c2), KUBELET_BURSTABLE)
    report = r.pass_once(
        [pod("one", uid1, {"main": c1}, SACRIFICE), pod("two", uid2, {"main": c2}, SACRIFICE)]
    )
    assert report.index_rescans == 1 and report.written == 1 and adj(p2) == 1000


def test_pid_that_exits_mid_pass_is_skipped(
    node: Node, tree: ScratchTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid, c = str(uuid.uuid4()), cid()
    cg = node.container_cgroup(uid, c)
    before_open, after_open, stays = (node.start(cg, KUBELET_BURSTABLE) for _ in range(3))
    real_open = ProcHandle.open

    def racing_open(pid: int, proc_root: str = "/proc") -> ProcHandle | None:
        if pid == before_open.pid:  # exits between cgroup.procs and open
            before_open.kill()
            before_open.wait()
            return real_open(pid, proc_root)
        handle = real_open(pid, proc_root)
        if pid == after_open.pid:  # exits after the directory was pinned
            after_open.kill()
            after_open.wait()
        return handle

    monkeypatch.setattr(apply_module.ProcHandle, "open", staticmethod(racing_open))
    r, _ = make_reconciler(tree)
    report = r.pass_once([pod("p", uid, {"main": c}, SACRIFICE)])
    assert report.gone == 2 and report.written == 1 and report.errors == 0
    assert adj(stays) == 1000


def test_reused_pid_in_another_cgroup_is_never_written(
    node: Node, tree: ScratchTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cgroup.procs listed a PID that then exited and now names a stranger elsewhere."""
    uid, c = str(uuid.uuid4()), cid()
    cg = node.container_cgroup(uid, c)
    mine = node.start(cg, KUBELET_BURSTABLE)
    stranger = node.start(tree.make("elsewhere"), 7)
    real_read = apply_module.read_cgroup_procs

    def stale_read(directory: str | os.PathLike[str]) -> list[int]:
        return [*real_read(directory), stranger.pid]

    monkeypatch.setattr(apply_module, "read_cgroup_procs", stale_read)
    r, _ = make_reconciler(tree)
    report = r.pass_once([pod("p", uid, {"main": c}, SACRIFICE)])
    assert adj(mine) == 1000
    assert adj(stranger) == 7  # re-checked through the pinned /proc dir: not ours
    assert report.gone == 1 and report.written == 1


def test_removing_the_annotation_restores_the_kubelet_value(node: Node, tree: ScratchTree) -> None:
    uid, c = str(uuid.uuid4()), cid()
    cg = node.container_cgroup(uid, c)
    procs = [node.start(cg, KUBELET_BURSTABLE) for _ in range(3)]
    r, events = make_reconciler(tree)
    r.pass_once([pod("p", uid, {"main": c}, SACRIFICE)])
    assert [adj(p) for p in procs] == [1000] * 3
    set_adj(procs[2].pid, 500)  # someone else's choice since: not oomguard's to undo
    forked = node.start(cg, 1000)  # a child that inherited oomguard's value

    report = r.pass_once([pod("p", uid, {"main": c})])
    assert [adj(p) for p in procs] == [KUBELET_BURSTABLE, KUBELET_BURSTABLE, 500]
    assert adj(forked) == KUBELET_BURSTABLE
    assert report.written == 3
    assert report.containers["default/p/main"].outcome == "restore"
    restored = [e for e in events if e[2] == REASON_APPLIED][-1]
    assert "kubelet's value 900" in restored[3]

    # From now on the container is ungoverned again: left exactly as it is.
    set_adj(procs[0].pid, 1000)
    report = r.pass_once([pod("p", uid, {"main": c})])
    assert report.processes_seen == 0 and adj(procs[0]) == 1000


def test_a_kept_decision_is_made_again_when_labels_policy_or_pod_change(
    node: Node, tree: ScratchTree
) -> None:
    """A pass keeps each pod's decision while the pod, the policy and (for a policy that
    selects namespaces by label) the namespace's labels stay the same: each of them
    changing alone is acted on at the next pass."""
    uid, c = str(uuid.uuid4()), cid()
    proc = node.start(node.container_cgroup(uid, c), KUBELET_BURSTABLE)
    labels: dict[str, Mapping[str, str]] = {"jobs": {}}
    source = FixedPolicy(
        "defaults: [{namespaces: {selector: {matchLabels: {tier: batch}}}, request: sacrifice}]"
    )
    r = Reconciler(
        tree.hierarchy,
        tree.top / "kubepods",
        node_memory_bytes=NODE_MEMORY,
        policy_source=source,
        namespace_labels=lambda namespace: labels[namespace],
    )
    pods = [pod("p", uid, {"main": c}, namespace="jobs")]  # the same PodView every pass
    r.pass_once(pods)
    assert adj(proc) == KUBELET_BURSTABLE  # no rule chooses the namespace yet
    labels["jobs"] = {"tier": "batch"}
    r.pass_once(pods)
    assert adj(proc) == 1000  # the admin's default for the relabelled namespace
    source.policy = load_policy("{}")
    r.pass_once(pods)
    assert adj(proc) == KUBELET_BURSTABLE  # the rule is gone: the kubelet's value back
    r.pass_once([pod("p", uid, {"main": c}, SACRIFICE, namespace="jobs")])
    assert adj(proc) == 1000  # the pod changed: its own annotation


def test_a_kill_mode_on_cgroup_v1_is_unsupported_once_per_pod(
    node: Node, tree: ScratchTree
) -> None:
    """v1 has no memory.oom.group: nothing is written, each pod that asks is told once,
    and its oom_score_adj request is applied as ever."""
    if tree.hierarchy.version is not CgroupVersion.V1:
        pytest.skip("the cgroup v1 case (lane 2 tests the kill modes on v2)")
    uid_a, a = str(uuid.uuid4()), cid()
    uid_b, b = str(uuid.uuid4()), cid()
    proc = node.start(node.container_cgroup(uid_a, a), KUBELET_BURSTABLE)
    node.start(node.container_cgroup(uid_b, b), KUBELET_BURSTABLE)
    pods = [
        pod("a", uid_a, {"main": a}, {"oomguard.io/oom-kill": "process", **SACRIFICE}),
        pod("b", uid_b, {"main": b}, {"oomguard.io/oom-kill.main": "container"}),
    ]
    r, events = make_reconciler(tree)
    for _ in range(3):
        report = r.pass_once(pods)
        assert report.kill_modes_written == report.kill_mode_errors == report.errors == 0
    assert adj(proc) == 1000
    unsupported = [e for e in events if e[2] == REASON_KILL_MODE_UNSUPPORTED]
    assert unsupported == [
        ("a", "Warning", REASON_KILL_MODE_UNSUPPORTED, UNSUPPORTED_MESSAGE),
        ("b", "Warning", REASON_KILL_MODE_UNSUPPORTED, UNSUPPORTED_MESSAGE),
    ]
    assert [e[0] for e in events if e[2] == REASON_APPLIED] == ["a"]
    assert not list(tree.top.rglob(OOM_GROUP_FILE))


def test_dry_run_writes_nothing(node: Node, tree: ScratchTree) -> None:
    uid, c = str(uuid.uuid4()), cid()
    procs = [node.start(node.container_cgroup(uid, c), KUBELET_BURSTABLE) for _ in range(2)]
    r, events = make_reconciler(tree, dry_run=True)
    report = r.pass_once([pod("p", uid, {"main": c}, SACRIFICE)])
    assert report.dry_run and report.written == 2  # would write
    assert report.desired == {"default/p/main": 1000}
    assert [adj(p) for p in procs] == [KUBELET_BURSTABLE] * 2
    assert not [e for e in events if e[2] == REASON_APPLIED]


def test_invalid_annotation_warns_once_and_writes_nothing(node: Node, tree: ScratchTree) -> None:
    uid, c = str(uuid.uuid4()), cid()
    p = node.start(node.container_cgroup(uid, c), KUBELET_BURSTABLE)
    pods = [pod("p", uid, {"main": c}, {"oomguard.io/oom-score-adj": "1e3"})]
    r, events = make_reconciler(tree)
    r.pass_once(pods)
    r.pass_once(pods)
    assert adj(p) == KUBELET_BURSTABLE
    assert [(e[1], e[2]) for e in events] == [("Warning", REASON_INVALID)]
    assert "1e3" in events[0][3]


def test_untrusted_protect_is_refused_by_policy(node: Node, tree: ScratchTree) -> None:
    uid, c = str(uuid.uuid4()), cid()
    p = node.start(node.container_cgroup(uid, c), KUBELET_BURSTABLE)
    r, events = make_reconciler(tree)
    report = r.pass_once([pod("p", uid, {"main": c}, {"oomguard.io/protect": "true"})])
    assert adj(p) == KUBELET_BURSTABLE and report.written == 0
    assert [(e[1], e[2]) for e in events] == [("Warning", REASON_REFUSED)]
    assert "trust" in events[0][3]


TRUST_DB = "trusted_namespaces: {names: [db]}\n"


def test_protect_without_cap_sys_resource_is_reported_clearly(
    node: Node, tree: ScratchTree, caplog: pytest.LogCaptureFixture
) -> None:
    if has_cap_sys_resource():
        pytest.skip("this host has CAP_SYS_RESOURCE: negative values are tested in lane 2")
    uid_p, c_p = str(uuid.uuid4()), cid()
    cg_p = node.container_cgroup(uid_p, c_p, qos="Guaranteed")
    protected = [node.start(cg_p) for _ in range(2)]
    uid_s, c_s = str(uuid.uuid4()), cid()
    sacrificed = node.start(node.container_cgroup(uid_s, c_s), KUBELET_BURSTABLE)
    pods = [
        pod(
            "db",
            uid_p,
            {"main": c_p},
            {"oomguard.io/protect": "true"},
            namespace="db",
            qos="Guaranteed",
        ),
        pod("batch", uid_s, {"main": c_s}, SACRIFICE),
    ]
    r, events = make_reconciler(tree, TRUST_DB)
    report = r.pass_once(pods)
    assert report.refused == 2 and report.errors == 0
    assert [adj(p) for p in protected] == [0, 0]
    assert adj(sacrificed) == 1000  # the other pod is still adjusted
    assert report.desired["db/db/main"] == -998
    warnings = [e for e in events if e[1] == "Warning"]
    assert len(warnings) == 1
    assert warnings[0][0] == "db" and warnings[0][2] == REASON_REFUSED
    assert "CAP_SYS_RESOURCE" in warnings[0][3] and "-998" in warnings[0][3]
    assert not [e for e in events if e[0] == "db" and e[2] == REASON_APPLIED]
    assert "CAP_SYS_RESOURCE" in caplog.text

    again = r.pass_once(pods)  # counted again, reported once
    assert again.refused == 2
    assert len([e for e in events if e[1] == "Warning"]) == 1


def test_a_pass_over_many_processes(node: Node, tree: ScratchTree) -> None:
    """Many containers and processes: every one is reached, then nothing is rewritten."""
    pods = []
    procs = []
    for i in range(20):
        uid, c = str(uuid.uuid4()), cid()
        cg = node.container_cgroup(uid, c)
        procs += [node.start(cg) for _ in range(10)]
        pods.append(pod(f"p{i}", uid, {"main": c}, SACRIFICE))
    r, _ = make_reconciler(tree)
    first = r.pass_once(pods)
    assert first.written == 200 and first.processes_seen == 200
    second: PassReport = r.pass_once(pods)
    assert second.written == 0 and second.already_right == 200
    assert second.index_rescans == 0
    assert all(adj(p) == 1000 for p in procs)


def test_a_failing_event_sink_does_not_stop_the_pass(node: Node, tree: ScratchTree) -> None:
    uid, c = str(uuid.uuid4()), cid()
    p = node.start(node.container_cgroup(uid, c), KUBELET_BURSTABLE)

    def broken(*_: object) -> None:
        raise RuntimeError("API down")

    sink: Callable[..., None] = broken
    r = Reconciler(
        tree.hierarchy,
        tree.top / "kubepods",
        node_memory_bytes=NODE_MEMORY,
        dry_run=False,
        policy_source=FixedPolicy(),
        on_event=sink,
    )
    assert r.pass_once([pod("p", uid, {"main": c}, SACRIFICE)]).written == 1
    assert adj(p) == 1000


# ---------------------------------------------------------------------------- restarts, top


def top_rows(tree: ScratchTree, state_dir: Path) -> tuple[dict[int, dict[str, Any]], str]:
    """`oomguard top --json` as a user runs it: pid -> row, and what it said on stderr."""
    args = [
        "top",
        "--json",
        "-n",
        "0",
        "--cgroup-root",
        str(tree.top),
        "--state-dir",
        str(state_dir),
    ]
    result = subprocess.run(
        [sys.executable, "-m", "oomguard.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return {r["pid"]: r for r in json.loads(result.stdout)}, result.stderr


def saved(state_dir: Path) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
    return body


def test_a_restarted_reconciler_restores_what_it_set_and_top_shows_it(
    node: Node, tree: ScratchTree, tmp_path: Path
) -> None:
    uid, c = str(uuid.uuid4()), cid()
    cg = node.container_cgroup(uid, c)
    nested = tree.make(f"kubepods/burstable/pod{uid}/{c}/worker")
    direct, deep = node.start(cg, KUBELET_BURSTABLE), node.start(nested, KUBELET_BURSTABLE)
    uid_gone, c_gone = str(uuid.uuid4()), cid()  # a pod deleted while the agent is down
    gone = node.start(node.container_cgroup(uid_gone, c_gone), KUBELET_BURSTABLE)
    state_dir = tmp_path / "state"
    state_dir.mkdir()

    before, _ = make_reconciler(tree, state_dir=state_dir)
    pods = [
        pod("p", uid, {"main": c}, SACRIFICE),
        pod("gone", uid_gone, {"main": c_gone}, SACRIFICE),
    ]
    before.pass_once(pods)
    assert adj(direct) == adj(deep) == adj(gone) == 1000
    inode = (state_dir / STATE_FILE).stat().st_ino
    assert before.pass_once(pods).written == 0
    assert (state_dir / STATE_FILE).stat().st_ino == inode  # nothing changed: not rewritten

    rows, stderr = top_rows(tree, state_dir)
    assert stderr == ""
    for proc in (direct, deep):
        r = rows[proc.pid]
        assert (r["wanted_oom_score_adj"], r["applied"]) == (1000, True)
        assert (r["pod_namespace"], r["pod_name"], r["container_name"]) == ("default", "p", "main")
        assert r["container_id"] == c and r["oom_score_adj"] == 1000
    set_adj(direct.pid, 950)  # behind oomguard's back
    rows, _ = top_rows(tree, state_dir)
    changed = rows[direct.pid]
    assert (changed["oom_score_adj"], changed["wanted_oom_score_adj"]) == (950, 1000)
    assert changed["applied"] is False
    assert rows[deep.pid]["applied"] is True

    # The agent stops; meanwhile the annotation goes, a pod is deleted, and a process
    # forks with oomguard's value. A new Reconciler (a restarted agent) takes over.
    del before
    forked = node.start(cg, 1000)
    after, events = make_reconciler(tree, state_dir=state_dir)
    report = after.pass_once([pod("p", uid, {"main": c})])
    assert adj(deep) == adj(forked) == KUBELET_BURSTABLE
    assert adj(direct) == 950  # not the value oomguard wrote: not oomguard's to undo
    assert adj(gone) == 1000  # its pod is gone: left alone
    assert report.containers["default/p/main"].outcome == "restore"
    assert report.written == 2
    [restored] = [e for e in events if e[2] == REASON_APPLIED]
    assert "kubelet's value 900" in restored[3]
    assert saved(state_dir)["applied"] == [] and saved(state_dir)["wanted"] == []

    # Restored once, then forgotten, also by the next restart.
    set_adj(deep.pid, 1000)
    again, _ = make_reconciler(tree, state_dir=state_dir)
    assert again.pass_once([pod("p", uid, {"main": c})]).processes_seen == 0
    assert adj(deep) == 1000
    rows, _ = top_rows(tree, state_dir)
    assert rows[deep.pid]["wanted_oom_score_adj"] is None and rows[deep.pid]["applied"] is None


def test_a_dry_run_persists_nothing_as_written(
    node: Node, tree: ScratchTree, tmp_path: Path
) -> None:
    uid, c = str(uuid.uuid4()), cid()
    p = node.start(node.container_cgroup(uid, c), KUBELET_BURSTABLE)
    dry, _ = make_reconciler(tree, dry_run=True, state_dir=tmp_path)
    dry.pass_once([pod("p", uid, {"main": c}, SACRIFICE)])
    body = saved(tmp_path)
    assert body["dry_run"] is True and body["applied"] == []
    assert [(w["container_id"], w["value"]) for w in body["wanted"]] == [(c, 1000)]
    rows, stderr = top_rows(tree, tmp_path)
    assert (rows[p.pid]["wanted_oom_score_adj"], rows[p.pid]["applied"]) == (1000, False)
    assert "dry-run" in stderr

    set_adj(p.pid, 1000)  # someone else's 1000, after the dry run
    live, _ = make_reconciler(tree, state_dir=tmp_path)
    assert live.pass_once([pod("p", uid, {"main": c})]).processes_seen == 0
    assert adj(p) == 1000


def test_top_without_state_says_why_once(tree: ScratchTree, tmp_path: Path) -> None:
    rows, stderr = top_rows(tree, tmp_path / "absent")
    assert stderr.count("WANT and OK are empty") == 1 and STATE_FILE in stderr
    assert all(r["wanted_oom_score_adj"] is None and r["applied"] is None for r in rows.values())
