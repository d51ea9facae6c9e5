"""Keep every cgroup below a root watched, and say which ones counted a kill.

The set of cgroups follows containers as they come and go: inotify IN_CREATE /
IN_DELETE on each watched directory (mkdir and rmdir of cgroups reach a watch on the
parent, on v1 and v2 alike), plus a full rescan on every resync as a safety net for a
lost or overflowed inotify queue. Counter changes are pushed by the kernel where it
can (v2: inotify IN_MODIFY on memory.events; v1: one eventfd per cgroup registered
through cgroup.event_control, since v1 neither notifies inotify nor propagates to
ancestors) and found by the periodic resync where it cannot (a v1 global OOM signals
no eventfd).

With `track_created`, the cgroups that inotify reported created are kept for the loop
to take (`take_created`), so it can say at once that a container's cgroup appeared
(before the runtime starts the container's first process in it). Only inotify's: a
cgroup a rescan finds is old news by then; the reconcile pass covers it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from inotify_simple import INotify, flags

from oomguard.cgroups.classify import LimitEvidence, limit_reached_while_down
from oomguard.cgroups.counters import (
    MemoryCounters,
    kills_between,
    limit_hits_rose,
    limit_was_hit,
    read_counters,
    read_peak_and_limit,
    resume_baseline,
)
from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy

log = logging.getLogger(__name__)

# Created cgroups kept until the loop takes them (once per turn): a bound against a
# loop that never takes them, far above what one turn of mkdirs brings.
_MAX_CREATED = 4096
_DIR_MASK = flags.CREATE | flags.DELETE | flags.ONLYDIR | flags.DELETE_SELF
_FILE_MASK = flags.MODIFY


@dataclass(frozen=True)
class CounterChange:
    """A cgroup whose own `oom_kill` went up by `kills` since the last read."""

    cgroup: str
    kills: int
    # Cgroups among this one and its watched ancestors whose own limit was reached
    # recently: the evidence for classifying the kill when the kernel log is unreadable.
    limit_hit_paths: frozenset[str]
    # The counter after the change: the kills are values value-kills+1 .. value.
    value: int | None = None
    # When the kills were counted, on CLOCK_MONOTONIC (None: unknown): after the read
    # before (`since_mono`, which did not show them) and before the read that did
    # (`seen_mono`). `signal_mono`: when this cgroup's v1 OOM eventfd fired since its last
    # counted kill; the kernel signals as the OOM starts and kills right after. The
    # evidence that pairs a kill line that names no cgroup with its increase (`detector`).
    seen_mono: float | None = None
    since_mono: float | None = None
    signal_mono: float | None = None


@dataclass
class _Watched:
    directory: str
    counters: MemoryCounters | None
    eventfd: int = -1
    dir_wd: int = -1
    file_wd: int = -1
    last_limit_hit: float = field(default=-1e18)
    read_mono: float | None = None  # when `counters` was read (the read's start)
    signal_mono: float | None = None  # the OOM eventfd's last signal not yet followed by a kill
    # The `oom` count handed on for a restart (`limit_hit_counts`), and until when it
    # must not move (evidence of kills recovered at the start that are not handed on yet).
    limit_hits_settled: int = 0
    settle_after: float = field(default=-1e18)


class CgroupWatch:
    """The watched set below `root`, with its notification file descriptors.

    Not thread-safe: one loop owns it (see `engine`).
    """

    LIMIT_HIT_WINDOW_S = 5.0

    def __init__(
        self,
        hierarchy: MemoryHierarchy,
        root: Path,
        *,
        push: bool = True,
        track_created: bool = False,
    ) -> None:
        self.hierarchy = hierarchy
        self.root = Path(root)
        self._mount = str(hierarchy.mount).rstrip("/")
        self.push = push
        self._watched: dict[str, _Watched] = {}
        self._by_eventfd: dict[int, str] = {}
        self._by_wd: dict[int, str] = {}
        self._rechecks: list[tuple[float, str]] = []
        self._removed: list[str] = []  # since the last take_removed()
        self.track_created = track_created
        self._created: list[tuple[str, str]] = []  # (cgroup, directory) since take_created()
        self._inotify: INotify | None = INotify(nonblocking=True) if push else None
        self.push_errors = 0
        # Watched cgroups the kernel cannot push for (registration refused: a read-only
        # cgroup mount, out of watches): their counters are read at each resync only.
        self._unpushed: set[str] = set()
        self.rescans = 0
        # The watched set as another thread may read it (`published`): replaced whole
        # by `publish` at the end of a turn that changed it, never changed in place.
        self.published: Mapping[str, str] = MappingProxyType({})
        self._published_stale = False

    # ----- the watched set -------------------------------------------------------

    def start(
        self,
        handed_on: Mapping[str, int] | None = None,
        limit_hits: Mapping[str, int] | None = None,
    ) -> list[CounterChange]:
        """Take the baseline; return the increases over it.

        Without `handed_on`, from disk: kills counted before we started are not
        reported, and nothing is returned. With it (the counter values a previous run
        of this boot handed on, see `counters.resume_baseline`), what the cgroups
        counted since is returned as counter changes, each with the evidence of whose
        limit it hit read now (`_limit_reached_while_down`): from the `oom` counts the
        previous run handed on (`limit_hits`, v2; None: unknown), else from peaks.
        """
        if not self.root.is_dir():
            raise FileNotFoundError(f"cgroup root {self.root} does not exist")
        self._scan(baseline_from_disk=True, handed_on=handed_on)
        if handed_on is None:
            return []
        now = time.monotonic()
        rose = self._limit_hits_rose(limit_hits, now)
        changes: list[CounterChange] = []
        for cg in list(self._watched):
            change = self._reread(cg)
            if change is not None:
                recovered = self._limit_reached_while_down(cg, rose)
                if recovered is not None:
                    change = dataclasses.replace(
                        change, limit_hit_paths=change.limit_hit_paths | {recovered}
                    )
                changes.append(change)
        return changes

    def _limit_hits_rose(
        self, limit_hits: Mapping[str, int] | None, now: float
    ) -> dict[str, bool | None]:
        """Per watched cgroup, whether its own `oom` count rose while the agent was down.

        A count that rose is not handed on as it is until LIMIT_HIT_WINDOW_S from now
        (`limit_hit_counts`): the kills it explains are handed on by then, and a restart
        before that finds the same evidence again.
        """
        v2 = self.hierarchy.version is CgroupVersion.V2
        rose: dict[str, bool | None] = {}
        for cg, w in self._watched.items():
            if not v2 or limit_hits is None or w.counters is None:
                rose[cg] = None
                continue
            saved = limit_hits.get(cg, 0)
            rose[cg] = limit_hits_rose(saved, w.counters.limit_hits)
            if rose[cg]:
                w.limit_hits_settled = saved
                w.settle_after = now + self.LIMIT_HIT_WINDOW_S
        return rose

    def _limit_reached_while_down(self, cgroup: str, rose: Mapping[str, bool | None]) -> str | None:
        """The cgroup on `cgroup`'s watched line whose limit a kill while down hit, if any."""
        line: list[LimitEvidence] = []
        path = cgroup
        while True:
            w = self._watched.get(path)
            if w is not None:
                oom_rose = rose.get(path)
                if oom_rose is None:
                    use = read_peak_and_limit(self.hierarchy.version, w.directory)
                    line.append(LimitEvidence(path, None, use.usage_bytes, use.limit_bytes))
                else:
                    line.append(LimitEvidence(path, oom_rose))
            if path == "/":
                break
            path = path.rsplit("/", 1)[0] or "/"
        return limit_reached_while_down(line)

    def cgroups(self) -> list[str]:
        return list(self._watched)

    def publish(self) -> None:
        """Make the watched set as it is now `published` (cgroup -> directory), for the
        warning thread: a new object only when it changed, so a reader compares identity."""
        if self._published_stale:
            self._published_stale = False
            self.published = MappingProxyType(
                {cgroup: w.directory for cgroup, w in self._watched.items()}
            )

    def is_watched(self, cgroup: str) -> bool:
        return cgroup in self._watched

    def directory_of(self, cgroup: str) -> Path | None:
        w = self._watched.get(cgroup)
        return None if w is None else Path(w.directory)

    def _name(self, directory: str) -> str:
        """The kernel's name for a directory below the mount (cheap: runs per cgroup)."""
        if directory.startswith(self._mount + "/"):
            return directory[len(self._mount) :]
        return self.hierarchy.cgroup_of(directory)

    def contains(self, cgroup: str) -> bool:
        """Whether a cgroup path lies at or below the watched root."""
        root = self.hierarchy.cgroup_of(self.root)
        return root == "/" or cgroup == root or cgroup.startswith(root.rstrip("/") + "/")

    def _walk(self, top: str) -> Iterator[str]:
        stack = [top]
        while stack:
            d = stack.pop()
            yield d
            try:
                with os.scandir(d) as it:
                    stack.extend([e.path for e in it if e.is_dir(follow_symlinks=False)])
            except (FileNotFoundError, NotADirectoryError):
                continue

    def _scan(
        self, *, baseline_from_disk: bool, handed_on: Mapping[str, int] | None = None
    ) -> list[CounterChange]:
        """Add cgroups not yet watched, drop vanished ones, re-read every counter."""
        self.rescans += 1
        seen: set[str] = set()
        changes: list[CounterChange] = []
        for d in self._walk(str(self.root)):
            cg = self._name(d)
            seen.add(cg)
            if cg not in self._watched:
                self._add(cg, d, baseline_from_disk=baseline_from_disk, handed_on=handed_on)
                if not baseline_from_disk:
                    change = self._reread(cg)
                    if change is not None:
                        changes.append(change)
            else:
                change = self._reread(cg)
                if change is not None:
                    changes.append(change)
        for cg in [c for c in self._watched if c not in seen]:
            self._remove(cg)
        return changes

    def _add(
        self,
        cgroup: str,
        directory: str,
        *,
        baseline_from_disk: bool,
        handed_on: Mapping[str, int] | None = None,
    ) -> None:
        # A cgroup found after start is new: its counters began at zero, so everything
        # it counted is a kill we have not reported (a container killed seconds after
        # it started).
        w = _Watched(directory=directory, counters=MemoryCounters(oom_kill=0, limit_hits=0))
        self._watched[cgroup] = w
        self._published_stale = True
        if self.push:
            # Before the baseline is read: v1's eventfd signals only OOMs after its
            # registration, so a kill is either in the read or signalled after it.
            self._register_push(cgroup, w)
        if baseline_from_disk:
            w.read_mono = time.monotonic()
            w.counters = resume_baseline(
                read_counters(self.hierarchy.version, directory),
                None if handed_on is None else handed_on.get(cgroup, 0),
            )
            w.limit_hits_settled = 0 if w.counters is None else w.counters.limit_hits

    def _register_push(self, cgroup: str, w: _Watched) -> None:
        assert self._inotify is not None
        try:
            w.dir_wd = self._inotify.add_watch(w.directory, _DIR_MASK)
            self._by_wd[w.dir_wd] = cgroup
            if self.hierarchy.version is CgroupVersion.V2:
                w.file_wd = self._inotify.add_watch(w.directory + "/memory.events", _FILE_MASK)
                self._by_wd[w.file_wd] = cgroup
            else:
                w.eventfd = register_oom_eventfd(w.directory)
                self._by_eventfd[w.eventfd] = cgroup
        except FileNotFoundError:
            pass  # removed while we looked: the next event or rescan drops it
        except PermissionError as exc:
            raise PermissionError(
                exc.errno, "cannot register for memory cgroup notifications", exc.filename
            ) from exc
        except OSError as exc:
            # A read-only mount (EROFS), out of watches or descriptors: the cgroup is
            # still covered by the resync. Said once, not once per cgroup (a node has
            # hundreds); the kernel log is then read every second (`engine`).
            self.push_errors += 1
            self._unpushed.add(cgroup)
            if self.push_errors == 1:
                log.warning(
                    "cannot register for OOM notifications of %s (%s): cgroups whose "
                    "registration fails are read at each resync instead; kills are still "
                    "reported from the kernel log as soon as it is read",
                    cgroup,
                    exc.strerror or exc,
                )
            else:
                log.debug("cannot watch %s for changes (%s)", cgroup, exc)

    @property
    def fully_pushed(self) -> bool:
        """Every watched cgroup's kills are pushed by the kernel (no resync needed)."""
        return self.push and not self._unpushed

    def _remove(self, cgroup: str, *, gone: bool = True) -> None:
        w = self._watched.pop(cgroup, None)
        self._unpushed.discard(cgroup)
        if w is None:
            return
        self._published_stale = True
        if gone:
            self._removed.append(cgroup)
        if w.eventfd >= 0:
            self._by_eventfd.pop(w.eventfd, None)
            os.close(w.eventfd)
        for wd in (w.dir_wd, w.file_wd):
            if wd >= 0:
                self._by_wd.pop(wd, None)
                if self._inotify is not None:
                    # The kernel may have dropped it already, with the directory.
                    with contextlib.suppress(OSError):
                        self._inotify.rm_watch(wd)

    # ----- reading -----------------------------------------------------------------

    def _reread(self, cgroup: str, now: float | None = None) -> CounterChange | None:
        w = self._watched.get(cgroup)
        if w is None:
            return None
        start = time.monotonic()
        after = read_counters(self.hierarchy.version, w.directory)
        if after is None:
            return None
        seen = time.monotonic()
        now = seen if now is None else now
        before, since = w.counters, w.read_mono
        w.counters, w.read_mono = after, start
        if limit_was_hit(before, after):
            w.last_limit_hit = now
        kills = kills_between(before, after)
        if kills <= 0:
            return None
        signal, w.signal_mono = w.signal_mono, None
        return CounterChange(
            cgroup,
            kills,
            self._limit_hits_around(cgroup, now),
            value=after.oom_kill,
            seen_mono=seen,
            since_mono=since,
            signal_mono=signal,
        )

    def _limit_hits_around(self, cgroup: str, now: float) -> frozenset[str]:
        """The cgroups on the victim's line that recently reached their own limit.

        v2 counts `oom` exactly in the cgroup that hit its limit. v1's evidence is the
        OOM eventfd, which the kernel signals in the cgroup that hit its limit and in
        all of its descendants, so there only the top-most one that fired is it.
        """
        hits: list[str] = []
        path = cgroup
        while True:
            w = self._watched.get(path)
            if w is not None:
                if path != cgroup:
                    after = read_counters(self.hierarchy.version, w.directory)
                    if after is not None:
                        # Only the limit baseline moves: a kill counted by the ancestor
                        # itself is still reported when its own wake-up comes.
                        if limit_was_hit(w.counters, after):
                            w.last_limit_hit = now
                        if w.counters is not None:
                            w.counters = MemoryCounters(
                                w.counters.oom_kill, after.limit_hits, w.counters.group_kills
                            )
                if now - w.last_limit_hit <= self.LIMIT_HIT_WINDOW_S:
                    hits.append(path)
            if path == "/":
                break
            path = path.rsplit("/", 1)[0] or "/"
        if self.hierarchy.version is CgroupVersion.V1 and hits:
            return frozenset(hits[-1:])
        return frozenset(hits)

    RECHECK_DELAYS_S = (0.05, 0.5)

    def _schedule_recheck(self, cgroup: str) -> None:
        now = time.monotonic()
        for delay in self.RECHECK_DELAYS_S:
            self._rechecks.append((now + delay, cgroup))
        self._rechecks.sort()

    def next_recheck(self) -> float | None:
        return self._rechecks[0][0] if self._rechecks else None

    def recheck_signalled(self) -> list[CounterChange]:
        """Re-read now the cgroups that signalled an OOM whose kill was not counted yet:
        a kill line just printed says the count is there (the kernel counts, then prints).
        Their scheduled rechecks stay: a cgroup whose OOM is still under way (not this
        line's) must still be looked at again."""
        cgroups = dict.fromkeys(cg for _, cg in self._rechecks)
        now = time.monotonic()
        changes = [self._reread(cg, now) for cg in cgroups]
        return [c for c in changes if c is not None]

    def due_rechecks(self, now: float) -> list[CounterChange]:
        """Re-read cgroups whose wake-up showed no kill yet (see handle_ready)."""
        changes: list[CounterChange] = []
        while self._rechecks and self._rechecks[0][0] <= now:
            _, cgroup = self._rechecks.pop(0)
            change = self._reread(cgroup, now)
            if change is not None:
                changes.append(change)
        return changes

    def resync(self) -> list[CounterChange]:
        """Rescan the tree and re-read every counter (the poll and the safety net)."""
        return self._scan(baseline_from_disk=False)

    def reread_unpushed(self, signal_mono: float) -> list[CounterChange]:
        """Re-read the counters the kernel cannot push for, because a kill line that names
        no cgroup was printed at `signal_mono`: that time stands in for the OOM signal
        these cgroups could not give, so the line pairs with its increase (`detector`)."""
        changes: list[CounterChange] = []
        for cgroup in sorted(self._unpushed if self.push else self._watched):
            w = self._watched.get(cgroup)
            if w is None:
                continue
            saved, w.signal_mono = w.signal_mono, signal_mono
            change = self._reread(cgroup)
            if change is None:
                w.signal_mono = saved
                continue
            # No eventfd said whose limit was hit (v1's evidence): the peaks say it.
            reached = self._limit_reached_while_down(cgroup, {})
            if reached is not None:
                change = dataclasses.replace(
                    change, limit_hit_paths=change.limit_hit_paths | {reached}
                )
            changes.append(change)
        return changes

    # ----- push notifications ----------------------------------------------------------

    def fds(self) -> list[int]:
        out = list(self._by_eventfd)
        if self._inotify is not None:
            out.append(self._inotify.fileno())
        return out

    def handle_ready(self, fd: int, now: float | None = None) -> list[CounterChange]:
        """Process one readable descriptor from `fds()`; `now`: when poll() said so."""
        if self._inotify is not None and fd == self._inotify.fileno():
            return self._handle_inotify()
        cgroup = self._by_eventfd.get(fd)
        if cgroup is None:
            return []
        w = self._watched.get(cgroup)
        try:
            os.eventfd_read(fd)
            if w is not None:
                w.last_limit_hit = w.signal_mono = time.monotonic() if now is None else now
        except BlockingIOError:
            pass
        change = self._reread(cgroup)
        if change is None:
            # The kernel may signal before it counts the kill: look again shortly.
            self._schedule_recheck(cgroup)
        if w is not None and not os.path.isdir(w.directory):
            # v1 signals the eventfd when the cgroup is removed, too.
            self._remove(cgroup)
        return [change] if change is not None else []

    def _handle_inotify(self) -> list[CounterChange]:
        assert self._inotify is not None
        changes: list[CounterChange] = []
        to_reread: list[str] = []
        rescan = False
        try:
            events = self._inotify.read(timeout=0)
        except BlockingIOError:
            return []
        for ev in events:
            if ev.mask & flags.Q_OVERFLOW:
                rescan = True
                continue
            cgroup = self._by_wd.get(ev.wd)
            if cgroup is None:
                continue
            if ev.mask & flags.MODIFY:
                to_reread.append(cgroup)
            elif ev.mask & flags.CREATE and ev.mask & flags.ISDIR:
                parent = self._watched.get(cgroup)
                if parent is not None:
                    self._add_subtree(os.path.join(parent.directory, ev.name), changes)
            elif ev.mask & flags.DELETE and ev.mask & flags.ISDIR:
                child = cgroup.rstrip("/") + "/" + ev.name
                for cg in [c for c in self._watched if c == child or c.startswith(child + "/")]:
                    self._remove(cg)
        for cg in dict.fromkeys(to_reread):
            change = self._reread(cg)
            if change is not None:
                changes.append(change)
        if rescan:
            changes.extend(self.resync())
        return changes

    def _add_subtree(self, directory: str, changes: list[CounterChange]) -> None:
        for d in self._walk(directory):
            cg = self._name(d)
            if cg in self._watched:
                continue
            self._add(cg, d, baseline_from_disk=False)
            if self.track_created and len(self._created) < _MAX_CREATED:
                self._created.append((cg, d))
            change = self._reread(cg)
            if change is not None:
                changes.append(change)

    def take_created(self) -> list[tuple[str, str]]:
        """(cgroup, directory) of each cgroup inotify reported created since the last
        call, parents first; always empty without `track_created`."""
        if not self._created:
            return []
        created, self._created = self._created, []
        return created

    def take_removed(self) -> list[str]:
        """The cgroups that went away since the last call (not those dropped by close)."""
        removed, self._removed = self._removed, []
        return removed

    def limit_hit_counts(self, now: float | None = None) -> dict[str, int] | None:
        """Each watched cgroup's own `oom` count as handed on for a restart, where not 0.

        None on cgroup v1, which has no such count. A count moves only once its cgroup's
        limit was last hit more than LIMIT_HIT_WINDOW_S ago: by then the kills that
        followed the hit (counted just after it, and waiting at most a grace for their
        report) are handed on, so a restart in between still finds their evidence.
        Lagging errs the safe way: a node OOM counted while the agent was down, in a
        cgroup whose limit was hit just before it stopped, is called a limit kill.
        """
        if self.hierarchy.version is not CgroupVersion.V2:
            return None
        now = time.monotonic() if now is None else now
        out: dict[str, int] = {}
        for cg, w in self._watched.items():
            settled_at = max(w.settle_after, w.last_limit_hit + self.LIMIT_HIT_WINDOW_S)
            if w.counters is not None and now >= settled_at:
                w.limit_hits_settled = w.counters.limit_hits
            if w.limit_hits_settled:
                out[cg] = w.limit_hits_settled
        return out

    def oom_kill_values(self) -> dict[str, int]:
        """Each watched cgroup's `oom_kill` as last read, where it is not 0."""
        return {
            cg: w.counters.oom_kill
            for cg, w in self._watched.items()
            if w.counters is not None and w.counters.oom_kill
        }

    def close(self) -> None:
        for cg in list(self._watched):
            self._remove(cg, gone=False)
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None


def register_oom_eventfd(directory: str) -> int:
    """Ask a v1 memory cgroup to signal an eventfd when it goes under OOM.

    The kernel keeps its own reference to the eventfd; closing ours later tells it to
    drop the registration, and removing the cgroup signals the eventfd once more.
    """
    return register_v1_event(directory, "memory.oom_control")


def register_v1_event(directory: str, name: str, arguments: str = "") -> int:
    """A v1 eventfd the kernel signals on an event of the cgroup's file `name`, through
    `cgroup.event_control` ("<eventfd> <fd of name> [arguments]"). A cgroup gone is
    FileNotFoundError(directory)."""
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        fd = os.open(directory + "/" + name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ctl = os.open(directory + "/cgroup.event_control", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(ctl, f"{efd} {fd} {arguments}".rstrip().encode())
            finally:
                os.close(ctl)
        finally:
            os.close(fd)
    except OSError as exc:
        os.close(efd)
        if exc.errno == errno.ENOENT:
            raise FileNotFoundError(directory) from exc
        raise
    return efd
