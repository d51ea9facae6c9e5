"""What a reconcile pass should do with each container's kill mode, decided without
touching the node.

The kill mode's twin of `plan` (which does oom_score_adj): pure functions, one table
row each in `tests/unit/test_reconcile_plan.py`. A container's kill mode is one file,
`memory.oom.group` of its container cgroup (cgroup v2): 1, "container", one OOM kill
takes every process of the container (the kubelet's setting on v2, unless the node
sets `singleProcessOOMKill`); 0, "process", only the process the kernel picks dies.
`kill_mode.decide_kill_modes` says which mode each container should have; `apply`
reads and writes the file; the reconciler sends what these functions return.

A pod goes through two steps here (between them, one read and at most one write per
container, `apply.KillModeWriter`):

1. `plan_kill_modes`, given the kill modes oomguard set before (`remembered`) and where
   each container's cgroup is: the files to set (`KillWork`), the ones to put back,
   the containers to forget, the Warnings about the requests.
2. `settle_kill_modes`, given what the reads and writes found (`KillTally`, one per
   piece of work: the writer never raises): what to remember, forget and announce, and
   the Warnings about failed writes.

The rules:

- A container whose decision names a mode (the pod's request, or the policy's default
  for its namespace) gets it: its container cgroup's file is written when it holds
  anything else. Nested cgroups below the container cgroup are never touched (the
  kernel kills the processes of the highest cgroup with the flag set, up to the one
  out of memory, so the container cgroup's file is the one that counts).
- The value found before oomguard's first write is remembered per pod UID and
  container name, once that write worked (a value that was already right was never
  changed: nothing to put back). A new cgroup of the same container (a restart gets
  the kubelet's value again) is written again; what is remembered stays the value
  found before the first write.
- Restore: a container that no longer asks for a mode (the annotation went away, or a
  request the policy now refuses) gets the remembered value back, but only while its
  file still holds oomguard's value (someone else's change since is left alone); then
  it is forgotten and a Normal Event says so. Its cgroup gone: forgotten at once.
- Announce: a Normal `OOMKillModeApplied` when the set of (container, mode) in force
  changes, or something was restored; not on every pass.
- Warnings, once per distinct message per pod: `OOMKillModeRefused` for invalid or
  refused requests (the decisions' own words) and for writes the kernel refused (a
  read-only cgroup mount says so, and what the chart needs); `OOMKillModeUnsupported`
  on cgroup v1 (no memory.oom.group: nothing is looked at or written there) for pods
  that ask.
- Dry run: the same reads and counts, nothing written, remembered or forgotten, no
  Normal Event.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass

from oomguard.k8s.pod_cache import PodView
from oomguard.steer.cgroup_index import ContainerCgroup
from oomguard.steer.decision import Outcome
from oomguard.steer.kill_mode import KillMode, KillModeDecision
from oomguard.steer.plan import (
    NORMAL,
    WARNING,
    AppliedKey,
    Locate,
    PodEvent,
    PodNotes,
    locate_container,
    pod_keys,
)
from oomguard.steer.score_state import AppliedKillMode

REASON_KILL_MODE_APPLIED = "OOMKillModeApplied"
REASON_KILL_MODE_REFUSED = "OOMKillModeRefused"
REASON_KILL_MODE_UNSUPPORTED = "OOMKillModeUnsupported"

# `PodEvent.kill_result`: the oomguard_kill_mode_changes_total result an Event counts.
RESULT_REFUSED = "refused"
RESULT_UNSUPPORTED = "unsupported"

KillModes = Mapping[AppliedKey, AppliedKillMode]

UNSUPPORTED_MESSAGE = (
    "oomguard.io/oom-kill has no effect on this node: it runs cgroup v1, which has no "
    "memory.oom.group (no group kill); every OOM kill here takes only the process the "
    'kernel picks, as "process" would. Nothing was changed.'
)

_WHAT_DIES = {
    KillMode.CONTAINER.oom_group: "all its processes die together",
    KillMode.PROCESS.oom_group: "only the process the kernel picks dies",
}


def describe(oom_group: int) -> str:
    """memory.oom.group=0 or 1 in words, for messages."""
    mode = KillMode.of_oom_group(oom_group)
    return f'{oom_group} ("{mode.value}": {_WHAT_DIES[mode.oom_group]})'


# ---------------------------------------------------------------------------- step 1


@dataclass(slots=True)
class KillWork:
    """Bring one container cgroup's memory.oom.group to `target`.

    With `only_from` (a restore), only a file that holds exactly that (oomguard's
    value) changes.
    """

    decision: KillModeDecision
    container_id: str
    cgroup: ContainerCgroup
    target: int
    only_from: int | None = None


@dataclass(slots=True)
class KillPlan:
    """What to do with one pod's kill modes before any file is read."""

    keep_notes: bool  # False: nothing to do or say about the pod's kill modes
    work: tuple[KillWork, ...] = ()
    forget: tuple[AppliedKey, ...] = ()  # restores whose cgroup is gone
    events: tuple[PodEvent, ...] = ()  # the Warnings about its requests not said yet


def asks(decisions: Iterable[KillModeDecision]) -> bool:
    """Whether the pod itself asked for a kill mode (valid or not): a namespace default
    is the admin's, not the pod's."""
    return any(d.outcome in (Outcome.APPLIED, Outcome.REFUSED) or d.warning for d in decisions)


def requests_warning(decisions: Sequence[KillModeDecision]) -> PodEvent | None:
    """One Warning for everything wrong with the pod's kill mode requests."""
    warnings = list(dict.fromkeys(d.warning for d in decisions if d.warning))
    if not warnings:
        return None
    message = "; ".join(w.rstrip(".") for w in warnings) + "."
    return PodEvent(
        WARNING,
        REASON_KILL_MODE_REFUSED,
        message,
        log_level=logging.WARNING,
        kill_result=RESULT_REFUSED,
    )


def plan_kill_modes(
    pod: PodView,
    decisions: Sequence[KillModeDecision],
    remembered: KillModes,
    locate: Locate,
    said: Container[tuple[str, str]] = (),
    *,
    v1: bool = False,
) -> KillPlan:
    """What to do with one pod's kill modes, given what oomguard set before
    (`remembered`), where the containers' cgroups are (`locate`, asked only for the
    containers that need something) and the Warnings already said (`said`)."""
    uid = pod.uid
    wanted = [d for d in decisions if d.mode is not None]
    restoring = [d for d in decisions if d.mode is None and (uid, d.container) in remembered]
    warnings = _request_warnings(decisions, v1=v1)
    events = tuple(e for e in warnings if (e.reason, e.message) not in said)
    keep = bool(wanted or restoring or warnings)
    if v1 or not (wanted or restoring):
        return KillPlan(keep, events=events)
    keys = pod_keys(pod)
    work: list[KillWork] = []
    forget: list[AppliedKey] = []
    for decision in (*wanted, *restoring):
        container_id, cgroup, gone = locate_container(pod, keys, decision.container, locate)
        if container_id and cgroup is not None:
            work.append(_work(uid, decision, container_id, cgroup, remembered))
        elif decision.mode is None and gone:
            forget.append((uid, decision.container))
    return KillPlan(keep, tuple(work), tuple(forget), events)


def _request_warnings(decisions: Sequence[KillModeDecision], *, v1: bool) -> list[PodEvent]:
    """What is wrong with the pod's requests, said or not yet."""
    events = [] if (refused := requests_warning(decisions)) is None else [refused]
    if v1 and asks(decisions):
        events.append(
            PodEvent(
                WARNING,
                REASON_KILL_MODE_UNSUPPORTED,
                UNSUPPORTED_MESSAGE,
                kill_result=RESULT_UNSUPPORTED,
            )
        )
    return events


def _work(
    uid: str,
    decision: KillModeDecision,
    container_id: str,
    cgroup: ContainerCgroup,
    remembered: KillModes,
) -> KillWork:
    if decision.mode is not None:
        return KillWork(decision, container_id, cgroup, decision.mode.oom_group)
    was = remembered[(uid, decision.container)]
    return KillWork(decision, container_id, cgroup, was.before, was.oom_group)


def needs_write(current: int, work: KillWork) -> bool:
    """Whether a file holding `current` gets `work.target` (a restore: only from oomguard's)."""
    if current == work.target:
        return False
    return work.only_from is None or current == work.only_from


# ---------------------------------------------------------------------------- step 2


@dataclass(slots=True)
class KillTally:
    """What the read and the write did for one container (`apply` fills it)."""

    found: int | None = None  # the value read first; None: no file (the cgroup is gone)
    written: bool = False  # in a dry run: would be written
    errno: int | None = None  # a read or write that failed
    error: str = ""  # its text (strerror)


@dataclass(slots=True)
class KillSettlement:
    """What to remember, forget and say once one pod's kill modes are done."""

    remember: tuple[AppliedKillMode, ...] = ()  # new or changed
    forget: tuple[AppliedKey, ...] = ()  # restores done
    events: tuple[PodEvent, ...] = ()  # failed writes, then the announcement
    announced: tuple[tuple[str, int], ...] = ()  # for PodNotes.kill_announced


def write_failure(work: KillWork, tally: KillTally) -> PodEvent:
    """The Warning for a read or write that failed, saying what it means for the pod."""
    container = work.decision.container
    action = "set" if work.only_from is None else "put back"
    head = (
        f"oomguard could not {action} memory.oom.group of container {container} "
        f"to {describe(work.target)}"
    )
    code = tally.errno or 0
    if code == errno.EROFS:
        why = (
            "the oomguard agent's cgroup mount is read-only (EROFS); kill modes need it "
            "writable: install the chart with cgroup.readOnly: false"
        )
    elif code in (errno.EACCES, errno.EPERM):
        why = (
            f"permission denied ({errno.errorcode[code]}) writing memory.oom.group; the "
            "agent needs root with write access to the cgroup file system"
        )
    else:
        why = f"{errno.errorcode.get(code, 'error')} {tally.error}".strip()
    keeps = (
        "its current value" if tally.found is None else f"memory.oom.group={describe(tally.found)}"
    )
    return PodEvent(WARNING, REASON_KILL_MODE_REFUSED, f"{head}: {why}. It keeps {keeps}.")


def applied_message(work: KillWork) -> str:
    decision = work.decision
    mode = decision.mode
    assert mode is not None
    return (
        f"container {decision.container} -> {mode.value} "
        f"({_WHAT_DIES[mode.oom_group]}; {decision.source})"
    )


def restored_message(work: KillWork) -> str:
    return (
        f"container {work.decision.container} is back at {describe(work.target)}, the value "
        "before oomguard changed it (no oomguard.io/oom-kill request any more)"
    )


def settle_kill_modes(
    pod: PodView,
    plan: KillPlan,
    tallies: Sequence[KillTally],
    remembered: KillModes,
    notes: PodNotes,
    *,
    dry_run: bool,
) -> KillSettlement:
    """After the reads and writes (`tallies`, one per `plan.work`: the writer never
    raises): what oomguard now has set, what it forgets, and the Events to send.
    `notes` is only read."""
    if len(tallies) != len(plan.work):
        raise ValueError("one tally per piece of work")
    done = list(zip(plan.work, tallies, strict=True))
    events = _write_failures(done, notes.said)
    if dry_run:  # nothing was written: nothing to remember, forget or announce
        return KillSettlement(events=tuple(events), announced=notes.kill_announced)
    # In force: the file holds the mode (written now, or already). A restore without
    # error is done (forgotten); it is announced when the file now holds the value put
    # back (not when the cgroup is gone, or someone else changed the file since).
    ok = [(w, t) for w, t in done if t.errno is None]
    in_force = [w for w, t in ok if w.only_from is None and t.found is not None]
    restores = [(w, t) for w, t in ok if w.only_from is not None]
    restored = [w for w, t in restores if t.written or t.found == w.target]
    announced = tuple(sorted((w.decision.container, w.target) for w in in_force))
    if announced != notes.kill_announced or restored:
        parts = [applied_message(w) for w in in_force] + [restored_message(w) for w in restored]
        if parts:
            message = "memory.oom.group: " + "; ".join(parts)
            events.append(PodEvent(NORMAL, REASON_KILL_MODE_APPLIED, message))
    return KillSettlement(
        _remember(pod.uid, done, remembered),
        tuple((pod.uid, w.decision.container) for w, _ in restores),
        tuple(events),
        announced,
    )


def _write_failures(
    done: Iterable[tuple[KillWork, KillTally]], said: Container[tuple[str, str]]
) -> list[PodEvent]:
    """One Warning per distinct failure not said before."""
    events: list[PodEvent] = []
    for event in (write_failure(w, t) for w, t in done if t.errno is not None):
        key = (event.reason, event.message)
        if key not in said and all(key != (e.reason, e.message) for e in events):
            events.append(event)
    return events


def _remember(
    uid: str, done: Iterable[tuple[KillWork, KillTally]], remembered: KillModes
) -> tuple[AppliedKillMode, ...]:
    """The containers whose file oomguard changed now, or whose remembered value moved
    to another mode that was found already in place. The value found before the first
    write is kept across every later write (a restart, a change of mode)."""
    out = []
    for work, tally in done:
        if work.only_from is not None or tally.errno is not None or tally.found is None:
            continue
        key = (uid, work.decision.container)
        was = remembered.get(key)
        if tally.written:
            before = tally.found if was is None else was.before
            if was is None or was.oom_group != work.target:
                out.append(AppliedKillMode(uid, key[1], work.target, before))
        elif was is not None and was.oom_group != work.target:
            out.append(AppliedKillMode(uid, key[1], work.target, was.before))
    return tuple(out)


def written_elsewhere(was: AppliedKillMode | None, written: AppliedKillMode) -> AppliedKillMode:
    """What to remember when another part of the agent (the new-container steering)
    wrote a container's memory.oom.group itself: its value, but the value found before
    oomguard's *first* write if one is remembered already."""
    if was is None:
        return written
    return AppliedKillMode(was.pod_uid, was.container, written.oom_group, was.before)
