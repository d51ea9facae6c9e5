"""The oom_score_adj side's Events: a pod's annotation refused, the admin policy invalid.

Unlike the OOM kill Events (`event_queue`: persisted, retried, aggregated), these are
best effort: each says a state that the next change says again, so a lost one costs
nothing lasting. Posted at once, from the agent's loop, by the builder the kill Events
use (`EventSender.builder`: its node uid is learnt after start).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from oomguard.k8s.attribution import Target, TargetKind
from oomguard.k8s.client import ApiStatusError, KubeApi, KubeApiError
from oomguard.k8s.events import EventBuilder
from oomguard.k8s.pod_cache import PodView

__all__ = ["POLICY_INVALID_REASON", "PolicyEvents"]

log = logging.getLogger(__name__)

POLICY_INVALID_REASON = "OOMGuardPolicyInvalid"


class PolicyEvents:
    """Posts the steering side's Events; says an invalid policy once per breakage."""

    def __init__(
        self, api: KubeApi, builder: Callable[[], EventBuilder], policy_file: Path
    ) -> None:
        self._api = api
        self._builder = builder
        self._policy_file = policy_file
        self._policy_error_said: str | None = None

    def pod_event(self, pod: PodView, type_: str, reason: str, message: str) -> None:
        """The reconciler's `on_event`."""
        target = Target(kind=TargetKind.POD, namespace=pod.namespace, name=pod.name, uid=pod.uid)
        self.post(target, type_, reason, message)

    def policy_checked(self, error: str | None, kept: str) -> None:
        """After each reconcile pass: a Node Warning when the policy newly fails to load.

        `error` None: it loads (fixed: a later breakage is news again). `kept`: which
        policy stays in force meanwhile.
        """
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

        Its name derives from what it says, so a restarted agent repeating the same
        Event gets 409 AlreadyExists instead of a duplicate.
        """
        builder = self._builder()
        obj = builder.involved_object(target)
        namespace = obj["namespace"] or "default"
        digest = hashlib.sha256(f"{obj.get('uid', obj['name'])}|{reason}|{message}".encode())
        now = datetime.now(UTC)
        body = builder.create_body(
            namespace=namespace,
            name=f"{obj['name'][:200]}.{digest.hexdigest()[:16]}",
            involved_object=obj,
            reason=reason,
            message=message,
            first=now,
            last=now,
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
