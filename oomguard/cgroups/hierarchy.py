"""Find the memory cgroup hierarchy: its version and where it is mounted.

Detected from /proc/self/mountinfo at start, never assumed: a node may run cgroup v1
(memory controller on its own mount), v2 (one unified mount with `memory` in
`cgroup.controllers`), or the hybrid layout where a v2 mount exists but carries no
controllers (this is what the test host has). The kernel prints cgroup paths relative
to the hierarchy root, so every path in oomguard is kept in that form and only turned
into a file system path here.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path

from oomguard.cgroups.path import memory_cgroup


class CgroupVersion(enum.IntEnum):
    V1 = 1
    V2 = 2


class HierarchyNotFound(RuntimeError):
    """No mounted cgroup hierarchy carries the memory controller."""


@dataclass(frozen=True)
class MemoryHierarchy:
    version: CgroupVersion
    mount: Path  # where the hierarchy root is mounted

    def fs_path(self, cgroup: str) -> Path:
        """File system directory of a cgroup path as the kernel prints it."""
        rel = cgroup.strip("/")
        return self.mount / rel if rel else self.mount

    def cgroup_of(self, directory: Path | str) -> str:
        """The kernel's name for a directory below the mount ("/" for the root)."""
        rel = os.path.relpath(str(directory), str(self.mount))
        if rel == ".":
            return "/"
        if rel.startswith(".."):
            raise ValueError(f"{directory} is not below the memory hierarchy at {self.mount}")
        return "/" + rel

    def memory_cgroup(self, proc_cgroup: str) -> str | None:
        """The memory cgroup named in a /proc/PID/cgroup text, for this version."""
        return memory_cgroup(proc_cgroup, self.version is CgroupVersion.V1)

    @property
    def counter_file(self) -> str:
        """The file whose change means "look again" (the push source)."""
        return "memory.oom_control" if self.version is CgroupVersion.V1 else "memory.events"


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    super_options: frozenset[str]


def _unescape_mountinfo(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out: list[str] = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup mounts listed in /proc/self/mountinfo; odd lines are skipped."""
    mounts: list[Mount] = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        lf = left.split()
        rf = right.split()
        if len(lf) < 5 or len(rf) < 3:
            continue
        fstype = rf[0]
        if fstype not in ("cgroup", "cgroup2"):
            continue
        mounts.append(
            Mount(
                mount_point=_unescape_mountinfo(lf[4]),
                fstype=fstype,
                super_options=frozenset(rf[2].split(",")),
            )
        )
    return mounts


def choose_memory_mount(mounts: list[Mount], v2_controllers: dict[str, str]) -> MemoryHierarchy:
    """Pick the hierarchy that carries the memory controller.

    `v2_controllers` maps each cgroup2 mount point to the text of its
    cgroup.controllers, read by the caller. v1's memory mount wins when present: on a
    hybrid host the v2 mount exists but the memory controller is bound to v1.
    """
    for m in mounts:
        if m.fstype == "cgroup" and "memory" in m.super_options:
            return MemoryHierarchy(CgroupVersion.V1, Path(m.mount_point))
    for m in mounts:
        if m.fstype == "cgroup2" and "memory" in v2_controllers.get(m.mount_point, "").split():
            return MemoryHierarchy(CgroupVersion.V2, Path(m.mount_point))
    raise HierarchyNotFound(
        "no cgroup hierarchy with the memory controller is mounted "
        "(looked for a cgroup v1 'memory' mount and a cgroup2 mount listing 'memory')"
    )


def detect_memory_hierarchy() -> MemoryHierarchy:
    """The memory hierarchy of this machine, as seen by this process."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        mounts = parse_mountinfo(f.read())
    v2_controllers: dict[str, str] = {}
    for m in mounts:
        if m.fstype == "cgroup2":
            try:
                v2_controllers[m.mount_point] = Path(
                    m.mount_point, "cgroup.controllers"
                ).read_text()
            except OSError:
                v2_controllers[m.mount_point] = ""
    return choose_memory_mount(mounts, v2_controllers)


def own_cgroup(hierarchy: MemoryHierarchy, pid: int | str = "self") -> str:
    """The memory cgroup a process sits in, as the kernel names it."""
    with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="surrogateescape") as f:
        path = hierarchy.memory_cgroup(f.read())
    if path is None:
        raise HierarchyNotFound(f"/proc/{pid}/cgroup has no memory cgroup line")
    return path


def default_cgroup_root(hierarchy: MemoryHierarchy) -> Path:
    """Where container cgroups live on this node: the kubepods level of either driver.

    Off Kubernetes there is none, and the whole hierarchy is watched so that systemd
    units and docker containers are reported too.
    """
    for name in ("kubepods.slice", "kubepods"):
        candidate = hierarchy.mount / name
        if candidate.is_dir():
            return candidate
    return hierarchy.mount
