"""Event storm: 1,000 OOM kills in a minute across 20 containers of 10 pods.

NOT REAL KILLS. At ~17 kills/s, real hogs (a Python start and 64 MiB touched each) would
take most of this 2-core machine and the measurement would be of the machine. So the
kills are injected at the detector boundary instead: each is a `KernelOomKill` as the
kmsg parser yields it for a full memcg report, turned into an `OomKill` by the engine's
own `KillJoiner.on_kernel_kill` (the code the detector thread runs), and put on the
agent's kill queue, the queue the detector thread feeds. Everything after that is real:
attribution through the pod cache (list+watch over HTTP), the persisted event queue,
aggregation, the official client's HTTP to the test API server (tests/cluster/apiserver.py)
on 127.0.0.1. The container cgroups are real (kubepods-shaped, below our own cgroup),
watched by the agent as in production; nothing runs in them.

The agent (`Agent`, wired as `oomguard run` wires it) runs in a child process of this
script (the same file, `--agent-child`), so its RSS is its own, read from /proc: after
it is ready (before), the peak during the storm, and after every kill is delivered.
The injection has to be in-process with the agent, hence the child rather than the
`oomguard run` command itself.

Two storms, each with a fresh agent, state directory and server:
- plain;
- with an API outage of 10 s (connections refused) in the middle of the storm.
Checked for each: the Events in the server (one per container per event window, their
counts summing to exactly 1,000: none lost, none doubled), the delivery time of the
whole storm (first kill injected -> the server holding all 1,000; and from the last
kill), each container's first kill -> its Event created (creates are never held back),
the API calls made (as the server saw them; refused connections never reach it, the
agent's retry count shows those), the shortest time between two writes of one Event
(the update interval), and the agent's RSS growth. The agent runs with its defaults:
`--event-update-interval-s` 10, `--api-qps` 5, `--api-burst` 25 (k8s/write_budget.py).
Each storm runs `--runs` times (3); the table gives medians, the load average beside
them (the machine may be shared). Needs root (cgroups).

Targets (issue 13): <= 20 creates + <= 140 patches, count sum exactly 1,000 within 15 s
of the last kill, RSS growth <= 5 MiB.

    python bench/event_storm.py [--kills 1000] [--seconds 60] [--runs 3]
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/event_storm.py`: make `tests` importable
    sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import collections  # noqa: E402
import contextlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import IO, Any  # noqa: E402

from bench.stamped_api import StampingApi, running_pod, stamping_server  # noqa: E402
from oomguard.cgroups.hierarchy import detect_memory_hierarchy  # noqa: E402
from oomguard.cgroups.scratch import ScratchTree  # noqa: E402
from oomguard.k8s.events import window_start  # noqa: E402
from tests.cluster.apiserver import EVENTS, ApiServer  # noqa: E402

NODE = "bench-node"
NAMESPACE = "storm"
PODS = 10
CONTAINERS_PER_POD = 2
LIMIT_KB = 64 * 1024
EVENT_WINDOW_S = 600.0  # the agent's default
OUTAGE_S = 10.0
# Synthetic kmsg sequence numbers, far above any real one: kill ids never collide.
SEQ_BASE = 1 << 40
START_TIMEOUT_S = 60.0
DELIVERY_TIMEOUT_S = 120.0


# ---------------------------------------------------------------------------------------
# The agent child: an Agent as `oomguard run` builds it, plus the injector


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def say(out: IO[str], **message: Any) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def agent_child(config: dict[str, Any]) -> None:
    """Run the agent; on "go" inject the storm; on "stop" stop it and report counters."""
    from oomguard.agent import Agent
    from oomguard.cgroups.hierarchy import detect_memory_hierarchy
    from oomguard.detect.join import KillJoiner
    from oomguard.k8s.client import KubeApi
    from oomguard.records import KernelOomKill
    from oomguard.settings import load_settings

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = sys.stdout
    settings = load_settings(
        node_name=NODE,
        kubeconfig=config["kubeconfig"],
        cgroup_root=config["cgroup_root"],
        state_dir=config["state_dir"],
        metrics_address="127.0.0.1:0",
        event_window_s=EVENT_WINDOW_S,
    )
    agent = Agent(
        settings, detect_memory_hierarchy(), KubeApi.from_kubeconfig(config["kubeconfig"])
    )
    agent.start()
    loop = threading.Thread(target=agent.run, name="agent", daemon=True)
    loop.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not agent.ready()[0]:
        if time.monotonic() > deadline:
            raise SystemExit(f"agent not ready: {agent.ready()[1]}")
        time.sleep(0.05)
    say(out, state="ready")
    if sys.stdin.readline().strip() != "go":
        return

    joiner = KillJoiner(kmsg_available=True)
    containers: list[str] = config["containers"]
    kills, seconds = int(config["kills"]), float(config["seconds"])
    max_pending = 0
    t0 = time.monotonic()
    first_wall = datetime.now(UTC)
    for i in range(kills):
        time.sleep(max(0.0, t0 + i * seconds / kills - time.monotonic()))
        cgroup = containers[i % len(containers)]
        now = time.monotonic()
        kernel = KernelOomKill(  # a full memcg report, as OomReportAssembler yields it
            seq=SEQ_BASE + i,
            kernel_time_us=int(now * 1_000_000),
            pid=200_000 + i,
            command="storm-worker",
            uid=0,
            total_vm_kb=LIMIT_KB + 20_000,
            anon_rss_kb=LIMIT_KB - 512,
            file_rss_kb=256,
            shmem_rss_kb=0,
            oom_score_adj=985,
            constraint="CONSTRAINT_MEMCG",
            oom_memcg=cgroup,
            task_memcg=cgroup,
            memcg_usage_kb=LIMIT_KB,
            memcg_limit_kb=LIMIT_KB,
            trigger_command="storm-worker",
            scope="memory cgroup",
        )
        record = joiner.on_kernel_kill(
            kernel, cgroup, counted=False, now_mono=now, now_wall=datetime.now(UTC)
        )
        assert record is not None
        agent._kills.put(record)  # the detector thread's `on_kill`
        max_pending = max(max_pending, len(agent.events))
    say(
        out,
        state="injected",
        first_mono=t0,
        last_mono=time.monotonic(),
        first_wall=first_wall.timestamp(),
        last_wall=time.time(),
    )
    while sys.stdin.readline().strip() not in ("stop", ""):
        pass
    agent.stop()
    loop.join(timeout=30)
    sender, queue = agent.sender.counters, agent.events.counters
    state = agent.events.state_path
    say(
        out,
        state="stopped",
        stopped=not loop.is_alive(),
        rss_kib=rss_kib(),
        max_pending=max_pending,
        throttled=sender.throttled,
        state_bytes=state.stat().st_size if state is not None and state.exists() else 0,
        sent=sender.sent,
        created=sender.created,
        patched=sender.patched,
        retried=sender.retried,
        failed=sender.failed,
        dropped=sender.dropped,
        accepted=queue.accepted,
        duplicates=queue.duplicates,
        merged=queue.merged,
    )


# ---------------------------------------------------------------------------------------
# The bench: server, cgroups, pods, the child, and the measurements


@dataclass
class RssSampler:
    pid: int
    peak_kib: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(0.2):
            with contextlib.suppress(OSError):
                self.peak_kib = max(self.peak_kib, rss_kib(self.pid))

    def __enter__(self) -> RssSampler:
        threading.Thread(target=self.run, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


@dataclass
class StormResult:
    name: str
    rss_before_kib: int
    rss_peak_kib: int
    rss_after_kib: int
    events: int
    expected_events: int
    count_sum: int
    max_count_per_container_window: int
    delivery_s: float
    tail_s: float
    creates: int
    patches: int
    other_calls: int
    first_create_ms: list[float]  # per container: its first kill -> its Event created
    min_update_gap_s: float  # the shortest time between two writes of one Event
    loadavg: float  # the 1-minute load average at the end of the storm
    child: dict[str, Any]


def read_message(proc: subprocess.Popen[str], state: str, log: Path) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"the agent child exited ({proc.wait()}) before '{state}':\n{tail}")
    message: dict[str, Any] = json.loads(line)
    if message.get("state") != state:
        raise SystemExit(f"the agent child said {message}, expected '{state}'")
    return message


def storm(name: str, kills: int, seconds: float, outage: bool) -> StormResult:
    hierarchy = detect_memory_hierarchy()
    with stamping_server() as (server, handler):
        top = f"oomguard-bench-storm-{os.getpid()}-{int(outage)}"
        with tempfile.TemporaryDirectory() as tmp, ScratchTree(hierarchy, top) as tree:
            containers: list[tuple[str, str]] = []  # (pod uid, container cgroup)
            for p in range(PODS):
                uid = str(uuid.uuid4())
                cids = [secrets.token_hex(32) for _ in range(CONTAINERS_PER_POD)]
                server.apply(
                    running_pod(
                        f"storm-{p}", NAMESPACE, NODE, uid, {f"c{j}": c for j, c in enumerate(cids)}
                    )
                )
                for cid in cids:
                    cgroup = tree.make(
                        f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=LIMIT_KB * 1024
                    )
                    containers.append((uid, cgroup))
            config = {
                "kubeconfig": str(server.write_kubeconfig(Path(tmp) / "kubeconfig")),
                "cgroup_root": str(tree.top),
                "state_dir": str(Path(tmp) / "state"),
                "containers": [cgroup for _, cgroup in containers],
                "kills": kills,
                "seconds": seconds,
            }
            log = Path(tmp) / "agent.log"
            with log.open("w") as log_file:
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--agent-child", json.dumps(config)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log_file,
                    text=True,
                )
                try:
                    return drive(
                        name, proc, server, handler, kills, seconds, outage, log, len(containers)
                    )
                finally:
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait()


def drive(
    name: str,
    proc: subprocess.Popen[str],
    server: ApiServer,
    handler: StampingApi,
    kills: int,
    seconds: float,
    outage: bool,
    log: Path,
    n_containers: int,
) -> StormResult:
    assert proc.stdin is not None
    read_message(proc, "ready", log)
    time.sleep(1.0)  # let start-up allocations settle
    rss_before = rss_kib(proc.pid)
    with RssSampler(proc.pid) as sampler:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        timer = None
        if outage:
            timer = threading.Timer(
                max(0.0, seconds / 2 - OUTAGE_S / 2), lambda: server.outage(OUTAGE_S)
            )
            timer.start()
        injected = read_message(proc, "injected", log)
        if timer is not None:
            timer.join()
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while True:
            writes = server.run(lambda: list(handler.event_writes))
            latest: dict[str, int] = {}
            done_at = None
            for write in writes:
                at, event, count = write.at, write.name, write.count
                latest[event] = count
                if done_at is None and sum(latest.values()) >= kills:
                    done_at = at
            if done_at is not None or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(1.0)  # anything beyond `kills` (a double) would show up now
        rss_after = rss_kib(proc.pid)
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    child = read_message(proc, "stopped", log)
    proc.wait(timeout=30)

    events = server.objects(EVENTS, NAMESPACE)
    windows = {
        window_start(datetime.fromtimestamp(t, UTC), EVENT_WINDOW_S)
        for t in (injected["first_wall"], injected["last_wall"])
    }
    per_container_window: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for ev in events:
        obj = ev["involvedObject"]
        first = ev["firstTimestamp"]
        when = window_start(datetime.fromisoformat(first.replace("Z", "+00:00")), EVENT_WINDOW_S)
        per_container_window[(obj["uid"], obj.get("fieldPath", ""), when.isoformat())] += 1
    calls = server.requests()
    creates = sum(1 for r in calls if r.verb == "create" and r.resource == "events")
    patches = sum(1 for r in calls if r.verb == "patch" and r.resource == "events")
    delivered_at = done_at if done_at is not None else float("nan")
    # Container c's first kill is kill c (round robin), injected at first + c * step; the
    # Events are created in that order (a step is ~60 ms, a create a few ms).
    step_s = seconds / kills
    first_write: dict[str, float] = {}
    by_event: dict[str, list[float]] = collections.defaultdict(list)
    for write in writes:
        first_write.setdefault(write.name, write.at)
        by_event[write.name].append(write.at)
    created_at = sorted(first_write.values())
    first_create_ms = [
        (at - (float(injected["first_mono"]) + c * step_s)) * 1000
        for c, at in enumerate(created_at[:n_containers])
    ]
    gaps = [b - a for ats in by_event.values() for a, b in itertools.pairwise(ats)]
    return StormResult(
        name=name,
        rss_before_kib=rss_before,
        rss_peak_kib=sampler.peak_kib,
        rss_after_kib=rss_after,
        events=len(events),
        expected_events=PODS * CONTAINERS_PER_POD * len(windows),
        count_sum=sum(int(ev.get("count") or 0) for ev in events),
        max_count_per_container_window=max(per_container_window.values(), default=0),
        delivery_s=delivered_at - float(injected["first_mono"]),
        tail_s=delivered_at - float(injected["last_mono"]),
        creates=creates,
        patches=patches,
        other_calls=len(calls) - creates - patches,
        first_create_ms=first_create_ms,
        min_update_gap_s=min(gaps, default=float("nan")),
        loadavg=os.getloadavg()[0],
        child=child,
    )


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the storm")
    parser.add_argument("--runs", type=int, default=3, help="runs of each storm (median)")
    parser.add_argument("--agent-child", metavar="CONFIG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.agent_child:
        agent_child(json.loads(args.agent_child))
        return
    storms = [("plain", False), (f"{OUTAGE_S:.0f} s API outage mid-storm", True)]
    runs: dict[str, list[StormResult]] = {name: [] for name, _ in storms}
    for _ in range(args.runs):
        for name, outage in storms:
            runs[name].append(storm(name, args.kills, args.seconds, outage=outage))
    print(
        f"event storm: {args.kills} kills in {args.seconds:.0f} s over "
        f"{PODS * CONTAINERS_PER_POD} containers of {PODS} pods; kills INJECTED at the "
        "detector boundary (agent kill queue, records built by the engine's KillJoiner), "
        "not real OOM kills; agent in a child process with its default write budget, real "
        f"HTTP to the test API server; medians of {args.runs} run(s)"
    )
    cols = [
        ("storm", 30),
        ("creates", 7),
        ("patches", 7),
        ("count sum", 9),
        ("last kill -> all delivered s", 28),
        ("first kill -> create ms (max)", 29),
        ("min gap s", 9),
        ("RSS growth MiB (peak)", 21),
        ("retried", 7),
        ("loadavg", 7),
    ]
    print("| " + " | ".join(f"{h:<{w}}" for h, w in cols) + " |")
    print("|" + "|".join("-" * (w + 2) for _, w in cols) + "|")
    for name, results in runs.items():
        growth = [float(r.rss_after_kib - r.rss_before_kib) for r in results]
        peak = [float(r.rss_peak_kib - r.rss_before_kib) for r in results]
        cells = [
            name,
            f"{median([r.creates for r in results]):.0f}",
            f"{median([r.patches for r in results]):.0f}",
            f"{median([r.count_sum for r in results]):.0f}",
            f"{median([r.tail_s for r in results]):.1f}",
            f"{median([median(r.first_create_ms) for r in results]):.1f} "
            f"({max(max(r.first_create_ms, default=0) for r in results):.0f})",
            f"{min(r.min_update_gap_s for r in results):.2f}",
            f"{median(growth) / 1024:.1f} ({median(peak) / 1024:.1f})",
            f"{median([r.child['retried'] for r in results]):.0f}",
            f"{median([r.loadavg for r in results]):.2f}",
        ]
        print("| " + " | ".join(f"{c:<{w}}" for c, (_, w) in zip(cells, cols, strict=True)) + " |")
    print()
    print("each run (RSS MiB before/peak/after; Events (expected); API create/patch/other):")
    for name, results in runs.items():
        for r in results:
            print(
                f"  {name}: {mib(r.rss_before_kib)}/{mib(r.rss_peak_kib)}/"
                f"{mib(r.rss_after_kib)}; {r.events} ({r.expected_events}); "
                f"{r.creates}/{r.patches}/{r.other_calls}; count {r.count_sum}; "
                f"whole storm delivered {r.delivery_s:.1f} s, after the last kill "
                f"{r.tail_s:.1f} s; loadavg {r.loadavg:.2f}"
            )
    print()
    print("agent's own counters (kills), last run:")
    keys = ["accepted", "sent", "duplicates", "merged", "dropped", "failed", "created", "patched"]
    keys += ["throttled", "max_pending", "state_bytes"]
    print("| storm" + " " * 25 + " | " + " | ".join(f"{k:>11}" for k in keys) + " |")
    print("|" + "-" * 32 + "|" + "|".join("-" * 13 for _ in keys) + "|")
    for name, results in runs.items():
        r = results[-1]
        print(f"| {name:<30} | " + " | ".join(f"{r.child[k]:>11}" for k in keys) + " |")
    print()
    for name, results in runs.items():
        exact = all(
            r.count_sum == args.kills
            and r.events == r.expected_events
            and r.max_count_per_container_window == 1
            and r.child["dropped"] == 0
            and r.child["failed"] == 0
            for r in results
        )
        growth_mib = median([float(r.rss_after_kib - r.rss_before_kib) for r in results]) / 1024
        targets = (
            median([r.creates for r in results]) <= 20
            and median([r.patches for r in results]) <= 140
            and median([r.tail_s for r in results]) <= 15.0
            and growth_mib <= 5.0
        )
        print(
            f"{name}: "
            + (
                "none lost, none doubled, one Event per container per window"
                if exact
                else "CHECK FAILED"
            )
            + "; targets (<= 20 creates, <= 140 patches, all within 15 s of the last kill, "
            + f"RSS growth <= 5 MiB): {'met' if targets else 'NOT met'}"
        )


if __name__ == "__main__":
    main()
