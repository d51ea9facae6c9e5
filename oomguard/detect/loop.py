"""The node-side loop: wait on every kernel signal, hand out one record per kill.

One thread, one poll() over the kmsg descriptor, the inotify descriptor, v1's
per-cgroup eventfds and a wake-up eventfd for stop(). Idle, it sleeps in poll()
until the next resync, which is what keeps a node with hundreds of containers at a
negligible CPU cost.

The kernel log comes from /dev/kmsg; where that cannot be opened (an unprivileged
container), through syslog(2) (`klog_syslog`), else not at all (counters only).
syslog(2) has no descriptor to poll, so the loop reads it when it has a reason to: on
every counter increase (before the joiner starts waiting for its report), just after a
cgroup v1 OOM signal, while a counter increase still waits, and at each resync; reads
coalesce, at most one per SYSLOG_MIN_READ_GAP_S. A kill no watched counter shows (a
node OOM taking a process outside the watched tree; v1 where eventfds cannot be
registered and counters are only rescanned) gives no such reason: an idle read every
`syslog_idle_read_interval_s` reports it within that time.

The kernel log's timestamps are put on CLOCK_MONOTONIC by a `KernelClock` that learns
the offset from every read; the joiner pairs kill lines that name no cgroup with
counter increases by those times, and decides once the log is read past them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from oomguard.cgroups.counters import MemoryUse, read_memory_use
from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.cgroups.watch import CgroupWatch, CounterChange
from oomguard.detect.join import KillJoiner
from oomguard.detect.main_process import Captured, MainProcessProbe
from oomguard.kernel.clock import KernelClock
from oomguard.kernel.kmsg import KmsgReader, KmsgUnavailable
from oomguard.kernel.parse import OomReportAssembler
from oomguard.kernel.syslog import SyslogReader, SyslogUnavailable
from oomguard.records import CgroupKind, HandedOn, KernelOomKill, OomKill

log = logging.getLogger(__name__)

# Victims captured but not yet in a record: bounded, a storm never grows it.
_MAX_CAPTURED = 1024
# A victim is reaped milliseconds after its kill line; a line older than this names a
# pid that may have been reused: its /proc is not asked.
_MAX_CAPTURE_AGE_S = 1.0
_POLL_FLAGS = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP

# syslog(2) reads: each makes the kernel format its whole log buffer (~2 ms for 128 KiB
# on a 2-core machine), so a storm of counter changes shares one read per 50 ms; while
# a counter increase waits for its report, the log is read again every 100 ms.
SYSLOG_MIN_READ_GAP_S = 0.05
SYSLOG_RETRY_S = 0.1
# cgroup v1 signals an OOM at its start, before the kill is counted and its line printed
# (~0.2 ms later here): the log is read this soon after, not at the counter's recheck.
SYSLOG_AFTER_V1_SIGNAL_S = 0.005
# With no other reason to read, syslog(2) is read this often (~2 ms a read: 0.04 % of a
# core), so that a kill no watched counter shows is reported within it.
SYSLOG_IDLE_READ_INTERVAL_S = 5.0
# Where the kernel cannot push a cgroup's kills (a read-only v1 cgroup mount refuses the
# eventfd registration), the kernel log is the only prompt source: read this often
# (~0.9 ms a read here: 0.12 % of a core), so such a kill is reported within a second,
# with room for a loaded node.
SYSLOG_UNPUSHED_READ_INTERVAL_S = 0.75

# A read begun this soon after a kernel push (kmsg POLLIN, a cgroup's OOM eventfd or
# memory.events inotify) returns lines printed just before it: its bound on the kernel
# clock is tight enough to anchor the kill times (kclock.py).
PROMPT_READ_S = 0.01

_COUNTERS_ONLY = "OOM kills will be reported from cgroup counters without the victim's name"


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
        kernel_clock_offset_us: int | None = None,
        kmsg_after_seq: int | None = None,
        syslog_fallback: bool = True,
        syslog_after_pos: int | None = None,
        syslog_idle_read_interval_s: float = SYSLOG_IDLE_READ_INTERVAL_S,
        counter_baseline: Mapping[str, int] | None = None,
        limit_hits_baseline: Mapping[str, int] | None = None,
        on_handed_on: Callable[[HandedOn], None] | None = None,
    ) -> None:
        self.hierarchy = hierarchy
        self.root = Path(root)
        self.on_kill = on_kill
        self.resync_interval_s = resync_interval_s
        self.watch = CgroupWatch(hierarchy, self.root, push=push)
        # The kernel log reader in use: /dev/kmsg, or syslog(2) where /dev/kmsg cannot
        # be opened (`syslog_fallback`); None: counters only, `kmsg_error` says why.
        self.kmsg: KmsgReader | SyslogReader | None = None
        self.kmsg_error: str | None = None
        # "kmsg" | "syslog" | "none", and the one line said at start about it.
        self.kernel_log_source = "none"
        self.kernel_log_status = "the kernel log is not read"
        self._kmsg_path = kmsg_path
        self._kmsg_cause = ""  # why /dev/kmsg is not used, when syslog(2) is
        # None: only new records. A restarted agent passes the last sequence number it
        # handled, and the kills it missed while down are read back from the ring buffer.
        # `syslog_after_pos` is the same for the syslog(2) reader, in its own positions.
        self._kmsg_after_seq = kmsg_after_seq
        self._syslog_fallback = syslog_fallback
        self._syslog_after_pos = syslog_after_pos
        self._klog_read_due: float | None = None  # when syslog(2) is to be read next
        self._klog_last_read = float("-inf")
        self._klog_checked: float | None = None  # when the log last had nothing unread
        self._last_push = float("-inf")  # when a kernel signal last woke the loop
        # When the last kill line that names no cgroup was printed: the counters it may
        # concern are read after this read of the log.
        self._bare_line_at: float | None = None
        self.syslog_idle_read_interval_s = syslog_idle_read_interval_s
        self._assembler = OomReportAssembler()
        self._grace_s = grace_s
        # A measured offset (`kclock.kernel_clock_offset_us`; 0 or None: unknown) seeds the
        # clock, which learns it from the reads anyway.
        self.kernel_clock = (
            KernelClock(kernel_clock_offset_us, at_mono=time.monotonic())
            if kernel_clock_offset_us
            else KernelClock()
        )
        self.joiner = KillJoiner(kmsg_available=False)
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poll = select.poll()
        self._registered: set[int] = set()
        self._stopping = False
        self._next_resync = 0.0
        self.kills_reported = 0
        self._main_probe = MainProcessProbe(self._live_cgroup_of_pid)
        # What has been handed on (`on_handed_on`, see records.HandedOn): said after the
        # records it covers, at the end of each turn that handed something on. A
        # restarted agent passes the counter values it had (`counter_baseline`), and the
        # kills counted while it was down come out of the first turn, classified by the
        # `oom` counts it had (`limit_hits_baseline`, cgroup v2) or by peaks.
        self.on_handed_on = on_handed_on
        self._counter_baseline = counter_baseline
        self._limit_hits_baseline = limit_hits_baseline
        self._limit_hits_marked: dict[str, int] | None = None
        self._startup_changes: list[CounterChange] | None = None
        self._caught_up = False
        self._marked = False  # the first mark is complete
        self._handed_on_any = False  # records handed on since the last mark
        self._klog_reported: int | None = None
        self._next_klog_report = 0.0
        # Victims' /proc facts read on their kill line, used when their record is made.
        self._captured: dict[int, Captured] = {}

    # ----- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Open every source and take the baseline; raises on an unusable root."""
        self._open_kernel_log()
        self._startup_changes = self.watch.start(self._counter_baseline, self._limit_hits_baseline)
        if isinstance(self.kmsg, SyslogReader):
            every = self.syslog_idle_read_interval_s
            why = ""
            if not self.watch.fully_pushed:
                every = min(every, SYSLOG_UNPUSHED_READ_INTERVAL_S)
                why = " (some cgroups cannot signal their OOMs)"
            self.kernel_log_status = (
                f"{self._kmsg_cause}; reading the kernel log through syslog(2) instead, on "
                f"each cgroup OOM signal and every {every:g} s{why}"
            )
            log.info("%s", self.kernel_log_status)
        self.joiner = KillJoiner(
            kmsg_available=self.kmsg is not None,
            grace_s=self._grace_s,
            memory_use_of=self._memory_use_of,
            kernel_clock=self.kernel_clock,
            report_unpaired=self.watch.contains("/"),
            cgroup_of_pid=self._cgroup_of_pid,
            kernel_log_source=self.kernel_log_source,
        )
        self._poll.register(self._wake, select.POLLIN)
        if isinstance(self.kmsg, KmsgReader):
            self._poll.register(self.kmsg.fileno(), select.POLLIN)
        elif self.kmsg is not None:
            self._klog_read_due = time.monotonic()  # what was printed while we were down
        self._sync_registrations()
        self._next_resync = time.monotonic() + self.resync_interval_s

    def _open_kernel_log(self) -> None:
        """/dev/kmsg, else syslog(2), else counters only; one log line says which and why."""
        if self._kmsg_path is None:
            self.kernel_log_status = f"the kernel log is not read (disabled); {_COUNTERS_ONLY}"
            log.info("%s", self.kernel_log_status)
            return
        try:
            self.kmsg = KmsgReader(self._kmsg_path, after_seq=self._kmsg_after_seq)
        except KmsgUnavailable as exc:
            kmsg_exc = exc
        else:
            self.kernel_log_source = "kmsg"
            self.kernel_log_status = f"reading the kernel log from {self._kmsg_path}"
            log.info("%s", self.kernel_log_status)
            return
        if not self._syslog_fallback:
            self.kmsg_error = self.kernel_log_status = str(kmsg_exc)
            log.info("%s", self.kmsg_error)
            return
        try:
            self.kmsg = SyslogReader(after_pos=self._syslog_after_pos)
        except SyslogUnavailable as exc:
            self.kmsg_error = self.kernel_log_status = (
                f"{kmsg_exc.cause}; {exc.cause}; {_COUNTERS_ONLY}"
            )
            log.info("%s", self.kmsg_error)
            return
        self.kernel_log_source = "syslog"
        self._kmsg_cause = kmsg_exc.cause  # said with the read interval, once watching

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
        if self.kmsg is not None:
            self.kmsg.close()
            self.kmsg = None
        os.close(self._wake)

    def run(self) -> None:
        while not self._stopping:
            self.poll_once()

    # ----- one turn of the loop -----------------------------------------------------

    def poll_once(self, max_wait_s: float | None = None) -> None:
        if not self._caught_up:
            self._catch_up()
        self._schedule_idle_read()
        now = time.monotonic()
        wake_at = self._next_resync
        decision = self.joiner.next_decision() if isinstance(self.kmsg, KmsgReader) else None
        deadlines = (
            self.joiner.next_deadline(),
            self.watch.next_recheck(),
            self._klog_read_due,
            decision,
        )
        for deadline in deadlines:
            if deadline is not None:
                wake_at = min(wake_at, deadline)
        wait_s = max(0.0, wake_at - now)
        if max_wait_s is not None:
            wait_s = min(wait_s, max_wait_s)
        ready = self._poll.poll(wait_s * 1000)
        woke = time.monotonic()  # when the kernel's signals in `ready` were there
        kmsg_fd = self.kmsg.fileno() if isinstance(self.kmsg, KmsgReader) else -1
        if any(fd != self._wake for fd, _ in ready):
            self._last_push = woke
        # kmsg first: a report that is already there completes its counter change
        # without a grace period.
        ready.sort(key=lambda item: item[0] != kmsg_fd)
        for fd, _ in ready:
            if fd == self._wake:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake)
            elif fd == kmsg_fd:
                self._drain_kmsg()
            else:
                changes = self.watch.handle_ready(fd, now=woke)
                if self.hierarchy.version is CgroupVersion.V1:
                    self._want_kernel_log(SYSLOG_AFTER_V1_SIGNAL_S)
                self._counter_changes(changes)
        now = time.monotonic()
        self._counter_changes(self.watch.due_rechecks(now))
        if now >= self._next_resync:
            self._drain_kmsg()
            self._counter_changes(self.watch.resync())
            self._next_resync = now + self.resync_interval_s
        if self._klog_read_due is not None and time.monotonic() >= self._klog_read_due:
            self._drain_kmsg()
        if isinstance(self.kmsg, KmsgReader):
            self.joiner.kernel_log_read(woke)  # kmsg was drained, or had nothing then
            if all(fd != kmsg_fd for fd, _ in ready):
                self._klog_checked = max(self._klog_checked or woke, woke)
        for kill in self.joiner.on_tick(now_mono=time.monotonic()):
            self._emit(kill)
        if self.joiner.awaiting_reports:
            self._want_kernel_log(SYSLOG_RETRY_S)
        decision = self.joiner.next_decision()
        if decision is not None:
            self._want_kernel_log(decision - time.monotonic())
        self._schedule_idle_read()
        self._sync_registrations()
        self._report_handed_on()

    def _schedule_idle_read(self) -> None:
        """With no other reason to read syslog(2), read it after the idle interval."""
        if not isinstance(self.kmsg, SyslogReader) or self._klog_read_due is not None:
            return
        idle_s = self.syslog_idle_read_interval_s
        if not self.watch.fully_pushed:
            idle_s = min(idle_s, SYSLOG_UNPUSHED_READ_INTERVAL_S)
        self._klog_read_due = self._klog_last_read + max(idle_s, SYSLOG_MIN_READ_GAP_S)

    def _catch_up(self) -> None:
        """The first turn: the increases since the counter baseline a restart passed."""
        changes, self._startup_changes = self._startup_changes or [], None
        # The kernel log first: the reports read back explain these increases (victim
        # known) without a grace period. The kernel raises a kill's counter before it
        # prints the kill, so once every counter is read again after the reports, each
        # report has met its increase, or its kill was in the baseline already: such a
        # credit would only hold the log position back, and is dropped.
        self._drain_kmsg()
        # Signals already there first: on v1 the OOM eventfd is the evidence of whose
        # limit was hit, which a plain re-read would not give.
        kmsg_fd = self.kmsg.fileno() if isinstance(self.kmsg, KmsgReader) else -1
        for fd, _ in self._poll.poll(0):
            if fd not in (self._wake, kmsg_fd):
                changes += self.watch.handle_ready(fd)
        changes += self.watch.resync()
        self._counter_changes(changes)
        self.joiner.forget_credits()
        self.joiner.note_counters(self.watch.oom_kill_values())
        self._caught_up = True
        self._handed_on_any = True  # the first mark is complete, whatever happened

    def _report_handed_on(self) -> None:
        """Say what has been handed on, after the records it covers (`on_handed_on`).

        Once per turn that moved it: counters as they settle; the kernel log position
        with them, or at each resync interval when only other lines were printed.
        """
        for cgroup in self.watch.take_removed():
            self.joiner.cgroup_removed(cgroup)
        if not self._caught_up:
            return  # the startup increases are not in yet: a mark would drop them
        complete = not self._marked
        counters = self.joiner.take_handed_on(everything=complete)
        if self.on_handed_on is None:
            self._marked = True
            return
        seq = self._kernel_log_handed_on()
        now = time.monotonic()
        due = self._handed_on_any or bool(counters) or now >= self._next_klog_report
        moved = seq is not None and seq != self._klog_reported and due
        limit_hits = self.watch.limit_hit_counts(now)
        if limit_hits == self._limit_hits_marked:
            limit_hits = None  # unchanged
        if not (complete or counters or moved or limit_hits is not None):
            return
        self._marked = True
        self._handed_on_any = False
        self._next_klog_report = now + self.resync_interval_s
        if moved:
            self._klog_reported = seq
        if limit_hits is not None:
            self._limit_hits_marked = limit_hits
        mark = HandedOn(
            oom_kill=counters,
            kmsg_seq=seq if moved else None,
            complete=complete,
            limit_hits=limit_hits,
        )
        try:
            self.on_handed_on(mark)
        except Exception:
            log.exception("a sink failed on the detector's progress")

    def _kernel_log_handed_on(self) -> int | None:
        """The kernel log position up to which every kill is handed on and credited."""
        if self.kmsg is None:
            return None
        last = self.kmsg.last_seq
        oldest = self.joiner.oldest_unsettled_seq()
        if oldest is None:
            return last
        return oldest - 1 if last is None else min(last, oldest - 1)

    def _counter_changes(self, changes: list[CounterChange]) -> None:
        if changes and isinstance(self.kmsg, SyslogReader):
            # No descriptor says when a report is printed: a kill counted is the reason
            # to read, before the joiner starts waiting for the report. Too soon after
            # the last read, the read is deferred and the joiner waits for it.
            self._want_kernel_log(0.0)
            if self._klog_read_due is not None and time.monotonic() >= self._klog_read_due:
                self._drain_kmsg()
        for change in changes:
            for kill in self.joiner.on_counter_change(
                change, now_mono=time.monotonic(), now_wall=datetime.now(UTC)
            ):
                self._emit(kill)

    def _want_kernel_log(self, delay_s: float) -> None:
        """Ask for a syslog(2) read in `delay_s`; asks coalesce, one read per gap at most."""
        if not isinstance(self.kmsg, SyslogReader):
            return
        at = max(time.monotonic() + delay_s, self._klog_last_read + SYSLOG_MIN_READ_GAP_S)
        if self._klog_read_due is None or at < self._klog_read_due:
            self._klog_read_due = at

    def _drain_kmsg(self) -> None:
        if self.kmsg is None:
            return
        started = time.monotonic()
        lost = self.kmsg.lost_records
        if isinstance(self.kmsg, SyslogReader):
            self._klog_last_read = started
            self._klog_read_due = None
            try:
                records = self.kmsg.read_available()
            except OSError as exc:  # it worked at start: a passing failure (ENOMEM)
                log.warning("cannot read the kernel log through syslog(2): %s", exc)
                return
        else:
            records = self.kmsg.read_available()
        # The kernel clock: these lines were printed before this read ended (just before,
        # when a kernel signal prompted it), and (when nothing was lost in between) after
        # the last look that found nothing new began.
        previous, self._klog_checked = self._klog_checked, started
        if records:
            stamps = [r.time_us for r in records]
            self.kernel_clock.note_read(
                time.monotonic(),
                max(stamps),
                oldest_us=min(stamps),
                previous_mono=previous if self.kmsg.lost_records == lost else None,
                prompt=self._caught_up and started - self._last_push <= PROMPT_READ_S,
            )
        for record in records:
            for kill in self._assembler.feed(record):
                self._on_kernel_kill(kill)
        for kill in self._assembler.flush():
            self._on_kernel_kill(kill)
        if self._bare_line_at is not None:
            # A kill line that names no cgroup was printed just after its kill was
            # counted: the cgroups that signalled an OOM not counted yet have it now (no
            # need to wait for their recheck), and those that cannot signal are read
            # with the line's time standing in for the signal.
            at, self._bare_line_at = self._bare_line_at, None
            changes = self.watch.recheck_signalled()
            if not self.watch.fully_pushed:
                changes += self.watch.reread_unpushed(at)
            self._counter_changes(changes)
        # Only now, with every line of the read handed in: the joiner may decide.
        self.joiner.kernel_log_read(started)

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
                self.joiner.on_repeat_kill(cgroup, now_mono=time.monotonic(), report=kill)
            return
        self._capture_victim(kill)
        if bare_memcg:
            # On the clock pairing measures by (`KernelClock.middle`), so that the line
            # and the signal it stands in for are at the same time.
            now = time.monotonic()
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
            now_mono=time.monotonic(),
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

    def _capture_victim(self, kill: KernelOomKill) -> None:
        """Read the victim's /proc facts now, while it exits (main_process.py).

        Only for a line printed moments ago: a report read back after a restart (the
        first turn's catch-up) names a process reaped long since, whose pid may belong to
        another process by now.
        """
        if not self._caught_up:
            return
        now = time.monotonic()
        if now - self.kernel_clock.monotonic(kill.kernel_time_us, now) > _MAX_CAPTURE_AGE_S:
            return
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
        return kill if main is None else kill.model_copy(update={"main_process": main})

    def _memory_use_of(self, cgroup: str) -> MemoryUse:
        return read_memory_use(self.hierarchy.version, self.hierarchy.fs_path(cgroup))

    def _emit(self, kill: OomKill) -> None:
        self.kills_reported += 1
        self._handed_on_any = True
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

    @property
    def lost_kmsg_records(self) -> int:
        return 0 if self.kmsg is None else self.kmsg.lost_records
