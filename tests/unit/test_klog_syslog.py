"""The kernel log read through syslog(2): line parsing, positions, what is new, the reader.

Lines marked "verbatim" were read with klogctl(SYSLOG_ACTION_READ_ALL) on a 6.18 kernel
(the test's own cgroup prefix cut from the paths). Caller ids (CONFIG_PRINTK_CALLER) and
printk.time=0 were not available there: those lines are written to the kernel's format
strings (info_print_prefix: "<%u>", "[%5lu.%06lu]", "[%6s]", then one space).

The reader runs against `FakeKernelLog`, which answers READ_ALL the way the kernel does
(the newest lines that fit the buffer), so overruns and restarts need no root.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from oomguard.k8s.event_queue import kill_id
from oomguard.kernel.parse import KmsgRecord, OomReportAssembler
from oomguard.kernel.syslog import (
    LINES_PER_US,
    NumberedLine,
    SyslogCursor,
    SyslogLine,
    SyslogReader,
    SyslogUnavailable,
    new_since,
    number_lines,
    parse_syslog_line,
)
from oomguard.records import CgroupIdentity, CgroupKind, Constraint, KernelOomKill, OomKill
from oomguard.state.log_position import LogPosition

CG = (
    "/kubepods/burstable/podf6914112-ecd9-4937-8d3b-43a971de87bc/"
    "8c474c556b30da870e1ecc0f0ca7e37f23a3ca4d83f3d447eb10a3063a89659f"
)

# One memcg OOM report, verbatim (stack trace and most memory statistics left out).
REPORT = [
    b"<4>[11441.347667] worker invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, "
    b"oom_score_adj=0",
    b"<4>[11441.347680] CPU: 0 UID: 0 PID: 14888 Comm: worker Not tainted 6.18.44-fc-v595 #1 "
    b"PREEMPT(none) ",
    b"<4>[11441.347684] Call Trace:",
    b"<4>[11441.347687]  <TASK>",
    b"<4>[11441.347704]  dump_stack_lvl+0x57/0x80",
    b"<4>[11441.347792]  </TASK>",
    b"<6>[11441.347793] memory: usage 32768kB, limit 32768kB, failcnt 0",
    b"<6>[11441.347799] memory+swap: usage 32768kB, limit 32768kB, failcnt 0",
    b"<6>[11441.347800] kmem: usage 88kB, limit 9007199254740988kB, failcnt 0",
    b"<6>[11441.347802] Memory cgroup stats for " + CG.encode() + b":",
    b"<6>[11441.347825] cache 0",
    b"<6>[11441.347869] Tasks state (memory values in pages):",
    b"<6>[11441.347870] [  pid  ]   uid  tgid total_vm      rss rss_anon rss_file rss_shmem "
    b"pgtables_bytes swapents oom_score_adj name",
    b"<6>[11441.347872] [  14888]     0 14888    11853    10928     9278     1650         0 "
    b"  135168        0             0 worker",
    b"<6>[11441.347876] oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,"
    b"mems_allowed=0,oom_memcg=" + CG.encode() + b",task_memcg=" + CG.encode() + b",task=worker,"
    b"pid=14888,uid=0",
    b"<3>[11441.347894] Memory cgroup out of memory: Killed process 14888 (worker) "
    b"total-vm:47412kB, anon-rss:37112kB, file-rss:6600kB, shmem-rss:0kB, UID:0 "
    b"pgtables:132kB oom_score_adj:0",
]


def kline(time_us: int, text: str, *, prio: int = 6) -> bytes:
    """A line as READ_ALL prints it with printk time on."""
    return b"<%d>[%5d.%06d] %s" % (prio, time_us // 1_000_000, time_us % 1_000_000, text.encode())


# --- parse_syslog_line -------------------------------------------------------------

PARSE_CASES = [
    pytest.param(
        REPORT[-1],
        SyslogLine(
            0,
            3,
            11441347894,
            None,
            "Memory cgroup out of memory: Killed process 14888 (worker) total-vm:47412kB, "
            "anon-rss:37112kB, file-rss:6600kB, shmem-rss:0kB, UID:0 pgtables:132kB "
            "oom_score_adj:0",
        ),
        id="kill-line-verbatim",
    ),
    pytest.param(
        b"<15>[10121.559176] oomguard-test first 5b0f1f3c",
        SyslogLine(1, 7, 10121559176, None, "oomguard-test first 5b0f1f3c"),
        id="user-space-line-verbatim",
    ),
    pytest.param(
        REPORT[13],
        SyslogLine(
            0,
            6,
            11441347872,
            None,
            "[  14888]     0 14888    11853    10928     9278     1650         0   135168"
            "        0             0 worker",
        ),
        id="task-table-row-starts-with-bracket",
    ),
    pytest.param(
        b"<4>[11441.347687]  <TASK>",
        SyslogLine(0, 4, 11441347687, None, " <TASK>"),
        id="message-keeps-its-own-leading-space",
    ),
    pytest.param(
        b"<6>[    0.000000] Linux version 6.18.44",
        SyslogLine(0, 6, 0, None, "Linux version 6.18.44"),
        id="boot-time-zero-right-aligned",
    ),
    pytest.param(
        b"<6>[1234567.000001] a long uptime",
        SyslogLine(0, 6, 1234567000001, None, "a long uptime"),
        id="seconds-wider-than-five",
    ),
    pytest.param(
        b"<6>[   12.345678][  T123] with a thread caller id",
        SyslogLine(0, 6, 12345678, "T123", "with a thread caller id"),
        id="caller-thread",
    ),
    pytest.param(
        b"<6>[   12.345678][    C1] with a CPU caller id",
        SyslogLine(0, 6, 12345678, "C1", "with a CPU caller id"),
        id="caller-cpu",
    ),
    pytest.param(
        b"<3>Memory cgroup out of memory: Killed process 5 (x) total-vm:1kB",
        SyslogLine(
            0, 3, None, None, "Memory cgroup out of memory: Killed process 5 (x) total-vm:1kB"
        ),
        id="printk-time-off",
    ),
    pytest.param(
        b"<6>[  24327]     0 24327 worker",
        SyslogLine(0, 6, None, None, "[  24327]     0 24327 worker"),
        id="printk-time-off-task-row-is-no-timestamp",
    ),
    pytest.param(
        b"<6>[ T77] caller id but printk time off",
        SyslogLine(0, 6, None, "T77", "caller id but printk time off"),
        id="printk-time-off-with-caller",
    ),
    pytest.param(
        b"<6>[   12.345678] comm \x01\xc3\xa9\xff raw",
        SyslogLine(0, 6, 12345678, None, "comm \x01\u00e9\udcff raw"),
        id="raw-bytes-not-escaped",
    ),
    pytest.param(
        b"<30>[    5.000000] systemd[1]: a daemon's line",
        SyslogLine(3, 6, 5000000, None, "systemd[1]: a daemon's line"),
        id="daemon-facility",
    ),
]


@pytest.mark.parametrize(("raw", "expected"), PARSE_CASES)
def test_parse_syslog_line(raw: bytes, expected: SyslogLine) -> None:
    assert parse_syslog_line(raw) == expected


@pytest.mark.parametrize(
    "raw", [b"", b"no prefix", b"<x>[ 1.000000] x", b"[    1.000000] console format", b"<6"]
)
def test_parse_refuses_what_is_not_a_line(raw: bytes) -> None:
    assert parse_syslog_line(raw) is None


# --- number_lines and new_since ----------------------------------------------------


def test_lines_with_one_timestamp_are_numbered_in_order() -> None:
    lines, untimed = number_lines(
        [kline(7_000_001, "a"), kline(7_000_002, "b1"), kline(7_000_002, "b2"), b"", b"junk"]
    )
    assert untimed == 0
    assert [n.position for n in lines] == [
        7_000_001 * LINES_PER_US,
        7_000_002 * LINES_PER_US,
        7_000_002 * LINES_PER_US + 1,
    ]


def test_untimed_lines_are_counted_not_numbered() -> None:
    lines, untimed = number_lines([b"<6>one", b"<6>two"])
    assert (lines, untimed) == ([], 2)


def test_positions_are_the_same_in_every_window() -> None:
    log = [kline(1_000_000 + i // 3, f"line {i}") for i in range(30)]
    whole, _ = number_lines(log)
    later, _ = number_lines([*log[10:], kline(2_000_000, "new")])
    by_text = {n.raw: n.position for n in whole}
    # Lines of the window's first timestamp may have companions outside it; others agree.
    first = later[0].time_us
    for n in later[:-1]:
        if n.time_us != first:
            assert by_text[n.raw] == n.position


def _numbered(*texts_at: tuple[int, str]) -> list[NumberedLine]:
    return number_lines([kline(t, text) for t, text in texts_at])[0]


def test_new_since_hands_on_what_follows_the_cursor() -> None:
    lines = _numbered((1, "a"), (2, "b"), (3, "c"), (4, "d"))
    cursor = SyslogCursor(lines[1].position, lines[1].crc)
    found = new_since(cursor, lines, whole_log=False)
    assert (found.lines, found.overrun, found.complete) == (lines[2:], False, True)


def test_new_since_asks_for_more_when_the_cursor_is_not_in_a_partial_window() -> None:
    lines = _numbered((5, "e"), (6, "f"))
    found = new_since(SyslogCursor(2 * LINES_PER_US), lines, whole_log=False)
    assert (found.lines, found.complete) == ([], False)


def test_new_since_counts_an_overrun_when_the_whole_log_is_newer() -> None:
    lines = _numbered((5, "e"), (6, "f"))
    found = new_since(SyslogCursor(2 * LINES_PER_US, 123), lines, whole_log=True)
    assert (found.lines, found.overrun, found.complete) == (lines, True, True)


def test_new_since_goes_by_position_when_the_line_changed() -> None:
    # Same position, another text: the cursor's line is not there, though its place is.
    lines = _numbered((1, "a"), (2, "b"), (3, "c"))
    cursor = SyslogCursor(lines[1].position, lines[1].crc ^ 1)
    found = new_since(cursor, lines, whole_log=True)
    assert (found.lines, found.overrun) == (lines[2:], False)


def test_new_since_does_not_trust_the_first_timestamp_of_a_partial_window() -> None:
    lines = _numbered((4, "d1"), (4, "d2"), (5, "e"))
    cursor = SyslogCursor(lines[0].position, lines[0].crc)
    assert not new_since(cursor, lines, whole_log=False).complete
    assert new_since(cursor, lines, whole_log=True).lines == lines[1:]


def test_new_since_without_cursor_wants_the_whole_log() -> None:
    lines = _numbered((1, "a"))
    assert not new_since(None, lines, whole_log=False).complete
    assert new_since(None, lines, whole_log=True).lines == lines


# --- the reader, against a simulated kernel ------------------------------------------


class FakeKernelLog:
    """READ_ALL as the kernel answers it: the newest whole lines that fit the buffer."""

    def __init__(self, lines: list[bytes] | None = None, *, buf_len: int = 64 * 1024) -> None:
        self.lines = list(lines or [])
        self.buf_len = buf_len
        self.windows: list[int] = []
        self.clock_us = 100_000_000

    def print(self, text: str, *, prio: int = 6, same_time: bool = False) -> bytes:
        if not same_time:
            self.clock_us += 7
        line = kline(self.clock_us, text, prio=prio)
        self.lines.append(line)
        return line

    def drop_oldest(self, n: int) -> None:
        del self.lines[:n]

    def read_all(self, window: int) -> bytes:
        self.windows.append(window)
        out: list[bytes] = []
        total = 0
        for line in reversed(self.lines):
            if total + len(line) + 1 > window:
                break
            out.append(line)
            total += len(line) + 1
        return b"".join(line + b"\n" for line in reversed(out))

    def size(self) -> int:
        return self.buf_len

    def reader(self, **kwargs: int | None) -> SyslogReader:
        return SyslogReader(read_log=self.read_all, log_size=self.size, **kwargs)  # type: ignore[arg-type]


def messages(records: list[KmsgRecord]) -> list[str]:
    return [r.message for r in records]


def test_reader_hands_each_line_on_once() -> None:
    klog = FakeKernelLog()
    for i in range(5):
        klog.print(f"old {i}")
    reader = klog.reader()
    assert reader.read_available() == []
    klog.print("new 1")
    klog.print("new 2")
    klog.print("new 2b", same_time=True)
    first = reader.read_available()
    assert messages(first) == ["new 1", "new 2", "new 2b"]
    assert reader.read_available() == []
    klog.print("new 3")
    assert messages(reader.read_available()) == ["new 3"]
    assert [r.after_gap for r in first] == [False, False, False]
    assert reader.lost_records == 0
    assert first[2].seq == first[1].seq + 1  # same microsecond: the next position


def test_reader_widens_its_window_to_reach_the_last_line_handed_on() -> None:
    klog = FakeKernelLog(buf_len=256 * 1024)
    klog.print("start")
    reader = klog.reader()
    burst = [f"burst {i:05d} " + "x" * 100 for i in range(600)]  # ~70 KiB
    for text in burst:
        klog.print(text)
    klog.windows.clear()
    assert messages(reader.read_available()) == burst
    assert klog.windows == [16384, 32768, 65536, 131072]
    klog.windows.clear()
    klog.print("quiet again")
    assert messages(reader.read_available()) == ["quiet again"]
    assert klog.windows == [16384]


def test_reader_counts_an_overrun_and_marks_the_gap() -> None:
    klog = FakeKernelLog(buf_len=8 * 1024)
    klog.print("seen")
    reader = klog.reader()
    klog.print("overwritten")
    klog.drop_oldest(2)
    klog.print("after")
    records = reader.read_available()
    assert messages(records) == ["after"]
    assert [r.after_gap for r in records] == [True]
    assert reader.lost_records == 1
    klog.print("next")
    assert [r.after_gap for r in reader.read_available()] == [False]
    assert reader.lost_records == 1


def test_a_restarted_reader_resumes_after_the_position_it_was_given() -> None:
    klog = FakeKernelLog()
    klog.print("before")
    first = klog.reader()
    klog.print("kill one")
    klog.print("kill two")
    handed = first.read_available()
    resume = handed[0].seq  # the agent saved the position of the first kill only
    first.close()
    klog.print("while down")
    again = klog.reader(after_pos=resume)
    replay = again.read_available()
    assert messages(replay) == ["kill two", "while down"]
    assert replay[0].seq == handed[1].seq  # the same line, the same position: the same kill id


def test_a_resume_position_no_line_has_goes_by_position() -> None:
    # "Everything before this kill is settled": the kill line's position minus one.
    klog = FakeKernelLog()
    klog.print("settled")
    klog.print("kill")
    klog.print("after")
    kill_pos = klog.reader(after_pos=-1).read_available()[1].seq
    reader = klog.reader(after_pos=kill_pos - 1)
    assert messages(reader.read_available()) == ["kill", "after"]
    assert reader.lost_records == 0


def test_a_reader_of_a_new_boot_reads_everything() -> None:
    klog = FakeKernelLog()
    for i in range(3):
        klog.print(f"boot {i}")
    assert messages(klog.reader(after_pos=-1).read_available()) == ["boot 0", "boot 1", "boot 2"]


def test_a_resume_point_overwritten_meanwhile_is_an_overrun() -> None:
    klog = FakeKernelLog()
    klog.print("saved")
    resume = klog.reader(after_pos=-1).read_available()[0].seq
    klog.drop_oldest(1)
    klog.print("later")
    reader = klog.reader(after_pos=resume)
    assert messages(reader.read_available()) == ["later"]
    assert reader.lost_records == 1


def test_a_log_without_timestamps_makes_the_reader_unavailable() -> None:
    klog = FakeKernelLog([b"<6>printk.time=0 here", b"<6>and here"])
    with pytest.raises(SyslogUnavailable, match=r"printk\.time=0") as err:
        klog.reader()
    assert "cgroup counters" in str(err.value)


def test_timestamps_gone_later_hand_on_nothing_and_say_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    klog = FakeKernelLog()
    klog.print("timed")
    reader = klog.reader()
    klog.lines = [b"<6>timed", b"<6>untimed now"]  # printk.time applies to a whole read
    with caplog.at_level(logging.WARNING):
        assert reader.read_available() == []
        assert reader.read_available() == []
    assert sum("printk.time=0" in r.getMessage() for r in caplog.records) == 1


def test_refused_syscall_is_unavailable_with_the_reason() -> None:
    def refused(window: int) -> bytes:
        raise PermissionError(1, "Operation not permitted")

    with pytest.raises(SyslogUnavailable, match="CAP_SYSLOG") as err:
        SyslogReader(read_log=refused, log_size=lambda: 4096)
    assert err.value.cause.startswith("cannot read the kernel log through syslog(2)")


# --- into the OOM report assembler ----------------------------------------------------


def assemble(records: list[KmsgRecord]) -> list[KernelOomKill]:
    assembler = OomReportAssembler()
    kills: list[KernelOomKill] = []
    for rec in records:
        kills += assembler.feed(rec)
    return kills + assembler.flush()


def test_a_report_read_through_syslog_makes_one_kill() -> None:
    klog = FakeKernelLog([b"<6>[11440.000000] before"])
    reader = klog.reader()
    klog.lines += REPORT
    (kill,) = assemble(reader.read_available())
    assert (kill.pid, kill.command) == (14888, "worker")
    assert (kill.anon_rss_kb, kill.file_rss_kb, kill.shmem_rss_kb) == (37112, 6600, 0)
    assert (kill.constraint, kill.oom_memcg, kill.task_memcg) == ("CONSTRAINT_MEMCG", CG, CG)
    assert (kill.memcg_usage_kb, kill.memcg_limit_kb) == (32768, 32768)
    assert kill.kernel_time_us == 11441347894
    assert kill.seq == 11441347894 * LINES_PER_US


def test_a_user_space_line_never_poses_as_a_kill() -> None:
    klog = FakeKernelLog([b"<6>[11440.000000] before"])
    reader = klog.reader()
    # Written to /dev/kmsg from user space: facility 1 (<11> = user.err), same text.
    klog.lines += [b"<11>" + line.split(b">", 1)[1] for line in REPORT]
    assert assemble(reader.read_available()) == []


def test_an_overrun_in_the_middle_of_a_report_drops_its_context() -> None:
    klog = FakeKernelLog([b"<6>[11440.000000] before"], buf_len=8 * 1024)
    reader = klog.reader()
    klog.lines += REPORT[:-1]
    records = reader.read_available()
    klog.lines = [REPORT[-1]]  # all before the kill line overwritten before the next read
    records += reader.read_available()
    (kill,) = assemble(records)
    # The header read before the gap may belong to another report: not used.
    assert (kill.pid, kill.constraint, kill.oom_memcg, kill.scope) == (
        14888,
        None,
        None,
        "memory cgroup",
    )


# --- kill ids and the saved resume point -----------------------------------------------


def _kill(source: str, seq: int | None) -> OomKill:
    return OomKill(
        time=datetime(2025, 1, 1, tzinfo=UTC),
        kernel_time_us=None,
        kmsg_seq=seq,
        constraint=Constraint.CONTAINER,
        cgroup="/a",
        oom_cgroup=None,
        identity=CgroupIdentity(path="/a", kind=CgroupKind.OTHER),
        pid=1,
        command="x",
        uid=None,
        rss_bytes=None,
        anon_rss_bytes=None,
        file_rss_bytes=None,
        shmem_rss_bytes=None,
        oom_score_adj=None,
        memory_limit_bytes=None,
        memory_usage_bytes=None,
        source=source,
    )


def test_kill_ids_keep_syslog_positions_apart_from_kmsg_sequence_numbers() -> None:
    assert kill_id(_kill("kmsg", 42), boot_id="b") == "kmsg/b/42"
    assert kill_id(_kill("syslog", 42), boot_id="b") == "syslog/b/42"


def test_saved_position_is_resumed_only_by_the_reader_that_saved_it(tmp_path: Path) -> None:
    saved = LogPosition(tmp_path, "boot-1")
    saved.save(11441347894000, source="syslog")
    restarted = LogPosition(tmp_path, "boot-1")
    assert restarted.resume_after("syslog") == 11441347894000
    assert restarted.resume_after("kmsg") is None  # another reader's number: only new
    assert LogPosition(tmp_path, "boot-2").resume_after("syslog") == -1
    restarted.save(7, source="kmsg")  # a smaller number, but the other reader's: saved
    assert LogPosition(tmp_path, "boot-1").resume_after("kmsg") == 7


def test_position_files_from_before_sources_are_kmsg(tmp_path: Path) -> None:
    (tmp_path / "kmsg-position.json").write_text('{"seq": 12, "boot_id": "b"}')
    assert LogPosition(tmp_path, "b").resume_after("kmsg") == 12
    assert LogPosition(tmp_path, "b").resume_after("syslog") is None
