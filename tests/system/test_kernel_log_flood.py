"""A kernel log flood with kills inside it (node-problem-detector #1168): none is lost.

50,000 ordinary lines in a few seconds (a USB reset loop, a noisy driver) overrun the
kernel's ring buffer many times over. Kills printed in the middle of it must each come
out as one record with the victim named, through /dev/kmsg and through syslog(2). The
CPU it costs is a benchmark's business (bench/kernel_log_flood.py).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
import uuid
from multiprocessing import Process

import pytest

from oomguard.cgroups.scratch import MIB, ScratchTree
from tests.system.klog_flood import start_flood
from tests.watch_process import next_kill_line, start_watch

pytestmark = pytest.mark.system

KILLS = 3


@pytest.mark.parametrize("kernel_log", ["kmsg", "syslog"])
def test_every_kill_inside_a_kernel_log_flood_is_reported(
    tree: ScratchTree, kernel_log: str
) -> None:
    if not os.access("/dev/kmsg", os.W_OK):
        pytest.skip("writing the flood needs write access to /dev/kmsg")
    containers = [
        tree.make(
            f"kubepods/burstable/pod{uuid.uuid4()}/{secrets.token_hex(32)}", limit_bytes=48 * MIB
        )
        for _ in range(KILLS)
    ]
    agent = start_watch(tree, kernel_log)
    writers: list[Process] = []
    try:
        assert agent.stderr is not None and agent.stdout is not None
        assert "watching" in agent.stderr.readline()
        writers = start_flood()
        victims = []
        for container in containers:
            time.sleep(0.3)  # spread over the flood
            hog = tree.start_hog(container, "floodhog")
            assert hog.wait(timeout=60) == -9
            victims.append(hog.pid)
        records = [json.loads(next_kill_line(agent.stdout)) for _ in victims]
    finally:
        for w in writers:
            w.join(timeout=120)
            if w.is_alive():
                w.kill()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
    assert all(w.exitcode == 0 for w in writers)
    assert sorted(r["pid"] for r in records) == sorted(victims)
    assert {r["command"] for r in records} == {"floodhog"}
    assert {r["source"] for r in records} == {kernel_log}
