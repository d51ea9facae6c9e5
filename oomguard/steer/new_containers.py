"""Give a new container's first processes the policy's oom_score_adj at once.

The detector's cgroup watch says when a container cgroup appears
(`OomWatcher.on_new_container`, from inotify IN_CREATE on the pod's directory, before
the runtime starts the container's first process in it). `notice` takes it from the
detector thread; the steering thread decides what the cgroup's processes get
(`new_container_plan`, with the pod from the pod cache and the policy in force) and,
when the pod's policy names a value, follows the cgroup for a short window
(`FollowedCgroup`): first until its first process joins (cgroup v2: `cgroup.events`
says `populated 1`, inotify IN_MODIFY; v1 has no such signal: `cgroup.procs` is read
every few ms), then until the runtime is done with it, bringing every process the
runtime gave the kubelet's value to the policy's. On cgroup v2 the cgroup's
memory.oom.group gets the container's kill mode the same way (rewritten after the
runtime writes the kubelet's), for containers whose mode oomguard set before.

Why a thread of its own, fed straight by the detector: the main loop delivers Events
over HTTP (seconds when the API server is slow) and runs reconcile passes over every
pod (tens of milliseconds on a full node); a container started meanwhile would wait for
them. The steering thread does nothing else: it sleeps in poll() with no timeout while
nothing is followed (no work at all when no container starts), and wakes only for a
notice or a followed cgroup's next look.

Bounded: only container cgroups of pods whose policy names a value are followed, at
most `MAX_FOLLOWED` at once, notices waiting at most `MAX_PENDING` (past either, the
reconcile pass steers the container as before); each followed cgroup is looked at
about 130 times at most (`POLL_STEPS`), a few hundred microseconds of CPU per start.

The reads and writes of each look are `new_container_writes`' (race-safe, as the
reconciler's: a PID reused by a stranger is never written). Only the container's own
cgroup is read
(nested cgroups come later, the pass covers them), and processes entering an existing
container from outside (`kubectl exec`) are the reconcile pass's as before.
Nothing is remembered or announced here: the next pass finds the container already
right and settles it as usual.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from inotify_simple import INotify, flags

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.cgroups.path import parse_cgroup_path
from oomguard.closing import Closing
from oomguard.k8s.pod_cache import PodView
from oomguard.metrics import Metrics
from oomguard.proc.handle import read_cgroup_procs
from oomguard.records import ContainerCgroupCreated
from oomguard.steer.admin import AdminPolicy
from oomguard.steer.new_container_plan import (
    FIRST_PROCESS_WAIT_S,
    NewContainerPlan,
    plan_new_container,
    poll_interval_s,
    runtime_done,
)
from oomguard.steer.new_container_writes import (
    FollowedCgroup,
    FollowedCgroupWriter,
    SteeringCounters,
)
from oomguard.steer.plan import decide

log = logging.getLogger(__name__)

MAX_FOLLOWED = 64  # cgroups followed at once
MAX_PENDING = 256  # notices not yet taken by the steering thread


class PodLookup(Protocol):
    """Anything that finds a pod by UID or static-pod hash (`PodCache`)."""

    def lookup_pod(self, uid_or_config_hash: str) -> PodView | None: ...


class PolicyProvider(Protocol):
    """Anything with the admin policy in force, thread-safe (`PolicySource`)."""

    def current(self) -> AdminPolicy: ...


def live_container_ids(pod_cgroup: str, pod_directory: str) -> set[str]:
    """The container IDs with a cgroup in a pod's directory now."""
    ids: set[str] = set()
    with contextlib.suppress(OSError), os.scandir(pod_directory) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                ident = parse_cgroup_path(f"{pod_cgroup}/{entry.name}")
                if ident.is_container and ident.container_id:
                    ids.add(ident.container_id)
    return ids


def populated(directory: str) -> bool:
    """Whether a cgroup v2 cgroup (or one below it) holds a process (`cgroup.events`)."""
    try:
        with open(os.path.join(directory, "cgroup.events"), "rb") as f:
            return b"populated 1" in f.read()
    except OSError:
        return False


class NewContainerPlanner:
    """Decides what a new container cgroup gets (`new_container_plan`): the pod from
    the cache, the policy in force, the pod's live cgroups, the reconciler's memory of
    kill modes. Called from the steering thread: every part it asks is thread-safe."""

    def __init__(
        self,
        pods: PodLookup,
        policy_source: PolicyProvider,
        node_memory_bytes: int,
        *,
        v1: bool,
        namespace_labels: Callable[[str], Mapping[str, str]] | None = None,
        kill_mode_remembered: Callable[[str, str], bool] | None = None,
        counters: SteeringCounters | None = None,
    ) -> None:
        self._pods = pods
        self._policy = policy_source
        self.node_memory_bytes = node_memory_bytes
        self._namespace_labels = namespace_labels
        # (pod UID, container name) -> whether oomguard set that container's kill mode
        # before (the reconciler remembers the kubelet's value); None: not steered here.
        self._kill_mode_remembered = None if v1 else kill_mode_remembered
        self.counters = counters or SteeringCounters()

    def plan(self, created: ContainerCgroupCreated) -> NewContainerPlan | None:
        """What the new cgroup's processes get; None: its pod is unknown or unsteered."""
        pod = self._pods.lookup_pod(created.pod_uid)
        if pod is None:
            self.counters.unknown_pod += 1
            return None
        decided = decide(
            pod, self._policy.current(), self.node_memory_bytes, self._namespace_labels
        )
        if decided is None:
            return None
        pod_cgroup = created.cgroup.rsplit("/", 1)[0]
        live = live_container_ids(pod_cgroup, os.path.dirname(created.directory))
        remembered = None
        if self._kill_mode_remembered is not None:
            asked = self._kill_mode_remembered
            remembered = {c.name for c in pod.containers if asked(pod.uid, c.name)}
        plan = plan_new_container(pod, decided, created.container_id, live, remembered)
        if plan.left:
            self.counters.left_to_pass += 1
            log.debug(
                "new container %s of pod %s/%s left to the reconcile pass: %s",
                created.container_id[:12],
                pod.namespace,
                pod.name,
                "; ".join(plan.left),
            )
        return plan


class NewContainerSteering(Closing):
    """Follows new container cgroups of governed pods; see the module docstring.

    `notice` may be called from any thread; everything else runs in the steering
    thread (`start`), or in the caller's for tests (`step`).
    """

    def __init__(
        self,
        hierarchy: MemoryHierarchy,
        planner: NewContainerPlanner,
        *,
        metrics: Metrics | None = None,
        proc_root: str = "/proc",
        clock: Callable[[], float] = time.monotonic,
        max_followed: int = MAX_FOLLOWED,
    ) -> None:
        self.hierarchy = hierarchy
        self._v1 = hierarchy.version is CgroupVersion.V1
        self.planner = planner
        self._clock = clock
        self.max_followed = max_followed
        self.counters = planner.counters
        self._writer = FollowedCgroupWriter(
            self.counters, v1=self._v1, proc_root=proc_root, metrics=metrics
        )
        self._lock = threading.Lock()
        self._pending: list[ContainerCgroupCreated] = []
        self._followed: dict[str, FollowedCgroup] = {}
        self._by_wd: dict[int, str] = {}
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._inotify = None if self._v1 else INotify(nonblocking=True)
        self._poll = select.poll()
        self._poll.register(self._wake, select.POLLIN)
        if self._inotify is not None:
            self._poll.register(self._inotify.fileno(), select.POLLIN)
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ----- from the detector thread ----------------------------------------------------

    def notice(self, created: ContainerCgroupCreated) -> None:
        """A container cgroup appeared; never blocks (the detector calls it)."""
        with self._lock:
            self.counters.noticed += 1
            if len(self._pending) >= MAX_PENDING:
                self.counters.dropped += 1
                return
            self._pending.append(created)
        os.eventfd_write(self._wake, 1)

    # ----- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="steer-new", daemon=True)
        self._thread.start()

    def run(self) -> None:
        while not self._stopping:
            try:
                self.step()
            except Exception:  # never seen; the thread must outlive it all the same
                self.counters.errors += 1
                log.exception("the new-container steering failed; going on")
                time.sleep(0.1)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join(timeout_s)

    def close(self) -> None:
        self.stop()
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        os.close(self._wake)

    @property
    def following(self) -> int:
        return len(self._followed)

    # ----- one turn --------------------------------------------------------------------

    def step(self, max_wait_s: float | None = None) -> None:
        """Wait for a notice, a populated cgroup or the next look; do what is due."""
        now = self._clock()
        due = min((f.next_look for f in self._followed.values()), default=None)
        wait_s = None if due is None else max(0.0, due - now)
        if max_wait_s is not None:
            wait_s = max_wait_s if wait_s is None else min(wait_s, max_wait_s)
        for fd, _ in self._poll.poll(None if wait_s is None else wait_s * 1000):
            if fd == self._wake:
                with contextlib.suppress(BlockingIOError):
                    os.eventfd_read(self._wake)
            else:
                self._populated_events()
        for created in self._take_pending():
            self._guarded(self._begin, created)
        now = self._clock()
        for followed in list(self._followed.values()):
            if followed.next_look <= now:
                self._guarded(self._look, followed, now)

    def _guarded(self, action: Callable[..., None], *args: object) -> None:
        """One cgroup's trouble (a bug, an odd pod) must not stop the others'."""
        try:
            action(*args)
        except Exception:
            self.counters.errors += 1
            log.exception("steering a new container failed")
            for arg in args:
                if isinstance(arg, FollowedCgroup):
                    self._finish(arg)

    def _take_pending(self) -> list[ContainerCgroupCreated]:
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def _begin(self, created: ContainerCgroupCreated) -> None:
        if created.cgroup in self._followed:
            return
        if len(self._followed) >= self.max_followed:
            with self._lock:
                self.counters.dropped += 1
            return
        plan = self.planner.plan(created)
        if plan is None or not plan.steers:
            return
        self.counters.followed += 1
        now = self._clock()
        followed = FollowedCgroup(
            created, plan, phase_start=now, next_look=now, kill_mode=plan.kill_mode
        )
        self._followed[created.cgroup] = followed
        if self._inotify is not None:
            # Before the first look: a process joining in between is then either seen
            # by the look or signalled after it.
            with contextlib.suppress(OSError):
                wd = self._inotify.add_watch(created.directory + "/cgroup.events", flags.MODIFY)
                followed.events_wd = wd
                self._by_wd[wd] = created.cgroup
        self._look(followed, now)

    # ----- following ---------------------------------------------------------------------

    def _populated_events(self) -> None:
        """cgroup.events changed (v2): a followed cgroup's first process may be in."""
        assert self._inotify is not None
        try:
            events = self._inotify.read(timeout=0)
        except BlockingIOError:
            return
        now = self._clock()
        for event in events:
            cgroup = self._by_wd.get(event.wd)
            followed = self._followed.get(cgroup) if cgroup is not None else None
            if followed is not None and not followed.running:
                followed.next_look = now

    def _look(self, followed: FollowedCgroup, now: float) -> None:
        directory = followed.created.directory
        pids = read_cgroup_procs(directory)
        if not pids:
            self._writer.set_kill_mode(followed)
            self._wait_for_first_process(followed, now)
            return
        if not followed.running:
            followed.running = True
            followed.phase_start = now
        look = self._writer.processes(followed, pids)
        if not followed.first_command:
            followed.first_command = look.first_command
        for process in look.seen:
            # The runtime's value says which group of candidates this container is in.
            followed.kill_mode = followed.plan.kill_modes.get(process.value, followed.kill_mode)
        self._writer.set_kill_mode(followed)
        if look.give_up or runtime_done(look.seen, followed.first_command, followed.targets):
            self._finish(followed)
            return
        interval = poll_interval_s(now - followed.phase_start)
        if interval is None:
            self._finish(followed)
        else:
            followed.next_look = now + interval

    def _wait_for_first_process(self, followed: FollowedCgroup, now: float) -> None:
        """No process yet (or none left): look again soon, or stop."""
        elapsed = now - followed.phase_start
        gone = not os.path.isdir(followed.created.directory)
        if gone or followed.running or elapsed >= FIRST_PROCESS_WAIT_S:
            self._finish(followed)
        elif followed.events_wd >= 0 and populated(followed.created.directory):
            followed.next_look = now  # joined between the read and now
        elif followed.events_wd >= 0:
            # cgroup.events will say when it is populated: only the deadline is due.
            followed.next_look = followed.phase_start + FIRST_PROCESS_WAIT_S
        else:
            followed.next_look = now + (poll_interval_s(elapsed) or FIRST_PROCESS_WAIT_S)

    def _finish(self, followed: FollowedCgroup) -> None:
        followed.done = True
        self._followed.pop(followed.created.cgroup, None)
        if followed.events_wd >= 0:
            self._by_wd.pop(followed.events_wd, None)
            if self._inotify is not None:
                with contextlib.suppress(OSError):  # gone with its cgroup already
                    self._inotify.rm_watch(followed.events_wd)
        log.debug(
            "new container cgroup %s: %d process(es) given the policy's value",
            followed.created.cgroup,
            followed.written,
        )
