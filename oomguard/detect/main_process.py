"""Was the OOM victim its container's main process?

It matters to the person reading the Event: a killed main process restarts the
container (the kubelet will say OOMKilled), a killed child or `kubectl exec`'d process
does not, and Kubernetes itself says nothing about those (kubernetes #78973).

The kernel's report does not say. /proc does, while the victim is still exiting (the
kill line is printed before the task is reaped, and oomguard reads it within
milliseconds), from three facts: the victim's parent, whether that parent lives in
the victim's container cgroup, and the victim's pid in its own pid namespace (the last
`NSpid` field of /proc/PID/status):

- parent inside the container: a forked child, not the main process;
- pid 1 in its own namespace: the container's init, its main process;
- parent outside the container (the runtime's shim) and not pid 1: either the main
  process of a pod sharing one pid namespace (`shareProcessNamespace`, the pause
  process is pid 1) or a process `kubectl exec` started. If some process of the same
  container is pid 1 of its namespace, the container has its own namespace and the
  victim was exec'd; otherwise it is taken as the main process.

When any fact cannot be read (the victim was reaped already, a hostile /proc), the
answer is None and the Event simply does not say.

Most containers run one process. When the victim is the only process of its container
cgroup (no cgroup nested below it), it is the container's main process, and that is
read from the cgroup's process list without touching the victim: a read of the victim's
own /proc files on its kill line waits ~3 ms (the kernel is still killing it), most of
a kill's detection latency.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from oomguard.proc.handle import ProcHandle, read_cgroup_procs


@dataclass(frozen=True, slots=True)
class Lineage:
    """What /proc says about one process, for the main-process question."""

    ppid: int | None
    ns_pid: int | None  # pid in its own (innermost) pid namespace
    ns_levels: int  # how many pid namespaces deep (1: the host's)


def parse_status(text: str) -> Lineage:
    """PPid and NSpid from /proc/PID/status; missing or odd fields read as unknown."""
    ppid: int | None = None
    ns_pid: int | None = None
    levels = 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "PPid":
            ppid = _int(value)
        elif key == "NSpid":
            fields = value.split()
            levels = len(fields)
            ns_pid = _int(fields[-1]) if fields else None
    return Lineage(ppid=ppid, ns_pid=ns_pid, ns_levels=levels)


def _int(text: str) -> int | None:
    text = text.strip()
    return int(text) if text.isdigit() and len(text) <= 10 else None


def within(cgroup: str | None, container: str) -> bool:
    """`cgroup` is the container's cgroup or nested below it."""
    if cgroup is None:
        return False
    return cgroup == container or cgroup.startswith(container.rstrip("/") + "/")


def classify(
    victim: Lineage,
    parent_in_container: bool | None,
    container_has_own_init: bool | None,
) -> bool | None:
    """The rules of the module docstring; None when they cannot decide."""
    if parent_in_container is None:
        return None
    if parent_in_container:
        return False
    if victim.ns_levels > 1 and victim.ns_pid == 1:
        return True
    if container_has_own_init is None:
        return None
    return not container_has_own_init


@dataclass(frozen=True, slots=True)
class Captured:
    """The victim's facts, read the moment its kill line arrives (it is reaped soon)."""

    lineage: Lineage
    parent_cgroup: str
    # The only process of `container` (its cgroup, nothing nested): the main process.
    alone_in: str | None = None


def alone(container: str) -> Captured:
    """The victim was the only process of the container cgroup `container`."""
    return Captured(lineage=Lineage(None, None, 0), parent_cgroup="", alone_in=container)


class MainProcessProbe:
    """Reads the facts from /proc and the container's cgroup (the I/O half).

    `capture` runs at once on the kill line, while the victim is still exiting;
    `decide` runs when the record is complete and its container cgroup known.
    """

    def __init__(
        self, cgroup_of_pid: Callable[[int], str | None], proc_root: str = "/proc"
    ) -> None:
        self.cgroup_of_pid = cgroup_of_pid
        self.proc_root = proc_root

    def only_process(self, pid: int, directory: Path) -> bool:
        """Whether `pid` is the one process of the cgroup `directory`, which has no
        cgroup below it (asked without reading the victim's own /proc)."""
        try:
            with os.scandir(directory) as entries:
                if any(entry.is_dir(follow_symlinks=False) for entry in entries):
                    return False
            return read_cgroup_procs(directory) == [pid]
        except OSError:
            return False

    def capture(self, pid: int, command: str | None) -> Captured | None:
        handle = ProcHandle.open(pid, self.proc_root)
        if handle is None:
            return None
        with handle:
            status = handle.read("status")
            comm = handle.comm()
        if status is None or comm is None:
            return None
        # A reaped victim's pid reused within milliseconds is all but impossible; the
        # command name (as the kernel truncates it) rules it out.
        if command is not None and comm[:15] != command[:15]:
            return None
        lineage = parse_status(status)
        if not lineage.ppid:
            return None
        parent_cgroup = self.cgroup_of_pid(lineage.ppid)
        if parent_cgroup is None:
            return None
        return Captured(lineage=lineage, parent_cgroup=parent_cgroup)

    def decide(
        self, captured: Captured, victim_pid: int, container_cgroup: str, container_dir: Path
    ) -> bool | None:
        if captured.alone_in is not None:
            return True if captured.alone_in == container_cgroup else None
        parent_in = within(captured.parent_cgroup, container_cgroup)
        lineage = captured.lineage
        own_init: bool | None = None
        if not parent_in and not (lineage.ns_levels > 1 and lineage.ns_pid == 1):
            own_init = self._has_own_init(victim_pid, container_dir)
        return classify(lineage, parent_in, own_init)

    def _has_own_init(self, victim_pid: int, container_dir: Path) -> bool | None:
        try:
            pids = read_cgroup_procs(container_dir)
        except OSError:
            return None
        for pid in pids:
            if pid == victim_pid:
                continue
            try:
                with open(os.path.join(self.proc_root, str(pid), "status"), encoding="utf-8") as f:
                    lineage = parse_status(f.read())
            except (OSError, UnicodeDecodeError):
                continue
            if lineage.ns_levels > 1 and lineage.ns_pid == 1:
                return True
        return False
