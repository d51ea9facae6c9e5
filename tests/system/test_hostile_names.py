"""A process that names itself with terminal escapes, shown by the real CLI (lane 1).

Any process may write 15 bytes of its choice to /proc/self/comm. Printed raw, the name
below clears the screen of whoever runs `oomguard top` (no OOM kill needed) and
retitles their window; `watch` would print it for each kill. People must see it
escaped; scripts (`--json`) get it as it is.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import uuid

import pytest

from oomguard.cgroups.scratch import MIB, ScratchTree
from tests.watch_process import next_kill_line

pytestmark = pytest.mark.system

# Clear screen, set the window title (OSC ... BEL), a byte that is not UTF-8, rewind.
HOSTILE_COMM = b"\x1b[2J\x1b]0;\xff\x07\rX"
SHOWN = "\\x1b[2J\\x1b]0;\\xff\\x07\\rX"  # as the escaping rule prints it
AS_JSON = "\x1b[2J\x1b]0;\ufffd\x07\rX"  # the raw name; the byte that is not UTF-8 as U+FFFD
# Terminal control bytes that must never reach a person's terminal.
CONTROLS = ("\x1b", "\x07", "\r", "\x9b")

# Renames itself through /proc/self/comm with the exact bytes of argv[1], then either
# sleeps or, once told on stdin, grows until the kernel kills it.
RENAMED_SOURCE = r"""
import os, sys, time
with open("/proc/self/comm", "wb") as f:
    f.write(os.fsencode(sys.argv[1]))
sys.stdout.write("ready\n"); sys.stdout.flush()
if sys.stdin.readline().strip() == "grow":
    hoard = []
    while True:
        chunk = bytearray(1 << 20)
        for i in range(0, len(chunk), 4096):
            chunk[i] = 1
        hoard.append(chunk)
time.sleep(3600)
"""


def _oomguard(*args: str) -> list[str]:
    return [sys.executable, "-m", "oomguard.cli", *args]


def _renamed(tree: ScratchTree, cgroup: str) -> subprocess.Popen[bytes]:
    proc = tree.spawn(cgroup, RENAMED_SOURCE, HOSTILE_COMM.decode("utf-8", "surrogateescape"))
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    with open(f"/proc/{proc.pid}/comm", "rb") as f:
        assert f.read() == HOSTILE_COMM + b"\n"  # the kernel took every byte
    return proc


def _container(tree: ScratchTree, limit_bytes: int | None = None) -> str:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    return tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=limit_bytes)


def test_top_prints_a_hostile_name_escaped(tree: ScratchTree) -> None:
    proc = _renamed(tree, _container(tree))
    result = subprocess.run(
        _oomguard("top", "--cgroup-root", str(tree.top), "-n", "0"),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode("utf-8")  # strict: every byte printed is UTF-8
    (line,) = [x for x in out.splitlines() if x.split()[:1] == [str(proc.pid)]]
    assert line.endswith(" " + SHOWN)
    assert not any(c in out for c in CONTROLS), out


def test_top_json_keeps_the_raw_name(tree: ScratchTree) -> None:
    proc = _renamed(tree, _container(tree))
    result = subprocess.run(
        _oomguard("top", "--json", "--cgroup-root", str(tree.top), "-n", "0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (row,) = [r for r in json.loads(result.stdout) if r["pid"] == proc.pid]
    assert row["command"] == AS_JSON


def test_watch_prints_a_killed_hostile_name_escaped(tree: ScratchTree) -> None:
    # A real kill: the name travels through the kernel's report in /dev/kmsg.
    container = _container(tree, limit_bytes=48 * MIB)
    watch = subprocess.Popen(
        _oomguard("watch", "--cgroup-root", str(tree.top)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert watch.stderr is not None and watch.stdout is not None
        assert b"watching" in watch.stderr.readline()
        hog = _renamed(tree, container)
        assert hog.stdin is not None
        hog.stdin.write(b"grow\n")
        hog.stdin.flush()
        assert hog.wait(timeout=30) == -9
        raw = next_kill_line(watch.stdout)
    finally:
        watch.send_signal(signal.SIGTERM)
        watch.wait(timeout=10)
    line = raw.decode("utf-8")
    if "victim unknown" in line:
        pytest.skip("another kill on this host made the victim ambiguous (see conftest)")
    assert f"pid {hog.pid} ({SHOWN}) in container " in line
    assert not any(c in line for c in CONTROLS), line


def test_an_error_about_a_hostile_path_is_one_escaped_sentence() -> None:
    result = subprocess.run(
        _oomguard("watch", "--cgroup-root", "/nonexistent/\x1b[2J\n\rx"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == (
        "oomguard: --cgroup-root /nonexistent/\\x1b[2J\\n\\rx: no such directory\n"
    )
