"""Warnings before the kill, on the host's cgroup v1 with real workloads.

Container-shaped scratch cgroups with real limits, real processes that grow into them
or stream a file through them, and the `WarningWatcher` thread as the agent runs it:
a leak is warned about once and before the kernel kills it; page cache at the limit is
never warned about; a spike that recovers is warned about once, not in a stream; a
cgroup whose rule is "off" is not watched. The kill is the kernel's own (the cgroup's
`oom_kill` counter and the grower dying of SIGKILL), not an assumption.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType

import pytest

from oomguard.cgroups.counters import parse_flat_keyed
from oomguard.cgroups.hierarchy import MemoryHierarchy
from oomguard.cgroups.scratch import MIB, ScratchTree
from oomguard.records import CgroupIdentity, Constraint, OomWarning
from oomguard.warn.policy import parse_warn_at
from oomguard.warn.rule import WarnRule
from oomguard.warn.watcher import RuleAnswer, WarningWatcher
from tests.watch_process import start_watch

pytestmark = pytest.mark.system

DEFAULT_RULE = WarnRule()  # warn at 90 %, kernel signals and growth from 75 %


@dataclass(frozen=True)
class Warned:
    """One warning and when the test saw it (monotonic seconds)."""

    at: float
    warning: OomWarning


class Warnings:
    """A running WarningWatcher over the cgroups a test adds, and what it handed out.

    The cgroup set is what the detector publishes in the agent (cgroup -> directory,
    replaced whole on a change); the rule per cgroup is what `rule_for` answers there
    (None: not watched, as for `oomguard.io/warn-at: "off"`).
    """

    def __init__(self, hierarchy: MemoryHierarchy, *, push: bool) -> None:
        self.hierarchy = hierarchy
        self._cgroups: MappingProxyType[str, str] = MappingProxyType({})
        self._rules: dict[str, WarnRule | None] = {}
        self._lock = threading.Lock()
        self.seen: list[Warned] = []
        self.watcher = WarningWatcher(
            hierarchy, lambda: self._cgroups, self._rule_for, self._on_warning, push=push
        )

    def _rule_for(self, identity: CgroupIdentity) -> RuleAnswer:
        return RuleAnswer(self._rules.get(identity.path, DEFAULT_RULE))

    def _on_warning(self, warning: OomWarning) -> None:
        with self._lock:
            self.seen.append(Warned(time.monotonic(), warning))

    def add(self, cgroup: str, rule: WarnRule | None = DEFAULT_RULE) -> None:
        self._rules[cgroup] = rule
        cgroups = dict(self._cgroups)
        cgroups[cgroup] = str(self.hierarchy.fs_path(cgroup))
        self._cgroups = MappingProxyType(cgroups)
        self.watcher.notice(cgroup, cgroups[cgroup])

    def of(self, cgroup: str) -> list[Warned]:
        with self._lock:
            return [w for w in self.seen if w.warning.cgroup == cgroup]

    def wait_watched(self, n: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.watcher.watched_count < n and time.monotonic() < deadline:
            time.sleep(0.01)


@pytest.fixture
def warnings(hierarchy: MemoryHierarchy) -> Iterator[Callable[..., Warnings]]:
    made: list[Warnings] = []

    def start(push: bool = True) -> Warnings:
        w = Warnings(hierarchy, push=push)
        w.watcher.start()
        made.append(w)
        return w

    yield start
    for w in made:
        w.watcher.close()


def container_cgroup(tree: ScratchTree, limit_bytes: int) -> str:
    """A container's cgroup as kubelet (cgroupfs driver) and the runtime make it."""
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    return tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=limit_bytes)


def oom_kills(tree: ScratchTree, cgroup: str) -> int:
    text = (tree.hierarchy.fs_path(cgroup) / "memory.oom_control").read_text()
    return parse_flat_keyed(text).get("oom_kill", 0)


def wait_for_kill(
    tree: ScratchTree, cgroup: str, proc: subprocess.Popen[bytes], timeout_s: float
) -> float:
    """When the kernel's kill was first seen (its counter, or the process's death)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if oom_kills(tree, cgroup) > 0 or proc.poll() is not None:
            return time.monotonic()
        time.sleep(0.005)
    raise AssertionError(f"no OOM kill in {cgroup} within {timeout_s} s")


def peak_usage(tree: ScratchTree, cgroup: str) -> int:
    return int((tree.hierarchy.fs_path(cgroup) / "memory.max_usage_in_bytes").read_text())


def usage(tree: ScratchTree, cgroup: str) -> int:
    return int((tree.hierarchy.fs_path(cgroup) / "memory.usage_in_bytes").read_text())


def lead_time_line(label: str, warned: Warned, killed_at: float) -> str:
    w = warned.warning
    return (
        f"[lead time] {label}: warned {killed_at - warned.at:.2f} s before the kill, "
        f"signal {w.signal}, working set {w.working_set_bytes / MIB:.0f} of "
        f"{w.limit_bytes / MIB:.0f} MiB"
    )


# ----- (1) a leak is warned about once, before its kill -----------------------------------


LEAKS = [
    pytest.param(512, 50, True, id="512MiB-50MiBps-pushed"),
    pytest.param(256, 20, True, id="256MiB-20MiBps-pushed"),
    pytest.param(256, 20, False, id="256MiB-20MiBps-sampled"),
    # Slow: the limit is 6 s away at the early level, well inside the 30 s horizon.
    pytest.param(256, 10, True, id="256MiB-10MiBps-pushed"),
]


@pytest.mark.parametrize(("limit_mib", "rate_mib_s", "push"), LEAKS)
def test_a_leak_is_warned_once_before_its_kill(
    tree: ScratchTree,
    warnings: Callable[..., Warnings],
    limit_mib: int,
    rate_mib_s: int,
    push: bool,
) -> None:
    limit = limit_mib * MIB
    w: Warnings = warnings(push=push)
    container = container_cgroup(tree, limit)
    w.add(container)
    w.wait_watched(1)
    assert w.watcher.watched_count == 1
    grower = tree.start_grower(container, rate_mib_s, name="leaky")
    killed_at = wait_for_kill(tree, container, grower, timeout_s=3 * limit_mib / rate_mib_s)
    assert grower.wait(timeout=10) == -9
    assert oom_kills(tree, container) == 1
    time.sleep(1.0)  # what the watcher does after the kill: nothing more to say

    warned = w.of(container)
    assert len(warned) == 1, [x.warning for x in warned]
    first = warned[0]
    assert first.at < killed_at
    print(lead_time_line(f"{limit_mib} MiB at {rate_mib_s} MiB/s, push={push}", first, killed_at))
    warning = first.warning
    assert warning.signal in ("threshold", "reclaim")
    assert warning.constraint is Constraint.CONTAINER
    assert warning.identity.container_id == container.rsplit("/", 1)[1]
    assert warning.identity.pod_uid is not None and warning.identity.qos == "burstable"
    assert warning.limit_bytes == limit
    assert warning.warn_at_percent == 90
    # Anonymous memory only: the working set is the usage, between the early level and
    # the limit, when it was warned about.
    assert DEFAULT_RULE.early_bytes(limit) <= warning.working_set_bytes <= limit
    assert warning.working_set_bytes <= warning.usage_bytes <= limit
    if warning.growth_bytes_per_s is not None:
        # The growth measured is the grower's own pace (within a third: the looks are
        # the watcher's, not in step with the grower's allocations).
        assert warning.growth_bytes_per_s == pytest.approx(rate_mib_s * MIB, rel=0.34)


# ----- (2) page cache at the limit is no danger ---------------------------------------------


def uncached_file(directory: Path, size_bytes: int) -> Path:
    """A file on disk whose pages are not in the page cache: whoever reads it next is
    charged for them."""
    path = directory / "big.bin"
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for _ in range(size_bytes // MIB):
            f.write(block)
        f.flush()
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return path


def test_page_cache_filling_the_limit_is_not_warned_about(
    tree: ScratchTree, warnings: Callable[..., Warnings], tmp_path: Path
) -> None:
    limit = 256 * MIB
    w: Warnings = warnings()
    path = uncached_file(tmp_path, limit * 3 // 2)
    container = container_cgroup(tree, limit)
    w.add(container)
    w.wait_watched(1)
    reader = tree.start_reader(container, path, name="reader")
    full, deadline = 0, time.monotonic() + 20.0
    while time.monotonic() < deadline:
        if usage(tree, container) >= limit * 95 // 100:
            full += 1
        time.sleep(0.5)
    assert reader.poll() is None, "the reader was killed: page cache is reclaimable"
    assert oom_kills(tree, container) == 0
    # The workload really is at its limit most of the time, and the watcher looked
    # closely (full looks: working set, not just usage).
    assert full >= 20, f"usage reached 95 % of the limit in only {full} of 40 looks"
    assert w.watcher.counters.full_looks >= 5
    assert w.of(container) == []


def test_a_parked_working_set_is_warned_about_when_the_kernel_must_reclaim_for_it(
    tree: ScratchTree, warnings: Callable[..., Warnings], tmp_path: Path
) -> None:
    """80 % of the limit held by a process is no warning while nothing presses on it;
    page cache then filling the rest makes the kernel reclaim at the limit to stay
    under it (v1: vmpressure signals, memory.failcnt stays 0 on kernel 6.18): one
    warning, `reclaim`."""
    limit = 256 * MIB
    path = uncached_file(tmp_path, limit * 3 // 2)
    container = container_cgroup(tree, limit)
    grower = tree.start_grower(container, 100, top_mib=205, hold_s=3600.0, name="parked")
    held, deadline = 0, time.monotonic() + 10.0
    while held < 204 * MIB and time.monotonic() < deadline:  # up, and no longer growing
        before = usage(tree, container)
        time.sleep(0.3)
        if abs(usage(tree, container) - before) < MIB:
            held = before
    assert held >= 204 * MIB, f"the grower holds {held / MIB:.0f} MiB, not 205"
    w = warnings()
    w.add(container)  # watched from here: no growth to see, just 80 % held
    w.wait_watched(1)
    time.sleep(5.0)
    assert w.of(container) == []
    reader = tree.start_reader(container, path, name="reader")
    deadline = time.monotonic() + 15.0
    while not w.of(container) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3.0)
    assert grower.poll() is None and reader.poll() is None
    assert oom_kills(tree, container) == 0
    warned = w.of(container)
    assert len(warned) == 1, [x.warning for x in warned]
    warning = warned[0].warning
    assert warning.signal == "reclaim"
    assert warning.reclaims_10s is not None and warning.reclaims_10s > 0
    assert DEFAULT_RULE.early_bytes(limit) <= warning.working_set_bytes < limit * 90 // 100
    assert warning.usage_bytes > warning.working_set_bytes  # the page cache on top


# ----- (3) a spike that recovers: one warning, not a stream ----------------------------------


def test_a_spike_that_recovers_is_warned_about_once(
    tree: ScratchTree, warnings: Callable[..., Warnings]
) -> None:
    limit = 256 * MIB
    top_mib = 243  # 95 % of the limit
    w: Warnings = warnings()
    container = container_cgroup(tree, limit)
    w.add(container)
    w.wait_watched(1)
    grower = tree.start_grower(container, 50, top_mib=top_mib, hold_s=5.0, name="spiky")
    assert grower.stdout is not None
    # Up in ~5 s, held 5 s at 95 %, then freed: wait for "freed" (or its death).
    ready, _, _ = select.select([grower.stdout], [], [], 30.0)
    assert ready, "the grower did not free its memory in 30 s"
    assert grower.stdout.readline() == b"freed\n"
    freed_at = time.monotonic()
    assert peak_usage(tree, container) >= limit * 93 // 100
    time.sleep(15.0)  # low from here on
    assert grower.poll() is None and oom_kills(tree, container) == 0
    assert usage(tree, container) < limit // 4

    warned = w.of(container)
    assert len(warned) == 1, [x.warning for x in warned]
    assert warned[0].at < freed_at
    assert warned[0].warning.working_set_bytes >= DEFAULT_RULE.early_bytes(limit)
    assert w.watcher.counters.full_looks >= 10  # it was looked at while it hovered


# ----- (3b) after the kill: the victim's memory is no new episode --------------------------

SHMEM_WRITER = r"""
import os, sys
sys.stdin.readline()
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT, 0o600)
chunk = b"x" * (1 << 20)
while True:
    os.write(fd, chunk)
"""


def test_no_warning_after_the_kill_while_the_memory_is_still_charged(
    tree: ScratchTree, warnings: Callable[..., Warnings]
) -> None:
    """A writer fills tmpfs (shmem: the kernel cannot drop it) past the limit in a
    blink and is killed; its file stays charged to the cgroup at ~96 % of the limit.
    The looks after the kill see a working set above the threshold, the state a look
    racing any kill sees before the victim's memory is freed: they must not start an
    episode (the Event would be an OOMImminent stamped after the OOMKilled)."""
    limit = 256 * MIB
    w: Warnings = warnings()
    container = container_cgroup(tree, limit)
    w.add(container)
    w.wait_watched(1)
    shm = Path("/dev/shm") / f"oomguard-test-{secrets.token_hex(6)}"
    try:
        writer = tree.spawn(container, SHMEM_WRITER, "shmfill", str(shm))
        assert writer.stdin is not None
        writer.stdin.write(b"go\n")
        writer.stdin.flush()
        killed_at = wait_for_kill(tree, container, writer, timeout_s=20.0)
        assert writer.wait(timeout=10) == -9
        assert oom_kills(tree, container) == 1
        time.sleep(2.0)  # several looks at a cgroup still near its limit
        assert usage(tree, container) >= limit * 90 // 100  # still charged: the trap
        after = [x.warning for x in w.of(container) if x.at > killed_at]
        assert after == [], after
        assert w.watcher.counters.after_kill == 1
    finally:
        shm.unlink(missing_ok=True)


# ----- (4) "off": not watched -----------------------------------------------------------------


def test_a_cgroup_whose_rule_is_off_is_not_watched(
    tree: ScratchTree, warnings: Callable[..., Warnings]
) -> None:
    limit = 128 * MIB
    w: Warnings = warnings()
    opted_out = container_cgroup(tree, limit)
    watched = container_cgroup(tree, limit)
    w.add(opted_out, rule=None if parse_warn_at("off") is None else DEFAULT_RULE)
    w.add(watched)
    w.wait_watched(1)
    growers = {c: tree.start_grower(c, 40, name="leaky") for c in (opted_out, watched)}
    for cgroup, grower in growers.items():
        wait_for_kill(tree, cgroup, grower, timeout_s=20.0)
        assert grower.wait(timeout=10) == -9
    time.sleep(1.0)
    assert w.watcher.watched_count == 1
    assert len(w.of(watched)) == 1  # the same leak, watched: warned
    assert w.of(opted_out) == []


# ----- the product as a user runs it ----------------------------------------------------------


def test_watch_prints_the_warning_before_the_kill(tree: ScratchTree) -> None:
    """`oomguard watch --json`: an "oom_warning" line for a leaking container, then its
    "oom_kill" line."""
    limit = 256 * MIB
    container = container_cgroup(tree, limit)
    proc = start_watch(tree)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        assert "watching" in proc.stderr.readline()
        time.sleep(1.0)  # the warning thread's first snapshot of the detector's cgroups
        grower = tree.start_grower(container, 25, name="leaky")
        records: list[dict[str, object]] = []
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and not any(r.get("kind") == "oom_kill" for r in records):
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break
                records.append(json.loads(line))
        assert grower.wait(timeout=10) == -9
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    kinds = [(r.get("kind"), r.get("cgroup")) for r in records]
    assert kinds == [("oom_warning", container), ("oom_kill", container)], records
    warning = records[0]
    assert warning["limit_bytes"] == limit
    assert warning["signal"] in ("threshold", "reclaim")
    ws = warning["working_set_bytes"]
    assert isinstance(ws, int) and DEFAULT_RULE.early_bytes(limit) <= ws <= limit
    assert warning["container_id"] == container.rsplit("/", 1)[1]
    warned_at, killed_at = (
        datetime.fromisoformat(str(r["time"]).replace("Z", "+00:00")) for r in records
    )
    assert warned_at < killed_at
    print(
        f"[lead time] oomguard watch, {limit // MIB} MiB at 25 MiB/s: warned "
        f"{(killed_at - warned_at).total_seconds():.2f} s before the kill (record times)"
    )
