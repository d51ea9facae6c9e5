"""Warnings before the kill, as `oomguard watch --json` gives them: lead time, silence, cost.

The product as shipped, in its own process, default settings (`--warn-at 90`, push on,
no calibration, no warm-up), over kubepods-shaped container cgroups made below our own
cgroup. Needs root.

1. Lead time: a container grows at a steady rate (anonymous memory, every page
   touched) into its limit until the kernel kills it; lead = the kill record's `time`
   minus the warning record's `time` (both as printed). A fresh container per run,
   created and started at once as a runtime does, while the command runs. Targets
   (issue 11): >= 1.5 s at 50 MiB/s into 512 MiB, >= 10 s at 5 MiB/s into 512 MiB.
2. Page cache: a container reads a file 1.5 times its limit, over and over (the file on
   a disk filesystem, its cache dropped first so that the reader's reads charge it);
   usage sits at the limit and the kernel reclaims there all along. Warnings seen in
   the window (target 0); the peak usage and the reads that came from disk (pages
   reclaimed at the limit, read again) show the trap was set.
3. Idle cost: 500 container cgroups (250 burstable pods of 2, each container with a
   limit and an idle `sleep` in it, pods limited to the sum as the kubelet does),
   watched with warnings on and with `--warn-at off`; CPU of the watch process over
   the window from /proc/PID/stat utime+stime (and every thread's schedstat, finer), % of
   one core, once start-up has settled.
   Target <= 0.1 % with warnings on. Runs alternate on/off so that load from others on
   the machine falls on both alike.

Every table line says the load average around it: the machine is shared, and a
figure taken under load is one to rerun.

    python bench/warn_lead_time.py [--runs 10] [--quick] [--parts lead,cache,idle]
        [--cache-seconds 60] [--idle-seconds 60] [--idle-runs 3] [--containers 500]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/warn_lead_time.py`: make `tests` importable
    sys.path.insert(0, str(REPO))

from oomguard.cgroups.hierarchy import MemoryHierarchy, detect_memory_hierarchy  # noqa: E402
from oomguard.cgroups.scratch import MIB, ScratchTree, remove_tree  # noqa: E402
from tests.watch_process import start_watch  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
LEAD_CASES = ((50.0, 512, 1.5), (5.0, 512, 10.0))  # MiB/s, limit MiB, target lead s
CACHE_LIMIT_MIB = 512
START_TIMEOUT_S = 60.0

Record = dict[str, Any]


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def stamp(record: Record) -> float:
    return datetime.fromisoformat(str(record["time"]).replace("Z", "+00:00")).timestamp()


class Watch:
    """`oomguard watch --json` running; the records it printed, kept by a thread."""

    def __init__(self, tree: ScratchTree, *extra: str) -> None:
        self.proc = start_watch(tree, "kmsg", *extra)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.banner = self.proc.stderr.readline()
        if "watching" not in self.banner:
            self.stop()
            raise SystemExit(f"oomguard watch did not start: {self.banner!r}")
        self.records: list[Record] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._drain_stderr, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.records.append(json.loads(line))
                self._cond.notify_all()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            sys.stderr.write(f"  [watch] {line}")

    def of(self, cgroup: str, kind: str) -> list[Record]:
        with self._cond:
            return [r for r in self.records if r["cgroup"] == cgroup and r["kind"] == kind]

    def wait_for(self, cgroup: str, kind: str, timeout_s: float) -> list[Record]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self.of(cgroup, kind) and time.monotonic() < deadline:
                self._cond.wait(timeout=0.2)
        return self.of(cgroup, kind)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def container_path(qos: str = "burstable") -> str:
    return f"kubepods/{qos}/pod{uuid.uuid4()}/{secrets.token_hex(32)}"


# ----- part 1: lead time ------------------------------------------------------------


@dataclass
class Lead:
    lead_s: float | None  # None: no warning before the kill record
    signal: str
    growth_mib_s: float | None  # what the warning measured
    seen_mib_s: float  # the limit over the time from start to kill (the real rate)


def lead_runs(hierarchy: MemoryHierarchy, rate: float, limit_mib: int, runs: int) -> list[Lead]:
    out: list[Lead] = []
    grow_s = limit_mib / rate
    with ScratchTree(hierarchy, f"oomguard-bench-warn-{os.getpid()}") as tree:
        watch = Watch(tree)
        try:
            for i in range(runs):
                relative = container_path()
                cgroup = tree.make(relative, limit_bytes=limit_mib * MIB)
                started = time.time()
                grower = tree.start_grower(cgroup, rate, name="leaky")
                rc = grower.wait(timeout=grow_s * 3 + 60)
                kills = watch.wait_for(cgroup, "oom_kill", 30.0)
                if rc != -signal.SIGKILL or not kills:
                    raise SystemExit(f"run {i + 1}: grower exit {rc}, kill records {kills}")
                warnings = watch.of(cgroup, "oom_warning")
                kill_at = stamp(kills[0])
                lead = None if not warnings else kill_at - stamp(warnings[0])
                sig = "none" if not warnings else str(warnings[0]["signal"])
                growth = None if not warnings else warnings[0].get("growth_bytes_per_s")
                out.append(
                    Lead(
                        lead,
                        sig,
                        None if growth is None else float(growth) / MIB,
                        limit_mib / max(1e-3, kill_at - started),
                    )
                )
                print(
                    f"  {rate:g} MiB/s run {i + 1}/{runs}: lead "
                    f"{'-' if lead is None else f'{lead:.2f} s'}, signal {sig}, "
                    f"load {loadavg()}",
                    file=sys.stderr,
                    flush=True,
                )
                remove_tree(tree.hierarchy.fs_path(cgroup))
        finally:
            watch.stop()
    return out


def lead_part(hierarchy: MemoryHierarchy, runs: int) -> list[str]:
    rows = [
        "| growth | limit | runs | lead median | min | max | target | signal(s) | "
        "warned | growth seen by the warning / real (MiB/s) | load before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rate, limit_mib, target in LEAD_CASES:
        before = loadavg()
        leads = lead_runs(hierarchy, rate, limit_mib, runs)
        values = [x.lead_s for x in leads if x.lead_s is not None]
        signals = collections.Counter(x.signal for x in leads)
        growth = [x.growth_mib_s for x in leads if x.growth_mib_s is not None]
        fmt = "{:.2f} s".format
        rows.append(
            f"| {rate:g} MiB/s | {limit_mib} MiB | {len(leads)} | "
            + (
                f"{fmt(statistics.median(values))} | {fmt(min(values))} | {fmt(max(values))}"
                if values
                else "- | - | -"
            )
            + f" | >= {target:g} s | "
            + ", ".join(f"{s} x{n}" for s, n in signals.most_common())
            + f" | {len(values)}/{len(leads)} | "
            + (f"{statistics.median(growth):.1f}" if growth else "-")
            + f" / {statistics.median(x.seen_mib_s for x in leads):.1f}"
            + f" | {before} -> {loadavg()} |"
        )
    return rows


# ----- part 2: page cache -------------------------------------------------------------


def big_file(directory: Path, size: int) -> Path:
    """A file of `size` bytes on a disk filesystem, not in the page cache afterwards."""
    path = directory / "pagecache.bin"
    block = os.urandom(MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // MIB):
            os.write(fd, block)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # or our cgroup keeps it charged
    finally:
        os.close(fd)
    return path


@dataclass
class CacheRun:
    warnings: list[Record] = field(default_factory=list)
    peak_usage: int = 0
    read_gib: float = 0.0  # what the reader read (rchar)
    disk_gib: float = 0.0  # of it from the disk (read_bytes): reclaimed at the limit, read again


def cache_run(hierarchy: MemoryHierarchy, seconds: float, cache_dir: str) -> CacheRun:
    limit = CACHE_LIMIT_MIB * MIB
    out = CacheRun()
    with (
        tempfile.TemporaryDirectory(prefix="oomguard-bench-cache-", dir=cache_dir) as tmp,
        ScratchTree(hierarchy, f"oomguard-bench-cache-{os.getpid()}") as tree,
    ):
        path = big_file(Path(tmp), limit * 3 // 2)
        cgroup = tree.make(container_path(), limit_bytes=limit)
        directory = hierarchy.fs_path(cgroup)
        watch = Watch(tree)
        try:
            reader = tree.start_reader(cgroup, path, "reader")
            io0 = _io(reader.pid)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                time.sleep(0.2)
                out.peak_usage = max(
                    out.peak_usage, int((directory / "memory.usage_in_bytes").read_text())
                )
            io1 = _io(reader.pid)
            out.read_gib = (io1[0] - io0[0]) / (1 << 30)
            out.disk_gib = (io1[1] - io0[1]) / (1 << 30)
            if reader.poll() is not None:
                raise SystemExit(f"the reader died ({reader.returncode})")
            time.sleep(1.0)  # a warning on its way out
            out.warnings = watch.of(cgroup, "oom_warning")
        finally:
            watch.stop()
    return out


def _io(pid: int) -> tuple[int, int]:
    """(bytes read, of them from storage): /proc/PID/io rchar and read_bytes."""
    with open(f"/proc/{pid}/io") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["rchar"]), int(fields["read_bytes"])


def cache_part(hierarchy: MemoryHierarchy, seconds: float, cache_dir: str) -> list[str]:
    before = loadavg()
    run = cache_run(hierarchy, seconds, cache_dir)
    signals = collections.Counter(str(w["signal"]) for w in run.warnings)
    return [
        "| workload | window | warnings | target | peak usage | read | of it from disk "
        "(reclaimed, read again) | load before -> after |",
        "|---|---|---|---|---|---|---|---|",
        f"| reader, {CACHE_LIMIT_MIB * 3 // 2} MiB file through {CACHE_LIMIT_MIB} MiB | "
        f"{seconds:g} s | {len(run.warnings)}"
        + (f" ({', '.join(f'{s} x{n}' for s, n in signals.items())})" if signals else "")
        + f" | 0 | {100 * run.peak_usage / (CACHE_LIMIT_MIB * MIB):.0f} % of the limit | "
        f"{run.read_gib:.1f} GiB | {run.disk_gib:.1f} GiB | {before} -> {loadavg()} |",
    ]


# ----- part 3: idle cost --------------------------------------------------------------


def cpu_ticks_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def cpu_sched_s(pid: int) -> float:
    """Nanoseconds on the CPU of every thread (/proc/PID/schedstat is the main thread's
    alone: the warnings run in a thread of their own)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended: its time is in the process's stat
    return total / 1e9


@dataclass
class IdleRun:
    warnings_on: bool
    stat_percent: float
    sched_percent: float
    watched: int
    load: str
    startup_s: float  # from the start line until settled


def idle_run(
    hierarchy: MemoryHierarchy, containers: int, seconds: float, warnings_on: bool
) -> IdleRun:
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        with ScratchTree(hierarchy, f"oomguard-bench-warn-idle-{os.getpid()}") as tree:
            for _ in range(containers // 2):
                pod = f"kubepods/burstable/pod{uuid.uuid4()}"
                tree.make(pod, limit_bytes=2 * 256 * MIB)
                for _ in range(2):
                    cgroup = tree.make(f"{pod}/{secrets.token_hex(32)}", limit_bytes=256 * MIB)
                    sleeper = subprocess.Popen(["sleep", "infinity"], stdin=subprocess.DEVNULL)
                    sleepers.append(sleeper)
                    (hierarchy.fs_path(cgroup) / "cgroup.procs").write_text(str(sleeper.pid))
            watch = Watch(tree, *(() if warnings_on else ("--warn-at", "off")))
            try:
                watched = int(watch.banner.split("watching ")[1].split()[0])
                pid = watch.proc.pid
                startup_s = settled(pid)
                t0, s0 = cpu_ticks_s(pid), cpu_sched_s(pid)
                time.sleep(seconds)
                t1, s1 = cpu_ticks_s(pid), cpu_sched_s(pid)
                load = loadavg()
            finally:
                watch.stop()
    finally:  # closing the tree killed the sleepers (they are in it)
        for sleeper in sleepers:
            if sleeper.poll() is None:
                sleeper.kill()
            sleeper.wait(timeout=30)
    return IdleRun(
        warnings_on,
        (t1 - t0) / seconds * 100,
        (s1 - s0) / seconds * 100,
        watched,
        load,
        startup_s,
    )


def settled(pid: int) -> float:
    """Wait for the end of start-up (CPU below 1 % of a core over 2 s, at most 60 s);
    seconds since the start line. Only watched, never hurried: with warnings on,
    registering 750 v1 eventfds takes seconds of wall time (each registration waits
    for an RCU grace period in the kernel), and that is start-up, not idle."""
    start = time.monotonic()
    before = cpu_sched_s(pid)
    while time.monotonic() - start < 60:
        time.sleep(2.0)
        now = cpu_sched_s(pid)
        if now - before < 0.02:
            break
        before = now
    return time.monotonic() - start


def idle_part(hierarchy: MemoryHierarchy, containers: int, seconds: float, runs: int) -> list[str]:
    results: list[IdleRun] = []
    for i in range(runs):
        for on in (True, False):
            r = idle_run(hierarchy, containers, seconds, on)
            results.append(r)
            print(
                f"  idle run {i + 1}/{runs} warnings {'on' if on else 'off'}: "
                f"{r.stat_percent:.3f} % (stat), {r.sched_percent:.3f} % (schedstat), "
                f"settled {r.startup_s:.0f} s after the start line, load {r.load}",
                file=sys.stderr,
                flush=True,
            )
    rows = [
        "| watch | containers (cgroups watched) | window | runs | CPU % of a core, "
        "utime+stime (median; each run) | threads' schedstat (median) | target | "
        "start-up settled after (s) | load (each run) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for on in (True, False):
        mine = [r for r in results if r.warnings_on is on]
        rows.append(
            f"| {'warnings on (90 %)' if on else '--warn-at off'} | {containers} "
            f"({mine[0].watched}) | {seconds:g} s | {len(mine)} | "
            f"{statistics.median(r.stat_percent for r in mine):.3f} "
            f"({', '.join(f'{r.stat_percent:.3f}' for r in mine)}) | "
            f"{statistics.median(r.sched_percent for r in mine):.3f} | "
            f"{'<= 0.1' if on else '-'} | "
            f"{', '.join(f'{r.startup_s:.0f}' for r in mine)} | {'; '.join(r.load for r in mine)} |"
        )
    return rows


def source_state() -> str:
    """The commit measured, and whether the package differed from it (a shared tree)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "oomguard"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted {', '.join(changed)}" if changed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="lead-time runs per growth rate")
    parser.add_argument("--quick", action="store_true", help="3 runs, shorter windows")
    parser.add_argument("--parts", default="lead,cache,idle")
    parser.add_argument("--cache-seconds", type=float, default=60.0)
    parser.add_argument(
        "--cache-dir",
        default="/var/tmp",
        help="where the page-cache workload's file goes: a disk filesystem, not tmpfs",
    )
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--idle-runs", type=int, default=3)
    parser.add_argument("--containers", type=int, default=500)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.idle_runs = min(args.runs, 3), 1
        args.cache_seconds, args.idle_seconds = min(args.cache_seconds, 20.0), 20.0
    parts = set(args.parts.split(","))
    hierarchy = detect_memory_hierarchy()
    print(
        f"`oomguard watch --json` as shipped (defaults, cgroup v{hierarchy.version.value}; "
        f"source {source_state()}); {os.cpu_count()} cores, load average at start {loadavg()}"
    )
    if "lead" in parts:
        print(
            f"\nLead time: kill record time - warning record time, {args.runs} runs per rate "
            "(a fresh container each, grown until killed)\n"
        )
        print("\n".join(lead_part(hierarchy, args.runs)), flush=True)
    if "cache" in parts:
        print("\nPage cache: a reader of a file 1.5x the limit, read over and over\n")
        print("\n".join(cache_part(hierarchy, args.cache_seconds, args.cache_dir)), flush=True)
    if "idle" in parts:
        print(
            f"\nIdle cost: {args.containers} limited containers with an idle sleeper each, "
            f"CPU of the watch process over {args.idle_seconds:g} s once its start-up "
            "settled\n"
        )
        print(
            "\n".join(idle_part(hierarchy, args.containers, args.idle_seconds, args.idle_runs)),
            flush=True,
        )
    print(f"\nload average at the end {loadavg()}")


if __name__ == "__main__":
    main()
