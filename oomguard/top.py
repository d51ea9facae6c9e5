"""`oomguard top`: who the kernel would kill next, and which container it belongs to.

With the agent's published wants (`score_state.read_wanted`), each process of a governed
container also shows the oom_score_adj the policy wants for it and whether it has it.
A process belongs to the container whose ID its cgroup path names, nested cgroups below
the container's included (as the reconciler counts them).

On cgroup v2 each process of a container also shows its container's kill mode, read
from `memory.oom.group` of the container's cgroup (not of a nested one: that is the
file the kubelet and oomguard set): "container" (1: one OOM kill takes every process of
the container) or "process" (0: only the one the kernel picks). Unknown (not in a
container, the file unreadable) and cgroup v1 (no group kill) show as `-` / null.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.cgroups.oom_group import read_oom_group
from oomguard.cgroups.path import parse_cgroup_path
from oomguard.proc.handle import ProcHandle, list_pids
from oomguard.records import CgroupIdentity
from oomguard.safe_text import escape, json_text
from oomguard.steer.kill_mode import KillMode
from oomguard.steer.score_state import WantedValue


@dataclass(frozen=True)
class ProcessScore:
    pid: int
    command: str
    oom_score: int
    oom_score_adj: int
    rss_bytes: int
    cgroup: str | None
    identity: CgroupIdentity
    wanted: WantedValue | None = None  # None: not governed, or nothing published
    kill_mode: str | None = None  # "container", "process"; None: unknown, or cgroup v1

    @property
    def wanted_oom_score_adj(self) -> int | None:
        return None if self.wanted is None else self.wanted.value

    @property
    def applied(self) -> bool | None:
        """Whether the process has the value the policy wants; None when not governed."""
        return None if self.wanted is None else self.oom_score_adj == self.wanted.value

    def to_json_dict(self) -> dict[str, object]:
        """The raw values (JSON escapes controls itself); bytes that are not UTF-8 are
        U+FFFD here, as they were before the readers kept them."""
        body: dict[str, object] = {
            "pid": self.pid,
            "command": self.command,
            "oom_score": self.oom_score,
            "oom_score_adj": self.oom_score_adj,
            "rss_bytes": self.rss_bytes,
            "cgroup": self.cgroup,
            "container_id": self.identity.container_id,
            "pod_uid": self.identity.pod_uid,
            "qos": self.identity.qos,
            "runtime": self.identity.runtime,
            "unit": self.identity.unit,
            "wanted_oom_score_adj": self.wanted_oom_score_adj,
            "applied": self.applied,
            "pod_namespace": None if self.wanted is None else self.wanted.namespace,
            "pod_name": None if self.wanted is None else self.wanted.pod,
            "container_name": None if self.wanted is None else self.wanted.container,
            "kill_mode": self.kill_mode,
        }
        return {k: json_text(v) if isinstance(v, str) else v for k, v in body.items()}


def _within(cgroup: str | None, root: str | None) -> bool:
    if root is None or root == "/":
        return True
    if cgroup is None:
        return False
    return cgroup == root or cgroup.startswith(root.rstrip("/") + "/")


def read_process(pid: int, hierarchy: MemoryHierarchy) -> ProcessScore | None:
    """One process's scores; None when it exited while we looked (normal)."""
    handle = ProcHandle.open(pid)
    if handle is None:
        return None
    with handle:
        score = handle.oom_score()
        adj = handle.oom_score_adj()
        comm = handle.comm()
        rss = handle.rss_bytes()
        cgroup_text = handle.cgroup()
    if score is None or adj is None or comm is None or cgroup_text is None:
        return None
    cgroup = hierarchy.memory_cgroup(cgroup_text)
    return ProcessScore(
        pid=pid,
        command=comm,
        oom_score=score,
        oom_score_adj=adj,
        rss_bytes=rss or 0,
        cgroup=cgroup,
        identity=parse_cgroup_path(cgroup or ""),
    )


def rank(hierarchy: MemoryHierarchy, root_cgroup: str | None, limit: int) -> list[ProcessScore]:
    """Processes below `root_cgroup`, next victim first.

    Kernel threads (oom_score 0 and no memory) are left out: the OOM killer never
    picks them. Ties on oom_score go to the bigger process, as the kernel's badness
    is mostly memory.
    """
    out: list[ProcessScore] = []
    for pid in list_pids():
        ps = read_process(pid, hierarchy)
        if ps is None or ps.rss_bytes == 0:
            continue
        if _within(ps.cgroup, root_cgroup):
            out.append(ps)
    out.sort(key=lambda p: (-p.oom_score, -p.rss_bytes, p.pid))
    shown = out[: max(0, limit)] if limit else out
    if hierarchy.version is CgroupVersion.V1:  # no memory.oom.group: nothing to show
        return shown
    return with_kill_modes(shown, lambda cgroup: read_oom_group(hierarchy.fs_path(cgroup)))


def with_kill_modes(
    rows: Iterable[ProcessScore], read: Callable[[str], int | None]
) -> list[ProcessScore]:
    """The rows, each process of a container given its container's kill mode.

    `read` gives `memory.oom.group` of a container cgroup (by its path); it is asked
    once per container, and what it cannot read (None, OSError, ValueError) is unknown.
    """
    modes: dict[str, str | None] = {}
    out = []
    for row in rows:
        container = row.identity.container_path if row.identity.is_container else None
        if container is None:
            out.append(row)
            continue
        if container not in modes:
            try:
                value = read(container)
            except (OSError, ValueError):
                value = None
            modes[container] = None if value is None else KillMode.of_oom_group(value).value
        mode = modes[container]
        out.append(row if mode is None else replace(row, kill_mode=mode))
    return out


def with_wanted(
    rows: Iterable[ProcessScore], wanted: Mapping[str, WantedValue]
) -> list[ProcessScore]:
    """The rows, each process of a governed container given its container's wanted value.

    Matched by container ID alone: it is unique on the node, and a static pod's cgroup
    carries its config hash, not the pod UID the agent knows.
    """
    out = []
    for row in rows:
        cid = row.identity.container_id
        entry = wanted.get(cid) if cid else None
        out.append(row if entry is None else replace(row, wanted=entry))
    return out


def _ok(applied: bool | None) -> str:
    return "-" if applied is None else "yes" if applied else "no"


def format_table(rows: list[ProcessScore]) -> str:
    """The human table. Every name in it is shown through `safe_text.escape`: a process
    names itself, and `top` must not clear or rewrite the terminal of whoever runs it."""
    header = (
        f"{'PID':>7} {'OOM_SCORE':>9} {'ADJ':>5} {'WANT':>5} {'OK':<3} {'KILL':<9} {'RSS':>9}  "
        f"{'QOS':<10} {'POD':<36} {'CONTAINER':<12} COMMAND"
    )
    lines = [header]
    for p in rows:
        ident = p.identity
        rss_mib = f"{p.rss_bytes / (1024 * 1024):.1f}M"
        want = "-" if p.wanted is None else str(p.wanted.value)
        if p.wanted is not None:  # names from the agent beat IDs
            pod, container = f"{p.wanted.namespace}/{p.wanted.pod}", p.wanted.container
        else:
            pod, container = ident.pod_uid or ident.unit or "-", (ident.container_id or "-")[:12]
        lines.append(
            f"{p.pid:>7} {p.oom_score:>9} {p.oom_score_adj:>5} {want:>5} {_ok(p.applied):<3} "
            f"{(p.kill_mode or '-'):<9} {rss_mib:>9}  {(ident.qos or '-'):<10} "
            f"{escape(pod):<36} {escape(container):<12} {escape(p.command)}"
        )
    return "\n".join(lines)
