"""`oomguard run`: the DaemonSet's main process.

Threads and what flows between them, in one direction:

    detector thread (OomWatcher) --OomKill, HandedOn--> queue.Queue --> main loop
    main loop: attribute (pod cache) -> EventSender.submit (persisted) -> deliver;
               the reconcile pass every reconcile_interval_s
    detector thread --ContainerCgroupCreated--> steering thread (NewContainerSteering):
               a new container of a governed pod gets the policy's oom_score_adj at
               once, not at the next pass (not in a dry run)
               --> warning thread (WarningWatcher), which also reads the detector's
               published set of cgroups: an OomWarning per episode of a cgroup nearing
               its limit --> the same queue --> main loop: an OOMImminent Event
    pod cache thread: list + watch this node's pods
    metrics thread: /metrics, /healthz, /readyz

New containers go to a thread of their own, not through the main loop's queue: the
main loop may be in an HTTP request or a reconcile pass when a container starts, and
its first process must not wait for either (`steer.new_containers`). The steering
thread and the reconcile pass share the namespace-label cache, one call at a time.

A kill is safe once `submit` has written it to the state directory. Kills that happen
while the agent is down are recovered on restart from what the state directory says was
handed on (`state.checkpoints`: the kernel log position and each cgroup's `oom_kill`
counter), given to the detector as one `Resume`. The detector says what it has handed on
in `HandedOn` marks sent through the same queue, after the records they cover, so by the
time a mark is written every kill it covers has been submitted. The agent forwards the
marks to `Checkpoints`, which writes them once per turn of the main loop (never per
kill), the counters before the position, so the position never runs ahead of the
counters: a report read back is then either dropped by its kill id or pairs with the
counter increase it explains. What is not covered yet is found again after a
crash, from the same source under the same kill id (`kmsg/...` or
`counter/<boot>/<cgroup>/<value>`), and the event queue's memory of kill ids drops what
it already has. Reading back a little too much is harmless; too little would lose kills.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import queue
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from oomguard import __version__
from oomguard.cgroups.hierarchy import CgroupVersion, MemoryHierarchy, default_cgroup_root
from oomguard.detect.loop import OomWatcher
from oomguard.k8s.attribution import attribute, attribute_warning
from oomguard.k8s.client import KubeApi, KubeApiError
from oomguard.k8s.event_queue import (
    EventQueue,
    EventSender,
    EventSenderSettings,
    read_boot_id,
)
from oomguard.k8s.namespace_labels import NamespaceLabels
from oomguard.k8s.pod_cache import PodCache
from oomguard.k8s.policy_events import PolicyEvents
from oomguard.k8s.warning_rules import WARN_AT_REFUSED_REASON, WarningRulesFromPods
from oomguard.metrics import Metrics, Server, serve
from oomguard.output import json_line
from oomguard.records import ContainerCgroupCreated, HandedOn, OomKill, OomWarning
from oomguard.settings import RunSettings
from oomguard.state.checkpoints import Checkpoints
from oomguard.state.files import StateWrites
from oomguard.steer.new_containers import NewContainerPlanner, NewContainerSteering
from oomguard.steer.policy_file import PolicySource
from oomguard.steer.reconciler import Reconciler
from oomguard.warn.watcher import WarningWatcher

log = logging.getLogger(__name__)

# The admin policy last in force, kept for a restart that meets a bad policy file.
SAVED_POLICY_FILE = "policy-in-force.yaml"

# The Node's uid: tried at start, then after 30 s, doubling to an hour (a missing
# grant or Node costs a node one request an hour, not one every 30 s).
NODE_UID_RETRY_S = 30.0
NODE_UID_RETRY_MAX_S = 3600.0
# A warning waits this long for a kill of the same cgroup to overtake it: a container
# that goes from the warning level to its limit faster than anyone could act gets the
# OOMKilled Event alone (it says more), not an OOMImminent stamped a few ms before it.
# The detector reports a kill ~3 ms after the kernel's line.
WARNING_HOLD_S = 0.25
FORGET_PODS_EVERY_S = 60.0  # deleted pods' kill and warning series leave /metrics
# The loop sleeps until something is due (a kill wakes it at once): the next reconcile
# pass, an Event's write, a held warning. At most this long: a failed state write is
# retried and a refused warn-at annotation said at least this often.
IDLE_WAKE_S = 5.0
STOP_FLUSH_S = 5.0  # on SIGTERM, how long to try delivering what is queued


class Agent:
    """Wires the node-side engine to the cluster side."""

    def __init__(
        self,
        settings: RunSettings,
        hierarchy: MemoryHierarchy,
        api: KubeApi,
        *,
        kmsg_path: str | None = "/dev/kmsg",
    ) -> None:
        self.settings = settings
        self.metrics = Metrics(__version__)
        self.api = api
        self.cache = PodCache(api, settings.node_name)
        state_dir = settings.state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        boot_id = read_boot_id()
        # One for every state file: a full or read-only state directory is said once.
        self.state_writes = StateWrites()
        # What the detector resumes from, and its HandedOn marks, written by step().
        self.checkpoints = Checkpoints(state_dir, boot_id, self.state_writes)
        self.events = EventQueue(state_dir / "events", writes=self.state_writes)
        self.sender = EventSender(
            api,
            self.events,
            settings.node_name,
            boot_id=boot_id,
            settings=EventSenderSettings(
                event_window_s=settings.event_window_s,
                event_update_interval_s=settings.event_update_interval_s,
                api_qps=settings.api_qps,
                api_burst=settings.api_burst,
            ),
            observe_latency=self.metrics.observe_api_request,
        )
        root = (
            Path(settings.cgroup_root) if settings.cgroup_root else default_cgroup_root(hierarchy)
        )
        self.policy = PolicySource(
            settings.policy_file,
            metrics=self.metrics,
            saved_path=state_dir / SAVED_POLICY_FILE,
        )
        self.policy_events = PolicyEvents(
            api, lambda: self.sender.builder, settings.policy_file, budget=self.sender.budget
        )
        # One cache for the reconcile pass and the new-container steering (thread-safe).
        namespace_labels = NamespaceLabels(api, observe_latency=self.metrics.observe_api_request)
        self.reconciler = Reconciler(
            hierarchy,
            root,
            dry_run=settings.dry_run,
            policy_source=self.policy,
            on_event=self.policy_events.pod_event,
            metrics=self.metrics,
            namespace_labels=namespace_labels,
            state_dir=state_dir,
            boot_id=boot_id,
            state_writes=self.state_writes,
        )
        self.new_containers: NewContainerSteering | None = None
        if not settings.dry_run:
            planner = NewContainerPlanner(
                self.cache,
                self.policy,
                self.reconciler.node_memory_bytes,
                v1=hierarchy.version is CgroupVersion.V1,
                namespace_labels=namespace_labels,
                kill_mode_remembered=self.reconciler.kill_mode_remembered,
            )
            self.new_containers = NewContainerSteering(hierarchy, planner, metrics=self.metrics)
        # None: only a wake-up (stop).
        self._kills: queue.Queue[OomKill | HandedOn | OomWarning | None] = queue.Queue()
        # Warnings before a kill: the rules from the policy, the pod cache and the
        # namespace labels (no API call on the warning thread), the cgroups from the
        # detector's published set; each warning joins the kills' queue.
        self.namespace_labels = namespace_labels
        self.warning_rules = WarningRulesFromPods(self.cache, self.policy.current, namespace_labels)
        self.warnings = WarningWatcher(
            hierarchy,
            lambda: self.watcher.watch.published,
            self.warning_rules,
            self._kills.put,
        )
        self.watcher = OomWatcher(
            hierarchy,
            root,
            self._kills.put,
            kmsg_path=kmsg_path,
            resync_interval_s=settings.resync_interval_s,
            resume=self.checkpoints.load(),
            on_handed_on=self._kills.put,
            on_new_container=self._new_container,
        )
        self._next_reconcile = 0.0
        self._stop = threading.Event()
        self._detector: threading.Thread | None = None
        self._server: Server | None = None
        self._waited: set[str] = set()
        self._node_uid_due = 0.0  # monotonic time of the next try; inf once known
        self._node_uid_retry_s = NODE_UID_RETRY_S
        self._seen_totals: dict[int, int] = {}
        self._metrics_lock = threading.Lock()
        self.metrics.before_scrape(self._refresh_metrics)
        self._held: dict[str, tuple[float, OomWarning]] = {}  # cgroup -> (due, warning)
        # cgroup -> when its last kill reached the loop: a warning that comes in after
        # it (its look raced the kill) is not sent either.
        self._killed_at: dict[str, float] = {}
        self._forget_due = 0.0

    def _new_container(self, created: ContainerCgroupCreated) -> None:
        """From the detector thread: steering first (its first process is waiting),
        then the warning thread (looks at the new cgroup's limit at once)."""
        if self.new_containers is not None:
            self.new_containers.notice(created)
        self.warnings.notice(created.cgroup, created.directory)

    # ----- health -----------------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if not self.cache.synced.is_set():
            return False, "pod cache not synced yet"
        if self._detector is None or not self._detector.is_alive():
            return False, "cgroups not watched yet"
        return True, "ok"

    def alive(self) -> tuple[bool, str]:
        if self._detector is not None and not self._detector.is_alive() and not self._stop.is_set():
            return False, "the detector thread died"
        return True, "ok"

    # ----- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._server = serve(self.metrics, self.settings.metrics_address, self.ready, self.alive)
        self.cache.start()
        self._learn_node_uid()
        self.watcher.start()
        self.metrics.set_kernel_log_source(self.watcher.kernel_log_source)
        if self.watcher.kernel_log_error:
            log.warning("%s", self.watcher.kernel_log_error)
        if self.new_containers is not None:
            self.new_containers.start()
        self._detector = threading.Thread(target=self.watcher.run, name="detector", daemon=True)
        self._detector.start()
        self.warnings.start()
        self.metrics.ready.set_function(lambda: 1.0 if self.ready()[0] else 0.0)
        log.info(
            "oomguard %s on node %s: watching %d cgroups below %s",
            __version__,
            self.settings.node_name,
            len(self.watcher.watch.cgroups()),
            self.watcher.root,
        )

    def stop(self) -> None:
        """End the loop (from a signal handler too): the wake-up is put by a thread of
        its own, as the handler may run while the loop's thread holds the queue's lock."""
        self._stop.set()
        threading.Thread(target=self._kills.put, args=(None,), name="stop", daemon=True).start()

    def run(self) -> None:
        """The main loop, until `stop()` (SIGTERM); then flush and shut down."""
        try:
            while not self._stop.is_set():
                self.step(max_wait_s=IDLE_WAKE_S)
        finally:
            self.shutdown()

    def step(self, max_wait_s: float) -> None:
        """Hand on what the detector found, deliver what is due, refresh gauges."""
        now = time.monotonic()
        wait = min(max_wait_s, self.sender.seconds_until_due() or max_wait_s)
        dues = [self._node_uid_due]
        if self.cache.synced.is_set():
            dues += [self._next_reconcile, self._forget_due]
        else:
            dues.append(now + 0.2)  # the first pass follows the first list at once
        if self._held:
            dues.append(min(at for at, _ in self._held.values()))
        wait = min(wait, max(0.0, min(dues) - now))
        try:
            first = self._kills.get(timeout=max(0.01, wait))
        except queue.Empty:
            first = None
        if first is not None:
            self._take(first)
            while True:
                try:
                    self._take(self._kills.get_nowait())
                except queue.Empty:
                    break
        self._release_warnings()
        # A new kill's Event first (`submit` has written it), before the bookkeeping.
        self.sender.deliver_once()
        self.checkpoints.save()  # also retries a write that failed
        self.events.retry_persist()  # the same for the event queue (disk full, read-only)
        self._learn_node_uid()
        self._reconcile()
        self._say_warning_problems()
        self._forget_deleted_pods()

    def _learn_node_uid(self) -> None:
        """The Node's uid, for Node Events' involvedObject (`nodes get`).

        Without it a Node Event is still valid and shown by `kubectl describe node`
        (which matches by name); with it, it is tied to this incarnation of the node.
        Tried at start, then after NODE_UID_RETRY_S, doubling up to an hour, until known.
        """
        now = time.monotonic()
        if now < self._node_uid_due:
            return
        self._node_uid_due = now + self._node_uid_retry_s
        self._node_uid_retry_s = min(NODE_UID_RETRY_MAX_S, self._node_uid_retry_s * 2)
        try:
            node = self.api.get(f"/api/v1/nodes/{self.settings.node_name}", timeout_s=5.0)
        except KubeApiError as exc:
            log.warning(
                "cannot read Node %s (its uid for Node Events): %s", self.settings.node_name, exc
            )
            return
        metadata = node.get("metadata") if isinstance(node, dict) else None
        uid = metadata.get("uid") if isinstance(metadata, dict) else None
        if isinstance(uid, str) and uid:
            self.sender.builder = dataclasses.replace(self.sender.builder, node_uid=uid)
            self._node_uid_due = math.inf

    def _reconcile(self) -> None:
        """One oom_score_adj pass every reconcile_interval_s, once the pod list is in."""
        now = time.monotonic()
        if now < self._next_reconcile or not self.cache.synced.is_set():
            return
        self._next_reconcile = now + self.settings.reconcile_interval_s
        self.reconciler.pass_once(self.cache.pods())
        self.policy_events.policy_checked(self.policy.last_error, self.policy.kept)

    def _take(self, item: OomKill | HandedOn | OomWarning | None) -> None:
        if item is None:
            return  # a wake-up
        if isinstance(item, HandedOn):
            self.checkpoints.take(item)
        elif isinstance(item, OomWarning):
            now = time.monotonic()
            if now - self._killed_at.get(item.cgroup, -math.inf) <= WARNING_HOLD_S:
                log.info("warning overtaken by its kill, not sent: %s", json_line(item))
            else:
                self._held[item.cgroup] = (now + WARNING_HOLD_S, item)
        else:
            self._overtaken(item)
            self._handle(item)

    def _overtaken(self, kill: OomKill) -> None:
        """A held warning whose cgroup's limit the kill hit is not sent; nor one that
        comes just after the kill (the warning thread looked while the victim's memory
        was not yet freed)."""
        now = time.monotonic()
        for old in [c for c, t in self._killed_at.items() if now - t > WARNING_HOLD_S]:
            del self._killed_at[old]
        for cgroup in {kill.oom_cgroup, kill.cgroup}:
            if not cgroup:
                continue
            self._killed_at[cgroup] = now
            held = self._held.pop(cgroup, None)
            if held is not None:
                log.info("warning overtaken by its kill, not sent: %s", json_line(held[1]))

    def _release_warnings(self, *, all_now: bool = False) -> None:
        now = time.monotonic()
        for cgroup, (due, warning) in list(self._held.items()):
            if all_now or due <= now:
                del self._held[cgroup]
                self._handle_warning(warning)

    def _handle_warning(self, warning: OomWarning) -> None:
        """An OOMImminent Event on the container (the pod, the Node), queued and
        aggregated like a kill's; counted by its pod's labels."""
        target = attribute_warning(warning, self.cache)
        self.sender.submit_warning(warning, target)
        if target.is_node:
            namespace, pod = "", ""
        else:
            namespace, pod = target.namespace or "", target.name or ""
        self.metrics.oom_warning(
            namespace, pod, target.container or "", warning.constraint, warning.signal
        )
        log.info("warning: %s", json_line(warning))

    def _say_warning_problems(self) -> None:
        """A refused `oomguard.io/warn-at`, once per pod and message, on the pod."""
        for pod, message in self.warning_rules.take_problems():
            self.policy_events.pod_event(pod, "Warning", WARN_AT_REFUSED_REASON, message)

    def _handle(self, kill: OomKill) -> None:
        cid = kill.identity.container_id
        if cid and self.cache.lookup_container(cid) is None and cid not in self._waited:
            # A container killed seconds after it started may not be in the cache yet.
            self._waited.add(cid)
            self.cache.wait_for_container(cid, self.settings.pod_wait_s)
        target = attribute(kill, self.cache)
        if not self.sender.submit(kill, target, counter_value=kill.oom_kill_counter):
            # Found again after a restart (read back from the kernel log, or counted
            # again before the counters were saved): reported before, same kill id.
            log.info("oom kill already reported: %s", json_line(kill))
            return
        if target.is_node or target.namespace is None or target.name is None:
            self.metrics.oom_kill_without_pod(kill.constraint)
        else:
            self.metrics.oom_kill(
                target.namespace, target.name, target.container or "", kill.constraint
            )
        log.info("oom kill: %s", json_line(kill))

    def _forget_deleted_pods(self) -> None:
        """Deleted pods' kill and warning series leave /metrics (once a minute)."""
        now = time.monotonic()
        if now >= self._forget_due and self.cache.synced.is_set():
            self._forget_due = now + FORGET_PODS_EVERY_S
            self.metrics.forget_pods_except({(p.namespace, p.name) for p in self.cache.pods()})

    def _refresh_metrics(self) -> None:
        """What /metrics shows of the parts' own state, brought up to date by a scrape
        (Metrics.before_scrape): an idle node nobody scrapes pays nothing for it, and a
        scrape sees the state as of that moment, not of the last loop turn."""
        with self._metrics_lock:  # the metrics server answers on several threads
            c = self.cache.counters
            self.metrics.observe_pod_cache(
                relists=c.relists,
                watch_restarts=c.watch_restarts,
                pods_cached=len(self.cache.pods()),
            )
            self.metrics.cgroups_watched.set(len(self.watcher.watch.cgroups()))
            self._set_headrooms()
            # Counters kept by the parts, turned into Prometheus counters by their growth.
            sc = self.sender.counters
            totals = {
                self.metrics.events_sent: sc.sent,
                self.metrics.events_retried: sc.retried,
                self.metrics.events_failed: sc.failed,
                self.metrics.events_dropped: sc.dropped,
                self.metrics.kmsg_records_lost: self.watcher.lost_kernel_log_records,
                self.metrics.state_write_errors: self.state_writes.errors,
                self.metrics.state_files_set_aside: self.state_writes.set_aside,
            }
            for counter, total in totals.items():
                seen = self._seen_totals.get(id(counter), 0)
                if total > seen:
                    counter.inc(total - seen)
                self._seen_totals[id(counter)] = total

    def _set_headrooms(self) -> None:
        """Headroom of each limited container of a cached pod: one series per container
        with a limit (no limit, no series), gone with the container."""
        headrooms: dict[tuple[str, str, str], int] = {}
        for identity, headroom in self.warnings.headrooms().values():
            hit = self.cache.lookup_container(identity.container_id or "")
            if hit is not None:
                pod, container = hit
                headrooms[(pod.namespace, pod.name, container.name)] = headroom
        self.metrics.set_headrooms(headrooms)

    def shutdown(self) -> None:
        self.warnings.close()
        self.watcher.stop()
        if self._detector is not None:
            self._detector.join(timeout=5)
        # Closing flushes kills the detector still held (a counter increase waiting out
        # its grace for a report) into the queue drained below.
        self.watcher.close()
        if self.new_containers is not None:
            self.new_containers.close()
        while True:
            try:
                self._take(self._kills.get_nowait())
            except queue.Empty:
                break
        self._release_warnings(all_now=True)
        self.checkpoints.save()
        deadline = time.monotonic() + STOP_FLUSH_S
        while self.events.pending_kills() and time.monotonic() < deadline:
            if not self.sender.deliver_once(final=True):
                time.sleep(min(0.2, self.sender.seconds_until_due() or 0.2))
        self.events.flush()
        self.cache.stop()
        self.namespace_labels.close()
        if self._server is not None:
            self._server.stop()
        self.api.close()


def install_signal_handlers(agent: Agent) -> None:
    def on_signal(signum: int, frame: FrameType | None) -> None:
        agent.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


class JsonLogFormatter(logging.Formatter):
    """One JSON object per log line (`--log-format json`), for log pipelines.

    ASCII only: a process name or cgroup path in a message may hold C1 controls, bidi
    overrides or undecodable bytes (kept as lone surrogates), which JSON would pass on
    raw to whoever reads `kubectl logs` in a terminal, or fail to encode at all.
    """

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=True)
