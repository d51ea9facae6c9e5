"""Join the two signals of one kill into one `OomKill` record.

The kernel says a kill happened twice: the killed process's cgroup counts it
(`oom_kill`) and /dev/kmsg prints a report naming the victim. Either can be missing
(kmsg unreadable, a ring-buffer overrun, a cgroup removed before we read it), and
they arrive in either order within milliseconds. The kmsg report is the authority
and is emitted at once; each one leaves a credit on its cgroup that the matching
counter increase consumes. A counter increase with no credit waits a short grace
for its report, then becomes a record of its own ("victim unknown"). So each kill is
one record, from whichever signal came, and never two.

A report whose cgroup is unknown (the kernel rate-limits the report header to 10 per
5 s, so in a storm only the bare "Killed process" line is printed, and the victim has
left /proc by the time it is read) is paired with the next counter increase that no
report explains: the counter says where, the report says who. Unpaired after the
grace, it is emitted as it is when it may concern us (a global OOM, or a watch of the
whole hierarchy) and dropped otherwise, since every cgroup we watch would have counted
it.

Pure: time and file reads come in as arguments, which is what lets the tests drive
every interleaving.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from oomguard.cgroup_path import parse_cgroup_path
from oomguard.cgroups.counters import MemoryUse
from oomguard.cgroups.watch import CounterChange
from oomguard.classify import classify_counters, classify_kernel
from oomguard.records import KernelOomKill, OomKill

_KB = 1024


@dataclass
class _Pending:
    change: CounterChange
    deadline: float
    wall: datetime


@dataclass
class _Orphan:
    kill: KernelOomKill
    deadline: float
    now_mono: float
    now_wall: datetime


def _kb(value: int | None) -> int | None:
    return None if value is None else value * _KB


class KillJoiner:
    """Turns kernel reports and counter increases into one record per kill."""

    CREDIT_TTL_S = 120.0

    def __init__(
        self,
        *,
        kmsg_available: bool,
        grace_s: float = 2.0,
        memory_use_of: Callable[[str], MemoryUse] | None = None,
        kernel_clock_offset_us: int = 0,
        report_unpaired: bool = True,
        cgroup_of_pid: Callable[[int], str | None] | None = None,
    ) -> None:
        self.kmsg_available = kmsg_available
        self.grace_s = grace_s
        self._memory_use_of = memory_use_of
        self._offset_us = kernel_clock_offset_us
        self._credits: dict[str, deque[float]] = defaultdict(deque)
        self._pending: dict[str, deque[_Pending]] = defaultdict(deque)
        self._orphans: deque[_Orphan] = deque()
        self._burst_until = float("-inf")
        self._report_unpaired = report_unpaired
        self._cgroup_of_pid = cgroup_of_pid

    # ----- inputs ------------------------------------------------------------------

    def on_kernel_kill(
        self,
        kill: KernelOomKill,
        cgroup: str | None,
        *,
        counted: bool,
        now_mono: float,
        now_wall: datetime,
    ) -> OomKill | None:
        """A kill read from kmsg. `counted`: a watched cgroup will count it too.

        None when its cgroup is unknown and no counter increase is waiting for it yet:
        it is held for the grace period (see the module docstring).
        """
        if cgroup is None:
            awaiting = [(cg, pend) for cg, pend in self._pending.items() if pend]
            if not awaiting or self._orphans:
                self._orphans.append(_Orphan(kill, now_mono + self.grace_s, now_mono, now_wall))
                return None
            pend_cgroup, pend = awaiting[0]
            p = pend.popleft()
            if not pend:
                del self._pending[pend_cgroup]
            if len(awaiting) == 1 and not pend and now_mono >= self._burst_until:
                return self._record_paired(kill, p.change, now_mono, now_wall)
            self._burst_until = now_mono + self.grace_s
            # Several cgroups await a report: which one this victim came from cannot be
            # told. The counter's record (right cgroup, right reason, victim unknown)
            # beats a guess that could blame the wrong container.
            return self._record_from_counters(p.change, p.wall)
        if counted:
            waiting = self._pending.get(cgroup)
            if waiting:
                waiting.popleft()  # the counter got there first; this report completes it
                if not waiting:
                    del self._pending[cgroup]
            else:
                self._credits[cgroup].append(now_mono)
        return self._record_from_kernel(kill, cgroup, now_mono, now_wall)

    def on_repeat_kill(self, cgroup: str, *, now_mono: float) -> None:
        """The kernel killed an already reported victim again (memory.oom.group).

        No new record, but the cgroup's counter went up once more: credit it, so the
        increase is not taken for a kill whose report was lost.
        """
        pend = self._pending.get(cgroup)
        if pend:
            pend.popleft()
            if not pend:
                del self._pending[cgroup]
        else:
            self._credits[cgroup].append(now_mono)

    def on_counter_change(
        self, change: CounterChange, *, now_mono: float, now_wall: datetime
    ) -> list[OomKill]:
        credits = self._credits.get(change.cgroup)
        unexplained = change.kills
        while unexplained and credits:
            credits.popleft()
            unexplained -= 1
        if credits is not None and not credits:
            del self._credits[change.cgroup]
        if not unexplained:
            return []
        paired: list[OomKill] = []
        unknown: list[_Orphan] = []
        for o in list(self._orphans):
            if not unexplained:
                break
            # A victim still in /proc (exiting, or a zombie not yet reaped) says where
            # it lived: pair it with its own cgroup's increase, never another's.
            where = self._cgroup_of_pid(o.kill.pid) if self._cgroup_of_pid else None
            if where == change.cgroup:
                self._orphans.remove(o)
                paired.append(self._record_paired(o.kill, change, o.now_mono, o.now_wall))
                unexplained -= 1
            elif where is None:
                unknown.append(o)
        if unexplained and unknown:
            others_waiting = any(self._pending.values())
            calm = now_mono >= self._burst_until
            if len(unknown) == 1 and unexplained == 1 and not others_waiting and calm:
                o = unknown[0]
                self._orphans.remove(o)
                paired.append(self._record_paired(o.kill, change, o.now_mono, o.now_wall))
                unexplained -= 1
            else:
                # Several bare reports and several increases at once (the agent fell
                # behind a storm): which victim died where cannot be told. Each increase
                # takes one report off the books and becomes a counter record with the
                # right cgroup and reason and the victim unknown, rather than a guess.
                # The tail of such a burst is no clearer: stay cautious for a grace.
                self._burst_until = now_mono + self.grace_s
                for o in unknown[:unexplained]:
                    self._orphans.remove(o)
                    paired.append(self._record_from_counters(change, now_wall))
                    unexplained -= 1
        if not unexplained:
            return paired
        if not self.kmsg_available or self.grace_s <= 0:
            return paired + [
                self._record_from_counters(change, now_wall) for _ in range(unexplained)
            ]
        pend = self._pending[change.cgroup]
        for _ in range(unexplained):
            pend.append(_Pending(change, now_mono + self.grace_s, now_wall))
        return paired

    def on_tick(self, *, now_mono: float) -> list[OomKill]:
        """Emit counter-only records whose report never came; forget stale credits."""
        out: list[OomKill] = []
        while self._orphans and self._orphans[0].deadline <= now_mono:
            o = self._orphans.popleft()
            if self._report_unpaired or o.kill.scope == "global":
                out.append(self._record_from_kernel(o.kill, None, o.now_mono, o.now_wall))
        for cgroup in list(self._pending):
            pend = self._pending[cgroup]
            while pend and pend[0].deadline <= now_mono:
                p = pend.popleft()
                out.append(self._record_from_counters(p.change, p.wall))
            if not pend:
                del self._pending[cgroup]
        for cgroup in list(self._credits):
            credits = self._credits[cgroup]
            while credits and now_mono - credits[0] > self.CREDIT_TTL_S:
                credits.popleft()
            if not credits:
                del self._credits[cgroup]
        return out

    def next_deadline(self) -> float | None:
        deadlines = [p[0].deadline for p in self._pending.values() if p]
        if self._orphans:
            deadlines.append(self._orphans[0].deadline)
        return min(deadlines) if deadlines else None

    def flush(self) -> list[OomKill]:
        """Everything still waiting, as it stands (on shutdown)."""
        return self.on_tick(now_mono=float("inf"))

    # ----- building records ----------------------------------------------------------

    def _record_from_kernel(
        self, kill: KernelOomKill, cgroup: str | None, now_mono: float, now_wall: datetime
    ) -> OomKill:
        kernel_s = (kill.kernel_time_us + self._offset_us) / 1_000_000
        age_s = max(0.0, now_mono - kernel_s)
        rss_parts = [kill.anon_rss_kb, kill.file_rss_kb, kill.shmem_rss_kb]
        rss_kb = (
            sum(x for x in rss_parts if x is not None) if kill.anon_rss_kb is not None else None
        )
        limit = _kb(kill.memcg_limit_kb)
        usage = _kb(kill.memcg_usage_kb)
        if limit is None and cgroup is not None and self._memory_use_of is not None:
            use = self._memory_use_of(cgroup)
            limit, usage = use.limit_bytes, use.usage_bytes
        return OomKill(
            time=now_wall - timedelta(seconds=age_s),
            kernel_time_us=kill.kernel_time_us,
            kmsg_seq=kill.seq,
            constraint=classify_kernel(kill.constraint, kill.oom_memcg, cgroup or kill.task_memcg),
            cgroup=cgroup,
            oom_cgroup=kill.oom_memcg,
            identity=parse_cgroup_path(cgroup or ""),
            pid=kill.pid,
            command=kill.command,
            uid=kill.uid,
            rss_bytes=_kb(rss_kb),
            anon_rss_bytes=_kb(kill.anon_rss_kb),
            file_rss_bytes=_kb(kill.file_rss_kb),
            shmem_rss_bytes=_kb(kill.shmem_rss_kb),
            oom_score_adj=kill.oom_score_adj,
            memory_limit_bytes=limit,
            memory_usage_bytes=usage,
            group_kill=kill.group_memcg is not None,
            source="kmsg",
            detection_latency_ms=round(age_s * 1000, 3),
        )

    def _record_paired(
        self, kill: KernelOomKill, change: CounterChange, now_mono: float, now_wall: datetime
    ) -> OomKill:
        """A bare kernel report joined with the counter increase it explains."""
        record = self._record_from_kernel(kill, change.cgroup, now_mono, now_wall)
        if kill.constraint is None and kill.oom_memcg is None and kill.scope != "global":
            # The header with the memcgs was rate-limited away: the counters classify.
            record = record.model_copy(
                update={"constraint": classify_counters(record.identity, change.limit_hit_paths)}
            )
        return record

    def _record_from_counters(self, change: CounterChange, wall: datetime) -> OomKill:
        identity = parse_cgroup_path(change.cgroup)
        use = (
            self._memory_use_of(change.cgroup)
            if self._memory_use_of is not None
            else MemoryUse(None, None)
        )
        return OomKill(
            time=wall.astimezone(UTC),
            kernel_time_us=None,
            kmsg_seq=None,
            constraint=classify_counters(identity, change.limit_hit_paths),
            cgroup=change.cgroup,
            oom_cgroup=None,
            identity=identity,
            pid=None,
            command=None,
            uid=None,
            rss_bytes=None,
            anon_rss_bytes=None,
            file_rss_bytes=None,
            shmem_rss_bytes=None,
            oom_score_adj=None,
            memory_limit_bytes=use.limit_bytes,
            memory_usage_bytes=use.usage_bytes,
            group_kill=False,
            source="counters",
            detection_latency_ms=None,
        )
