"""Fuzzing the admin policy file by its YAML *structure* (issue 14).

Short random text (test_policy.py) never reaches the shapes that broke the agent:
deep nesting, anchors named again and again by aliases, aliases inside the value they
name, repeated keys, odd scalars (`<<`, `2024-13-45`, `1:59`). Here hypothesis builds
documents as trees of maps, lists, scalars, anchors and aliases, writes them as YAML
(flow or block style), and checks what an operator relies on:

- `load_policy` returns an AdminPolicy or raises PolicyError, nothing else;
- it does so in bounded time (hypothesis' deadline, seconds where an honest file takes
  milliseconds: the unbounded reader needed minutes for a 400-byte alias bomb);
- a rejected file leaves the policy in force exactly as it was, so no pod is affected;
- an accepted one never lowers a pod the policy neither trusts nor gives a default.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from oomguard.steer.admin import MAX_POLICY_DEPTH, AdminPolicy, PolicyError, load_policy
from oomguard.steer.decision import PodProjection, decide_pod
from oomguard.steer.kubelet_score import QOS_ORDER, QosClass
from oomguard.steer.policy_file import PolicySource

# Far above the milliseconds an example takes; far below what a blow-up takes.
DEADLINE = timedelta(seconds=10)
GOOD_POLICY = "trusted_namespaces: {names: [db]}\nqos: {Burstable: {lowest: 500}}\n"

# Words of the policy's schema, so that many documents get past the first key.
SCHEMA_WORDS = [
    "trusted_namespaces",
    "names",
    "selector",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "values",
    "In",
    "NotIn",
    "Exists",
    "DoesNotExist",
    "allow_never_kill",
    "qos",
    "Guaranteed",
    "Burstable",
    "BestEffort",
    "lowest",
    "highest",
    "protect",
    "sacrifice",
    "defaults",
    "namespaces",
    "request",
    "db",
    "batch",
    "oom_kill",
    "process",
    "container",
    "mode",
]
# Plain scalars YAML resolves to something other than a string, or that trip parsers.
ODD_PLAIN = [
    "<<",
    "~",
    "null",
    "true",
    "false",
    "yes",
    "no",
    "on",
    ".nan",
    ".inf",
    "-.inf",
    "0x1F",
    "0o17",
    "0b101",
    "010",
    "1_000",
    "1:59",
    "-1:30:00",
    "1e3",
    "2024-01-31",
    "2024-13-45",
    "2024-02-30T25:61:00Z",
    "!!str 5",
    "!!int '7'",
    "!!binary aGVsbG8=",
    "!!float 1",
    "!!set {a, b}",
    "!!omap [a: 1]",
    "!!timestamp 2024-01-01",
    "!!python/name:os.system",
]


@dataclass
class Scalar:
    text: str  # already YAML: a plain word or a quoted string


@dataclass
class Alias:
    index: int  # which anchor, modulo the anchors defined before it is written


@dataclass
class Seq:
    items: list[Node]
    anchor: bool = False


@dataclass
class Map:
    pairs: list[tuple[Node, Node]]
    anchor: bool = False


Node = Scalar | Alias | Seq | Map


@dataclass
class Writer:
    """Writes a tree as YAML; anchors are numbered as met, aliases name one of them."""

    anchors: int = 0
    closed: list[int] = field(default_factory=list)  # anchors whose value is complete

    def anchor(self, node: Seq | Map) -> tuple[str, int | None]:
        if not node.anchor:
            return "", None
        self.anchors += 1
        return f"&a{self.anchors} ", self.anchors

    def alias(self, node: Alias) -> str:
        if node.index % 8 == 7 and self.anchors:
            # Any anchor met so far, one still open included: a cycle, sometimes.
            return f"*a{node.index % self.anchors + 1} "
        if not self.closed:
            return "~"
        return f"*a{self.closed[node.index % len(self.closed)]} "

    def flow(self, node: Node) -> str:
        if isinstance(node, Scalar):
            return node.text
        if isinstance(node, Alias):
            return self.alias(node)
        prefix, number = self.anchor(node)
        if isinstance(node, Seq):
            text = prefix + "[" + ", ".join(self.flow(item) for item in node.items) + "]"
        else:
            pairs = (f"{self.flow(key)}: {self.flow(value)}" for key, value in node.pairs)
            text = prefix + "{" + ", ".join(pairs) + "}"
        if number is not None:
            self.closed.append(number)
        return text

    def block(self, node: Map, indent: int = 0) -> str:
        """Maps in block style near the top (as admins write them), flow below."""
        pad = "  " * indent
        lines = []
        for key, value in node.pairs:
            head = f"{pad}{self.flow(key)}:"
            if isinstance(value, Map) and value.pairs and indent < 3:
                prefix, number = self.anchor(value)
                lines.append(f"{head} {prefix}".rstrip())
                lines.append(self.block(value, indent + 1))
                if number is not None:
                    self.closed.append(number)
            else:
                lines.append(f"{head} {self.flow(value)}")
        return "\n".join(lines)


def quoted(text: str) -> str:
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


scalars = st.one_of(
    st.sampled_from(SCHEMA_WORDS).map(Scalar),
    st.sampled_from(ODD_PLAIN).map(Scalar),
    st.integers(-1100, 1100).map(lambda n: Scalar(str(n))),
    st.integers().map(lambda n: Scalar(str(n))),
    st.text(max_size=12).map(lambda t: Scalar(quoted(t))),
    st.integers(0, 30).map(Alias),
)
keys = st.one_of(
    st.sampled_from(SCHEMA_WORDS).map(Scalar),  # a small set: repeated keys are common
    st.sampled_from(["<<", "~", "1", "true", "? x"]).map(Scalar),
    st.integers(0, 30).map(Alias),
)
nodes: st.SearchStrategy[Node] = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.builds(Seq, st.lists(inner, max_size=5), st.booleans()),
        st.builds(Map, st.lists(st.tuples(keys, inner), max_size=5), st.booleans()),
    ),
    max_leaves=40,
)


@st.composite
def documents(draw: st.DrawFn) -> str:
    """A structured document: usually a top-level map of the schema's keys."""
    pairs = draw(st.lists(st.tuples(st.sampled_from(SCHEMA_WORDS).map(Scalar), nodes)))
    if not draw(st.booleans()):
        return Writer().flow(draw(nodes))
    root = Map(pairs)
    return Writer().block(root) if draw(st.booleans()) and pairs else Writer().flow(root)


def first_key(pair: tuple[Node, Node]) -> str:
    """What makes two pairs of a map repeat a key (for lists drawn without repeats)."""
    key = pair[0]
    return key.text if isinstance(key, Scalar) else repr(key)


def word(text: str) -> Scalar:
    return Scalar(text)


def number(low: int = -1000, high: int = 1000) -> st.SearchStrategy[Node]:
    return st.integers(low, high).map(lambda n: Scalar(str(n)))


namespace_lists = st.builds(
    Seq, st.lists(st.sampled_from(["db", "batch", "web", "kube-system"]).map(word), max_size=3)
)
bounds_maps = st.builds(
    Map,
    st.lists(
        st.tuples(
            st.sampled_from(["lowest", "highest", "protect", "sacrifice"]).map(word), number()
        ),
        max_size=4,
        unique_by=first_key,
    ),
    st.booleans(),
)
selectors = st.builds(
    Map,
    st.lists(
        st.one_of(
            st.tuples(
                st.just(word("matchLabels")),
                st.builds(Map, st.lists(st.tuples(scalars, scalars), max_size=2)),
            ),
            st.tuples(
                st.just(word("matchExpressions")),
                st.builds(
                    Seq,
                    st.lists(
                        st.builds(
                            Map,
                            st.lists(
                                st.one_of(
                                    st.tuples(st.just(word("key")), scalars),
                                    st.tuples(
                                        st.just(word("operator")),
                                        st.sampled_from(SCHEMA_WORDS[8:12]).map(word),
                                    ),
                                    st.tuples(st.just(word("values")), namespace_lists),
                                ),
                                max_size=3,
                                unique_by=first_key,
                            ),
                        ),
                        max_size=2,
                    ),
                ),
            ),
        ),
        max_size=2,
        unique_by=first_key,
    ),
)
namespace_selectors = st.builds(
    Map,
    st.lists(
        st.one_of(
            st.tuples(
                st.just(word("names")), st.one_of(namespace_lists, st.integers(0, 9).map(Alias))
            ),
            st.tuples(st.just(word("selector")), selectors),
        ),
        max_size=2,
        unique_by=first_key,
    ),
    st.booleans(),
)


@st.composite
def policy_shaped(draw: st.DrawFn) -> str:
    """Documents shaped like real policies, anchors and aliases reusing their parts.

    Most are accepted, so the bystander property is tested on many real policies.
    """
    classes = ["Guaranteed", "Burstable", "BestEffort"]
    qos_pairs: list[tuple[Node, Node]] = [
        (word(name), draw(st.one_of(bounds_maps, st.integers(0, 9).map(Alias))))
        for name in draw(st.lists(st.sampled_from(classes), max_size=4, unique=True))
    ]
    defaults = st.builds(
        Map,
        st.lists(
            st.one_of(
                st.tuples(st.just(word("namespaces")), namespace_selectors),
                st.tuples(
                    st.just(word("request")),
                    st.one_of(st.sampled_from(["protect", "sacrifice"]).map(word), number()),
                ),
            ),
            min_size=1,
            max_size=3,
            unique_by=first_key,
        ),
    )
    kill_mode_defaults = st.builds(
        Map,
        st.lists(
            st.one_of(
                st.tuples(st.just(word("namespaces")), namespace_selectors),
                st.tuples(
                    st.just(word("mode")),
                    st.sampled_from(["process", "container", "Process", "~"]).map(word),
                ),
            ),
            min_size=1,
            max_size=2,
            unique_by=first_key,
        ),
    )
    oom_kill = st.builds(
        Map,
        st.lists(
            st.one_of(
                st.tuples(st.just(word("process")), namespace_selectors),
                st.tuples(st.just(word("container")), namespace_selectors),
                st.tuples(
                    st.just(word("defaults")),
                    st.builds(Seq, st.lists(kill_mode_defaults, max_size=2)),
                ),
            ),
            max_size=3,
            unique_by=first_key,
        ),
        st.booleans(),
    )
    top: list[tuple[Node, Node]] = [
        (word("trusted_namespaces"), draw(namespace_selectors)),
        (word("allow_never_kill"), draw(st.sampled_from(["true", "false"]).map(word))),
        (word("qos"), Map(qos_pairs, draw(st.booleans()))),
        (word("defaults"), draw(st.builds(Seq, st.lists(defaults, max_size=2)))),
        (word("oom_kill"), draw(oom_kill)),
    ]
    unique = draw(st.integers(0, 4)) > 0  # a repeated key now and then
    chosen = draw(
        st.lists(
            st.sampled_from(top), min_size=1, max_size=7, unique_by=first_key if unique else None
        )
    )
    writer = Writer()
    return writer.block(Map(chosen)) if draw(st.booleans()) else writer.flow(Map(chosen))


@st.composite
def deep_documents(draw: st.DrawFn) -> str:
    """Nesting around the depth limit and far beyond it, lists and maps mixed."""
    depth = draw(
        st.one_of(
            st.integers(MAX_POLICY_DEPTH - 3, MAX_POLICY_DEPTH + 3),
            st.integers(1, 20_000),
        )
    )
    kinds = draw(st.lists(st.booleans(), min_size=1, max_size=8))
    opening, closing = [], []
    for is_map in itertools.islice(itertools.cycle(kinds), depth):
        opening.append("{k: " if is_map else "[")
        closing.append("}" if is_map else "]")
    middle = draw(st.sampled_from(["1", "~", "*a1", "&a1 x", ""]))
    return "qos: " + "".join(opening) + middle + "".join(reversed(closing))


@st.composite
def alias_bombs(draw: st.DrawFn) -> str:
    """Anchors that each name the previous one several times (as lists, maps or merges)."""
    levels = draw(st.integers(2, 14))
    fan_out = draw(st.integers(2, 12))
    style = draw(st.sampled_from(["list", "map", "merge"]))
    lines = ["a0: &a0 [lol, lol, lol]" if style != "merge" else "a0: &a0 {x: 1, y: 2}"]
    for level in range(1, levels):
        refs = [f"*a{level - 1}"] * fan_out
        if style == "list":
            body = "[" + ", ".join(refs) + "]"
        elif style == "map":
            body = "{" + ", ".join(f"k{i}: {ref}" for i, ref in enumerate(refs)) + "}"
        else:
            body = "{<<: [" + ", ".join(refs) + "]}"
        lines.append(f"a{level}: &a{level} {body}")
    where = draw(st.sampled_from(["top", "qos", "key"]))
    last = f"*a{levels - 1}"
    if where == "qos":
        lines.append(f"qos: {{Burstable: {last}}}")
    elif where == "key":
        lines.append(f"names: {{{last} : 1}}")
    return "\n".join(lines) + "\n"


any_document = st.one_of(documents(), policy_shaped(), deep_documents(), alias_bombs())


def assert_policy_or_policy_error(text: str) -> AdminPolicy | None:
    try:
        policy = load_policy(text)
    except PolicyError as error:
        message = str(error)
        assert message.endswith(".") and "\n" not in message
        assert len(message) < 2000
        event("refused: " + re.sub(r"\d+", "N", message)[:70])
        return None
    event("accepted")
    return policy


def assert_bystanders_untouched(policy: AdminPolicy) -> None:
    """A pod the policy neither trusts nor defaults keeps at least the kubelet's value,
    and, asking for no kill mode where no default gives one, the kubelet's kill mode."""
    namespace = "bystander-x7"
    if policy.oom_kill.default_for(namespace, {}) is None:
        pod = PodProjection(namespace, QosClass.BURSTABLE, {"app": 873})
        assert all(kill_mode.mode is None for kill_mode in decide_pod(pod, policy).kill_modes)
    if policy.trusts(namespace, {}) or policy.default_for(namespace, {}) is not None:
        return
    kubelet = {QosClass.GUARANTEED: -997, QosClass.BURSTABLE: 873, QosClass.BEST_EFFORT: 1000}
    for qos in QOS_ORDER:
        for requests in (
            {},
            {"oomguard.io/protect": "true"},
            {"oomguard.io/oom-score-adj": "-1000"},
        ):
            pod = PodProjection(namespace, qos, {"app": kubelet[qos]}, requests)
            for decision in decide_pod(pod, policy).decisions:
                assert decision.target >= kubelet[qos]


@settings(max_examples=200, deadline=DEADLINE)
@given(text=documents())
def test_structured_documents_are_a_policy_or_a_policy_error(text: str) -> None:
    policy = assert_policy_or_policy_error(text)
    if policy is not None:
        assert_bystanders_untouched(policy)


@settings(max_examples=200, deadline=DEADLINE)
@given(text=policy_shaped())
def test_policy_shaped_documents_never_lower_a_bystander(text: str) -> None:
    policy = assert_policy_or_policy_error(text)
    if policy is not None:
        assert_bystanders_untouched(policy)


@settings(max_examples=40, deadline=DEADLINE)
@given(text=deep_documents())
def test_deep_documents_are_a_policy_or_a_policy_error(text: str) -> None:
    assert_policy_or_policy_error(text)


@settings(max_examples=40, deadline=DEADLINE)
@given(text=alias_bombs())
def test_alias_bombs_are_refused_in_bounded_time(text: str) -> None:
    assert_policy_or_policy_error(text)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("policy")


@settings(max_examples=60, deadline=DEADLINE)
@given(text=any_document)
def test_a_rejected_file_leaves_the_policy_in_force_as_it_was(policy_dir: Path, text: str) -> None:
    path = policy_dir / "policy.yaml"
    path.write_text(GOOD_POLICY)
    source = PolicySource(path, poll_interval_s=0.0)
    good = source.current()
    path.write_text(text + "\n# another version\n")
    now = source.current()
    if source.last_error is not None:
        assert now is good
    else:
        assert now == load_policy(text)
