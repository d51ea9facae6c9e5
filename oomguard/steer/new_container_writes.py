"""Read and write a followed new container cgroup: its processes and its kill mode.

What `new_containers`' thread does at each look at a cgroup it follows: every process
of the container's own cgroup is pinned by a `ProcHandle` and looked at once (its
oom_score_adj and its command line, for `new_container_plan.runtime_done`); one that
holds a value the plan changes gets the policy's, after its cgroup is read again
through the pinned handle, so a PID reused by a stranger is never written (the
reconciler's rule, `apply`). On cgroup v2 the cgroup's memory.oom.group gets the wanted
kill mode whenever it holds another (the runtime writes the kubelet's value once its
init is set up). A write the kernel refuses ends the steering of that cgroup: the
reconcile pass meets the same refusal and says why in an Event.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from oomguard.cgroups.oom_group import read_oom_group, write_oom_group
from oomguard.cgroups.path import memory_cgroup
from oomguard.metrics import Metrics, ScoreAdjustmentResult
from oomguard.proc.handle import ProcHandle
from oomguard.records import ContainerCgroupCreated
from oomguard.say_once import SaidOnce
from oomguard.steer.kill_mode import KillMode
from oomguard.steer.new_container_plan import NewContainerPlan, ProcessSeen

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SteeringCounters:
    """What the steering did since start (for tests, benches and the debug log)."""

    noticed: int = 0  # new container cgroups the detector said
    followed: int = 0  # of which the policy named a value for: followed
    written: int = 0  # processes given the policy's value
    kill_modes_written: int = 0  # memory.oom.group files set (cgroup v2)
    left_to_pass: int = 0  # new cgroups whose candidates disagree (some or all)
    unknown_pod: int = 0  # the pod is not in the cache
    dropped: int = 0  # past MAX_PENDING or MAX_FOLLOWED
    refused: int = 0  # writes the kernel refused (EACCES)
    errors: int = 0  # other failures


def command_line(handle: ProcHandle) -> str:
    """A process's command line, arguments joined by spaces; "" when unreadable."""
    text = handle.read("cmdline")
    return "" if text is None else text.replace("\0", " ").strip()


@dataclass(slots=True)
class FollowedCgroup:
    """One new container cgroup being followed, and where its window is."""

    created: ContainerCgroupCreated
    plan: NewContainerPlan
    phase_start: float  # the notice, then the first process
    next_look: float
    running: bool = False  # its first process has joined
    first_command: str = ""  # that process's command line when first seen
    kill_mode: KillMode | None = None  # the mode its memory.oom.group gets (v2)
    kill_mode_failed: bool = False  # the write failed: the pass will say why
    events_wd: int = -1  # v2: the inotify watch on cgroup.events
    written: int = 0
    done: bool = False

    @property
    def targets(self) -> Mapping[int, int]:
        return self.plan.targets


@dataclass(slots=True)
class Look:
    """What one look at a followed cgroup's processes found and did."""

    seen: list[ProcessSeen] = field(default_factory=list)
    first_command: str = ""
    give_up: bool = False  # the kernel refused: the pass will say why


class FollowedCgroupWriter:
    """Looks at followed cgroups' processes and writes what is due, counting it."""

    def __init__(
        self,
        counters: SteeringCounters,
        *,
        v1: bool,
        proc_root: str = "/proc",
        metrics: Metrics | None = None,
    ) -> None:
        self.counters = counters
        self.v1 = v1
        self._proc_root = proc_root
        self._metrics = metrics
        self._logged: SaidOnce[str] = SaidOnce(256)

    def processes(self, followed: FollowedCgroup, pids: list[int]) -> Look:
        """Look at each process once; write the policy's value where it is due."""
        look = Look()
        for pid in pids:
            handle = ProcHandle.open(pid, self._proc_root)
            if handle is None:
                continue
            try:
                value = handle.oom_score_adj()
                command = command_line(handle)
                if value is None:
                    continue
                if not look.first_command:
                    look.first_command = command
                look.seen.append(ProcessSeen(value, command))
                target = followed.targets.get(value)
                if target is not None and not self._write(handle, followed, target):
                    look.give_up = True
                    return look
            except OSError as exc:
                self._failed(followed, exc)
            finally:
                handle.close()
        return look

    def _write(self, handle: ProcHandle, followed: FollowedCgroup, target: int) -> bool:
        """Write `target` if the pinned process is in the followed cgroup; False when
        the kernel refuses (no point in trying again for this cgroup)."""
        text = handle.cgroup()
        cgroup = None if text is None else memory_cgroup(text, self.v1)
        own = followed.created.cgroup
        if cgroup is None or not (cgroup == own or cgroup.startswith(own + "/")):
            return True  # exited, or the PID now names a stranger
        try:
            if handle.set_oom_score_adj(target):
                followed.written += 1
                self.counters.written += 1
                self._count(ScoreAdjustmentResult.APPLIED)
        except PermissionError:
            self.counters.refused += 1
            self._count(ScoreAdjustmentResult.ERROR)
            return False
        return True

    def set_kill_mode(self, followed: FollowedCgroup) -> None:
        """Give the cgroup's memory.oom.group the wanted mode when it holds another
        (again after the runtime writes the kubelet's; never after a failed write)."""
        mode = followed.kill_mode
        if mode is None or followed.kill_mode_failed:
            return
        directory = followed.created.directory
        try:
            current = read_oom_group(directory)
            if current is None or current == mode.oom_group:
                return  # gone, or right
            write_oom_group(directory, mode.oom_group)
        except (OSError, ValueError) as exc:
            # A read-only cgroup mount, no permission: the pass says so in an Event.
            followed.kill_mode_failed = True
            log.debug("memory.oom.group of %s not set: %s", followed.created.cgroup, exc)
            return
        self.counters.kill_modes_written += 1

    def _failed(self, followed: FollowedCgroup, exc: OSError) -> None:
        self.counters.errors += 1
        self._count(ScoreAdjustmentResult.ERROR)
        code = errno.errorcode.get(exc.errno or 0, "")
        if self._logged.first(f"{followed.created.cgroup}:{exc.errno}"):
            log.warning(
                "oom_score_adj of a new process in %s could not be set: %s %s",
                followed.created.cgroup,
                code,
                exc.strerror,
            )

    def _count(self, result: ScoreAdjustmentResult) -> None:
        if self._metrics is not None:
            self._metrics.score_adjustment(result)
