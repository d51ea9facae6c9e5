"""New container of a governed pod: first process started -> it holds the policy's value.

`oomguard run` runs as in production (a subprocess, the shipped entry point, default
settings: 5 s reconcile passes, the default policy) against the test API server
(tests/cluster/apiserver.py) in this process. The server holds governed pods
(`oomguard.io/sacrifice: "true"`) whose `app` container is restarting: its status names
an old container ID with no cgroup, and is never updated with the new one, so the
reconcile pass cannot find the new container; only the new-container path can steer it.

Each sample plays a restart the way runc does it, on cgroup v1 (the host's): the old
container's cgroup goes; a new one is made (mkdir) and a process is put in it at once
(the runtime's parent writes its pid to `cgroup.procs`: "started" is taken right after
that write); the process then writes the kubelet's value to itself (the runtime's
own write, `process.oomScoreAdj`) and reads its own oom_score_adj every ~0.1 ms until it
is the policy's, noting when (CLOCK_MONOTONIC, shared by all processes), then execs
`sleep` like an entrypoint. The table gives median, p95, p99 and max over all samples.
`--background N` adds N running containers (pods of 2, every second governed): the 5 s
reconcile pass over them runs in the same interpreter as the steering thread.

`--runc` plays each restart with runc itself (`runc run --detach`, a busybox `sleep`
container whose bundle carries the kubelet's `process.oomScoreAdj` and a kubelet-shaped
`cgroupsPath`; tests/cluster/runc.py keeps runc's cgroups inside the scratch tree), the
old container removed with `runc delete --force`. The process that ends up running the
entrypoint is runc's, so nothing inside can take the time: a thread of the bench watches
the new cgroup from outside (its `cgroup.procs` and its processes' oom_score_adj, every
~0.1 ms) for when a process first joins it and when the container's process (runc's
`state` PID) is first seen at the policy's value. Needs runc, unshare, a static busybox.

`--idle` measures instead the agent's CPU while nothing starts: 500 container cgroups
(250 pods of 2 containers, every second pod governed) over a quiet window, several runs
(median). `--before-src DIR` runs the same, interleaved, with an oomguard source tree
from before this feature (e.g. `git archive <commit> oomguard | tar -x -C DIR`), to see
what the feature costs at idle. Needs root.

    python bench/new_container_steer.py [--containers 30] [--pods 10] [--spacing-s 0.25]
                                        [--background 500]
    python bench/new_container_steer.py --runc [--containers 30] [--pods 10] [...]
    python bench/new_container_steer.py --idle [--seconds 60] [--runs 3] [--before-src DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/new_container_steer.py`: make `tests` importable
    sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from bench.event_latency import AgentProcess, percentile  # noqa: E402
from bench.idle_watch import cpu_seconds, rss_mib  # noqa: E402
from bench.stamped_api import running_pod  # noqa: E402
from oomguard.cgroups.hierarchy import detect_memory_hierarchy  # noqa: E402
from oomguard.cgroups.scratch import ScratchTree, remove_tree  # noqa: E402
from oomguard.k8s.pod_cache import project_pod  # noqa: E402
from oomguard.steer.admin import load_policy  # noqa: E402
from oomguard.steer.plan import decide  # noqa: E402
from oomguard.steer.reconciler import read_mem_total_bytes  # noqa: E402
from tests.cluster.apiserver import ApiServer  # noqa: E402
from tests.cluster.runc import Runc, missing_tools  # noqa: E402

NODE = "bench-node"
NAMESPACE = "bench"
GOVERNED = {"oomguard.io/sacrifice": "true"}
HOLD_TIMEOUT_S = 2.0  # the new-container window; later than this is the pass's business

# The container's first process, once the bench has put it into the cgroup and says go.
FIRST_PROCESS = r"""
import os, sys, time
kubelet, target, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.readline()
with open("/proc/self/oom_score_adj", "w") as f:
    f.write(kubelet)
wrote = time.monotonic()
held = None
fd = os.open("/proc/self/oom_score_adj", os.O_RDONLY)
while time.monotonic() - wrote < timeout:
    if int(os.pread(fd, 16, 0)) == target:
        held = time.monotonic()
        break
    time.sleep(0.0001)
sys.stdout.write(f"{wrote!r} {held!r}\n")
sys.stdout.flush()
os.execvp("sleep", ["sleep", "600"])
"""


def governed_pod(name: str, uid: str, container_ids: dict[str, str], governed: bool) -> Any:
    pod = running_pod(name, NAMESPACE, NODE, uid, container_ids)
    if governed:
        pod["metadata"]["annotations"] = dict(GOVERNED)
    return pod


def values_of(pod: Any) -> tuple[int, int]:
    """(the kubelet's value, the policy's) for the pod's `app`, as the agent decides them."""
    decided = decide(project_pod(pod), load_policy("{}"), read_mem_total_bytes())
    assert decided is not None
    (app,) = [d for d in decided.decisions if d.container == "app"]
    assert app.desired is not None
    return app.kubelet_value, app.desired


@dataclass(frozen=True)
class Sample:
    started_to_held_ms: float | None  # None: not at the policy's value within the window
    written_to_held_ms: float | None  # from the runtime's own write of the kubelet's value


def restart(tree: ScratchTree, uid: str, kubelet: int, target: int) -> tuple[Sample, Any]:
    """One new container of the pod: its cgroup, its first process; what it saw."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FIRST_PROCESS, str(kubelet), str(target), str(HOLD_TIMEOUT_S)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdout.readline()  # its interpreter is up before the runtime's part begins
    cgroup = tree.make(f"kubepods/burstable/pod{uid}/{secrets.token_hex(32)}")
    (tree.hierarchy.fs_path(cgroup) / "cgroup.procs").write_text(str(proc.pid))
    started = time.monotonic()
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    wrote_s, held_s = proc.stdout.readline().decode().split()
    if held_s == "None":
        return Sample(None, None), (proc, cgroup)
    held, wrote = float(held_s), float(wrote_s)
    return Sample((held - started) * 1000, (held - wrote) * 1000), (proc, cgroup)


def remove(tree: ScratchTree, old: Any) -> None:
    """The old container's process dies and its cgroup goes, as in a restart."""
    proc, cgroup = old
    proc.kill()
    proc.wait(timeout=10)
    for stream in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            stream.close()
    remove_tree(tree.hierarchy.fs_path(cgroup))


def populate(server: ApiServer, tree: ScratchTree, containers: int) -> None:
    """`containers` running containers with cgroups: pods of 2, every second governed."""
    for i in range(containers // 2):
        uid = str(uuid.uuid4())
        ids = {"app": secrets.token_hex(32), "side": secrets.token_hex(32)}
        server.apply(governed_pod(f"pod-{i}", uid, ids, governed=i % 2 == 0))
        for cid in ids.values():
            tree.make(f"kubepods/burstable/pod{uid}/{cid}")


def latency(containers: int, pods: int, spacing_s: float, background: int) -> list[Sample]:
    hierarchy = detect_memory_hierarchy()
    samples: list[Sample] = []
    server = ApiServer(host="127.0.0.1", port=0).start()
    try:
        name = f"oomguard-bench-newctr-{os.getpid()}"
        with tempfile.TemporaryDirectory() as tmp, ScratchTree(hierarchy, name) as tree:
            server.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
            populate(server, tree, background)
            uids: list[str] = []
            for i in range(pods):
                uid = str(uuid.uuid4())
                pod = governed_pod(f"db-{i}", uid, {"app": secrets.token_hex(32)}, True)
                server.apply(pod)
                tree.make(f"kubepods/burstable/pod{uid}")
                uids.append(uid)
            kubelet, target = values_of(pod)
            kubeconfig = server.write_kubeconfig(Path(tmp) / "kubeconfig")
            agent = AgentProcess(kubeconfig, tree.top, Path(tmp) / "state", Path(tmp) / "log", REPO)
            running: dict[str, Any] = {}
            try:
                agent.wait_ready()
                for i in range(containers):
                    uid = uids[i % pods]
                    if uid in running:
                        remove(tree, running.pop(uid))
                    sample, running[uid] = restart(tree, uid, kubelet, target)
                    samples.append(sample)
                    time.sleep(spacing_s)
            finally:
                agent.stop()
                for proc, _ in running.values():
                    proc.kill()
                    proc.wait(timeout=10)
    finally:
        server.stop()
    return samples


RUNC_LIMIT = 64 * 1024 * 1024  # the container's memory limit (any: it changes no value)


class CgroupWatch(threading.Thread):
    """Watches a container cgroup about to be made, from outside: when a process is
    first in it (`joined`), and when each of its processes is first seen at `target`."""

    def __init__(self, directory: Path, target: int) -> None:
        super().__init__(daemon=True)
        self.procs = str(directory / "cgroup.procs")
        self.target = target
        self.joined: float | None = None
        self.at_target: dict[int, float] = {}
        self.pid: int | None = None  # the container's process, once runc says it
        self.deadline = time.monotonic() + 30.0  # moved to joined + the window

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            if self.pid is not None and self.pid in self.at_target:
                return
            try:
                with open(self.procs) as f:
                    pids = [int(word) for word in f.read().split()]
            except OSError:  # not made yet
                time.sleep(0.0001)
                continue
            if pids and self.joined is None:
                self.joined = time.monotonic()
                self.deadline = self.joined + HOLD_TIMEOUT_S
            for pid in pids:
                if pid in self.at_target:
                    continue
                try:
                    with open(f"/proc/{pid}/oom_score_adj") as f:
                        value = int(f.read())
                except (OSError, ValueError):
                    continue
                if value == self.target:
                    self.at_target[pid] = time.monotonic()
            time.sleep(0.0001)


def restart_runc(
    runc: Runc, uid: str, kubelet: int, target: int, old: str | None
) -> tuple[Sample, str]:
    """One new container of the pod, started by runc (the old one deleted first)."""
    if old is not None:
        runc.delete(old)
    cid = secrets.token_hex(32)
    relative = f"kubepods/burstable/pod{uid}/{cid}"
    watch = CgroupWatch(runc.tree.top / relative, target)
    watch.start()
    invoked = time.monotonic()
    container = runc.run(cid, relative, kubelet, RUNC_LIMIT)
    watch.pid = container.pid
    watch.join()
    held = watch.at_target.get(container.pid)
    if held is None or watch.joined is None:
        return Sample(None, None), cid
    return Sample((held - watch.joined) * 1000, (held - invoked) * 1000), cid


def latency_runc(containers: int, pods: int, spacing_s: float, background: int) -> list[Sample]:
    missing = missing_tools()
    if missing:
        raise SystemExit(f"--runc needs {', '.join(missing)}")
    hierarchy = detect_memory_hierarchy()
    samples: list[Sample] = []
    server = ApiServer(host="127.0.0.1", port=0).start()
    try:
        name = f"oomguard-bench-newctr-runc-{os.getpid()}"
        with tempfile.TemporaryDirectory() as tmp, ScratchTree(hierarchy, name) as tree:
            server.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
            populate(server, tree, background)
            uids: list[str] = []
            for i in range(pods):
                uid = str(uuid.uuid4())
                pod = governed_pod(f"db-{i}", uid, {"app": secrets.token_hex(32)}, True)
                server.apply(pod)
                tree.make(f"kubepods/burstable/pod{uid}")
                uids.append(uid)
            kubelet, target = values_of(pod)
            kubeconfig = server.write_kubeconfig(Path(tmp) / "kubeconfig")
            work = Path(tmp) / "runc"
            work.mkdir()
            with Runc(tree, work) as runc:
                agent = AgentProcess(
                    kubeconfig, tree.top, Path(tmp) / "state", Path(tmp) / "log", REPO
                )
                running: dict[str, str] = {}
                try:
                    agent.wait_ready()
                    for i in range(containers):
                        uid = uids[i % pods]
                        sample, running[uid] = restart_runc(
                            runc, uid, kubelet, target, running.get(uid)
                        )
                        samples.append(sample)
                        time.sleep(spacing_s)
                finally:
                    agent.stop()
    finally:
        server.stop()
    return samples


def idle_once(containers: int, seconds: float, src: Path) -> tuple[float, float]:
    hierarchy = detect_memory_hierarchy()
    server = ApiServer(host="127.0.0.1", port=0).start()
    try:
        name = f"oomguard-bench-newctr-idle-{os.getpid()}"
        with tempfile.TemporaryDirectory() as tmp, ScratchTree(hierarchy, name) as tree:
            server.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
            populate(server, tree, containers)
            kubeconfig = server.write_kubeconfig(Path(tmp) / "kubeconfig")
            agent = AgentProcess(kubeconfig, tree.top, Path(tmp) / "state", Path(tmp) / "log", src)
            try:
                agent.wait_ready()
                time.sleep(2)  # start-up (the first pass) settles
                c0 = cpu_seconds(agent.proc.pid)
                time.sleep(seconds)
                c1 = cpu_seconds(agent.proc.pid)
                rss = rss_mib(agent.proc.pid)
            finally:
                agent.stop()
    finally:
        server.stop()
    return (c1 - c0) / seconds * 100, rss


def ms(value: float) -> str:
    return f"{value:>9.1f}"


def print_latency(samples: list[Sample], args: argparse.Namespace) -> None:
    held = [s.started_to_held_ms for s in samples if s.started_to_held_ms is not None]
    after = [s.written_to_held_ms for s in samples if s.written_to_held_ms is not None]
    missed = len(samples) - len(held)
    print(
        f"new container of a governed pod -> its first process at the policy's value: "
        f"{len(samples)} restarts over {args.pods} pods, {args.spacing_s} s apart, "
        f"{args.background} other containers on the node, "
        "`oomguard run` subprocess with default settings, cgroup v1, CLOCK_MONOTONIC"
        + (", started by runc, watched from outside every ~0.1 ms" if args.runc else "")
    )
    head = ("median ms", "p95 ms", "p99 ms", "max ms")
    print(f"| {'from':<42} | {'n':>3} | " + " | ".join(f"{h:>9}" for h in head) + " |")
    print(f"|{'-' * 44}|{'-' * 5}|" + "|".join("-" * 11 for _ in head) + "|")
    second = "`runc run` invoked" if args.runc else "the runtime's write of the kubelet's value"
    rows = (("process put in the new cgroup (started)", held), (second, after))
    for name, values in rows:
        if values:
            print(
                f"| {name:<42} | {len(values):>3} | {statistics.median(values):>9.1f} | "
                f"{ms(percentile(values, 0.95))} | {ms(percentile(values, 0.99))} | "
                f"{ms(max(values))} |"
            )
    if missed:
        print(f"{missed} sample(s) not at the policy's value within {HOLD_TIMEOUT_S} s")
    if held:
        median, p99 = statistics.median(held), percentile(held, 0.99)
        met = median <= 20 and p99 <= 100 and not missed
        print(
            f"targets median <= 20 ms, p99 <= 100 ms: {'met' if met else 'MISSED'} "
            f"({median:.1f} / {p99:.1f} ms)"
        )


def print_idle(args: argparse.Namespace) -> None:
    sources = [("this tree", REPO)]
    if args.before_src:
        sources.append(("before (--before-src)", Path(args.before_src).resolve()))
    results: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in sources}
    for _ in range(args.runs):
        for label, src in sources:  # interleaved: drift on the host hits both alike
            results[label].append(idle_once(args.containers, args.seconds, src))
    print(
        f"idle `oomguard run`: {args.containers} container cgroups ({args.containers // 2} "
        f"pods, every second one governed), {args.seconds:.0f} s window, default settings, "
        f"median of {args.runs} runs"
    )
    print(f"| {'agent':<22} | {'CPU % of one core':>17} | {'runs':>24} | {'RSS MiB':>8} |")
    print(f"|{'-' * 24}|{'-' * 19}|{'-' * 26}|{'-' * 10}|")
    for label, runs in results.items():
        cpu = statistics.median(r[0] for r in runs)
        each = " ".join(f"{r[0]:.3f}" for r in runs)
        rss = statistics.median(r[1] for r in runs)
        print(f"| {label:<22} | {cpu:>17.3f} | {each:>24} | {rss:>8.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=None)
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--spacing-s", type=float, default=0.25)
    parser.add_argument(
        "--background", type=int, default=0, help="other containers (the pass's work)"
    )
    parser.add_argument("--runc", action="store_true", help="restarts started by runc")
    parser.add_argument("--idle", action="store_true")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before-src", default=None)
    args = parser.parse_args()
    if args.idle:
        args.containers = args.containers or 500
        print_idle(args)
    else:
        args.containers = args.containers or 30
        measure = latency_runc if args.runc else latency
        print_latency(measure(args.containers, args.pods, args.spacing_s, args.background), args)


if __name__ == "__main__":
    main()
