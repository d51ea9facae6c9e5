"""The warning thread: looks at every limited cgroup as often as its headroom needs.

Which cgroups: every cgroup the detector watches (`cgroups`, the detector's published
snapshot of cgroup -> directory, read each turn: an unchanged snapshot costs one
comparison) that has a memory limit of its own and a rule (`rule_for`: None means not
watched, e.g. `oomguard.io/warn-at: "off"`): containers, pod-level cgroups, the
node-allocatable cgroup and QoS levels with a limit; off Kubernetes any limited
cgroup. A container cgroup the detector has just seen created comes through `notice`
at once (the runtime writes its limit right after creating it: looked at again after
`NEW_CGROUP_RECHECKS_S`). Cgroups nested inside a container are left to it.

How: one thread, one poll() over the kernel's pushes (`push`: v1 usage thresholds at
the early level, v2 PSI triggers) and a wake-up eventfd, with the timeout of the next
look due (`schedule`, a heap of due times). Each look feeds the cgroup's `Episode`
(`rule`); a verdict becomes one `OomWarning` through `on_warning`. Rules are asked
again every `RULE_REFRESH_S` (an annotation changed, the policy was reloaded) and the
limit is re-read every `LIMIT_REFRESH_S` (a resized container).

What it costs idle: nothing between looks (poll() sleeps); a look below the early
level is one pread of one small file; where v1 pushes, none at all below it.
Failures (a cgroup removed mid-look, a file unreadable) drop the cgroup quietly; it
comes back with the next snapshot if it still exists.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy
from oomguard.cgroups.path import parse_cgroup_path
from oomguard.records import CgroupIdentity, CgroupKind, Constraint, OomWarning
from oomguard.warn.push import (
    drain_eventfd,
    register_psi_trigger,
    register_usage_threshold,
    register_vmpressure,
)
from oomguard.warn.rule import Episode, Verdict, WarnRule
from oomguard.warn.sample import CgroupFiles, MemorySample, read_limit
from oomguard.warn.schedule import next_look_in

log = logging.getLogger(__name__)

RULE_REFRESH_S = 10.0
RULE_UNSURE_REFRESH_S = 1.0  # while the rule rests on a guess (pod not cached yet)
LIMIT_REFRESH_S = 30.0
NEW_CGROUP_RECHECKS_S = (0.05, 0.3, 1.0, 3.0)
# How often the detector's snapshot is compared (one identity check): pod-level and
# other cgroups that come with no notice are watched within this.
SNAPSHOT_CHECK_S = 10.0
MAX_NOTICES = 256

_CONSTRAINTS = {
    CgroupKind.CONTAINER: Constraint.CONTAINER,
    CgroupKind.POD: Constraint.POD,
    CgroupKind.KUBEPODS: Constraint.NODE_ALLOCATABLE,
    CgroupKind.QOS: Constraint.NODE_ALLOCATABLE,
}


@dataclass(frozen=True, slots=True)
class RuleAnswer:
    """What `rule_for` says about a cgroup: its rule (None: not watched), and whether
    the answer may change soon (the pod or container is not known yet)."""

    rule: WarnRule | None
    unsure: bool = False


def watched_level(identity: CgroupIdentity) -> Constraint | None:
    """The constraint a cgroup's own limit is, or None for cgroups not watched here:
    the root and cgroups nested inside a container (their container covers them)."""
    path = identity.path
    if identity.kind is CgroupKind.ROOT:
        return None
    if identity.kind is CgroupKind.CONTAINER:
        return Constraint.CONTAINER if path == identity.container_path else None
    if identity.kind is CgroupKind.POD:
        return Constraint.POD if path == identity.pod_path else None
    return _CONSTRAINTS.get(identity.kind, Constraint.OTHER)


@dataclass(slots=True)
class Watched:
    """One cgroup being looked at."""

    cgroup: str
    identity: CgroupIdentity
    constraint: Constraint
    files: CgroupFiles
    limit: int
    rule: WarnRule
    episode: Episode
    rule_checked: float
    rule_unsure: bool
    limit_checked: float
    push_fd: int = -1
    pushed_at: int | None = None  # v1: the usage threshold registered, bytes
    reclaim_fd: int = -1  # v1: vmpressure eventfd, read on full looks, never polled
    reclaim_events: int = 0  # v1: its signals so far (cumulative, like failcnt)
    next_look: float = 0.0
    hot_since: float | None = None
    last: MemorySample | None = None
    headroom_bytes: int | None = None  # limit - working set (or usage, below early)
    oom_kills: int | None = None  # the kill count at the last full look (or the start)


@dataclass
class WarnCounters:
    looks: int = 0
    full_looks: int = 0
    pushes: int = 0
    warnings: int = 0
    push_errors: int = 0
    dropped: int = 0
    after_kill: int = 0  # looks that found the cgroup killed since the one before


@dataclass
class _Pending:
    notices: collections.deque[tuple[str, str]] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_NOTICES)
    )


class WarningWatcher:
    """Hands out one `OomWarning` per episode of a cgroup nearing its limit."""

    def __init__(
        self,
        hierarchy: MemoryHierarchy,
        cgroups: Callable[[], Mapping[str, str]],
        rule_for: Callable[[CgroupIdentity], RuleAnswer],
        on_warning: Callable[[OomWarning], None],
        *,
        push: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hierarchy = hierarchy
        self._v1 = hierarchy.version is CgroupVersion.V1
        self._cgroups = cgroups
        self._rule_for = rule_for
        self.on_warning = on_warning
        self.push = push
        self._clock = clock
        self._snapshot: Mapping[str, str] | None = None
        self._watched: dict[str, Watched] = {}
        self._unwatched: dict[str, float] = {}  # cgroup -> when to ask again
        # The same times in order (stale entries skipped): a node's unlimited cgroups
        # (BestEffort containers, QoS levels) wait here, and a turn must not walk them all.
        self._unwatched_due: list[tuple[float, str]] = []
        self._by_fd: dict[int, str] = {}
        self._due: list[tuple[float, int, str]] = []
        self._seq = 0
        self._lock = threading.Lock()
        self._pending = _Pending()
        self._rechecks: list[tuple[float, str, str]] = []
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        # epoll, not poll(): a wait costs the same with 5 registered cgroups or 1,000
        # (poll() scans every descriptor on each wake-up: most of the idle cost at 500).
        self._poll = select.epoll()
        self._poll.register(self._wake, select.EPOLLIN)
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.counters = WarnCounters()
        self._push_error_said = False

    # ----- life cycle -------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="warnings", daemon=True)
        self._thread.start()

    def run(self) -> None:
        while not self._stopping:
            try:
                self.step()
            except Exception:  # a bug must not end the warnings for the node
                log.exception("warning watcher turn failed; going on")
                time.sleep(1.0)

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping = True
        os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def close(self) -> None:
        self.stop()
        for cgroup in list(self._watched):
            self._drop(cgroup)
        with contextlib.suppress(OSError):
            os.close(self._wake)
        self._poll.close()

    def notice(self, cgroup: str, directory: str) -> None:
        """A cgroup just created (from the detector's thread): look at it at once."""
        with self._lock:
            self._pending.notices.append((cgroup, directory))
        with contextlib.suppress(OSError):
            os.eventfd_write(self._wake, 1)

    # ----- what the agent reads --------------------------------------------------

    def headrooms(self) -> dict[str, tuple[CgroupIdentity, int]]:
        """Container cgroups and their headroom to the limit that binds them (bytes):
        their own, or their pod's when that is closer. A snapshot, thread-safe."""
        with self._lock:
            items = list(self._watched.values())
        by_cgroup = {w.cgroup: w for w in items}
        out: dict[str, tuple[CgroupIdentity, int]] = {}
        for w in items:
            if w.constraint is not Constraint.CONTAINER or w.headroom_bytes is None:
                continue
            headroom = w.headroom_bytes
            pod = by_cgroup.get(w.identity.pod_path or "")
            if pod is not None and pod.headroom_bytes is not None:
                headroom = min(headroom, pod.headroom_bytes)
            out[w.cgroup] = (w.identity, headroom)
        return out

    @property
    def watched_count(self) -> int:
        return len(self._watched)

    # ----- one turn -----------------------------------------------------------------

    def step(self, max_wait_s: float | None = None) -> None:
        """Wait for a push, a notice or the next look due; do what is due."""
        now = self._clock()
        if self._snapshot is None:
            self._sync(now)
        timeout = min(self._next_due() - now, SNAPSHOT_CHECK_S)
        if max_wait_s is not None:
            timeout = min(timeout, max_wait_s)
        ready = self._poll.poll(max(0.0, timeout))
        now = self._clock()
        for fd, _ in ready:
            if fd == self._wake:
                drain_eventfd(self._wake)
                continue
            cgroup = self._by_fd.get(fd)
            if cgroup is not None:
                self.counters.pushes += 1
                if self._v1:
                    drain_eventfd(fd)
                self._look(cgroup, now)
        self._take_notices(now)
        self._sync(now)
        self._rechecks_due(now)
        while self._due and self._due[0][0] <= now:
            at, _, cgroup = heapq.heappop(self._due)
            w = self._watched.get(cgroup)
            if w is not None and w.next_look == at:
                self._look(cgroup, now)

    def _next_due(self) -> float:
        due = [self._due[0][0]] if self._due else []
        if self._rechecks:
            due.append(min(at for at, _, _ in self._rechecks))
        if self._unwatched_due:
            due.append(self._unwatched_due[0][0])
        return min(due, default=float("inf"))

    def _schedule(self, w: Watched, at: float) -> None:
        w.next_look = at
        self._seq += 1
        heapq.heappush(self._due, (at, self._seq, w.cgroup))

    # ----- membership ---------------------------------------------------------------

    def _take_notices(self, now: float) -> None:
        with self._lock:
            notices = list(self._pending.notices)
            self._pending.notices.clear()
        for cgroup, directory in notices:
            self._consider(cgroup, directory, now)
            for delay in NEW_CGROUP_RECHECKS_S:
                self._rechecks.append((now + delay, cgroup, directory))

    def _rechecks_due(self, now: float) -> None:
        if not self._rechecks:
            return
        due = [r for r in self._rechecks if r[0] <= now]
        self._rechecks = [r for r in self._rechecks if r[0] > now]
        for _, cgroup, directory in due:
            if cgroup not in self._watched:
                self._unwatched.pop(cgroup, None)
                self._consider(cgroup, directory, now)

    def _sync(self, now: float) -> None:
        snapshot = self._cgroups()
        if snapshot is not self._snapshot:
            previous = self._snapshot or {}
            self._snapshot = snapshot
            for cgroup in [c for c in self._watched if c not in snapshot]:
                self._drop(cgroup)
            for cgroup in [c for c in self._unwatched if c not in snapshot]:
                del self._unwatched[cgroup]
            for cgroup, directory in snapshot.items():
                if cgroup not in previous and cgroup not in self._watched:
                    self._consider(cgroup, directory, now)
        while self._unwatched_due and self._unwatched_due[0][0] <= now:
            at, cgroup = heapq.heappop(self._unwatched_due)
            if self._unwatched.get(cgroup) != at:
                continue  # asked again since, or no longer waiting
            del self._unwatched[cgroup]
            found = snapshot.get(cgroup)
            if found is not None:
                self._consider(cgroup, found, now)

    def _ask_later(self, cgroup: str, at: float) -> None:
        self._unwatched[cgroup] = at
        heapq.heappush(self._unwatched_due, (at, cgroup))

    def _consider(self, cgroup: str, directory: str, now: float) -> None:
        """Watch a cgroup if it has a limit and a rule; else ask again later."""
        if cgroup in self._watched:
            return
        identity = parse_cgroup_path(cgroup)
        constraint = watched_level(identity)
        if constraint is None:
            return
        answer = self._rule_for(identity)
        again = RULE_UNSURE_REFRESH_S if answer.unsure else LIMIT_REFRESH_S
        if answer.rule is None:
            self._ask_later(cgroup, now + again)
            return
        # The limit first, from its one file: most cgroups a node asks about again and
        # again have none (BestEffort containers, QoS levels, pods without limits), and
        # opening all the files a look needs for each would be most of the idle cost.
        try:
            limit = read_limit(self.hierarchy.version, directory)
        except FileNotFoundError:
            return  # gone, or not a memory cgroup
        except OSError:
            limit = None
        if limit is None:
            self._ask_later(cgroup, now + again)
            return
        try:
            files = CgroupFiles(self.hierarchy.version, directory)
        except FileNotFoundError:
            return
        except OSError:
            # Out of descriptors (EMFILE: five per watched cgroup) or the like: not
            # for good, ask again while the detector still has it.
            if self._snapshot is not None and cgroup in self._snapshot:
                self._ask_later(cgroup, now + LIMIT_REFRESH_S)
            return
        try:
            kills = files.oom_kills()
        except OSError:
            kills = None
        w = Watched(
            cgroup=cgroup,
            identity=identity,
            constraint=constraint,
            files=files,
            limit=limit,
            rule=answer.rule,
            episode=Episode(answer.rule),
            rule_checked=now,
            rule_unsure=answer.unsure,
            limit_checked=now,
            oom_kills=kills,
        )
        with self._lock:
            self._watched[cgroup] = w
        self._register_push(w)
        self._register_reclaim(w)
        self._look(cgroup, now)

    def _drop(self, cgroup: str) -> None:
        with self._lock:
            w = self._watched.pop(cgroup, None)
        if w is None:
            return
        self._unregister_push(w)
        if w.reclaim_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(w.reclaim_fd)
            w.reclaim_fd = -1
        w.files.close()

    # ----- pushes ---------------------------------------------------------------------

    def _register_push(self, w: Watched) -> None:
        if not self.push:
            return
        try:
            if self._v1:
                early = w.rule.early_bytes(w.limit)
                w.push_fd = register_usage_threshold(w.files.directory, early)
                w.pushed_at = early
            else:
                w.push_fd = register_psi_trigger(w.files.directory)
        except OSError as exc:
            self.counters.push_errors += 1
            if not self._push_error_said:
                self._push_error_said = True
                log.info(
                    "the kernel cannot wake the warning watcher for %s (%s): cgroups "
                    "whose registration fails are sampled instead",
                    w.cgroup,
                    exc.strerror or exc,
                )
            return
        self._by_fd[w.push_fd] = w.cgroup
        self._poll.register(w.push_fd, select.EPOLLPRI if not self._v1 else select.EPOLLIN)

    def _register_reclaim(self, w: Watched) -> None:
        """v1: count the cgroup's reclaim (memory.failcnt stays 0 on kernel 6.18)."""
        if not self.push or not self._v1:
            return
        try:
            w.reclaim_fd = register_vmpressure(w.files.directory)
        except OSError:
            self.counters.push_errors += 1

    def _unregister_push(self, w: Watched) -> None:
        if w.push_fd < 0:
            return
        self._by_fd.pop(w.push_fd, None)
        with contextlib.suppress(OSError, ValueError):
            self._poll.unregister(w.push_fd)
        with contextlib.suppress(OSError):
            os.close(w.push_fd)
        w.push_fd = -1
        w.pushed_at = None

    # ----- looking --------------------------------------------------------------------

    def _refresh(self, w: Watched, now: float) -> bool:
        """Ask the rule and the limit again when due; False: no longer watched."""
        every = RULE_UNSURE_REFRESH_S if w.rule_unsure else RULE_REFRESH_S
        if now - w.rule_checked >= every:
            w.rule_checked = now
            answer = self._rule_for(w.identity)
            w.rule_unsure = answer.unsure
            if answer.rule is None:
                self._drop(w.cgroup)
                self._ask_later(w.cgroup, now + RULE_REFRESH_S)
                return False
            if answer.rule != w.rule:
                w.rule = answer.rule
                w.episode.rule = answer.rule
                self._repush(w)
        if now - w.limit_checked >= LIMIT_REFRESH_S:
            w.limit_checked = now
            limit = w.files.limit()
            if limit is None:
                self._drop(w.cgroup)
                self._ask_later(w.cgroup, now + LIMIT_REFRESH_S)
                return False
            if limit != w.limit:
                w.limit = limit
                self._repush(w)
        return True

    def _repush(self, w: Watched) -> None:
        if self._v1 and w.pushed_at != w.rule.early_bytes(w.limit):
            self._unregister_push(w)
            self._register_push(w)

    def _look(self, cgroup: str, now: float) -> None:
        w = self._watched.get(cgroup)
        if w is None:
            return
        try:
            if not self._refresh(w, now):
                return
            self._look_at(w, now)
        except OSError:
            self._drop_for_now(cgroup, now)
        except Exception:  # a bug in one look must not unwatch the cgroup for good
            log.exception("looking at %s failed; trying again later", cgroup)
            self._drop_for_now(cgroup, now)

    def _drop_for_now(self, cgroup: str, now: float) -> None:
        """A failed look: drop the cgroup, and ask again while the detector still has it.

        Removed cgroups fail here too; they leave the snapshot and are forgotten then.
        Without the retry a cgroup still in the snapshot would never be looked at again:
        only cgroups new to a snapshot are considered.
        """
        self.counters.dropped += 1
        self._drop(cgroup)
        if self._snapshot is not None and cgroup in self._snapshot:
            self._ask_later(cgroup, now + LIMIT_REFRESH_S)

    def _look_at(self, w: Watched, now: float) -> None:
        self.counters.looks += 1
        early = w.rule.early_bytes(w.limit)
        sample = w.files.read_usage(now, w.limit)
        # What the schedule goes by: the working set where it was read. A cgroup whose
        # usage is page cache at its limit is as far from a warning as its working set
        # says, and is looked at as rarely as that allows (not every second for ever).
        seen = sample.usage_bytes
        if sample.usage_bytes >= early:
            self.counters.full_looks += 1
            sample = w.files.read_sample(now, w.limit)
            working_set = sample.working_set_bytes
            assert working_set is not None
            seen = working_set
            limit_hits = sample.limit_hits
            if w.reclaim_fd >= 0:
                w.reclaim_events += drain_eventfd(w.reclaim_fd)
                limit_hits = (limit_hits or 0) + w.reclaim_events
            if sample.oom_kills is not None:
                if w.oom_kills is not None and sample.oom_kills > w.oom_kills:
                    # Killed since the last look: this one may see the victim's memory
                    # not yet freed. The detector reports the kill; no warning after it.
                    w.episode.killed()
                    self.counters.after_kill += 1
                w.oom_kills = sample.oom_kills
            verdict = w.episode.observe(
                now,
                working_set_bytes=working_set,
                usage_bytes=sample.usage_bytes,
                limit_bytes=w.limit,
                limit_hits=limit_hits,
                pressure_some_avg10=sample.pressure_some_avg10,
            )
            w.headroom_bytes = max(0, w.limit - working_set)
            if verdict is not None:
                self._warn(w, verdict)
        else:
            if w.episode.warned:
                # Below the early level the working set is too: the episode may end.
                w.episode.observe(
                    now,
                    working_set_bytes=sample.usage_bytes,
                    usage_bytes=sample.usage_bytes,
                    limit_bytes=w.limit,
                )
            w.headroom_bytes = max(0, w.limit - sample.usage_bytes)
        w.last = sample
        if seen < early:
            w.hot_since = None
        elif w.hot_since is None:
            w.hot_since = now
        interval = next_look_in(
            usage_bytes=seen,
            early_bytes=early,
            # The v1 threshold is on usage: it signals a crossing only from below.
            pushed_below_early=w.push_fd >= 0 and self._v1 and sample.usage_bytes < early,
            warned=w.episode.warned,
            rising_bytes_per_s=w.episode.rising_bytes_per_s,
            hot_for_s=0.0 if w.hot_since is None else now - w.hot_since,
        )
        if w.episode.warned and interval > 1.0 and sample.usage_bytes < early:
            # An episode ends by time below the re-arm level: keep looking to see it.
            interval = 1.0
        self._schedule(w, now + interval)

    def _warn(self, w: Watched, verdict: Verdict) -> None:
        self.counters.warnings += 1
        warning = OomWarning(
            time=datetime.now(UTC),
            cgroup=w.cgroup,
            identity=w.identity,
            constraint=w.constraint,
            signal=verdict.signal.value,
            limit_bytes=verdict.limit_bytes,
            working_set_bytes=verdict.working_set_bytes,
            usage_bytes=verdict.usage_bytes,
            warn_at_percent=w.rule.warn_at_percent,
            pressure_some_avg10=verdict.pressure_some_avg10,
            reclaims_10s=verdict.reclaims_10s,
            growth_bytes_per_s=verdict.growth_bytes_per_s,
            seconds_to_limit=verdict.seconds_to_limit,
        )
        try:
            self.on_warning(warning)
        except Exception:
            log.exception("handing on a warning for %s failed", w.cgroup)
