"""Kills while no watcher ran, recovered from the cgroup counters on the host (cgroup v1).

A watcher says what it has handed on (`HandedOn` marks); one started from those values
(its `Resume`: the counters, and the kmsg position for the kernel log) finds the kills counted
since, each once: from the counters alone without the kernel log, paired with the
replayed report with it. Without the kernel log, whose limit such a kill hit comes from
the high-water marks on v1 (`classify.limit_reached_while_down`). The agent's side
(state files, kill -9) is in tests/cluster/test_agent_recovery.py.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from oomguard.cgroups.scratch import MIB, ScratchTree
from oomguard.detect.loop import OomWatcher
from oomguard.kernel.kmsg import KmsgReader
from oomguard.kernel.parse import OomReportAssembler
from oomguard.records import Constraint, HandedOn, OomKill
from oomguard.state.checkpoints import Resume
from oomguard.state.counter_snapshot import apply_handed_on

pytestmark = pytest.mark.system

LIMIT = 32 * MIB


class Run:
    """One watcher's life: its records and what it said it handed on."""

    def __init__(self, watcher: OomWatcher) -> None:
        self.watcher = watcher
        self.kills: list[OomKill] = []
        self.counters: dict[str, int] | None = None
        self.limit_hits: dict[str, int] | None = None  # cgroup v2 `oom` counts
        self.log_position: int | None = None

    def on_handed_on(self, mark: HandedOn) -> None:
        self.counters = apply_handed_on(self.counters, mark)
        if mark.limit_hits is not None:
            self.limit_hits = dict(mark.limit_hits)
        if mark.log_position is not None:
            assert mark.log_source == "kmsg"
            self.log_position = mark.log_position

    def turn(self, seconds: float) -> list[OomKill]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.watcher.poll_once(max_wait_s=0.1)
        return list(self.kills)

    def wait_for(self, n: int, timeout_s: float = 30.0) -> list[OomKill]:
        deadline = time.monotonic() + timeout_s
        while len(self.kills) < n and time.monotonic() < deadline:
            self.watcher.poll_once(max_wait_s=0.1)
        return list(self.kills)


@contextmanager
def running(
    tree: ScratchTree,
    *,
    kmsg: bool,
    counter_baseline: Mapping[str, int] | None = None,
    limit_hits_baseline: Mapping[str, int] | None = None,
    kmsg_after_seq: int | None = None,
    root: Path | None = None,
) -> Iterator[Run]:
    kills: list[OomKill] = []
    run: Run | None = None

    def on_handed_on(mark: HandedOn) -> None:
        assert run is not None
        run.on_handed_on(mark)

    watcher = OomWatcher(
        tree.hierarchy,
        tree.top if root is None else root,
        kills.append,
        # None: the kernel log is not read at all (no syslog(2) fallback either).
        kmsg_path="/dev/kmsg" if kmsg else None,
        syslog_fallback=False,
        resume=Resume(
            log_after={} if kmsg_after_seq is None else {"kmsg": kmsg_after_seq},
            counters=counter_baseline,
            limit_hits=limit_hits_baseline,
        ),
        on_handed_on=on_handed_on,
    )
    run = Run(watcher)
    run.kills = kills
    watcher.start()
    try:
        run.turn(0.2)  # the first turn: the increases since the baseline, the first mark
        yield run
    finally:
        watcher.close()


# Other lanes' kills on the same kernel count against the kernel's report rate limit: past
# it only bare "Killed process" lines are printed, and where several wait at once the
# joiner names no victim rather than guess (see detector.py). That is the one way a
# record here may lack the victim it would otherwise have.
victim_unknown_in_a_burst = None


def container(tree: ScratchTree) -> str:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    return tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=LIMIT)


def oom_kill(tree: ScratchTree, cgroup: str, name: str = "memhog") -> int:
    hog = tree.start_hog(cgroup, name)
    assert hog.wait(timeout=30) == -9
    return hog.pid


def test_a_kill_while_down_comes_from_the_counters_once(tree: ScratchTree) -> None:
    cg, quiet = container(tree), container(tree)
    oom_kill(tree, cg)  # before the first watcher: history, never reported
    with running(tree, kmsg=False) as first:
        assert first.kills == []
        assert first.counters == {cg: 1}  # what was on disk at the start is handed on
    handed_on = first.counters
    oom_kill(tree, cg)  # while no watcher runs

    with running(tree, kmsg=False, counter_baseline=handed_on) as second:
        (kill,) = second.wait_for(1)
        assert (kill.cgroup, kill.pid, kill.source) == (cg, None, "counters")
        assert kill.oom_kill_counter == 2  # its kill id: counter/<boot>/<cgroup>/2
        assert second.counters == {cg: 2}
        # Live kills are still pushed by the eventfd registered at the start.
        oom_kill(tree, quiet)
        # Pushed, not found by a resync: the watcher's resync comes every 60 s, so a kill
        # seen within half of that came by the eventfd. (It takes milliseconds; the rest
        # is room for a loaded 2-core machine. The speed is bench/detection_latency.py's.)
        second.wait_for(2, timeout_s=second.watcher.resync_interval_s / 2)
        assert [k.cgroup for k in second.kills] == [cg, quiet]
        assert second.turn(0.3) == second.kills
        assert second.counters == {cg: 2, quiet: 1}

    with running(tree, kmsg=False, counter_baseline=second.counters) as third:
        assert third.turn(1.0) == []


def test_a_container_limit_kill_while_down_is_the_containers(tree: ScratchTree) -> None:
    # Nothing watched it happen and no kernel log names the limit: the container's
    # high-water mark at its limit says it was its own (v1 has no `oom` count).
    cg = container(tree)
    with running(tree, kmsg=False) as first:
        assert first.counters == {}
    oom_kill(tree, cg)
    with running(tree, kmsg=False, counter_baseline=first.counters) as second:
        (kill,) = second.wait_for(1)
        assert (kill.cgroup, kill.source, kill.pid) == (cg, "counters", None)
        assert kill.constraint is Constraint.CONTAINER


def test_a_pod_limit_kill_while_down_is_the_pods(tree: ScratchTree) -> None:
    uid = str(uuid.uuid4())
    pod = tree.make(f"kubepods/burstable/pod{uid}", limit_bytes=LIMIT)
    cg = tree.make(f"kubepods/burstable/pod{uid}/{secrets.token_hex(32)}")  # no limit
    # A sidecar that hit its own limit before: its high-water mark sits at its limit, but
    # it is not on the victim's line.
    sidecar = tree.make(f"kubepods/burstable/pod{uid}/{secrets.token_hex(32)}", limit_bytes=LIMIT)
    oom_kill(tree, sidecar)
    with running(tree, kmsg=False) as first:
        assert first.counters == {sidecar: 1}
    oom_kill(tree, cg)
    with running(tree, kmsg=False, counter_baseline=first.counters) as second:
        (kill,) = second.wait_for(1)
        assert (kill.cgroup, kill.source) == (cg, "counters")
        assert kill.identity.pod_path == pod
        assert kill.constraint is Constraint.POD
        assert second.turn(0.3) == [kill]


def test_a_kill_while_down_under_no_watched_limit_is_the_nodes(tree: ScratchTree) -> None:
    # The limit that ran out sits above the watched root: as far as the watched tree
    # can tell, the node ran out (a live kill without the kernel log says the same).
    tree.make("outer", limit_bytes=LIMIT)
    cg = tree.make(f"outer/kubepods/burstable/pod{uuid.uuid4()}/{secrets.token_hex(32)}")
    root = tree.hierarchy.fs_path(tree.top_cgroup + "/outer/kubepods")
    with running(tree, kmsg=False, root=root) as first:
        assert first.counters == {}
    oom_kill(tree, cg)
    with running(tree, kmsg=False, counter_baseline=first.counters, root=root) as second:
        (kill,) = second.wait_for(1)
        assert (kill.cgroup, kill.source) == (cg, "counters")
        assert kill.constraint is Constraint.SYSTEM


def test_without_a_snapshot_kills_before_the_start_are_history(tree: ScratchTree) -> None:
    cg = container(tree)
    oom_kill(tree, cg)
    with running(tree, kmsg=False, counter_baseline=None) as run:
        assert run.turn(0.5) == []
        assert run.counters == {cg: 1}


def test_a_kill_while_down_pairs_with_its_replayed_report(tree: ScratchTree) -> None:
    cg = container(tree)
    with running(tree, kmsg=True) as first:
        assert first.counters == {} and first.log_position is not None
    pid = oom_kill(tree, cg, "downhog")

    with running(
        tree, kmsg=True, counter_baseline=first.counters, kmsg_after_seq=first.log_position
    ) as second:
        (kill,) = second.wait_for(1)
        assert kill.cgroup == cg and kill.pid in (pid, victim_unknown_in_a_burst)
        if kill.pid is not None:
            # Replayed before the increase was read, its report is the record (kill id
            # kmsg/<boot>/<seq>) and the increase only consumes its credit.
            assert (kill.command, kill.source) == ("downhog", "kmsg")
            assert kill.kmsg_seq is not None
        assert second.turn(2.5) == [kill]  # past the grace: no counter record besides it
        assert second.counters == {cg: 1}
        assert second.log_position is not None and first.log_position < second.log_position
        if kill.kmsg_seq is not None:
            assert second.log_position >= kill.kmsg_seq


def test_a_counter_lower_than_the_snapshot_is_a_new_cgroup(tree: ScratchTree) -> None:
    # The snapshot says 5; the cgroup on disk says 1: it was removed and made again under
    # the same name while the agent was down, and its one kill is news.
    cg = container(tree)
    oom_kill(tree, cg)
    with running(tree, kmsg=False, counter_baseline={cg: 5}) as run:
        (kill,) = run.wait_for(1)
        assert (kill.cgroup, kill.oom_kill_counter) == (cg, 1)
        assert run.counters == {cg: 1}


def test_a_cgroup_removed_while_down_drops_out(tree: ScratchTree) -> None:
    cg = container(tree)
    with running(tree, kmsg=False, counter_baseline={cg: 1, "/gone/meanwhile": 3}) as run:
        assert run.kills == []
        assert run.counters == {}  # cg is at 0 on disk: lower than 1, made again, nothing new


def report_start(kill_seq: int) -> int:
    """Where the report of the kill line `kill_seq` starts, as the engine parses it.

    Its trigger line, or the kill line itself when the kernel rate-limited the header
    away (other tests' kills on the host count against the same limit).
    """
    with KmsgReader(after_seq=max(-1, kill_seq - 2000)) as reader:
        records = [r for r in reader.read_available() if r.seq <= kill_seq]
    assembler = OomReportAssembler()
    kills = [k for r in records for k in assembler.feed(r)] + assembler.flush()
    (kill,) = [k for k in kills if k.seq == kill_seq]
    assert kill.report_seq is not None
    return kill.report_seq


def test_a_report_read_back_of_a_kill_handed_on_holds_nothing_back(tree: ScratchTree) -> None:
    # Stopped while a kill's counter increase was not yet seen, a watcher leaves the kmsg
    # position before that kill's report. The next one reads the report again: the
    # agent's event queue drops that record by its kill id, and its credit (the baseline
    # counted the kill already) must neither hold the position back nor swallow a later
    # kill.
    cg = container(tree)
    with running(tree, kmsg=True) as first:
        pid = oom_kill(tree, cg, "firsthog")
        (kill,) = first.wait_for(1)
        first.turn(0.3)
    assert kill.pid == pid and kill.kmsg_seq is not None
    assert first.counters == {cg: 1}
    held_back = report_start(kill.kmsg_seq) - 1

    with running(
        tree, kmsg=True, counter_baseline=first.counters, kmsg_after_seq=held_back
    ) as second:
        second.turn(2.5)  # past the grace a report without its header is held for
        # The report again (dropped by its kill id in the agent), or nothing where the
        # header was rate-limited away and the bare line has no increase to pair with.
        assert [k.kmsg_seq for k in second.kills] in ([kill.kmsg_seq], [])
        before = len(second.kills)
        assert second.log_position is not None and second.log_position >= kill.kmsg_seq
        later = oom_kill(tree, cg, "laterhog")
        second.wait_for(before + 1)
        (after,) = second.turn(2.5)[before:]  # one record: no counter record besides
        assert after.cgroup == cg
        assert after.pid in (later, victim_unknown_in_a_burst)
        assert second.counters == {cg: 2}
