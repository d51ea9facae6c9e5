"""Deliver OOM Events so that none is lost to an outage or a restart, and none doubles.

The queue sits between the detector and the API. A kill is accepted once, under a
stable kill id; accepted kills wait as pending deliveries, persisted in `state_dir`,
until the API has them. A kill for an Event that already has kills waiting (not yet
sent) merges into them: their count adds up, the newest message stands, so what waits
is one entry per Event however many kills come, and the next write carries them all.
The sender writes each Event at most once per update interval and within the agent's
write budget (`write_budget`), so in a storm kills wait here, merged, and are delivered
later: never lost to the budget. A full queue (more Events waiting than `max_pending`)
first merges what it can and only then drops the oldest, counting and logging them:
memory stays bounded, and what is dropped is said.

Kill ids (`kill_id`), stable across agent restarts, so a kill recovered a second time
(kmsg replayed after a restart, a counter re-read) is recognised:
- `kmsg/<boot_id>/<seq>`: the kernel's record sequence number, unique within one boot;
  the boot id keeps a reboot's seq 1 from matching the last boot's.
- `syslog/<boot_id>/<position>`: the same for a kill line read through syslog(2), whose
  position (derived from its timestamp, see `kernel/syslog.py`) is not a sequence number.
- `counter/<boot_id>/<cgroup>/<value>`: a cgroup's `oom_kill` counter after this kill,
  for kills known only from counters (kernel log unreadable). A counter only rises
  within one cgroup's life, and container cgroup paths carry the container id.
- `seen/<cgroup>/<time>/<pid>`: the last resort when the caller knows neither; stable
  for the same record, not for a re-detection (its time is the detection time).
The accepted ids are remembered (bounded, oldest forgotten first) and persisted.

Never doubled: each delivery is a batch with an id, persisted before it is sent and
written into the Event (annotation `oomguard.io/delivery`). Counts are sent as absolute
totals, so re-sending a patch whose first try got through changes nothing; a create that
meets 409 AlreadyExists reads the Event: if it carries this batch's id the first try got
through, else (another run of the agent made it, its state lost) the counts add up.
Reading the Event uses an empty patch, so the RBAC stays events create + patch.

State is written and read through `statefile`, as every state file of the agent: writes
are atomic (temp file, fsync, rename, fsync of the directory; a crash mid-write leaves the
old state or the new one) and follow no symlink; a state file that cannot be used as
ours (not JSON, nested too deeply, over `max_state_bytes`, not a regular file, another
format) is moved aside as `<name>.corrupt-<timestamp>` with a log line, and the agent
goes on. A failed write (the disk full or read-only) leaves everything in memory and
delivery goes on; it is said once (`StateWrites`) and tried again (`retry_persist`).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import tenacity

from oomguard.k8s.attribution import Target
from oomguard.k8s.client import (
    MERGE_PATCH,
    ApiStatusError,
    KubeApi,
    KubeApiError,
    retry_after_s,
)
from oomguard.k8s.events import (
    DEFAULT_EVENT_WINDOW_S,
    DELIVERY_ANNOTATION,
    EventBuilder,
    Occurrence,
    aggregate_patch,
)
from oomguard.k8s.write_budget import (
    DEFAULT_API_BURST,
    DEFAULT_API_QPS,
    DEFAULT_EVENT_UPDATE_INTERVAL_S,
    UpdateSchedule,
    WriteBudget,
)
from oomguard.records import OomKill, OomWarning
from oomguard.state.files import StateFile, StateWrites, parse_versioned, read_boot_id

log = logging.getLogger(__name__)

STATE_FILE = "event-queue.json"
STATE_FORMAT = "oomguard/event-queue/v1"

# Statuses worth retrying: the server (or what is in front of it) may answer later.
# 401: a rotated service-account token is picked up on a later try.
_RETRYABLE = frozenset({401, 408, 429})


def kill_id(kill: OomKill, *, boot_id: str | None = None, counter_value: int | None = None) -> str:
    """The stable id of one kill (scheme in the module docstring)."""
    boot = boot_id or "unknown-boot"
    if kill.kmsg_seq is not None:
        # A syslog(2) position is no /dev/kmsg sequence number: each has its own prefix.
        log_source = "syslog" if kill.source == "syslog" else "kmsg"
        return f"{log_source}/{boot}/{kill.kmsg_seq}"
    if counter_value is not None and kill.cgroup is not None:
        return f"counter/{boot}/{kill.cgroup}/{counter_value}"
    when = kill.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"seen/{kill.cgroup or '-'}/{when}/{kill.pid if kill.pid is not None else '-'}"


_make_kill_id = kill_id  # EventSender.submit's `kill_id` argument shadows the name


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclasses.dataclass
class _Pending:
    """Kills (one, or several merged) for one Event, not yet delivered."""

    id: str  # the kill id; the oldest one's after a merge
    ref: str  # the Event, "namespace/name"
    first: datetime
    last: datetime
    count: int
    message: str  # the newest kill's
    batch: str | None = None  # the delivery in flight that carries it

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ref": self.ref,
            "first": _time(self.first),
            "last": _time(self.last),
            "count": self.count,
            "message": self.message,
            "batch": self.batch,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _Pending:
        count = data["count"]
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"bad count {count!r}")
        batch = data.get("batch")
        return cls(
            id=str(data["id"]),
            ref=str(data["ref"]),
            first=_parse_time(data["first"]),
            last=_parse_time(data["last"]),
            count=count,
            message=str(data["message"]),
            batch=str(batch) if batch else None,
        )


@dataclasses.dataclass
class _EventState:
    """What this agent knows of one Event (one aggregation key in one window)."""

    namespace: str
    name: str
    involved_object: dict[str, str]
    reason: str
    window_end: datetime
    delivered_count: int = 0  # the Event's count as last delivered; 0: not created yet
    first: datetime | None = None
    last: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "involvedObject": self.involved_object,
            "reason": self.reason,
            "windowEnd": _time(self.window_end),
            "deliveredCount": self.delivered_count,
            "first": None if self.first is None else _time(self.first),
            "last": None if self.last is None else _time(self.last),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> _EventState:
        involved = data["involvedObject"]
        if not isinstance(involved, dict):
            raise ValueError("involvedObject is not an object")
        count = data["deliveredCount"]
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"bad deliveredCount {count!r}")
        return cls(
            namespace=str(data["namespace"]),
            name=str(data["name"]),
            involved_object={str(k): str(v) for k, v in involved.items()},
            reason=str(data["reason"]),
            window_end=_parse_time(data["windowEnd"]),
            delivered_count=count,
            first=_parse_time(data["first"]) if data.get("first") else None,
            last=_parse_time(data["last"]) if data.get("last") else None,
        )


@dataclasses.dataclass(frozen=True)
class Batch:
    """One delivery: every pending kill of one Event that this attempt carries."""

    id: str
    ref: str
    namespace: str
    name: str
    involved_object: dict[str, str]
    reason: str
    count: int  # kills in this batch
    first: datetime
    last: datetime
    message: str
    delivered_count: int  # the Event's count before this batch (0: not created yet)
    event_first: datetime | None
    event_last: datetime | None


@dataclasses.dataclass(frozen=True)
class EventQueueSettings:
    # Pending entries held at most; beyond it kills of one Event merge, then the oldest go.
    max_pending: int = 1000
    # Accepted kill ids remembered to refuse a second report of the same kill. Enough to
    # cover a full kmsg ring buffer's worth of kills replayed after a restart.
    max_remembered_ids: int = 10_000
    # Events whose window ended this long ago (and with nothing pending) are forgotten; a
    # late kill for one finds it again through 409 AlreadyExists.
    forget_after_window_s: float = 300.0
    max_events_tracked: int = 10_000
    # The most the state file may hold, read or written. At the bounds above, with the
    # longest names the API allows (253) and 1 KiB messages, the file is 17 MiB and
    # parsing it takes ~63 MiB (measured); 32 MiB leaves room for long cgroup paths in
    # kill ids and keeps a start's parse inside the chart's 256 MiB memory limit.
    max_state_bytes: int = 32 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class QueueCounters:
    """Totals since start, in kills (a snapshot)."""

    accepted: int = 0
    duplicates: int = 0  # offered again under an id already accepted: ignored
    merged: int = 0  # pending entries folded into another to make room
    dropped: int = 0  # kills discarded because the queue was full
    delivered: int = 0
    failed: int = 0  # refused by the API for good (403, 422, ...): not retried
    persist_errors: int = 0
    state_files_set_aside: int = 0


class EventQueue:
    """Pending Event deliveries, persisted. Thread-safe: the detector offers, the sender
    takes batches, from different threads."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str] | None,
        settings: EventQueueSettings | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        writes: StateWrites | None = None,
    ) -> None:
        self.settings = settings or EventQueueSettings()
        if self.settings.max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.state_dir = None if state_dir is None else Path(state_dir)
        self._clock = clock
        self._lock = threading.RLock()
        self._pending: list[_Pending] = []
        self._events: dict[str, _EventState] = {}
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._counters = QueueCounters()
        self._file: StateFile[_SavedQueue] | None = None
        self._unsaved = False  # the last write failed: memory is ahead of the file
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._file = StateFile(
                self.state_dir / STATE_FILE,
                None,
                _SavedQueue.from_bytes,
                log=log,
                without="started empty (undelivered Events in it are lost)",
                unsaved="an agent restart now would lose the Events not yet delivered",
                writes=writes,
                max_bytes=self.settings.max_state_bytes,
            )
            self._load()

    # -- the detector side ------------------------------------------------------------

    def offer(self, kill_id: str, occurrence: Occurrence) -> bool:
        """Accept a kill; False when this kill id was accepted before."""
        return self.offer_many([(kill_id, occurrence)]) == 1

    def offer_many(self, items: Iterable[tuple[str, Occurrence]]) -> int:
        """Accept several kills with one state write; how many were new."""
        accepted = 0
        with self._lock:
            for kid, occ in items:
                if kid in self._seen:
                    self._count(duplicates=1)
                    continue
                self._remember(kid)
                ref = f"{occ.namespace}/{occ.name}"
                if ref not in self._events:
                    self._events[ref] = _EventState(
                        namespace=occ.namespace,
                        name=occ.name,
                        involved_object=dict(occ.involved_object),
                        reason=occ.reason,
                        window_end=occ.window_end,
                    )
                accepted += 1
                open_entry = self._open_entry(ref)
                if open_entry is not None:
                    # Not sent yet: it goes with the next update, counted.
                    open_entry.count += 1
                    open_entry.first = min(open_entry.first, occ.time)
                    if occ.time >= open_entry.last:
                        open_entry.last, open_entry.message = occ.time, occ.message
                    continue
                if len(self._pending) >= self.settings.max_pending:
                    self._make_room()
                self._pending.append(_Pending(kid, ref, occ.time, occ.time, 1, occ.message))
            if accepted:
                self._count(accepted=accepted)
                self._persist()
        return accepted

    # -- the sender side --------------------------------------------------------------

    def pending_events(self) -> list[tuple[str, bool]]:
        """The Events with pending kills, oldest first: (ref, created on the server)."""
        with self._lock:
            refs = dict.fromkeys(e.ref for e in self._pending)
            return [(ref, self._events[ref].delivered_count > 0) for ref in refs]

    def take_batches(self, refs: Collection[str] | None = None) -> list[Batch]:
        """One batch per Event with pending kills (only those of `refs` if given),
        oldest first.

        A batch that was sent before (and may have reached the server) is offered again
        exactly as it was, so its id still matches what the Event records; kills that
        arrived since wait for the next batch. An Event left out keeps its kills
        unassigned, so later kills still merge into them.
        """
        batches: list[Batch] = []
        with self._lock:
            by_ref: dict[str, list[_Pending]] = {}
            for entry in self._pending:
                if refs is None or entry.ref in refs:
                    by_ref.setdefault(entry.ref, []).append(entry)
            assigned = False
            for ref, entries in by_ref.items():
                in_flight = next((e.batch for e in entries if e.batch), None)
                if in_flight is None:
                    in_flight = uuid.uuid4().hex
                    for entry in entries:
                        entry.batch = in_flight
                    assigned = True
                chosen = [e for e in entries if e.batch == in_flight]
                event = self._events[ref]
                batches.append(
                    Batch(
                        id=in_flight,
                        ref=ref,
                        namespace=event.namespace,
                        name=event.name,
                        involved_object=dict(event.involved_object),
                        reason=event.reason,
                        count=sum(e.count for e in chosen),
                        first=min(e.first for e in chosen),
                        last=max(e.last for e in chosen),
                        message=max(chosen, key=lambda e: e.last).message,
                        delivered_count=event.delivered_count,
                        event_first=event.first,
                        event_last=event.last,
                    )
                )
            if assigned:
                self._persist()  # before sending: a retry after a crash reuses the id
        return batches

    def complete(self, batch: Batch, *, event_count: int, first: datetime, last: datetime) -> None:
        """The API holds the batch: the Event now has `event_count`."""
        with self._lock:
            done = self._remove_batch(batch)
            event = self._events.get(batch.ref)
            if event is not None:
                event.delivered_count = event_count
                event.first, event.last = first, last
            self._count(delivered=done)
            self._forget_old_events()
            self._persist()

    def fail(self, batch: Batch) -> int:
        """The API refused the batch for good; its kills are dropped. How many."""
        with self._lock:
            done = self._remove_batch(batch)
            self._count(failed=done)
            self._persist()
        return done

    def forget_event(self, ref: str) -> None:
        """The Event is gone from the server (404): the next delivery creates it."""
        with self._lock:
            event = self._events.get(ref)
            if event is not None:
                event.delivered_count = 0

    # -- introspection ----------------------------------------------------------------

    @property
    def counters(self) -> QueueCounters:
        with self._lock:
            return self._counters

    def pending_kills(self) -> int:
        with self._lock:
            return sum(e.count for e in self._pending)

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def delivered_counts(self) -> dict[str, int]:
        """Event ref -> count as delivered, for tests and diagnostics."""
        with self._lock:
            return {ref: e.delivered_count for ref, e in self._events.items()}

    def flush(self) -> None:
        """Write the state now (it is written on every change; this is for shutdown)."""
        with self._lock:
            self._persist()

    def retry_persist(self) -> None:
        """Write the state if the last write failed (the disk was full or read-only).

        Called by the agent's loop, so the file catches up once space returns even when
        nothing changes.
        """
        with self._lock:
            if self._unsaved:
                self._persist()

    # -- internals (callers hold the lock) --------------------------------------------

    def _count(self, **deltas: int) -> None:
        values = {k: getattr(self._counters, k) + v for k, v in deltas.items()}
        self._counters = dataclasses.replace(self._counters, **values)

    def _open_entry(self, ref: str) -> _Pending | None:
        """The Event's pending kills not yet in a batch, if any (newest last)."""
        for entry in reversed(self._pending):
            if entry.ref == ref and entry.batch is None:
                return entry
        return None

    def _remember(self, kid: str) -> None:
        self._seen[kid] = None
        self._seen.move_to_end(kid)
        while len(self._seen) > self.settings.max_remembered_ids:
            self._seen.popitem(last=False)

    def _remove_batch(self, batch: Batch) -> int:
        kept, done = [], 0
        for entry in self._pending:
            if entry.ref == batch.ref and entry.batch == batch.id:
                done += entry.count
            else:
                kept.append(entry)
        self._pending = kept
        return done

    def _make_room(self) -> None:
        """Merge pending kills of the same Event (and batch), oldest Events first, until
        there is room; if merging cannot make room, drop the oldest."""
        limit = self.settings.max_pending
        order: list[tuple[str, str | None]] = []
        groups: dict[tuple[str, str | None], list[_Pending]] = {}
        for entry in self._pending:
            group_key = (entry.ref, entry.batch)
            if group_key not in groups:
                order.append(group_key)
                groups[group_key] = []
            groups[group_key].append(entry)
        size, merged = len(self._pending), 0
        for group_key in order:
            if size < limit:
                break
            entries = groups[group_key]
            if len(entries) < 2:
                continue
            first, newest = entries[0], max(entries, key=lambda e: e.last)
            combined = _Pending(
                id=first.id,
                ref=first.ref,
                first=min(e.first for e in entries),
                last=newest.last,
                count=sum(e.count for e in entries),
                message=newest.message,
                batch=first.batch,
            )
            groups[group_key] = [combined]
            size -= len(entries) - 1
            merged += len(entries) - 1
        if merged:
            keep: list[_Pending] = []
            emitted: set[tuple[str, str | None]] = set()
            for entry in self._pending:
                group_key = (entry.ref, entry.batch)
                if group_key in emitted:
                    continue
                if len(groups[group_key]) == 1:
                    emitted.add(group_key)
                    keep.append(groups[group_key][0])
                else:
                    keep.append(entry)
            self._pending = keep
            self._count(merged=merged)
            log.warning(
                "event queue full (%d pending): merged %d kills into Events already pending",
                limit,
                merged,
            )
        dropped = 0
        while len(self._pending) >= limit:
            # Prefer kills not in flight: a batch in flight may already be on the server.
            victim = next((e for e in self._pending if e.batch is None), self._pending[0])
            self._pending.remove(victim)
            dropped += victim.count
        if dropped:
            self._count(dropped=dropped)
            log.warning(
                "event queue full (%d pending Events): dropped the %d oldest undelivered "
                "kills (%d dropped since start)",
                limit,
                dropped,
                self._counters.dropped,
            )

    def _forget_old_events(self) -> None:
        busy = {e.ref for e in self._pending}
        horizon = self._clock() - timedelta(seconds=self.settings.forget_after_window_s)
        for ref in [
            r for r, ev in self._events.items() if r not in busy and ev.window_end < horizon
        ]:
            del self._events[ref]
        excess = len(self._events) - self.settings.max_events_tracked
        for ref in [r for r in self._events if r not in busy][: max(0, excess)]:
            del self._events[ref]

    # -- persistence ------------------------------------------------------------------

    @property
    def state_path(self) -> Path | None:
        return None if self.state_dir is None else self.state_dir / STATE_FILE

    def _persist(self) -> None:
        if self._file is None:
            return
        state = {
            "format": STATE_FORMAT,
            "written": _time(self._clock()),
            "events": {ref: ev.to_json() for ref, ev in self._events.items()},
            "pending": [e.to_json() for e in self._pending],
            "seen": list(self._seen),
        }
        # A full or read-only disk must not stop delivery: memory still holds it all.
        self._unsaved = not self._file.write_bytes(
            json.dumps(state, separators=(",", ":")).encode()
        )
        if self._unsaved:
            self._count(persist_errors=1)

    def _load(self) -> None:
        assert self._file is not None
        saved = self._file.read()
        if self._file.set_aside_count:
            self._count(state_files_set_aside=self._file.set_aside_count)
        if saved is None:
            return
        self._events, self._pending = saved.events, saved.pending
        for kid in saved.seen:
            self._remember(kid)
        if saved.pending:
            log.info(
                "event queue: %d undelivered kills from before the restart will be delivered",
                sum(e.count for e in saved.pending),
            )


@dataclasses.dataclass
class _SavedQueue:
    """What `event-queue.json` holds (read back at start; written by `_persist`)."""

    events: dict[str, _EventState]
    pending: list[_Pending]
    seen: list[str]

    @property
    def boot_id(self) -> str | None:
        return None  # kill ids carry their boot; the queue holds for any boot

    def to_bytes(self) -> bytes:
        raise NotImplementedError("the queue writes its state itself (EventQueue._persist)")

    @classmethod
    def from_bytes(cls, raw: bytes) -> _SavedQueue:
        state, _ = parse_versioned(raw, STATE_FORMAT, "an oomguard event queue state")
        try:
            events = {str(ref): _EventState.from_json(ev) for ref, ev in state["events"].items()}
            pending = [_Pending.from_json(e) for e in state["pending"]]
            missing = {e.ref for e in pending} - events.keys()
            if missing:
                raise ValueError(f"pending kills for unknown Events {sorted(missing)[:3]}")
            seen = [str(s) for s in state["seen"]]
        except (KeyError, TypeError, AttributeError) as exc:
            why = f"not an oomguard event queue state ({type(exc).__name__}: {exc})"
            raise ValueError(why) from None
        return cls(events, pending, seen)


# ---------------------------------------------------------------------------------------
# The sender


@dataclasses.dataclass(frozen=True)
class EventSenderSettings:
    # After a failed attempt the sender waits initial * 2**(n-1) + random(0, jitter),
    # capped at max: a fleet of agents does not hit a recovering apiserver in step.
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 60.0
    backoff_jitter_s: float = 1.0
    event_window_s: float = DEFAULT_EVENT_WINDOW_S
    latency_samples: int = 1024  # recent API call latencies kept for metrics
    # An Event is updated at most once per this; kills between merge into the next
    # update (`write_budget` says why 10 s). Its create is never held back. 0: every round.
    event_update_interval_s: float = DEFAULT_EVENT_UPDATE_INTERVAL_S
    # The agent's write budget (all its writes), made by the sender unless one is given;
    # the policy side's Events take `EventSender.budget` too.
    api_qps: float = DEFAULT_API_QPS
    api_burst: int = DEFAULT_API_BURST


@dataclasses.dataclass(frozen=True)
class SenderCounters:
    """Totals since start (a snapshot). Kills, except where noted."""

    sent: int = 0  # kills the API accepted
    created: int = 0  # Events created (API calls)
    patched: int = 0  # Events updated (API calls)
    retried: int = 0  # attempts that failed and will be retried (per attempt)
    failed: int = 0  # kills refused for good (403, 422, ...)
    dropped: int = 0  # kills dropped by the full queue
    # Rounds that left due Events for later because the write budget was spent (their
    # kills stay queued and persisted: delayed, never lost).
    throttled: int = 0
    last_error: str | None = None


class _Refused(Exception):
    """The API refused a batch for good."""


class EventSender:
    """Sends what the queue holds; one thread calls `deliver_once`, any may `submit`.

    Writes are paced twice (`write_budget`): each Event at most once per
    `event_update_interval_s` after its create, and every write takes a token of the
    agent's `WriteBudget` (shared with the policy side's Events). An Event that is not
    due, or finds no token, keeps its kills in the queue, where later ones merge into
    them: the next write carries them all, with the exact count.
    """

    def __init__(
        self,
        api: KubeApi,
        queue: EventQueue,
        node_name: str,
        *,
        node_uid: str | None = None,
        boot_id: str | None = None,
        settings: EventSenderSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        observe_latency: Callable[[str, float], None] | None = None,
        budget: WriteBudget | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings or EventSenderSettings()
        # The agent's one bucket for all its writes (PolicyEvents takes it from here); it
        # keeps its own clock, as its other writers do not know this sender's.
        self.budget = budget or WriteBudget(
            self.settings.api_qps, self.settings.api_burst, clock=clock
        )
        self.schedule = UpdateSchedule(self.settings.event_update_interval_s)
        self._sleep = sleep
        self.builder = EventBuilder(node_name, node_uid, self.settings.event_window_s)
        self._api = api
        self.queue = queue
        self.boot_id = boot_id
        self._clock = clock
        self._observe = observe_latency
        self._lock = threading.Lock()
        self._counters = SenderCounters()
        self.latencies_s: collections.deque[float] = collections.deque(
            maxlen=self.settings.latency_samples
        )
        self._attempt = 0
        self._retry_at = float("-inf")
        self._wait = tenacity.wait_exponential_jitter(
            multiplier=self.settings.backoff_initial_s,
            max=self.settings.backoff_max_s,
            jitter=self.settings.backoff_jitter_s,
        )

    def submit(
        self,
        kill: OomKill,
        target: Target,
        *,
        kill_id: str | None = None,
        counter_value: int | None = None,
    ) -> bool:
        """Queue one attributed kill; False if this kill was queued before."""
        kid = kill_id or _make_kill_id(kill, boot_id=self.boot_id, counter_value=counter_value)
        return self.queue.offer(kid, self.builder.occurrence(kill, target))

    def submit_warning(self, warning: OomWarning, target: Target) -> bool:
        """Queue an OOMImminent warning: persisted, retried and aggregated like a kill
        (its id is its cgroup and time, so it is never taken for a kill)."""
        stamp = warning.time.isoformat()
        kid = f"warning/{self.boot_id or '-'}/{warning.cgroup}/{stamp}"
        return self.queue.offer(kid, self.builder.warning_occurrence(warning, target))

    @property
    def counters(self) -> SenderCounters:
        with self._lock:
            return dataclasses.replace(self._counters, dropped=self.queue.counters.dropped)

    def seconds_until_due(self, now: float | None = None) -> float:
        """How long the caller's loop may sleep before the next write is due: the
        backoff, the soonest Event's update interval, the write budget (0: now, or
        nothing is pending)."""
        now = self._clock() if now is None else now
        backoff = max(0.0, self._retry_at - now)
        pending = self.queue.pending_events()
        if not pending:
            return backoff
        soonest = min(self.schedule.wait_s(ref, created=c, now=now) for ref, c in pending)
        return max(backoff, soonest, self.budget.seconds_until_available())

    def _due(self, now: float, *, final: bool) -> list[str]:
        """The Events to write this round, oldest first: past their update interval
        (any, when `final`), and no more than the budget has tokens for."""
        due = [
            ref
            for ref, created in self.queue.pending_events()
            if final or self.schedule.wait_s(ref, created=created, now=now) == 0.0
        ]
        if not due:
            return due
        tokens = self.budget.available()
        if len(due) > tokens:
            self._count(throttled=1)
            log.debug("write budget: %d Event(s) due, %d token(s)", len(due), tokens)
        return due[:tokens]

    def deliver_once(self, now: float | None = None, *, final: bool = False) -> int:
        """Send every batch that is due, unless backing off. Returns kills delivered.

        `final`: the agent is stopping; Events waiting for their update interval go now
        (within the budget), so a rollout leaves as little as it can for the next start.

        A connection error or a 5xx ends the round and backs off the whole sender: the
        API is unwell, and trying each Event in turn would only hammer it. When the
        server said how long to wait (Retry-After on API Priority and Fairness' 429, or
        on a 5xx), the next round comes exactly then instead, as client-go's would
        (capped at client.MAX_RETRY_AFTER_S, 60 s); the batch stays queued meanwhile."""
        now = self._clock() if now is None else now
        if now < self._retry_at:
            return 0
        due = self._due(now, final=final)
        if not due:
            return 0
        delivered = 0
        for batch in self.queue.take_batches(frozenset(due)):
            try:
                count, first, last = self._deliver(batch)
            except _Refused as refused:
                lost = self.queue.fail(batch)
                self._count(failed=lost, last_error=str(refused))
                log.error(
                    "the API refused the %s Event %s/%s for %s (%s); dropping %d kill(s), "
                    "not retrying",
                    batch.reason,
                    batch.namespace,
                    batch.name,
                    _describe_object(batch.involved_object),
                    refused,
                    lost,
                )
                continue
            except KubeApiError as exc:
                self._attempt += 1
                told = retry_after_s(exc)
                wait_s = told or self._backoff(self._attempt)
                # Told: counted from the answer, not from the start of the round.
                self._retry_at = (self._clock() if told else now) + wait_s
                self._count(retried=1, last_error=str(exc))
                log.warning(
                    "delivering Events failed (attempt %d): %s; %d kill(s) pending, "
                    "retrying in %.1fs",
                    self._attempt,
                    exc,
                    self.queue.pending_kills(),
                    wait_s,
                )
                break
            self._attempt = 0
            self.schedule.wrote(batch.ref, self._clock())
            self.queue.complete(batch, event_count=count, first=first, last=last)
            self._count(sent=batch.count)
            delivered += batch.count
        return delivered

    # -- one batch --------------------------------------------------------------------

    def _deliver(self, batch: Batch) -> tuple[int, datetime, datetime]:
        """Send one batch; the Event's count, first and last time afterwards."""
        last = max(batch.last, batch.event_last or batch.last)
        if batch.delivered_count > 0:
            first = batch.event_first or batch.first
            total = batch.delivered_count + batch.count
            patch = aggregate_patch(
                count=total, last=last, message=batch.message, delivery=batch.id
            )
            try:
                self._patch(batch, patch)
                return total, first, last
            except ApiStatusError as exc:
                if exc.status != 404:
                    self._reraise(exc)
                # Deleted (event TTL, a person): start it again with what it had.
                log.info(
                    "Event %s/%s is gone from the API; creating it again",
                    batch.namespace,
                    batch.name,
                )
                self.queue.forget_event(batch.ref)
                return self._create(batch, count=total, first=first, last=last)
        return self._create(batch, count=batch.count, first=batch.first, last=last)

    def _create(
        self, batch: Batch, *, count: int, first: datetime, last: datetime
    ) -> tuple[int, datetime, datetime]:
        body = self.builder.create_body(
            namespace=batch.namespace,
            name=batch.name,
            involved_object=batch.involved_object,
            reason=batch.reason,
            message=batch.message,
            first=first,
            last=last,
            count=count,
            delivery=batch.id,
        )
        try:
            self._call("create", lambda: self._api.create(_events_path(batch.namespace), body))
            self._count(created=1)
            return count, first, last
        except ApiStatusError as exc:
            if exc.status != 409:
                self._reraise(exc)
        # AlreadyExists: a try of this batch got through before (a crash or a lost
        # answer), or an earlier run of the agent made this Event and its state is gone.
        # Read it with an empty merge patch, which changes nothing and answers with the
        # object: the agent's RBAC then needs only create and patch on events, no get.
        try:
            existing = self._call(
                "patch", lambda: self._api.patch(_event_path(batch), {}, content_type=MERGE_PATCH)
            )
        except ApiStatusError as exc:
            self._reraise(exc)
        annotations = existing.get("metadata", {}).get("annotations") or {}
        base = existing.get("count")
        base = base if isinstance(base, int) and base > 0 else 1
        existing_first = _event_time(existing.get("firstTimestamp")) or first
        if annotations.get(DELIVERY_ANNOTATION) == batch.id:
            return base, existing_first, _event_time(existing.get("lastTimestamp")) or last
        total = base + batch.count
        last = max(last, _event_time(existing.get("lastTimestamp")) or last)
        try:
            self._patch(
                batch,
                aggregate_patch(count=total, last=last, message=batch.message, delivery=batch.id),
            )
        except ApiStatusError as exc:
            self._reraise(exc)
        return total, existing_first, last

    def _patch(self, batch: Batch, body: dict[str, Any]) -> None:
        self._call(
            "patch",
            lambda: self._api.patch(_event_path(batch), body, content_type=MERGE_PATCH),
        )
        self._count(patched=1)

    def _call(self, verb: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        # The round took a batch only if a token was there; a second request of the same
        # delivery (409, 404) borrows one ahead and waits its turn.
        wait_s = self.budget.reserve()
        if wait_s > 0:
            self._sleep(wait_s)
        started = time.perf_counter()
        try:
            return fn()
        finally:
            elapsed = time.perf_counter() - started
            self.latencies_s.append(elapsed)
            if self._observe is not None:
                self._observe(verb, elapsed)

    @staticmethod
    def _reraise(exc: ApiStatusError) -> NoReturn:
        """5xx and a few others are worth another try; other 4xx will never succeed."""
        if exc.status >= 500 or exc.status in _RETRYABLE:
            raise exc
        raise _Refused(str(exc)) from exc

    def _backoff(self, attempt: int) -> float:
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        state.attempt_number = attempt
        return float(self._wait(state))

    def _count(self, last_error: str | None = None, **deltas: int) -> None:
        with self._lock:
            values: dict[str, Any] = {k: getattr(self._counters, k) + v for k, v in deltas.items()}
            if last_error is not None:
                values["last_error"] = last_error
            self._counters = dataclasses.replace(self._counters, **values)


def _events_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/events"


def _event_path(batch: Batch) -> str:
    return f"{_events_path(batch.namespace)}/{batch.name}"


def _event_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return _parse_time(value)
    except ValueError:
        return None


def _describe_object(obj: dict[str, str]) -> str:
    where = f"{obj.get('kind', '?')} {obj.get('namespace') or ''}/{obj.get('name', '?')}"
    if obj.get("fieldPath"):
        where += f" {obj['fieldPath']}"
    return where.replace(" /", " ")


__all__ = [
    "STATE_FILE",
    "Batch",
    "EventQueue",
    "EventQueueSettings",
    "EventSender",
    "EventSenderSettings",
    "QueueCounters",
    "SenderCounters",
    "kill_id",
    "read_boot_id",
]
