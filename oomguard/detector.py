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

What has been handed on, for a restarted agent to resume from: per cgroup, the
counter value up to which every kill is a record returned or explained by a report
returned (`take_handed_on`; a kill waiting for its report holds it back), and where
the oldest report not yet fully handed on starts (`oldest_unsettled_seq`). Each kill
counted by a cgroup gets its counter value (`oom_kill_counter`, the top ones for the
kills that wait), which is what names a counter-only record across restarts.

Pure: time and file reads come in as arguments, which is what lets the tests drive
every interleaving.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable, Mapping
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
    value: int | None = None  # the counter value this kill made, when known


@dataclass
class _Credit:
    """A kernel report returned before the counter increase it explains."""

    at: float
    seq: int | None = None  # where the report starts (`_report_start`)


@dataclass
class _Orphan:
    kill: KernelOomKill
    deadline: float
    now_mono: float
    now_wall: datetime


def _kb(value: int | None) -> int | None:
    return None if value is None else value * _KB


def _report_start(kill: KernelOomKill) -> int:
    """The sequence number of the first line of a kill's report (`report_seq`)."""
    return kill.seq if kill.report_seq is None else min(kill.seq, kill.report_seq)


def _values(change: CounterChange) -> list[int | None]:
    """The counter value each kill of a change made, oldest first (None: unknown)."""
    if change.value is None:
        return [None] * change.kills
    return [v for v in range(change.value - change.kills + 1, change.value + 1)]


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
        kernel_log_source: str = "kmsg",
    ) -> None:
        self.kmsg_available = kmsg_available
        # Which reader the kernel reports come from ("kmsg", "syslog"): the records'
        # `source`, which also keeps the two readers' sequence numbers apart in kill ids.
        self.kernel_log_source = kernel_log_source
        self.grace_s = grace_s
        self._memory_use_of = memory_use_of
        self._offset_us = kernel_clock_offset_us
        self._credits: dict[str, deque[_Credit]] = defaultdict(deque)
        self._pending: dict[str, deque[_Pending]] = defaultdict(deque)
        self._orphans: deque[_Orphan] = deque()
        self._burst_until = float("-inf")
        self._report_unpaired = report_unpaired
        self._cgroup_of_pid = cgroup_of_pid
        # What has been handed on (`take_handed_on`): the last counter value seen per
        # cgroup, the cgroups whose handed-on value may have moved, the removed ones.
        self._counted: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._gone: set[str] = set()

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
            self._dirty.add(pend_cgroup)
            if len(awaiting) == 1 and not pend and now_mono >= self._burst_until:
                return self._record_paired(kill, p.change, now_mono, now_wall, p.value)
            self._burst_until = now_mono + self.grace_s
            # Several cgroups await a report: which one this victim came from cannot be
            # told. The counter's record (right cgroup, right reason, victim unknown)
            # beats a guess that could blame the wrong container.
            return self._record_from_counters(p.change, p.wall, p.value)
        value: int | None = None
        if counted:
            waiting = self._pending.get(cgroup)
            if waiting:
                # The counter got there first; this report completes it.
                value = waiting.popleft().value
                if not waiting:
                    del self._pending[cgroup]
                self._dirty.add(cgroup)
            else:
                self._credits[cgroup].append(_Credit(now_mono, _report_start(kill)))
        return self._record_from_kernel(kill, cgroup, now_mono, now_wall, value)

    def on_repeat_kill(
        self, cgroup: str, *, now_mono: float, report: KernelOomKill | None = None
    ) -> None:
        """The kernel killed an already reported victim again (memory.oom.group).

        No new record, but the cgroup's counter went up once more: credit it, so the
        increase is not taken for a kill whose report was lost.
        """
        pend = self._pending.get(cgroup)
        if pend:
            pend.popleft()
            if not pend:
                del self._pending[cgroup]
            self._dirty.add(cgroup)
        else:
            seq = None if report is None else _report_start(report)
            self._credits[cgroup].append(_Credit(now_mono, seq))

    def on_counter_change(
        self, change: CounterChange, *, now_mono: float, now_wall: datetime
    ) -> list[OomKill]:
        if change.value is not None:
            self._counted[change.cgroup] = change.value
            self._gone.discard(change.cgroup)
            self._dirty.add(change.cgroup)
        credits = self._credits.get(change.cgroup)
        unexplained = change.kills
        while unexplained and credits:
            credits.popleft()
            unexplained -= 1
        if credits is not None and not credits:
            del self._credits[change.cgroup]
        if not unexplained:
            return []
        # The counter values of the kills left, oldest first: records made now take the
        # lower ones, kills waiting for their report the top ones (see take_handed_on).
        values = iter(_values(change)[change.kills - unexplained :])
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
                paired.append(
                    self._record_paired(o.kill, change, o.now_mono, o.now_wall, next(values))
                )
                unexplained -= 1
            elif where is None:
                unknown.append(o)
        if unexplained and unknown:
            others_waiting = any(self._pending.values())
            calm = now_mono >= self._burst_until
            if len(unknown) == 1 and unexplained == 1 and not others_waiting and calm:
                o = unknown[0]
                self._orphans.remove(o)
                paired.append(
                    self._record_paired(o.kill, change, o.now_mono, o.now_wall, next(values))
                )
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
                    paired.append(self._record_from_counters(change, now_wall, next(values)))
                    unexplained -= 1
        if not unexplained:
            return paired
        if not self.kmsg_available or self.grace_s <= 0:
            return paired + [
                self._record_from_counters(change, now_wall, next(values))
                for _ in range(unexplained)
            ]
        pend = self._pending[change.cgroup]
        for _ in range(unexplained):
            pend.append(_Pending(change, now_mono + self.grace_s, now_wall, next(values)))
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
                out.append(self._record_from_counters(p.change, p.wall, p.value))
                self._dirty.add(cgroup)
            if not pend:
                del self._pending[cgroup]
        for cgroup in list(self._credits):
            credits = self._credits[cgroup]
            while credits and now_mono - credits[0].at > self.CREDIT_TTL_S:
                credits.popleft()
            if not credits:
                del self._credits[cgroup]
        return out

    @property
    def awaiting_reports(self) -> bool:
        """Counter increases wait for their kernel report (a reason to read the log)."""
        return any(self._pending.values())

    def next_deadline(self) -> float | None:
        deadlines = [p[0].deadline for p in self._pending.values() if p]
        if self._orphans:
            deadlines.append(self._orphans[0].deadline)
        return min(deadlines) if deadlines else None

    def flush(self) -> list[OomKill]:
        """Everything still waiting, as it stands (on shutdown)."""
        return self.on_tick(now_mono=float("inf"))

    # ----- what has been handed on ---------------------------------------------------

    def note_counters(self, values: Mapping[str, int]) -> None:
        """Counter values read without an increase (a start's baseline): handed on as is."""
        for cgroup, value in values.items():
            self._counted[cgroup] = value
            self._dirty.add(cgroup)

    def cgroup_removed(self, cgroup: str) -> None:
        """A watched cgroup went away: its value is forgotten once nothing of it waits."""
        if cgroup in self._counted:
            self._gone.add(cgroup)
            self._dirty.add(cgroup)

    def take_handed_on(self, *, everything: bool = False) -> dict[str, int]:
        """Per cgroup, the counter value up to which every kill it counted is handed on.

        Handed on: returned as a record, or explained by a report already returned. A
        kill still waiting for its report holds its cgroup's value just below its own.
        Only the cgroups whose value may have moved since the last call, unless
        `everything`; 0 for a removed one (forget it). Call it after handing on the
        records the calls before it returned: it speaks for them.
        """
        names = (set(self._counted) | self._dirty) if everything else self._dirty
        out: dict[str, int] = {}
        for cgroup in names:
            pend = self._pending.get(cgroup)
            if pend:
                if pend[0].value is not None:
                    out[cgroup] = pend[0].value - 1
            elif cgroup in self._gone:
                self._gone.discard(cgroup)
                self._counted.pop(cgroup, None)
                out[cgroup] = 0
            elif cgroup in self._counted:
                out[cgroup] = self._counted[cgroup]
        self._dirty.clear()
        return out

    def forget_credits(self) -> int:
        """Drop every report's credit; how many.

        For a start, once the reports read back have met every counter increase there
        is: the rest were counted in the baseline already and no increase will come for
        them. Left behind, a credit would hold the kernel log position back and could
        swallow a later kill whose report is lost.
        """
        dropped = sum(len(q) for q in self._credits.values())
        self._credits.clear()
        return dropped

    def oldest_unsettled_seq(self) -> int | None:
        """Where the oldest kernel report whose kill is not fully handed on starts.

        A report held for pairing, or one returned whose counter increase has not come
        yet (its credit): a restart must read the kernel log again from there, or the
        increase would look like a kill whose report was lost.
        """
        seqs = [c.seq for q in self._credits.values() for c in q if c.seq is not None]
        seqs.extend(_report_start(o.kill) for o in self._orphans)
        return min(seqs) if seqs else None

    # ----- building records ----------------------------------------------------------

    def _record_from_kernel(
        self,
        kill: KernelOomKill,
        cgroup: str | None,
        now_mono: float,
        now_wall: datetime,
        counter: int | None = None,
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
            source=self.kernel_log_source,
            detection_latency_ms=round(age_s * 1000, 3),
            oom_kill_counter=counter,
        )

    def _record_paired(
        self,
        kill: KernelOomKill,
        change: CounterChange,
        now_mono: float,
        now_wall: datetime,
        counter: int | None = None,
    ) -> OomKill:
        """A bare kernel report joined with the counter increase it explains."""
        record = self._record_from_kernel(kill, change.cgroup, now_mono, now_wall, counter)
        if kill.constraint is None and kill.oom_memcg is None and kill.scope != "global":
            # The header with the memcgs was rate-limited away: the counters classify.
            record = record.model_copy(
                update={"constraint": classify_counters(record.identity, change.limit_hit_paths)}
            )
        return record

    def _record_from_counters(
        self, change: CounterChange, wall: datetime, counter: int | None = None
    ) -> OomKill:
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
            oom_kill_counter=counter,
        )
