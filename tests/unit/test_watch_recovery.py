"""Kills counted while the agent was down, on fixture cgroup trees: whose limit they hit.

The watch reads the files a real hierarchy has (v2: memory.events.local, memory.max,
memory.peak; v1: memory.oom_control, memory.limit_in_bytes, memory.max_usage_in_bytes)
from a temporary directory, without push notifications. The same on the host's real v1
kernel is in tests/system/test_recovery.py; the rule itself in test_classify.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.cgroups.watch import CgroupWatch, CounterChange
from oomguard.detect.loop import OomWatcher
from oomguard.records import Constraint, HandedOn, OomKill
from oomguard.state.checkpoints import Resume

MIB = 1024 * 1024
LIMIT = 32 * MIB
NO_LIMIT_V1 = 9223372036854771712  # what v1 prints for "no limit" (the test host)
UID = "6f1e0c7a-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
KUBEPODS = "/kubepods"
POD = f"{KUBEPODS}/burstable/pod{UID}"
CTR = f"{POD}/{'a1' * 32}"
SIDECAR = f"{POD}/{'b2' * 32}"


class Tree:
    """A fixture hierarchy mounted at a temporary directory."""

    def __init__(self, mount: Path, version: CgroupVersion) -> None:
        self.hierarchy = MemoryHierarchy(version, mount)
        self.version = version
        for cg in (KUBEPODS, f"{KUBEPODS}/burstable", POD, CTR, SIDECAR):
            self.set(cg)

    def set(
        self,
        cgroup: str,
        *,
        oom_kill: int = 0,
        oom: int = 0,
        limit: int | None = None,
        peak: int = 0,
    ) -> None:
        d = self.hierarchy.fs_path(cgroup)
        d.mkdir(parents=True, exist_ok=True)
        if self.version is CgroupVersion.V2:
            events = f"low 0\nhigh 0\nmax {oom * 5}\noom {oom}\noom_kill {oom_kill}\n"
            (d / "memory.events.local").write_text(events + "oom_group_kill 0\n")
            (d / "memory.max").write_text("max\n" if limit is None else f"{limit}\n")
            (d / "memory.peak").write_text(f"{peak}\n")
        else:
            control = f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kill}\n"
            (d / "memory.oom_control").write_text(control)
            (d / "memory.limit_in_bytes").write_text(f"{NO_LIMIT_V1 if limit is None else limit}\n")
            (d / "memory.max_usage_in_bytes").write_text(f"{peak}\n")

    def start(
        self, handed_on: dict[str, int] | None, limit_hits: dict[str, int] | None = None
    ) -> tuple[CgroupWatch, list[CounterChange]]:
        watch = CgroupWatch(self.hierarchy, self.hierarchy.fs_path(KUBEPODS), push=False)
        return watch, watch.start(handed_on, limit_hits)


@pytest.fixture(params=[CgroupVersion.V2, CgroupVersion.V1], ids=["v2", "v1"])
def tree(request: pytest.FixtureRequest, tmp_path: Path) -> Tree:
    return Tree(tmp_path, request.param)


def hit_of(changes: list[CounterChange]) -> dict[str, frozenset[str]]:
    return {c.cgroup: c.limit_hit_paths for c in changes}


def test_a_container_limit_kill(tree: Tree) -> None:
    # v2: the container's own `oom` rose from the 1 handed on; v1: its peak is at its limit.
    tree.set(CTR, oom_kill=2, oom=2, limit=LIMIT, peak=LIMIT)
    _, changes = tree.start({CTR: 1}, {CTR: 1} if tree.version is CgroupVersion.V2 else None)
    assert hit_of(changes) == {CTR: frozenset({CTR})}
    assert changes[0].value == 2


def test_a_pod_limit_kill(tree: Tree) -> None:
    tree.set(CTR, oom_kill=1, peak=LIMIT - 3 * 4096)  # no limit of its own
    tree.set(POD, oom=1, limit=LIMIT, peak=LIMIT)
    tree.set(SIDECAR, oom_kill=1, oom=1, limit=LIMIT, peak=LIMIT)  # before, handed on
    _, changes = tree.start({SIDECAR: 1}, {SIDECAR: 1})
    assert hit_of(changes) == {CTR: frozenset({POD})}


def test_no_limit_reached_is_no_evidence(tree: Tree) -> None:
    tree.set(CTR, oom_kill=1, limit=LIMIT, peak=20 * MIB)
    _, changes = tree.start({}, {})
    assert hit_of(changes) == {CTR: frozenset()}


def test_v2_counts_outrank_a_full_container(tmp_path: Path) -> None:
    # A node OOM in a container whose page cache keeps it at its limit: on v2 no `oom`
    # count rose anywhere, and the peak is not asked.
    tree = Tree(tmp_path, CgroupVersion.V2)
    tree.set(CTR, oom_kill=1, oom=4, limit=LIMIT, peak=LIMIT)
    _, changes = tree.start({}, {CTR: 4})
    assert hit_of(changes) == {CTR: frozenset()}


def test_v2_without_counts_kept_falls_back_to_peaks(tmp_path: Path) -> None:
    # A snapshot written before the counts were kept: unknown, so the peaks tell.
    tree = Tree(tmp_path, CgroupVersion.V2)
    tree.set(CTR, oom_kill=1, oom=4, limit=LIMIT, peak=LIMIT)
    _, changes = tree.start({}, None)
    assert hit_of(changes) == {CTR: frozenset({CTR})}


def test_no_snapshot_no_recovery(tree: Tree) -> None:
    tree.set(CTR, oom_kill=3, oom=3, limit=LIMIT, peak=LIMIT)
    watch, changes = tree.start(None)
    assert changes == []
    if tree.version is CgroupVersion.V2:
        assert watch.limit_hit_counts() == {CTR: 3}


def test_v1_keeps_no_counts(tmp_path: Path) -> None:
    tree = Tree(tmp_path, CgroupVersion.V1)
    tree.set(CTR, oom_kill=1, limit=LIMIT, peak=LIMIT)
    watch, _ = tree.start({})
    assert watch.limit_hit_counts() is None


def test_v2_a_count_that_rose_is_held_until_its_kills_are_handed_on(tmp_path: Path) -> None:
    tree = Tree(tmp_path, CgroupVersion.V2)
    tree.set(CTR, oom_kill=2, oom=3, limit=LIMIT, peak=LIMIT)
    tree.set(POD, oom=1)
    before = time.monotonic()
    watch, changes = tree.start({CTR: 1}, {CTR: 2, POD: 1})
    after = time.monotonic()
    assert hit_of(changes) == {CTR: frozenset({CTR})}
    # A restart now, its kill not yet handed on, must see the rise again.
    assert watch.limit_hit_counts(before) == {CTR: 2, POD: 1}
    assert watch.limit_hit_counts(after + CgroupWatch.LIMIT_HIT_WINDOW_S) == {CTR: 3, POD: 1}


def test_v2_a_live_limit_hit_is_held_for_the_window(tmp_path: Path) -> None:
    tree = Tree(tmp_path, CgroupVersion.V2)
    tree.set(CTR, limit=LIMIT)
    watch, _ = tree.start({}, {})
    assert watch.limit_hit_counts() == {}
    tree.set(CTR, oom=1, oom_kill=1, limit=LIMIT, peak=LIMIT)
    before = time.monotonic()
    (change,) = watch.resync()
    after = time.monotonic()
    assert change.limit_hit_paths == frozenset({CTR})  # live evidence, as before
    assert watch.limit_hit_counts(before + 1.0) == {}
    assert watch.limit_hit_counts(after + CgroupWatch.LIMIT_HIT_WINDOW_S) == {CTR: 1}


def test_v2_the_engine_hands_the_counts_on_and_a_restart_uses_them(tmp_path: Path) -> None:
    tree = Tree(tmp_path, CgroupVersion.V2)
    tree.set(CTR, limit=LIMIT)
    root = tree.hierarchy.fs_path(KUBEPODS)

    def run(
        counters: dict[str, int] | None, limit_hits: dict[str, int] | None
    ) -> tuple[list[OomKill], list[HandedOn]]:
        kills: list[OomKill] = []
        marks: list[HandedOn] = []
        watcher = OomWatcher(
            tree.hierarchy,
            root,
            kills.append,
            kmsg_path=None,
            push=False,
            resume=Resume(counters=counters, limit_hits=limit_hits),
            on_handed_on=marks.append,
        )
        watcher.start()
        try:
            watcher.poll_once(max_wait_s=0)
        finally:
            watcher.close()
        return kills, marks

    # First run: the pod's limit was hit once before (history), no kill anywhere.
    tree.set(POD, oom=1, limit=LIMIT)
    kills, marks = run(None, None)
    assert kills == []
    assert [(m.complete, m.oom_kill, m.limit_hits) for m in marks] == [(True, {}, {POD: 1})]
    # Down: the container hits its own limit and is killed.
    tree.set(CTR, oom_kill=1, oom=1, limit=LIMIT, peak=LIMIT)
    (kill,), marks = run({}, {POD: 1})
    assert (kill.cgroup, kill.source, kill.constraint) == (CTR, "counters", Constraint.CONTAINER)
    # Its count is held back for now: a crash before the kill is delivered finds it again.
    assert marks[0].oom_kill == {CTR: 1} and marks[0].limit_hits == {POD: 1}
