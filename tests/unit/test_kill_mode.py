"""The kill mode: oomguard.io/oom-kill annotations within the policy's oom_kill section.

The decision table is written out by hand (like kubelet's qos/policy_test.go): one row
per case, the annotations and the policy in, each container's (mode, outcome, source)
out, so a change of behaviour shows up as a changed row. Then the policy model's own
cases, and hypothesis throwing hostile annotations at the same code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oomguard.steer.admin import (
    AdminPolicy,
    KillModeDefault,
    PolicyError,
    load_policy,
)
from oomguard.steer.annotations import (
    KILL_MODE_WORDS,
    AnnotationError,
    parse_kill_mode,
    read_annotations,
)
from oomguard.steer.decision import Outcome, PodProjection, decide_pod
from oomguard.steer.kill_mode import KillMode, KillModeDecision, decide_kill_modes
from oomguard.steer.kubelet_score import QosClass

KILL = "oomguard.io/oom-kill"
PROTECT = "oomguard.io/protect"
C, P = KillMode.CONTAINER, KillMode.PROCESS
U, D, A, R = Outcome.UNMANAGED, Outcome.DEFAULTED, Outcome.APPLIED, Outcome.REFUSED
CONTAINERS = ("app", "db")

# Policies by name; each row says which one it runs under.
POLICIES = {
    "default": "{}",
    "process-for-ci": "oom_kill: {process: {names: [ci]}}",
    "process-by-label": (
        "oom_kill: {process: {selector: {matchLabels: {oomguard.io/multi-process: 'true'}}}}"
    ),
    "no-process": "oom_kill: {process: {}}",
    "no-container": "oom_kill: {container: {}}",
    "ci-defaults-process": "oom_kill: {defaults: [{namespaces: {names: [ci]}, mode: process}]}",
    "labelled-default": (
        "oom_kill:\n"
        "  defaults:\n"
        "    - namespaces: {selector: {matchExpressions: [{key: runner, operator: Exists}]}}\n"
        "      mode: process\n"
        "    - namespaces: {names: [ci]}\n"
        "      mode: container\n"
    ),
    "default-but-not-chosen": (
        "oom_kill:\n"
        "  process: {names: [db]}\n"
        "  defaults: [{namespaces: {names: [ci]}, mode: container}]\n"
    ),
    "default-never-refused": (
        "oom_kill:\n  process: {}\n  defaults: [{namespaces: {names: [ci]}, mode: process}]\n"
    ),
}
LOADED = {name: load_policy(text) for name, text in POLICIES.items()}

NOT_ALLOWED = "does not let namespace"
KUBELET_STAYS = "memory.oom.group stays as the kubelet set it"


@dataclass(frozen=True)
class Want:
    """What one container should get: the mode, how, what asked, a warning fragment."""

    mode: KillMode | None
    outcome: Outcome
    source: str = ""
    warning: str | None = None  # a fragment the warning holds; None: no warning at all


UNMANAGED = Want(None, U)


@dataclass(frozen=True)
class Case:
    annotations: Mapping[str, str]
    want: Mapping[str, Want]  # by container (CONTAINERS)
    policy: str = "default"
    namespace: str = "web"
    labels: Mapping[str, str] = field(default_factory=dict)


CASES: dict[str, Case] = {
    # ---- the annotation: forms, values, containers
    "nothing-asked": Case({}, {"app": UNMANAGED, "db": UNMANAGED}),
    "pod-form-process": Case(
        {KILL: "process"},
        {"app": Want(P, A, f"{KILL}=process"), "db": Want(P, A, f"{KILL}=process")},
    ),
    "pod-form-container": Case(
        {KILL: "container"},
        {"app": Want(C, A, f"{KILL}=container"), "db": Want(C, A, f"{KILL}=container")},
    ),
    "container-form-only-its-container": Case(
        {f"{KILL}.db": "process"},
        {"app": UNMANAGED, "db": Want(P, A, f"{KILL}.db=process")},
    ),
    "container-form-wins": Case(
        {KILL: "container", f"{KILL}.db": "process"},
        {"app": Want(C, A, f"{KILL}=container"), "db": Want(P, A, f"{KILL}.db=process")},
    ),
    "invalid-pod-form-concerns-every-container": Case(
        {KILL: "Process"},
        {
            "app": Want(None, U, "", "must be written in lower case: process"),
            "db": Want(None, U, "", "must be written in lower case: process"),
        },
    ),
    "invalid-word": Case(
        {KILL: "kill-all"},
        {
            "app": Want(None, U, "", '"kill-all" is not "container" or "process"'),
            "db": Want(None, U, "", '"kill-all" is not "container" or "process"'),
        },
    ),
    "invalid-spaces": Case(
        {f"{KILL}.db": " process"},
        {"app": UNMANAGED, "db": Want(None, U, "", "has spaces around it")},
    ),
    "invalid-empty": Case(
        {f"{KILL}.db": ""},
        {"app": UNMANAGED, "db": Want(None, U, "", '"" is not "container" or "process"')},
    ),
    "invalid-boolean": Case(
        {f"{KILL}.db": "true"},
        {"app": UNMANAGED, "db": Want(None, U, "", '"true" is not')},
    ),
    "invalid-container-form-falls-back-to-pod-form": Case(
        {KILL: "container", f"{KILL}.db": "PROCESS"},
        {
            "app": Want(C, A, f"{KILL}=container"),
            "db": Want(C, A, f"{KILL}=container", f"{KILL}.db: "),
        },
    ),
    "unknown-container-concerns-every-container": Case(
        {f"{KILL}.ghost": "process"},
        {
            "app": Want(None, U, "", '"oomguard.io/oom-kill.ghost" names no container'),
            "db": Want(None, U, "", '"oomguard.io/oom-kill.ghost" names no container'),
        },
    ),
    "empty-container-name": Case(
        {f"{KILL}.": "process", KILL: "container"},
        {
            "app": Want(C, A, f"{KILL}=container", "names no container of this pod"),
            "db": Want(C, A, f"{KILL}=container", "names no container of this pod"),
        },
    ),
    "wrong-case-container-name": Case(
        {f"{KILL}.DB": "process"},
        {
            "app": Want(None, U, "", "(containers: app, db)"),
            "db": Want(None, U, "", "(containers: app, db)"),
        },
    ),
    "both-keys-together": Case(
        {KILL: "process", PROTECT: "true", "oomguard.io/sacrifice.db": "true"},
        {"app": Want(P, A, f"{KILL}=process"), "db": Want(P, A, f"{KILL}=process")},
    ),
    "mode-allowed-everywhere-by-default": Case(
        {KILL: "process", f"{KILL}.db": "container"},
        {"app": Want(P, A, f"{KILL}=process"), "db": Want(C, A, f"{KILL}.db=container")},
        namespace="anything",
        labels={"any": "label"},
    ),
    # ---- who may choose: names, selectors, none
    "allowed-by-name": Case(
        {KILL: "process"},
        {"app": Want(P, A, f"{KILL}=process"), "db": Want(P, A, f"{KILL}=process")},
        policy="process-for-ci",
        namespace="ci",
    ),
    "refused-by-name": Case(
        {f"{KILL}.db": "process"},
        {"app": UNMANAGED, "db": Want(None, R, f"{KILL}.db=process", NOT_ALLOWED)},
        policy="process-for-ci",
    ),
    "rule-for-one-mode-leaves-the-other-open": Case(
        {KILL: "container"},
        {"app": Want(C, A, f"{KILL}=container"), "db": Want(C, A, f"{KILL}=container")},
        policy="process-for-ci",
    ),
    "allowed-by-selector": Case(
        {KILL: "process"},
        {"app": Want(P, A, f"{KILL}=process"), "db": Want(P, A, f"{KILL}=process")},
        policy="process-by-label",
        labels={"oomguard.io/multi-process": "true"},
    ),
    "refused-by-selector": Case(
        {KILL: "process"},
        {
            "app": Want(None, R, f"{KILL}=process", KUBELET_STAYS),
            "db": Want(None, R, f"{KILL}=process", KUBELET_STAYS),
        },
        policy="process-by-label",
        labels={"oomguard.io/multi-process": "false"},
    ),
    "empty-rule-lets-no-namespace-choose": Case(
        {KILL: "process"},
        {
            "app": Want(None, R, f"{KILL}=process", "choose kill mode process for container app"),
            "db": Want(None, R, f"{KILL}=process", "choose kill mode process for container db"),
        },
        policy="no-process",
        namespace="ci",
    ),
    "no-container-mode": Case(
        {f"{KILL}.app": "container", f"{KILL}.db": "process"},
        {"app": Want(None, R, f"{KILL}.app=container"), "db": Want(P, A, f"{KILL}.db=process")},
        policy="no-container",
    ),
    # ---- the admin's defaults
    "default-for-unannotated": Case(
        {},
        {
            "app": Want(P, D, "the policy's default for namespace ci"),
            "db": Want(P, D, "the policy's default for namespace ci"),
        },
        policy="ci-defaults-process",
        namespace="ci",
    ),
    "default-only-its-namespace": Case(
        {}, {"app": UNMANAGED, "db": UNMANAGED}, policy="ci-defaults-process"
    ),
    "request-wins-over-default": Case(
        {f"{KILL}.db": "container"},
        {
            "app": Want(P, D, "the policy's default for namespace ci"),
            "db": Want(C, A, f"{KILL}.db=container"),
        },
        policy="ci-defaults-process",
        namespace="ci",
    ),
    "invalid-request-keeps-default": Case(
        {KILL: "group"},
        {
            "app": Want(P, D, "the policy's default for namespace ci", '"group" is not'),
            "db": Want(P, D, "the policy's default for namespace ci", '"group" is not'),
        },
        policy="ci-defaults-process",
        namespace="ci",
    ),
    "default-by-selector-first-match-wins": Case(
        {},
        {
            "app": Want(P, D, "the policy's default for namespace ci"),
            "db": Want(P, D, "the policy's default for namespace ci"),
        },
        policy="labelled-default",
        namespace="ci",
        labels={"runner": "gitlab"},
    ),
    "default-second-rule": Case(
        {},
        {
            "app": Want(C, D, "the policy's default for namespace ci"),
            "db": Want(C, D, "the policy's default for namespace ci"),
        },
        policy="labelled-default",
        namespace="ci",
    ),
    "refused-request-keeps-default": Case(
        {f"{KILL}.db": "process"},
        {
            "app": Want(C, D, "the policy's default for namespace ci"),
            "db": Want(
                C,
                R,
                f"{KILL}.db=process",
                "the policy's default for namespace ci (container) stays",
            ),
        },
        policy="default-but-not-chosen",
        namespace="ci",
    ),
    "default-is-never-refused": Case(
        {},
        {
            "app": Want(P, D, "the policy's default for namespace ci"),
            "db": Want(P, D, "the policy's default for namespace ci"),
        },
        policy="default-never-refused",
        namespace="ci",
    ),
    "request-for-the-default-mode-is-still-refused-where-not-allowed": Case(
        {f"{KILL}.db": "process"},
        {
            "app": Want(P, D, "the policy's default for namespace ci"),
            "db": Want(P, R, f"{KILL}.db=process", "(process) stays"),
        },
        policy="default-never-refused",
        namespace="ci",
    ),
    # ---- several problems for one container: all said, in one warning
    "invalid-pod-form-and-refused-container-form": Case(
        {KILL: "both", f"{KILL}.db": "process"},
        {
            "app": Want(None, U, "", '"both" is not'),
            "db": Want(None, R, f"{KILL}.db=process", '"both" is not'),
        },
        policy="process-for-ci",
    ),
}


def _pod(case: Case) -> PodProjection:
    return PodProjection(
        namespace=case.namespace,
        qos_class=QosClass.BURSTABLE,
        kubelet_scores=dict.fromkeys(CONTAINERS, 873),
        annotations=case.annotations,
        namespace_labels=case.labels,
    )


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_kill_mode_table(case: Case) -> None:
    decisions = decide_kill_modes(_pod(case), LOADED[case.policy])
    assert [decision.container for decision in decisions] == list(CONTAINERS)
    for decision in decisions:
        want = case.want[decision.container]
        got = (decision.mode, decision.outcome, decision.source)
        assert got == (want.mode, want.outcome, want.source), decision
        if want.warning is None and want.outcome is not Outcome.REFUSED:
            assert decision.warning is None, decision.warning
        else:
            assert decision.warning is not None
            assert (want.warning or "") in decision.warning, decision.warning
        # Every refusal is explained, naming what asked.
        if decision.outcome is Outcome.REFUSED:
            assert decision.warning is not None and decision.source in decision.warning
            assert NOT_ALLOWED in decision.warning


def test_decide_pod_gives_the_same_kill_modes() -> None:
    for case in CASES.values():
        pod = _pod(case)
        policy = LOADED[case.policy]
        assert decide_pod(pod, policy).kill_modes == decide_kill_modes(pod, policy)


def test_kill_mode_problems_never_reach_the_score_warnings() -> None:
    """One bad oom-kill key raises one Warning (the kill mode's), never a second one."""
    pod = PodProjection(
        "web",
        QosClass.BURSTABLE,
        {"app": 873},
        {KILL: "Process", f"{KILL}.ghost": "process", f"{KILL}.app": "x"},
    )
    result = decide_pod(pod, LOADED["no-process"])
    assert result.warnings == () and result.all_warnings == ()
    assert all(not decision.warnings for decision in result.decisions)
    assert all(decision.invalid_keys == () for decision in result.decisions)
    (kill_mode,) = result.kill_modes
    assert kill_mode.warning is not None
    for fragment in ('"Process"', "oom-kill.ghost", f"{KILL}.app: "):
        assert fragment in kill_mode.warning


def test_score_problems_never_reach_the_kill_mode() -> None:
    pod = PodProjection(
        "web",
        QosClass.BURSTABLE,
        {"app": 873},
        {
            PROTECT: "yes",
            "oomguard.io/protect.ghost": "true",
            "oomguard.io/nope": "1",
            KILL: "process",
        },
    )
    result = decide_pod(pod, AdminPolicy())
    assert len(result.all_warnings) == 3
    assert result.kill_modes == (KillModeDecision("app", P, A, f"{KILL}=process", None),)


def test_both_keys_decide_independently() -> None:
    """A kill mode never conflicts with a score key: each container gets both."""
    pod = PodProjection(
        "db",
        QosClass.BURSTABLE,
        {"app": 873, "db": 873},
        {f"{KILL}.db": "process", "oomguard.io/oom-score-adj.db": "900", PROTECT: "true"},
    )
    result = decide_pod(pod, load_policy("trusted_namespaces: {names: [db]}"))
    score = {decision.container: decision for decision in result.decisions}
    assert score["db"].desired == 900 and score["app"].desired == 3
    assert score["db"].warnings == () and score["app"].warnings == ()
    modes = {decision.container: decision.mode for decision in result.kill_modes}
    assert modes == {"app": None, "db": P}


def test_the_same_pod_problem_reads_the_same_for_every_container() -> None:
    """Warnings are said once per distinct message per pod: pod-wide ones must match."""
    pod = PodProjection(
        "web", QosClass.BURSTABLE, {"a": 1, "b": 1, "c": 1}, {KILL: "PROCESS", f"{KILL}.x": "y"}
    )
    assert len({decision.warning for decision in decide_kill_modes(pod, AdminPolicy())}) == 1


def test_a_pod_without_containers_has_no_kill_modes() -> None:
    pod = PodProjection("web", QosClass.BURSTABLE, {}, {KILL: "process"})
    assert decide_kill_modes(pod, AdminPolicy()) == ()
    assert decide_pod(pod, AdminPolicy()).kill_modes == ()


def test_a_restricted_mode_is_allowed_by_names_or_selector() -> None:
    rules = load_policy(
        "oom_kill: {process: {names: [ci], selector: {matchLabels: {runner: 'yes'}}}}"
    ).oom_kill
    assert rules.allows("process", "ci", {})
    assert rules.allows("process", "other", {"runner": "yes"})
    assert not rules.allows("process", "other", {"runner": "no"})
    assert rules.allows("container", "other", {})  # the other mode stays open


# ----------------------------------------------------------------------- the grammar

KILL_MODE_VALUES = {
    "container": ("container", None),
    "process": ("process", None),
    "upper": ("Process", "must be written in lower case: process"),
    "all-upper": ("CONTAINER", "must be written in lower case: container"),
    "leading-space": (" process", "has spaces around it"),
    "newline": ("process\n", "has spaces around it"),
    "empty": ("", '"" is not "container" or "process"'),
    "boolean": ("true", '"true" is not'),
    "number": ("1", '"1" is not'),
    "oom-group-name": ("group", '"group" is not'),
    "plural": ("processes", '"processes" is not'),
    "nul": ("process\x00", r'"process\u0000" is not'),
    "long": ("x" * 10_000, '"' + "x" * 40 + '"...'),
}


@pytest.mark.parametrize(
    ("value", "reason"), KILL_MODE_VALUES.values(), ids=KILL_MODE_VALUES.keys()
)
def test_parse_kill_mode(value: str, reason: str | None) -> None:
    if reason is None:
        assert parse_kill_mode(value) == value
        return
    with pytest.raises(AnnotationError) as raised:
        parse_kill_mode(value)
    assert reason in str(raised.value)
    assert str(raised.value).isprintable() and len(str(raised.value)) < 200


def test_one_vocabulary_for_annotation_policy_and_mode() -> None:
    assert {mode.value for mode in KillMode} == set(KILL_MODE_WORDS)
    assert set(get_args(KillModeDefault.model_fields["mode"].annotation)) == set(KILL_MODE_WORDS)


def test_kill_mode_is_memory_oom_group() -> None:
    assert (KillMode.CONTAINER.oom_group, KillMode.PROCESS.oom_group) == (1, 0)
    assert KillMode.of_oom_group(1) is KillMode.CONTAINER
    assert KillMode.of_oom_group(0) is KillMode.PROCESS
    for mode in KillMode:
        assert KillMode.of_oom_group(mode.oom_group) is mode
        assert KillMode(mode.value) is mode


def test_oom_kill_is_a_known_key_now() -> None:
    reading = read_annotations({KILL: "process", f"{KILL}.app": "container"}, ["app"])
    assert reading.pod_problems == ()
    ask = reading.kill_mode_for("app")
    assert ask.problems == () and ask.request is not None
    assert (ask.request.key, ask.request.mode) == (f"{KILL}.app", "container")


def test_unknown_keys_list_oom_kill_among_the_known() -> None:
    reading = read_annotations({"oomguard.io/oom-kil": "process"}, ["app"])
    (problem,) = reading.pod_problems
    assert "not an oomguard annotation" in problem and "oom-kill" in problem


# ------------------------------------------------------------------ the policy model

OOM_KILL_EXAMPLE = """
oom_kill:
  process:   {names: [ci], selector: {matchLabels: {oomguard.io/multi-process: "true"}}}
  container: {names: [ci, databases]}
  defaults:
    - namespaces: {names: [ci]}
      mode: process
"""


def test_the_documented_example_loads() -> None:
    rules = load_policy(OOM_KILL_EXAMPLE).oom_kill
    assert rules.allows("process", "ci", {})
    assert rules.allows("process", "web", {"oomguard.io/multi-process": "true"})
    assert not rules.allows("process", "web", {})
    assert rules.allows("container", "databases", {})
    assert not rules.allows("container", "web", {"oomguard.io/multi-process": "true"})
    rule = rules.default_for("ci", {})
    assert rule is not None and rule.mode == "process"
    assert rules.default_for("web", {}) is None


def test_the_default_policy_lets_every_namespace_choose_either_mode() -> None:
    rules = AdminPolicy().oom_kill
    assert rules == load_policy("{}").oom_kill == load_policy("oom_kill: {}").oom_kill
    for mode in KILL_MODE_WORDS:
        assert rules.allows(mode, "any", {}) and rules.allows(mode, "kube-system", {"a": "b"})
    assert rules.default_for("any", {}) is None


def test_an_empty_rule_and_an_absent_rule_differ() -> None:
    assert load_policy("oom_kill: {process: {}}") != AdminPolicy()
    assert not load_policy("oom_kill: {process: {names: []}}").oom_kill.allows("process", "a", {})


INVALID_POLICIES = {
    "bad-mode-name": (
        "oom_kill: {defaults: [{namespaces: {names: [ci]}, mode: Process}]}",
        "oom_kill.defaults.0.mode: Input should be 'container' or 'process'",
    ),
    "mode-as-annotation-key": (
        "oom_kill: {defaults: [{namespaces: {names: [ci]}, mode: oom-group}]}",
        "oom_kill.defaults.0.mode",
    ),
    "mode-as-number": (
        "oom_kill: {defaults: [{namespaces: {names: [ci]}, mode: 1}]}",
        "oom_kill.defaults.0.mode",
    ),
    "missing-mode": (
        "oom_kill: {defaults: [{namespaces: {names: [ci]}}]}",
        "oom_kill.defaults.0.mode: Field required",
    ),
    "default-request-word": (
        "oom_kill: {defaults: [{namespaces: {names: [ci]}, request: process}]}",
        "oom_kill.defaults.0.request: Extra inputs are not permitted",
    ),
    "default-chooses-no-namespace": (
        "oom_kill: {defaults: [{namespaces: {}, mode: process}]}",
        "oom_kill.defaults.0.namespaces: chooses no namespace",
    ),
    "unknown-key": ("oom_kill: {proces: {names: [ci]}}", "oom_kill.proces: Extra inputs"),
    "unknown-mode-key": ("oom_kill: {group: {names: [ci]}}", "oom_kill.group: Extra inputs"),
    "empty-selector": (
        "oom_kill: {process: {selector: {}}}",
        "oom_kill.process.selector: an empty selector would match every namespace",
    ),
    "empty-selector-in-default": (
        "oom_kill: {defaults: [{namespaces: {selector: {}}, mode: container}]}",
        "oom_kill.defaults.0.namespaces.selector: an empty selector",
    ),
    "written-with-no-value": (
        "oom_kill:\n  process:\n",
        "oom_kill.process: has no value; list the namespaces that may choose process",
    ),
    "container-with-no-value": ("oom_kill: {container: null}", "may choose container"),
    "not-a-dns-label": (
        "oom_kill: {container: {names: [CI]}}",
        "oom_kill.container.names.0: String should match pattern",
    ),
    "section-as-a-list": ("oom_kill: [process]", "oom_kill: Input should be"),
    "section-as-a-word": ("oom_kill: process", "oom_kill: Input should be"),
    "defaults-as-a-map": (
        "oom_kill: {defaults: {namespaces: {names: [ci]}, mode: process}}",
        "oom_kill.defaults: Input should be a list",
    ),
    "bad-selector-operator": (
        "oom_kill: {process: {selector: {matchExpressions: [{key: a, operator: Equals}]}}}",
        "oom_kill.process.selector.matchExpressions.0.operator",
    ),
}


@pytest.mark.parametrize(
    ("text", "fragment"), INVALID_POLICIES.values(), ids=INVALID_POLICIES.keys()
)
def test_invalid_oom_kill_sections_say_why_in_one_sentence(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as raised:
        load_policy(text)
    message = str(raised.value)
    assert fragment in message
    assert message.endswith(".") and "\n" not in message


def test_a_repeated_key_in_the_section_is_refused() -> None:
    """The bounded loader applies to the new section as to the rest."""
    with pytest.raises(PolicyError, match="repeats the key"):
        load_policy("oom_kill:\n  process: {names: [a]}\n  process: {names: [b]}\n")


USES_SELECTOR_CASES = {
    "names-only": ("oom_kill: {process: {names: [ci]}, container: {}}", False),
    "default-names-only": (
        "oom_kill: {defaults: [{namespaces: {names: [ci]}, mode: process}]}",
        False,
    ),
    "process-selector": ("oom_kill: {process: {selector: {matchLabels: {a: b}}}}", True),
    "container-selector": (
        "oom_kill: {container: {selector: {matchExpressions: [{key: a, operator: Exists}]}}}",
        True,
    ),
    "default-selector": (
        "oom_kill: {defaults: [{namespaces: {names: [ci]}, mode: process},"
        " {namespaces: {selector: {matchLabels: {a: b}}}, mode: container}]}",
        True,
    ),
}


@pytest.mark.parametrize(
    ("text", "uses"), USES_SELECTOR_CASES.values(), ids=USES_SELECTOR_CASES.keys()
)
def test_uses_namespace_selector_counts_the_oom_kill_selectors(text: str, uses: bool) -> None:
    assert load_policy(text).uses_namespace_selector is uses


def test_the_chart_schema_has_the_section() -> None:
    schema = AdminPolicy.model_json_schema(by_alias=True)
    assert "oom_kill" in schema["properties"]
    rules = schema["$defs"]["KillModeRules"]
    assert rules["additionalProperties"] is False
    assert set(rules["properties"]) == {"process", "container", "defaults"}
    # Left out, yes; written empty, no: the schema refuses what the agent refuses.
    assert "anyOf" not in rules["properties"]["process"]


# ------------------------------------------------------------------------- hypothesis

annotation_keys = st.one_of(
    st.sampled_from([KILL, f"{KILL}.app", f"{KILL}.db", f"{KILL}.ghost", f"{KILL}."]),
    st.sampled_from([PROTECT, "oomguard.io/oom-score-adj.db", "oomguard.io/sacrifice"]),
    st.text(max_size=12).map(lambda suffix: f"{KILL}.{suffix}"),
)
annotation_values = st.one_of(
    st.sampled_from(["container", "process", "Process", " process", "", "true", "0", "1"]),
    st.text(max_size=20),
)


@settings(max_examples=300)
@given(
    annotations=st.dictionaries(annotation_keys, annotation_values, max_size=5),
    policy_name=st.sampled_from(list(LOADED)),
    namespace=st.sampled_from(["web", "ci", "db"]),
    labels=st.sampled_from([{}, {"runner": "x"}, {"oomguard.io/multi-process": "true"}]),
)
def test_hostile_annotations_never_raise_nor_exceed_the_rules(
    annotations: dict[str, str], policy_name: str, namespace: str, labels: dict[str, str]
) -> None:
    policy = LOADED[policy_name]
    pod = PodProjection(namespace, QosClass.BURSTABLE, {"app": 873, "db": 873}, annotations, labels)
    rules = policy.oom_kill
    default = rules.default_for(namespace, labels)
    baseline = None if default is None else KillMode(default.mode)
    result = decide_pod(pod, policy)
    assert not any("oom-kill" in warning for warning in result.all_warnings)
    for decision in result.kill_modes:
        if decision.outcome is Outcome.APPLIED:
            assert decision.mode is not None and rules.allows(decision.mode, namespace, labels)
            assert annotations.get(decision.source.rpartition("=")[0]) == decision.mode
        else:
            assert decision.mode is baseline  # never a mode the pod was refused
        assert (decision.outcome is Outcome.REFUSED) <= (decision.warning is not None)
        assert decision.warning is None or decision.warning.isprintable()
        assert decision.source.isprintable()


def test_json_policies_with_the_section_load() -> None:
    document: dict[str, Any] = {
        "oom_kill": {"container": {"names": ["db"]}, "defaults": []},
    }
    assert load_policy(json.dumps(document)).oom_kill.allows("container", "db", {})


def test_the_deepest_valid_policy_is_inside_the_depth_limit() -> None:
    """oom_kill.defaults[i].namespaces.selector.matchExpressions[j].values[k]: 10 levels."""
    deepest = (
        "oom_kill: {defaults: [{namespaces: {selector: {matchExpressions:"
        " [{key: a, operator: In, values: [b]}]}}, mode: process}]}"
    )
    rule = load_policy(deepest).oom_kill.default_for("x", {"a": "b"})
    assert rule is not None and rule.mode == "process"
