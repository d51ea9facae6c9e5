"""kmsg record parsing and OOM report assembly, fed with real kernel lines.

Unless a case says otherwise, every message below is verbatim kernel output (the text of one
printk record, with the syslog/dmesg prefix removed) from the source named next to it. The
records are built the way /dev/kmsg hands them out, escapes included, so each case runs
through `parse_kmsg_record` and `OomReportAssembler` together.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from oomguard.kernel.parse import (
    KmsgRecord,
    OomReportAssembler,
    lost_between,
    parse_kmsg_record,
)
from oomguard.records import KernelOomKill

FIRST_SEQ = 7000
TIME_US = 5_000_000  # the test records' kmsg timestamp; every record gets TIME_US + seq

Line = str | bytes


def kmsg_escape(text: bytes) -> bytes:
    """What devkmsg_read does to a record's text: \\xNN for controls, non-ASCII and '\\'."""
    return b"".join(
        b"\\x%02x" % byte if byte < 0x20 or byte >= 0x7F or byte == 0x5C else bytes((byte,))
        for byte in text
    )


def kmsg_raw(
    message: Line, seq: int, *, level: int = 6, facility: int = 0, time_us: int | None = None
) -> bytes:
    """One /dev/kmsg record as read(2) returns it."""
    text = message.encode() if isinstance(message, str) else message
    ts = TIME_US + seq if time_us is None else time_us
    return b"%d,%d,%d,-;" % (facility * 8 + level, seq, ts) + kmsg_escape(text) + b"\n"


def assemble(lines: Sequence[Line], *, facility: int = 0) -> list[KernelOomKill]:
    assembler = OomReportAssembler()
    kills: list[KernelOomKill] = []
    for i, line in enumerate(lines):
        rec = parse_kmsg_record(kmsg_raw(line, FIRST_SEQ + i, facility=facility))
        assert rec is not None, line
        kills += assembler.feed(rec)
    return kills + assembler.flush()


def seq_of(lines: Sequence[Line], needle: str, nth: int = 0) -> int:
    """The sequence number the test gave to the nth line containing `needle`."""
    hits = [i for i, line in enumerate(lines) if needle in str(line)]
    return FIRST_SEQ + hits[nth]


# --- parse_kmsg_record ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            # Verbatim kmsg record, from a Go test of a kubelet OOM helper (v2, systemd).
            b"6,23800,6780904484233,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),"
            b"cpuset=cri-containerd-bd65f4bcf85453bfede70a93c056441aa857ad145e2948d6ea0be1d6b"
            b"4fbe7d2.scope,mems_allowed=0,oom_memcg=/kubepods.slice/kubepods-burstable.slice"
            b"/kubepods-burstable-pod2646e12c_77c3_4d44_a574_6ab00819cb32.slice,task_memcg=/"
            b"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2646e12c_77c3_4d44"
            b"_a574_6ab00819cb32.slice/cri-containerd-bd65f4bcf85453bfede70a93c056441aa857ad1"
            b"45e2948d6ea0be1d6b4fbe7d2.scope,task=perl,pid=1400,uid=0",
            KmsgRecord(
                seq=23800,
                time_us=6780904484233,
                priority=6,
                facility=0,
                message="oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),"
                "cpuset=cri-containerd-bd65f4bcf85453bfede70a93c056441aa857ad145e2948d6ea0be1d6b"
                "4fbe7d2.scope,mems_allowed=0,oom_memcg=/kubepods.slice/kubepods-burstable.slice"
                "/kubepods-burstable-pod2646e12c_77c3_4d44_a574_6ab00819cb32.slice,task_memcg=/"
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod2646e12c_77c3_4d44"
                "_a574_6ab00819cb32.slice/cri-containerd-bd65f4bcf85453bfede70a93c056441aa857ad1"
                "45e2948d6ea0be1d6b4fbe7d2.scope,task=perl,pid=1400,uid=0",
            ),
            id="v2-summary-record",
        ),
        pytest.param(
            b"3,5123,98765432,-;Memory cgroup out of memory: Killed process 5714 (hog)\n",
            KmsgRecord(
                5123, 98765432, 3, 0, "Memory cgroup out of memory: Killed process 5714 (hog)"
            ),
            id="trailing-newline",
        ),
        pytest.param(
            # A device message: the dictionary lines after the text are dropped.
            b"6,339,5140900,-;NET: Registered protocol family 10\n"
            b" SUBSYSTEM=net\n DEVICE=+net:lo\n",
            KmsgRecord(339, 5140900, 6, 0, "NET: Registered protocol family 10"),
            id="dictionary-lines",
        ),
        pytest.param(
            # CONFIG_PRINTK_CALLER kernels add fields after the flags.
            b"4,77,1200,-,caller=T9185;hog invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL)\n",
            KmsgRecord(77, 1200, 4, 0, "hog invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL)"),
            id="caller-field",
        ),
        pytest.param(
            # Old kernels flag fragments of a continued line with 'c' and '+'.
            b"6,12,34,c;Task in \n",
            KmsgRecord(12, 34, 6, 0, "Task in "),
            id="continuation-flag",
        ),
        pytest.param(
            # Written from user space: facility 1 (user), level 5.
            b"13,900,1,-;oomguard-test marker\n",
            KmsgRecord(900, 1, 5, 1, "oomguard-test marker"),
            id="user-facility",
        ),
        pytest.param(
            # UTF-8 comm, a backslash and an embedded newline, as devkmsg escapes them.
            b"3,1,2,-;Killed process 9 (caf\\xc3\\xa9 \\x5cn) x\\x0ay\n",
            KmsgRecord(1, 2, 3, 0, "Killed process 9 (caf\u00e9 \\n) x\ny"),
            id="escapes",
        ),
        pytest.param(
            # A comm cut at 15 bytes in the middle of a UTF-8 sequence.
            b"3,1,2,-;(\\xc3\\xa9\\xc3)\n",
            KmsgRecord(1, 2, 3, 0, "(\u00e9\udcc3)"),  # the byte kept (surrogateescape)
            id="broken-utf8",
        ),
        pytest.param(
            # Not a complete escape: left as it is.
            b"3,1,2,-;a\\x4 \\xzz \\\n",
            KmsgRecord(1, 2, 3, 0, "a\\x4 \\xzz \\"),
            id="partial-escape",
        ),
        pytest.param(
            b"0,0,0,-;\n",
            KmsgRecord(0, 0, 0, 0, ""),
            id="empty-message",
        ),
        pytest.param(
            b"6,18446744073709551615,18446744073709551615,-;x",
            KmsgRecord(18446744073709551615, 18446744073709551615, 6, 0, "x"),
            id="u64-max",
        ),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"\n", None, id="newline"),
        pytest.param(b";", None, id="bare-semicolon"),
        pytest.param(b"6,1,2,-", None, id="no-semicolon"),
        pytest.param(b"6,1;x", None, id="too-few-fields"),
        pytest.param(b"x,1,2,-;m", None, id="non-numeric-prio"),
        pytest.param(b"-6,1,2,-;m", None, id="negative-prio"),
        pytest.param(b"6, 1,2,-;m", None, id="space-in-number"),
        pytest.param(b"6,1_0,2,-;m", None, id="underscore-in-number"),
        pytest.param("6,\u0661,2,-;m".encode(), None, id="non-ascii-digit"),
        pytest.param(b"6,1,2;m", KmsgRecord(1, 2, 6, 0, "m"), id="no-flags"),
        pytest.param(b"\xff\xfe;\x00", None, id="binary"),
        pytest.param(
            b"6,1,2,-" + b"9" * 5000 + b";m", KmsgRecord(1, 2, 6, 0, "m"), id="long-flags"
        ),
    ],
)
def test_parse_kmsg_record(raw: bytes, expected: KmsgRecord | None) -> None:
    assert parse_kmsg_record(raw) == expected


@pytest.mark.parametrize(
    ("prev", "seq", "lost"),
    [
        (None, 0, 0),
        (None, 10**9, 0),
        (5, 6, 0),
        (5, 7, 1),
        (5, 1005, 999),
        (5, 5, 0),  # the same record twice: nothing lost
        (5, 3, 0),  # went backwards: another boot, nothing can be said
        (-1, 0, 0),  # after_seq=-1 means "from the very first record"
        (-1, 12, 12),
    ],
)
def test_lost_between(prev: int | None, seq: int, lost: int) -> None:
    assert lost_between(prev, seq) == lost


# --- OOM reports, one kernel at a time -----------------------------------------------

# Kernel 6.18, cgroup v1, this project's own test host (see the shared TESTING.md). The noise
# between the lines is from 6.x reports (Call Trace, task table), verbatim from other dumps.
V1_6_18 = [
    "hog invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
    "CPU: 19 PID: 596 Comm: rs:main Q:Reg Not tainted 6.6.114.1-microsoft-standard-WSL2 #1",
    "Call Trace:",
    " <TASK>",
    " dump_stack_lvl+0x34/0x48",
    " oom_kill_process+0x118/0x280",
    " ? oom_evaluate_task+0x155/0x1e0",
    " </TASK>",
    "memory: usage 65536kB, limit 65536kB, failcnt 19",
    "memory+swap: usage 0kB, limit 9007199254740988kB, failcnt 0",
    "kmem: usage 3143468kB, limit 9007199254740988kB, failcnt 0",
    "Tasks state (memory values in pages):",
    "[  pid  ]   uid  tgid total_vm      rss pgtables_bytes swapents oom_score_adj name",
    "[    185]  1000   185   830068   829792  6705152        0             0 enomem-1",
    "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
    "oom_memcg=/process_api/a113.../oomlab-5671/a-hog-alone,"
    "task_memcg=/process_api/a113.../oomlab-5671/a-hog-alone,task=hog,pid=5714,uid=0",
    "Memory cgroup out of memory: Killed process 5714 (hog) total-vm:68268kB, "
    "anon-rss:65280kB, file-rss:1112kB, shmem-rss:0kB, UID:0 pgtables:172kB oom_score_adj:0",
    "oom_reaper: reaped process 5714 (hog), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
]


def test_v1_memcg_kill_kernel_6_18() -> None:
    assert assemble(V1_6_18) == [
        KernelOomKill(
            seq=seq_of(V1_6_18, "Killed process"),
            kernel_time_us=TIME_US + seq_of(V1_6_18, "Killed process"),
            pid=5714,
            command="hog",
            uid=0,
            total_vm_kb=68268,
            anon_rss_kb=65280,
            file_rss_kb=1112,
            shmem_rss_kb=0,
            oom_score_adj=0,
            constraint="CONSTRAINT_MEMCG",
            oom_memcg="/process_api/a113.../oomlab-5671/a-hog-alone",
            task_memcg="/process_api/a113.../oomlab-5671/a-hog-alone",
            memcg_usage_kb=65536,
            memcg_limit_kb=65536,
            trigger_command="hog",
            group_memcg=None,
            scope="memory cgroup",
            report_seq=seq_of(V1_6_18, "invoked oom-killer"),
        )
    ]


# AKS node, 2025 (Ubuntu 22.04, cgroup v2, systemd driver): the pod's container hit
# kubepods.slice's limit; memory.oom.group is set on the container, so the chosen victim is
# killed (and printed) a second time after the "Tasks in" line.
AKS_V2_SYSTEMD = [
    "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=cri-containerd-178ec18073cc6"
    "ac7be2de8d9869daf162a6349dd056b6535849112c53ec3102a.scope,mems_allowed=0,oom_memcg="
    "/kubepods.slice,task_memcg=/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-"
    "pod10d16a28_60ff_475f_a631_510d9792219f.slice/cri-containerd-178ec18073cc6ac7be2de8d9869"
    "daf162a6349dd056b6535849112c53ec3102a.scope,task=stress,pid=68061,uid=0",
    "Memory cgroup out of memory: Killed process 68061 (stress) total-vm:4195088kB, "
    "anon-rss:2884696kB, file-rss:288kB, shmem-rss:0kB, UID:0 pgtables:5696kB "
    "oom_score_adj:872",
    "Tasks in /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod10d16a28_60ff_"
    "475f_a631_510d9792219f.slice/cri-containerd-178ec18073cc6ac7be2de8d9869daf162a6349dd056"
    "b6535849112c53ec3102a.scope are going to be killed due to memory.oom.group set",
    "Memory cgroup out of memory: Killed process 68061 (stress) total-vm:4195088kB, "
    "anon-rss:2884696kB, file-rss:288kB, shmem-rss:0kB, UID:0 pgtables:5696kB "
    "oom_score_adj:872",
]
AKS_CONTAINER = (
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod10d16a28_60ff_475f_a631_"
    "510d9792219f.slice/cri-containerd-178ec18073cc6ac7be2de8d9869daf162a6349dd056b6535849112"
    "c53ec3102a.scope"
)


def test_v2_systemd_container_kill_without_trigger_line() -> None:
    # The report starts mid-way (as after a reader restart): the summary alone gives the
    # context. The victim's second "Killed process" line is the same kill, not a new one.
    first, again = assemble(AKS_V2_SYSTEMD)
    assert again.repeat and again.pid == first.pid
    assert [first] == [
        KernelOomKill(
            seq=seq_of(AKS_V2_SYSTEMD, "Killed process"),
            kernel_time_us=TIME_US + seq_of(AKS_V2_SYSTEMD, "Killed process"),
            pid=68061,
            command="stress",
            uid=0,
            total_vm_kb=4195088,
            anon_rss_kb=2884696,
            file_rss_kb=288,
            shmem_rss_kb=0,
            oom_score_adj=872,
            constraint="CONSTRAINT_MEMCG",
            oom_memcg="/kubepods.slice",
            task_memcg=AKS_CONTAINER,
            group_memcg=AKS_CONTAINER,
            scope="memory cgroup",
        )
    ]


# cgroupfs driver, 2024 blog post on finding the OOM-killed pod (6.x, full kill line).
CGROUPFS_JAVA = [
    "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=3e5e5eab87df615f4777e6f7f261"
    "a7fb62f4a7ee5bc3e25e3a5b5223ccd368fe,mems_allowed=0-1,oom_memcg=/kubepods/burstable/pod"
    "28fcb1a0-a45c-44e7-b9bf-e3b9360bedba,task_memcg=/kubepods/burstable/pod28fcb1a0-a45c-44e7"
    "-b9bf-e3b9360bedba/3e5e5eab87df615f4777e6f7f261a7fb62f4a7ee5bc3e25e3a5b5223ccd368fe,"
    "task=java,pid=50624,uid=10000",
    "Memory cgroup out of memory: Killed process 50624 (java) total-vm:59726088kB, "
    "anon-rss:8225208kB, file-rss:26912kB, shmem-rss:0kB, UID:10000 pgtables:21384kB "
    "oom_score_adj:969",
]

# cgroupfs driver, KubeVirt CDI importer (5.x: UID printed, pgtables/oom_score_adj not yet).
CGROUPFS_UID_ONLY = [
    "[ 3422]     0  3422   191966     4380   327680        0           999 qemu-img",
    "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=ea887b1c9c5c8e734ac798fedd2b"
    "f5d39c0b7ce5ad961027dfc1ca138a23a2e8,mems_allowed=0-1,oom_memcg=/kubepods/burstable/pod"
    "6b212546-f5dd-4fdf-bcc7-72a686638102,task_memcg=/kubepods/burstable/pod6b212546-f5dd-4fdf"
    "-bcc7-72a686638102/ea887b1c9c5c8e734ac798fedd2bf5d39c0b7ce5ad961027dfc1ca138a23a2e8,"
    "task=cdi-importer,pid=18524,uid=0",
    "Memory cgroup out of memory: Killed process 18524 (cdi-importer) total-vm:2701352kB, "
    "anon-rss:23032kB, file-rss:0kB, shmem-rss:0kB, UID:0",
    "oom_reaper: reaped process 18524 (cdi-importer), now anon-rss:0kB, file-rss:0kB, "
    "shmem-rss:0kB",
]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param(
            CGROUPFS_JAVA,
            {
                "pid": 50624,
                "command": "java",
                "uid": 10000,
                "oom_score_adj": 969,
                "total_vm_kb": 59726088,
                "anon_rss_kb": 8225208,
                "file_rss_kb": 26912,
                "shmem_rss_kb": 0,
                "constraint": "CONSTRAINT_MEMCG",
                "oom_memcg": "/kubepods/burstable/pod28fcb1a0-a45c-44e7-b9bf-e3b9360bedba",
                "task_memcg": "/kubepods/burstable/pod28fcb1a0-a45c-44e7-b9bf-e3b9360bedba/"
                "3e5e5eab87df615f4777e6f7f261a7fb62f4a7ee5bc3e25e3a5b5223ccd368fe",
                "scope": "memory cgroup",
            },
            id="cgroupfs-6x",
        ),
        pytest.param(
            CGROUPFS_UID_ONLY,
            {
                "pid": 18524,
                "command": "cdi-importer",
                "uid": 0,
                "oom_score_adj": None,  # not printed before 5.9: unknown, not 0
                "total_vm_kb": 2701352,
                "anon_rss_kb": 23032,
                "file_rss_kb": 0,
                "shmem_rss_kb": 0,
                "constraint": "CONSTRAINT_MEMCG",
                "oom_memcg": "/kubepods/burstable/pod6b212546-f5dd-4fdf-bcc7-72a686638102",
                "task_memcg": "/kubepods/burstable/pod6b212546-f5dd-4fdf-bcc7-72a686638102/"
                "ea887b1c9c5c8e734ac798fedd2bf5d39c0b7ce5ad961027dfc1ca138a23a2e8",
                "scope": "memory cgroup",
            },
            id="cgroupfs-5x-uid-only",
        ),
    ],
)
def test_cgroupfs_container_kills(lines: list[str], expected: dict[str, object]) -> None:
    (kill,) = assemble(lines)
    assert {k: v for k, v in dataclasses.asdict(kill).items() if k in expected} == expected
    assert kill.seq == seq_of(lines, "Killed process")
    assert kill.memcg_usage_kb is None and kill.trigger_command is None


# Global OOM, 6.x (a Go project's comment quoting its dmesg): the node ran out.
GLOBAL_6X = [
    "oom_reaper: reaped process 854413 (member), now anon-rss:0kB, file-rss:936kB, shmem-rss:0kB",
    "member invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, "
    "oom_score_adj=0",
    " oom_kill_process+0x118/0x280",
    " ? oom_evaluate_task+0x155/0x1e0",
    " __alloc_pages_may_oom+0x10b/0x1d0",
    "[  pid  ]   uid  tgid total_vm      rss rss_anon rss_file rss_shmem pgtables_bytes "
    "swapents oom_score_adj name",
    "[   1387]   990  1387     4400     1867      288     1579         0    77824        0"
    "          -900 systemd-oomd",
    "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=user.slice,mems_allowed=0,"
    "global_oom,task_memcg=/user.slice/user-1000.slice/session-83.scope,task=member,"
    "pid=854415,uid=1000",
    "Out of memory: Killed process 854415 (member) total-vm:1004092396kB, "
    "anon-rss:31270716kB, file-rss:296kB, shmem-rss:0kB, UID:1000 pgtables:334784kB "
    "oom_score_adj:0",
    "oom_reaper: reaped process 854415 (member), now anon-rss:0kB, file-rss:296kB,shmem-rss:0kB",
]

# Global OOM on a kernel built without cpusets: no cpuset= / mems_allowed= fields
# (Tetsuo Handa's OOM test report on linux-mm), with Mem-Info noise before it.
GLOBAL_NO_CPUSET = [
    "Node 0 hugepages_total=0 hugepages_free=0 hugepages_surp=0 hugepages_size=2048kB",
    "10478 total pagecache pages",
    "Free swap  = 0kB",
    "136105 pages reserved",
    "0 pages cma reserved",
    "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),global_oom,task_memcg=/,"
    "task=normal-priority,pid=23173,uid=0",
    "Out of memory: Killed process 23173 (normal-priority) total-vm:4228kB, anon-rss:88kB, "
    "file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:52kB oom_score_adj:1000",
    "oom_reaper: reaped process 23173 (normal-priority), now anon-rss:0kB, file-rss:0kB, "
    "shmem-rss:0kB",
]


def test_global_oom_6x() -> None:
    assert assemble(GLOBAL_6X) == [
        KernelOomKill(
            seq=seq_of(GLOBAL_6X, "Killed process"),
            kernel_time_us=TIME_US + seq_of(GLOBAL_6X, "Killed process"),
            pid=854415,
            command="member",
            uid=1000,
            total_vm_kb=1004092396,
            anon_rss_kb=31270716,
            file_rss_kb=296,
            shmem_rss_kb=0,
            oom_score_adj=0,
            constraint="CONSTRAINT_NONE",
            oom_memcg=None,
            task_memcg="/user.slice/user-1000.slice/session-83.scope",
            trigger_command="member",
            scope="global",
            report_seq=seq_of(GLOBAL_6X, "invoked oom-killer"),
        )
    ]


def test_global_oom_without_cpuset_fields() -> None:
    (kill,) = assemble(GLOBAL_NO_CPUSET)
    assert (kill.pid, kill.command, kill.scope) == (23173, "normal-priority", "global")
    assert (kill.constraint, kill.oom_memcg, kill.task_memcg) == ("CONSTRAINT_NONE", None, "/")
    assert (kill.uid, kill.oom_score_adj, kill.memcg_limit_kb) == (0, 1000, None)


# Two memcg OOMs back to back on 4.8 (docker -m 20M / -m 300M), from cadvisor's
# oomparser_test.go, with the docker bridge's messages around them.
def _gunpowder_report(cid: str, trigger_pid: int) -> list[str]:
    return [
        "gunpowder-memho invoked oom-killer: gfp_mask=0x24000c0(GFP_KERNEL), order=0, "
        "oom_score_adj=0",
        f"gunpowder-memho cpuset={cid} mems_allowed=0",
        f"CPU: 0 PID: {trigger_pid} Comm: gunpowder-memho Tainted: G           O    "
        "4.8.0-gentoo #2",
        "Hardware name: LENOVO 20BSCTO1WW/20BSCTO1WW, BIOS N14ET32W (1.10 ) 08/13/2015",
        "Call Trace:",
        " [<ffffffff8137ad47>] dump_stack+0x4d/0x63",
        " [<ffffffff810e85fe>] oom_kill_process+0x7e/0x362",
        f"Task in /docker/{cid} killed as a result of limit of /docker/{cid}",
    ]


LEGACY_4_8 = [
    "docker0: port 2(vethcd0dbfb) entered forwarding state",
    *_gunpowder_report("2e088fe462e25e60be1dafafe2c05c47bda1a97978648d10ad2b7484fc0b8f50", 1381),
    "memory: usage 20480kB, limit 20480kB, failcnt 1204",
    "memory+swap: usage 40940kB, limit 40960kB, failcnt 6",
    "kmem: usage 220kB, limit 9007199254740988kB, failcnt 0",
    "Memory cgroup stats for /docker/2e088fe462e25e60be1dafafe2c05c47bda1a97978648d10ad2b7484fc"
    "0b8f50: cache:0KB rss:20260KB rss_huge:0KB mapped_file:0KB dirty:0KB writeback:1016KB "
    "swap:20460KB inactive_anon:10232KB active_anon:10028KB inactive_file:0KB active_file:0KB "
    "unevictable:0KB",
    "[ pid ]   uid  tgid total_vm      rss nr_ptes nr_pmds swapents oom_score_adj name",
    "[ 1381]     0  1381   530382     5191      34       4     5489             0 gunpowder-memho",
    "Memory cgroup out of memory: Kill process 1381 (gunpowder-memho) score 1046 or "
    "sacrifice child",
    "Killed process 1381 (gunpowder-memho) total-vm:2121528kB, anon-rss:18624kB, "
    "file-rss:2140kB, shmem-rss:0kB",
    "oom_reaper: reaped process 1381 (gunpowder-memho), now anon-rss:0kB, file-rss:0kB, "
    "shmem-rss:0kB",
    "docker0: port 2(vethcd0dbfb) entered disabled state",
    "IPv6: ADDRCONF(NETDEV_CHANGE): veth4cb51e1: link becomes ready",
    *_gunpowder_report("6c6fcab8562fd3150854986b78552c732f234fd405b624207b8843528a145e70", 1667),
    "memory: usage 307112kB, limit 307200kB, failcnt 35982",
    "memory+swap: usage 614400kB, limit 614400kB, failcnt 11",
    "[ 1667]     0  1667   210894    62557     315       4    91187             0 gunpowder-memho",
    "Memory cgroup out of memory: Kill process 1667 (gunpowder-memho) score 1003 or "
    "sacrifice child",
    "Killed process 1667 (gunpowder-memho) total-vm:843576kB, anon-rss:248180kB, "
    "file-rss:2048kB, shmem-rss:0kB",
    "oom_reaper: reaped process 1667 (gunpowder-memho), now anon-rss:0kB, file-rss:0kB, "
    "shmem-rss:0kB",
    "device veth4cb51e1 left promiscuous mode",
]


def test_legacy_4_8_two_reports_each_with_its_own_context() -> None:
    first_cg = "/docker/2e088fe462e25e60be1dafafe2c05c47bda1a97978648d10ad2b7484fc0b8f50"
    second_cg = "/docker/6c6fcab8562fd3150854986b78552c732f234fd405b624207b8843528a145e70"
    common: dict[str, Any] = {
        "command": "gunpowder-memho",
        "scope": "memory cgroup",
        "constraint": None,
    }
    common |= {"uid": None, "oom_score_adj": None, "trigger_command": "gunpowder-memho"}
    # Each kill's report starts at its own trigger line.
    first_report = seq_of(LEGACY_4_8, "invoked oom-killer", 0)
    second_report = seq_of(LEGACY_4_8, "invoked oom-killer", 1)
    assert assemble(LEGACY_4_8) == [
        KernelOomKill(
            seq=seq_of(LEGACY_4_8, "Killed process", 0),
            kernel_time_us=TIME_US + seq_of(LEGACY_4_8, "Killed process", 0),
            pid=1381,
            total_vm_kb=2121528,
            anon_rss_kb=18624,
            file_rss_kb=2140,
            shmem_rss_kb=0,
            oom_memcg=first_cg,
            task_memcg=first_cg,
            memcg_usage_kb=20480,
            memcg_limit_kb=20480,
            report_seq=first_report,
            **common,
        ),
        KernelOomKill(
            seq=seq_of(LEGACY_4_8, "Killed process", 1),
            kernel_time_us=TIME_US + seq_of(LEGACY_4_8, "Killed process", 1),
            pid=1667,
            total_vm_kb=843576,
            anon_rss_kb=248180,
            file_rss_kb=2048,
            shmem_rss_kb=0,
            oom_memcg=second_cg,
            task_memcg=second_cg,
            memcg_usage_kb=307112,
            memcg_limit_kb=307200,
            report_seq=second_report,
            **common,
        ),
    ]


# 3.13 (Ubuntu), cadvisor's oomparser_test.go: memcg kill and global kill, no shmem-rss.
LEGACY_3_13_MEMCG = [
    "memorymonster invoked oom-killer: gfp_mask=0xd0, order=0, oom_score_adj=0",
    "memorymonster cpuset=/ mems_allowed=0",
    "CPU: 5 PID: 13536 Comm: memorymonster Tainted: P           OX 3.13.0-43-generic #72-Ubuntu",
    " [<ffffffff81729468>] page_fault+0x28/0x30",
    "Task in /mem2 killed as a result of limit of /mem2",
    "memory: usage 980kB, limit 980kB, failcnt 4152239",
    "memory+swap: usage 0kB, limit 18014398509481983kB, failcnt 0",
    "kmem: usage 0kB, limit 18014398509481983kB, failcnt 0",
    "[ pid ]   uid  tgid total_vm      rss nr_ptes swapents oom_score_adj name",
    "[13536] 275858 13536  8389663      343   16267  8324326             0 memorymonster",
    "Memory cgroup out of memory: Kill process 13536 (memorymonster) score 996 or sacrifice child",
    "Killed process 13536 (memorymonster) total-vm:33558652kB, anon-rss:920kB, file-rss:452kB",
]
LEGACY_3_13_GLOBAL = [
    "badsysprogram invoked oom-killer: gfp_mask=0x280da, order=0, oom_score_adj=0",
    "badsysprogram cpuset=/ mems_allowed=0",
    "Mem-Info:",
    "Node 0 DMA per-cpu:",
    "CPU    0: hi:    0, btch:   1 usd:   0",
    "active_anon:405991 inactive_anon:57 isolated_anon:0",
    "lowmem_reserve[]: 0 1679 1679 1679",
    "Free swap  = 0kB",
    "[ 1532]  1020  1532   410347   398810     788        0             0 badsysprogram",
    "Out of memory: Kill process 1532 (badsysprogram) score 919 or sacrifice child",
    "Killed process 1532 (badsysprogram) total-vm:1641388kB, anon-rss:1595164kB, file-rss:76kB",
]


def test_legacy_3_13_memcg_kill() -> None:
    (kill,) = assemble(LEGACY_3_13_MEMCG)
    assert {
        k: v for k, v in dataclasses.asdict(kill).items() if k not in {"seq", "kernel_time_us"}
    } == {
        "pid": 13536,
        "command": "memorymonster",
        "uid": None,
        "total_vm_kb": 33558652,
        "anon_rss_kb": 920,
        "file_rss_kb": 452,
        "shmem_rss_kb": None,
        "oom_score_adj": None,
        "constraint": None,
        "oom_memcg": "/mem2",
        "task_memcg": "/mem2",
        "memcg_usage_kb": 980,
        "memcg_limit_kb": 980,
        "trigger_command": "memorymonster",
        "group_memcg": None,
        "scope": "memory cgroup",  # the kernel's word, from the "Kill process" line
        "repeat": False,
        "report_seq": seq_of(LEGACY_3_13_MEMCG, "invoked oom-killer"),
    }


def test_legacy_3_13_global_kill() -> None:
    (kill,) = assemble(LEGACY_3_13_GLOBAL)
    assert (kill.pid, kill.command, kill.scope) == (1532, "badsysprogram", "global")
    assert (kill.oom_memcg, kill.task_memcg, kill.memcg_usage_kb) == (None, None, None)
    assert (kill.total_vm_kb, kill.anon_rss_kb, kill.file_rss_kb) == (1641388, 1595164, 76)


# "Kill process X ... or sacrifice child" names the chosen task; the kernel may then kill one
# of its children instead. The child is the victim; the chosen task's memcg is not claimed
# for it (it may live elsewhere), but the OOM's own facts (which limit, usage) still hold.
SACRIFICE_RHEL7_K8S = [
    # RHEL 7 (3.10) backport of the summary line: no constraint, no nodemask.
    "memory: usage 3145728kB, limit 3145728kB, failcnt 14406932",
    "memory+swap: usage 3145728kB, limit 9007199254740988kB, failcnt 0",
    "[ pid ]   uid  tgid total_vm      rss nr_ptes swapents oom_score_adj name",
    "[30598]     0 30598      255        1       4        0          -998 pause",
    "[12788]     0 12788   150184     1146      23        0           997 runc:[2:INIT]",
    "oom-kill:,cpuset=bbd5e4b5f9c13666dd0ec7ff7afb2c4c2b0ede40a4adf1de43cc31c606f283f5,"
    "mems_allowed=0-1,oom_memcg=/kubepods/burstable/pod6c4333b3-a663-11ea-b39f-6c92bf85beda,"
    "task_memcg=/kubepods/burstable/pod6c4333b3-a663-11ea-b39f-6c92bf85beda/bbd5e4b5f9c13666dd"
    "0ec7ff7afb2c4c2b0ede40a4adf1de43cc31c606f283f5,task=runc:[2:INIT],pid=12800,uid=0",
    "Memory cgroup out of memory: Kill process 12800 (runc:[2:INIT]) score 997 or sacrifice child",
    "Killed process 12788 (runc:[2:INIT]) total-vm:600736kB, anon-rss:3296kB, file-rss:276kB, "
    "shmem-rss:1012kB",
]
SACRIFICE_3_10_JAVA = [  # kubernetes/kubernetes#56891, CentOS 7
    "[ pid ]   uid  tgid total_vm      rss nr_ptes swapents oom_score_adj name",
    "[28438]     0 28438  5063909   119961    1661   136409          -998 java",
    "Memory cgroup out of memory: Kill process 24572 (java) score 0 or sacrifice child",
    "Killed process 28438 (java) total-vm:20255636kB, anon-rss:466160kB, file-rss:13684kB",
]
SACRIFICE_GLOBAL_SH = [  # quoted on linux-mm (2019) as "the old output"
    "Out of memory: Kill process 19961 (python) score 17 or sacrifice child",
    "Killed process 31357 (sh) total-vm:5400kB, anon-rss:252kB, file-rss:4kB, shmem-rss:0kB",
]


def test_sacrificed_child_rhel7_summary_without_constraint() -> None:
    (kill,) = assemble(SACRIFICE_RHEL7_K8S)
    assert (kill.pid, kill.command) == (12788, "runc:[2:INIT]")
    assert kill.task_memcg is None  # the summary's pid=12800 is the parent
    assert kill.uid is None
    assert kill.oom_memcg == "/kubepods/burstable/pod6c4333b3-a663-11ea-b39f-6c92bf85beda"
    assert kill.constraint is None
    assert (kill.memcg_usage_kb, kill.memcg_limit_kb) == (3145728, 3145728)
    assert kill.shmem_rss_kb == 1012
    assert kill.scope == "memory cgroup"


@pytest.mark.parametrize(
    ("lines", "pid", "command", "scope"),
    [
        (SACRIFICE_3_10_JAVA, 28438, "java", "memory cgroup"),
        (SACRIFICE_GLOBAL_SH, 31357, "sh", "global"),
    ],
)
def test_sacrificed_child_is_the_victim(
    lines: list[str], pid: int, command: str, scope: str
) -> None:
    (kill,) = assemble(lines)
    assert (kill.pid, kill.command, kill.scope, kill.task_memcg) == (pid, command, scope, None)


# memory.oom.group on 5.0-rc4 (Tetsuo Handa, linux-mm, 2019): the whole cgroup is killed,
# with the oom_reaper thread and another task printing in between. The first victim is
# printed before the "Tasks in" line, the other members after it.
OOM_GROUP_5_0 = [
    "a.out invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
    "CPU: 4 PID: 9185 Comm: a.out Kdump: loaded Not tainted 5.0.0-rc4-next-20190131 #280",
    "Call Trace:",
    " dump_stack+0x67/0x95",
    " mem_cgroup_out_of_memory+0xb6/0xd0",
    "RIP: 0033:0x7f8b183aefe0",
    "memory: usage 51200kB, limit 51200kB, failcnt 125",
    "memory+swap: usage 0kB, limit 9007199254740988kB, failcnt 0",
    "kmem: usage 0kB, limit 9007199254740988kB, failcnt 0",
    "Memory cgroup stats for /test1: cache:0KB rss:49484KB rss_huge:30720KB shmem:0KB "
    "mapped_file:0KB dirty:0KB writeback:0KB inactive_anon:0KB active_anon:49700KB "
    "inactive_file:0KB active_file:0KB unevictable:0KB",
    "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,"
    "oom_memcg=/test1,task_memcg=/test1,task=a.out,pid=9188,uid=0",
    "Memory cgroup out of memory: Killed process 9188 (a.out) total-vm:14456kB, "
    "anon-rss:10324kB, file-rss:504kB, shmem-rss:0kB",
    "Tasks in /test1 are going to be killed due to memory.oom.group set",
    "oom_reaper: reaped process 9188 (a.out), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
    "Memory cgroup out of memory: Killed process 1 (systemd) total-vm:43400kB, "
    "anon-rss:1228kB, file-rss:3992kB, shmem-rss:0kB",
    "Memory cgroup out of memory: Killed process 9182 (a.out) total-vm:14456kB, "
    "anon-rss:76kB, file-rss:588kB, shmem-rss:0kB",
    "oom_reaper: reaped process 1 (systemd), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
    "Memory cgroup out of memory: Killed process 9183 (a.out) total-vm:14456kB, "
    "anon-rss:6228kB, file-rss:512kB, shmem-rss:0kB",
    "abrt-hook-ccpp (9193) used greatest stack depth: 10480 bytes left",
    "Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000008b",
]


def test_memory_oom_group_kill() -> None:
    kills = assemble(OOM_GROUP_5_0)
    assert [(k.pid, k.command) for k in kills] == [
        (9188, "a.out"),
        (1, "systemd"),
        (9182, "a.out"),
        (9183, "a.out"),
    ]
    assert [k.seq for k in kills] == [seq_of(OOM_GROUP_5_0, "Killed process", i) for i in range(4)]
    chosen, *members = kills
    # The group line comes right after the chosen victim's kill line and makes it part
    # of the group kill too (the assembler holds each kill back by one record for that).
    assert (chosen.task_memcg, chosen.group_memcg, chosen.uid) == ("/test1", "/test1", 0)
    for member in members:
        assert (member.task_memcg, member.group_memcg, member.uid) == (None, "/test1", None)
    for kill in kills:
        assert (kill.oom_memcg, kill.constraint) == ("/test1", "CONSTRAINT_NONE")
        assert (kill.memcg_usage_kb, kill.memcg_limit_kb) == (51200, 51200)
        assert (kill.trigger_command, kill.scope) == ("a.out", "memory cgroup")


def test_oom_group_victim_printed_twice_is_one_kill() -> None:
    # Each later line for the same pid is a repeat: no new victim, but the kernel counted
    # it again in the cgroup's oom_kill, which the detector must know.
    kills = assemble([*AKS_V2_SYSTEMD, *AKS_V2_SYSTEMD[1:2]])
    assert [(k.pid, k.repeat) for k in kills] == [(68061, False), (68061, True), (68061, True)]
    assert kills[0].group_memcg == AKS_CONTAINER
    assert len({k.seq for k in kills}) == 3


def test_same_pid_in_a_later_report_is_a_new_kill() -> None:
    # pids are reused; only a repeat inside one report is the same kill.
    kills = assemble([*V1_6_18, *V1_6_18])
    assert [k.pid for k in kills] == [5714, 5714]
    assert kills[0].seq < kills[1].seq


# --- Command names and paths a process can choose ---------------------------------------
# A process names itself with prctl(PR_SET_NAME) (15 bytes, anything but NUL), and anyone
# who can create cgroups names them. These cases are the 6.18 report above with the comm
# (and the path) replaced, printed the way the kernel's format strings print them.


def report_618(comm: bytes, *, path: bytes = b"/pod/ctr", pid: int = 5714) -> list[bytes]:
    return [
        comm + b" invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
        b"memory: usage 65536kB, limit 65536kB, failcnt 19",
        b"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
        b"oom_memcg=" + path + b",task_memcg=" + path + b",task=" + comm + b",pid=%d,uid=0" % pid,
        b"Memory cgroup out of memory: Killed process %d (" % pid + comm + b") total-vm:68268kB, "
        b"anon-rss:65280kB, file-rss:1112kB, shmem-rss:0kB, UID:0 pgtables:172kB oom_score_adj:0",
    ]


@pytest.mark.parametrize(
    ("comm", "expected"),
    [
        (b"Plex Media Serv", "Plex Media Serv"),
        (b"rs:main Q:Reg", "rs:main Q:Reg"),  # rsyslogd's thread; verbatim in a 6.6 report
        (b"(sd-pam)", "(sd-pam)"),
        (b"()", "()"),
        (b"[", "["),
        (b"runc:[2:INIT]", "runc:[2:INIT]"),
        (b'"with quotes"', '"with quotes"'),
        (b"a,b,c", "a,b,c"),
        (b"x) total-vm:1kB", "x) total-vm:1kB"),
        (b"a,pid=1,uid=0", "a,pid=1,uid=0"),
        (b"x,task=y", "x,task=y"),
        (b"", ""),
        (b" ", " "),
        (b"tab\there", "tab\there"),
        (b"new\nline", "new\nline"),
        (b"back\\slash", "back\\slash"),
        ("caf\u00e9".encode(), "caf\u00e9"),
        ("\u65e5\u672c\u8a9e".encode(), "\u65e5\u672c\u8a9e"),
        # Bytes that are not UTF-8 are kept (surrogateescape): shown as \xNN to people.
        ("\u00e9".encode() * 7 + b"\xc3", "\u00e9" * 7 + "\udcc3"),  # cut mid-character
        (b"\xff\xfe", "\udcff\udcfe"),
    ],
)
def test_command_names(comm: bytes, expected: str) -> None:
    (kill,) = assemble(report_618(comm))
    assert (kill.pid, kill.command, kill.trigger_command) == (5714, expected, expected)
    assert (kill.task_memcg, kill.oom_memcg, kill.uid) == ("/pod/ctr", "/pod/ctr", 0)
    assert (kill.total_vm_kb, kill.oom_score_adj) == (68268, 0)


@pytest.mark.parametrize(
    "path",
    [
        "/a,b/c",
        "/with space/x y",
        "/x,task=y/z",  # looks like the next field
        "/x,pid=1,uid=0",
        "/\u00fcber/\u65e5\u672c",
        "/kubepods.slice/kubepods-besteffort.slice",
    ],
)
def test_cgroup_paths(path: str) -> None:
    for comm in (b"hog", b"x,task=y"):
        (kill,) = assemble(report_618(comm, path=path.encode()))
        assert (kill.task_memcg, kill.oom_memcg) == (path, path), comm


# --- Noise, gaps and things that only look like OOM lines -----------------------------------


def test_summary_of_another_pid_is_not_claimed() -> None:
    lines = report_618(b"hog", pid=5714)
    lines[-1] = lines[-1].replace(b"process 5714", b"process 5715")
    (kill,) = assemble(lines)
    assert (kill.pid, kill.task_memcg, kill.oom_memcg) == (5715, None, "/pod/ctr")


def test_lines_written_from_user_space_are_ignored() -> None:
    # devkmsg_write never gives user space facility 0, so this is someone's log line.
    assert assemble(V1_6_18, facility=1) == []


def test_lost_records_drop_the_report_context() -> None:
    assembler = OomReportAssembler()
    lines = V1_6_18
    kill_at = lines.index(next(x for x in lines if "Killed process" in x))
    for i, line in enumerate(lines[:kill_at]):
        rec = parse_kmsg_record(kmsg_raw(line, FIRST_SEQ + i))
        assert rec is not None
        assert assembler.feed(rec) == []
    # The ring buffer overwrote 50 records here: the kill may belong to another report.
    gap_seq = FIRST_SEQ + kill_at + 50
    rec = parse_kmsg_record(kmsg_raw(lines[kill_at], gap_seq))
    assert rec is not None
    assert assembler.feed(rec) == []  # held back until the next record or flush
    (kill,) = assembler.flush()
    assert (kill.pid, kill.seq, kill.task_memcg, kill.trigger_command) == (
        5714,
        gap_seq,
        None,
        None,
    )
    assert (kill.oom_memcg, kill.memcg_limit_kb, kill.uid) == (None, None, 0)


def test_new_report_resets_context() -> None:
    first = report_618(b"one", path=b"/first")
    second = [
        b"two invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0, "
        b"oom_score_adj=0",
        b"Out of memory: Killed process 77 (two) total-vm:1kB, anon-rss:1kB, file-rss:0kB, "
        b"shmem-rss:0kB, UID:1000 pgtables:52kB oom_score_adj:-5",
    ]
    kills = assemble([*first, *second])
    assert [k.pid for k in kills] == [5714, 77]
    assert {
        k: v
        for k, v in dataclasses.asdict(kills[1]).items()
        if k in {"oom_memcg", "memcg_limit_kb", "constraint"}
    } == {
        "oom_memcg": None,
        "memcg_limit_kb": None,
        "constraint": None,
    }
    assert (kills[1].trigger_command, kills[1].scope, kills[1].oom_score_adj) == (
        "two",
        "global",
        -5,
    )


NOT_KILLS = [
    "oom_reaper: reaped process 1381 (gunpowder-memho), now anon-rss:0kB, file-rss:0kB, "
    "shmem-rss:0kB",
    "Memory cgroup out of memory: OOM victim 5714 (hog) is already exiting. Skip killing the task",
    "[ 5714]     0  5714    17067    16597   172032        0             0 hog",
    "Killed process",
    "Killed process 5714 (hog)",
    "Killed process x (hog) total-vm:1kB, anon-rss:1kB, file-rss:1kB",
    "Killed process 5714 (hog) total-vm:1kB, anon-rss:1kB",
    "Killed process 5714 (hog) total-vm:-1kB, anon-rss:1kB, file-rss:1kB",
    "Killed process 5714 (hog) total-vm:1kB, anon-rss:1kB, file-rss:1kB trailing",
    "Killed process 5714 hog total-vm:1kB, anon-rss:1kB, file-rss:1kB",
    "systemd[1]: foo.service: Killed process 5714 (hog) with signal SIGKILL.",
    "oom-kill:",
    "oom-kill:constraint=",
    "oom-kill:constraint=CONSTRAINT_MEMCG,task=x",
    "memory: usage kB, limit kB",
    "Tasks in  are going to be killed due to memory.oom.group set",
    "Task in killed as a result of limit of",
    " invoked oom-killer: ",
    "\x00\x01\x02",
    "\ufffd" * 1000,
    "oom-kill:constraint=X" + ",cpuset=,oom_memcg=,task_memcg=,task=,pid=1" * 100 + "y",
    "Killed process 1 (" + ") total-vm:1kB, anon-rss:1kB, file-rss:1kB" * 100 + "x",
    "Memory cgroup out of memory:" * 200 + " Killed process 1 (x) total-vm:1kB, y",
]


def test_garbage_and_look_alikes_are_not_kills() -> None:
    assert assemble(NOT_KILLS) == []
    assert assemble([*NOT_KILLS, *V1_6_18])[0].pid == 5714


def test_hostile_lines_are_cheap() -> None:
    # Shapes that make backtracking regexes take seconds; each must stay well under that.
    import time

    hostile = [
        "oom-kill:constraint=X" + ",cpuset=,oom_memcg=,task_memcg=,task=,pid=1" * 90 + "y",
        "oom-kill:" + ",oom_memcg=,task_memcg=,task=" * 140 + ",pid=1y",
        "oom-kill:constraint=X,nodemask=" + "0," * 2000 + "x",
        "Killed process 1 (" + ") total-vm:1kB, anon-rss:1kB, file-rss:1kB" * 90 + "x",
        "Task in " + " killed as a result of limit of " * 120,
        "a: Kill process 1 (" + ") score 1 or sacrifice child" * 140 + "x",
    ]
    assembler = OomReportAssembler()
    for seq, line in enumerate(hostile):
        # CPU time of this thread, not wall time: a loaded machine that keeps the test
        # waiting for a core does not count, a backtracking regex does (seconds).
        start = time.thread_time()
        assembler.feed(KmsgRecord(seq, 0, 3, 0, line))
        assert time.thread_time() - start < 0.25, line[:60]


# --- Properties --------------------------------------------------------------------------


@given(st.binary(max_size=600))
def test_any_bytes_parse_without_raising(raw: bytes) -> None:
    rec = parse_kmsg_record(raw)
    assert rec is None or 0 <= rec.priority <= 7


@given(
    prio=st.integers(0, 191),
    seq=st.integers(0, 2**64 - 1),
    time_us=st.integers(0, 2**64 - 1),
    text=st.binary(max_size=300),
)
def test_escaped_records_round_trip(prio: int, seq: int, time_us: int, text: bytes) -> None:
    raw = b"%d,%d,%d,-;" % (prio, seq, time_us) + kmsg_escape(text) + b"\n SUBSYSTEM=x\n"
    assert parse_kmsg_record(raw) == KmsgRecord(
        seq=seq,
        time_us=time_us,
        priority=prio % 8,
        facility=prio // 8,
        message=text.decode("utf-8", errors="surrogateescape"),  # every byte kept
    )


OOM_FRAGMENTS = [
    "Killed process ",
    "Kill process ",
    "oom-kill:",
    "constraint=CONSTRAINT_MEMCG",
    ",oom_memcg=",
    ",task_memcg=",
    ",task=",
    ",pid=",
    ",uid=",
    "global_oom",
    " (",
    ") ",
    "total-vm:",
    "kB, anon-rss:",
    "kB, file-rss:",
    "kB, shmem-rss:",
    ", UID:",
    " oom_score_adj:",
    " invoked oom-killer: gfp_mask=",
    "memory: usage ",
    "Tasks in ",
    " are going to be killed due to memory.oom.group set",
    "Task in ",
    " killed as a result of limit of ",
    " score ",
    " or sacrifice child",
    "12",
    "-1",
    ":",
    "\n",
]


@given(
    st.lists(
        st.one_of(
            st.text(max_size=80),
            st.lists(st.sampled_from(OOM_FRAGMENTS), max_size=25).map("".join),
        ),
        max_size=30,
    ),
    st.lists(st.integers(0, 3), max_size=30),
)
def test_assembler_never_raises(messages: list[str], seq_steps: list[int]) -> None:
    assembler = OomReportAssembler()
    seq = 0
    for i, message in enumerate(messages):
        seq += seq_steps[i] if i < len(seq_steps) else 1
        for kill in assembler.feed(KmsgRecord(seq, 0, 3, 0, message)):
            assert kill.seq == seq


COMM_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")  # no surrogates


@given(
    comm=st.text(COMM_CHARS, max_size=15),
    path=st.text(COMM_CHARS, min_size=1, max_size=40).map(lambda p: "/" + p),
    pid=st.integers(1, 2**22),
)
def test_any_comm_and_path_come_back_intact(comm: str, path: str, pid: int) -> None:
    assume(",task_memcg=" not in path)  # would be ambiguous for the kernel's reader too
    lines = report_618(comm.encode(), path=path.encode(), pid=pid)
    (kill,) = assemble(lines)
    assert (kill.pid, kill.command, kill.trigger_command) == (pid, comm, comm)
    assert (kill.task_memcg, kill.oom_memcg) == (path, path)


# memory.oom.group on 6.1 (Debian 6.1.0-56-amd64, cgroup v2), captured in this project's
# lane-2 VM: a hog and two sleepers in "/probe, with comma/grp" with memory.max 32 MiB.
# The memory.stat block is one record with embedded newlines; the hog (145) is killed
# first and again after the group; memory.events said oom_kill 4 for 3 processes.
OOM_GROUP_6_1 = [
    "python invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0",
    "CPU: 0 PID: 145 Comm: python Not tainted 6.1.0-56-amd64 #1  Debian 6.1.192-2",
    "Call Trace:",
    "RSP: 002b:00007ffc57083548 EFLAGS: 00000206",
    "memory: usage 32768kB, limit 32768kB, failcnt 127",
    "swap: usage 0kB, limit 9007199254740988kB, failcnt 0",
    "Memory cgroup stats for /probe, with comma/grp:",
    "anon 33087488\nfile 0\nkernel 286720\nkernel_stack 0\npagetables 188416\npgfault 8292",
    "Tasks state (memory values in pages):",
    "[  pid  ]   uid  tgid total_vm      rss pgtables_bytes swapents oom_score_adj name",
    "[    143]     0   143      717      165    45056        0             0 sleep",
    "[    145]     0   145    10552     9240   122880        0             0 python",
    "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
    "oom_memcg=/probe, with comma/grp,task_memcg=/probe, with comma/grp,task=python,pid=145,"
    "uid=0",
    "Memory cgroup out of memory: Killed process 145 (python) total-vm:42208kB, "
    "anon-rss:32084kB, file-rss:4876kB, shmem-rss:0kB, UID:0 pgtables:120kB oom_score_adj:0",
    "Tasks in /probe, with comma/grp are going to be killed due to memory.oom.group set",
    "Memory cgroup out of memory: Killed process 143 (sleep) total-vm:2868kB, anon-rss:92kB, "
    "file-rss:568kB, shmem-rss:0kB, UID:0 pgtables:44kB oom_score_adj:0",
    "Memory cgroup out of memory: Killed process 144 (sleep) total-vm:2868kB, anon-rss:92kB, "
    "file-rss:560kB, shmem-rss:0kB, UID:0 pgtables:44kB oom_score_adj:0",
    "Memory cgroup out of memory: Killed process 145 (python) total-vm:42208kB, "
    "anon-rss:32084kB, file-rss:4876kB, shmem-rss:0kB, UID:0 pgtables:120kB oom_score_adj:0",
]


def test_memory_oom_group_kill_kernel_6_1() -> None:
    group = "/probe, with comma/grp"
    kills = assemble(OOM_GROUP_6_1)
    assert [(k.pid, k.command, k.repeat) for k in kills] == [
        (145, "python", False),
        (143, "sleep", False),
        (144, "sleep", False),
        (145, "python", True),
    ]
    # Each record carries its own line's seq and time, so no two records share them.
    assert [k.seq for k in kills] == [seq_of(OOM_GROUP_6_1, "Killed process", i) for i in range(4)]
    assert [k.kernel_time_us for k in kills] == [TIME_US + k.seq for k in kills]
    assert all(k.group_memcg == group and k.oom_memcg == group for k in kills)
    assert [k.task_memcg for k in kills] == [group, None, None, group]
    assert all((k.memcg_usage_kb, k.memcg_limit_kb) == (32768, 32768) for k in kills)


def test_repeat_gets_the_group_even_when_the_group_line_is_not_adjacent() -> None:
    lines = list(OOM_GROUP_6_1)
    at = lines.index(next(x for x in lines if x.startswith("Tasks in ")))
    lines.insert(at, "oom_reaper: reaped process 145 (python), now anon-rss:0kB, file-rss:0kB")
    kills = assemble(lines)
    assert [(k.pid, k.repeat, k.group_memcg) for k in kills] == [
        (145, False, None),  # released before the group line: it could not know
        (143, False, "/probe, with comma/grp"),
        (144, False, "/probe, with comma/grp"),
        (145, True, "/probe, with comma/grp"),
    ]


def test_rate_limited_report_does_not_inherit_the_previous_context() -> None:
    # The kernel prints at most 10 report headers per 5 s; in a storm the later kills
    # come as bare "Killed process" lines. Verbatim from the test host (6.18, v1).
    bare = (
        "Memory cgroup out of memory: Killed process 13488 (benchhog) total-vm:79280kB, "
        "anon-rss:69492kB, file-rss:6628kB, shmem-rss:0kB, UID:0 pgtables:200kB oom_score_adj:0"
    )
    first, second = assemble([*V1_6_18, bare])
    assert first.task_memcg is not None and first.oom_memcg is not None
    assert (second.pid, second.command, second.uid) == (13488, "benchhog", 0)
    assert (second.task_memcg, second.oom_memcg, second.constraint) == (None, None, None)
    assert second.memcg_limit_kb is None and second.scope == "memory cgroup"
