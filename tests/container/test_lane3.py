"""Lane 3: the agent's image in a real container, with the chart's privileges.

The image is built from the Dockerfile (podman + runc, a Debian base made here); each
container gets exactly the securityContext, user, volumes, arguments and environment
of the DaemonSet that `helm template` renders (tests/container/podspec.py). Inside it,
real OOM kills in kubepods-shaped cgroups below the test's own memory cgroup must be
reported with their victim named, through syslog(2) (an unprivileged container cannot
open /dev/kmsg); `oomguard run` must become Ready against the test API server and
deliver the kill's Event, and raise a foreign-uid process's oom_score_adj.

What the test adds to the manifest's flags is only what stands in for a node: the
kubeconfig for the ServiceAccount, `--cgroup-root` for the test's own tree, and a
metrics address on loopback (the chart's 0.0.0.0:9753 would open a port on the host,
which has no pod network here); argparse takes the last of a repeated flag, so the
chart's own arguments stay as rendered, in front.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from oomguard.cgroups.scratch import MIB, ScratchTree
from oomguard.k8s.events import REASON_LIMIT
from tests.cluster.apiserver import EVENTS, ApiServer
from tests.cluster.test_agent_process import one_container_pod
from tests.container import image as lane_image
from tests.container.conftest import NODE, Container, ContainerFactory, LaneImage

NS = "shop"
FOREIGN_UID = 12345  # a user no process of the test or the agent runs as
KUBECONFIG_IN_CONTAINER = "/var/run/secrets/oomguard-lane3/kubeconfig"
# The memory hierarchy mounted read-only on its own: the chart's read-only bind of
# /sys/fs/cgroup is not recursive, so without this its v1 submounts stay writable.
READ_ONLY_MEMORY = "--volume=/sys/fs/cgroup/memory:/sys/fs/cgroup/memory:ro"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def container_cgroup(tree: ScratchTree) -> tuple[str, str, str]:
    """A kubepods-shaped container cgroup (32 MiB): (cgroup, pod uid, container id)."""
    pod_uid, container_id = str(uuid.uuid4()), secrets.token_hex(32)
    cgroup = tree.make(f"kubepods/burstable/pod{pod_uid}/{container_id}", limit_bytes=32 * MIB)
    return cgroup, pod_uid, container_id


def oom_kill(tree: ScratchTree, cgroup: str, name: str) -> tuple[int, float]:
    """One real OOM kill in `cgroup`: the victim's pid and when the test saw it die."""
    hog = tree.start_hog(cgroup, name)
    assert hog.wait(timeout=30) == -signal.SIGKILL
    return hog.pid, time.monotonic()


def record_of(
    container: Container, pid: int, timeout_s: float = 30.0
) -> tuple[dict[str, Any], float]:
    """The `watch --json` record of the kill of `pid`, and when the test saw it."""

    def found() -> dict[str, Any] | None:
        return next((r for r in container.json_lines() if r.get("pid") == pid), None)

    record = container.wait_for(f"a record of pid {pid}", found, timeout_s)
    return record, time.monotonic()


def start_line(container: Container) -> str:
    """`watch`'s start line on stderr (printed once it watches)."""

    def found() -> str | None:
        return next((ln for ln in container.stderr().splitlines() if " watching " in ln), None)

    line: str = container.wait_for("the start line", found)
    return line


def report(figures: dict[str, object]) -> None:
    """Print figures for the lane's log (pytest -rA shows them)."""
    print("lane 3: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# ----- the image -----------------------------------------------------------------------


def test_image_keeps_nothing_lent_and_ships_only_the_agent(lane3_image: LaneImage) -> None:
    assert lane_image.secrets_left_in(lane3_image.id, lane3_image.loan) == []
    with lane_image.mounted(lane3_image.id) as root:
        (site,) = (root / "opt" / "oomguard" / "lib").glob("python3.*/site-packages")
        shipped = {path.name for path in site.iterdir()}
        assert "oomguard" in shipped and "kubernetes" in shipped
        # Dropped in the build: the installer and the unused asyncio client.
        assert not shipped & {"pip", "setuptools", "pkg_resources"}, sorted(shipped)
        assert not (site / "kubernetes" / "aio").exists()
        venv_bytes = sum(path.lstat().st_size for path in (root / "opt" / "oomguard").rglob("*"))
    report(
        {
            "image_MB": round(lane3_image.size_bytes / 1e6),
            "venv_MB": round(venv_bytes / 1e6),
            **{k: round(v, 1) for k, v in lane3_image.timings.items()},
            "lent_pip_settings": sorted(lane3_image.loan.lent),
        }
    )


# The container's view of its own privileges and mounts, printed as JSON.
PROBE = r"""
import errno, json, os
def caps():
    for line in open("/proc/self/status"):
        if line.startswith(("CapEff:", "NoNewPrivs:", "Seccomp:")):
            key, value = line.split(":")
            yield key, value.strip()
def read_only(path):
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
def write_error(path):
    try:
        with open(path, "w") as f:
            f.write("0")
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return None
def open_error(path):
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return None
print(json.dumps({
    **dict(caps()),
    "uid": os.getuid(), "gid": os.getgid(),
    "root_ro": read_only("/"),
    "cgroup_ro": read_only("/sys/fs/cgroup"),
    "memory_ro": read_only("/sys/fs/cgroup/memory"),
    "event_control": write_error("/sys/fs/cgroup/memory/cgroup.event_control"),
    "kmsg": open_error("/dev/kmsg"),
    "state_ro": read_only("/var/lib/oomguard"),
    "tmp_ro": read_only("/tmp"),
}))
"""

CAP_BITS = {"DAC_OVERRIDE": 1, "SYS_RESOURCE": 24, "SYSLOG": 34}


def _probe(containers: ContainerFactory, tmp_path: Path, *extra: str) -> dict[str, Any]:
    run = containers.spec(tmp_path / "state")
    box = containers.start(run, ["-c", PROBE], ["--entrypoint=python3", *extra])
    box.proc.wait(timeout=60)
    assert box.proc.returncode == 0, box.stderr()
    result: dict[str, Any] = json.loads(box.stdout())
    return result


def test_the_container_has_the_charts_privileges_and_mounts(
    containers: ContainerFactory, tmp_path: Path
) -> None:
    seen = _probe(containers, tmp_path)
    effective = int(seen["CapEff"], 16)
    granted = {name for name, bit in CAP_BITS.items() if effective >> bit & 1}
    # Exactly what the chart adds, less SYS_RESOURCE where the host's bounding set lacks
    # it (runc drops it silently on this VM; lane 2 covers lowering oom_score_adj).
    assert effective & ~sum(1 << bit for bit in CAP_BITS.values()) == 0, seen["CapEff"]
    assert {"DAC_OVERRIDE", "SYSLOG"} <= granted
    assert (seen["uid"], seen["gid"], seen["NoNewPrivs"], seen["Seccomp"]) == (0, 0, "1", "2")
    assert seen["root_ro"] and seen["cgroup_ro"]
    assert not seen["state_ro"] and not seen["tmp_ro"]
    # The device cgroup refuses /dev/kmsg to an unprivileged container.
    assert seen["kmsg"] == "EPERM"
    # The chart's read-only bind of /sys/fs/cgroup is not recursive: on v1 the memory
    # controller's submount stays writable (eventfds can be registered).
    assert not seen["memory_ro"]
    assert seen["event_control"] != "EROFS"

    truly = _probe(containers, tmp_path / "ro", READ_ONLY_MEMORY)
    assert truly["memory_ro"] and truly["event_control"] == "EROFS"


# ----- oomguard watch ------------------------------------------------------------------


def test_watch_in_the_container_names_the_victim_through_syslog(
    containers: ContainerFactory, tree: ScratchTree, tmp_path: Path
) -> None:
    run = containers.spec(tmp_path / "state")
    box = containers.start(run, ["watch", "--json", "--cgroup-root", str(tree.top)])
    line = start_line(box)
    # Which kernel log source, and why not /dev/kmsg.
    assert "syslog(2)" in line and "/dev/kmsg" in line and "not permitted" in line, line

    cgroup, pod_uid, container_id = container_cgroup(tree)
    pid, died = oom_kill(tree, cgroup, "lane3-hog")
    record, seen = record_of(box, pid)
    assert record["command"] == "lane3-hog" and record["victim_known"] is True
    assert record["source"] == "syslog"
    assert record["constraint"] == "container"
    assert (record["pod_uid"], record["container_id"]) == (pod_uid, container_id)
    assert record["cgroup"] == cgroup
    report(
        {
            "watch_detection_latency_ms": record["detection_latency_ms"],
            "seen_after_death_ms": round((seen - died) * 1000, 1),
        }
    )


def test_watch_with_the_memory_hierarchy_truly_read_only_reports_at_once(
    containers: ContainerFactory, tree: ScratchTree, tmp_path: Path
) -> None:
    """No eventfd can be registered: the kill still reaches its record within 1 s.

    Measured by the record's own fields (the kernel line's time to the record), after
    waiting long enough for the 60 s rescan to have reported it late.
    """
    run = containers.spec(tmp_path / "state")
    box = containers.start(
        run, ["watch", "--json", "--cgroup-root", str(tree.top)], [READ_ONLY_MEMORY]
    )
    line = start_line(box)
    assert "syslog(2)" in line, line

    cgroup, pod_uid, _ = container_cgroup(tree)
    pid, died = oom_kill(tree, cgroup, "lane3-ro-hog")
    record, seen = record_of(box, pid, timeout_s=90)
    report(
        {
            "read_only_detection_latency_ms": record["detection_latency_ms"],
            "read_only_seen_after_death_ms": round((seen - died) * 1000, 1),
        }
    )
    assert record["command"] == "lane3-ro-hog" and record["victim_known"] is True
    assert record["pod_uid"] == pod_uid and record["cgroup"] == cgroup
    assert record["source"] == "syslog"
    assert record["detection_latency_ms"] is not None
    assert record["detection_latency_ms"] <= 1000, record


def test_watch_truly_read_only_with_earlier_kills_in_the_log_names_the_next_victim(
    containers: ContainerFactory, tree: ScratchTree, tmp_path: Path
) -> None:
    """As on a real node, the kernel log already holds kill reports when the agent starts.

    Ten kills in the watched tree before `watch` starts (their reports are in the log
    syslog(2) reads back at start), then one after: that one must still be reported at
    once with its victim named, not only as a counter increase at the 60 s rescan.
    """
    for index in range(10):
        earlier, _, _ = container_cgroup(tree)
        oom_kill(tree, earlier, f"earlier-{index}")
    run = containers.spec(tmp_path / "state")
    box = containers.start(
        run, ["watch", "--json", "--cgroup-root", str(tree.top)], [READ_ONLY_MEMORY]
    )
    start_line(box)

    cgroup, pod_uid, _ = container_cgroup(tree)
    pid, _ = oom_kill(tree, cgroup, "lane3-next")
    record, _ = record_of(box, pid, timeout_s=90)
    assert record["command"] == "lane3-next" and record["pod_uid"] == pod_uid
    assert record["detection_latency_ms"] is not None
    assert record["detection_latency_ms"] <= 1000, record


# ----- oomguard run --------------------------------------------------------------------


def _apply_pod(apiserver: ApiServer, name: str, pod_uid: str, container_id: str) -> None:
    # Raising is what any pod may ask for (no trusted namespace needed).
    sacrifice = {"oomguard.io/sacrifice": "true"}
    apiserver.apply(
        one_container_pod(
            name, pod_uid, container_id, node=NODE, namespace=NS, annotations=sacrifice
        )
    )


def _get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0  # not listening yet


def test_run_in_the_container_is_ready_steers_and_delivers_the_event(
    containers: ContainerFactory, tree: ScratchTree, tmp_path: Path
) -> None:
    with ApiServer(host="127.0.0.1", port=0, bookmark_interval_s=0.5) as apiserver:
        kubeconfig = apiserver.write_kubeconfig(tmp_path / "kubeconfig")
        cgroup, pod_uid, container_id = container_cgroup(tree)
        _apply_pod(apiserver, "cart-1", pod_uid, container_id)
        # A process of another user in the pod's container: only DAC_OVERRIDE lets the
        # agent (root) write its /proc/PID/oom_score_adj.
        sleeper = subprocess.Popen(
            ["sleep", "3600"], user=FOREIGN_UID, group=FOREIGN_UID, stdin=subprocess.DEVNULL
        )
        try:
            (tree.hierarchy.fs_path(cgroup) / "cgroup.procs").write_text(str(sleeper.pid))
            adj = Path(f"/proc/{sleeper.pid}/oom_score_adj")
            assert adj.read_text().strip() == "0"

            run = containers.spec(tmp_path / "state")
            port = free_port()
            args = [
                *run.args,
                f"--kubeconfig={KUBECONFIG_IN_CONTAINER}",
                f"--cgroup-root={tree.top}",
                f"--metrics-address=127.0.0.1:{port}",
            ]
            box = containers.start(
                run, args, [f"--volume={kubeconfig}:{KUBECONFIG_IN_CONTAINER}:ro"]
            )
            ready = run.probes["readinessProbe"]
            box.wait_for("Ready", lambda: _get(port, ready.path) == 200, timeout_s=90)
            log = box.stderr() + box.stdout()
            assert any(
                "syslog(2)" in line and "not permitted" in line for line in log.splitlines()
            ), log[-3000:]

            box.wait_for(
                "oom_score_adj 1000 on the foreign-uid process",
                lambda: adj.read_text().strip() == "1000",
                timeout_s=30,
            )

            pid, _ = oom_kill(tree, cgroup, "lane3-worker")

            def event() -> dict[str, Any] | None:
                return next(
                    (
                        ev
                        for ev in apiserver.objects(EVENTS, NS)
                        if ev["involvedObject"].get("uid") == pod_uid
                        and ev["reason"] == REASON_LIMIT
                    ),
                    None,
                )

            delivered = box.wait_for("the kill's Event", event, timeout_s=30)
            assert "lane3-worker" in delivered["message"] and str(pid) in delivered["message"]
            assert delivered["type"] == "Warning"
            assert delivered["involvedObject"]["name"] == "cart-1"

            # The agent's peak memory in its container's cgroup (the chart's limit: 256Mi).
            (peak,) = tree.hierarchy.fs_path(containers.parents[-1].path).glob(
                "libpod-*/memory.max_usage_in_bytes"
            )
            report({"run_container_peak_memory_MiB": int(peak.read_text()) // MIB})
            # SIGTERM, as the kubelet stops it: a clean exit within the grace period.
            box.close()
            assert box.proc.returncode == 0, box.stderr()[-3000:]
        finally:
            sleeper.kill()
            sleeper.wait(timeout=10)
