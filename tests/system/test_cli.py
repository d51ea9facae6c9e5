"""The public CLI as a user runs it: real processes, real kills, real output."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import uuid

import pytest

from oomguard.cgroups.scratch import MIB, ScratchTree
from tests.watch_process import next_kill_line

pytestmark = pytest.mark.system

WATCH_FIELDS = {
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
}
TOP_FIELDS = {
    "pid",
    "command",
    "oom_score",
    "oom_score_adj",
    "rss_bytes",
    "cgroup",
    "container_id",
    "pod_uid",
    "qos",
}


def _oomguard(*args: str) -> list[str]:
    return [sys.executable, "-m", "oomguard.cli", *args]


def test_watch_json_prints_one_line_per_kill(tree: ScratchTree) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    container = tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=48 * MIB)
    proc = subprocess.Popen(
        _oomguard("watch", "--json", "--cgroup-root", str(tree.top)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        banner = proc.stderr.readline()  # printed once the baseline is taken
        assert "watching" in banner, banner
        hog = tree.start_hog(container, "memhog")
        assert hog.wait(timeout=30) == -9
        line = next_kill_line(proc.stdout)  # flushed per kill: no need to stop first
        record = json.loads(line)
        assert record.keys() >= WATCH_FIELDS
        assert record["kind"] == "oom_kill"
        assert record["pid"] == hog.pid
        assert record["command"] == "memhog"
        assert record["container_id"] == cid
        assert record["pod_uid"] == uid
        assert record["qos"] == "burstable"
        assert record["constraint"] == "container"
        assert record["time"].endswith("Z")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
    assert rc == 0


def test_watch_human_output_names_victim_and_container(tree: ScratchTree) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    container = tree.make(f"kubepods/besteffort/pod{uid}/{cid}", limit_bytes=48 * MIB)
    proc = subprocess.Popen(
        _oomguard("watch", "--cgroup-root", str(tree.top)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        proc.stderr.readline()
        hog = tree.start_hog(container, "memhog")
        hog.wait(timeout=30)
        line = next_kill_line(proc.stdout)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    assert f"pid {hog.pid} (memhog)" in line
    assert cid[:12] in line and uid in line
    assert "own memory limit" in line


def test_demo_catches_a_real_kill() -> None:
    if os.geteuid() != 0:
        pytest.skip("the demo needs root")
    result = subprocess.run(_oomguard("demo"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: caught and attributed" in result.stdout
    record = json.loads(next(x for x in result.stdout.splitlines() if x.startswith("{")))
    assert record["command"] == "memhog"
    assert record["constraint"] == "container"
    with open("/proc/self/cgroup") as f:
        own = f.read()
    assert "oomguard-demo" not in own
    # The scratch cgroup is gone.
    for line in own.splitlines():
        if ":memory:" in line:
            base = "/sys/fs/cgroup/memory" + line.split(":", 2)[2]
            assert not [d for d in os.listdir(base) if d.startswith("oomguard-demo")]


def test_top_json_lists_container_processes(tree: ScratchTree) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    container = tree.make(f"kubepods/burstable/pod{uid}/{cid}")
    low = tree.start_sleeper(container, "calm")
    high = tree.start_sleeper(container, "volunteer")
    with open(f"/proc/{high.pid}/oom_score_adj", "w") as f:
        f.write("900")
    result = subprocess.run(
        _oomguard("top", "--json", "--cgroup-root", str(tree.top), "-n", "5"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["pid"] for r in rows] == [high.pid, low.pid]  # next victim first
    for r in rows:
        assert r.keys() >= TOP_FIELDS
        assert r["container_id"] == cid and r["pod_uid"] == uid and r["qos"] == "burstable"
    assert rows[0]["oom_score_adj"] == 900 and rows[0]["oom_score"] > rows[1]["oom_score"]


def test_missing_cgroup_root_is_one_sentence() -> None:
    result = subprocess.run(
        _oomguard("watch", "--cgroup-root", "/nonexistent/oomguard-test"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("oomguard: ")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_without_root_demo_says_so_in_one_sentence() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    # Import as root (the interpreter may live in root's home), then drop to nobody
    # before the command runs: what a user without root privileges would see. Some
    # modules load only when their command runs (watch: its warning thread).
    script = (
        "import os, sys, oomguard.cli, oomguard.demo, oomguard.top, oomguard.warn.watcher\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "sys.exit(oomguard.cli.main(sys.argv[1:]))\n"
    )
    for args in (["demo"], ["watch", "--json"]):
        result = subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("oomguard: "), result.stderr
        assert "root" in lines[0]


def test_run_with_a_bad_setting_is_one_sentence_naming_the_flag() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OOMGUARD_")}
    env["OOMGUARD_POD_WAIT_S"] = "-1"
    result = subprocess.run(
        _oomguard("run", "--node-name", "n", "--event-window-s", "0"),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "oomguard: --event-window-s: Input should be greater than 0; "
        "--pod-wait-s: Input should be greater than or equal to 0\n"
    )
