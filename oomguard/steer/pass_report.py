"""What one reconcile pass did, for the agent's logs, the bench and the tests.

Its own module because three parts fill it: the plan says what each container should
have (`ContainerResult`), the writes count processes (`PassReport`'s counters), and the
reconciler hands the whole report back from `pass_once`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ContainerResult:
    """What one pass did for one governed (or restored) container."""

    namespace: str
    pod: str
    pod_uid: str
    container: str
    kubelet_value: int
    desired: int  # the value its processes should have (the kubelet's when restoring)
    outcome: str  # the policy's Outcome, or "restore"
    cgroups: int  # cgroup directories found (0: not on this node yet, or gone)
    processes: int = 0
    written: int = 0  # in a dry run: would be written
    refused: int = 0
    container_id: str | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"


@dataclass(slots=True)
class PassReport:
    """Counts for one pass over the node's pods."""

    dry_run: bool
    processes_seen: int = 0
    already_right: int = 0
    written: int = 0  # in a dry run: would be written
    gone: int = 0  # exited (or moved to another cgroup) between listing and writing
    refused: int = 0  # EACCES from the kernel (no CAP_SYS_RESOURCE to lower)
    errors: int = 0  # any other failure reading or writing a process
    pods_governed: int = 0
    containers_missing: int = 0  # governed containers whose cgroup was not found
    index_rescans: int = 0
    kill_modes_written: int = 0  # memory.oom.group files set or put back (dry run: would be)
    kill_mode_errors: int = 0  # memory.oom.group reads or writes that failed
    duration_s: float = 0.0
    containers: dict[str, ContainerResult] = field(default_factory=dict)

    @property
    def desired(self) -> dict[str, int]:
        """namespace/pod/container -> the value its processes should have."""
        return {key: result.desired for key, result in self.containers.items()}
