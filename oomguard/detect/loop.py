"""The node-side loop: wait on every kernel signal, hand out one record per kill.

One thread, one poll() over the kernel log's descriptor, the inotify descriptor, v1's
per-cgroup eventfds and a wake-up eventfd for stop(). Idle, it sleeps in poll()
until the next resync, which is what keeps a node with hundreds of containers at a
negligible CPU cost.

The kernel log is whichever reader `open_kernel_log` could open (/dev/kmsg, else
syslog(2), else none: counters only); the loop sees only `KernelLogReader`. A reader
with a descriptor is polled; one without (syslog(2)) is read when `ReadTiming` says a
read is due. Every time is taken from the injected `clock` (CLOCK_MONOTONIC by
default), so the loop's timing can be driven by a test.

The kernel log's timestamps are put on that clock by a `KernelClock` that learns the
offset from every read; the joiner pairs kill lines that name no cgroup with counter
increases by those times, and decides once the log is read past them.

A restarted agent passes where the last run got to (`Resume`: the kernel log position
per reader, the counters and `oom` counts handed on); the loop says how far it has got
in `HandedOn` marks (`on_handed_on`, made by `ProgressMarks`).

A container cgroup the watch saw created is said at once, in the turn that woke for it
(`on_new_container`, one `ContainerCgroupCreated` each): the runtime starts the
container's first process right after, and whoever steers it must not wait for a turn
of its own. Without the callback the watch does not even keep them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import select
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from oomguard.cgroups.counters import MemoryUse, read_memory_use
from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.cgroups.path import parse_cgroup_path
from oomguard.cgroups.watch import CgroupWatch, CounterChange
from oomguard.detect.join import KillJoiner
from oomguard.detect.main_process import Captured, MainProcessProbe, alone
from oomguard.detect.marks import ProgressMarks
from oomguard.kernel.clock import KernelClock
from oomguard.kernel.open_log import NOT_OPENED, OpenedLog, open_kernel_log
from oomguard.kernel.parse import KmsgRecord, OomReportAssembler
from oomguard.kernel.read_timing import SYSLOG_IDLE_READ_INTERVAL_S, ReadTiming
from oomguard.kernel.reader import ReadFailed
from oomguard.records import (
    CgroupKind,
    ContainerCgroupCreated,
    HandedOn,
    KernelOomKill,
    OomKill,
)
from oomguard.state.checkpoints import Resume

log = logging.getLogger(__name__)

# Victims captured but not yet in a record: bounded, a storm never grows it.
_MAX_CAPTURED = 1024
# A victim is reaped milliseconds after its kill line; a line older than this names a
# pid that may have been reused: its /proc is not asked.
_MAX_CAPTURE_AGE_S = 1.0
_POLL_FLAGS = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP

# A read begun this soon after a kernel push (kmsg POLLIN, a cgroup's OOM eventfd or
# memory.events inotify) returns lines printed just before it: its bound on the kernel
# clock is tight enough to anchor the kill times (kclock.py).
PROMPT_READ_S = 0.01


class OomWatcher:
    """Watches cgroups below `root` and the kernel log; calls `on_kill` once per kill."""

    def __init__(
        self,
        hierarchy: MemoryHierarchy,
        root: Path,
        on_kill: Callable[[OomKill], None],
        *,
        kmsg_path: str | None = "/dev/kmsg",
        push: bool = True,
        resync_interval_s: float = 60.0,
        grace_s: float = 2.0,
        syslog_fallback: bool = True,
        syslog_idle_read_interval_s: float = SYSLOG_IDLE_READ_INTERVAL_S,
        resume: Resume | None = None,
        on_handed_on: Callable[[HandedOn], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_new_container: Callable[[ContainerCgroupCreated], None] | None = None,
    ) -> None:
        self.hierarchy = hierarchy
        self.root = Path(root)
        self.on_kill = on_kill
        self.on_new_container = on_new_container
        self.resync_interval_s = resync_interval_s
        self._clock = clock
        self.watch = CgroupWatch(
            hierarchy, self.root, push=push, track_created=on_new_container is not None
        )
        # None: only new records and counter baselines from disk. A restarted agent passes
        # where it had got to, and the kills it missed while down come out of the first
        # turn: read back from the kernel log, and from the counters, classified by the
        # `oom` counts it had (cgroup v2) or by peaks.
        self._resume = resume or Resume()
        # /dev/kmsg at `kmsg_path`, else syslog(2) (`syslog_fallback`), else none.
        self._open_kernel_log = functools.partial(
            open_kernel_log,
            kmsg_path,
            syslog_fallback=syslog_fallback,
            after=self._resume.log_after,
        )
        self.kernel_log: OpenedLog = NOT_OPENED
        self._read_timing = ReadTiming(clock, idle_read_interval_s=syslog_idle_read_interval_s)
        self._log_fd: int | None = None  # the kernel log's descriptor, when it has one
        self._log_checked: float | None = None  # when the log last had nothing unread
        self._last_push = float("-inf")  # when a kernel signal last woke the loop
        # When the last kill line that names no cgroup was printed: the counters it may
        # concern are read after this read of the log.
        self._bare_line_at: float | None = None
        self._assembler = OomReportAssembler()
        self._grace_s = grace_s
        self.kernel_clock = KernelClock()  # learns the offset from the reads
        self.joiner = KillJoiner(kmsg_available=False)
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poll = select.poll()
        self._registered: set[int] = set()
        self._stopping = False
        self._next_resync = 0.0
        self.kills_reported = 0
        self._main_probe = MainProcessProbe(self._live_cgroup_of_pid)
        # What has been handed on, said after the records it covers at the end of each
        # turn that moved it (see records.HandedOn).
        self.on_handed_on = on_handed_on
        self._marks = ProgressMarks(log_every_s=resync_interval_s)
        self._startup_changes: list[CounterChange] | None = None
        self._caught_up = False
        # Victims' /proc facts read on their kill line, used when their record is made.
        self._captured: dict[int, Captured] = {}

    # ----- what the kernel log is ------------------------------------------------------

    @property
    def kernel_log_source(self) -> str:
        """ "kmsg", "syslog" or "none" (the kernel_log_source metric)."""
        return self.kernel_log.source

    @property
    def kernel_log_status(self) -> str:
        """The one line said at start about the kernel log."""
        return self.kernel_log.status

    @property
    def kernel_log_error(self) -> str | None:
        """Why the kernel log cannot be read (counters only); None: it is, or not asked."""
        return self.kernel_log.error

    @property
    def lost_kernel_log_records(self) -> int:
        reader = self.kernel_log.reader
        return 0 if reader is None else reader.lost_records

    # ----- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Open every source and take the baseline; raises on an unusable root."""
        # The log before the counters: a kill in between is then in both, never in
        # neither (its line after the log's start, its count in the baseline).
        opened = self._open_kernel_log()
        resume = self._resume
        self._startup_changes = self.watch.start(resume.counters, resume.limit_hits)
        reader = opened.reader
        self._log_fd = None if reader is None else reader.pollable_fd
        self._read_timing.start(on_demand=reader is not None and self._log_fd is None)
        self.kernel_log = opened.with_reads(self._read_timing.describe(self.watch.fully_pushed))
        log.info("%s", self.kernel_log.status)
        self.joiner = KillJoiner(
            kmsg_available=reader is not None,
            grace_s=self._grace_s,
            memory_use_of=self._memory_use_of,
            kernel_clock=self.kernel_clock,
            report_unpaired=self.watch.contains("/"),
            cgroup_of_pid=self._cgroup_of_pid,
            kernel_log_source=self.kernel_log.source,
        )
        self._poll.register(self._wake, select.POLLIN)
        if self._log_fd is not None:
            self._poll.register(self._log_fd, select.POLLIN)
        self._sync_registrations()
        self.watch.publish()
        self._next_resync = self._clock() + self.resync_interval_s

    def stop(self) -> None:
        """Ask `run` to return; safe from another thread or a signal handler."""
        self._stopping = True
        os.eventfd_write(self._wake, 1)

    def close(self) -> None:
        if not self._caught_up and self._startup_changes is not None:
            self._catch_up()  # stopped before its first turn: what it found is still news
        for kill in self.joiner.flush():
            self._emit(kill)
        self._report_handed_on()
        self.watch.close()
        if self.kernel_log.reader is not None:
            self.kernel_log.reader.close()
        self._log_fd = None
        os.close(self._wake)

    def run(self) -> None:
        while not self._stopping:
            self.poll_once()

    # ----- one turn of the loop -----------------------------------------------------

    def poll_once(self, max_wait_s: float | None = None) -> None:
        if not self._caught_up:
            self._catch_up()
        ready = self._wait(max_wait_s)
        woke = self._clock()  # when the kernel's signals in `ready` were there
        self._on_ready(ready, woke)
        self._report_created(woke)
        now = self._clock()
        self._counter_changes(self.watch.due_rechecks(now))
        if now >= self._next_resync:
            self._drain_kernel_log()
            self._counter_changes(self.watch.resync())
            self._next_resync = now + self.resync_interval_s
        if self._read_timing.is_due():
            self._drain_kernel_log()
        if self._log_fd is not None:
            # A polled log was drained, or had nothing then: read up to when poll returned.
            self.joiner.kernel_log_read(woke)
            if all(fd != self._log_fd for fd, _ in ready):
                self._log_checked = max(self._log_checked or woke, woke)
        for kill in self.joiner.on_tick(now_mono=self._clock()):
            self._emit(kill)
        self._read_timing.turn_ended(
            awaiting_reports=self.joiner.awaiting_reports,
            decision_at=self.joiner.next_decision(),
            fully_pushed=self.watch.fully_pushed,
        )
        self._sync_registrations()
        self._report_handed_on()
        self.watch.publish()

    def _wait(self, max_wait_s: float | None) -> list[tuple[int, int]]:
        """poll() until the first thing the loop has to do, or a kernel signal."""
        self._read_timing.schedule_idle(self.watch.fully_pushed)
        now = self._clock()
        # A polled log is read up to when poll() returns: the loop wakes for the joiner's
        # next decision. A log read on demand is read for it (`ReadTiming`).
        decision = self.joiner.next_decision() if self._log_fd is not None else None
        deadlines = (
            self._next_resync,
            self.joiner.next_deadline(),
            self.watch.next_recheck(),
            self._read_timing.due,
            decision,
        )
        wake_at = min(d for d in deadlines if d is not None)
        wait_s = max(0.0, wake_at - now)
        if max_wait_s is not None:
            wait_s = min(wait_s, max_wait_s)
        return self._poll.poll(wait_s * 1000)

    def _on_ready(self, ready: list[tuple[int, int]], woke: float) -> None:
        """The descriptors poll() returned: the kernel log first, then the cgroups."""
        if any(fd != self._wake for fd, _ in ready):
            self._last_push = woke
        # The log first: a report that is already there completes its counter change
        # without a grace period.
        ready.sort(key=lambda item: item[0] != self._log_fd)
        for fd, _ in ready:
            if fd == self._wake:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake)
            elif fd == self._log_fd:
                self._drain_kernel_log()
            else:
                changes = self.watch.handle_ready(fd, now=woke)
                if self.hierarchy.version is CgroupVersion.V1:
                    self._read_timing.v1_signalled()
                self._counter_changes(changes)

    def _report_created(self, woke: float) -> None:
        """Say each container cgroup the watch saw created (`on_new_container`).

        Only a container's own level (not a pod, nor a cgroup nested in a container),
        named by a pod and a container ID, as `cgroup_index` accepts them.
        """
        if self.on_new_container is None:
            return
        for cgroup, directory in self.watch.take_created():
            ident = parse_cgroup_path(cgroup)
            if not (
                ident.is_container
                and ident.container_path == cgroup
                and ident.pod_uid
                and ident.container_id
            ):
                continue
            created = ContainerCgroupCreated(
                cgroup=cgroup,
                directory=directory,
                pod_uid=ident.pod_uid,
                container_id=ident.container_id,
                seen_mono=woke,
            )
            try:
                self.on_new_container(created)
            except Exception:  # a sink's bug must not stop the detector
                log.exception("a sink failed on a new container cgroup")

    def _catch_up(self) -> None:
        """The first turn: the increases since the counter baseline a restart passed."""
        changes, self._startup_changes = self._startup_changes or [], None
        # The kernel log first: the reports read back explain these increases (victim
        # known) without a grace period. The kernel raises a kill's counter before it
        # prints the kill, so once every counter is read again after the reports, each
        # report has met its increase, or its kill was in the baseline already: such a
        # credit would only hold the log position back, and is dropped.
        self._drain_kernel_log()
        # Signals already there first: on v1 the OOM eventfd is the evidence of whose
        # limit was hit, which a plain re-read would not give.
        for fd, _ in self._poll.poll(0):
            if fd not in (self._wake, self._log_fd):
                changes += self.watch.handle_ready(fd)
        changes += self.watch.resync()
        self._counter_changes(changes)
        self.joiner.forget_credits()
        self.joiner.note_counters(self.watch.oom_kill_values())
        self._caught_up = True
        self._marks.handed_on()  # the first mark is complete, whatever happened

    def _report_handed_on(self) -> None:
        """Say what has been handed on, after the records it covers (`on_handed_on`)."""
        for cgroup in self.watch.take_removed():
            self.joiner.cgroup_removed(cgroup)
        if not self._caught_up:
            return  # the startup increases are not in yet: a mark would drop them
        complete = self._marks.take_first()
        counters = self.joiner.take_handed_on(everything=complete)
        if self.on_handed_on is None:
            return
        now = self._clock()
        mark = self._marks.mark(
            complete=complete,
            counters=counters,
            log_position=self._kernel_log_handed_on(),
            log_source=self.kernel_log.source,
            limit_hits=self.watch.limit_hit_counts(now),
            now=now,
        )
        if mark is None:
            return
        try:
            self.on_handed_on(mark)
        except Exception:
            log.exception("a sink failed on the detector's progress")

    def _kernel_log_handed_on(self) -> int | None:
        """The kernel log position up to which every kill is handed on and credited."""
        if self.kernel_log.reader is None:
            return None
        last = self.kernel_log.reader.last_seq
        oldest = self.joiner.oldest_unsettled_seq()
        if oldest is None:
            return last
        return oldest - 1 if last is None else min(last, oldest - 1)

    def _counter_changes(self, changes: list[CounterChange]) -> None:
        if changes:
            # A log read on demand: a kill counted is the reason to read, before the
            # joiner starts waiting for the report. Too soon after the last read, the
            # read is deferred and the joiner waits for it.
            self._read_timing.counter_changed()
            if self._read_timing.is_due():
                self._drain_kernel_log()
        for change in changes:
            for kill in self.joiner.on_counter_change(
                change, now_mono=self._clock(), now_wall=datetime.now(UTC)
            ):
                self._emit(kill)

    def _drain_kernel_log(self) -> None:
        reader = self.kernel_log.reader
        if reader is None:
            return
        started = self._clock()
        lost = reader.lost_records
        self._read_timing.read_started(started)
        try:
            records = reader.read_available()
        except ReadFailed as exc:  # it worked at start: a passing failure (ENOMEM)
            log.warning("%s", exc)
            return
        # The kernel clock: these lines were printed before this read ended (just before,
        # when a kernel signal prompted it), and (when nothing was lost in between) after
        # the last look that found nothing new began.
        previous, self._log_checked = self._log_checked, started
        if records:
            self._note_read(records, started, previous if reader.lost_records == lost else None)
        for record in records:
            for kill in self._assembler.feed(record):
                self._on_kernel_kill(kill)
        for kill in self._assembler.flush():
            self._on_kernel_kill(kill)
        if self._bare_line_at is not None:
            self._reread_for_bare_line(self._bare_line_at)
        # Only now, with every line of the read handed in: the joiner may decide.
        self.joiner.kernel_log_read(started)

    def _note_read(self, records: list[KmsgRecord], started: float, since: float | None) -> None:
        """What a read tells of the kernel's clock (`KernelClock.note_read`)."""
        stamps = [r.time_us for r in records]
        self.kernel_clock.note_read(
            self._clock(),
            max(stamps),
            oldest_us=min(stamps),
            previous_mono=since,
            prompt=self._caught_up and started - self._last_push <= PROMPT_READ_S,
        )

    def _reread_for_bare_line(self, printed: float) -> None:
        """A kill line that names no cgroup was printed just after its kill was counted.

        The cgroups that signalled an OOM not counted yet have it now (no need to wait
        for their recheck), and those that cannot signal are read with the line's time
        standing in for the signal.
        """
        self._bare_line_at = None
        changes = self.watch.recheck_signalled()
        if not self.watch.fully_pushed:
            changes += self.watch.reread_unpushed(printed)
        self._counter_changes(changes)

    def _on_kernel_kill(self, kill: KernelOomKill) -> None:
        # Members of a memory.oom.group kill other than the chosen victim are named
        # only by pid: ask /proc while the process is still exiting, else credit the
        # group's cgroup (kubelet sets oom.group on container cgroups, so that is
        # where the members live).
        cgroup = kill.task_memcg or self._cgroup_of_pid(kill.pid) or kill.group_memcg
        # A bare kill line (the kernel rate-limited the report header) still says by
        # its prefix whether a memory cgroup's limit or the whole node ran out.
        bare_memcg = (
            kill.oom_memcg is None and kill.constraint is None and kill.scope == "memory cgroup"
        )
        global_oom = not bare_memcg and (kill.oom_memcg is None or kill.oom_memcg == "/")
        inside = cgroup is not None and self.watch.contains(cgroup)
        if cgroup is not None and not inside and not global_oom:
            return  # a limit kill in a cgroup tree we were not asked to watch
        if kill.repeat:
            if cgroup is not None and inside:
                self.joiner.on_repeat_kill(cgroup, now_mono=self._clock(), report=kill)
            return
        self._capture_victim(kill, cgroup if inside else None)
        if bare_memcg:
            # On the clock pairing measures by (`KernelClock.middle`), so that the line
            # and the signal it stands in for are at the same time.
            now = self._clock()
            printed = self.kernel_clock.middle(kill.kernel_time_us, now)
            if printed is None:
                printed = self.kernel_clock.monotonic(kill.kernel_time_us, now)
            self._bare_line_at = max(self._bare_line_at or printed, printed)
        record = self.joiner.on_kernel_kill(
            kill,
            # Which limit a bare line hit only the counters can tell: pair it with its
            # cgroup's counter increase, as for a victim whose cgroup is unknown.
            None if bare_memcg else cgroup,
            counted=inside,
            now_mono=self._clock(),
            now_wall=datetime.now(UTC),
        )
        if record is not None:
            self._emit(record)

    def _cgroup_of_pid(self, pid: int) -> str | None:
        """A victim's memory cgroup while it exits; None when /proc cannot say."""
        path = self._live_cgroup_of_pid(pid)
        # A zombie (exited, not yet reaped) reads "/" on v1: that says nothing.
        return None if path == "/" else path

    def _live_cgroup_of_pid(self, pid: int) -> str | None:
        """A live process's memory cgroup, "/" included (a parent may live there)."""
        try:
            with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="surrogateescape") as f:
                return self.hierarchy.memory_cgroup(f.read())
        except OSError:
            return None

    def _capture_victim(self, kill: KernelOomKill, cgroup: str | None) -> None:
        """Read the victim's /proc facts now, while it exits (main_process.py).

        Only for a line printed moments ago: a report read back after a restart (the
        first turn's catch-up) names a process reaped long since, whose pid may belong to
        another process by now.
        """
        if not self._caught_up:
            return
        now = self._clock()
        if now - self.kernel_clock.monotonic(kill.kernel_time_us, now) > _MAX_CAPTURE_AGE_S:
            return
        captured: Captured | None
        ident = None if cgroup is None else parse_cgroup_path(cgroup)
        if (
            ident is not None
            and ident.kind is CgroupKind.CONTAINER
            and ident.container_path == ident.path
            and self._main_probe.only_process(kill.pid, self.hierarchy.fs_path(ident.path))
        ):
            captured = alone(ident.path)
        else:
            captured = self._main_probe.capture(kill.pid, kill.command)
        if captured is None:
            return
        if len(self._captured) >= _MAX_CAPTURED:
            self._captured.pop(next(iter(self._captured)))
        self._captured[kill.pid] = captured

    def _with_main_process(self, kill: OomKill) -> OomKill:
        captured = self._captured.pop(kill.pid, None) if kill.pid is not None else None
        ident = kill.identity
        if captured is None or kill.pid is None or ident.kind is not CgroupKind.CONTAINER:
            return kill
        container = ident.container_path or kill.cgroup
        if container is None:
            return kill
        main = self._main_probe.decide(
            captured, kill.pid, container, self.hierarchy.fs_path(container)
        )
        return kill if main is None else dataclasses.replace(kill, main_process=main)

    def _memory_use_of(self, cgroup: str) -> MemoryUse:
        return read_memory_use(self.hierarchy.version, self.hierarchy.fs_path(cgroup))

    def _emit(self, kill: OomKill) -> None:
        self.kills_reported += 1
        self._marks.handed_on()
        kill = self._with_main_process(kill)
        try:
            self.on_kill(kill)
        except Exception:  # a sink's bug must not stop the detector
            log.exception("a sink failed on an OOM kill record")

    def _sync_registrations(self) -> None:
        wanted = set(self.watch.fds())
        for fd in self._registered - wanted:
            with contextlib.suppress(KeyError):
                self._poll.unregister(fd)
        for fd in wanted - self._registered:
            self._poll.register(fd, _POLL_FLAGS)
        self._registered = wanted
