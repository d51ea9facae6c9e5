"""The reconcile pass's kill mode part: what lasts between passes, and one pod's turn.

`kill_plan` holds the rules (pure) and `apply.KillModeWriter` the file I/O; this holds
what oomguard remembers having set (per pod UID and container name: the value it wrote
and the one it found before, which `score_state` keeps across agent restarts) and runs
plan, write, settle for one pod. The reconciler owns one and sends the Events it
returns; nothing here talks to the API or raises out of a pod's turn for an I/O error.

Writes made by another thread (the new-container steering, which may set a new
cgroup's mode before any pass sees the container) are handed over through
`written_elsewhere` and taken in at the start of the next pass, so that a removed
annotation still gets the value found before oomguard's first write back.
"""

from __future__ import annotations

import collections
from collections.abc import Container, Iterable, Mapping

from oomguard.k8s.pod_cache import PodView
from oomguard.metrics import Metrics
from oomguard.steer.apply import KillModeWriter
from oomguard.steer.kill_mode import KillModeDecision
from oomguard.steer.kill_plan import (
    KillPlan,
    plan_kill_modes,
    settle_kill_modes,
    written_elsewhere,
)
from oomguard.steer.pass_report import PassReport
from oomguard.steer.plan import AppliedKey, Locate, PodEvent, PodNotes
from oomguard.steer.score_state import AppliedKillMode

# Kill modes handed over between two passes; past this the oldest go (their containers
# then keep the mode if the annotation is removed, until they restart).
MAX_HANDED = 4096


class KillModeSteering:
    """Sets each container cgroup's memory.oom.group to the mode its pod asks for.

    `plan` and `apply` are called from the reconciler's thread only; `written_elsewhere`
    from any thread.
    """

    def __init__(self, *, v1: bool, dry_run: bool, metrics: Metrics | None = None) -> None:
        self.v1 = v1
        self.dry_run = dry_run
        self._writer = KillModeWriter(dry_run=dry_run, metrics=metrics)
        self._set: dict[AppliedKey, AppliedKillMode] = {}
        self._handed: collections.deque[AppliedKillMode] = collections.deque(maxlen=MAX_HANDED)

    @property
    def remembered(self) -> Mapping[AppliedKey, AppliedKillMode]:
        """What oomguard set and has not put back (for the state file)."""
        return self._set

    def __contains__(self, key: object) -> bool:
        """Whether oomguard set the kill mode of (pod UID, container name) and remembers
        the value before. One dict lookup: safe from another thread in CPython."""
        return key in self._set

    def resume(self, remembered: Mapping[AppliedKey, AppliedKillMode]) -> None:
        """Take back what an earlier run of the agent set (from the state file)."""
        self._set.update(remembered)

    def written_elsewhere(self, value: AppliedKillMode) -> None:
        """Another thread wrote a container's memory.oom.group; `value.before` is what it
        found there after the runtime had set the kubelet's value (a new cgroup holds
        the kernel's 0 until then). Thread-safe; taken in by the next `begin_pass`."""
        self._handed.append(value)

    def begin_pass(self) -> None:
        while self._handed:
            value = self._handed.popleft()
            key = (value.pod_uid, value.container)
            self._set[key] = written_elsewhere(self._set.get(key), value)

    def forget_pods_except(self, seen: Container[str]) -> None:
        """Forget the containers of pods that are gone (their cgroups with them)."""
        for key in [key for key in self._set if key[0] not in seen]:
            del self._set[key]

    def plan(
        self,
        pod: PodView,
        decisions: Iterable[KillModeDecision],
        locate: Locate,
        said: Container[tuple[str, str]],
    ) -> KillPlan:
        return plan_kill_modes(pod, tuple(decisions), self._set, locate, said, v1=self.v1)

    def apply(
        self, pod: PodView, plan: KillPlan, notes: PodNotes, report: PassReport
    ) -> list[PodEvent]:
        """Write and settle one pod's plan; the Events to send (its Warnings first).
        Updates `notes.kill_announced`."""
        for key in plan.forget:
            self._set.pop(key, None)
        tallies = [self._writer.apply(work, report) for work in plan.work]
        settled = settle_kill_modes(pod, plan, tallies, self._set, notes, dry_run=self.dry_run)
        for value in settled.remember:
            self._set[(value.pod_uid, value.container)] = value
        for key in settled.forget:
            self._set.pop(key, None)
        notes.kill_announced = settled.announced
        return [*plan.events, *settled.events]
