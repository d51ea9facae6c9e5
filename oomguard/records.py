"""The typed values that flow between oomguard's parts.

Every arrow in the design (detector -> attributor -> sinks) carries one of these, so
each part can be tested by building the value by hand instead of running its
neighbours. They are frozen: a value handed on is never changed behind the
receiver's back. Plain dataclasses, not pydantic models: only oomguard's own code
builds them (nothing here is parsed from outside), and `watch`, `top` and `demo` then
start without pydantic (21.7 MiB of RSS and 65 ms to import the CLI, against 32.1 MiB
and 130 ms with pydantic records).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class Constraint(enum.StrEnum):
    """Which memory limit ran out, from the container's point of view.

    The names are a public contract (JSON `constraint`, Event reasons build on them).
    """

    CONTAINER = "container"  # the victim's own cgroup hit its limit
    POD = "pod"  # the pod-level cgroup hit its limit
    NODE_ALLOCATABLE = "node-allocatable"  # kubepods (or a QoS-level cgroup) hit its limit
    SYSTEM = "system"  # the whole machine ran out (global OOM)
    OTHER = "other"  # another ancestor's limit, a cpuset or a mempolicy constraint


class CgroupKind(enum.StrEnum):
    """What a cgroup path names, as far as the path alone can tell."""

    CONTAINER = "container"  # a Kubernetes container's cgroup
    POD = "pod"  # a pod-level cgroup
    QOS = "qos"  # kubepods/burstable, kubepods/besteffort
    KUBEPODS = "kubepods"  # the node-allocatable root of all pods
    SYSTEMD_UNIT = "systemd-unit"  # off Kubernetes: a .service / .scope / .slice
    DOCKER = "docker"  # off Kubernetes: a plain docker container
    ROOT = "root"  # the hierarchy root "/"
    OTHER = "other"  # anything else: not a container


@dataclass(frozen=True, slots=True, kw_only=True)
class CgroupIdentity:
    """What a cgroup path says about its owner, parsed without touching the system."""

    path: str
    kind: CgroupKind
    qos: str | None = None  # "guaranteed" | "burstable" | "besteffort"
    pod_uid: str | None = None  # dashed form, e.g. 6f1e...-...
    container_id: str | None = None  # the runtime's id, without the runtime prefix
    runtime: str | None = None  # "containerd" | "cri-o" | "docker" | None
    unit: str | None = None  # systemd unit or docker container name off Kubernetes
    # The path of the container/pod/kubepods level this path belongs to, relative to the
    # same root as `path` (so nested cgroups inside a container still map to it).
    container_path: str | None = None
    pod_path: str | None = None
    kubepods_path: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", CgroupKind(self.kind))

    @property
    def is_container(self) -> bool:
        return self.kind is CgroupKind.CONTAINER


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelOomKill:
    """One killed process as the kernel reported it in /dev/kmsg.

    Fields the kernel version did not print stay None; `seq` and `kernel_time_us` are
    those of the "Killed process" record, so two kills never share them.
    """

    seq: int
    kernel_time_us: int
    pid: int
    command: str
    uid: int | None = None
    total_vm_kb: int | None = None
    anon_rss_kb: int | None = None
    file_rss_kb: int | None = None
    shmem_rss_kb: int | None = None
    oom_score_adj: int | None = None
    # From the "oom-kill:" summary line (4.19+) or "Task in ... killed as a result of
    # limit of ..." (older kernels). `constraint` is the kernel's word, e.g.
    # CONSTRAINT_MEMCG / CONSTRAINT_NONE.
    constraint: str | None = None
    oom_memcg: str | None = None  # None for a global OOM
    task_memcg: str | None = None
    # From "memory: usage NkB, limit NkB, failcnt N" (the memcg that hit its limit).
    memcg_usage_kb: int | None = None
    memcg_limit_kb: int | None = None
    # From the trigger line "X invoked oom-killer: ..., oom_score_adj=N".
    trigger_command: str | None = None
    # Set when the kill is part of a memory.oom.group kill of this cgroup.
    group_memcg: str | None = None
    # "memory cgroup" (a limit) or "global" (node out of memory), from the prefix of the
    # "Killed process" line when present.
    scope: str | None = None
    # The kernel killed (and counted) this pid a second time in the same report: a
    # memory.oom.group kill takes the chosen victim again with the rest of the group.
    # Not a new victim, but its cgroup's oom_kill counter went up once more.
    repeat: bool = False
    # The sequence number of the report's first line (its trigger line), when it was
    # read (None: the report starts at `seq` for all we know): reading the log back
    # from here gives the whole report again.
    report_seq: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OomKill:
    """One killed process: the record every sink receives.

    The JSON form (`to_json_dict`) is a public contract for `oomguard watch --json`.
    """

    time: datetime  # wall clock, UTC
    kernel_time_us: int | None  # kmsg timestamp (microseconds since boot), if known
    # The kill line's place in the kernel log: /dev/kmsg's sequence number (source "kmsg"),
    # or a position derived from its timestamp (source "syslog", see kernel/syslog.py).
    kmsg_seq: int | None
    constraint: Constraint
    cgroup: str | None  # victim's cgroup, relative to the memory hierarchy root
    oom_cgroup: str | None  # the cgroup whose limit was hit, if known
    identity: CgroupIdentity
    pid: int | None  # None when the kernel log was unreadable: victim unknown
    command: str | None
    uid: int | None
    rss_bytes: int | None
    anon_rss_bytes: int | None
    file_rss_bytes: int | None
    shmem_rss_bytes: int | None
    oom_score_adj: int | None
    memory_limit_bytes: int | None
    memory_usage_bytes: int | None
    group_kill: bool = False
    # What the record was built from: the kernel's report read from /dev/kmsg ("kmsg") or
    # through syslog(2) ("syslog"), or the cgroup counters alone ("counters").
    source: str
    detection_latency_ms: float | None = None  # kernel kill line -> record, if known
    # The victim was its container's main process (see main_process.py); None: unknown.
    main_process: bool | None = None
    # The victim's cgroup's `oom_kill` counter with this kill counted, when the record
    # was joined with a counter increase; a counter-only record's stable identity
    # (cgroup + value) across agent restarts.
    oom_kill_counter: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "constraint", Constraint(self.constraint))

    @property
    def victim_known(self) -> bool:
        return self.pid is not None

    def to_json_dict(self) -> dict[str, object]:
        ident = self.identity
        return {
            "kind": "oom_kill",
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "kernel_time_s": (
                None if self.kernel_time_us is None else self.kernel_time_us / 1_000_000
            ),
            "kmsg_seq": self.kmsg_seq,
            "constraint": self.constraint.value,
            "cgroup": self.cgroup,
            "oom_cgroup": self.oom_cgroup,
            "container_id": ident.container_id,
            "pod_uid": ident.pod_uid,
            "qos": ident.qos,
            "runtime": ident.runtime,
            "unit": ident.unit,
            "pid": self.pid,
            "command": self.command,
            "uid": self.uid,
            "victim_known": self.victim_known,
            "rss_bytes": self.rss_bytes,
            "anon_rss_bytes": self.anon_rss_bytes,
            "file_rss_bytes": self.file_rss_bytes,
            "shmem_rss_bytes": self.shmem_rss_bytes,
            "oom_score_adj": self.oom_score_adj,
            "memory_limit_bytes": self.memory_limit_bytes,
            "memory_usage_bytes": self.memory_usage_bytes,
            "group_kill": self.group_kill,
            "source": self.source,
            "detection_latency_ms": self.detection_latency_ms,
            "main_process": self.main_process,
            "oom_kill_counter": self.oom_kill_counter,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class HandedOn:
    """The detector's progress, sent after the records it covers (through the same queue).

    `oom_kill`: per cgroup, the `oom_kill` counter value all of whose kills have been
    handed on, as records or as credits of a kernel report already handed on; 0 means
    forget the cgroup (it was removed). `log_position`: every kill the kernel log reported
    up to this position of reader `log_source` ("kmsg" or "syslog": the numbers of one
    mean nothing to the other) has been handed on and credited to its counter; None:
    unchanged, or (with `complete`) unknown. `complete`: `oom_kill` lists every watched
    cgroup with a nonzero counter and replaces what came before (the first one after a
    start). `limit_hits`: every watched cgroup's own `oom` count (cgroup v2) where not 0,
    as far as the kills it explains are handed on (`CgroupWatch.limit_hit_counts`),
    replacing what came before; None: unchanged, or unknown (v1). A restart compares them
    with what is on disk to tell whose limit a kill while it was down hit.
    """

    oom_kill: dict[str, int]
    log_position: int | None = None
    log_source: str | None = None
    complete: bool = False
    limit_hits: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if self.log_position is not None and self.log_source is None:
            raise ValueError("a kernel log position needs the reader it belongs to")
        # Copies: the detector goes on changing its own maps after handing these on.
        object.__setattr__(self, "oom_kill", dict(self.oom_kill))
        if self.limit_hits is not None:
            object.__setattr__(self, "limit_hits", dict(self.limit_hits))


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerCgroupCreated:
    """A container's cgroup just appeared below the watched root (inotify IN_CREATE).

    The detector's cgroup watch sees it before the container's first process starts
    (the runtime makes the directory, then puts its init in), so steering can give that
    process the policy's oom_score_adj before it forks anything (`steer.new_containers`).
    Only what the path says: which pod (`pod_uid`, or a static pod's config hash) and
    which container ID; the container's name is not in the pod's status yet.
    """

    cgroup: str  # as /proc/PID/cgroup prints it
    directory: str  # where it is in the file system
    pod_uid: str
    container_id: str
    seen_mono: float  # CLOCK_MONOTONIC when the watch woke for it


@dataclass(frozen=True, slots=True, kw_only=True)
class OomWarning:
    """An OOM kill is near in one cgroup (`warn.rule`): one per episode.

    The JSON form (`to_json_dict`, `"kind": "oom_warning"`) is a public contract for
    `oomguard watch --json`, like `OomKill`'s.
    """

    time: datetime  # wall clock, UTC
    cgroup: str  # the cgroup whose limit binds, relative to the hierarchy root
    identity: CgroupIdentity
    # Whose limit it is: container (its own), pod (the pod-level cgroup),
    # node-allocatable (kubepods, all pods), other (off Kubernetes: any limited cgroup).
    constraint: Constraint
    signal: str  # warn.rule.Signal: threshold, pressure, reclaim
    limit_bytes: int
    working_set_bytes: int
    usage_bytes: int
    warn_at_percent: int
    pressure_some_avg10: float | None = None  # percent of the last 10 s (v2 PSI)
    # Reclaim at the limit in the last 10 s: v2 memory.events max+high, v1 failcnt and
    # vmpressure events; None: not counted for this cgroup.
    reclaims_10s: int | None = None
    growth_bytes_per_s: float | None = None
    seconds_to_limit: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "constraint", Constraint(self.constraint))

    def to_json_dict(self) -> dict[str, object]:
        ident = self.identity
        return {
            "kind": "oom_warning",
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "cgroup": self.cgroup,
            "constraint": self.constraint.value,
            "container_id": ident.container_id,
            "pod_uid": ident.pod_uid,
            "qos": ident.qos,
            "runtime": ident.runtime,
            "unit": ident.unit,
            "signal": self.signal,
            "limit_bytes": self.limit_bytes,
            "working_set_bytes": self.working_set_bytes,
            "usage_bytes": self.usage_bytes,
            "warn_at_percent": self.warn_at_percent,
            "pressure_some_avg10": self.pressure_some_avg10,
            "reclaims_10s": self.reclaims_10s,
            "growth_bytes_per_s": (
                None if self.growth_bytes_per_s is None else round(self.growth_bytes_per_s)
            ),
            "seconds_to_limit": (
                None if self.seconds_to_limit is None else round(self.seconds_to_limit, 1)
            ),
        }
