"""Lane 1 fixtures: real cgroups nested in our own, real processes, real OOM kills.

Every cgroup is made below the test process's own memory cgroup (never beside it)
and removed after the test, failed or not; the `tree` fixture then checks that
nothing of the test is left.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oomguard.cgroups.hierarchy import (
    CgroupVersion,
    HierarchyNotFound,
    MemoryHierarchy,
    detect_memory_hierarchy,
)
from oomguard.engine import OomWatcher
from oomguard.records import OomKill
from oomguard.scratch import ScratchTree


def _lane1_hierarchy() -> MemoryHierarchy:
    if os.geteuid() != 0:
        pytest.skip("lane 1 needs root (real cgroups and OOM kills)")
    try:
        hierarchy = detect_memory_hierarchy()
    except HierarchyNotFound as exc:
        pytest.skip(str(exc))
    if hierarchy.version is not CgroupVersion.V1:
        pytest.skip("lane 1 runs on the host's cgroup v1; v2 is covered by the VM lane")
    return hierarchy


@pytest.fixture
def hierarchy() -> MemoryHierarchy:
    return _lane1_hierarchy()


@pytest.fixture
def tree(hierarchy: MemoryHierarchy) -> Iterator[ScratchTree]:
    t = ScratchTree(hierarchy, f"oomguard-test-{uuid.uuid4().hex[:12]}")
    try:
        yield t
    finally:
        t.close()
    assert not t.top.exists(), f"test left {t.top} behind"


class Collector:
    """A running watcher and the records it produced."""

    def __init__(self, watcher: OomWatcher, kills: list[OomKill]) -> None:
        self.watcher = watcher
        self.kills = kills

    def wait_for(self, n: int, timeout_s: float = 30.0) -> list[OomKill]:
        deadline = time.monotonic() + timeout_s
        while len(self.kills) < n and time.monotonic() < deadline:
            self.watcher.poll_once(max_wait_s=0.1)
        return list(self.kills)

    def settle(self, seconds: float) -> list[OomKill]:
        """Keep the loop turning for a while, to show nothing more arrives."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.watcher.poll_once(max_wait_s=0.1)
        return list(self.kills)


@pytest.fixture
def watch(tree: ScratchTree) -> Iterator[Callable[..., Collector]]:
    made: list[OomWatcher] = []

    def start(root: Path | None = None, **kwargs: object) -> Collector:
        kills: list[OomKill] = []
        w = OomWatcher(tree.hierarchy, root or tree.top, kills.append, **kwargs)  # type: ignore[arg-type]
        w.start()
        made.append(w)
        return Collector(w, kills)

    yield start
    for w in made:
        w.close()
