"""The reconciler's index of container cgroups, on a directory tree (no root, no cgroupfs).

The rule under test: the whole tree is walked only when it may pay off, once per pass
for a container not seen before, then at most every `rescan_interval_s` for one that
stays missing (a pod whose cgroup never comes must not make every pass walk the tree).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.k8s.pod_cache import normalize_pod_key
from oomguard.steer.cgroup_index import CgroupIndex, ContainerCgroup

UID = "6f1e0c7a-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
A, B, C = "a1" * 32, "b2" * 32, "c3" * 32
CGROUPFS = f"/kubepods/burstable/pod{UID}"
SYSTEMD = (
    f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID.replace('-', '_')}.slice"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Tree:
    def __init__(self, root: Path) -> None:
        self.hierarchy = MemoryHierarchy(CgroupVersion.V1, root)
        self.root = root
        self.clock = Clock()
        self.index = CgroupIndex(self.hierarchy, root, rescan_interval_s=10.0, clock=self.clock)

    def make(self, cgroup: str) -> ContainerCgroup:
        directory = self.hierarchy.fs_path(cgroup)
        directory.mkdir(parents=True)
        return ContainerCgroup(cgroup, str(directory), normalize_pod_key(UID))

    def remove(self, cgroup: str) -> None:
        self.hierarchy.fs_path(cgroup).rmdir()

    def pass_(self, *container_ids: str, running: bool = True) -> list[ContainerCgroup | None]:
        self.index.begin_pass()
        found = [self.index.locate(cid, running) for cid in container_ids]
        self.index.end_pass()
        return found


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


@pytest.mark.parametrize(
    "container",
    [f"{CGROUPFS}/{A}", f"{SYSTEMD}/cri-containerd-{A}.scope", f"{SYSTEMD}/crio-{A}.scope"],
    ids=["cgroupfs", "systemd containerd", "systemd cri-o"],
)
def test_a_container_is_found_by_its_id(tree: Tree, container: str) -> None:
    made = tree.make(container)
    tree.make(f"{container}/worker")  # nested cgroups are not containers
    assert tree.index.rescan() == 1
    assert tree.pass_(A) == [made]
    assert tree.index.pass_rescans == 0


def test_a_new_container_costs_one_rescan_per_pass(tree: Tree) -> None:
    made = tree.make(f"{CGROUPFS}/{A}")
    assert tree.pass_(A, B, C) == [made, None, None]
    assert tree.index.pass_rescans == 1  # for A; B and C then wait their turn


def test_a_missing_container_is_looked_for_again_only_after_the_interval(tree: Tree) -> None:
    assert tree.pass_(A) == [None]
    made = tree.make(f"{CGROUPFS}/{A}")
    tree.clock.now += 9.0
    assert tree.pass_(A) == [None] and tree.index.pass_rescans == 0
    tree.clock.now += 1.0
    assert tree.pass_(A) == [made] and tree.index.pass_rescans == 1


def test_a_stopped_container_never_causes_a_rescan(tree: Tree) -> None:
    tree.index.rescan()
    made = tree.make(f"{CGROUPFS}/{A}")
    assert tree.pass_(A, running=False) == [None]
    assert tree.index.pass_rescans == 0
    tree.index.rescan()
    assert tree.pass_(A, running=False) == [made]


def test_a_removed_cgroup_drops_out(tree: Tree) -> None:
    tree.make(f"{CGROUPFS}/{A}")
    tree.index.rescan()
    tree.remove(f"{CGROUPFS}/{A}")
    assert tree.pass_(A) == [None]
