"""Lane 2: warnings before the kill on cgroup v2, from `oomguard watch --json` as shipped.

The product path end to end: the command in its own process (default `--warn-at 90`,
push on: PSI triggers on memory.pressure, memory.events `max` counts, the working set
from memory.stat) over real workloads in kubepods-shaped (systemd driver) container
cgroups below the test's own:

- a container growing steadily into its limit is warned about strictly before the
  kernel kills it (the warning's line comes first and its time is earlier);
- a container reading a file 1.5 times its limit over and over sits at its limit on
  page cache, which the kernel reclaims at every pass (memory.events `max` rises): no
  warning in 20 s; then the same container leaks and is warned about (so the silence
  was judgement, not blindness);
- a container that spikes to ~90 % of its limit, holds there and lets go gets exactly
  one warning, and no kill.

The file read is the biggest one on the VM's Python image (libpython's static archive,
ext4 on a virtio disk): page cache like a container's on a node, charged to the reader.
The VM is emulated (10-30x slower than the host): waits are generous and nothing here
asserts a duration. The lead times and the signal are printed (`-rP` shows them); the
figures on real hardware are bench/warn_lead_time.py's.
"""

from __future__ import annotations

import json
import queue
import secrets
import signal
import subprocess
import sysconfig
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from oomguard.cgroups.scratch import MIB, ScratchTree
from tests.watch_process import start_watch

pytestmark = pytest.mark.vm

LIMIT = 64 * MIB
GROWTH_MIB_S = 4.0  # 64 MiB in ~16 s: several looks between the early level and the kill
START_S = 300.0  # the command's start (imports over 9p under emulation)
WAIT_S = 180.0
READ_S = 20.0
SIGNALS = {"threshold", "pressure", "reclaim"}

Record = dict[str, Any]


def _pod(uid: str) -> str:
    u = uid.replace("-", "_")
    return f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"


def container(tree: ScratchTree, limit_bytes: int = LIMIT) -> tuple[str, str, str]:
    """A burstable pod's container cgroup with a limit: (cgroup, pod UID, container ID)."""
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    cgroup = tree.make(f"{_pod(uid)}/cri-containerd-{cid}.scope", limit_bytes=limit_bytes)
    return cgroup, uid, cid


def stamp(record: Record) -> float:
    return datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00")).timestamp()


class Watch:
    """`oomguard watch --json` running, and the records it printed, in order."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.records: list[Record] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        assert proc.stdout is not None and proc.stderr is not None
        self.banner = proc.stderr.readline()
        threading.Thread(target=self._pump, args=(proc.stdout, self._lines), daemon=True).start()
        threading.Thread(target=self._keep_stderr, daemon=True).start()

    @staticmethod
    def _pump(stream: Any, lines: queue.Queue[str | None]) -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    def _keep_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())

    def _take(self, timeout_s: float) -> bool:
        try:
            line = self._lines.get(timeout=max(0.01, timeout_s))
        except queue.Empty:
            return True
        if line is None:
            raise AssertionError(f"oomguard watch ended: {self.stderr[-5:]}")
        self.records.append(json.loads(line))
        return True

    def of(self, cgroup: str, kind: str | None = None) -> list[Record]:
        return [
            r for r in self.records if r["cgroup"] == cgroup and (kind is None or r["kind"] == kind)
        ]

    def wait_until(self, done: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not done() and time.monotonic() < deadline:
            self._take(min(0.5, deadline - time.monotonic()))

    def settle(self, seconds: float) -> None:
        """Take every line printed in the next `seconds`."""
        self.wait_until(lambda: False, seconds)


@pytest.fixture
def watch(tree: ScratchTree) -> Iterator[Callable[[], Watch]]:
    started: list[Watch] = []

    def start() -> Watch:
        proc = start_watch(tree, "kmsg")
        w = Watch(proc)
        started.append(w)
        assert "watching" in w.banner and "warnings at 90%" in w.banner, w.banner
        return w

    yield start
    for w in started:
        w.proc.send_signal(signal.SIGTERM)
        try:
            w.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()


def assert_warning_of(record: Record, cgroup: str, uid: str, cid: str, limit: int) -> None:
    """The warning names the container and says what the kernel holds, as documented."""
    assert record["kind"] == "oom_warning"
    assert (record["cgroup"], record["pod_uid"], record["container_id"]) == (cgroup, uid, cid)
    assert (record["qos"], record["constraint"]) == ("burstable", "container")
    assert record["signal"] in SIGNALS, record
    assert record["limit_bytes"] == limit and record["warn_at_percent"] == 90
    # The working set is what the kernel cannot drop: at most usage, at least the
    # early level (warn-at - 15) of the limit, or nothing would have fired.
    assert limit * 75 // 100 <= record["working_set_bytes"] <= record["usage_bytes"], record
    if record["signal"] == "pressure":
        assert record["pressure_some_avg10"] is not None
    if record["signal"] == "reclaim":
        assert record["reclaims_10s"]


def leak_is_warned_before_kill(
    tree: ScratchTree, w: Watch, cgroup: str, uid: str, cid: str, limit: int
) -> str:
    """Grow into the limit until killed; returns what the warning said, for the log."""
    grower = tree.start_grower(cgroup, GROWTH_MIB_S, name="leaky")
    assert grower.wait(timeout=WAIT_S) == -signal.SIGKILL
    w.wait_until(lambda: bool(w.of(cgroup, "oom_kill")), WAIT_S)
    w.settle(3.0)
    records = w.of(cgroup)
    kinds = [r["kind"] for r in records]
    assert kinds == ["oom_warning", "oom_kill"], records
    warning, kill = records
    assert_warning_of(warning, cgroup, uid, cid, limit)
    assert kill["pid"] == grower.pid, kill
    lead = stamp(kill) - stamp(warning)
    assert lead > 0, (warning, kill)
    return (
        f"signal {warning['signal']}, lead {lead:.2f} s (emulated), working set "
        f"{warning['working_set_bytes'] / MIB:.1f} of {limit / MIB:.0f} MiB, pressure "
        f"{warning['pressure_some_avg10']}, reclaims {warning['reclaims_10s']}, growth "
        f"{warning['growth_bytes_per_s']}, to limit {warning['seconds_to_limit']}"
    )


def test_a_steady_leak_is_warned_about_before_the_kill(
    tree: ScratchTree, watch: Callable[[], Watch]
) -> None:
    w = watch()
    cgroup, uid, cid = container(tree)  # made while watched: a new container
    said = leak_is_warned_before_kill(tree, w, cgroup, uid, cid, LIMIT)
    print(f"v2 leak {GROWTH_MIB_S:g} MiB/s into {LIMIT // MIB} MiB: {said}")


def big_image_file() -> Path:
    """The largest file we know is on the Python image (an ext4 block device here)."""
    libpl, library = sysconfig.get_config_var("LIBPL"), sysconfig.get_config_var("LIBRARY")
    path = Path(str(libpl)) / str(library)
    if not path.is_file():
        pytest.fail(f"no {path}: lane 2 reads libpython's static archive as its big file")
    return path


def events(tree: ScratchTree, cgroup: str) -> dict[str, int]:
    text = (tree.hierarchy.fs_path(cgroup) / "memory.events").read_text()
    return {k: int(v) for k, v in (line.split() for line in text.splitlines())}


def test_page_cache_at_the_limit_is_not_warned_about(
    tree: ScratchTree, watch: Callable[[], Watch]
) -> None:
    path = big_image_file()
    size = path.stat().st_size
    limit = (size * 2 // 3) // MIB * MIB  # the file is 1.5 times the limit
    assert limit >= 24 * MIB, f"{path} ({size} bytes) is too small for a reader's limit"
    cgroup, uid, cid = container(tree, limit)
    w = watch()
    before = events(tree, cgroup)
    reader = tree.start_reader(cgroup, path, "reader")
    usage = tree.hierarchy.fs_path(cgroup) / "memory.current"
    peak = 0
    deadline = time.monotonic() + READ_S
    while time.monotonic() < deadline:
        w.settle(0.5)
        peak = max(peak, int(usage.read_text()))
    assert reader.poll() is None, "the reader died"
    after = events(tree, cgroup)
    # The trap is really set: usage reached the limit and the kernel reclaimed there.
    assert peak >= limit * 90 // 100, (peak, limit)
    assert after["max"] > before["max"], (before, after)
    assert after["oom_kill"] == before["oom_kill"]
    assert w.of(cgroup) == [], w.of(cgroup)
    print(
        f"v2 page cache: {READ_S:g} s reading {size / MIB:.0f} MiB through {limit / MIB:.0f} "
        f"MiB, peak usage {peak / MIB:.1f} MiB, memory.events max +{after['max'] - before['max']}"
        ": no warning"
    )
    # The same container now leaks: warned about before its kill, so it was watched.
    reader.kill()
    reader.wait(timeout=WAIT_S)
    said = leak_is_warned_before_kill(tree, w, cgroup, uid, cid, limit)
    print(f"v2 then a leak in the same container, its page cache still there: {said}")


def test_a_spike_that_recovers_gets_one_warning(
    tree: ScratchTree, watch: Callable[[], Watch]
) -> None:
    cgroup, uid, cid = container(tree)
    w = watch()
    # ~4 MiB of interpreter plus 52 MiB: ~88 % of 64 MiB, held 10 s, then freed.
    spike = tree.start_grower(cgroup, GROWTH_MIB_S, top_mib=52, hold_s=10.0, name="spiky")
    assert spike.stdout is not None
    freed: queue.Queue[bytes] = queue.Queue()
    threading.Thread(target=lambda: freed.put(spike.stdout.readline()), daemon=True).start()
    w.wait_until(lambda: not freed.empty(), WAIT_S)
    assert freed.get_nowait() == b"freed\n", "the spike never let go"
    w.settle(10.0)  # after the recovery: nothing more
    assert spike.poll() is None, f"the spike died ({spike.returncode})"
    warnings = w.of(cgroup, "oom_warning")
    assert [r["kind"] for r in w.of(cgroup)] == ["oom_warning"], w.of(cgroup)
    assert_warning_of(warnings[0], cgroup, uid, cid, LIMIT)
    current = int((tree.hierarchy.fs_path(cgroup) / "memory.current").read_text())
    assert current < LIMIT // 2, current  # it did recover
    print(
        f"v2 spike to ~88 % held 10 s, then freed: one warning, signal "
        f"{warnings[0]['signal']}, working set {warnings[0]['working_set_bytes'] / MIB:.1f} MiB"
    )


def test_the_file_is_read_from_a_block_device() -> None:
    """The page-cache test means something only if the file's pages are page cache
    charged to the reader: a block-backed filesystem, not 9p or tmpfs."""
    path = big_image_file()
    best = ("", "")
    for line in Path("/proc/mounts").read_text().splitlines():
        _dev, mount, fstype, *_ = line.split()
        if path.is_relative_to(mount) and len(mount) > len(best[0]):
            best = (mount, fstype)
    assert best[1] == "ext4", f"{path} is on {best}"
