"""A new container cgroup followed on a fake node: cgroup files and /proc in a temporary
directory, no process and no privilege; the steering thread's turns driven by hand.

What a runtime does is played by the test: it puts its init into the cgroup (at the
shim's value), writes the kubelet's value to it, clones the container's init, writes
the kubelet's memory.oom.group, and execs the entrypoint. The real thing on the host's
kernel is tests/cluster/test_agent_new_containers.py; the rules alone are in
test_new_container_plan.py. The last test is the detector's side: a container cgroup
made below a watched pod directory is said at once, and nothing else is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.detect.loop import OomWatcher
from oomguard.k8s.pod_cache import ContainerKind, ContainerView, PodView
from oomguard.metrics import Metrics
from oomguard.records import ContainerCgroupCreated
from oomguard.steer.admin import AdminPolicy, load_policy
from oomguard.steer.new_container_plan import FIRST_PROCESS_WAIT_S, WINDOW_S
from oomguard.steer.new_containers import NewContainerPlanner, NewContainerSteering

MIB = 1 << 20
NODE_MEMORY = 1000 * MIB
UID = "6f1e0c7a-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
POD = f"/kubepods/burstable/pod{UID}"
NEW, OLD = "c3" * 32, "a1" * 32
KUBELET = 999  # the pod's app container requests no memory
SHIM = -998  # what the runtime's init inherits before it writes the kubelet's value
RUNC_INIT = "runc\0init\0"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FixedPolicy:
    def __init__(self, policy: AdminPolicy) -> None:
        self.policy = policy

    def current(self) -> AdminPolicy:
        return self.policy


class Pods:
    def __init__(self) -> None:
        self.pods: dict[str, PodView] = {}

    def lookup_pod(self, uid_or_config_hash: str) -> PodView | None:
        return self.pods.get(uid_or_config_hash)


def app_pod(annotations: dict[str, str], uid: str = UID) -> PodView:
    app = ContainerView(
        name="app",
        kind=ContainerKind.CONTAINER,
        restart_policy=None,
        memory_request_bytes=None,
        memory_limit_bytes=None,
        container_id=OLD,  # the last run's: its cgroup is gone, the new one is its restart
        runtime="containerd",
        past_container_ids=(),
        running=False,
        restart_count=3,
    )
    return PodView(
        uid=uid,
        namespace="default",
        name="db-0",
        node_name="node-1",
        annotations=MappingProxyType(annotations),
        qos_class="Burstable",
        priority=0,
        priority_class_name=None,
        config_hash=None,
        phase="Running",
        containers=(app,),
        resource_version="1",
    )


class FakeNode:
    """A cgroup hierarchy and a /proc, as files; the test plays the runtime on them."""

    def __init__(self, root: Path, version: CgroupVersion) -> None:
        self.version = version
        self.hierarchy = MemoryHierarchy(version, root / "cgroup")
        self.proc = root / "proc"
        self.proc.mkdir()
        self.clock = Clock()
        self.pods = Pods()
        self.remembered: set[tuple[str, str]] = set()
        self.metrics = Metrics("test")
        planner = NewContainerPlanner(
            self.pods,
            FixedPolicy(load_policy("{}")),
            NODE_MEMORY,
            v1=version is CgroupVersion.V1,
            kill_mode_remembered=lambda uid, name: (uid, name) in self.remembered,
        )
        self.steering = NewContainerSteering(
            self.hierarchy,
            planner,
            metrics=self.metrics,
            proc_root=str(self.proc),
            clock=self.clock,
        )
        self.make(POD)

    def make(self, cgroup: str) -> Path:
        directory = self.hierarchy.fs_path(cgroup)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "cgroup.procs").write_text("")
        if self.version is CgroupVersion.V2:
            (directory / "cgroup.events").write_text("populated 0\nfrozen 0\n")
            (directory / "memory.oom.group").write_text("1\n")
        return directory

    def container(self, container_id: str = NEW) -> ContainerCgroupCreated:
        """The runtime makes the container's cgroup; the detector says so."""
        cgroup = f"{POD}/{container_id}"
        directory = self.make(cgroup)
        return ContainerCgroupCreated(
            cgroup=cgroup,
            directory=str(directory),
            pod_uid=UID,
            container_id=container_id,
            seen_mono=self.clock.now,
        )

    def process(self, pid: int, value: int, command: str, cgroup: str) -> None:
        d = self.proc / str(pid)
        d.mkdir(exist_ok=True)
        (d / "oom_score_adj").write_text(f"{value}\n")
        (d / "cmdline").write_text(command)
        line = f"4:memory:{cgroup}\n" if self.version is CgroupVersion.V1 else f"0::{cgroup}\n"
        (d / "cgroup").write_text(line)

    def join(self, created: ContainerCgroupCreated, *pids: int) -> None:
        Path(created.directory, "cgroup.procs").write_text("".join(f"{p}\n" for p in pids))
        if self.version is CgroupVersion.V2:
            populated = int(bool(pids))
            Path(created.directory, "cgroup.events").write_text(
                f"populated {populated}\nfrozen 0\n"
            )

    def adj(self, pid: int) -> int:
        return int((self.proc / str(pid) / "oom_score_adj").read_text())

    def oom_group(self, created: ContainerCgroupCreated) -> int:
        return int(Path(created.directory, "memory.oom.group").read_text())

    def turn(self, after_s: float = 0.002) -> None:
        self.clock.now += after_s
        self.steering.step(max_wait_s=0)


@pytest.fixture(params=[CgroupVersion.V1, CgroupVersion.V2], ids=["v1", "v2"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FakeNode]:
    n = FakeNode(tmp_path, request.param)
    try:
        yield n
    finally:
        n.steering.close()


def test_the_runtime_s_processes_get_the_policy_value_once_it_wrote_the_kubelet_s(
    node: FakeNode,
) -> None:
    node.pods.pods[UID] = app_pod({"oomguard.io/sacrifice": "true"})
    created = node.container()
    node.steering.notice(created)
    node.turn()
    assert node.steering.following == 1
    # runc's parent puts `runc init` in the cgroup; it still has the shim's value.
    node.process(41, SHIM, RUNC_INIT, created.cgroup)
    node.join(created, 41)
    node.turn()
    assert node.adj(41) == SHIM  # never a value the kubelet gives a container: left
    node.process(41, KUBELET, RUNC_INIT, created.cgroup)  # the runtime's own write
    node.turn()
    assert node.adj(41) == 1000
    # A stage cloned just before that write, with the kubelet's value: steered too.
    node.process(42, KUBELET, RUNC_INIT, created.cgroup)
    node.join(created, 41, 42)
    node.turn()
    assert node.adj(42) == 1000
    # The container's init execs the entrypoint; the runtime's stages exit.
    node.process(42, 1000, "postgres\0-D\0/data\0", created.cgroup)
    node.join(created, 42)
    node.turn()
    assert node.steering.following == 0  # the runtime is done: no more looks
    assert node.steering.counters.written == 2
    applied = node.metrics.registry.get_sample_value(
        "oomguard_score_adjustments_total", {"result": "applied"}
    )
    assert applied == 2


def test_a_stranger_in_the_list_is_never_written(node: FakeNode) -> None:
    """A PID read from cgroup.procs that names another cgroup by the time it is pinned
    (exited, and the number reused) keeps its value."""
    node.pods.pods[UID] = app_pod({"oomguard.io/sacrifice": "true"})
    created = node.container()
    node.steering.notice(created)
    node.process(50, KUBELET, "bash\0", "/system.slice/sshd.service")
    node.join(created, 50)
    node.turn()
    assert node.adj(50) == KUBELET
    assert node.steering.counters.written == 0


def test_the_window_ends_and_a_cgroup_that_never_gets_a_process_is_dropped(
    node: FakeNode,
) -> None:
    node.pods.pods[UID] = app_pod({"oomguard.io/sacrifice": "true"})
    empty, busy = node.container(), node.container("e5" * 32)
    node.steering.notice(empty)
    node.steering.notice(busy)
    node.turn()
    node.clock.now += 1.0
    node.process(60, 1000, RUNC_INIT, busy.cgroup)  # already right, and never exec's
    node.join(busy, 60)
    node.turn()
    assert node.steering.following == 2
    node.turn(FIRST_PROCESS_WAIT_S - 1.0)
    assert node.steering.following == 1  # the empty one waited long enough
    node.turn(WINDOW_S)
    assert node.steering.following == 0  # the busy one: its window is over


@pytest.mark.parametrize(
    ("annotations", "in_cache"),
    [({}, True), ({"oomguard.io/sacrifice.other": "true"}, True), ({}, False)],
    ids=["ungoverned", "another-container-asks", "pod-not-in-cache"],
)
def test_pods_that_need_nothing_are_not_followed(
    node: FakeNode, annotations: dict[str, str], in_cache: bool
) -> None:
    if in_cache:
        node.pods.pods[UID] = app_pod(annotations)
    created = node.container()
    node.process(70, KUBELET, RUNC_INIT, created.cgroup)
    node.join(created, 70)
    node.steering.notice(created)
    node.turn()
    assert node.steering.following == 0
    assert node.adj(70) == KUBELET
    assert node.steering.counters.unknown_pod == (0 if in_cache else 1)


def test_followed_cgroups_are_capped(node: FakeNode) -> None:
    node.steering.max_followed = 1
    node.pods.pods[UID] = app_pod({"oomguard.io/sacrifice": "true"})
    node.steering.notice(node.container())
    node.steering.notice(node.container("e5" * 32))
    node.turn()
    assert node.steering.following == 1
    assert node.steering.counters.dropped == 1


def test_v2_the_first_process_is_signalled_and_the_kill_mode_kept_against_the_runtime(
    tmp_path: Path,
) -> None:
    node = FakeNode(tmp_path, CgroupVersion.V2)
    try:
        node.pods.pods[UID] = app_pod(
            {"oomguard.io/sacrifice": "true", "oomguard.io/oom-kill": "process"}
        )
        node.remembered.add((UID, "app"))  # a restart: oomguard set app's mode before
        created = node.container()
        node.steering.notice(created)
        node.turn()
        assert node.oom_group(created) == 0
        # runc writes the kubelet's memory.oom.group once its init is set up.
        Path(created.directory, "memory.oom.group").write_text("1\n")
        node.process(80, KUBELET, RUNC_INIT, created.cgroup)
        node.join(created, 80)  # cgroup.events: populated 1
        # The clock stands still: only cgroup.events' inotify can have made it look.
        node.steering.step(max_wait_s=5.0)
        assert node.adj(80) == 1000
        assert node.oom_group(created) == 0
        assert node.steering.counters.kill_modes_written == 2
    finally:
        node.steering.close()


def test_v2_a_first_start_s_kill_mode_is_left_to_the_pass(tmp_path: Path) -> None:
    """The pass remembers the kubelet's value before its first write, to put it back."""
    node = FakeNode(tmp_path, CgroupVersion.V2)
    try:
        node.pods.pods[UID] = app_pod({"oomguard.io/oom-kill": "process"})
        created = node.container()
        node.steering.notice(created)
        node.turn()
        assert node.oom_group(created) == 1
        assert node.steering.following == 0  # nothing else asked: not followed
    finally:
        node.steering.close()


def test_the_detector_says_a_new_container_cgroup_and_nothing_else(tmp_path: Path) -> None:
    hierarchy = MemoryHierarchy(CgroupVersion.V2, tmp_path)
    root = tmp_path / "kubepods"
    (root / "burstable").mkdir(parents=True)
    said: list[ContainerCgroupCreated] = []
    watcher = OomWatcher(
        hierarchy,
        root,
        lambda kill: None,
        kmsg_path=None,
        syslog_fallback=False,
        on_new_container=said.append,
    )
    watcher.start()
    try:
        pod_dir = root / "burstable" / f"pod{UID}"
        os.mkdir(pod_dir)  # a new pod: its directory, then its containers'
        os.mkdir(pod_dir / NEW)
        os.mkdir(pod_dir / NEW / "nested")  # a cgroup inside a container: not one
        for _ in range(5):
            watcher.poll_once(max_wait_s=0.05)
    finally:
        watcher.close()
    assert [(s.cgroup, s.pod_uid, s.container_id) for s in said] == [
        (f"/kubepods/burstable/pod{UID}/{NEW}", UID, NEW)
    ]
    assert said[0].directory == str(pod_dir / NEW)
