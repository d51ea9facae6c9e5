"""Kill times as `oomguard watch` stamps them in production: no calibration, after idle.

The agent never writes a probe to the kernel log (it cannot, in its unprivileged
container): it must put the kernel's stamps on the wall clock from what its own reads
show. The kernel's clock and ours are compared after the agent has been left idle,
which is when a node sees its kills (hours apart), and through both kernel log readers.
"""

from __future__ import annotations

import json
import secrets
import signal
import time
import uuid
from datetime import datetime

import pytest

from oomguard.cgroups.scratch import MIB, ScratchTree
from tests.watch_process import next_kill_line, start_watch

pytestmark = pytest.mark.system

# Long enough that the old estimate (the middle of a bracket whose lower side is the
# last read before the idle gap) was seconds off; short enough for the test lane.
IDLE_S = 12.0
# The kill line is printed, then the victim dies and its parent (this test) reaps it:
# the record's time is before the reap by the exit's few milliseconds. The bound is
# generous for a loaded 2-core machine; the error it catches grew with the idle gap
# (6 s after 12 s idle).
TOLERANCE_S = 1.0


@pytest.mark.parametrize("kernel_log", ["kmsg", "syslog"])
def test_kill_time_after_idle_is_the_kill_time(tree: ScratchTree, kernel_log: str) -> None:
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    container = tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=48 * MIB)
    proc = start_watch(tree, kernel_log)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        banner = proc.stderr.readline()
        assert "watching" in banner, banner
        time.sleep(IDLE_S)  # the agent idles; nothing is printed by us meanwhile
        hog = tree.start_hog(container, "memhog")
        assert hog.wait(timeout=30) == -9
        reaped = time.time()
        record = json.loads(next_kill_line(proc.stdout))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    assert record["pid"] == hog.pid
    assert record["source"] == kernel_log
    stamped = datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()
    assert reaped - TOLERANCE_S < stamped <= reaped + 0.05, (
        f"record time {record['time']} is {reaped - stamped:+.3f} s before the victim's "
        f"parent saw it die"
    )
    # The delay the record claims is the delay from the kill line to the record: it
    # cannot exceed the time from the kill to our reading of the record.
    assert record["detection_latency_ms"] < (time.time() - stamped) * 1000 + 50
