"""Lane 1: the host's cgroup v1 memory controller, as root."""

from __future__ import annotations

import os

import pytest

from oomguard.cgroups.hierarchy import (
    CgroupVersion,
    HierarchyNotFound,
    MemoryHierarchy,
    detect_memory_hierarchy,
)


def lane1_hierarchy() -> MemoryHierarchy:
    """The host's v1 memory hierarchy, or skip with the reason lane 1 cannot run."""
    if os.geteuid() != 0:
        pytest.skip("lane 1 needs root (real cgroups and OOM kills)")
    try:
        found = detect_memory_hierarchy()
    except HierarchyNotFound as exc:
        pytest.skip(str(exc))
    if found.version is not CgroupVersion.V1:
        pytest.skip("lane 1 runs on the host's cgroup v1; v2 is covered by the VM lane")
    return found


@pytest.fixture
def hierarchy() -> MemoryHierarchy:
    return lane1_hierarchy()
