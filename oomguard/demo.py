"""`oomguard demo`: cause one real OOM kill in a scratch cgroup and catch it.

The scratch container is shaped like a Kubernetes one (cgroupfs layout on v1, the
systemd layout on v2) so the record shows the same attribution a node would: QoS,
pod UID, container id. Exit 0 only when the kill was caught and attributed.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from typing import TextIO

from oomguard.cgroups.hierarchy import CgroupVersion, detect_memory_hierarchy
from oomguard.cgroups.scratch import MIB, ScratchTree
from oomguard.detect.loop import OomWatcher
from oomguard.kernel.clock import kernel_clock_offset_us
from oomguard.output import human_line, json_line
from oomguard.records import OomKill

DEMO_LIMIT_BYTES = 64 * MIB
DEMO_TIMEOUT_S = 60.0


def container_relpath(version: CgroupVersion, pod_uid: str, container_id: str) -> str:
    if version is CgroupVersion.V1:
        return f"kubepods/burstable/pod{pod_uid}/{container_id}"
    u = pod_uid.replace("-", "_")
    return (
        "kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{u}.slice/cri-containerd-{container_id}.scope"
    )


def run_demo(out: TextIO) -> int:
    hierarchy = detect_memory_hierarchy()
    pod_uid = str(uuid.uuid4())
    container_id = secrets.token_hex(32)
    kills: list[OomKill] = []
    handed_out: list[float] = []  # CLOCK_MONOTONIC when each record came out

    def on_kill(kill: OomKill) -> None:
        handed_out.append(time.monotonic())
        kills.append(kill)

    with ScratchTree(hierarchy, f"oomguard-demo-{os.getpid()}") as tree:
        rel = container_relpath(hierarchy.version, pod_uid, container_id)
        container = tree.make(rel, limit_bytes=DEMO_LIMIT_BYTES)
        print(
            f"cgroup v{hierarchy.version.value}: made {container} "
            f"with a {DEMO_LIMIT_BYTES // MIB} MiB limit",
            file=out,
        )
        # As `watch` runs it: the kernel log's clock learnt from the reads, no probe.
        watcher = OomWatcher(hierarchy, tree.top, on_kill)
        watcher.start()
        if watcher.kernel_log_error:
            print(f"note: {watcher.kernel_log_error}", file=out)
        try:
            hog = tree.start_hog(container, "memhog")
            print(f"started memhog (pid {hog.pid}); waiting for the kernel to kill it", file=out)
            deadline = time.monotonic() + DEMO_TIMEOUT_S
            while not kills and time.monotonic() < deadline:
                watcher.poll_once(max_wait_s=0.2)
            hog.wait(timeout=10)
        finally:
            watcher.close()
    if not kills:
        print(f"FAILED: no OOM kill was caught within {DEMO_TIMEOUT_S:.0f} s", file=out)
        return 1
    kill = kills[0]
    print(human_line(kill), file=out)
    print(json_line(kill), file=out)
    attributed = (
        kill.identity.container_id == container_id
        and kill.identity.pod_uid == pod_uid
        and (kill.pid is None or kill.pid == hog.pid)
    )
    if kill.detection_latency_ms is not None:
        print(f"detected {kill.detection_latency_ms:.1f} ms after the kernel's kill line", file=out)
        # A second opinion that `watch` cannot have: a probe written to /dev/kmsg (root
        # only) puts the kernel's stamp on our clock directly.
        offset_us = kernel_clock_offset_us()
        if offset_us and kill.kernel_time_us is not None:
            measured = (handed_out[0] - (kill.kernel_time_us + offset_us) / 1e6) * 1000
            print(f"  ({measured:.1f} ms measured against a probe written to /dev/kmsg)", file=out)
    print(f"hog exit status: {hog.returncode} (-9 is SIGKILL from the OOM killer)", file=out)
    if not attributed:
        print("FAILED: the kill was caught but not attributed to the demo container", file=out)
        return 1
    print("OK: caught and attributed; scratch cgroup removed", file=out)
    return 0
