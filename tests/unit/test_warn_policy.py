"""Which rule a container is watched with: the admin policy and `oomguard.io/warn-at`.

The annotation is untrusted input (anyone who can create a pod writes it): a bad value
is refused with a message that says why, and the policy's default applies; it never
raises and never turns warnings off unless it says exactly "off".
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from oomguard.steer.admin import NO_LABELS, AdminPolicy, WarningRules
from oomguard.warn.policy import (
    WARN_AT_KEY,
    RuleChoice,
    WarnAtError,
    choose_rule,
    node_rule,
    parse_warn_at,
    warn_at_request,
)
from oomguard.warn.rule import WarnRule

DEFAULT = WarningRules()


def choose(
    annotations: dict[str, str],
    container: str | None = "app",
    rules: WarningRules = DEFAULT,
    namespace: str = "shop",
    labels: dict[str, str] | None = None,
) -> RuleChoice:
    return choose_rule(
        rules,
        namespace=namespace,
        labels=NO_LABELS if labels is None else labels,
        annotations=annotations,
        container=container,
    )


def rules(**values: Any) -> WarningRules:
    return AdminPolicy.model_validate({"warnings": values}).warnings


# ----- the annotation's grammar -------------------------------------------------------


@pytest.mark.parametrize(("value", "percent"), [("85%", 85), ("1%", 1), ("99%", 99), ("50%", 50)])
def test_a_percent(value: str, percent: int) -> None:
    assert parse_warn_at(value) == percent


def test_off() -> None:
    assert parse_warn_at("off") is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "85",
        "085%",
        "0%",
        "100%",
        "150%",
        "-5%",
        "8.5%",
        "85 %",
        " 85%",
        "85% ",
        "85%\n",
        "85%%",
        "%85",
        "OFF",
        "Off",
        "false",
        "none",
        "\u0668\u0665%",  # Arabic-Indic 85
        "85\x00%",
        "x" * 10_000,
    ],
)
def test_refused(value: str) -> None:
    with pytest.raises(WarnAtError):
        parse_warn_at(value)


def test_a_bare_number_gets_a_hint() -> None:
    with pytest.raises(WarnAtError) as caught:
        parse_warn_at("85")
    assert str(caught.value) == '"85" is not a percent from 1% to 99% or "off" (write it with a %)'


def test_a_hostile_value_is_quoted_escaped_and_cut() -> None:
    with pytest.raises(WarnAtError) as caught:
        parse_warn_at('evil"\n\x1b[31m' + "A" * 500)
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message
    assert len(message) < 150
    assert message.startswith('"evil\\"\\n\\u001b[31mAAAA') and '"... is not a percent' in message


# ----- which annotation speaks for a container -------------------------------------------


def test_the_container_form_wins_for_its_container() -> None:
    annotations = {WARN_AT_KEY: "80%", f"{WARN_AT_KEY}.app": "95%"}
    assert warn_at_request(annotations, "app") == (f"{WARN_AT_KEY}.app", "95%")
    assert warn_at_request(annotations, "sidecar") == (WARN_AT_KEY, "80%")
    assert warn_at_request(annotations, None) == (WARN_AT_KEY, "80%")


def test_no_annotation_no_request() -> None:
    assert warn_at_request({"oomguard.io/protect": "true"}, "app") is None
    assert warn_at_request({f"{WARN_AT_KEY}.other": "80%"}, "app") is None
    assert warn_at_request({f"{WARN_AT_KEY}.other": "80%"}, None) is None


# ----- the rule chosen -----------------------------------------------------------------------


def test_unannotated_pods_get_the_policy_default() -> None:
    choice = choose({})
    assert choice == RuleChoice(WarnRule(warn_at_percent=90))
    assert choice.problem is None


def test_the_policy_default_and_its_figures_are_carried() -> None:
    r = rules(warn_at=80, horizon_s=12.0, pressure_percent=25.0, min_warn_at=60)
    choice = choose({}, rules=r)
    assert choice.rule == WarnRule(warn_at_percent=80, horizon_s=12.0, pressure_percent=25.0)
    asked = choose({WARN_AT_KEY: "70%"}, rules=r)
    assert asked.rule == WarnRule(warn_at_percent=70, horizon_s=12.0, pressure_percent=25.0)


def test_a_pod_asks_for_its_own_threshold() -> None:
    assert choose({WARN_AT_KEY: "75%"}).rule == WarnRule(warn_at_percent=75)
    assert choose({WARN_AT_KEY: "75%"}, container=None).rule == WarnRule(warn_at_percent=75)


def test_one_container_asks_for_its_own() -> None:
    annotations = {WARN_AT_KEY: "75%", f"{WARN_AT_KEY}.db": "95%"}
    assert choose(annotations, "db").rule == WarnRule(warn_at_percent=95)
    assert choose(annotations, "app").rule == WarnRule(warn_at_percent=75)
    # The pod-level cgroup is watched with the pod form.
    assert choose(annotations, None).rule == WarnRule(warn_at_percent=75)


def test_off_opts_out() -> None:
    assert choose({WARN_AT_KEY: "off"}) == RuleChoice(None)
    assert choose({WARN_AT_KEY: "off"}, container=None) == RuleChoice(None)


def test_off_for_one_container() -> None:
    annotations = {f"{WARN_AT_KEY}.batch": "off"}
    assert choose(annotations, "batch").rule is None
    assert choose(annotations, "web").rule == WarnRule()
    assert choose(annotations, None).rule == WarnRule()


def test_off_is_allowed_whatever_the_bounds() -> None:
    assert choose({WARN_AT_KEY: "off"}, rules=rules(min_warn_at=90, max_warn_at=90)).rule is None


def test_a_container_may_be_watched_when_the_pod_opted_out() -> None:
    annotations = {WARN_AT_KEY: "off", f"{WARN_AT_KEY}.db": "90%"}
    assert choose(annotations, "db").rule == WarnRule(warn_at_percent=90)
    assert choose(annotations, "app").rule is None


@pytest.mark.parametrize("value", ["85", "ninety", "100%", "", "on"])
def test_a_bad_value_keeps_warnings_on_and_says_why(value: str) -> None:
    choice = choose({f"{WARN_AT_KEY}.app": value})
    assert choice.rule == WarnRule()
    assert choice.problem is not None
    assert choice.problem.startswith(f"{WARN_AT_KEY}.app: ")
    assert choice.problem.endswith("warning at 90% instead")


def test_a_value_outside_the_policy_is_refused() -> None:
    r = rules(min_warn_at=70, max_warn_at=95, warn_at=85)
    low = choose({WARN_AT_KEY: "50%"}, rules=r)
    assert low.rule == WarnRule(warn_at_percent=85)
    assert low.problem == (
        f"{WARN_AT_KEY}: 50% is outside what the admin policy allows (70%..95%); "
        "warning at 85% instead"
    )
    high = choose({WARN_AT_KEY: "99%"}, rules=r)
    assert high.rule == WarnRule(warn_at_percent=85) and high.problem is not None
    for edge in ("70%", "95%"):
        assert choose({WARN_AT_KEY: edge}, rules=r).problem is None


def test_disabled_watches_nobody() -> None:
    r = rules(enabled=False)
    assert choose({}, rules=r) == RuleChoice(None)
    assert choose({WARN_AT_KEY: "80%"}, rules=r) == RuleChoice(None)


def test_only_the_chosen_namespaces_are_watched() -> None:
    r = rules(namespaces={"names": ["shop"], "selector": {"matchLabels": {"warn": "yes"}}})
    assert choose({}, rules=r, namespace="shop").rule == WarnRule()
    assert choose({}, rules=r, namespace="batch", labels={"warn": "yes"}).rule == WarnRule()
    assert choose({}, rules=r, namespace="batch", labels={"warn": "no"}).rule is None
    # Labels not known yet match no selector (fail safe: not watched, asked again).
    assert choose({}, rules=r, namespace="batch").rule is None
    # A pod outside the chosen namespaces cannot opt itself in.
    assert choose({WARN_AT_KEY: "80%"}, rules=r, namespace="batch").rule is None


def test_an_empty_namespace_list_watches_none() -> None:
    assert choose({}, rules=rules(namespaces={})).rule is None


# ----- the node ---------------------------------------------------------------------------------


def test_node_rule() -> None:
    assert node_rule(DEFAULT) == WarnRule()
    assert node_rule(rules(warn_at=80, min_warn_at=60)) == WarnRule(warn_at_percent=80)
    assert node_rule(rules(node_allocatable=False)) is None
    assert node_rule(rules(enabled=False)) is None


def test_node_rule_ignores_namespaces() -> None:
    assert node_rule(rules(namespaces={})) == WarnRule()


# ----- the policy's own checks -------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {"warn_at": 40},  # below min_warn_at (50)
        {"warn_at": 95, "max_warn_at": 92},
        {"warn_at": 0},
        {"warn_at": 100},
        {"warn_at": "90"},
        {"warn_at": 90.0},
        {"pressure_percent": 0},
        {"horizon_s": -1},
        {"namespaces": None},
        {"warn_at_percent": 90},  # a typo is refused, not ignored
    ],
)
def test_bad_policies_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        rules(**values)
