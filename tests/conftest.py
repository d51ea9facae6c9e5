"""Shared fixtures for the lanes that cause real OOM kills (system on v1, vm on v2).

Each lane's conftest provides `hierarchy` (and skips when its kernel set-up is not
there); `tree` and `watch` here build on it. Every cgroup is made below the test
process's own memory cgroup (never beside it) and removed after the test, failed or
not; `tree` then checks that nothing of the test is left.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oomguard.cgroups.hierarchy import MemoryHierarchy
from oomguard.cgroups.scratch import ScratchTree
from oomguard.detect.loop import OomWatcher
from oomguard.records import OomKill


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

    def skip_if_the_kernel_could_not_tell(self, why: str) -> None:
        """Skip where the watcher left a victim unknown because the kernel could not tell.

        Other processes OOM-killed on this host meanwhile (other tests) print bare kill
        lines too; one printed as close to our kill's counter increase as our own line
        leaves that increase's victim unknown (`KillJoiner.ambiguous`). Nothing else
        does: a victim left unknown otherwise, or named wrongly, fails the test.
        """
        ambiguous = self.watcher.joiner.ambiguous
        if ambiguous:
            pytest.skip(
                f"{why}: {ambiguous} kill(s) had another process's bare kill line as close "
                "in time as their own (other OOM kills on this host)"
            )


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
