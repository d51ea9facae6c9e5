"""Lane 2 smoke test: the VM has cgroup v2 with the memory controller and a real OOM kill."""

from __future__ import annotations

from pathlib import Path

import pytest

from oomguard.cgroups.scratch import ScratchTree

pytestmark = pytest.mark.vm

LIMIT_BYTES = 32 * 2**20
KILL_TIMEOUT_S = 120.0  # emulated: a 32 MiB hog takes seconds, not milliseconds


def read_events(path: Path) -> dict[str, int]:
    pairs = (line.split() for line in path.read_text().splitlines())
    return {key: int(value) for key, value in pairs}


def test_cgroup2_with_memory_controller() -> None:
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    assert any(m[1] == "/sys/fs/cgroup" and m[2] == "cgroup2" for m in mounts)
    assert "memory" in Path("/sys/fs/cgroup/cgroup.controllers").read_text().split()


def test_hog_over_memory_max_is_oom_killed(tree: ScratchTree) -> None:
    child = tree.make("hog", limit_bytes=LIMIT_BYTES)
    events_file = tree.hierarchy.fs_path(child) / "memory.events"
    assert read_events(events_file)["oom_kill"] == 0
    hog = tree.start_hog(child)
    assert hog.wait(timeout=KILL_TIMEOUT_S) == -9
    events = read_events(events_file)
    assert events["oom_kill"] == 1, events
