"""Lane 2 (cgroup v2 with the memory controller, inside a qemu VM).

Tests marked ``vm`` run only inside the lane-2 VM, which sets ``OOMGUARD_IN_VM=1``; on the
host they are collected and skipped. Run them with ``python tests/vm/run_lane2.py``.
"""

from __future__ import annotations

import os

import pytest

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy, detect_memory_hierarchy

IN_VM = os.environ.get("OOMGUARD_IN_VM") == "1"
SKIP_REASON = "runs inside the lane-2 VM: python tests/vm/run_lane2.py"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_VM:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if item.get_closest_marker("vm") is not None:
            item.add_marker(skip)


@pytest.fixture
def hierarchy() -> MemoryHierarchy:
    """The VM's cgroup v2 hierarchy (the test runs in the root cgroup there)."""
    if not IN_VM:
        pytest.skip(SKIP_REASON)
    found = detect_memory_hierarchy()
    if found.version is not CgroupVersion.V2:
        pytest.fail(f"lane 2 expects cgroup v2 with the memory controller, found {found}")
    return found
