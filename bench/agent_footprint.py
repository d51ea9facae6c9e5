"""What `oomguard run` costs a node: RSS, CPU to start, idle CPU, with 110 pods.

Each run starts the test API server (tests/cluster/apiserver.py) on 127.0.0.1 with the
bench's Node and 110 Running pods on it (each with one container, a kubepods-shaped cgroup
below our own and a `sleep` in it; one pod in ten volunteers as a victim, so the
reconcile pass has something to keep in line), and starts `oomguard run` as shipped: a
subprocess, default settings except the node name, the cluster credentials, the cgroup
root (the scratch tree) and the state directory. Measured from /proc:

- RSS when /readyz first answers 200 (pods listed, cgroups watched), and after idling;
- CPU to start: utime + stime of the process (all its threads, live or exited) when
  /readyz first answers, interpreter start-up included;
- idle CPU: on-CPU time over the idle window, which starts 10 s after ready (the first
  reconcile pass and its Events are over), from schedstat of every thread (ns), as % of
  one core.

Two ways to reach the cluster, `--mode`:
- `in-cluster` (a DaemonSet's): the service account's token and CA files and
  KUBERNETES_SERVICE_HOST/PORT. The server answers HTTPS with a certificate made here
  for 127.0.0.1; the agent runs in a private mount namespace (`unshare`) with a tmpfs on
  /run holding the token and CA at the standard path, so the host is left alone;
- `kubeconfig`: a kubeconfig file pointing at the server over HTTP.

Then a breakdown (one extra start each, same setup): the import-time profile of the
run path (`-X importtime`, self time summed per top-level package) and `tracemalloc`'s
view of the heap once ready (traced from interpreter start, grouped by package), plus
what `import oomguard.cli` costs every command. Needs root (cgroups, unshare).

    python bench/agent_footprint.py [--runs 3] [--idle-s 60] [--mode both] [--src TREE]

`--src TREE`: run the package from another tree (e.g. an export of an older commit).
Either way it runs from an install made as the image's Dockerfile makes it: a fresh
virtual environment without pip, `pip install TREE` into it (dependencies from the
package index, bytecode compiled), run with PYTHONDONTWRITEBYTECODE=1. Not from this
machine's Python: its site-packages carries start-up files (.pth) that import modules in
every process (~5 MiB of RSS here), which no image has, and a source tree without
`__pycache__` would be compiled again at every start, which no node does.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/agent_footprint.py`: make `tests` importable
    sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from bench.event_latency import free_port  # noqa: E402
from oomguard.cgroups.hierarchy import detect_memory_hierarchy  # noqa: E402
from oomguard.cgroups.scratch import ScratchTree  # noqa: E402
from tests.cluster.apiserver import ApiServer  # noqa: E402
from tests.cluster.tls import TlsApiServer, make_certificate, service_account  # noqa: E402

NODE = "bench-node"
PODS = 110
LIMIT_BYTES = 256 * 2**20  # each container's memory limit
START_TIMEOUT_S = 120.0
SA_DIR = "/run/secrets/kubernetes.io/serviceaccount"  # /var/run is /run
CLK_TCK = os.sysconf("SC_CLK_TCK")
MODES = ("in-cluster", "kubeconfig")
# The idle window starts this long after ready: the first pass and its Events are over.
SETTLE_S = 10.0
# A real API server's watch cache sends each watch a bookmark about once a minute
# (cacher.go, defaultBookmarkFrequency); the test server's default is 1 s, for tests.
BOOKMARK_INTERVAL_S = 60.0

# Run in the private mount namespace before exec'ing the agent: the service account
# files at their standard path, on a tmpfs only this process tree sees.
IN_CLUSTER_SH = (
    'set -e; mount -t tmpfs -o size=1m,mode=755 oomguard-bench /run; mkdir -p "$SA"; '
    'cp "$0/token" "$0/ca.crt" "$SA/"; exec "$@"'
)

# The breakdown's agent: `oomguard.cli.main(["run", ...])` as the console script runs it,
# with a thread that waits for /readyz, reports, then stops the agent with SIGTERM.
PROBE = r"""
import json, os, signal, socket, sys, threading, time, tracemalloc
port, out, idle_s = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
def on_cpu():  # each thread of the agent: name -> ns on a CPU (schedstat)
    names = {t.native_id: t.name for t in threading.enumerate()}
    times = {}
    for tid, name in names.items():
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                times[name] = int(f.read().split()[0])
        except OSError:
            pass
    return times
def ready():  # a bare socket: urllib.request would import what the agent may not
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
            return s.recv(64).split(b" ")[1:2] == [b"200"]
    except (OSError, IndexError):
        return False
def probe():
    while not ready():
        time.sleep(0.05)
    report = {"modules": sorted(sys.modules)}
    if idle_s:
        time.sleep(10)  # the start-up passes are over (SETTLE_S)
        before = on_cpu()
        time.sleep(idle_s)
        after = on_cpu()
        report["idle_ns"] = {n: t - before.get(n, 0) for n, t in after.items() if n != "probe"}
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot()
        # Each block by the innermost frame outside the import machinery (a module's code
        # objects then count for whoever imported it) and by the oomguard line that led
        # to it (an import line, or data the agent keeps).
        def own(frames, keep):
            # innermost first (a Traceback lists the oldest frame first)
            hits = (f"{f.filename}:{f.lineno}" for f in reversed(frames) if keep(f.filename))
            return next(hits, "?")
        def outside(name):
            return not (name.startswith("<frozen") or "/importlib/" in name)
        def ours(name):
            return "/oomguard/" in name
        report["traced"] = [(own(s.traceback, outside), own(s.traceback, ours), s.size)
                            for s in snap.statistics("traceback")]
    with open(out, "w") as f:
        json.dump(report, f)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=probe, name="probe", daemon=True).start()
from oomguard.cli import main
sys.exit(main(sys.argv[4:]))
"""


@dataclass(frozen=True)
class Sample:
    rss_ready_mib: float
    rss_idle_mib: float
    anon_idle_mib: float
    start_cpu_s: float
    idle_cpu_pct: float
    threads: int


# ----- the cluster ----------------------------------------------------------------------


def pod(i: int, uid: str, cid: str) -> dict[str, Any]:
    """A Running Burstable pod shaped like a real one (labels, owner, env, volumes, a
    last-applied annotation), one container; every tenth volunteers as a victim."""
    name = f"web-{i // 10}-{secrets.token_hex(3)}"
    annotations = {
        "kubectl.kubernetes.io/last-applied-configuration": json.dumps(
            {"metadata": {"labels": {"app": f"web-{i // 10}"}}, "spec": {"note": "x" * 600}}
        ),
        "prometheus.io/scrape": "true",
    }
    if i % 10 == 0:
        annotations["oomguard.io/sacrifice"] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": f"team-{i % 7}",
            "uid": uid,
            "labels": {"app": f"web-{i // 10}", "pod-template-hash": secrets.token_hex(5)},
            "annotations": annotations,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"web-{i // 10}",
                    "uid": str(uuid.uuid4()),
                    "controller": True,
                }
            ],
        },
        "spec": {
            "nodeName": NODE,
            "containers": [
                {
                    "name": "app",
                    "image": f"registry/app:{i}",
                    "env": [{"name": f"VAR_{k}", "value": "v" * 20} for k in range(10)],
                    "resources": {
                        "requests": {"memory": "64Mi", "cpu": "50m"},
                        "limits": {"memory": f"{LIMIT_BYTES // 2**20}Mi"},
                    },
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "emptyDir": {}}],
        },
        "status": {
            "phase": "Running",
            "qosClass": "Burstable",
            "podIP": f"10.0.{i // 250}.{i % 250}",
            "containerStatuses": [
                {
                    "name": "app",
                    "containerID": f"containerd://{cid}",
                    "image": f"registry/app:{i}",
                    "ready": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
                }
            ],
        },
    }


@contextlib.contextmanager
def node(mode: str, tmp: Path) -> Iterator[tuple[ApiServer, ScratchTree]]:
    """The API server with 110 pods on the node and their cgroups (limited as the pod
    says), each with a sleep."""
    hierarchy = detect_memory_hierarchy()
    if mode == "in-cluster":
        cert, key = make_certificate(tmp)
        service_account(tmp / "sa", cert)
        # Not checked: so an older tree's agent (the official in-cluster loader, which
        # sends "bearer") can be measured the same way.
        server: ApiServer = TlsApiServer(
            cert, key, check_token=False, bookmark_interval_s=BOOKMARK_INTERVAL_S
        )
    else:
        server = ApiServer(host="127.0.0.1", port=0, bookmark_interval_s=BOOKMARK_INTERVAL_S)
    sleepers: list[subprocess.Popen[bytes]] = []
    server.start()
    try:
        # The Node exists, as on a real cluster (its uid is read once for Node Events).
        server.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
        with ScratchTree(hierarchy, f"oomguard-bench-footprint-{os.getpid()}") as tree:
            try:
                for i in range(PODS):
                    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
                    server.apply(pod(i, uid, cid))
                    # The limits the runtime and the kubelet set for this spec: the
                    # container's 256Mi, and the pod's (every container has a limit).
                    tree.make(f"kubepods/burstable/pod{uid}", limit_bytes=LIMIT_BYTES)
                    cgroup = tree.make(
                        f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=LIMIT_BYTES
                    )
                    sleeper = subprocess.Popen(["sleep", "3600"])
                    sleepers.append(sleeper)
                    (hierarchy.fs_path(cgroup) / "cgroup.procs").write_text(str(sleeper.pid))
                yield server, tree
            finally:
                for sleeper in sleepers:
                    sleeper.kill()
                for sleeper in sleepers:
                    sleeper.wait()
    finally:
        server.stop()


# ----- the agent ------------------------------------------------------------------------


def image_env() -> dict[str, str]:
    """This process's environment as the image's Python sees one: none of this
    machine's PYTHON* settings, and no bytecode written (the image's ENV)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def agent_command(
    mode: str,
    server: ApiServer,
    tree: ScratchTree,
    tmp: Path,
    port: int,
    python: list[str],
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of `oomguard run` (through `python`, e.g.
    `[venv python, -m, oomguard.cli]`) for this mode."""
    env = image_env()
    flags = [
        "run",
        f"--node-name={NODE}",
        f"--cgroup-root={tree.top}",
        f"--state-dir={tmp / 'state'}",
        f"--metrics-address=127.0.0.1:{port}",
    ]
    if mode == "kubeconfig":
        kubeconfig = server.write_kubeconfig(tmp / "kubeconfig")
        return [*python, *flags, f"--kubeconfig={kubeconfig}"], env
    sa = tmp / "sa"
    env.update(
        KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT=str(server.port), SA=SA_DIR
    )
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", IN_CLUSTER_SH, str(sa)]
    return [*wrapper, *python, *flags], env


def start_agent(
    mode: str,
    server: ApiServer,
    tree: ScratchTree,
    tmp: Path,
    python: list[str],
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command, env = agent_command(mode, server, tree, tmp, port, python)
    log = (tmp / "agent.log").open("ab")
    proc = subprocess.Popen(command, env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    return proc, port


def wait_ready(proc: subprocess.Popen[bytes], port: int, tmp: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"oomguard run exited {proc.returncode}:\n{tail(tmp)}")
        url = f"http://127.0.0.1:{port}/readyz"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
            if answer.status == 200:
                return
        time.sleep(0.02)
    raise SystemExit(f"oomguard run not ready in {START_TIMEOUT_S:.0f} s:\n{tail(tmp)}")


def tail(tmp: Path) -> str:
    return "\n".join((tmp / "agent.log").read_text(errors="replace").splitlines()[-20:])


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_s(pid: int) -> float:
    """utime + stime of the whole process (exited threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def on_cpu_ns(pid: int) -> dict[int, int]:
    """Each live thread's time on a CPU (schedstat, ns)."""
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            times[int(task.name)] = int((task / "schedstat").read_text().split()[0])
    return times


def status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def measure(mode: str, idle_s: float, python: str) -> Sample:
    with tempfile.TemporaryDirectory() as name, node(mode, tmp := Path(name)) as (server, tree):
        proc, port = start_agent(mode, server, tree, tmp, [python, "-m", "oomguard.cli"])
        try:
            wait_ready(proc, port, tmp)
            start_cpu = cpu_s(proc.pid)
            rss_ready = status_kib(proc.pid, "VmRSS")
            time.sleep(SETTLE_S)
            before, stat_before = on_cpu_ns(proc.pid), cpu_s(proc.pid)
            time.sleep(idle_s)
            after, stat_after = on_cpu_ns(proc.pid), cpu_s(proc.pid)
            threads_ns = sum(after[t] - before.get(t, 0) for t in after)
            # A thread that came and went in the window shows in stat, not schedstat.
            idle_cpu_s = max(threads_ns / 1e9, stat_after - stat_before - 1 / CLK_TCK)
            sample = Sample(
                rss_ready_mib=rss_ready / 1024,
                rss_idle_mib=status_kib(proc.pid, "VmRSS") / 1024,
                anon_idle_mib=status_kib(proc.pid, "RssAnon") / 1024,
                start_cpu_s=start_cpu,
                idle_cpu_pct=100 * idle_cpu_s / idle_s,
                threads=len(after),
            )
        finally:
            stop(proc)
        if proc.returncode != 0:
            raise SystemExit(f"oomguard run exited {proc.returncode} on SIGTERM:\n{tail(tmp)}")
    return sample


# ----- the breakdown --------------------------------------------------------------------

SITE = re.compile(r"(?:site|dist)-packages/([^/]+)")
STDLIB = re.compile(r"/lib/python3[.\d]*/([^/]+)")


def package_of(where: str) -> str:
    """A module name or a file name as the package it belongs to (oomguard by stage)."""
    if "/" not in where:
        parts = where.split(".")
        return ".".join(parts[:2]) if parts[0] == "oomguard" and len(parts) > 2 else parts[0]
    if (m := SITE.search(where)) is not None:
        return m.group(1).removesuffix(".py")
    if "/oomguard/" in where:
        rest = where.rsplit("/oomguard/", 1)[1].split("/")
        return "oomguard." + rest[0] if len(rest) > 1 else "oomguard"
    if "<frozen" in where:
        return "stdlib"
    if (m := STDLIB.search(where)) is not None:
        return "stdlib " + m.group(1).removesuffix(".py")
    return where


def probe(
    mode: str, python: str, flags: list[str], idle_s: float = 0.0
) -> tuple[dict[str, Any], str]:
    """One start with the probe: its report and its stderr."""
    with tempfile.TemporaryDirectory() as name, node(mode, tmp := Path(name)) as (server, tree):
        out = tmp / "probe.json"
        port = free_port()
        command, env = agent_command(
            mode,
            server,
            tree,
            tmp,
            port,
            [python, *flags, "-c", PROBE, str(port), str(out), str(idle_s)],
        )
        log = tmp / "agent.log"
        with log.open("wb") as err:
            proc = subprocess.run(
                command,
                env=env,
                cwd=tmp,
                stdout=subprocess.DEVNULL,
                stderr=err,
                timeout=START_TIMEOUT_S,
                check=False,
            )
        if not out.exists():
            raise SystemExit(f"probe exited {proc.returncode}:\n{tail(tmp)}")
        return json.loads(out.read_text()), log.read_text(errors="replace")


def parse_importtime_line(line: str) -> tuple[int, str]:
    self_us, _cumulative, name = line.split(":", 1)[1].split("|")
    return int(self_us), name.strip()


def breakdown(mode: str, python: str, top: int, idle_s: float) -> None:
    report, stderr = probe(mode, python, ["-X", "importtime"], idle_s)
    print(f"\nidle CPU by thread, `oomguard run` ({mode}), {idle_s:.0f} s from 10 s after ready")
    print(f"| {'thread':<36} | {'ms':>6} | {'% of a core':>11} |")
    print(f"|{'-' * 38}|{'-' * 8}|{'-' * 13}|")
    for name, ns in sorted(report["idle_ns"].items(), key=lambda kv: -kv[1]):
        name = re.sub(r"^oomguard-metrics-\d+", "oomguard-metrics", name)  # its port
        print(f"| {name:<36} | {ns / 1e6:>6.1f} | {100 * ns / 1e9 / idle_s:>11.3f} |")
    by: dict[str, list[float]] = {}
    for line in stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            self_us, module = parse_importtime_line(line)
            entry = by.setdefault(package_of(module), [0, 0.0])
            entry[0] += 1
            entry[1] += self_us / 1000
    total_ms = sum(ms for _, ms in by.values())
    print(
        f"\nimport-time profile, `oomguard run` ({mode}) to ready: {len(report['modules'])} "
        f"modules loaded, {total_ms:.0f} ms of imports (self time summed per package)"
    )
    print(f"| {'package':<28} | {'modules':>7} | {'ms':>6} |")
    print(f"|{'-' * 30}|{'-' * 9}|{'-' * 8}|")
    for package, (n, ms) in sorted(by.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"| {package:<28} | {n:>7.0f} | {ms:>6.1f} |")

    report, _ = probe(mode, python, ["-X", "tracemalloc=64"])
    per: dict[str, int] = {}
    lines: dict[str, int] = {}
    for where, ours, size in report["traced"]:
        package = package_of(where.rsplit(":", 1)[0])
        per[package] = per.get(package, 0) + size
        lines[ours] = lines.get(ours, 0) + size
    traced = sum(per.values())
    print(
        f"\ntracemalloc, `oomguard run` ({mode}) once ready: {traced / 2**20:.1f} MiB of "
        "Python heap traced, by the package whose code allocated it (module code and "
        "classes included)"
    )
    print(f"| {'package':<28} | {'MiB':>6} |")
    print(f"|{'-' * 30}|{'-' * 8}|")
    for package, size in sorted(per.items(), key=lambda kv: -kv[1])[:top]:
        print(f"| {package:<28} | {size / 2**20:>6.2f} |")
    print("\nthe same heap by the oomguard line that led to it (imports included):")
    for where, size in sorted(lines.items(), key=lambda kv: -kv[1])[:top]:
        short = "oomguard/" + where.split("/oomguard/")[-1] if "/oomguard/" in where else where
        print(f"  {size / 2**20:>6.2f} MiB  {short}")


def cli_imports(python: str) -> None:
    """What every command pays before it runs: `import oomguard.cli`."""
    env = image_env()
    code = (
        "import sys, time; t = time.process_time(); import oomguard.cli; "
        "rss = [x for x in open('/proc/self/status') if x.startswith('VmRSS:')][0].split()[1]; "
        "print(time.process_time() - t, rss, "
        "len(sys.modules), 'pydantic_settings' in sys.modules, 'kubernetes' in sys.modules)"
    )
    rows = []
    for _ in range(5):
        out = subprocess.run(
            [python, "-c", code],
            env=env,
            cwd="/",
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        rows.append(out)
    cpu = statistics.median(float(r[0]) for r in rows)
    rss = statistics.median(int(r[1]) for r in rows) / 1024
    print(
        f"\n`import oomguard.cli` (every command): {cpu * 1000:.0f} ms CPU, RSS "
        f"{rss:.1f} MiB, {rows[0][2]} modules; pydantic_settings {rows[0][3]}, "
        f"kubernetes {rows[0][4]} (median of 5)"
    )


def install(src: Path, into: Path) -> str:
    """The image's install of `src` (its Dockerfile): a virtual environment without pip
    (the image removes pip and setuptools), `pip install` into it from outside. Returns
    its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(into)], check=True)
    python = str(into / "bin" / "python")
    # A copy without build leftovers: pip builds from a clean tree.
    tree = into.parent / "src"
    shutil.copytree(
        src, tree, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info", ".git")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(tree),
        ],
        check=True,
    )
    shutil.rmtree(tree)
    return python


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--src", type=Path, help="run the package from this tree")
    parser.add_argument("--top", type=int, default=12, help="rows in each breakdown table")
    parser.add_argument("--no-breakdown", action="store_true")
    args = parser.parse_args()
    modes = MODES if args.mode == "both" else (args.mode,)
    with tempfile.TemporaryDirectory() as installed:
        args.python = install(args.src or REPO, Path(installed) / "venv")
        report(args, modes)


def report(args: argparse.Namespace, modes: tuple[str, ...]) -> None:
    print(
        f"oomguard run footprint: {PODS} pods on the node, test API server on 127.0.0.1, "
        f"{args.runs} runs per mode, idle {args.idle_s:.0f} s; loadavg at start {loadavg()}"
    )
    header = (
        f"| {'mode':<10} | {'RSS ready MiB':>13} | {'RSS idle MiB':>12} | {'anon MiB':>8} | "
        f"{'start CPU s':>11} | {'idle CPU %':>10} | {'threads':>7} |"
    )
    rows = []
    for mode in modes:
        samples = [measure(mode, args.idle_s, args.python) for _ in range(args.runs)]

        def med(field: str, s: list[Sample] = samples) -> float:
            return statistics.median(getattr(x, field) for x in s)

        rows.append(
            f"| {mode:<10} | {med('rss_ready_mib'):>13.1f} | {med('rss_idle_mib'):>12.1f} | "
            f"{med('anon_idle_mib'):>8.1f} | {med('start_cpu_s'):>11.2f} | "
            f"{med('idle_cpu_pct'):>10.3f} | {med('threads'):>7.0f} |"
        )
        spread = ", ".join(f"{s.start_cpu_s:.2f} s/{s.idle_cpu_pct:.3f} %" for s in samples)
        rows.append(f"|   runs: start CPU/idle CPU {spread}")
    print(header)
    print(f"|{'-' * 12}|{'-' * 15}|{'-' * 14}|{'-' * 10}|{'-' * 13}|{'-' * 12}|{'-' * 9}|")
    print("\n".join(rows))
    print(f"loadavg at end {loadavg()}")
    print(
        "targets (in-cluster, as a DaemonSet runs): RSS <= 40 MiB, start CPU <= 0.3 s, "
        "idle CPU <= 0.05 %"
    )
    if not args.no_breakdown:
        cli_imports(args.python)
        for mode in modes:
            breakdown(mode, args.python, args.top, args.idle_s)


if __name__ == "__main__":
    main()
