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
5 s, machine-wide, so in a storm only the bare "Killed process" line is printed, and
the victim has left /proc by the time it is read) is paired by time with a counter
increase that no report explains: the counter says where, the report says who. The
kernel counts a kill just before it prints its line, so the line of an increase's kill
lies after the read before it (`since_mono`) and no later than the read that showed it
(`seen_mono`), and close to that read or to the cgroup's OOM signal (`signal_mono`):
within PAIR_WINDOW_S (`line_distance_s`). Other kills on the host print bare lines
too; a line with no such increase is not ours. Among the lines that fit an increase
the closest one is its kill; when a second one fits as well (within PAIR_MARGIN_S) or
is as close to another cgroup's increase, the kernel cannot tell which victim died
where, and the increase becomes a record with the right cgroup and reason and the
victim unknown (`ambiguous` counts them), rather than a guess. An increase is decided
once the kernel log has been read past any line that could be its kill
(`kernel_log_read`). Lines are put on CLOCK_MONOTONIC by the engine's `KernelClock`,
which every pair also teaches; the less it knows, the wider the window and margin, and
before it knows anything no line is placed. A line left unpaired after the grace is
emitted as it is when it may concern us (a global OOM, or a watch of the whole
hierarchy) and dropped otherwise.

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

import dataclasses
import math
from collections import defaultdict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from oomguard.cgroups.classify import classify_counters, classify_kernel
from oomguard.cgroups.counters import MemoryUse
from oomguard.cgroups.path import parse_cgroup_path
from oomguard.cgroups.watch import CounterChange
from oomguard.kernel.clock import KernelClock
from oomguard.records import KernelOomKill, OomKill

_KB = 1024


@dataclass
class _Pending:
    change: CounterChange
    deadline: float
    wall: datetime
    value: int | None = None  # the counter value this kill made, when known
    # When it was counted (`CounterChange.seen_mono` etc.): what a bare line is paired by.
    seen: float = 0.0
    since: float | None = None
    signal: float | None = None
    # Decided: no bare line can be its kill (it waits for a report that names its cgroup).
    decided: bool = False
    absorbed: bool = False  # a line that fitted nothing was taken for its kill (on_tick)


@dataclass
class _Credit:
    """A kernel report returned before the counter increase it explains."""

    at: float
    seq: int | None = None  # where the report starts (`_report_start`)
    stamp_us: int | None = None  # the kill line's kernel time


@dataclass
class _Orphan:
    kill: KernelOomKill
    deadline: float
    now_mono: float
    now_wall: datetime
    where: str | None = None  # the victim's cgroup as /proc said, when it could


def line_distance_s(
    printed: float,
    seen: float,
    since: float | None,
    signal: float | None,
    *,
    window_s: float,
    tolerance_s: float,
) -> float | None:
    """How far a kill line lies from the evidence of one counter increase; None: not its kill.

    `printed`: the line's time; `seen`, `since`, `signal`: the increase's
    (`CounterChange`). The kill was counted after the read at `since`, and by the read at
    `seen`; its line is printed right after the count (`tolerance_s` covers that and the
    kernel clock's error). The distance is to the nearer of the read that showed the
    kill and the OOM signal that preceded it; beyond `window_s` it is someone else's.
    """
    if printed > seen + tolerance_s:
        return None
    if since is not None and printed < since - tolerance_s:
        return None
    distance = abs(seen - printed)
    if signal is not None:
        distance = min(distance, abs(printed - signal))
    return distance if distance <= window_s else None


_Fit = tuple[float, _Orphan, _Pending]  # a line's distance to an increase it may explain


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
    # Pairing a bare kill line with a counter increase (`line_distance_s`). Measured on
    # the test host (cgroup v1, 285 kills): a kill's line lies from its cgroup's OOM
    # signal or the read that showed its count by a median 0.04 ms, 90 % within 0.3 ms
    # when calm and 2.4 ms with both CPUs busy with other OOM kills, the most 4.2 ms
    # (26 ms once, the engine stalled). Both the window and the margin widen by the
    # kernel clock's uncertainty (`KernelClock.uncertainty_s`).
    PAIR_WINDOW_S = 0.025
    PAIR_MARGIN_S = 0.001
    PRINT_TOLERANCE_S = 0.003
    # The kernel prints a kill's line this soon after counting it (`_calibrate`).
    COUNT_TO_PRINT_S = 0.0002

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
        kernel_clock: KernelClock | None = None,
    ) -> None:
        self.kmsg_available = kmsg_available
        # Which reader the kernel reports come from ("kmsg", "syslog"): the records'
        # `source`, which also keeps the two readers' sequence numbers apart in kill ids.
        self.kernel_log_source = kernel_log_source
        self.grace_s = grace_s
        self._memory_use_of = memory_use_of
        # Kernel log stamps to CLOCK_MONOTONIC: the engine's clock learns the offset from
        # its reads; without one, `kernel_clock_offset_us` as it is.
        self._clock = kernel_clock or KernelClock(kernel_clock_offset_us)
        self._credits: dict[str, deque[_Credit]] = defaultdict(deque)
        self._pending: dict[str, deque[_Pending]] = defaultdict(deque)
        self._orphans: deque[_Orphan] = deque()
        # Every line printed before this has been handed in (`kernel_log_read`). None: the
        # caller does not say; an increase is then paired with the lines there are, and
        # waits for more until its grace.
        self._log_read: float | None = None
        self._out: list[OomKill] = []  # records made while settling, for the next return
        self.ambiguous = 0  # increases left victim unknown: two lines fitted as well
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
            where = self._cgroup_of_pid(kill.pid) if self._cgroup_of_pid else None
            orphan = _Orphan(
                kill,
                now_mono + self.grace_s,
                now_mono,
                now_wall,
                where=where,
            )
            self._orphans.append(orphan)
            self._out.extend(self._settle(now_mono))
            mine = [r for r in self._out if r.kmsg_seq == kill.seq and r.pid == kill.pid]
            if not mine:
                return None
            self._out.remove(mine[0])
            return mine[0]
        value: int | None = None
        if counted:
            waiting = self._pending.get(cgroup)
            if waiting:
                # The counter got there first; this report completes it.
                p = waiting.popleft()
                value = p.value
                self._calibrate(kill.kernel_time_us, p.seen, p.since)
                if not waiting:
                    del self._pending[cgroup]
                self._dirty.add(cgroup)
            else:
                credit = _Credit(now_mono, _report_start(kill), kill.kernel_time_us)
                self._credits[cgroup].append(credit)
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
        seen = now_mono if change.seen_mono is None else change.seen_mono
        while unexplained and credits:
            stamp = credits.popleft().stamp_us
            if stamp is not None:
                self._calibrate(stamp, seen, change.since_mono)
            unexplained -= 1
        if credits is not None and not credits:
            del self._credits[change.cgroup]
        if not unexplained:
            out, self._out = self._out + self._settle(now_mono), []
            return out
        # The counter values of the kills left, oldest first: records made now take the
        # lower ones, kills waiting for their report the top ones (see take_handed_on).
        values = iter(_values(change)[change.kills - unexplained :])
        paired: list[OomKill] = []
        for o in list(self._orphans):
            if not unexplained:
                break
            # A victim still in /proc (exiting, or a zombie not yet reaped) says where
            # it lived: pair it with its own cgroup's increase, never another's.
            if o.where is None and self._cgroup_of_pid is not None:
                o.where = self._cgroup_of_pid(o.kill.pid)
            if o.where == change.cgroup:
                self._orphans.remove(o)
                paired.append(
                    self._record_paired(o.kill, change, o.now_mono, o.now_wall, next(values))
                )
                unexplained -= 1
        if unexplained and (not self.kmsg_available or self.grace_s <= 0):
            paired += [
                self._record_from_counters(change, now_wall, next(values))
                for _ in range(unexplained)
            ]
        elif unexplained:
            pend = self._pending[change.cgroup]
            for _ in range(unexplained):
                pend.append(
                    _Pending(
                        change,
                        now_mono + self.grace_s,
                        now_wall,
                        next(values),
                        seen=seen,
                        since=change.since_mono,
                        signal=change.signal_mono,
                    )
                )
        out, self._out = self._out + paired + self._settle(now_mono), []
        return out

    def on_tick(self, *, now_mono: float) -> list[OomKill]:
        """Emit counter-only records whose report never came; forget stale credits."""
        out, self._out = self._out + self._settle(now_mono), []
        # Watching the whole hierarchy, every kill is counted somewhere: a line that fitted
        # no increase and an increase that got no line are the same kill, told once (by
        # the counter: the right cgroup and reason, the victim unknown), not twice.
        spare = [p for pend in self._pending.values() for p in pend if not p.absorbed]
        while self._orphans and self._orphans[0].deadline <= now_mono:
            o = self._orphans.popleft()
            if self._report_unpaired and o.where is None and spare:
                spare.pop(0).absorbed = True
            elif self._report_unpaired or o.kill.scope == "global":
                out.append(self._record_from_kernel(o.kill, None, o.now_mono, o.now_wall))
        for cgroup in list(self._pending):
            pend = self._pending[cgroup]
            while pend and pend[0].deadline <= now_mono:
                p = pend.popleft()
                if self._report_unpaired and not p.absorbed:
                    held = next((o for o in self._orphans if o.where is None), None)
                    if held is not None:
                        self._orphans.remove(held)
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

    def next_decision(self) -> float | None:
        """When the kernel log should have been read for the next bare-line decision.

        An increase is decided once every line printed before its read (and a tolerance)
        has been handed in: a kmsg engine wakes then, a syslog(2) one reads then.
        """
        due = [
            p.seen + self.PRINT_TOLERANCE_S
            for pend in self._pending.values()
            for p in pend
            if not p.decided and not self._decidable(p)
        ]
        return min(due) if due else None

    def kernel_log_read(self, up_to_mono: float) -> None:
        """Every kernel log line printed before `up_to_mono` has been handed in."""
        self._log_read = up_to_mono if self._log_read is None else max(self._log_read, up_to_mono)

    # ----- pairing bare lines by time ------------------------------------------------

    def _printed(self, kill: KernelOomKill, now_mono: float) -> float:
        """When the line was printed: the clock's best estimate (a record's time)."""
        return self._clock.monotonic(kill.kernel_time_us, now_mono)

    def _calibrate(self, stamp_us: int, seen: float, since: float | None) -> None:
        """A kill line explains an increase: the kill was counted after the read at
        `since` and by the read at `seen`, and its line printed right after the count."""
        stamp_s = stamp_us / 1e6
        self._clock.bound_above(seen + self.COUNT_TO_PRINT_S - stamp_s, seen)
        if since is not None:
            self._clock.bound_below(since - stamp_s, seen)

    def _margin(self, now_mono: float) -> float:
        """Fits closer than this to each other cannot be told apart."""
        return self.PAIR_MARGIN_S + self._clock.uncertainty_s(now_mono)

    def _distance(self, o: _Orphan, p: _Pending, now_mono: float) -> float | None:
        # Could this line be that kill: the bracket's centre and half its width answer.
        printed = self._clock.middle(o.kill.kernel_time_us, now_mono)
        if printed is None:
            return None
        half = self._clock.uncertainty_s(now_mono) / 2
        return line_distance_s(
            printed,
            p.seen,
            p.since,
            p.signal,
            window_s=self.PAIR_WINDOW_S + half,
            tolerance_s=self.PRINT_TOLERANCE_S + half,
        )

    def _settle(self, now_mono: float) -> list[OomKill]:
        """Pair the bare lines held with the increases they fit (module docstring)."""
        out: list[OomKill] = []
        # A victim /proc placed goes to its own cgroup's increase, whatever the time.
        for o in list(self._orphans):
            pend = self._pending.get(o.where or "")
            if pend:
                p = pend[0]
                self._take(o, p)
                out.append(self._record_paired(o.kill, p.change, o.now_mono, o.now_wall, p.value))
        fits = self._fits(now_mono)
        # The closest fit that nothing contests, one at a time: each one settled can
        # make the next clear.
        while clear := next((f for f in fits if self._is_clear(f, fits, now_mono)), None):
            _, o, p = clear
            self._take(o, p)
            self._calibrate(o.kill.kernel_time_us, p.seen, p.since)
            out.append(self._record_paired(o.kill, p.change, o.now_mono, o.now_wall, p.value))
            fits = [f for f in fits if f[1] is not o and f[2] is not p]
        for p in [p for pend in self._pending.values() for p in pend]:
            if p.decided or not self._decidable(p):
                continue
            mine = [(d, o) for d, o, q in fits if q is p]
            if not mine:
                # No line fits, nor will one: it waits for a report naming its cgroup.
                p.decided = self._log_read is not None and not math.isinf(
                    self._clock.uncertainty_s(now_mono)
                )
                continue
            lines = {id(o) for _, o in mine}
            if now_mono < p.deadline and any(
                id(o) in lines and not self._decidable(q) for _, o, q in fits
            ):
                continue  # an increase not decided yet may still take a line of its own
            # Two lines fit it about as well, or its line fits another cgroup's increase
            # about as well: which victim died where cannot be told. The increase is a
            # record with the victim unknown, and the lines that fitted it that well
            # are taken off the books (one kill, one record).
            self.ambiguous += 1
            cut = mine[0][0] + self._margin(now_mono)
            gone = {id(o) for d, o in mine if d < cut}
            self._orphans = deque(o for o in self._orphans if id(o) not in gone)
            self._pending[p.change.cgroup].remove(p)
            self._dirty.add(p.change.cgroup)
            out.append(self._record_from_counters(p.change, p.wall, p.value))
            fits = [f for f in fits if id(f[1]) not in gone and f[2] is not p]
        for cgroup in [cg for cg, pend in self._pending.items() if not pend]:
            del self._pending[cgroup]
        return out

    def _decidable(self, p: _Pending) -> bool:
        """Every line that could be its kill has been read (or nobody tells)."""
        return self._log_read is None or p.seen + self.PRINT_TOLERANCE_S <= self._log_read

    def _fits(self, now_mono: float) -> list[_Fit]:
        """Every (distance, line, increase) that fits, closest first.

        None while the kernel clock is not bracketed yet: lines cannot be placed in time.
        """
        if math.isinf(self._clock.uncertainty_s(now_mono)):
            return []
        lines = [o for o in self._orphans if o.where is None]
        open_ = [p for pend in self._pending.values() for p in pend if not p.decided]
        fits = [
            (d, o, p)
            for o in lines
            for p in open_
            if (d := self._distance(o, p, now_mono)) is not None
        ]
        fits.sort(key=lambda f: f[0])
        return fits

    def _is_clear(self, fit: _Fit, fits: list[_Fit], now_mono: float) -> bool:
        """Nothing contests this fit.

        Its increase can be decided, no other line fits it about as well (one that fits
        another increase of the same cgroup as well, or something else clearly better,
        does not count), and its line fits no other cgroup's increase about as well
        (one that clearly fits a line of its own does not count).
        """
        d, o, p = fit
        if not self._decidable(p):
            return False
        cgroup = p.change.cgroup
        margin = self._margin(now_mono)
        for d2, o2, p2 in fits:
            if d2 >= d + margin:
                break
            if o2 is o and p2.change.cgroup != cgroup:
                if not any(o3 is not o and p3 is p2 and d3 + margin <= d2 for d3, o3, p3 in fits):
                    return False
            elif p2 is p and o2 is not o:
                elsewhere = [(d3, p3) for d3, o3, p3 in fits if o3 is o2 and p3 is not p]
                sibling = any(
                    p3.change.cgroup == cgroup and d3 < d2 + margin for d3, p3 in elsewhere
                )
                better = any(d3 + margin <= d2 for d3, _ in elsewhere)
                if not (sibling or better):
                    return False
        return True

    def _take(self, o: _Orphan, p: _Pending) -> None:
        self._orphans.remove(o)
        self._pending[p.change.cgroup].remove(p)
        self._dirty.add(p.change.cgroup)

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
        age_s = max(0.0, now_mono - self._printed(kill, now_mono))
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
            record = dataclasses.replace(
                record, constraint=classify_counters(record.identity, change.limit_hit_paths)
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
