"""The state directory full (ENOSPC) or read-only while the agent runs (issue 9, faults).

A real tmpfs of 64 KiB mounted by the test as the agent's --state-dir, filled up or
remounted read-only; real OOM kills (lane 1) to Events on the test API server. What a
user must see: every kill still becomes its Event (from memory), the log says so once
(not once per write), `oomguard_state_write_errors_total` counts the failed writes, and
once space returns the next write works, the log says so, and a restart on that state
directory resends nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from oomguard.cgroups.scratch import MIB, ScratchTree
from tests.cluster.apiserver import EVENTS, ApiServer
from tests.cluster.test_agent import NS, app_pod, hierarchy, wait_for

pytestmark = pytest.mark.system

__all__ = ["hierarchy"]  # a fixture used here (make_agent comes from conftest)


@pytest.fixture
def state_mount(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs at the agent's state directory, unmounted afterwards."""
    state = tmp_path / "state"
    state.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(state)],
            check=True,
            capture_output=True,
        )
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"cannot mount a tmpfs here: {error}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of the filesystem holding `directory`."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while os.write(fd, b"\0" * 1024):
                pass
    finally:
        os.close(fd)
    return filler


def remount(state: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(state)], check=True)


def counter(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not on /metrics")


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_state_dir_fault_loses_no_event_says_it_once_and_recovers(
    apiserver: ApiServer,
    make_agent: Callable[..., Any],
    tree: ScratchTree,
    state_mount: Path,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    apiserver.apply(app_pod(uid, cid))
    container = tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=48 * MIB)

    def kill_and_wait_for_count(count: int) -> None:
        hog = tree.start_hog(container, "cart-worker")
        assert hog.wait(timeout=30) == -9

        def delivered() -> bool:
            events = apiserver.objects(EVENTS, NS)
            return len(events) == 1 and events[0].get("count") == count

        wait_for(delivered)

    with caplog.at_level(logging.INFO), make_agent() as agent:
        wait_for(lambda: agent.ready()[0])
        port = agent._server.port if agent._server else 0
        filler = fill(state_mount) if fault == "full" else None
        if fault == "read-only":
            remount(state_mount, "ro")

        # Two kills while nothing can be written: both delivered, from memory.
        kill_and_wait_for_count(1)
        kill_and_wait_for_count(2)
        assert agent.state_writes.failing
        failures = messages(caplog, "cannot write")
        assert len(failures) == 1, failures  # said once, not once per write
        assert "No space left" in failures[0] if fault == "full" else "Read-only" in failures[0]
        assert "Events are still delivered" in failures[0]
        assert wait_for(lambda: counter(port, "oomguard_state_write_errors_total") >= 2)

        # Space returns: the next turn writes the queue, and the log says so.
        if filler is not None:
            filler.unlink()
        else:
            remount(state_mount, "rw")
        wait_for(lambda: messages(caplog, "written again"))
        assert not agent.state_writes.failing
        kill_and_wait_for_count(3)  # and the files follow again (the kill's handed-on mark)
        wait_for(lambda: not agent.events._unsaved)
    assert len(messages(caplog, "cannot write")) == 1

    # A restart on that directory resumes from what was written after the recovery:
    # nothing is delivered twice, nothing set aside.
    with make_agent() as again:
        wait_for(lambda: again.ready()[0])
        again.step(max_wait_s=0.1)
        assert again.events.pending_kills() == 0
        assert again.events.counters.state_files_set_aside == 0
    (event,) = apiserver.objects(EVENTS, NS)
    assert event["count"] == 3
    assert not list(state_mount.rglob("*.corrupt-*")) and not list(state_mount.rglob(".*.tmp-*"))
