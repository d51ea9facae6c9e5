"""`oomguard top`: who the kernel would kill next, and which container it belongs to."""

from __future__ import annotations

from dataclasses import dataclass

from oomguard.cgroup_path import parse_cgroup_path
from oomguard.cgroups.hierarchy import MemoryHierarchy
from oomguard.procfs import ProcHandle, list_pids
from oomguard.records import CgroupIdentity


@dataclass(frozen=True)
class ProcessScore:
    pid: int
    command: str
    oom_score: int
    oom_score_adj: int
    rss_bytes: int
    cgroup: str | None
    identity: CgroupIdentity

    def to_json_dict(self) -> dict[str, object]:
        return {
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
        }


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
    return out[: max(0, limit)] if limit else out


def format_table(rows: list[ProcessScore]) -> str:
    header = (
        f"{'PID':>7} {'OOM_SCORE':>9} {'ADJ':>5} {'RSS':>9}  {'QOS':<10} "
        f"{'POD':<36} {'CONTAINER':<12} COMMAND"
    )
    lines = [header]
    for p in rows:
        ident = p.identity
        rss_mib = f"{p.rss_bytes / (1024 * 1024):.1f}M"
        lines.append(
            f"{p.pid:>7} {p.oom_score:>9} {p.oom_score_adj:>5} {rss_mib:>9}  "
            f"{(ident.qos or '-'):<10} {(ident.pod_uid or ident.unit or '-'):<36} "
            f"{(ident.container_id or '-')[:12]:<12} {p.command}"
        )
    return "\n".join(lines)
