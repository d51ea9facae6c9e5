"""API budget in steady state: what one `oomguard run` asks of the API server per hour.

Issue 13.6. `oomguard run` as shipped (a subprocess, default settings) against the test
API server (tests/cluster/apiserver.py) on 127.0.0.1, on a node of `--pods` (110, the
kubelet's default maximum) running pods in 5 namespaces, each with a container cgroup
(kubepods-shaped, below our own cgroup, with a 256 MiB limit so the warning thread
watches it too), and an admin policy that chooses namespaces by label selector (the
case that watches namespaces; without a selector that watch never starts). One pod
changes a minute (an annotation, as a rollout or a controller would): the agent hears
it on its watch and asks nothing for it.

Counted from the server's own request log, from 10 s after the agent is ready (its
start-up list and Node read are shown apart) for `--minutes` (default 11: the agent's
watches end server-side every 5 min (`timeoutSeconds=300`), so 11 min see each renewed
twice), then scaled to an hour. No OOM kills: their Events are the storm bench's
(bench/event_storm.py). Needs root (cgroups).

    python bench/api_budget.py [--minutes 11] [--pods 110]
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/api_budget.py`: make `tests` importable
    sys.path.insert(0, str(REPO))

import argparse  # noqa: E402
import collections  # noqa: E402
import secrets  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from typing import Any  # noqa: E402

from bench.event_latency import NODE, AgentProcess  # noqa: E402
from bench.stamped_api import running_pod  # noqa: E402
from oomguard.cgroups.hierarchy import detect_memory_hierarchy  # noqa: E402
from oomguard.cgroups.scratch import MIB, ScratchTree  # noqa: E402
from tests.cluster.apiserver import ApiServer  # noqa: E402

NAMESPACES = ("shop", "search", "batch", "db", "web")
POLICY = "trusted_namespaces: {selector: {matchLabels: {tier: critical}}}\n"
SETTLE_S = 10.0
READY_TIMEOUT_S = 60.0


def make_pods(server: ApiServer, tree: ScratchTree, count: int) -> list[dict[str, Any]]:
    for ns in NAMESPACES:
        server.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"tier": "critical" if ns == "db" else "app"}},
            }
        )
    server.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    pods = []
    for i in range(count):
        uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
        ns = NAMESPACES[i % len(NAMESPACES)]
        pod = running_pod(f"app-{i}", ns, NODE, uid, {"app": cid})
        server.apply(pod)
        tree.make(f"kubepods/burstable/pod{uid}/{cid}", limit_bytes=256 * MIB)
        pods.append(pod)
    return pods


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=11.0)
    parser.add_argument("--pods", type=int, default=110)
    args = parser.parse_args()
    hierarchy = detect_memory_hierarchy()
    with (
        tempfile.TemporaryDirectory() as tmp,
        ApiServer(host="127.0.0.1", port=0, bookmark_interval_s=60.0) as server,
        ScratchTree(hierarchy, "oomguard-api-budget") as tree,
    ):
        pods = make_pods(server, tree, args.pods)
        kubeconfig = server.write_kubeconfig(Path(tmp) / "kubeconfig")
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(POLICY)
        agent = AgentProcess(
            kubeconfig,
            tree.top,
            Path(tmp) / "state",
            Path(tmp) / "agent.log",
            extra_flags=(f"--policy-file={policy}",),
        )
        try:
            agent.wait_ready()
            time.sleep(SETTLE_S)
            start = time.monotonic()
            startup = list(server.requests())
            end = start + args.minutes * 60.0
            changes = 0
            while (now := time.monotonic()) < end:
                time.sleep(min(60.0, end - now))
                if time.monotonic() < end:
                    pod = pods[changes % len(pods)]
                    pod["metadata"].setdefault("annotations", {})["rollout"] = str(changes)
                    server.apply(pod)
                    changes += 1
            steady = [r for r in server.requests() if r.at >= start]
        finally:
            agent.stop()
    per_hour = 60.0 / args.minutes
    counted = collections.Counter((r.verb, r.resource) for r in steady)
    at_start = collections.Counter((r.verb, r.resource) for r in startup)
    print(
        f"API requests of one `oomguard run`: {args.pods} pods, {changes} pod changes in "
        f"{args.minutes:g} min, a namespace selector in the policy; test API server"
    )
    print("| request | at start | steady, counted | steady, per hour |")
    print("|---|---|---|---|")
    for key in sorted(set(counted) | set(at_start)):
        verb, resource = key
        print(
            f"| {verb} {resource} | {at_start[key]} | {counted[key]} | "
            f"{counted[key] * per_hour:.0f} |"
        )
    watches = sum(n for (verb, _), n in counted.items() if verb == "watch")
    others = sum(n for (verb, _), n in counted.items() if verb != "watch")
    print(
        f"| **all but watches** | {sum(n for (v, _), n in at_start.items() if v != 'watch')} "
        f"| {others} | **{others * per_hour:.0f}** |"
    )
    print(f"| watch (re)opened | | {watches} | {watches * per_hour:.0f} |")
    print(
        f"target: <= 10 requests per node per hour besides the watches: "
        f"{'met' if others * per_hour <= 10 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
