"""What a new container cgroup's first processes get, and how long to look: pure rules.

A container that (re)starts gets a new cgroup, and its processes start with the value
the runtime writes, the kubelet's (OCI `process.oomScoreAdj`), until the next reconcile
pass. The kernel copies oom_score_adj to children on fork and keeps it across exec, so
bringing the container's first processes to the policy's value at once is most of the
job; `new_containers` does the reading and writing, this module decides.

Which value (`plan_new_container`)
----------------------------------
The cgroup names the pod and the new container ID, not the container's name: the
kubelet reports the new ID in the pod's status about a second later. The containers it
can be (`candidates`) are those whose status does not name a container ID with a live
cgroup (waiting, terminated, restarting; the one whose status already names this ID, if
any, is the only one). Among them:

- The runtime's own write is evidence of which one it is: it writes exactly the
  kubelet's value for that container. So the candidates are grouped by their kubelet
  value, and a process is only ever changed *from* one of those values, to the value
  the policy gives every candidate of that group.
- A group whose candidates want different values (or some want none) is left to the
  reconcile pass, which knows the container by name once the kubelet has reported it:
  a wrong value is worse than a late one (it could protect a container the admin
  never trusted, or expose one the admin protects).
- A value that is a group's target and another group's kubelet value is dropped from
  both sides: a process at it may have inherited oomguard's write, and must not be
  taken for the runtime's.
- The pod's sandbox (pause) gets its own cgroup too; the runtime gives its process
  -998, which the kubelet never gives a container, so it is never changed.

How long (`poll_interval_s`, `runtime_done`)
--------------------------------------------
The runtime puts its init into the cgroup *before* that init writes the kubelet's value
to itself (runc: the parent adds `runc init` to the cgroup, the init's bootstrap writes
`process.oomScoreAdj`, then clones the container's init, which execs the entrypoint).
A value written too early is overwritten, so the cgroup's processes are looked at again
for a short window: every 2 ms at first (the runtime's write comes within milliseconds
of joining), less often later, never past `WINDOW_S`. The window ends early once the
runtime is done: a process that no longer carries the first process's name (it exec'd
the entrypoint, or is a later stage of the runtime, which runc names apart) holds a
value oomguard does not change, and no process holds one it does.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from oomguard.k8s.pod_cache import PodView
from oomguard.steer.decision import Decision, PodDecision

# How long a followed cgroup is looked at: for its first process to join (from the
# notice), then for the runtime to be done (from the first process).
FIRST_PROCESS_WAIT_S = 2.0
WINDOW_S = 2.0
# (until this many seconds into a phase, look every this many seconds): often while the
# runtime's write is due, seldom after. About 130 looks in a whole phase.
POLL_STEPS: tuple[tuple[float, float], ...] = ((0.1, 0.002), (0.5, 0.01), (WINDOW_S, 0.05))


def candidates(pod: PodView, container_id: str, live_ids: Collection[str]) -> tuple[str, ...]:
    """The names of the pod's containers the new cgroup `container_id` can be.

    `live_ids`: the container IDs that have a cgroup in the pod's directory now. A
    container whose status names a live cgroup's ID is that cgroup's, not this one's.
    """
    named = tuple(c.name for c in pod.containers if c.name and c.container_id == container_id)
    if named:
        return named
    return tuple(
        c.name
        for c in pod.containers
        if c.name and not (c.container_id and c.container_id in live_ids)
    )


@dataclass(frozen=True, slots=True)
class NewContainerPlan:
    """What the new cgroup's processes get: `targets` maps the runtime's value (the
    kubelet's for the candidates of one group) to the policy's. Empty: nothing to do."""

    candidates: tuple[str, ...]
    targets: Mapping[int, int]
    left: tuple[str, ...] = ()  # why some candidates were left to the pass, in words


def _group_target(value: int, group: list[Decision]) -> tuple[int | None, str | None]:
    """The target of one group of candidates sharing the kubelet value `value`; or
    None with the reason the group is left to the pass (None, None: nothing wanted)."""
    wanted = {d.desired for d in group}
    if wanted == {None}:
        return None, None
    names = ", ".join(d.container for d in group)
    if len(wanted) > 1:
        shown = ", ".join(f"{d.container}={d.target}" for d in group)
        return None, f"containers {names} (kubelet's value {value}) want different values: {shown}"
    (target,) = wanted
    assert target is not None
    return (None, None) if target == value else (target, None)


def plan_new_container(
    pod: PodView, pod_decision: PodDecision, container_id: str, live_ids: Collection[str]
) -> NewContainerPlan:
    """The values for a new container cgroup of `pod` (see the module docstring)."""
    names = candidates(pod, container_id, live_ids)
    groups: dict[int, list[Decision]] = {}
    for decision in pod_decision.decisions:
        if decision.container in names:
            groups.setdefault(decision.kubelet_value, []).append(decision)
    targets: dict[int, int] = {}
    left: list[str] = []
    for value, group in groups.items():
        target, why = _group_target(value, group)
        if target is not None:
            targets[value] = target
        if why is not None:
            left.append(why)
    chained = sorted(v for v in targets if v in targets.values())
    for value in chained:
        left.append(f"{value} is both a kubelet value and a target here")
    for value, target in list(targets.items()):
        if value in chained or target in chained:
            del targets[value]
    return NewContainerPlan(names, targets, tuple(left))


def poll_interval_s(elapsed_s: float) -> float | None:
    """How long to wait for the next look, `elapsed_s` into a phase; None: stop."""
    for until_s, every_s in POLL_STEPS:
        if elapsed_s < until_s:
            return every_s
    return None


@dataclass(frozen=True, slots=True)
class ProcessSeen:
    """One process of a followed cgroup, as one look found it."""

    value: int  # its oom_score_adj
    name: str | None  # its comm; None: unreadable


def runtime_done(
    seen: Iterable[ProcessSeen], first_name: str | None, targets: Mapping[int, int]
) -> bool:
    """Whether the runtime is done with the cgroup: some process that no longer has the
    first process's name holds a value not in `targets` (the policy's, or one oomguard
    never changes), and no process holds one that is."""
    settled = False
    for process in seen:
        if process.value in targets:
            return False
        if process.name is not None and process.name != first_name:
            settled = True
    return settled
