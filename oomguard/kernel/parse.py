"""Turn /dev/kmsg records into typed OOM-kill reports, without touching the system.

The kernel's OOM report is a burst of separate printk records: a trigger line, memory
figures, a one-line summary and one "Killed process" line per victim, with stack traces,
Mem-Info dumps, task tables and other drivers' messages in between. Its wording has changed
across kernel versions (3.x to 6.x, plus distribution backports), so every line is matched
by a regex that spells out each variant it accepts, and the assembler keeps only the little
state needed to tie the lines of one report together.

Everything here is pure so that it can be driven by recorded kernel lines in tests; the
reading of /dev/kmsg lives in `kmsg_reader`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from oomguard.records import KernelOomKill
from oomguard.safe_text import decode

__all__ = [
    "KERNEL_FACILITY",
    "KmsgRecord",
    "OomReportAssembler",
    "lost_between",
    "parse_kmsg_record",
]

# printk records carry facility 0 (LOG_KERN). /dev/kmsg refuses facility 0 from user space
# (devkmsg_write keeps facility 1 when a writer asks for 0), so a record with facility 0 was
# printed by the kernel itself and an unprivileged writer cannot forge an OOM report.
KERNEL_FACILITY = 0

# A kernel printk record is at most 1 KiB of text; anything longer is not a kernel line, and
# refusing it keeps the regexes below (which backtrack over paths) cheap on hostile input.
_MAX_LINE_CHARS = 4096


@dataclass(frozen=True)
class KmsgRecord:
    """One record of the kernel log, as /dev/kmsg hands it out (one record per read).

    `kernel/syslog.py` makes them too, one per line read through syslog(2): there `seq` is a
    position derived from the timestamp, not consecutive, and `after_gap` says what a
    jump in sequence numbers says for /dev/kmsg.
    """

    seq: int  # the ring buffer's sequence number: gaps mean records were overwritten
    time_us: int  # CLOCK_MONOTONIC at printk time, microseconds since boot
    priority: int  # syslog level 0 (emerg) .. 7 (debug)
    facility: int  # syslog facility; 0 = the kernel itself
    message: str  # the text, with the kernel's \xNN escapes undone
    # None: consecutive sequence numbers tell whether records were lost before this one.
    # True/False: the reader says so itself (its numbers are not consecutive).
    after_gap: bool | None = None


# The header of a /dev/kmsg record (Documentation/ABI/testing/dev-kmsg):
# "PRIO,SEQ,TIME_US,FLAGS[,more fields, e.g. caller=T123];MESSAGE".
_HEADER_RE = re.compile(
    rb"""
    (?P<prio>[0-9]{1,10}) ,      # facility * 8 + level
    (?P<seq>[0-9]{1,20}) ,       # 64-bit sequence number
    (?P<time_us>[0-9]{1,20})     # 64-bit timestamp, microseconds
    (?: , [^;]* )?               # flags ('-'; 'c' / '+' for fragments on old kernels),
                                 # then any fields later kernels add (caller=T123)
    """,
    re.VERBOSE,
)

# devkmsg escapes bytes < 0x20, >= 0x7f and the backslash itself as \xNN, so every
# backslash in the text starts an escape and the unescaping is unambiguous.
_ESCAPE_RE = re.compile(rb"\\x([0-9a-fA-F]{2})")


def _unescape(text: bytes) -> bytes:
    return _ESCAPE_RE.sub(lambda m: bytes((int(m[1], 16),)), text)


def parse_kmsg_record(raw: bytes) -> KmsgRecord | None:
    """Parse one /dev/kmsg record; None for anything that is not one.

    Never raises: the input comes from a device whose format we do not control, and a
    malformed record must cost us that record only, not the watcher.
    """
    header, sep, rest = raw.partition(b";")
    if not sep:
        return None
    m = _HEADER_RE.fullmatch(header)
    if m is None:
        return None
    prio = int(m["prio"])
    # The text ends at the first newline; what follows are " KEY=VALUE" dictionary lines
    # (SUBSYSTEM=, DEVICE=) that say which device printed it. Newlines inside the text
    # itself are escaped as \x0a, so this split cannot cut a message short.
    text = rest.split(b"\n", 1)[0]
    return KmsgRecord(
        seq=int(m["seq"]),
        time_us=int(m["time_us"]),
        priority=prio & 7,
        facility=prio >> 3,
        message=decode(_unescape(text)),
    )


def lost_between(prev_seq: int | None, seq: int) -> int:
    """How many records the ring buffer overwrote between two records read in a row.

    Sequence numbers are consecutive, so a jump is exactly the number of records lost. With
    no previous record, or a sequence that went backwards (a different boot), nothing can
    be said, so 0.
    """
    if prev_seq is None or seq <= prev_seq:
        return 0
    return seq - prev_seq - 1


# --- The lines of an OOM report -------------------------------------------------------
#
# All are matched against one record's text with trailing whitespace removed. Where a
# field can contain anything (command names, cgroup paths), the regex is anchored on the
# fixed text to its right, which the field cannot end with. DOTALL: a command name or a
# cgroup path may contain a newline (kmsg escapes it as \x0a, and we undo that).

# First line of every report (dump_header). Starts a new report.
#   hog invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0
#   java invoked oom-killer: gfp_mask=0xd0, order=0, oom_score_adj=-998            (3.10)
#   x invoked oom-killer: gfp_mask=0x14200ca(GFP_HIGHUSER_MOVABLE), nodemask=(null), ...
_TRIGGER_RE = re.compile(
    r"""
    (?P<comm>.*?)                 # the allocating task: up to 15 bytes, spaces allowed;
                                  # shortest match, the fixed text below is 20 chars long
    \ invoked\ oom-killer:\       # fixed text
    gfp_mask=\S+                  # allocation flags, e.g. 0xcc0(GFP_KERNEL)
    .*                            # nodemask= (4.9-4.18), order=, oom_score_adj= (unused)
    """,
    re.VERBOSE | re.DOTALL,
)

# The memory cgroup that hit its limit (mem_cgroup_print_oom_meminfo); memcg OOMs only.
# "memory+swap: usage", "kmem: usage" and "swap: usage" follow it and must not match.
_MEMCG_USAGE_RE = re.compile(
    r"""
    memory:\ usage\ (?P<usage>\d+)kB,      # charged to the memcg
    \ limit\ (?P<limit>\d+)kB              # its limit (memory.max / limit_in_bytes)
    (?:,\ failcnt\ \d+)?                   # times the limit was hit (not on every kernel)
    """,
    re.VERBOSE,
)

# The one-line summary, 4.19 on (dump_oom_summary in recent kernels). Fields appear only
# where the kernel was built with them (cpuset=/mems_allowed= need CONFIG_CPUSETS), and a
# RHEL 7 backport prints no constraint or nodemask at all ("oom-kill:,cpuset=...").
#   oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,
#     oom_memcg=/a/b,task_memcg=/a/b/c,task=hog,pid=5714,uid=0
#   oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),global_oom,task_memcg=/,task=x,...
# Each free-text field runs possessively (*+) up to the label that always follows it, so
# the regex never backtracks into it: a hostile cgroup name cannot make matching slow.
_NODE_LIST = r"(?:\(null\)|\d[\d-]*(?:,\d[\d-]*)*+)?"  # %*pbl: "(null)", "0", "0-1,3"
_SUMMARY_RE = re.compile(
    rf"""
    oom-kill:\s*
    (?:constraint=(?P<constraint>[A-Z_]+))?      # CONSTRAINT_NONE / _CPUSET /
                                                 # _MEMORY_POLICY / _MEMCG
    (?:,nodemask={_NODE_LIST})?                  # the allocation's allowed nodes
    (?:,cpuset=(?:(?!,mems_allowed=).)*+)?       # cpuset cgroup *name* of the trigger
    (?:,mems_allowed={_NODE_LIST})?              # its nodes
    (?:
        ,oom_memcg=(?P<oom_memcg>                # the memcg whose limit was hit,
            (?:(?!,task_memcg=).)*+)             # up to the next label
      | ,(?P<global_oom>global_oom)              # or: the whole machine ran out
    )?
    (?:,task_memcg=(?P<task_memcg>               # the victim's memcg, up to the first
        (?:(?!,task=).)*+))?                     # ",task=" (a comm may contain one)
    ,task=(?P<task>.*)                           # victim comm; greedy, so it may hold
                                                 # commas and even ",pid="
    ,pid=(?P<pid>\d+)                            # victim pid
    (?:,uid=(?P<uid>\d+))?                       # victim uid
    """,
    re.VERBOSE | re.DOTALL,
)

# Before the summary line existed (memcg OOMs only): which memcg the victim is in and
# whose limit was hit.
#   Task in /docker/2e08... killed as a result of limit of /docker/2e08...
_LEGACY_MEMCG_RE = re.compile(
    r"""
    Task\ in\ (?P<task_memcg>.+?)                    # victim's memcg
    \ killed\ as\ a\ result\ of\ limit\ of
    \ (?P<oom_memcg>.+)                              # memcg whose limit was hit
    """,
    re.VERBOSE | re.DOTALL,
)

# memory.oom.group (4.19+): every task in this cgroup is killed; printed after the first
# victim's "Killed process" line and before the other members'.
_GROUP_RE = re.compile(
    r"""
    Tasks\ in\ (?P<memcg>.+)                                  # the group's cgroup path
    \ are\ going\ to\ be\ killed\ due\ to\ memory\.oom\.group\ set
    """,
    re.VERBOSE | re.DOTALL,
)

# Before 5.x (and in distribution backports): the task the killer chose; the victim
# actually killed (the next "Killed process" line) may be one of its children.
#   Memory cgroup out of memory: Kill process 1381 (gunpowder-memho) score 1046 or
#     sacrifice child
_CHOSEN_RE = re.compile(
    r"""
    (?P<prefix>.*?):\s*                    # "Memory cgroup out of memory", "Out of memory"
    Kill\ process\ (?P<pid>\d+)
    \ \((?P<comm>.*)\)                     # greedy: comm may contain ") score "
    \ score\ \d+\ or\ sacrifice\ child
    """,
    re.VERBOSE | re.DOTALL,
)

# The victim (__oom_kill_process), one line per killed process. Seen in the wild:
#   Memory cgroup out of memory: Killed process 5714 (hog) total-vm:68268kB,
#     anon-rss:65280kB, file-rss:1112kB, shmem-rss:0kB, UID:0 pgtables:172kB
#     oom_score_adj:0                                        (later 5.x and 6.x)
#   Memory cgroup out of memory: Killed process 18524 (cdi-importer) total-vm:...kB,
#     anon-rss:...kB, file-rss:0kB, shmem-rss:0kB, UID:0      (some 5.x)
#   Out of memory: Killed process 3035 (oomprocs) total-vm:...kB, ..., shmem-rss:0kB
#                                                             (5.0-rc4, 5.3-rc5)
#   Killed process 1381 (gunpowder-memho) total-vm:...kB, ..., shmem-rss:0kB  (4.8)
#   Killed process 13536 (memorymonster) total-vm:...kB, anon-rss:920kB, file-rss:452kB
#                                                             (3.10, 3.13)
_KILLED_RE = re.compile(
    r"""
    (?:(?P<prefix>.*?):\s*)?               # "Memory cgroup out of memory" (a memcg limit),
                                           # "Out of memory[ (oom_kill_allocating_task)]"
                                           # (global); absent on 4.x and older
    Killed\ process\ (?P<pid>\d+)
    \ \((?P<comm>.*)\)                     # greedy: the last ") total-vm:" ends the comm,
                                           # which may hold spaces, ( ) quotes, commas
    \ total-vm:(?P<total_vm>\d+)kB,
    \ anon-rss:(?P<anon_rss>\d+)kB,
    \ file-rss:(?P<file_rss>\d+)kB
    (?:,\ shmem-rss:(?P<shmem_rss>\d+)kB)?              # 4.x on
    (?:,\ UID:(?P<uid>\d+))?                            # later 5.x on
    (?:\ pgtables:\d+kB)?                               # later 5.x on
    (?:\ oom_score_adj:(?P<oom_score_adj>-?\d+))?       # later 5.x on
    """,
    re.VERBOSE | re.DOTALL,
)


def _scope(prefix: str | None) -> str | None:
    """The kernel's own word for why it killed: a cgroup limit, or the node ran out."""
    if prefix is None:
        return None
    if "Memory cgroup out of memory" in prefix:
        return "memory cgroup"
    if "Out of memory" in prefix:
        return "global"
    return None


@dataclass(frozen=True)
class _Summary:
    """The "oom-kill:" line. Only its victim (`pid`) has `task_memcg` and `uid`."""

    line: str
    pid: int
    task: str
    task_memcg: str | None
    uid: int | None

    def task_memcg_for(self, comm: str) -> str | None:
        """The victim's memcg, split off using the kill line's comm.

        The regex ends task_memcg at the first ",task=", which is wrong only when the path
        itself contains ",task="; knowing the real comm tells where the path ends.
        """
        if self.task == comm or self.task_memcg is None:
            return self.task_memcg
        head, sep, _ = self.line.rpartition(f",task={comm},pid={self.pid}")
        if not sep:
            return self.task_memcg
        _, sep, path = head.partition(",task_memcg=")
        return path if sep else self.task_memcg


@dataclass
class _Report:
    """What one OOM report has said so far, for the kill lines that follow."""

    trigger_command: str | None = None
    memcg_usage_kb: int | None = None
    memcg_limit_kb: int | None = None
    constraint: str | None = None
    oom_memcg: str | None = None
    summary: _Summary | None = None
    legacy_task_memcg: str | None = None  # "Task in X killed as a result of limit of Y"
    chosen_pid: int | None = None  # "Kill process N ... or sacrifice child"
    chosen_scope: str | None = None
    group_memcg: str | None = None
    killed: dict[int, KernelOomKill] = field(default_factory=dict)
    first_seq: int | None = None  # of its trigger line, when it was read


class OomReportAssembler:
    """Ties the lines of each kernel OOM report together into one record per victim.

    Feed it every record read from /dev/kmsg, in order. A record is emitted as soon as its
    "Killed process" line arrives (the kernel prints nothing that marks the end of a
    report, and waiting would delay every event), filled from the lines before it.

    Context is dropped when a new report starts and when the sequence numbers jump (or a
    record says `after_gap`): after lost records, what we hold may belong to another
    report. Records not printed by the kernel itself (facility != 0) are ignored, so a
    line written to /dev/kmsg from user space can never pose as an OOM kill.
    """

    def __init__(self) -> None:
        self._report = _Report()
        self._last_seq: int | None = None
        # The last kill is held back until the next record (or `flush`): the kernel
        # prints the memory.oom.group line right after the chosen victim's kill line,
        # and that line makes the victim part of a group kill too.
        self._held: KernelOomKill | None = None

    def feed(self, rec: KmsgRecord) -> list[KernelOomKill]:
        """The kills that `rec` completes (held back by one record, see `flush`)."""
        gap = rec.after_gap
        if gap is None:
            gap = self._last_seq is not None and rec.seq != self._last_seq + 1
        if gap:
            self._report = _Report()
        self._last_seq = rec.seq
        if rec.facility != KERNEL_FACILITY:
            return self.flush()
        line = rec.message.rstrip()
        if len(line) > _MAX_LINE_CHARS:
            return self.flush()
        kill = self._take(line, rec)
        if self._held is not None and line.startswith("Tasks in "):
            group = self._report.group_memcg
            if group is not None:
                self._held = dataclasses.replace(self._held, group_memcg=group)
                self._report.killed[self._held.pid] = self._held
            return []
        out = self.flush()
        self._held = kill
        return out

    def flush(self) -> list[KernelOomKill]:
        """Release the kill held back; call when no more records are available now."""
        held, self._held = self._held, None
        return [] if held is None else [held]

    def _take(self, line: str, rec: KmsgRecord) -> KernelOomKill | None:
        report = self._report
        # Cheap substring tests first: nearly every record is unrelated to OOM.
        if "Killed process " in line and (m := _KILLED_RE.fullmatch(line)):
            return self._killed(m, rec)
        if " invoked oom-killer: " in line and (m := _TRIGGER_RE.fullmatch(line)):
            self._report = _Report(trigger_command=m["comm"], first_seq=rec.seq)
        elif line.startswith("oom-kill:") and (m := _SUMMARY_RE.fullmatch(line)):
            report.constraint = m["constraint"]
            report.oom_memcg = m["oom_memcg"]
            uid = m["uid"]
            report.summary = _Summary(
                line=line,
                pid=int(m["pid"]),
                task=m["task"],
                task_memcg=m["task_memcg"],
                uid=None if uid is None else int(uid),
            )
        elif line.startswith("memory: usage ") and (m := _MEMCG_USAGE_RE.fullmatch(line)):
            report.memcg_usage_kb = int(m["usage"])
            report.memcg_limit_kb = int(m["limit"])
        elif line.startswith("Tasks in ") and (m := _GROUP_RE.fullmatch(line)):
            report.group_memcg = m["memcg"]
        elif line.startswith("Task in ") and (m := _LEGACY_MEMCG_RE.fullmatch(line)):
            report.legacy_task_memcg = m["task_memcg"]
            report.oom_memcg = m["oom_memcg"]
        elif "Kill process " in line and (m := _CHOSEN_RE.fullmatch(line)):
            report.chosen_pid = int(m["pid"])
            report.chosen_scope = _scope(m["prefix"])
        return None

    def _killed(self, m: re.Match[str], rec: KmsgRecord) -> KernelOomKill | None:
        report = self._report
        pid = int(m["pid"])
        earlier = report.killed.get(pid)
        if earlier is not None:
            # memory.oom.group kills the whole group after the chosen victim, and the
            # victim, still holding its memory, is killed (and counted) a second time.
            return dataclasses.replace(
                earlier,
                repeat=True,
                seq=rec.seq,
                kernel_time_us=rec.time_us,
                group_memcg=(
                    earlier.group_memcg if earlier.group_memcg is not None else report.group_memcg
                ),
            )
        if report.killed and report.group_memcg is None and report.chosen_pid is None:
            # A second victim with no group or "sacrifice child" line between: this is a
            # new OOM whose report header the kernel rate-limited away (oom_rs: 10
            # reports per 5 s; the kill line itself is always printed). The earlier
            # report's memcgs and usage do not describe it.
            report = self._report = _Report()
        comm = m["comm"]

        # The summary and the legacy "Task in" line describe the task the killer chose;
        # they say nothing about other group members or a sacrificed child.
        summary = report.summary
        task_memcg = None
        uid = None if m["uid"] is None else int(m["uid"])
        if summary is not None and summary.pid == pid:
            task_memcg = summary.task_memcg_for(comm)
            if uid is None:
                uid = summary.uid
        elif report.chosen_pid == pid:
            task_memcg = report.legacy_task_memcg

        def opt_int(name: str) -> int | None:
            value = m[name]
            return None if value is None else int(value)

        kill = KernelOomKill(
            seq=rec.seq,
            kernel_time_us=rec.time_us,
            pid=pid,
            command=comm,
            uid=uid,
            total_vm_kb=int(m["total_vm"]),
            anon_rss_kb=int(m["anon_rss"]),
            file_rss_kb=int(m["file_rss"]),
            shmem_rss_kb=opt_int("shmem_rss"),
            oom_score_adj=opt_int("oom_score_adj"),
            constraint=report.constraint,
            oom_memcg=report.oom_memcg,
            task_memcg=task_memcg,
            memcg_usage_kb=report.memcg_usage_kb,
            memcg_limit_kb=report.memcg_limit_kb,
            trigger_command=report.trigger_command,
            group_memcg=report.group_memcg,
            scope=_scope(m["prefix"]) or report.chosen_scope,
            report_seq=report.first_seq,
        )
        report.killed[pid] = kill
        return kill
