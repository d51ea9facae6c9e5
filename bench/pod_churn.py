"""Pod churn: 10,000 pods through the node's pod cache in an hour; does memory come back?

Issue 9.5. The cache (`PodCache`, as `oomguard run` builds it) runs in a child process of
this script, so its RSS is its own; the test API server (tests/cluster/apiserver.py)
runs here, stores every pod and deletes it, and the child follows over its real list ->
watch on 127.0.0.1 with the official client. A node runs about a hundred pods at a time,
so pods come and go 100 at a time.

The hour: waiting it out would measure nothing more, so the cache's clock (injected, as
its settings allow) is moved on 360 s after each 1,000 pods, exactly as an hour of this
churn would move it; deleted pods leave the retention window (120 s) as they would.
Everything else (HTTP, JSON, events, indexes) runs as in production.

Printed after each 1,000 pods: the pods live and deleted-but-remembered in the cache,
the child's RSS, and its Python heap (`sys.getallocatedblocks()`: objects alive, which
a leak of anything per pod would grow by thousands). Then the same after the retention
window has passed at the end.

    python bench/pod_churn.py [--pods 10000] [--at-a-time 100]
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/pod_churn.py`: make `tests` importable
    sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from oomguard.k8s import KubeApi, PodCache, PodCacheSettings  # noqa: E402
from tests.cluster.apiserver import PODS, ApiServer  # noqa: E402
from tests.cluster.test_pod_churn import NODE, NS, churn_pod  # noqa: E402

HOUR_S = 3600.0


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(kubeconfig: str) -> None:
    """The cache, answering the parent's commands on stdin with JSON lines on stdout."""
    offset = [0.0]
    cache = PodCache(
        KubeApi.from_kubeconfig(Path(kubeconfig)),
        NODE,
        PodCacheSettings(),
        clock=lambda: time.monotonic() + offset[0],
    )
    cache.start()
    cache.synced.wait(30)
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "advance":
            offset[0] += float(arg)
            cache.lookup_pod("expire")  # lookups drop what left the retention window
        elif command == "quit":
            break
        gc.collect()
        sample = {
            "events": cache.counters.events,
            "sizes": cache.sizes(),
            "rss_kib": rss_kib(),
            "blocks": sys.getallocatedblocks(),
        }
        print(json.dumps(sample), flush=True)
    cache.stop()


class Child:
    def __init__(self, kubeconfig: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(kubeconfig)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, command: str = "sample") -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        sample: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return sample

    def wait_for_events(self, events: int, timeout_s: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while (sample := self.ask())["events"] < events:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cache saw {sample['events']} of {events} events")
            time.sleep(0.02)
        return sample

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def row(label: str, sample: dict[str, Any], base: dict[str, Any]) -> str:
    sizes = sample["sizes"]
    return (
        f"| {label} | {sizes['pods']} | {sizes['deleted']} | {sample['rss_kib'] / 1024:.1f} "
        f"| {(sample['rss_kib'] - base['rss_kib']) / 1024:+.1f} | {sample['blocks']:,} "
        f"| {sample['blocks'] - base['blocks']:+,} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--at-a-time", type=int, default=100)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    step = 1_000
    advance_s = HOUR_S * step / args.pods
    with tempfile.TemporaryDirectory() as tmp, ApiServer(host="127.0.0.1", port=0) as server:
        for i in range(5):  # pods that stay through it all
            server.apply(churn_pod(args.pods + i))
        kubeconfig = server.write_kubeconfig(Path(tmp) / "kubeconfig")
        cache = Child(kubeconfig)
        try:
            events = 0
            base = cache.wait_for_events(0)
            while base["sizes"]["pods"] < 5:
                base = cache.ask()
            print(
                f"{args.pods:,} pods, {args.at_a_time} at a time, through the pod cache "
                f"over HTTP; the cache's clock moved {advance_s:.0f} s per {step:,} pods\n"
            )
            print(
                "| pods churned | live in cache | deleted, remembered | RSS MiB "
                "| RSS change MiB | Python blocks | blocks change |"
            )
            print("|---|---|---|---|---|---|---|")
            print(row("0 (synced)", base, base))
            started = time.monotonic()
            for start in range(0, args.pods, args.at_a_time):
                batch = range(start, min(start + args.at_a_time, args.pods))
                for i in batch:
                    server.apply(churn_pod(i))
                for i in batch:
                    server.delete(PODS, NS, f"job-{i}")
                events += 2 * len(batch)
                if (start + len(batch)) % step == 0:
                    sample = cache.wait_for_events(events)
                    print(row(f"{start + len(batch):,}", sample, base), flush=True)
                    cache.ask(f"advance {advance_s}")
            took = time.monotonic() - started
            final = cache.ask(f"advance {PodCacheSettings().deleted_retention_s + 1}")
            print(row("after retention", final, base))
            print(f"\n{args.pods:,} pods churned in {took:.1f} s of real time")
        finally:
            cache.close()


if __name__ == "__main__":
    main()
