"""Real OOM kills caught with the kernel log read through syslog(2), /dev/kmsg unavailable.

What an unprivileged container gets: opening /dev/kmsg fails (here: a path that does not
exist), and the engine reads the same report with klogctl(SYSLOG_ACTION_READ_ALL) on each
counter increase. The kernel log is shared with whatever else runs on the host; the
watcher only reports kills below its own scratch tree.

Other processes OOM-killed on this host meanwhile (other tests) matter in one case: past
the kernel's report rate limit (10 headers per 5 s, machine-wide) their kill lines come
bare, without a cgroup, like ours. The engine pairs a bare line with the counter increase
it fits in time and never names another process's victim; where a foreign line fitted an
increase as well as ours, it leaves that victim unknown (the kernel could not tell), and
only then are the checks that need every victim named skipped, saying why
(`Collector.skip_if_the_kernel_could_not_tell`).
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from oomguard.cgroups.scratch import MIB, ScratchTree
from oomguard.k8s.event_queue import kill_id
from oomguard.kernel.parse import KmsgRecord, OomReportAssembler
from oomguard.kernel.read_timing import SYSLOG_MIN_READ_GAP_S
from oomguard.kernel.syslog import SyslogReader
from oomguard.records import Constraint, OomKill
from tests.conftest import Collector

pytestmark = pytest.mark.system

LIMIT = 48 * MIB
KILLED_RE = re.compile(r"Killed process (\d+) ")
SUMMARY_PID_RE = re.compile(r"^oom-kill:.*,pid=(\d+)")


class Tap:
    """Every read of a watcher's SyslogReader: when, and the lines it handed on."""

    def __init__(self, reader: SyslogReader) -> None:
        self.reads: list[float] = []
        self.lines: list[KmsgRecord] = []
        inner = reader.read_available

        def read_available() -> list[KmsgRecord]:
            self.reads.append(time.monotonic())
            got = inner()
            self.lines.extend(got)
            return got

        reader.read_available = read_available  # type: ignore[method-assign]

    def bare(self, pid: int) -> bool:
        """Whether `pid`'s kill line came without its report's header (rate-limited)."""
        kernel = [r.message for r in self.lines if r.facility == 0]
        with_header = {int(m[1]) for line in kernel if (m := SUMMARY_PID_RE.match(line))}
        killed = {int(m[1]) for line in kernel if (m := KILLED_RE.search(line))}
        return pid in killed - with_header


def no_kmsg(tree: ScratchTree) -> str:
    return str(tree.top / "no-such-kmsg")


def container_path(qos: str = "burstable") -> tuple[str, str, str]:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    return uid, cid, f"kubepods/{qos}/pod{uid}/{cid}"


def syslog_watch(
    watch: Callable[..., Collector], tree: ScratchTree, **kw: object
) -> tuple[Collector, Tap]:
    col = watch(kmsg_path=no_kmsg(tree), **kw)
    assert col.watcher.kernel_log_source == "syslog", col.watcher.kernel_log_status
    reader = col.watcher.kernel_log.reader
    assert isinstance(reader, SyslogReader)
    assert col.watcher.kernel_log_error is None
    assert "no-such-kmsg" in col.watcher.kernel_log_status
    assert "syslog(2)" in col.watcher.kernel_log_status
    return col, Tap(reader)


def test_kill_through_syslog_names_the_victim(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    uid, cid, path = container_path()
    col, _ = syslog_watch(watch, tree)
    container = tree.make(path, limit_bytes=LIMIT)
    hog = tree.start_hog(container, "memhog")
    kills = col.wait_for(1)
    assert hog.wait(timeout=30) == -9
    assert len(col.settle(2.5)) == 1, kills
    k = kills[0]
    assert k.cgroup == container
    assert k.constraint is Constraint.CONTAINER
    assert (k.identity.container_id, k.identity.pod_uid) == (cid, uid)
    assert k.memory_limit_bytes == LIMIT
    if k.pid is None:
        col.skip_if_the_kernel_could_not_tell("victim not named")
    assert (k.pid, k.command, k.source) == (hog.pid, "memhog", "syslog")
    # None when the kernel rate-limited the report's header (10 per 5 s, machine-wide:
    # other tests' kills count too); the counters then say which limit was hit.
    assert k.oom_cgroup in (container, None)
    assert k.anon_rss_bytes is not None and 0.5 * LIMIT < k.anon_rss_bytes <= LIMIT + 16 * MIB
    assert k.kmsg_seq is not None and k.kernel_time_us is not None
    assert k.kmsg_seq // 1000 == k.kernel_time_us  # the position is the kill line's time
    assert kill_id(k, boot_id="b").startswith("syslog/b/")
    # Read on the cgroup's OOM signal, not at the resync a minute later: milliseconds
    # (bench/detection_latency.py); half the resync interval leaves room for a loaded
    # 2-core machine and still tells the two apart.
    assert k.detection_latency_ms is not None
    assert k.detection_latency_ms < col.watcher.resync_interval_s / 2 * 1000


def test_two_kills_through_syslog_are_two_records(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    _, _, path = container_path()
    container = tree.make(path, limit_bytes=LIMIT)
    col, _ = syslog_watch(watch, tree)
    first = tree.start_hog(container, "hog-one")
    col.wait_for(1)
    assert first.wait(timeout=30) == -9
    second = tree.start_hog(container, "hog-two")
    col.wait_for(2)
    assert second.wait(timeout=30) == -9
    kills = col.settle(2.5)
    assert len(kills) == 2, kills
    assert all(k.cgroup == container for k in kills)
    named = [(k.pid, k.command, k.source) for k in kills]
    if any(k.pid is None for k in kills):
        col.skip_if_the_kernel_could_not_tell("victims not named")
    assert named == [(first.pid, "hog-one", "syslog"), (second.pid, "hog-two", "syslog")]
    assert kills[0].kmsg_seq is not None and kills[1].kmsg_seq is not None
    assert kills[0].kmsg_seq < kills[1].kmsg_seq


def test_pod_limit_kill_through_syslog_is_classified_pod(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    pod = tree.make(f"kubepods/burstable/pod{uid}", limit_bytes=LIMIT)
    container = tree.make(f"kubepods/burstable/pod{uid}/{cid}")
    col, _ = syslog_watch(watch, tree)
    hog = tree.start_hog(container, "memhog")
    kills = col.wait_for(1)
    assert hog.wait(timeout=30) == -9
    assert len(col.settle(2.5)) == 1
    k = kills[0]
    assert (k.cgroup, k.constraint) == (container, Constraint.POD)
    assert k.oom_cgroup in (pod, None)  # None: the header was rate-limited (see above)
    if k.pid is None:
        col.skip_if_the_kernel_could_not_tell("victim not named")
    assert k.pid == hog.pid


def test_a_restarted_reader_hands_on_the_kill_made_while_down_and_not_the_one_before(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    _, _, path = container_path()
    container = tree.make(path, limit_bytes=LIMIT)
    col, _ = syslog_watch(watch, tree)
    first = tree.start_hog(container, "before")
    col.wait_for(1)
    assert first.wait(timeout=30) == -9
    col.settle(0.3)
    # Where a restarted agent resumes: the position of the kill it handed on last. Taken
    # from the kill line itself, so that this holds with the victim named or not.
    with SyslogReader(after_pos=-1) as everything:
        (before,) = [r.seq for r in everything.read_available() if f" {first.pid} (" in r.message]
    # The agent stops, and a kill happens meanwhile.
    down = tree.start_hog(container, "while-down")
    assert down.wait(timeout=30) == -9
    # What the restarted agent reads back (the engine then pairs each with its counter).
    with SyslogReader(after_pos=before) as reader:
        assembler = OomReportAssembler()
        replayed = [k for rec in reader.read_available() for k in assembler.feed(rec)]
        replayed += assembler.flush()
    ours = [(k.pid, k.command) for k in replayed if k.pid in (first.pid, down.pid)]
    assert ours == [(down.pid, "while-down")]
    (again,) = [k for k in replayed if k.pid == down.pid]
    assert again.seq > before


def test_syslog_refused_means_counters_only(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    col = watch(kmsg_path=no_kmsg(tree), syslog_fallback=False)
    assert col.watcher.kernel_log.reader is None and col.watcher.kernel_log_source == "none"
    assert col.watcher.kernel_log_error and "cgroup counters" in col.watcher.kernel_log_error


def test_kmsg_is_preferred_when_it_opens(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    if not Path("/dev/kmsg").exists():
        pytest.skip("no /dev/kmsg here")
    col = watch()
    assert col.watcher.kernel_log_source == "kmsg", col.watcher.kernel_log_status
    _, _, path = container_path()
    container = tree.make(path, limit_bytes=LIMIT)
    hog = tree.start_hog(container, "memhog")
    kills: list[OomKill] = col.wait_for(1)
    assert hog.wait(timeout=30) == -9
    assert [(k.pid, k.source) for k in kills] == [(hog.pid, "kmsg")]


@pytest.mark.parametrize("live", [True, False], ids=["watching-live", "fell-behind"])
def test_burst_past_the_report_rate_limit_through_syslog(
    tree: ScratchTree, watch: Callable[..., Collector], live: bool
) -> None:
    # Past 10 report headers per 5 s the kernel prints the bare kill line only. Each kill
    # is still one record in its own container with its reason, never two, and every
    # read is at least SYSLOG_MIN_READ_GAP_S after the one before (a storm shares reads).
    containers = []
    for _ in range(3):
        _, cid, path = container_path()
        containers.append((cid, tree.make(path, limit_bytes=32 * MIB)))
    col, tap = syslog_watch(watch, tree)
    hogs = []
    for i in range(15):
        cid, cg = containers[i % 3]
        hog = tree.start_hog(cg, f"storm{i}")
        if live:
            col.wait_for(i + 1)
        assert hog.wait(timeout=30) == -9
        hogs.append((hog.pid, cid))
    col.wait_for(15, 60)
    kills = col.settle(3.0)
    gaps = [b - a for a, b in itertools.pairwise(tap.reads)]
    assert tap.reads and min(gaps, default=1.0) >= SYSLOG_MIN_READ_GAP_S - 0.002, gaps
    container_of = dict(hogs)
    assert len(kills) == 15, [(k.pid, k.cgroup, k.source) for k in kills]
    per_container = {cid: 0 for cid, _ in containers}
    for k in kills:
        assert k.constraint is Constraint.CONTAINER, k
        per_container[k.identity.container_id or ""] += 1
        if k.pid is not None:
            assert container_of.get(k.pid) == k.identity.container_id, k
    assert sorted(per_container.values()) == [5, 5, 5]
    pids = [k.pid for k in kills if k.pid is not None]
    assert len(pids) == len(set(pids)), "a victim reported twice"
    if live:
        if len(pids) < 15:
            col.skip_if_the_kernel_could_not_tell("victims not named")
        assert sorted(pids) == sorted(container_of)
        assert all(k.source == "syslog" for k in kills)


def test_a_kill_no_counter_shows_is_read_within_the_idle_interval(
    tree: ScratchTree, watch: Callable[..., Collector]
) -> None:
    # A kill that changes no watched counter in time gives the engine no reason to read
    # syslog(2): here nothing is pushed (push=False, as on a read-only cgroup v1 mount
    # where eventfds cannot be registered) and the counters are rescanned only every
    # 120 s. The idle read (every half second here; 0.75 s by default where nothing is
    # pushed) reports it within that.
    _, _, path = container_path()
    container = tree.make(path, limit_bytes=LIMIT)
    idle_s = 0.5
    col, tap = syslog_watch(
        watch, tree, push=False, resync_interval_s=120.0, syslog_idle_read_interval_s=idle_s
    )
    assert f"every {idle_s:g} s" in col.watcher.kernel_log_status
    col.settle(0.5)
    hog = tree.start_hog(container, "memhog")
    assert hog.wait(timeout=30) == -9
    # Only the idle read can bring it: no counter change is pushed and the resync is
    # 120 s away. It takes about idle_s; a quarter of the resync interval is room for a
    # loaded 2-core machine and still rules the resync out.
    kills = col.wait_for(1, timeout_s=col.watcher.resync_interval_s / 4)
    if not kills and tap.bare(hog.pid):
        pytest.skip(
            "the kernel rate-limited the report's header (other OOM kills on this host): "
            "the bare kill line names no cgroup, and no counter increase vouches for it "
            "before the resync"
        )
    assert [(k.pid, k.cgroup, k.source) for k in kills] == [(hog.pid, container, "syslog")]
    # The log was read on the idle timer, again and again, with nothing to wake it.
    # (How far apart the reads are is timing: bench/syslog_idle_read.py measures it.)
    assert len(tap.reads) >= 2, tap.reads
