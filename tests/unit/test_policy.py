"""The policy core: annotation grammar, the admin's policy file, and the decision table.

The decision table is written out by hand (like kubelet's policy_test.go), one row
per QoS class x request x admin policy, so a change of behaviour shows up as a
changed row rather than a changed formula. Hypothesis then throws hostile
annotation values and arbitrary policies at the same code.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from oomguard.steer.admin import NO_LABELS, AdminPolicy, PolicyError, load_policy
from oomguard.steer.annotations import (
    AnnotationError,
    Word,
    parse_score_adj,
    parse_switch,
    read_annotations,
)
from oomguard.steer.decision import Decision, Outcome, PodProjection, decide, decide_pod
from oomguard.steer.kubelet_score import (
    BEST_EFFORT_OOM_SCORE_ADJ,
    BURSTABLE_MAX_OOM_SCORE_ADJ,
    BURSTABLE_MIN_OOM_SCORE_ADJ,
    GUARANTEED_OOM_SCORE_ADJ,
    QOS_ORDER,
    QosClass,
)

G, BU, BE = QosClass.GUARANTEED, QosClass.BURSTABLE, QosClass.BEST_EFFORT
KUBELET = {G: GUARANTEED_OOM_SCORE_ADJ, BU: 873, BE: BEST_EFFORT_OOM_SCORE_ADJ}
PROTECT = "oomguard.io/protect"
SACRIFICE = "oomguard.io/sacrifice"
ADJ = "oomguard.io/oom-score-adj"


def _pod(
    annotations: Mapping[str, str],
    qos: QosClass = BU,
    namespace: str = "web",
    labels: Mapping[str, str] | None = None,
    scores: Mapping[str, int] | None = None,
) -> PodProjection:
    return PodProjection(
        namespace=namespace,
        qos_class=qos,
        kubelet_scores=scores if scores is not None else {"app": KUBELET[qos]},
        annotations=annotations,
        namespace_labels=labels or {},
    )


# ------------------------------------------------------------------ annotation grammar

VALID_NUMBERS = {"0": 0, "1": 1, "-1": -1, "500": 500, "1000": 1000, "-1000": -1000, "-999": -999}
INVALID_NUMBERS = {
    "empty": ("", "empty"),
    "space-before": (" 5", "spaces"),
    "space-after": ("5 ", "spaces"),
    "newline-after": ("5\n", "spaces"),
    "plus": ("+5", "drop the '+'"),
    "negative-zero": ("-0", "write 0"),
    "zeros": ("000", "write 0"),
    "leading-zero": ("05", "leading zeros"),
    "negative-leading-zero": ("-050", "leading zeros"),
    "too-big": ("1001", "outside"),
    "too-small": ("-1001", "outside"),
    "huge": ("9" * 5000, "outside"),
    "huge-negative": ("-" + "9" * 5000, "outside"),
    "float": ("1.5", "whole number"),
    "float-zero": ("0.0", "whole number"),
    "exponent": ("1e3", "whole number"),
    "hex": ("0x10", "whole number"),
    "underscore": ("1_000", "whole number"),
    "arabic-indic-digits": ("\u0661\u0662", "ASCII digits"),
    "fullwidth-digits": ("\uff15", "ASCII digits"),
    "superscript-two": ("\u00b2", "ASCII digits"),
    "nul": ("5\x00", "whole number"),
    "word": ("high", "whole number"),
    "boolean": ("true", "whole number"),
    "double-minus": ("--5", "whole number"),
    "unicode-minus": ("\u22125", "whole number"),
}


@pytest.mark.parametrize(("text", "expected"), VALID_NUMBERS.items(), ids=VALID_NUMBERS.keys())
def test_parse_score_adj_accepts_canonical_numbers(text: str, expected: int) -> None:
    assert parse_score_adj(text) == expected


@pytest.mark.parametrize(("text", "reason"), INVALID_NUMBERS.values(), ids=INVALID_NUMBERS.keys())
def test_parse_score_adj_rejects_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(AnnotationError, match=re.escape(reason)) as raised:
        parse_score_adj(text)
    message = str(raised.value)
    assert len(message) < 200  # a huge value is quoted cut short
    assert message.isprintable()  # NUL and friends are escaped, fit for an Event


SWITCHES = {
    "true": ("true", True, None),
    "false": ("false", False, None),
    "title-case": ("True", None, "lower case"),
    "upper-case": ("FALSE", None, "lower case"),
    "spaces": (" true", None, "spaces"),
    "yes": ("yes", None, 'not "true"'),
    "one": ("1", None, 'not "true"'),
    "empty": ("", None, 'not "true"'),
    "nul": ("true\x00", None, 'not "true"'),
}


@pytest.mark.parametrize(("text", "value", "reason"), SWITCHES.values(), ids=SWITCHES.keys())
def test_parse_switch(text: str, value: bool | None, reason: str | None) -> None:
    if reason is None:
        assert parse_switch(text) is value
    else:
        with pytest.raises(AnnotationError, match=reason):
            parse_switch(text)


def _request_word(annotations: Mapping[str, str], container: str = "app") -> Word | None:
    request = read_annotations(annotations, ["app", "sidecar"]).for_container(container).request
    return None if request is None else request.word


READING_CASES: dict[str, tuple[dict[str, str], str, Word | None]] = {
    "pod-form": ({PROTECT: "true"}, "app", Word.PROTECT),
    "false-is-no-request": ({PROTECT: "false"}, "app", None),
    "container-form": ({f"{SACRIFICE}.app": "true"}, "app", Word.SACRIFICE),
    "container-form-is-only-for-its-container": ({f"{SACRIFICE}.app": "true"}, "sidecar", None),
    "container-form-wins": ({PROTECT: "true", f"{SACRIFICE}.app": "true"}, "app", Word.SACRIFICE),
    "container-false-opts-out": ({PROTECT: "true", f"{PROTECT}.sidecar": "false"}, "sidecar", None),
    "others-keep-pod-form": ({PROTECT: "true", f"{PROTECT}.sidecar": "false"}, "app", Word.PROTECT),
    "conflict-ignored": ({PROTECT: "true", SACRIFICE: "true"}, "app", None),
    "conflict-with-number": ({PROTECT: "true", ADJ: "5"}, "app", None),
    "false-does-not-conflict": ({PROTECT: "false", SACRIFICE: "true"}, "app", Word.SACRIFICE),
    "invalid-is-as-if-absent": ({PROTECT: "yes", ADJ: "7"}, "app", Word.OOM_SCORE_ADJ),
    "invalid-container-form-falls-back": (
        {PROTECT: "true", f"{ADJ}.app": "x"},
        "app",
        Word.PROTECT,
    ),
    "other-prefixes-ignored": ({"example.com/protect": "true"}, "app", None),
}


@pytest.mark.parametrize(
    ("annotations", "container", "word"), READING_CASES.values(), ids=READING_CASES.keys()
)
def test_read_annotations(annotations: dict[str, str], container: str, word: Word | None) -> None:
    assert _request_word(annotations, container) is word


def test_pod_wide_problems() -> None:
    reading = read_annotations(
        {
            "oomguard.io/protected": "true",
            f"{PROTECT}.missing": "true",
            f"{PROTECT}.": "true",
            f"{PROTECT}.App": "true",
        },
        ["app"],
    )
    problems = " | ".join(reading.pod_problems)
    assert "oomguard.io/protected" in problems and "not an oomguard annotation" in problems
    assert problems.count("names no container") == 3
    assert "containers: app" in problems


def test_conflict_and_invalid_problems_reach_the_decision() -> None:
    decision = decide(_pod({PROTECT: "true", SACRIFICE: "true", ADJ: "1e3"}), "app", AdminPolicy())
    assert decision.desired is None
    assert any("conflict" in warning for warning in decision.warnings)
    assert any("1e3" in warning for warning in decision.warnings)
    assert decision.invalid_keys == (ADJ,)


# ----------------------------------------------------------------------- policy file

POLICY_EXAMPLE = """
trusted_namespaces:
  names: [databases]
  selector:
    matchLabels: {oomguard.io/trusted: "true"}
    matchExpressions:
      - {key: tier, operator: In, values: [critical]}
allow_never_kill: false
qos:
  Guaranteed: {lowest: -998, highest: 1000}
  Burstable:  {lowest: 3, highest: 1000, protect: 3, sacrifice: 1000}
  BestEffort: {lowest: 999, highest: 1000}
defaults:
  - namespaces: {names: [batch]}
    request: sacrifice
"""


def test_the_documented_example_loads() -> None:
    policy = load_policy(POLICY_EXAMPLE)
    assert policy.trusts("databases", {})
    # Names OR selector; inside the selector every part must hold, as in Kubernetes.
    assert policy.trusts("x", {"oomguard.io/trusted": "true", "tier": "critical"})
    assert not policy.trusts("x", {"oomguard.io/trusted": "true"})
    assert not policy.trusts("x", {"tier": "critical"})
    assert not policy.trusts("x", {"oomguard.io/trusted": "true", "tier": "web"})
    rule = policy.default_for("batch", {})
    assert rule is not None and rule.request == "sacrifice"


SELECTOR_CASES = {
    "in-match": ({"key": "tier", "operator": "In", "values": ["a", "b"]}, {"tier": "b"}, True),
    "in-other-value": ({"key": "tier", "operator": "In", "values": ["a"]}, {"tier": "b"}, False),
    "in-absent": ({"key": "tier", "operator": "In", "values": ["a"]}, {}, False),
    "notin-other": ({"key": "tier", "operator": "NotIn", "values": ["a"]}, {"tier": "b"}, True),
    "notin-absent": ({"key": "tier", "operator": "NotIn", "values": ["a"]}, {}, True),
    "notin-match": ({"key": "tier", "operator": "NotIn", "values": ["a"]}, {"tier": "a"}, False),
    "exists": ({"key": "tier", "operator": "Exists"}, {"tier": ""}, True),
    "exists-absent": ({"key": "tier", "operator": "Exists"}, {}, False),
    "doesnotexist": ({"key": "tier", "operator": "DoesNotExist"}, {}, True),
    "doesnotexist-present": ({"key": "tier", "operator": "DoesNotExist"}, {"tier": "a"}, False),
}


@pytest.mark.parametrize(
    ("expression", "labels", "trusted"), SELECTOR_CASES.values(), ids=SELECTOR_CASES.keys()
)
def test_label_selector_operators(
    expression: dict[str, Any], labels: dict[str, str], trusted: bool
) -> None:
    document = {"trusted_namespaces": {"selector": {"matchExpressions": [expression]}}}
    assert load_policy(json.dumps(document)).trusts("ns", labels) is trusted


@pytest.mark.parametrize("operator", ["NotIn", "DoesNotExist"])
def test_unknown_namespace_labels_match_no_selector(operator: str) -> None:
    """Labels the agent could not read are not "no labels": a `NotIn` selector must
    not trust a namespace because the API was down (only `names` still choose)."""
    expression: dict[str, Any] = {"key": "tier", "operator": operator}
    if operator == "NotIn":
        expression["values"] = ["untrusted"]
    document = {
        "trusted_namespaces": {"names": ["db"], "selector": {"matchExpressions": [expression]}}
    }
    policy = load_policy(json.dumps(document))
    assert policy.trusts("ns", {})  # known, and without the label: chosen
    assert not policy.trusts("ns", NO_LABELS)  # not known: not chosen
    assert policy.trusts("db", NO_LABELS)  # by name: chosen whatever the labels


USES_SELECTOR_CASES = {
    "defaults": ("{}", False),
    "names-only": ("trusted_namespaces: {names: [db]}", False),
    "trusted-selector": ("trusted_namespaces: {selector: {matchLabels: {t: 'y'}}}", True),
    "default-rule-names": (
        "defaults: [{namespaces: {names: [batch]}, request: sacrifice}]",
        False,
    ),
    "default-rule-selector": (
        "defaults: [{namespaces: {names: [batch]}, request: sacrifice},"
        " {namespaces: {selector: {matchExpressions: [{key: t, operator: Exists}]}},"
        " request: protect}]",
        True,
    ),
}


@pytest.mark.parametrize(
    ("text", "uses"), USES_SELECTOR_CASES.values(), ids=USES_SELECTOR_CASES.keys()
)
def test_uses_namespace_selector_says_when_labels_are_needed(text: str, uses: bool) -> None:
    assert load_policy(text).uses_namespace_selector is uses


def test_json_is_accepted_too() -> None:
    text = json.dumps(
        {"trusted_namespaces": {"names": ["db"]}, "qos": {"Burstable": {"lowest": -500}}}
    )
    policy = load_policy(text)
    assert policy.qos[BU].lowest == -500
    assert policy.qos[BU].protect_value == -500  # protect defaults to lowest


def test_defaults_preserve_qos_order_inside_kubelet_bands() -> None:
    policy = load_policy("{}")
    assert [policy.qos[q].lowest for q in QOS_ORDER] == [
        GUARANTEED_OOM_SCORE_ADJ - 1,
        BURSTABLE_MIN_OOM_SCORE_ADJ,
        BURSTABLE_MAX_OOM_SCORE_ADJ,
    ]
    assert all(policy.qos[q].sacrifice_value == 1000 for q in QOS_ORDER)
    assert not policy.allow_never_kill
    assert not policy.trusts("kube-system", {"kubernetes.io/metadata.name": "kube-system"})


INVALID_POLICIES = {
    "empty-file": ("", "empty"),
    "only-whitespace": ("  \n", "empty"),
    "not-a-mapping": ("[1, 2]", "mapping"),
    "scalar": ("hello", "mapping"),
    "bad-yaml": ("qos: [unclosed", "not valid YAML"),
    "duplicate-key": ("allow_never_kill: false\nallow_never_kill: true", "repeats the key"),
    "nested-duplicate-key": ("qos:\n  Burstable: {lowest: 5, lowest: 6}", "repeats the key"),
    "typo-top-level": ("allow_neverkill: true", "allow_neverkill: Extra inputs"),
    "typo-class": ("qos: {Bestefort: {}}", "qos.Bestefort: Extra inputs"),
    "lowercase-class": ("qos: {burstable: {}}", "qos.burstable: Extra inputs"),
    "snake-case-selector": (
        "trusted_namespaces: {selector: {match_labels: {a: b}}}",
        "match_labels: Extra inputs",
    ),
    "string-number": ('qos: {Burstable: {lowest: "5"}}', "valid integer"),
    "float-number": ("qos: {Burstable: {lowest: 5.5}}", "valid integer"),
    "bool-number": ("qos: {Burstable: {lowest: true}}", "valid integer"),
    "out-of-range": ("qos: {Burstable: {highest: 1001}}", "less than or equal to 1000"),
    "lowest-above-highest": ("qos: {Burstable: {lowest: 500, highest: 400}}", "above highest"),
    "protect-outside": ("qos: {Burstable: {protect: -5}}", "protect .-5. is outside"),
    "sacrifice-outside": ("qos: {Burstable: {highest: 900, sacrifice: 1000}}", "sacrifice"),
    "protect-above-sacrifice": (
        "qos: {Burstable: {protect: 800, sacrifice: 700}}",
        "protect .800. is above sacrifice",
    ),
    "never-kill-not-allowed": ("qos: {Guaranteed: {lowest: -1000}}", "allow_never_kill"),
    "default-never-kill-not-allowed": (
        "defaults: [{namespaces: {names: [a]}, request: -1000}]",
        "allow_never_kill",
    ),
    "burstable-below-guaranteed": (
        "qos: {Guaranteed: {lowest: -500}, Burstable: {lowest: -600}}",
        "never be made safer",
    ),
    "besteffort-below-burstable": ("qos: {BestEffort: {lowest: 2}}", "qos.BestEffort.lowest .2."),
    "burstable-as-safe-as-guaranteed": (
        "allow_never_kill: true\nqos: {Guaranteed: {lowest: -1000}, Burstable: {lowest: -997}}",
        "must stay above -997",
    ),
    "besteffort-never-kill": (
        "allow_never_kill: true\nqos: {Guaranteed: {lowest: -1000}, Burstable: {lowest: -996}, "
        "BestEffort: {lowest: -1000}}",
        "BestEffort",
    ),
    "empty-selector": ("trusted_namespaces: {selector: {}}", "match every namespace"),
    "bad-operator": (
        "trusted_namespaces: {selector: {matchExpressions: [{key: a, operator: in, values: [b]}]}}",
        "operator",
    ),
    "in-without-values": (
        "trusted_namespaces: {selector: {matchExpressions: [{key: a, operator: In}]}}",
        "needs at least one value",
    ),
    "exists-with-values": (
        "trusted_namespaces: {selector: {matchExpressions: "
        "[{key: a, operator: Exists, values: [b]}]}}",
        "takes no values",
    ),
    "namespace-not-a-list": ("trusted_namespaces: {names: databases}", "should be a list"),
    "namespace-not-dns": ("trusted_namespaces: {names: [Kube_System]}", "names.0"),
    "yaml-norway": ("trusted_namespaces: {names: [no]}", "valid string"),
    "label-value-not-string": (
        "trusted_namespaces: {selector: {matchLabels: {trusted: true}}}",
        "valid string",
    ),
    "default-without-namespaces": (
        "defaults: [{namespaces: {}, request: protect}]",
        "chooses no namespace",
    ),
    "default-bad-word": (
        "defaults: [{namespaces: {names: [a]}, request: Protect}]",
        "must be protect",
    ),
    "default-bad-number": (
        "defaults: [{namespaces: {names: [a]}, request: 5000}]",
        "must be protect",
    ),
    "default-missing-request": (
        "defaults: [{namespaces: {names: [a]}}]",
        "request: Field required",
    ),
    "python-tag": ("!!python/object:os.system {}", "not valid YAML"),
}


@pytest.mark.parametrize(
    ("text", "fragment"), INVALID_POLICIES.values(), ids=INVALID_POLICIES.keys()
)
def test_invalid_policies_say_why_in_one_sentence(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError, match=fragment) as raised:
        load_policy(text)
    message = str(raised.value)
    assert message.endswith(".")
    assert "\n" not in message


# Hostile policy files (issue 14): each must end as a PolicyError, quickly.


def alias_bomb(levels: int = 9, fan_out: int = 9) -> str:
    """ "Billion laughs": each anchor names the previous one fan_out times (~400 bytes)."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * fan_out) + "]"]
    for level in range(1, levels):
        refs = ", ".join([f"*l{level - 1}"] * fan_out)
        lines.append(f"l{level}: &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


HOSTILE_POLICIES = {
    # 200 kB, well under the size cap: PyYAML's composer recursed until RecursionError.
    "deep-flow-list": ("[" * 100_000 + "]" * 100_000, "nested more than"),
    "deep-flow-map": ("{a: " * 50_000 + "1" + "}" * 50_000, "nested more than"),
    "deep-block-list": ("- " * 50_000 + "x", "nested more than"),
    "alias-bomb": (alias_bomb(), "more than"),
    "alias-bomb-as-keys": (
        alias_bomb() + "qos: {*l8: 1}",
        "more than",
    ),
    "alias-cycle": ("a: &a [*a]", "refers to a value that contains it"),
    "undefined-alias": ("qos: *nowhere", "undefined alias"),
    "merge-key-bomb": (
        "a: &a {x: 1, y: 2, z: 3}\n"
        + "".join(
            f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}' if i else '*a'] * 9)}]}}\n"
            for i in range(9)
        ),
        "more than",
    ),
    # int() of a long sexagesimal number is quadratic; of 5,000 digits, a ValueError.
    "long-sexagesimal-int": (
        "allow_never_kill: 1" + ":59" * 300_000,
        r"refused \(line 1, column 19\): a value is longer than",
    ),
    "int-over-python-digit-limit": ("allow_never_kill: " + "9" * 4_500, "longer than 4096"),
    "impossible-date": (
        "allow_never_kill: 2024-13-45",
        r"\(line 1, column 19\): this value cannot be read: month",
    ),
    "two-documents": ("{}\n---\n{}", "single document"),
    "long-duplicate-key": (
        "x" * 1000 + ": 1\n" + "x" * 1000 + ": 2",
        "repeats the key",
    ),
}


@pytest.mark.parametrize(
    ("text", "fragment"), HOSTILE_POLICIES.values(), ids=HOSTILE_POLICIES.keys()
)
def test_hostile_policies_are_policy_errors(text: str, fragment: str) -> None:
    with pytest.raises(PolicyError, match=fragment) as raised:
        load_policy(text)
    message = str(raised.value)
    assert message.endswith(".") and "\n" not in message
    assert len(message) < 1000  # a hostile key is quoted short, never whole


def test_alias_bomb_is_refused_instead_of_freezing_the_agent() -> None:
    """In a child process, so a regression shows as a failure, not a hung test run.

    The bound is not a timing assertion: a fixed loader answers in well under a second,
    the unfixed one had not finished after 60 s.
    """
    code = (
        "import sys\n"
        "from oomguard.steer.admin import PolicyError, load_policy\n"
        "try:\n"
        "    load_policy(sys.stdin.read())\n"
        "except PolicyError as error:\n"
        "    print(error)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code],
            input=alias_bomb(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("load_policy did not finish on a 400-byte alias bomb")
    assert done.returncode == 0, done.stderr
    assert "aliases count each time they are used" in done.stdout


def test_anchors_and_aliases_within_the_budget_still_work() -> None:
    policy = load_policy(
        "trusted_namespaces: {names: &ns [db, cache]}\n"
        "defaults: [{namespaces: {names: *ns}, request: protect}]\n"
        "qos:\n"
        "  Burstable: &wide {lowest: 500, highest: 1000}\n"
        "  BestEffort: *wide\n"
    )
    assert policy.trusted_namespaces.names == ("db", "cache")
    assert policy.qos[BE].lowest == policy.qos[BU].lowest == 500


def test_the_deepest_valid_policy_is_far_inside_the_depth_limit() -> None:
    nested = (
        "trusted_namespaces: {selector: {matchExpressions: [{key: a, operator: In, values: [b]}]}}"
    )
    assert load_policy(nested).trusts("x", {"a": "b"})


def test_never_kill_for_guaranteed_only_when_allowed() -> None:
    policy = load_policy("allow_never_kill: true\nqos: {Guaranteed: {lowest: -1000}}")
    assert policy.qos[G].protect_value == -1000


def test_policy_json_schema_is_available_for_the_chart() -> None:
    schema = AdminPolicy.model_json_schema(by_alias=True)
    assert schema["additionalProperties"] is False
    assert {"trusted_namespaces", "allow_never_kill", "qos", "defaults"} <= set(
        schema["properties"]
    )


# -------------------------------------------------------------------- decision table

# The admin rules the table runs under. Namespace "db" is trusted by name in TRUSTED and
# NEVER_KILL; "critical" is trusted by label in WIDE; "batch" and "protected" have
# admin defaults and no trust.
POLICIES: dict[str, tuple[str, str, dict[str, str]]] = {
    "untrusted": ("{}", "web", {}),
    "trusted": ("trusted_namespaces: {names: [db]}", "db", {}),
    "wide": (
        """
        trusted_namespaces: {selector: {matchLabels: {tier: critical}}}
        qos:
          Guaranteed: {lowest: -999}
          Burstable: {lowest: -500, highest: 900, protect: -200}
          BestEffort: {lowest: 500, sacrifice: 800}
        """,
        "critical",
        {"tier": "critical"},
    ),
    "never-kill": (
        "trusted_namespaces: {names: [db]}\nallow_never_kill: true\n"
        "qos: {Guaranteed: {lowest: -1000}}",
        "db",
        {},
    ),
    "default-sacrifice": (
        "defaults: [{namespaces: {names: [batch]}, request: sacrifice}]",
        "batch",
        {},
    ),
    "default-protect": (
        "defaults: [{namespaces: {names: [protected]}, request: protect}]",
        "protected",
        {},
    ),
}

REQUESTS: dict[str, dict[str, str]] = {
    "none": {},
    "protect": {PROTECT: "true"},
    "sacrifice": {SACRIFICE: "true"},
    "adj-min": {ADJ: "-1000"},
    "adj-500": {ADJ: "500"},
    "adj-max": {ADJ: "1000"},
    "adj-0": {ADJ: "0"},
}

U, D, A, B, R = (
    Outcome.UNMANAGED,
    Outcome.DEFAULTED,
    Outcome.APPLIED,
    Outcome.BOUNDED,
    Outcome.REFUSED,
)
K: int | None = None  # the baseline stands: desired is None
# (policy, qos) -> one (desired, outcome) per request, in REQUESTS order:
#  none        protect     sacrifice   adj=-1000   adj=500     adj=1000    adj=0
TABLE: dict[tuple[str, QosClass], list[tuple[int | None, Outcome]]] = {
    ("untrusted", G): [(K, U), (K, R), (1000, A), (K, R), (500, A), (1000, A), (0, A)],
    ("untrusted", BU): [(K, U), (K, R), (1000, A), (K, R), (K, R), (1000, A), (K, R)],
    ("untrusted", BE): [(K, U), (K, R), (1000, A), (K, R), (K, R), (1000, A), (K, R)],
    ("trusted", G): [(K, U), (-998, A), (1000, A), (-998, B), (500, A), (1000, A), (0, A)],
    ("trusted", BU): [(K, U), (3, A), (1000, A), (3, B), (500, A), (1000, A), (3, B)],
    ("trusted", BE): [(K, U), (999, A), (1000, A), (999, B), (999, B), (1000, A), (999, B)],
    ("wide", G): [(K, U), (-999, A), (1000, A), (-999, B), (500, A), (1000, A), (0, A)],
    ("wide", BU): [(K, U), (-200, A), (900, A), (-500, B), (500, A), (900, B), (0, A)],
    ("wide", BE): [(K, U), (500, A), (1000, A), (500, B), (500, A), (1000, A), (500, B)],
    ("never-kill", G): [(K, U), (-1000, A), (1000, A), (-1000, A), (500, A), (1000, A), (0, A)],
    ("never-kill", BU): [(K, U), (3, A), (1000, A), (3, B), (500, A), (1000, A), (3, B)],
    ("never-kill", BE): [(K, U), (999, A), (1000, A), (999, B), (999, B), (1000, A), (999, B)],
    ("default-sacrifice", G): [
        (1000, D),
        (1000, R),
        (1000, A),
        (1000, R),
        (1000, R),
        (1000, A),
        (1000, R),
    ],
    ("default-sacrifice", BU): [
        (1000, D),
        (1000, R),
        (1000, A),
        (1000, R),
        (1000, R),
        (1000, A),
        (1000, R),
    ],
    ("default-sacrifice", BE): [
        (1000, D),
        (1000, R),
        (1000, A),
        (1000, R),
        (1000, R),
        (1000, A),
        (1000, R),
    ],
    ("default-protect", G): [
        (-998, D),
        (-998, A),
        (1000, A),
        (-998, R),
        (500, A),
        (1000, A),
        (0, A),
    ],
    ("default-protect", BU): [(3, D), (3, A), (1000, A), (3, R), (500, A), (1000, A), (3, R)],
    ("default-protect", BE): [
        (999, D),
        (999, A),
        (1000, A),
        (999, R),
        (999, R),
        (1000, A),
        (999, R),
    ],
}

ROWS = [
    pytest.param(
        policy_name, qos, request_name, *expected, id=f"{policy_name}-{qos}-{request_name}"
    )
    for (policy_name, qos), row in TABLE.items()
    for request_name, expected in zip(REQUESTS, row, strict=True)
]
LOADED = {name: load_policy(text) for name, (text, _, _) in POLICIES.items()}


@pytest.mark.parametrize(("policy_name", "qos", "request_name", "desired", "outcome"), ROWS)
def test_decision_table(
    policy_name: str, qos: QosClass, request_name: str, desired: int | None, outcome: Outcome
) -> None:
    _, namespace, labels = POLICIES[policy_name]
    pod = _pod(REQUESTS[request_name], qos, namespace, labels)
    decision = decide(pod, "app", LOADED[policy_name])
    assert (decision.desired, decision.outcome) == (desired, outcome), decision.reason
    assert decision.kubelet_value == KUBELET[qos]
    assert decision.reason
    # Every refusal and every cut is explained for the Warning Event.
    assert bool(decision.warnings) == (outcome in (Outcome.REFUSED, Outcome.BOUNDED))


def test_table_covers_every_class_request_and_policy() -> None:
    assert set(TABLE) == {(p, q) for p in POLICIES for q in QOS_ORDER}


def test_per_container_forms_decide_per_container() -> None:
    pod = _pod(
        {PROTECT: "true", f"{SACRIFICE}.log": "true", f"{PROTECT}.proxy": "false"},
        namespace="db",
        scores={"app": 873, "log": 500, "proxy": 900},
    )
    result = decide_pod(pod, LOADED["trusted"])
    by_name = {d.container: d for d in result.decisions}
    assert by_name["app"].desired == 3
    assert by_name["log"].desired == 1000
    assert by_name["proxy"].desired is None
    assert by_name["app"].request_key == PROTECT
    assert by_name["log"].request_key == f"{SACRIFICE}.log"


def test_refusal_names_namespace_values_and_what_stays() -> None:
    decision = decide(_pod({ADJ: "-500"}), "app", AdminPolicy())
    (warning,) = decision.warnings
    assert "namespace web" in warning and "from 873 to -500" in warning
    assert "kubelet's value 873 stays" in warning
    assert decision.target == 873


def test_pod_warnings_are_collected_once() -> None:
    pod = _pod({"oomguard.io/oops": "1", PROTECT: "TRUE"}, scores={"a": 3, "b": 3})
    result = decide_pod(pod, AdminPolicy())
    warnings = result.all_warnings
    assert len(warnings) == len(set(warnings)) == 2


def test_unknown_container_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        decide(_pod({}), "nope", AdminPolicy())


def test_bounds_never_turn_a_raise_into_protection() -> None:
    # The admin caps Burstable at 500 but the kubelet gave 873: sacrifice must not lower it.
    policy = load_policy("qos: {Burstable: {highest: 500}}")
    decision = decide(_pod({SACRIFICE: "true"}), "app", policy)
    assert decision.desired == 873
    assert decision.outcome is Outcome.APPLIED  # sacrifice never lowers: 873 is what it asks


def test_explicit_raise_capped_below_kubelet_keeps_kubelet_value() -> None:
    policy = load_policy("qos: {Burstable: {highest: 500}}")
    decision = decide(_pod({ADJ: "950"}), "app", policy)
    assert decision.desired == 873
    assert decision.outcome is Outcome.BOUNDED
    assert "other side" in decision.warnings[0]


def test_trusted_protection_never_raises_when_lowest_is_above_kubelet() -> None:
    policy = load_policy("trusted_namespaces: {names: [db]}\nqos: {Burstable: {lowest: 900}}")
    decision = decide(_pod({ADJ: "100"}, namespace="db"), "app", policy)
    assert decision.desired == 873


def test_kubelet_value_out_of_kernel_range_is_clamped() -> None:
    decision = decide(_pod({}, scores={"app": 1001}), "app", AdminPolicy())
    assert decision.kubelet_value == 1000


# ------------------------------------------------------------------------- hypothesis

HOSTILE = [
    "",
    " ",
    "\t1",
    "-0",
    "+5",
    "1e3",
    "1E3",
    "1.0",
    "-1000.0",
    "NaN",
    "inf",
    "-inf",
    "0x3e8",
    "\x00",
    "1\x00",
    "\u0661",
    "\uff11\uff10",
    "\u2212500",
    "9" * 10_000,
    "-" + "9" * 10_000,
    "True",
    "TRUE",
    "yes",
    "1",
    "on",
    "\ufefftrue",
    "true\n",
]
annotation_values = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=30),
    st.integers().map(str),
    st.floats().map(str),
    st.integers(min_value=-1100, max_value=1100).map(str),
    st.sampled_from(["true", "false"]),
)
annotation_keys = st.one_of(
    st.sampled_from([PROTECT, SACRIFICE, ADJ]),
    st.sampled_from([PROTECT, SACRIFICE, ADJ]).map(lambda key: key + ".app"),
    st.sampled_from([PROTECT, SACRIFICE, ADJ]).map(lambda key: key + ".sidecar"),
    st.text(max_size=20).map(lambda suffix: "oomguard.io/" + suffix),
)
annotation_maps = st.dictionaries(annotation_keys, annotation_values, max_size=6)
policies = st.sampled_from(list(LOADED))
classes = st.sampled_from(QOS_ORDER)


def _kubelet_for(qos: QosClass, burstable_value: int) -> int:
    return burstable_value if qos is BU else KUBELET[qos]


def _check_decision(decision: Decision, policy: AdminPolicy, pod: PodProjection) -> None:
    bounds = policy.qos[pod.qos_class]
    kubelet = decision.kubelet_value
    baseline = kubelet
    rule = policy.default_for(pod.namespace, pod.namespace_labels)
    if rule is not None:
        baseline = decide(
            PodProjection(pod.namespace, pod.qos_class, {"x": kubelet}), "x", policy
        ).target
    desired = decision.desired
    if desired is not None:
        assert desired in (kubelet, baseline) or bounds.lowest <= desired <= bounds.highest
        assert -1000 <= desired <= 1000
        if desired == -1000:
            assert policy.allow_never_kill and pod.qos_class is G
    if not policy.trusts(pod.namespace, pod.namespace_labels):
        assert decision.target >= baseline
    if pod.qos_class is not G:
        assert decision.target > GUARANTEED_OOM_SCORE_ADJ
    assert decision.reason.isprintable()
    assert all(warning.isprintable() for warning in decision.warnings)


@settings(max_examples=400)
@given(
    annotations=annotation_maps,
    policy_name=policies,
    qos=classes,
    burstable=st.integers(BURSTABLE_MIN_OOM_SCORE_ADJ, BURSTABLE_MAX_OOM_SCORE_ADJ),
)
def test_hostile_annotations_never_raise_nor_exceed_policy(
    annotations: dict[str, str], policy_name: str, qos: QosClass, burstable: int
) -> None:
    policy = LOADED[policy_name]
    _, namespace, labels = POLICIES[policy_name]
    kubelet = _kubelet_for(qos, burstable)
    pod = _pod(annotations, qos, namespace, labels, {"app": kubelet, "sidecar": kubelet})
    result = decide_pod(pod, policy)
    for decision in result.decisions:
        _check_decision(decision, policy, pod)
    assert all(warning.isprintable() for warning in result.warnings)


@given(value=st.text(max_size=12))
def test_only_canonical_numbers_parse(value: str) -> None:
    try:
        number = parse_score_adj(value)
    except AnnotationError:
        return
    assert str(number) == value and -1000 <= number <= 1000


@given(value=st.text(max_size=8))
def test_only_true_and_false_parse(value: str) -> None:
    try:
        parse_switch(value)
    except AnnotationError:
        return
    assert value in ("true", "false")


scores = st.integers(-1000, 1000)
bounds_documents = st.fixed_dictionaries(
    {},
    optional={
        "lowest": scores,
        "highest": scores,
        "protect": scores,
        "sacrifice": scores,
    },
)
policy_documents = st.fixed_dictionaries(
    {},
    optional={
        "allow_never_kill": st.booleans(),
        "qos": st.fixed_dictionaries(
            {},
            optional={
                "Guaranteed": bounds_documents,
                "Burstable": bounds_documents,
                "BestEffort": bounds_documents,
            },
        ),
        "trusted_namespaces": st.just({"names": ["db"]}),
    },
)


@st.composite
def ordered_policy_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Policies near the edges of what is allowed, so most of them are accepted."""
    edge = st.sampled_from([-1000, -999, -998, -997, -996, 2, 3, 4, 998, 999, 1000])
    lowest = sorted(draw(st.lists(st.one_of(scores, edge), min_size=3, max_size=3)))
    qos: dict[str, dict[str, int]] = {}
    for name, low in zip(("Guaranteed", "Burstable", "BestEffort"), lowest, strict=True):
        high = draw(st.integers(low, 1000))
        bounds = {"lowest": low, "highest": high}
        if draw(st.booleans()):
            bounds["protect"] = draw(st.integers(low, high))
        qos[name] = bounds
    return {
        "allow_never_kill": draw(st.booleans()),
        "qos": qos,
        "trusted_namespaces": {"names": ["db"]},
    }


any_policy_documents = st.one_of(policy_documents, ordered_policy_documents())


def _safest(policy: AdminPolicy, qos: QosClass, kubelet: int) -> int:
    """The lowest value any annotation can get a pod of this class, in a trusted namespace."""
    results = []
    for request in ({PROTECT: "true"}, {ADJ: "-1000"}, {ADJ: "0"}, {}):
        pod = _pod(request, qos, "db", scores={"app": kubelet})
        results.append(decide(pod, "app", policy).target)
    return min(results)


@settings(max_examples=400)
@given(
    document=policy_documents,
    burstable=st.integers(BURSTABLE_MIN_OOM_SCORE_ADJ, BURSTABLE_MAX_OOM_SCORE_ADJ),
)
def test_every_accepted_policy_preserves_qos_order(
    document: dict[str, Any], burstable: int
) -> None:
    try:
        policy = load_policy(json.dumps(document))
    except PolicyError:
        return
    safest = {qos: _safest(policy, qos, _kubelet_for(qos, burstable)) for qos in QOS_ORDER}
    # A riskier class never gets safer than a safer class can be...
    assert safest[G] <= safest[BU] <= safest[BE]
    # ...in particular never as safe as an unannotated Guaranteed pod.
    assert safest[BU] > GUARANTEED_OOM_SCORE_ADJ and safest[BE] > GUARANTEED_OOM_SCORE_ADJ
    # And nothing goes below the kubelet's own -999 unless the admin said so.
    assert safest[G] >= -999 or policy.allow_never_kill
    for qos in QOS_ORDER:
        assert policy.qos[qos].lowest <= policy.qos[qos].protect_value <= policy.qos[qos].highest


@given(document=any_policy_documents)
def test_accepted_policy_bounds_are_ordered(document: dict[str, Any]) -> None:
    try:
        policy = load_policy(json.dumps(document))
    except PolicyError:
        return
    lowest = [policy.qos[qos].lowest for qos in QOS_ORDER]
    assert lowest == sorted(lowest)
    assert min(lowest[1:]) > GUARANTEED_OOM_SCORE_ADJ


@settings(max_examples=300)
@given(text=st.text(max_size=80))
def test_any_text_is_a_policy_or_a_policy_error(text: str) -> None:
    try:
        load_policy(text)
    except PolicyError as error:
        assert str(error)


@given(
    document=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_any_json_document_is_a_policy_or_a_policy_error(document: Any) -> None:
    assume(document is not None)
    try:
        load_policy(json.dumps(document))
    except PolicyError as error:
        assert str(error).endswith(".")
