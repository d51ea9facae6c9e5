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
runtime is done: a process that exec'd (its command line is no longer the first
process's: runc's stages are clones of `runc init` and share its command line, so only
the entrypoint's exec changes it) holds a value oomguard does not change, and no process
holds one it does. Not sooner: runc writes the container's cgroup settings, among them
the kubelet's memory.oom.group, only once its init is set up, before the exec.

The kill mode (cgroup v2)
-------------------------
The same candidates, the same grouping: `kill_mode` when every candidate wants the
same mode, else the group's once a process shows by its value which group it is. Only
for containers whose kill mode oomguard set before (a restart): the reconcile pass
remembers the value the kubelet gave a container before oomguard's first write, to put
it back when the annotation goes, so that first write is the pass's.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from oomguard.k8s.pod_cache import PodView
from oomguard.steer.decision import Decision, PodDecision
from oomguard.steer.kill_mode import KillMode, KillModeDecision

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
    """What the new cgroup gets. `targets` maps the runtime's value (the kubelet's for
    one group of candidates) to the policy's oom_score_adj. The kill mode: `kill_mode`
    when every candidate agrees, else the one of the group a process turns out to be
    in (`kill_modes`, by the same kubelet value)."""

    candidates: tuple[str, ...]
    targets: Mapping[int, int]
    kill_mode: KillMode | None = None
    kill_modes: Mapping[int, KillMode] = field(default_factory=dict)
    left: tuple[str, ...] = ()  # why some candidates were left to the pass, in words

    @property
    def steers(self) -> bool:
        """Whether there is anything to do (else the cgroup is not followed)."""
        return bool(self.targets or self.kill_mode or self.kill_modes)


def _group_target(value: int, group: Sequence[Decision]) -> tuple[int | None, str | None]:
    """The target of one group of candidates sharing the kubelet value `value`; or
    None with the reason the group is left to the pass (None, None: nothing wanted)."""
    wanted = {d.desired for d in group}
    if wanted == {None}:
        return None, None
    if len(wanted) > 1:
        shown = ", ".join(f"{d.container}={d.target}" for d in group)
        return None, f"candidates with the kubelet's value {value} want different values: {shown}"
    (target,) = wanted
    assert target is not None
    return (None, None) if target == value else (target, None)


def _agreed_mode(
    group: Sequence[KillModeDecision], remembered: Container[str]
) -> tuple[KillMode | None, str | None]:
    """The kill mode every candidate of `group` wants; or None with the reason it is
    left to the pass (None, None: nothing wanted).

    Only for containers whose kill mode oomguard set before (`remembered`): the pass
    remembers the value it found before its first write (the kubelet's), to put back
    when the request goes; written here first, it would find nothing to remember.
    """
    modes = {d.mode for d in group}
    if modes == {None}:
        return None, None
    names = ", ".join(d.container for d in group)
    if len(modes) > 1:
        return None, f"candidates {names} want different kill modes"
    if any(d.container not in remembered for d in group):
        return (
            None,
            f"the kill mode of {names} is set first by the pass (it remembers the kubelet's)",
        )
    (mode,) = modes
    return mode, None


def plan_new_container(
    pod: PodView,
    pod_decision: PodDecision,
    container_id: str,
    live_ids: Collection[str],
    remembered_kill_modes: Container[str] | None = None,
) -> NewContainerPlan:
    """The values for a new container cgroup of `pod` (see the module docstring).

    `remembered_kill_modes`: the names of the pod's containers whose kill mode oomguard
    set before; None: kill modes are not steered here (cgroup v1 has none).
    """
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
    if remembered_kill_modes is None:
        return NewContainerPlan(names, targets, left=tuple(left))
    mode, modes = _kill_modes(pod_decision, groups, targets, remembered_kill_modes, left)
    return NewContainerPlan(names, targets, mode, modes, tuple(left))


def _kill_modes(
    pod_decision: PodDecision,
    groups: Mapping[int, Sequence[Decision]],
    targets: Mapping[int, int],
    remembered: Container[str],
    left: list[str],
) -> tuple[KillMode | None, dict[int, KillMode]]:
    """The kill mode all candidates agree on, and each group's (by kubelet value; not a
    value oomguard writes as a target, which a process may hold by inheritance)."""
    by_name = {d.container: d for d in pod_decision.kill_modes}
    every: list[KillModeDecision] = []
    modes: dict[int, KillMode] = {}
    for value, group in groups.items():
        decisions = [by_name[d.container] for d in group if d.container in by_name]
        every += decisions
        mode, why = _agreed_mode(decisions, remembered)
        if mode is not None and value not in targets.values():
            modes[value] = mode
        if why is not None and len(groups) > 1:
            left.append(why)
    mode, why = _agreed_mode(every, remembered)
    if why is not None and len(groups) == 1:
        left.append(why)
    return mode, modes


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
    command: str  # its command line (/proc/PID/cmdline); "": unreadable or none


def runtime_done(
    seen: Iterable[ProcessSeen], first_command: str, targets: Mapping[int, int]
) -> bool:
    """Whether the runtime is done with the cgroup: a process that exec'd (its command
    line is not the first process's) holds a value not in `targets` (the policy's, or
    one oomguard never changes), and no process holds one that is. Never while the
    first process's command line is unknown ("")."""
    exec_d = False
    for process in seen:
        if process.value in targets:
            return False
        if first_command and process.command and process.command != first_command:
            exec_d = True
    return exec_d
