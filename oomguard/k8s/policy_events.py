"""The oom_score_adj side's Events: a pod's annotation refused, the admin policy invalid.

Unlike the OOM kill Events (`event_queue`: persisted, retried, aggregated), these are
best effort: each says a state that the next change says again, so a lost one costs
nothing lasting. Posted from the agent's loop, by the builder the kill Events use
(`EventSender.builder`: its node uid is learnt after start), within the agent's one
write budget (`write_budget.WriteBudget`, shared with the kill Events): one that finds
no token waits in memory (bounded, the oldest dropped and said) and goes with a later
call, at the latest after the next reconcile pass (`policy_checked`).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from oomguard.k8s.attribution import Target, TargetKind
from oomguard.k8s.client import ApiStatusError, KubeApi, KubeApiError
from oomguard.k8s.events import EventBuilder
from oomguard.k8s.pod_cache import PodView
from oomguard.k8s.write_budget import WriteBudget

__all__ = ["POLICY_INVALID_REASON", "PolicyEvents"]

log = logging.getLogger(__name__)

POLICY_INVALID_REASON = "OOMGuardPolicyInvalid"

# Events waiting for the write budget, at most; beyond it the oldest is dropped (each
# says a state the next change says again). A pass over 110 pods with every annotation
# refused is 110 at most.
MAX_WAITING = 256


@dataclasses.dataclass(frozen=True)
class _Waiting:
    target: Target
    type_: str
    reason: str
    message: str
    at: datetime


class PolicyEvents:
    """Posts the steering side's Events; says an invalid policy once per breakage."""

    def __init__(
        self,
        api: KubeApi,
        builder: Callable[[], EventBuilder],
        policy_file: Path,
        *,
        budget: WriteBudget | None = None,
    ) -> None:
        self._api = api
        self._builder = builder
        self._policy_file = policy_file
        self._policy_error_said: str | None = None
        # The agent's one bucket for all its writes; alone, one of its own.
        self.budget = budget or WriteBudget()
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self.dropped = 0  # Events dropped from a full wait list since start

    @property
    def waiting(self) -> int:
        """Events waiting for the write budget."""
        return len(self._waiting)

    def pod_event(self, pod: PodView, type_: str, reason: str, message: str) -> None:
        """The reconciler's `on_event`."""
        target = Target(kind=TargetKind.POD, namespace=pod.namespace, name=pod.name, uid=pod.uid)
        self.post(target, type_, reason, message)

    def policy_checked(self, error: str | None, kept: str) -> None:
        """After each reconcile pass: a Node Warning when the policy newly fails to load.

        `error` None: it loads (fixed: a later breakage is news again). `kept`: which
        policy stays in force meanwhile.
        """
        self.send_waiting()
        if error is None:
            self._policy_error_said = None
            return
        if error == self._policy_error_said:
            return
        self._policy_error_said = error
        self.post(
            Target.node(),
            "Warning",
            POLICY_INVALID_REASON,
            f"the admin policy {self._policy_file} is invalid, {kept} stays in force: {error}",
        )

    def post(self, target: Target, type_: str, reason: str, message: str) -> None:
        """One Event, best effort: a lost one is said again by the next change.

        Sent now if the write budget has a token and nothing waits before it; else it
        waits its turn (its time stays the time it was said).
        """
        self._waiting.append(_Waiting(target, type_, reason, message, datetime.now(UTC)))
        if len(self._waiting) > MAX_WAITING:
            gone = self._waiting.popleft()
            self.dropped += 1
            log.warning(
                "write budget spent: dropping the %s Event %s (%d waiting)",
                gone.type_,
                gone.reason,
                len(self._waiting),
            )
        self.send_waiting()

    def send_waiting(self) -> int:
        """Send what waits, oldest first, while the budget has tokens; how many went."""
        sent = 0
        while self._waiting and self.budget.try_take():
            self._send(self._waiting.popleft())
            sent += 1
        return sent

    def _send(self, event: _Waiting) -> None:
        """Its name derives from what it says, so a restarted agent repeating the same
        Event gets 409 AlreadyExists instead of a duplicate."""
        builder = self._builder()
        obj = builder.involved_object(event.target)
        namespace = obj["namespace"] or "default"
        type_, reason, message = event.type_, event.reason, event.message
        digest = hashlib.sha256(f"{obj.get('uid', obj['name'])}|{reason}|{message}".encode())
        body = builder.create_body(
            namespace=namespace,
            name=f"{obj['name'][:200]}.{digest.hexdigest()[:16]}",
            involved_object=obj,
            reason=reason,
            message=message,
            first=event.at,
            last=event.at,
            count=1,
            type_=type_,
        )
        try:
            self._api.create(f"/api/v1/namespaces/{namespace}/events", body)
        except ApiStatusError as exc:
            if exc.status != 409:  # 409: already said, by us before a restart
                log.warning("cannot post %s Event %s: %s", type_, reason, exc)
        except KubeApiError as exc:
            log.warning("cannot post %s Event %s: %s", type_, reason, exc)
