"""Which memory limit ran out for one OOM kill.

"The container is too small" and "the node is overcommitted" call for different
fixes, so every kill says where the exhausted limit sits in the Kubernetes layout.
The kernel's summary line is the authority when it can be read; otherwise the
per-cgroup counters (which levels hit their own limit around the kill) stand in.
Both answers come from comparing the limited cgroup with the victim's, so they share
one rule.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from oomguard.cgroups.path import parse_cgroup_path
from oomguard.records import CgroupIdentity, CgroupKind, Constraint

# The kernel's words in "oom-kill:constraint=..." (mm/oom_kill.c, 4.19+).
CONSTRAINT_NONE = "CONSTRAINT_NONE"
CONSTRAINT_CPUSET = "CONSTRAINT_CPUSET"
CONSTRAINT_MEMORY_POLICY = "CONSTRAINT_MEMORY_POLICY"
CONSTRAINT_MEMCG = "CONSTRAINT_MEMCG"

_ROOT = "/"


def classify_kernel(
    kernel_constraint: str | None, oom_memcg: str | None, task_memcg: str | None
) -> Constraint:
    """Turn the kernel's constraint and memcg pair into what a pod owner can act on.

    Kernels before 4.19 print no constraint word, only "Task in X killed as a
    result of limit of Y", so a named non-root limit stands in for CONSTRAINT_MEMCG.
    """
    word = kernel_constraint.strip().upper() if isinstance(kernel_constraint, str) else ""
    if word and not word.startswith("CONSTRAINT_"):
        word = "CONSTRAINT_" + word  # a log shipper that trimmed the kernel's prefix
    limited = _present(oom_memcg)
    if not word:
        word = CONSTRAINT_MEMCG if limited is not None else CONSTRAINT_NONE
    if word == CONSTRAINT_NONE:
        return Constraint.SYSTEM
    if word != CONSTRAINT_MEMCG:
        # cpuset and mempolicy kills, and any constraint a newer kernel invents:
        # no memory limit of ours was involved.
        return Constraint.OTHER
    if limited is None:
        return Constraint.SYSTEM  # the root has no limit: the machine ran out
    task = _present(task_memcg)
    if task is not None:
        relative = _relative_to_task(parse_cgroup_path(task), limited)
        if relative is not None:
            return relative
    # The victim's cgroup is unknown or does not sit under the limited one. The
    # kernel only kills inside the limited cgroup's subtree, so its own kind answers.
    return _by_own_kind(parse_cgroup_path(limited))


def classify_counters(task: CgroupIdentity, limit_hit_paths: Collection[str]) -> Constraint:
    """Stand in for the kernel's answer when /dev/kmsg is unreadable.

    Only limits on the victim's own line count (its cgroup, the cgroups inside it,
    its ancestors); another container's limit says nothing about this kill. The
    deepest such limit wins: it is the one that bit first. On cgroup v1 `failcnt`
    also rises when reclaim succeeded, so this is a best effort there; v2's
    `memory.events.local` `oom` is exact.
    """
    best: tuple[int, Constraint] | None = None
    for hit in limit_hit_paths:
        if not isinstance(hit, str):
            continue
        normal = _normalize(hit)
        if normal == _ROOT:
            continue  # the root has no limit to hit
        relative = _relative_to_task(task, hit)
        if relative is None:
            continue
        depth = normal.count("/")
        if best is None or depth > best[0]:
            best = (depth, relative)
    return Constraint.SYSTEM if best is None else best[1]


# How far below its limit a cgroup's high-water mark may stay and still count as having
# reached it. A charge that fails is retried page by page before the OOM killer is
# called, and usage never exceeds the limit, so a limit kill leaves the peak at the limit
# to the byte (measured on kernel 6.18, v1: 0 bytes short in 12 of 12 container and pod
# limit kills). The margin covers the largest charge that still calls the OOM killer
# (order 3: 32 KiB with 4 KiB pages, 512 KiB with 64 KiB pages) and a limit read after
# it was lowered; a workload that merely ran high stays well below it (20 MiB allocated
# under 32 MiB: 8.2 MiB short).
LIMIT_REACHED_MARGIN_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class LimitEvidence:
    """What one cgroup on a victim's line says, read at a restart, about its own limit.

    `oom_rose`: its own `oom` count (cgroup v2, memory.events.local) is higher than the
    snapshot of the agent's previous run said; None when that is unknown (cgroup v1 has
    no such counter; a snapshot from before the count was kept). `peak_bytes` and
    `limit_bytes`: its high-water mark and its limit (v1 memory.max_usage_in_bytes and
    memory.limit_in_bytes, v2 memory.peak and memory.max); None: unreadable, no limit.
    """

    cgroup: str
    oom_rose: bool | None = None
    peak_bytes: int | None = None
    limit_bytes: int | None = None


def peak_reached_limit(peak_bytes: int | None, limit_bytes: int | None) -> bool:
    """The high-water mark is at the limit (within LIMIT_REACHED_MARGIN_BYTES)."""
    if peak_bytes is None or limit_bytes is None:
        return False
    return peak_bytes >= limit_bytes - LIMIT_REACHED_MARGIN_BYTES


def limit_reached_while_down(line: Sequence[LimitEvidence]) -> str | None:
    """Which cgroup's limit a kill counted while the agent was down most likely hit.

    `line` is the victim's cgroup first, then its ancestors up to the watched root; the
    answer (None: none, the node ran out) goes to `classify_counters` as the limit hit.
    Such a kill left no live evidence: it is counted in `oom_kill` but nobody was
    watching when it happened. The lowest cgroup on the line with evidence wins:

    - its own `oom` count rose while the agent was down (cgroup v2): the kernel counts
      it in the cgroup whose limit was hit, and nowhere for a node OOM. Exact.
    - where that is unknown (cgroup v1, whose `failcnt` stays 0 through a limit kill on
      6.18; a snapshot without the counts): its high-water mark reached its limit. A
      limit kill always leaves it there. But it is a mark since the cgroup was made, not
      since the agent stopped, and reaching the limit is not running out: a container
      whose page cache fills it to its limit sits there without any OOM (measured: a
      96 MiB file through a 32 MiB container, peak at the limit, no kill), and so does a
      pod whose limit was hit before, in an earlier, reported kill; a node OOM in such a
      container or pod is called a limit kill. A limit raised since (an in-place resize)
      hides the evidence, and a pod limit hit in a pod whose one container has the same
      limit is called the container's (the same Event reason, OOMKilled). Kills on
      Kubernetes are overwhelmingly limit kills, so erring towards them is the right
      way round.
    """
    for level in line:
        if level.oom_rose is True:
            return level.cgroup
        if level.oom_rose is None and peak_reached_limit(level.peak_bytes, level.limit_bytes):
            return level.cgroup
    return None


def _relative_to_task(task: CgroupIdentity, hit: str) -> Constraint | None:
    """Place the limited cgroup `hit` relative to the victim's; None if unrelated."""
    victim = _normalize(task.path)
    limited = _normalize(hit)
    if limited == victim or _is_ancestor(victim, limited):
        # Its own limit, or one inside it (v2 counters are hierarchical, so a kill
        # counted at a cgroup may have happened in its subtree).
        return Constraint.CONTAINER
    if task.container_path is not None:
        container = _normalize(task.container_path)
        if limited == container or _is_ancestor(container, limited):
            return Constraint.CONTAINER  # the task sits in a nested cgroup of its container
    if not _is_ancestor(limited, victim):
        return None
    if task.pod_path is not None:
        pod = _normalize(task.pod_path)
        if limited == pod:
            return Constraint.POD
        if _is_ancestor(pod, limited):
            return Constraint.OTHER  # inside the pod, but no container's own cgroup
    if task.kubepods_path is not None:
        kubepods = _normalize(task.kubepods_path)
        if limited == kubepods or _is_ancestor(kubepods, limited):
            return Constraint.NODE_ALLOCATABLE  # kubepods itself or a QoS level
    if parse_cgroup_path(hit).kind in (CgroupKind.KUBEPODS, CgroupKind.QOS):
        return Constraint.NODE_ALLOCATABLE  # a namespace view hid the kubepods level
    return Constraint.OTHER


def _by_own_kind(limited: CgroupIdentity) -> Constraint:
    kind = limited.kind
    if kind in (CgroupKind.CONTAINER, CgroupKind.DOCKER):
        return Constraint.CONTAINER
    if kind is CgroupKind.SYSTEMD_UNIT and limited.container_path is not None:
        return Constraint.CONTAINER  # a service or scope: the workload's own box
    if kind is CgroupKind.POD:
        return Constraint.POD
    if kind in (CgroupKind.KUBEPODS, CgroupKind.QOS):
        return Constraint.NODE_ALLOCATABLE
    if kind is CgroupKind.ROOT:
        return Constraint.SYSTEM
    return Constraint.OTHER


def _present(path: str | None) -> str | None:
    """A memcg path worth comparing: set, not blank, not the (limitless) root."""
    if not isinstance(path, str) or not path.strip():
        return None
    return None if _normalize(path) == _ROOT else path


def _normalize(path: str) -> str:
    """One spelling per cgroup, so "/a/b/", "/a//b" and "a/b" compare equal."""
    return "/" + "/".join(part for part in path.split("/") if part)


def _is_ancestor(ancestor: str, descendant: str) -> bool:
    if ancestor == descendant:
        return False
    return ancestor == _ROOT or descendant.startswith(ancestor + "/")
