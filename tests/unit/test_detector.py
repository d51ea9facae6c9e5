"""The join of kmsg reports and counter increases: one record per kill, in every order."""

from __future__ import annotations

from datetime import UTC, datetime

from oomguard.cgroups.counters import MemoryUse
from oomguard.cgroups.watch import CounterChange
from oomguard.detect.join import KillJoiner
from oomguard.records import Constraint, KernelOomKill

UID = "0d8f2b8e-5c1a-4e8b-9b7e-2f3c4d5e6f70"
CID = "a" * 64
POD = f"/kubepods/burstable/pod{UID}"
CONTAINER = f"{POD}/{CID}"
WALL = datetime(2026, 11, 26, 7, 0, 0, tzinfo=UTC)


def kernel_kill(seq: int, pid: int, *, oom_memcg: str | None = CONTAINER) -> KernelOomKill:
    return KernelOomKill(
        seq=seq,
        kernel_time_us=1_000_000,
        pid=pid,
        command="hog",
        uid=0,
        anon_rss_kb=65280,
        file_rss_kb=1112,
        shmem_rss_kb=0,
        oom_score_adj=0,
        constraint="CONSTRAINT_MEMCG" if oom_memcg else "CONSTRAINT_NONE",
        oom_memcg=oom_memcg,
        task_memcg=CONTAINER,
        memcg_usage_kb=65536,
        memcg_limit_kb=65536,
    )


def change(kills: int, hits: frozenset[str] = frozenset()) -> CounterChange:
    return CounterChange(CONTAINER, kills, hits)


def joiner(**kw: object) -> KillJoiner:
    return KillJoiner(
        kmsg_available=bool(kw.pop("kmsg", True)),
        grace_s=2.0,
        memory_use_of=lambda cg: MemoryUse(64 << 20, 60 << 20),
    )


def test_kmsg_first_then_counter_is_one_record() -> None:
    j = joiner()
    rec = j.on_kernel_kill(
        kernel_kill(10, 100), CONTAINER, counted=True, now_mono=1.002, now_wall=WALL
    )
    assert rec.pid == 100 and rec.source == "kmsg"
    assert rec.rss_bytes == (65280 + 1112) * 1024
    assert rec.memory_limit_bytes == 64 << 20
    assert rec.constraint is Constraint.CONTAINER
    assert rec.identity.container_id == CID and rec.identity.pod_uid == UID
    assert rec.detection_latency_ms == 2.0
    assert j.on_counter_change(change(1), now_mono=1.003, now_wall=WALL) == []
    assert j.on_tick(now_mono=100.0) == []


def test_counter_first_then_kmsg_within_grace_is_one_record() -> None:
    j = joiner()
    assert j.on_counter_change(change(1), now_mono=1.0, now_wall=WALL) == []
    assert j.next_deadline() == 3.0
    rec = j.on_kernel_kill(
        kernel_kill(10, 100), CONTAINER, counted=True, now_mono=1.01, now_wall=WALL
    )
    assert rec.pid == 100
    assert j.on_tick(now_mono=10.0) == []
    assert j.next_deadline() is None


def test_counter_without_report_becomes_victim_unknown_after_grace() -> None:
    j = joiner()
    j.on_counter_change(change(2, frozenset({CONTAINER})), now_mono=1.0, now_wall=WALL)
    assert j.on_tick(now_mono=2.9) == []
    recs = j.on_tick(now_mono=3.0)
    assert len(recs) == 2
    assert all(r.pid is None and r.source == "counters" for r in recs)
    assert all(r.constraint is Constraint.CONTAINER for r in recs)
    assert recs[0].memory_limit_bytes == 64 << 20


def test_without_kmsg_counters_emit_at_once() -> None:
    j = joiner(kmsg=False)
    recs = j.on_counter_change(change(1, frozenset({POD})), now_mono=1.0, now_wall=WALL)
    assert [r.constraint for r in recs] == [Constraint.POD]


def test_two_reports_one_counter_of_two() -> None:
    j = joiner()
    j.on_kernel_kill(kernel_kill(10, 100), CONTAINER, counted=True, now_mono=1.0, now_wall=WALL)
    j.on_kernel_kill(kernel_kill(20, 101), CONTAINER, counted=True, now_mono=1.1, now_wall=WALL)
    assert j.on_counter_change(change(2), now_mono=1.2, now_wall=WALL) == []
    assert j.on_tick(now_mono=50.0) == []


def test_lost_report_is_still_one_record() -> None:
    # Two kills counted, one report read (the other overwritten in the ring buffer).
    j = joiner()
    j.on_kernel_kill(kernel_kill(10, 100), CONTAINER, counted=True, now_mono=1.0, now_wall=WALL)
    assert j.on_counter_change(change(2), now_mono=1.2, now_wall=WALL) == []
    recs = j.on_tick(now_mono=5.0)
    assert [r.source for r in recs] == ["counters"]


def test_kill_outside_watched_tree_leaves_no_credit() -> None:
    j = joiner()
    rec = j.on_kernel_kill(
        kernel_kill(10, 100, oom_memcg=None),
        "/system.slice/x.service",
        counted=False,
        now_mono=1.0,
        now_wall=WALL,
    )
    assert rec.constraint is Constraint.SYSTEM
    assert rec.identity.unit == "x.service"
    # A later counter increase in the container is a different kill.
    j.on_counter_change(change(1), now_mono=1.1, now_wall=WALL)
    assert len(j.on_tick(now_mono=10.0)) == 1


def test_stale_credits_expire() -> None:
    j = joiner()
    j.on_kernel_kill(kernel_kill(10, 100), CONTAINER, counted=True, now_mono=1.0, now_wall=WALL)
    j.on_tick(now_mono=1.0 + KillJoiner.CREDIT_TTL_S + 1)
    j.on_counter_change(change(1), now_mono=200.0, now_wall=WALL)
    assert len(j.on_tick(now_mono=300.0)) == 1


def test_json_contract_fields() -> None:
    j = joiner()
    rec = j.on_kernel_kill(
        kernel_kill(10, 100), CONTAINER, counted=True, now_mono=1.0, now_wall=WALL
    )
    d = rec.to_json_dict()
    for key in (
        "kind",
        "time",
        "constraint",
        "cgroup",
        "container_id",
        "pod_uid",
        "qos",
        "pid",
        "command",
        "oom_score_adj",
    ):
        assert key in d
    assert d["kind"] == "oom_kill" and d["time"] == "2026-11-26T07:00:00Z"
    assert d["qos"] == "burstable" and d["constraint"] == "container"


def bare_kill(seq: int, pid: int) -> KernelOomKill:
    """A kill line whose report header the kernel rate-limited away."""
    return KernelOomKill(
        seq=seq,
        kernel_time_us=1_000_000,
        pid=pid,
        command="hog",
        uid=0,
        anon_rss_kb=65280,
        file_rss_kb=1112,
        shmem_rss_kb=0,
        oom_score_adj=0,
        scope="memory cgroup",
    )


def test_bare_report_then_counter_pairs_into_one_record() -> None:
    j = joiner()
    assert (
        j.on_kernel_kill(bare_kill(10, 100), None, counted=False, now_mono=1.0, now_wall=WALL)
        is None
    )
    (rec,) = j.on_counter_change(change(1, frozenset({CONTAINER})), now_mono=1.01, now_wall=WALL)
    assert (rec.pid, rec.command, rec.cgroup, rec.source) == (100, "hog", CONTAINER, "kmsg")
    assert rec.identity.container_id == CID
    assert rec.constraint is Constraint.CONTAINER  # from the counters: no header
    assert j.on_tick(now_mono=100.0) == []


def test_counter_then_bare_report_pairs_into_one_record() -> None:
    j = joiner()
    assert j.on_counter_change(change(1), now_mono=1.0, now_wall=WALL) == []
    rec = j.on_kernel_kill(bare_kill(10, 100), None, counted=False, now_mono=1.01, now_wall=WALL)
    assert rec is not None and (rec.pid, rec.cgroup) == (100, CONTAINER)
    assert j.on_tick(now_mono=100.0) == []


def test_unpaired_bare_report_is_dropped_when_watching_a_subtree() -> None:
    j = KillJoiner(kmsg_available=True, grace_s=2.0, report_unpaired=False)
    assert (
        j.on_kernel_kill(bare_kill(10, 100), None, counted=False, now_mono=1.0, now_wall=WALL)
        is None
    )
    assert j.on_tick(now_mono=10.0) == []
    whole = KillJoiner(kmsg_available=True, grace_s=2.0, report_unpaired=True)
    whole.on_kernel_kill(bare_kill(10, 100), None, counted=False, now_mono=1.0, now_wall=WALL)
    (rec,) = whole.on_tick(now_mono=10.0)
    assert rec.pid == 100 and rec.cgroup is None


def test_bare_report_of_a_process_elsewhere_is_not_paired() -> None:
    elsewhere = {100: "/system.slice/other.service"}
    j = KillJoiner(kmsg_available=True, grace_s=2.0, cgroup_of_pid=elsewhere.get)
    assert (
        j.on_kernel_kill(bare_kill(10, 100), None, counted=False, now_mono=1.0, now_wall=WALL)
        is None
    )
    assert (
        j.on_kernel_kill(bare_kill(11, 101), None, counted=False, now_mono=1.0, now_wall=WALL)
        is None
    )
    (rec,) = j.on_counter_change(change(1), now_mono=1.01, now_wall=WALL)
    assert (rec.pid, rec.cgroup) == (101, CONTAINER)


def test_a_burst_of_bare_reports_read_late_is_never_guessed_into_the_wrong_container() -> None:
    # The agent fell behind: three bare reports printed at 1.0, then two containers'
    # increases read 100 ms later. No line is close enough in time to say which victim
    # died where, so the records carry the right cgroups and no victim (after the grace,
    # for a report naming the cgroup), and no report is left over to be counted twice.
    other = f"{POD}/{'b' * 64}"
    j = joiner()
    for pid in (100, 101, 102):
        assert (
            j.on_kernel_kill(bare_kill(pid, pid), None, counted=False, now_mono=1.0, now_wall=WALL)
            is None
        )
    recs = j.on_counter_change(change(2), now_mono=1.1, now_wall=WALL)
    recs += j.on_counter_change(CounterChange(other, 1, frozenset()), now_mono=1.1, now_wall=WALL)
    assert recs == []
    recs = j.on_tick(now_mono=100.0)
    assert sorted(r.cgroup or "" for r in recs) == sorted([CONTAINER, CONTAINER, other])
    assert all(r.pid is None and r.source == "counters" for r in recs)
    assert j.on_tick(now_mono=200.0) == []
