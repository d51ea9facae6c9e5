"""Put a planned oom_score_adj on a container's processes, through /proc, and a planned
kill mode on its cgroup (`KillModeWriter`, memory.oom.group).

The one part of the reconciler that writes to the node. Which processes get which
value is `plan.needs_write`'s rule; this module supplies the facts it needs, process by
process, and makes the write safe:

- Each process is pinned with a `ProcHandle` (an open /proc/PID directory). Its value
  is read first: most passes find it right, and a value that is right needs no proof
  of whose process this is.
- Before any write, its cgroup is read again *through that handle*: a PID that exited
  and was reused by another process since `cgroup.procs` was read then either fails
  (gone) or is seen to live elsewhere (`plan.in_container`), and is skipped.
- A write the kernel refuses (EACCES) is counted, never raised: it must not stop the
  pass. Any other failure is counted and logged once per container and errno.
- Dry run: everything is read and counted (`written` then means "would write"),
  nothing is written.

A container's processes are those in its cgroup and in every cgroup nested below it.

The kill mode is one file of the container cgroup itself (nested cgroups are not
touched): read first, written only when `kill_plan.needs_write` says so. A failed
read or write is counted (`oomguard_kill_mode_changes_total{result="error"}`) and
kept in the tally for the pod's Warning, never raised; it is logged once (a read-only
cgroup mount once for the agent: every container would say the same).
"""

from __future__ import annotations

import errno
import logging
import os

from oomguard.cgroups.oom_group import read_oom_group, write_oom_group
from oomguard.cgroups.path import memory_cgroup
from oomguard.metrics import KillModeResult, Metrics, ScoreAdjustmentResult
from oomguard.proc.handle import ProcHandle, read_cgroup_procs
from oomguard.say_once import SaidOnce
from oomguard.steer import kill_plan
from oomguard.steer.kill_plan import KillTally, KillWork
from oomguard.steer.pass_report import PassReport
from oomguard.steer.plan import ContainerTally, ContainerWork, in_container, needs_write

log = logging.getLogger(__name__)


def cgroup_tree(directory: str) -> list[str]:
    """A cgroup directory and every one nested below it (gone ones are skipped)."""
    directories = [directory]
    stack = [directory]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        directories.append(entry.path)
                        stack.append(entry.path)
        except (FileNotFoundError, NotADirectoryError):
            continue
    return directories


class ScoreWriter:
    """Writes oom_score_adj to the processes of planned containers, counting each."""

    def __init__(
        self,
        *,
        v1: bool,
        dry_run: bool,
        proc_root: str = "/proc",
        metrics: Metrics | None = None,
    ) -> None:
        self.v1 = v1
        self.dry_run = dry_run
        self.proc_root = proc_root
        self._metrics = metrics
        self._logged: SaidOnce[str] = SaidOnce(1024)

    def apply(self, work: ContainerWork, report: PassReport) -> ContainerTally:
        """Bring every process of one container to `work.target` (`needs_write`)."""
        directories = cgroup_tree(work.cgroup.directory)
        tally = ContainerTally(cgroups=len(directories))
        for directory in directories:
            self._cgroup(directory, work, tally, report)
        return tally

    def _cgroup(
        self, directory: str, work: ContainerWork, tally: ContainerTally, report: PassReport
    ) -> None:
        """The processes of one cgroup directory (one loop: this runs per process)."""
        for pid in read_cgroup_procs(directory):
            tally.processes += 1
            report.processes_seen += 1
            handle = ProcHandle.open(pid, self.proc_root)
            if handle is None:
                report.gone += 1
                continue
            try:
                current = handle.oom_score_adj()
                if current is None:
                    report.gone += 1
                elif needs_write(current, work):
                    self._write(handle, current, work, tally, report)
                else:
                    report.already_right += 1
            except OSError as exc:
                report.errors += 1
                tally.errors += 1
                self._count(ScoreAdjustmentResult.ERROR)
                self._log_once(
                    f"oom_score_adj of pid {pid} in {work.cgroup.cgroup} could not be set "
                    f"to {work.target}: {errno.errorcode.get(exc.errno or 0, '')} "
                    f"{exc.strerror}",
                    key=f"oserror:{work.cgroup.cgroup}:{exc.errno}",
                )
            finally:
                handle.close()

    def _write(
        self,
        handle: ProcHandle,
        current: int,
        work: ContainerWork,
        tally: ContainerTally,
        report: PassReport,
    ) -> None:
        """One process that needs the value: proven to be the container's, then written."""
        text = handle.cgroup()
        if not in_container(None if text is None else memory_cgroup(text, self.v1), work):
            report.gone += 1  # exited, or the PID now names a stranger
            return
        if self.dry_run:
            report.written += 1
            tally.written += 1
            return
        try:
            if handle.set_oom_score_adj(work.target):
                report.written += 1
                tally.written += 1
                self._count(ScoreAdjustmentResult.APPLIED)
            else:
                report.gone += 1
        except PermissionError:
            report.refused += 1
            tally.refused += 1
            tally.refused_lowering = tally.refused_lowering or work.target < current
            self._count(ScoreAdjustmentResult.ERROR)

    def _count(self, result: ScoreAdjustmentResult) -> None:
        if self._metrics is not None:
            self._metrics.score_adjustment(result)

    def _log_once(self, message: str, *, key: str) -> None:
        if self._logged.first(key):
            log.warning("%s", message)


class KillModeWriter:
    """Sets memory.oom.group of planned container cgroups (cgroup v2), counting each."""

    def __init__(self, *, dry_run: bool, metrics: Metrics | None = None) -> None:
        self.dry_run = dry_run
        self._metrics = metrics
        self._logged: SaidOnce[str] = SaidOnce(1024)

    def apply(self, work: KillWork, report: PassReport) -> KillTally:
        """Read the container cgroup's file; write `work.target` if `needs_write`."""
        tally = KillTally()
        directory = work.cgroup.directory
        try:
            tally.found = read_oom_group(directory)
        except (OSError, ValueError) as exc:
            self._failed(work, tally, report, exc, "read")
            return tally
        if tally.found is None or not kill_plan.needs_write(tally.found, work):
            return tally  # gone (its processes with it), or nothing to change
        if not self.dry_run:
            try:
                write_oom_group(directory, work.target)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENODEV):  # the cgroup went meanwhile
                    tally.found = None
                else:
                    self._failed(work, tally, report, exc, "write")
                return tally
            restore = work.only_from is not None
            self._count(KillModeResult.RESTORED if restore else KillModeResult.APPLIED)
        tally.written = True  # in a dry run: would be written
        report.kill_modes_written += 1
        return tally

    def _failed(
        self,
        work: KillWork,
        tally: KillTally,
        report: PassReport,
        exc: OSError | ValueError,
        what: str,
    ) -> None:
        code = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
        tally.errno = code
        tally.error = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        report.kill_mode_errors += 1
        self._count(KillModeResult.ERROR)
        name = errno.errorcode.get(code, str(code))
        if code == errno.EROFS:
            if self._logged.first("erofs"):
                log.warning(
                    "memory.oom.group cannot be written: the cgroup file system is mounted "
                    "read-only (EROFS); oomguard.io/oom-kill needs it writable (the chart's "
                    "cgroup.readOnly: false)"
                )
        elif self._logged.first(f"{work.cgroup.cgroup}:{what}:{code}"):
            log.warning(
                "memory.oom.group of %s could not be %s: %s %s",
                work.cgroup.cgroup,
                "read" if what == "read" else f"set to {work.target}",
                name,
                tally.error,
            )

    def _count(self, result: KillModeResult) -> None:
        if self._metrics is not None:
            self._metrics.kill_mode_change(result)
