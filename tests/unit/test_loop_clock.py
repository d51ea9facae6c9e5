"""The loop's timing on an injected clock, without root: when the kernel log is read.

`OomWatcher` runs on a fixture cgroup v2 tree in a temporary directory (inotify on its
memory.events files is the push, as on a real node) with a fake clock that the test
moves; poll() is never left to wait (`max_wait_s=0`). The kernel log is `SyslogReader`
on a fake log (test_klog_syslog.FakeKernelLog), or a stand-in for /dev/kmsg with a pipe
for its descriptor. Seconds of the loop's time pass in milliseconds of the test's.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.detect import loop
from oomguard.detect.loop import OomWatcher
from oomguard.kernel.open_log import OpenedLog
from oomguard.kernel.parse import KmsgRecord
from oomguard.kernel.read_timing import (
    SYSLOG_IDLE_READ_INTERVAL_S,
    SYSLOG_MIN_READ_GAP_S,
    SYSLOG_UNPUSHED_READ_INTERVAL_S,
)
from oomguard.kernel.reader import KernelLogReader
from oomguard.kernel.syslog import LINES_PER_US, SyslogReader
from oomguard.records import OomKill
from tests.unit.test_klog_syslog import CG, REPORT, FakeKernelLog

T0 = 1000.0
RESYNC_S = 60.0
# The report's victim, as a pid no process can have (above the kernel's PID_MAX_LIMIT):
# the loop reads the victim's /proc on its kill line, and must find nothing.
VICTIM = 4194305
KILL_REPORT = [line.replace(b"14888", str(VICTIM).encode()) for line in REPORT]
REPORT_START = 11441347667 * LINES_PER_US  # its first line's position


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Reads:
    """When the loop read the kernel log, on its clock."""

    def __init__(self, reader: KernelLogReader, clock: FakeClock) -> None:
        self.at: list[float] = []
        inner = reader.read_available

        def read_available() -> list[KmsgRecord]:
            self.at.append(clock())
            return inner()

        reader.read_available = read_available  # type: ignore[method-assign]


class PolledLog:
    """A stand-in for /dev/kmsg: a pipe is its descriptor, readable when a line came."""

    source = "kmsg"
    lost_records = 0

    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.last_seq: int | None = None

    @property
    def pollable_fd(self) -> int | None:
        return self._r

    def print(self) -> None:
        os.write(self._w, b"x")

    def read_available(self) -> list[KmsgRecord]:
        with contextlib.suppress(BlockingIOError):
            os.read(self._r, 4096)
        return []

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


class Cgroups:
    """A v2 hierarchy of plain files; `kill` counts a kill the way the kernel shows it."""

    def __init__(self, mount: Path) -> None:
        self.hierarchy = MemoryHierarchy(CgroupVersion.V2, mount)
        self.root = self.hierarchy.fs_path("/kubepods")
        self.write(CG, 0)

    def write(self, cgroup: str, oom_kill: int) -> None:
        d = self.hierarchy.fs_path(cgroup)
        d.mkdir(parents=True, exist_ok=True)
        events = f"low 0\nhigh 0\nmax {oom_kill}\noom {oom_kill}\noom_kill {oom_kill}\n"
        (d / "memory.events.local").write_text(events)
        (d / "memory.max").write_text(f"{32 * 1024 * 1024}\n")
        (d / "memory.peak").write_text(f"{32 * 1024 * 1024}\n")
        (d / "memory.events").write_text(events)  # the file inotify watches: the push


Started = tuple[OomWatcher, list[OomKill], FakeClock]


@pytest.fixture
def start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Started]]:
    made: list[OomWatcher] = []

    def started(
        reader: KernelLogReader,
        cgroups: Cgroups,
        clock: FakeClock | None = None,
        **kwargs: object,
    ) -> Started:
        monkeypatch.setattr(
            loop, "open_kernel_log", lambda *_, **__: OpenedLog(reader, "a test's log")
        )
        clock = clock or FakeClock(T0)
        kills: list[OomKill] = []
        watcher = OomWatcher(
            cgroups.hierarchy,
            cgroups.root,
            kills.append,
            resync_interval_s=RESYNC_S,
            clock=clock,
            **kwargs,  # type: ignore[arg-type]
        )
        watcher.start()
        made.append(watcher)
        return watcher, kills, clock

    yield started
    for watcher in made:
        watcher.close()


def turn_until(watcher: OomWatcher, clock: FakeClock, until: float, step: float) -> None:
    """Turn the loop as time passes, `step` at a time (exact binary fractions)."""
    while clock.now < until:
        clock.now = min(until, clock.now + step)
        watcher.poll_once(max_wait_s=0)


def test_syslog_is_read_on_a_counter_increase_and_then_when_idle(
    tmp_path: Path, start: Callable[..., Started]
) -> None:
    cgroups = Cgroups(tmp_path)
    klog = FakeKernelLog([b"<6>[11440.000000] before"])
    reader = SyslogReader(read_log=klog.read_all, log_size=klog.size)
    watcher, kills, clock = start(reader, cgroups)
    reads = Reads(reader, clock)
    assert watcher.kernel_log_status == (
        f"a test's log, on each cgroup OOM signal and every {SYSLOG_IDLE_READ_INTERVAL_S:g} s"
    )
    watcher.poll_once(max_wait_s=0)
    assert reads.at == [T0]  # the first turn reads what was printed while down
    # A kill is counted just after: the read waits for the gap since the last one.
    clock.now = T0 + 0.0078125
    cgroups.write(CG, 1)
    watcher.poll_once(max_wait_s=0)
    assert reads.at == [T0] and kills == []
    # Its report is printed; the read at the end of the gap finds it.
    klog.lines += KILL_REPORT
    clock.now = T0 + SYSLOG_MIN_READ_GAP_S
    watcher.poll_once(max_wait_s=0)
    assert reads.at == [T0, T0 + SYSLOG_MIN_READ_GAP_S]
    assert [(k.pid, k.cgroup, k.source) for k in kills] == [(VICTIM, CG, "syslog")]
    # Then nothing happens: the next read is the idle one, on the loop's clock.
    turn_until(watcher, clock, T0 + 12.0, 0.25)
    last = T0 + SYSLOG_MIN_READ_GAP_S
    assert reads.at[2:] == [
        pytest.approx(last + SYSLOG_IDLE_READ_INTERVAL_S, abs=0.25),
        pytest.approx(last + 2 * SYSLOG_IDLE_READ_INTERVAL_S, abs=0.25),
    ]


def test_syslog_is_read_often_where_cgroups_cannot_signal(
    tmp_path: Path, start: Callable[..., Started]
) -> None:
    cgroups = Cgroups(tmp_path)
    klog = FakeKernelLog([b"<6>[11440.000000] before"])
    reader = SyslogReader(read_log=klog.read_all, log_size=klog.size)
    watcher, _, clock = start(reader, cgroups, push=False)
    reads = Reads(reader, clock)
    assert watcher.kernel_log_status.endswith(
        f"every {SYSLOG_UNPUSHED_READ_INTERVAL_S:g} s (some cgroups cannot signal their OOMs)"
    )
    watcher.poll_once(max_wait_s=0)
    turn_until(watcher, clock, T0 + 3.0, 0.0625)
    gaps = [b - a for a, b in itertools.pairwise(reads.at)]
    assert gaps == [SYSLOG_UNPUSHED_READ_INTERVAL_S] * 4


def test_a_polled_log_is_read_when_it_says_so_and_at_resync(
    tmp_path: Path, start: Callable[..., Started]
) -> None:
    log = PolledLog()
    watcher, _, clock = start(log, Cgroups(tmp_path))
    reads = Reads(log, clock)
    assert watcher.kernel_log_status == "a test's log"
    watcher.poll_once(max_wait_s=0)
    assert reads.at == [T0]
    turn_until(watcher, clock, T0 + 10.0, 0.5)
    assert reads.at == [T0]  # no timer reads a log that can be polled
    log.print()
    watcher.poll_once(max_wait_s=0)
    assert reads.at == [T0, T0 + 10.0]
    turn_until(watcher, clock, T0 + RESYNC_S, 0.5)
    assert reads.at == [T0, T0 + 10.0, T0 + RESYNC_S]  # the resync reads it too


def test_the_handed_on_position_alone_is_said_at_the_resync_interval(
    tmp_path: Path, start: Callable[..., Started]
) -> None:
    cgroups = Cgroups(tmp_path)
    klog = FakeKernelLog()
    klog.print("before")
    reader = SyslogReader(read_log=klog.read_all, log_size=klog.size)
    marks: list[tuple[float, int | None]] = []
    clock = FakeClock(T0)
    watcher, _, _ = start(
        reader, cgroups, clock, on_handed_on=lambda m: marks.append((clock(), m.log_position))
    )
    watcher.poll_once(max_wait_s=0)
    first = reader.last_seq
    assert marks == [(T0, first)]
    klog.print("a line of no interest")
    turn_until(watcher, clock, T0 + RESYNC_S + 6.0, 0.5)
    # Read at the next idle read, said only once the resync interval has passed.
    assert marks == [(T0, first), (T0 + RESYNC_S, reader.last_seq)]


def test_a_report_whose_count_has_not_risen_holds_the_position_back(
    tmp_path: Path, start: Callable[..., Started]
) -> None:
    # A kill line whose counter never rises (its cgroup is not watched yet): the record
    # comes from the line alone after the grace period, but a restart must still read
    # the report again, or a rise after it would look like a kill whose report was lost.
    cgroups = Cgroups(tmp_path)
    klog = FakeKernelLog([b"<6>[11440.000000] before"])
    reader = SyslogReader(read_log=klog.read_all, log_size=klog.size)
    marks: list[int | None] = []
    clock = FakeClock(T0)
    watcher, kills, _ = start(
        reader, cgroups, clock, on_handed_on=lambda m: marks.append(m.log_position)
    )
    watcher.poll_once(max_wait_s=0)
    unseen = "/kubepods/burstable/podunseen/" + "c3" * 32
    klog.lines += [line.replace(CG.encode(), unseen.encode()) for line in KILL_REPORT]
    turn_until(watcher, clock, T0 + RESYNC_S / 2, 0.125)
    assert [(k.pid, k.cgroup) for k in kills] == [(VICTIM, unseen)]
    said = [p for p in marks if p is not None]
    assert said[-1] == REPORT_START - 1
