"""Finding the memory hierarchy from mountinfo, on every layout nodes run."""

from __future__ import annotations

from pathlib import Path

import pytest

from oomguard.cgroups.hierarchy import (
    CgroupVersion,
    HierarchyNotFound,
    MemoryHierarchy,
    choose_memory_mount,
    parse_mountinfo,
)

# Verbatim from the test host (hybrid: v1 controllers, an empty v2 mount).
HYBRID = """\
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
35 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
"""
# A modern node: unified only.
UNIFIED = (
    "26 23 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - "
    "cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n"
)
# cgroup v1 with memory co-mounted under a name with a space (escaped as \\040).
ESCAPED = """\
40 30 0:40 / /mnt/cg\\040mem rw - cgroup cgroup rw,cpu,memory
"""


def test_hybrid_host_uses_v1_memory_mount() -> None:
    h = choose_memory_mount(parse_mountinfo(HYBRID), {"/sys/fs/cgroup/unified": ""})
    assert h == MemoryHierarchy(CgroupVersion.V1, Path("/sys/fs/cgroup/memory"))


def test_unified_host_uses_v2_when_memory_is_a_controller() -> None:
    mounts = parse_mountinfo(UNIFIED)
    h = choose_memory_mount(mounts, {"/sys/fs/cgroup": "cpuset cpu io memory pids"})
    assert h.version is CgroupVersion.V2 and h.mount == Path("/sys/fs/cgroup")
    with pytest.raises(HierarchyNotFound, match="memory controller"):
        choose_memory_mount(mounts, {"/sys/fs/cgroup": "cpu pids"})


def test_escaped_mount_point() -> None:
    h = choose_memory_mount(parse_mountinfo(ESCAPED), {})
    assert h.mount == Path("/mnt/cg mem")


@pytest.mark.parametrize(
    "text", ["", "garbage", "1 2 3 - cgroup", " - - - ", "\x00\x01", "a b c d e - cgroup2"]
)
def test_odd_mountinfo_never_raises(text: str) -> None:
    for m in parse_mountinfo(text):
        assert m.fstype in ("cgroup", "cgroup2")


def test_paths_round_trip() -> None:
    h = MemoryHierarchy(CgroupVersion.V1, Path("/sys/fs/cgroup/memory"))
    assert h.fs_path("/kubepods/pod1/abc") == Path("/sys/fs/cgroup/memory/kubepods/pod1/abc")
    assert h.fs_path("/") == Path("/sys/fs/cgroup/memory")
    assert h.cgroup_of(Path("/sys/fs/cgroup/memory/kubepods/pod1")) == "/kubepods/pod1"
    assert h.cgroup_of("/sys/fs/cgroup/memory") == "/"
    with pytest.raises(ValueError, match="not below"):
        h.cgroup_of("/sys/fs/cgroup/cpu/x")
