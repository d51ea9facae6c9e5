"""The warning watcher over cgroup directories made of plain files, on a test clock.

The kernel's side is in tests/system/test_warnings.py; here the watcher's own
book-keeping: which cgroups it watches, and that a failed look does not lose a cgroup.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.records import CgroupIdentity, Constraint, OomWarning
from oomguard.warn.rule import WarnRule
from oomguard.warn.watcher import LIMIT_REFRESH_S, RuleAnswer, WarningWatcher

MIB = 1024 * 1024
LIMIT = 256 * MIB
CONTAINER = f"/kubepods/burstable/pod{uuid.uuid4()}/{secrets.token_hex(32)}"


class Node:
    """A v1 memory hierarchy of plain files, a clock, and a watcher over it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.now = 100.0
        self.cgroups: MappingProxyType[str, str] = MappingProxyType({})
        self.rules: dict[str, WarnRule | None] = {}
        self.warnings: list[OomWarning] = []
        self.watcher = WarningWatcher(
            MemoryHierarchy(CgroupVersion.V1, root),
            lambda: self.cgroups,
            lambda identity: RuleAnswer(self.rules.get(identity.path, WarnRule())),
            self.warnings.append,
            push=False,
            clock=lambda: self.now,
        )

    def make(self, cgroup: str, *, limit: int | None = LIMIT, usage: int = 10 * MIB) -> None:
        d = self.root / cgroup.strip("/")
        d.mkdir(parents=True)
        unlimited = 9223372036854771712
        (d / "memory.limit_in_bytes").write_text(f"{unlimited if limit is None else limit}\n")
        (d / "memory.failcnt").write_text("0\n")
        self.set(cgroup, usage)
        self.cgroups = MappingProxyType({**self.cgroups, cgroup: str(d)})

    def set(self, cgroup: str, usage: int | str, inactive_file: int | str = 0) -> None:
        d = self.root / cgroup.strip("/")
        (d / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (d / "memory.stat").write_text(f"total_rss {usage}\ntotal_inactive_file {inactive_file}\n")

    def run(self, seconds: float, every: float = 0.25) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += every
            self.watcher.step(max_wait_s=0)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    yield n
    n.watcher.close()


def test_a_container_near_its_limit_is_warned_about_once(node: Node) -> None:
    node.make(CONTAINER)
    node.run(1.0)
    assert node.watcher.watched_count == 1
    assert node.warnings == []
    node.set(CONTAINER, LIMIT * 95 // 100)
    node.run(10.0)
    assert len(node.warnings) == 1
    w = node.warnings[0]
    assert (w.cgroup, w.constraint, w.signal) == (CONTAINER, Constraint.CONTAINER, "threshold")
    assert (w.limit_bytes, w.working_set_bytes) == (LIMIT, LIMIT * 95 // 100)


def test_page_cache_at_the_limit_is_not_warned_about(node: Node) -> None:
    node.make(CONTAINER)
    node.set(CONTAINER, LIMIT, inactive_file=LIMIT - 8 * MIB)
    node.run(30.0)
    assert node.warnings == []
    assert node.watcher.counters.full_looks > 0


def test_page_cache_at_the_limit_is_looked_at_as_its_working_set_allows(node: Node) -> None:
    """8 MiB of working set under 248 MiB of cache: the early level (192 MiB) is 1.8 s
    away at the assumed 100 MiB/s, so about one look per 1.8 s, not one a second; and a
    climb of the working set is still seen at the next look."""
    node.make(CONTAINER)
    node.set(CONTAINER, LIMIT, inactive_file=LIMIT - 8 * MIB)
    node.run(1.0)
    before = node.watcher.counters.full_looks
    node.run(60.0)
    looks = node.watcher.counters.full_looks - before
    assert 25 <= looks <= 40, looks
    node.set(CONTAINER, LIMIT, inactive_file=LIMIT * 5 // 100)
    node.run(2.0)
    assert len(node.warnings) == 1
    assert node.warnings[0].working_set_bytes == LIMIT - LIMIT * 5 // 100


def test_headroom_is_to_the_working_set(node: Node) -> None:
    node.make(CONTAINER)
    node.set(CONTAINER, LIMIT, inactive_file=LIMIT - 8 * MIB)
    node.run(1.0)
    [(identity, headroom)] = node.watcher.headrooms().values()
    assert identity.path == CONTAINER
    assert headroom == LIMIT - 8 * MIB


@pytest.mark.parametrize(
    "junk", ["", "max", "9" * 5000, "\x00\xff"], ids=["empty", "max", "huge", "bytes"]
)
def test_a_failed_look_does_not_lose_the_cgroup(node: Node, junk: str) -> None:
    node.make(CONTAINER)
    node.run(1.0)
    node.set(CONTAINER, junk, inactive_file=junk)
    node.run(6.0)  # the next look is due within MAX_INTERVAL_S
    assert node.watcher.watched_count == 0
    node.set(CONTAINER, LIMIT * 95 // 100)
    node.run(LIMIT_REFRESH_S + 1.0)
    assert node.watcher.watched_count == 1
    assert len(node.warnings) == 1


def test_hostile_memory_stat_is_no_crash(node: Node) -> None:
    node.make(CONTAINER)
    node.set(CONTAINER, LIMIT * 95 // 100, inactive_file="9" * 5000)
    node.run(2.0)
    assert len(node.warnings) == 1  # inactive file unknown: usage stands for it


def test_off_is_not_watched_until_the_rule_says_so(node: Node) -> None:
    node.rules[CONTAINER] = None
    node.make(CONTAINER, usage=LIMIT * 95 // 100)
    node.run(5.0)
    assert node.watcher.watched_count == 0 and node.warnings == []
    node.rules[CONTAINER] = WarnRule()
    node.run(LIMIT_REFRESH_S + 1.0)
    assert node.watcher.watched_count == 1 and len(node.warnings) == 1


def test_a_rule_turned_off_stops_the_watch(node: Node) -> None:
    node.make(CONTAINER)
    node.run(1.0)
    node.rules[CONTAINER] = None
    node.run(15.0)
    assert node.watcher.watched_count == 0
    node.set(CONTAINER, LIMIT)
    node.run(5.0)
    assert node.warnings == []


def test_no_limit_no_watch_nested_no_watch(node: Node) -> None:
    unlimited = f"/kubepods/besteffort/pod{uuid.uuid4()}/{secrets.token_hex(32)}"
    node.make(unlimited, limit=None, usage=LIMIT)
    nested = CONTAINER + "/inner"
    node.make(CONTAINER)
    node.make(nested, usage=LIMIT)
    node.run(2.0)
    assert node.watcher.watched_count == 1  # the container only
    assert node.warnings == []


def test_a_removed_cgroup_is_forgotten(node: Node) -> None:
    node.make(CONTAINER)
    node.run(1.0)
    node.cgroups = MappingProxyType({})
    node.run(3.0)
    assert node.watcher.watched_count == 0
    node.run(LIMIT_REFRESH_S + 1.0)
    assert node.watcher.watched_count == 0


def test_identity_is_parsed_from_the_path(node: Node) -> None:
    node.make(CONTAINER, usage=LIMIT)
    node.run(1.0)
    [w] = node.warnings
    ident: CgroupIdentity = w.identity
    assert ident.container_id == CONTAINER.rsplit("/", 1)[1]
    assert ident.qos == "burstable"


def test_a_limit_set_later_is_found(node: Node) -> None:
    """Many unlimited cgroups wait to be asked again; one given a limit is watched."""
    unlimited = [
        f"/kubepods/besteffort/pod{uuid.uuid4()}/{secrets.token_hex(32)}" for _ in range(50)
    ]
    for cgroup in unlimited:
        node.make(cgroup, limit=None, usage=LIMIT)
    node.run(5.0)
    assert node.watcher.watched_count == 0
    resized = node.root / unlimited[7].strip("/")
    (resized / "memory.limit_in_bytes").write_text(f"{LIMIT}\n")
    node.run(LIMIT_REFRESH_S + 1.0)
    assert node.watcher.watched_count == 1
    assert [w.cgroup for w in node.warnings] == [unlimited[7]]
