"""The node-side loop: wait on every kernel signal, hand out one record per kill.

One thread, one poll() over the kmsg descriptor, the inotify descriptor, v1's
per-cgroup eventfds and a wake-up eventfd for stop(). Idle, it sleeps in poll()
until the next resync, which is what keeps a node with hundreds of containers at a
negligible CPU cost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from oomguard.cgroups.counters import MemoryUse, read_memory_use
from oomguard.cgroups.hierarchy import MemoryHierarchy
from oomguard.cgroups.watch import CgroupWatch, CounterChange
from oomguard.detector import KillJoiner
from oomguard.kmsg_parse import OomReportAssembler
from oomguard.kmsg_reader import KmsgReader, KmsgUnavailable
from oomguard.main_process import Captured, MainProcessProbe
from oomguard.records import CgroupKind, KernelOomKill, OomKill

log = logging.getLogger(__name__)

# Victims captured but not yet in a record: bounded, a storm never grows it.
_MAX_CAPTURED = 1024
_POLL_FLAGS = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP


class OomWatcher:
    """Watches cgroups below `root` and /dev/kmsg; calls `on_kill` once per kill."""

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
        kernel_clock_offset_us: int = 0,
        kmsg_after_seq: int | None = None,
    ) -> None:
        self.hierarchy = hierarchy
        self.root = Path(root)
        self.on_kill = on_kill
        self.resync_interval_s = resync_interval_s
        self.watch = CgroupWatch(hierarchy, self.root, push=push)
        self.kmsg: KmsgReader | None = None
        self.kmsg_error: str | None = None
        self._kmsg_path = kmsg_path
        # None: only new records. A restarted agent passes the last sequence number it
        # handled, and the kills it missed while down are read back from the ring buffer.
        self._kmsg_after_seq = kmsg_after_seq
        self._assembler = OomReportAssembler()
        self._grace_s = grace_s
        self._offset_us = kernel_clock_offset_us
        self.joiner = KillJoiner(kmsg_available=False)
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poll = select.poll()
        self._registered: set[int] = set()
        self._stopping = False
        self._next_resync = 0.0
        self.kills_reported = 0
        self._main_probe = MainProcessProbe(self._live_cgroup_of_pid)
        # Victims' /proc facts read on their kill line, used when their record is made.
        self._captured: dict[int, Captured] = {}

    # ----- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Open every source and take the baseline; raises on an unusable root."""
        if self._kmsg_path is not None:
            try:
                self.kmsg = KmsgReader(self._kmsg_path, after_seq=self._kmsg_after_seq)
            except KmsgUnavailable as exc:
                self.kmsg_error = str(exc)
                log.info("%s", exc)
        self.watch.start()
        self.joiner = KillJoiner(
            kmsg_available=self.kmsg is not None,
            grace_s=self._grace_s,
            memory_use_of=self._memory_use_of,
            kernel_clock_offset_us=self._offset_us,
            report_unpaired=self.watch.contains("/"),
            cgroup_of_pid=self._cgroup_of_pid,
        )
        self._poll.register(self._wake, select.POLLIN)
        if self.kmsg is not None:
            self._poll.register(self.kmsg.fileno(), select.POLLIN)
        self._sync_registrations()
        self._next_resync = time.monotonic() + self.resync_interval_s

    def stop(self) -> None:
        """Ask `run` to return; safe from another thread or a signal handler."""
        self._stopping = True
        os.eventfd_write(self._wake, 1)

    def close(self) -> None:
        for kill in self.joiner.flush():
            self._emit(kill)
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
        now = time.monotonic()
        wake_at = self._next_resync
        for deadline in (self.joiner.next_deadline(), self.watch.next_recheck()):
            if deadline is not None:
                wake_at = min(wake_at, deadline)
        wait_s = max(0.0, wake_at - now)
        if max_wait_s is not None:
            wait_s = min(wait_s, max_wait_s)
        ready = self._poll.poll(wait_s * 1000)
        kmsg_fd = self.kmsg.fileno() if self.kmsg is not None else -1
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
                self._counter_changes(self.watch.handle_ready(fd))
        now = time.monotonic()
        self._counter_changes(self.watch.due_rechecks(now))
        if now >= self._next_resync:
            self._drain_kmsg()
            self._counter_changes(self.watch.resync())
            self._next_resync = now + self.resync_interval_s
        for kill in self.joiner.on_tick(now_mono=time.monotonic()):
            self._emit(kill)
        self._sync_registrations()

    def _counter_changes(self, changes: list[CounterChange]) -> None:
        for change in changes:
            for kill in self.joiner.on_counter_change(
                change, now_mono=time.monotonic(), now_wall=datetime.now(UTC)
            ):
                self._emit(kill)

    def _drain_kmsg(self) -> None:
        if self.kmsg is None:
            return
        for record in self.kmsg.read_available():
            for kill in self._assembler.feed(record):
                self._on_kernel_kill(kill)
        for kill in self._assembler.flush():
            self._on_kernel_kill(kill)

    def _on_kernel_kill(self, kill: KernelOomKill) -> None:
        self._capture_victim(kill)
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
                self.joiner.on_repeat_kill(cgroup, now_mono=time.monotonic())
            return
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
        try:
            with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
                path = self.hierarchy.memory_cgroup(f.read())
        except OSError:
            return None
        # A zombie (exited, not yet reaped) reads "/" on v1: that says nothing.
        return None if path in (None, "/") else path

    def _live_cgroup_of_pid(self, pid: int) -> str | None:
        """A live process's memory cgroup, "/" included (a parent may live there)."""
        try:
            with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
                return self.hierarchy.memory_cgroup(f.read())
        except OSError:
            return None

    def _capture_victim(self, kill: KernelOomKill) -> None:
        if kill.repeat:
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
