"""Which rule a cgroup is watched with: the admin policy and `oomguard.io/warn-at` (pure).

Annotation (public contract), pod-wide or for one container with the same suffix rule
as the other `oomguard.io/` keys (the container form wins for its container):

    oomguard.io/warn-at: "85%"            warn when the working set reaches 85 % of the limit
    oomguard.io/warn-at: "off"            no warnings for this pod (or container)
    oomguard.io/warn-at.<container>: ...

A percent is a canonical integer followed by "%", within the policy's
`min_warn_at`..`max_warn_at`. A value outside them, or not in the grammar, is refused:
the policy's `warn_at` applies and the refusal is said (`problem`, an
`OOMWarnAtRefused` Warning Event once per pod and message). "off" is always allowed:
opting out of a warning harms nobody. The pod-level cgroup is watched with the pod
form; the node-allocatable cgroup (and QoS levels) with the policy's `warn_at`, when
`node_allocatable` is on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from oomguard.steer.admin import WarningRules
from oomguard.steer.annotations import ANNOTATION_PREFIX, CONTAINER_SEPARATOR, quote_value
from oomguard.warn.rule import WarnRule

WARN_AT_KEY = ANNOTATION_PREFIX + "warn-at"
OFF = "off"
_PERCENT = re.compile(r"([1-9][0-9]?)%")


class WarnAtError(ValueError):
    """A warn-at value outside the grammar or the policy; the message says why."""


def parse_warn_at(value: str) -> int | None:
    """ "<1-99>%" -> the percent; "off" -> None; anything else raises WarnAtError."""
    if value == OFF:
        return None
    match = _PERCENT.fullmatch(value)
    if match is None:
        hint = " (write it with a %)" if value.isdigit() else ""
        raise WarnAtError(f'{quote_value(value)} is not a percent from 1% to 99% or "off"{hint}')
    return int(match.group(1))


@dataclass(frozen=True, slots=True)
class RuleChoice:
    """The rule for one cgroup (None: not watched) and what was wrong with the ask."""

    rule: WarnRule | None
    problem: str | None = None


def _rule(rules: WarningRules, warn_at: int) -> WarnRule:
    return WarnRule(
        warn_at_percent=warn_at,
        horizon_s=rules.horizon_s,
        pressure_percent=rules.pressure_percent,
    )


def warn_at_request(
    annotations: Mapping[str, str], container: str | None
) -> tuple[str, str] | None:
    """The (key, value) that speaks for a container (None: the pod-level cgroup)."""
    if container is not None:
        key = f"{WARN_AT_KEY}{CONTAINER_SEPARATOR}{container}"
        if key in annotations:
            return key, annotations[key]
    if WARN_AT_KEY in annotations:
        return WARN_AT_KEY, annotations[WARN_AT_KEY]
    return None


def choose_rule(
    rules: WarningRules,
    *,
    namespace: str,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    container: str | None,
) -> RuleChoice:
    """The rule for a pod's container (or, `container` None, its pod-level cgroup)."""
    if not rules.watches(namespace, labels):
        return RuleChoice(None)
    default = _rule(rules, rules.warn_at)
    request = warn_at_request(annotations, container)
    if request is None:
        return RuleChoice(default)
    key, value = request
    try:
        percent = parse_warn_at(value)
    except WarnAtError as error:
        return RuleChoice(default, f"{key}: {error}; warning at {rules.warn_at}% instead")
    if percent is None:
        return RuleChoice(None)
    if not rules.min_warn_at <= percent <= rules.max_warn_at:
        return RuleChoice(
            default,
            f"{key}: {percent}% is outside what the admin policy allows "
            f"({rules.min_warn_at}%..{rules.max_warn_at}%); warning at {rules.warn_at}% instead",
        )
    return RuleChoice(_rule(rules, percent))


def node_rule(rules: WarningRules) -> WarnRule | None:
    """The rule of the node-allocatable cgroup and QoS levels (None: not watched)."""
    if not rules.enabled or not rules.node_allocatable:
        return None
    return _rule(rules, rules.warn_at)
