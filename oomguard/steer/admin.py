"""The admin policy: what pods may ask for, as a validated model, read from a bounded file.

The admin policy file (YAML or JSON, from a ConfigMap; every key optional)
--------------------------------------------------------------------------
    trusted_namespaces:            # who may ask for protection (lowering)
      names: [databases]
      selector:                    # OR a Kubernetes label selector on namespace labels,
        matchLabels: {oomguard.io/trusted: "true"}   # (every part of it must hold)
        matchExpressions:
          - {key: tier, operator: In, values: [critical]}
    allow_never_kill: false        # may anything reach -1000?
    qos:                           # per class; protect/sacrifice default to lowest/highest
      Guaranteed: {lowest: -998, highest: 1000}
      Burstable:  {lowest: 3, highest: 1000, protect: 3, sacrifice: 1000}
      BestEffort: {lowest: 999, highest: 1000}
    defaults:                      # for containers without a request of their own
      - namespaces: {names: [batch]}
        request: sacrifice         # protect | sacrifice | an integer
    oom_kill:                      # memory.oom.group: how an OOM kill takes a container
      process:   {names: [ci]}     # who may choose "process"; absent: every namespace
      container: {names: [ci, databases]}   # the same for "container"; absent: every one
      defaults:                    # for containers that ask for no kill mode
        - namespaces: {names: [ci]}
          mode: process            # container | process; first match wins
    warnings:                      # OOMImminent warnings before a kill (oomguard.warn)
      enabled: true
      warn_at: 90                  # percent of the limit the working set may reach
      min_warn_at: 50              # what oomguard.io/warn-at may ask for: min..max
      max_warn_at: 99
      horizon_s: 30                # warn when growth reaches the limit within this
      pressure_percent: 10         # PSI some avg10 that counts as reclaim not keeping up
      namespaces: {names: [...]}   # whose pods are watched; absent: every namespace
      node_allocatable: true       # also the node-allocatable cgroup (Events on the Node)

A selector is matched against the namespace's labels, which the agent lists and
watches only while some rule has a selector (`k8s/namespace_labels.py`). Labels it
cannot know (namespaces forbidden, the API down before the first list) are
`NO_LABELS`: the namespace then matches no selector, not even `NotIn` or
`DoesNotExist`, and only `names` can choose it.

Defaults, and why: nothing is trusted (only raising works until the admin says
otherwise). Each class's `lowest` keeps it inside the band the kubelet itself uses
for it, one point wider: Guaranteed -998 (the kubelet's -997, but still above the
kubelet and kube-proxy at -999), Burstable 3 (the kubelet's Burstable floor),
BestEffort 999 (the kubelet's Burstable ceiling). So by default protection reorders
pods within their QoS class and never lifts one over a class above it. `highest` is
1000 everywhere: volunteering to die first is always allowed.

Reading the file is bounded, because a file the agent cannot finish reading would stop
its main loop (`load_policy` raises PolicyError and nothing else, whatever the text):
at most MAX_POLICY_DEPTH (32) levels of nesting (a policy needs 10); at most
MAX_POLICY_VALUES (50,000) values, an alias counting the whole value it names each time
it is used (so a 400-byte "billion laughs" alias bomb is refused at once, and anchors
within that budget still work, as in Kubernetes' own YAML reader); no scalar longer
than MAX_POLICY_SCALAR_CHARS (4,096); no alias inside the value it names; no key twice
in one mapping. The file itself is capped at 1 MiB (`policy_file.MAX_POLICY_BYTES`).
The worst file within these bounds takes about a second of CPU to refuse.

What the policy model refuses, whatever the admin writes: lowest above highest;
protect or sacrifice outside the class's bounds; protect above sacrifice; -1000
anywhere without `allow_never_kill: true`; a class's `lowest` below that of a safer
class; a Burstable or BestEffort `lowest` at or below -997, which would make such a
pod at least as safe as an unannotated Guaranteed one (so never-kill can only ever
be given to Guaranteed pods); an empty label selector (it would match every
namespace: to trust them all, say so with
`matchExpressions: [{key: kubernetes.io/metadata.name, operator: Exists}]`).

The kill mode (`oom_kill`), and why its defaults are open: with nothing said, every
namespace may choose either mode and no default applies, so an unannotated container
keeps the memory.oom.group the kubelet set. The choice only changes how the pod's
*own* processes die when the kernel kills one of them ("container": all of them,
"process": only the victim); it never makes another pod more likely to be killed, so
unlike protection it needs no trust. An admin who wants to keep a mode from some
namespaces names the ones that may choose it (`process: {names: [ci]}`; `process: {}`:
none may); a request for a mode the namespace may not choose is refused and the
baseline stands. `defaults` are the admin's own choice and apply whatever the
`process`/`container` rules say (first match wins, as for the oom_score_adj defaults).

Warnings (`warnings`), and why on by default: a warning changes nothing on the node; it
is one Event per episode, aggregated. 90 % of the working set (not usage: page cache is
no danger) is where the kubernetes-mixin alerts too. A pod may move its own threshold
within `min_warn_at`..`max_warn_at` or opt out (`oomguard.io/warn-at: "off"`); below 50
a pod would mostly be warned about its normal size, Events nobody reads.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal, NoReturn

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from oomguard.steer.annotations import (
    QUOTE_CHARS,
    KillModeWord,
    ScoreRequest,
    Word,
    quote_value,
)
from oomguard.steer.kubelet_score import (
    BURSTABLE_MAX_OOM_SCORE_ADJ,
    BURSTABLE_MIN_OOM_SCORE_ADJ,
    GUARANTEED_OOM_SCORE_ADJ,
    KUBELET_OOM_SCORE_ADJ,
    OOM_SCORE_ADJ_MAX,
    OOM_SCORE_ADJ_MIN,
    QOS_ORDER,
    QosClass,
)

# How many of a policy's problems one message lists.
_LISTED_PROBLEMS = 8
# RFC 1123 label: what Kubernetes allows for namespace and container names.
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_LABEL_RE = re.compile(_DNS_LABEL)
_DNS_LABEL_MAX = 63

# The safest value the policy lets each class reach when the admin says nothing:
# the kubelet's own band for the class, one point wider (see the module docstring).
DEFAULT_LOWEST: Mapping[QosClass, int] = {
    QosClass.GUARANTEED: GUARANTEED_OOM_SCORE_ADJ - 1,
    QosClass.BURSTABLE: BURSTABLE_MIN_OOM_SCORE_ADJ,
    QosClass.BEST_EFFORT: BURSTABLE_MAX_OOM_SCORE_ADJ,
}
DEFAULT_HIGHEST = OOM_SCORE_ADJ_MAX
# Lowest a pod may go without allow_never_kill: level with the kubelet, never below.
SAFEST_WITHOUT_NEVER_KILL = KUBELET_OOM_SCORE_ADJ
# A Burstable or BestEffort pod must stay strictly above this: an unannotated
# Guaranteed pod's value.
NON_GUARANTEED_FLOOR_EXCLUSIVE = GUARANTEED_OOM_SCORE_ADJ

# Labels that are not known (the API could not be read). This very object stands for
# "unknown" (`labels is NO_LABELS`), apart from a namespace that has no labels: an
# unknown namespace matches no selector, not even `NotIn` or `DoesNotExist` ones.
NO_LABELS: Mapping[str, str] = MappingProxyType({})


Score = Annotated[StrictInt, Field(ge=OOM_SCORE_ADJ_MIN, le=OOM_SCORE_ADJ_MAX)]
NamespaceName = Annotated[StrictStr, Field(pattern=f"^{_DNS_LABEL}$", max_length=_DNS_LABEL_MAX)]
LabelKey = Annotated[StrictStr, Field(min_length=1)]

_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True)


class PolicyError(ValueError):
    """The policy file is not a valid policy; the message is one sentence saying why."""


class LabelSelectorRequirement(BaseModel):
    """One matchExpressions entry, with Kubernetes' meaning."""

    model_config = _MODEL_CONFIG

    key: LabelKey
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[StrictStr, ...] = ()

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        needs_values = self.operator in ("In", "NotIn")
        if needs_values and not self.values:
            raise ValueError(f"operator {self.operator} needs at least one value")
        if not needs_values and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present


class LabelSelector(BaseModel):
    """A Kubernetes label selector, evaluated against a namespace's labels."""

    model_config = _MODEL_CONFIG

    match_labels: dict[LabelKey, StrictStr] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: tuple[LabelSelectorRequirement, ...] = Field(
        default=(), alias="matchExpressions"
    )

    @model_validator(mode="after")
    def _not_empty(self) -> LabelSelector:
        if not self.match_labels and not self.match_expressions:
            raise ValueError(
                "an empty selector would match every namespace; to mean that, write "
                "matchExpressions: [{key: kubernetes.io/metadata.name, operator: Exists}]"
            )
        return self

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(key) == value for key, value in self.match_labels.items()) and all(
            requirement.matches(labels) for requirement in self.match_expressions
        )


class NamespaceSelector(BaseModel):
    """Namespaces by name and/or by label; a namespace matching either is chosen."""

    model_config = _MODEL_CONFIG

    names: tuple[NamespaceName, ...] = ()
    selector: LabelSelector | None = None

    def matches(self, namespace: str, labels: Mapping[str, str]) -> bool:
        if namespace in self.names:
            return True
        # Fail safe: labels not known match no selector (`NotIn` would match them).
        return (
            self.selector is not None and labels is not NO_LABELS and self.selector.matches(labels)
        )

    @property
    def is_empty(self) -> bool:
        return not self.names and self.selector is None


class QosBounds(BaseModel):
    """What pods of one QoS class may obtain, and what the two words mean for them."""

    model_config = _MODEL_CONFIG

    lowest: Score
    highest: Score = DEFAULT_HIGHEST
    protect: Score | None = None  # None: lowest, the safest the class may be
    sacrifice: Score | None = None  # None: highest, the most exposed it may be

    @property
    def protect_value(self) -> int:
        return self.lowest if self.protect is None else self.protect

    @property
    def sacrifice_value(self) -> int:
        return self.highest if self.sacrifice is None else self.sacrifice

    def clamp(self, value: int) -> int:
        return min(max(value, self.lowest), self.highest)

    @model_validator(mode="after")
    def _consistent(self) -> QosBounds:
        if self.lowest > self.highest:
            raise ValueError(f"lowest ({self.lowest}) is above highest ({self.highest})")
        for word, value in (("protect", self.protect), ("sacrifice", self.sacrifice)):
            if value is not None and not self.lowest <= value <= self.highest:
                raise ValueError(
                    f"{word} ({value}) is outside lowest..highest ({self.lowest}..{self.highest})"
                )
        if self.protect_value > self.sacrifice_value:
            raise ValueError(
                f"protect ({self.protect_value}) is above sacrifice ({self.sacrifice_value})"
            )
        return self


class GuaranteedBounds(QosBounds):
    lowest: Score = DEFAULT_LOWEST[QosClass.GUARANTEED]


class BurstableBounds(QosBounds):
    lowest: Score = DEFAULT_LOWEST[QosClass.BURSTABLE]


class BestEffortBounds(QosBounds):
    lowest: Score = DEFAULT_LOWEST[QosClass.BEST_EFFORT]


class QosRules(BaseModel):
    """Bounds for each QoS class, keyed as Kubernetes spells the classes."""

    model_config = _MODEL_CONFIG

    guaranteed: GuaranteedBounds = Field(default_factory=GuaranteedBounds, alias="Guaranteed")
    burstable: BurstableBounds = Field(default_factory=BurstableBounds, alias="Burstable")
    best_effort: BestEffortBounds = Field(default_factory=BestEffortBounds, alias="BestEffort")

    def __getitem__(self, qos: QosClass) -> QosBounds:
        if qos is QosClass.GUARANTEED:
            return self.guaranteed
        if qos is QosClass.BURSTABLE:
            return self.burstable
        return self.best_effort


RequestWord = Literal["protect", "sacrifice"]


class DefaultRule(BaseModel):
    """A request the admin makes for containers that make none, in some namespaces."""

    model_config = _MODEL_CONFIG

    namespaces: NamespaceSelector
    request: RequestWord | Score

    @field_validator("request", mode="before")
    @classmethod
    def _request_in_grammar(cls, value: Any) -> RequestWord | int:
        if value == Word.PROTECT.value:
            return "protect"
        if value == Word.SACRIFICE.value:
            return "sacrifice"
        is_number = isinstance(value, int) and not isinstance(value, bool)
        if is_number and OOM_SCORE_ADJ_MIN <= value <= OOM_SCORE_ADJ_MAX:
            return int(value)
        raise ValueError("must be protect, sacrifice, or an integer from -1000 to 1000")

    @field_validator("namespaces")
    @classmethod
    def _chooses_something(cls, value: NamespaceSelector) -> NamespaceSelector:
        if value.is_empty:
            raise ValueError("chooses no namespace; give names or a selector")
        return value

    @property
    def score_request(self) -> ScoreRequest:
        key = "the policy's default"
        if isinstance(self.request, int):
            return ScoreRequest(key, Word.OOM_SCORE_ADJ, self.request)
        return ScoreRequest(key, Word(self.request))


class KillModeDefault(BaseModel):
    """A kill mode the admin gives containers that ask for none, in some namespaces."""

    model_config = _MODEL_CONFIG

    namespaces: NamespaceSelector
    mode: KillModeWord

    @field_validator("namespaces")
    @classmethod
    def _chooses_something(cls, value: NamespaceSelector) -> NamespaceSelector:
        if value.is_empty:
            raise ValueError("chooses no namespace; give names or a selector")
        return value


def _never_null(schema: dict[str, Any]) -> None:
    """The schema of a key that may be left out but not written empty (see `_not_null`)."""
    choices = schema.pop("anyOf")
    schema.update(next(choice for choice in choices if choice != {"type": "null"}))


class KillModeRules(BaseModel):
    """Which namespaces may choose each kill mode, and the admin's defaults."""

    model_config = _MODEL_CONFIG

    # None (the key left out): every namespace may choose the mode; {}: none may.
    process: NamespaceSelector | None = Field(default=None, json_schema_extra=_never_null)
    container: NamespaceSelector | None = Field(default=None, json_schema_extra=_never_null)
    defaults: tuple[KillModeDefault, ...] = ()

    @field_validator("process", "container", mode="before")
    @classmethod
    def _not_null(cls, value: Any, info: ValidationInfo) -> Any:
        """A key written with no value: a forgotten list of names, not "every namespace"."""
        if value is None:
            raise ValueError(
                f"has no value; list the namespaces that may choose {info.field_name} "
                "({} for none), or leave the key out to let every namespace choose it"
            )
        return value

    def allows(self, mode: KillModeWord, namespace: str, labels: Mapping[str, str]) -> bool:
        """Whether pods in this namespace may choose `mode` for their containers."""
        chooser = self.process if mode == "process" else self.container
        return chooser is None or chooser.matches(namespace, labels)

    def default_for(self, namespace: str, labels: Mapping[str, str]) -> KillModeDefault | None:
        """The admin's kill mode for containers in this namespace that ask for none."""
        for rule in self.defaults:
            if rule.namespaces.matches(namespace, labels):
                return rule
        return None

    @property
    def selectors(self) -> tuple[NamespaceSelector, ...]:
        """Every namespace selector of the section."""
        choosers = (chooser for chooser in (self.process, self.container) if chooser is not None)
        return (*choosers, *(rule.namespaces for rule in self.defaults))


class WarningRules(BaseModel):
    """When OOMImminent warnings are given (`oomguard.warn.rule`), and to whom."""

    model_config = _MODEL_CONFIG

    enabled: StrictBool = True
    warn_at: StrictInt = Field(default=90, ge=1, le=99)
    min_warn_at: StrictInt = Field(default=50, ge=1, le=99)
    max_warn_at: StrictInt = Field(default=99, ge=1, le=99)
    horizon_s: float = Field(default=30.0, ge=0.0, le=3600.0)
    pressure_percent: float = Field(default=10.0, gt=0.0, le=100.0)
    # None (the key left out): every namespace is watched; {}: none is.
    namespaces: NamespaceSelector | None = Field(default=None, json_schema_extra=_never_null)
    node_allocatable: StrictBool = True

    @field_validator("namespaces", mode="before")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError(
                "has no value; list the namespaces whose pods are watched ({} for none), "
                "or leave the key out to watch every namespace"
            )
        return value

    @model_validator(mode="after")
    def _ordered(self) -> WarningRules:
        if not self.min_warn_at <= self.warn_at <= self.max_warn_at:
            raise ValueError(
                f"warn_at ({self.warn_at}) must lie within min_warn_at ({self.min_warn_at}) "
                f"and max_warn_at ({self.max_warn_at})"
            )
        return self

    def watches(self, namespace: str, labels: Mapping[str, str]) -> bool:
        """Whether pods of this namespace are watched for warnings."""
        return self.enabled and (
            self.namespaces is None or self.namespaces.matches(namespace, labels)
        )


class AdminPolicy(BaseModel):
    """The admin's bounds on what pod annotations may achieve (see the module docstring)."""

    model_config = _MODEL_CONFIG

    trusted_namespaces: NamespaceSelector = Field(default_factory=NamespaceSelector)
    allow_never_kill: StrictBool = False
    qos: QosRules = Field(default_factory=QosRules)
    defaults: tuple[DefaultRule, ...] = ()
    oom_kill: KillModeRules = Field(default_factory=KillModeRules)
    warnings: WarningRules = Field(default_factory=WarningRules)

    @model_validator(mode="after")
    def _safe(self) -> AdminPolicy:
        if not self.allow_never_kill:
            for qos in QOS_ORDER:
                if self.qos[qos].lowest < SAFEST_WITHOUT_NEVER_KILL:
                    raise ValueError(
                        f"qos.{qos}.lowest is {self.qos[qos].lowest}, below the kubelet's own "
                        f"{KUBELET_OOM_SCORE_ADJ}; set allow_never_kill: true to allow -1000"
                    )
            for index, rule in enumerate(self.defaults):
                if rule.request == OOM_SCORE_ADJ_MIN:
                    raise ValueError(
                        f"defaults[{index}] asks for -1000; set allow_never_kill: true to allow it"
                    )
        for safer, riskier in itertools.pairwise(QOS_ORDER):
            if self.qos[riskier].lowest < self.qos[safer].lowest:
                raise ValueError(
                    f"qos.{riskier}.lowest ({self.qos[riskier].lowest}) is below "
                    f"qos.{safer}.lowest ({self.qos[safer].lowest}); a {riskier} pod may "
                    f"never be made safer than a {safer} one can be"
                )
        for qos in QOS_ORDER[1:]:
            if self.qos[qos].lowest <= NON_GUARANTEED_FLOOR_EXCLUSIVE:
                raise ValueError(
                    f"qos.{qos}.lowest ({self.qos[qos].lowest}) must stay above "
                    f"{NON_GUARANTEED_FLOOR_EXCLUSIVE}, the value of an unannotated Guaranteed pod"
                )
        return self

    @property
    def uses_namespace_selector(self) -> bool:
        """Whether any rule chooses namespaces by label: only then are labels read."""
        selectors = (
            self.trusted_namespaces,
            *(rule.namespaces for rule in self.defaults),
            *self.oom_kill.selectors,
            *((self.warnings.namespaces,) if self.warnings.namespaces is not None else ()),
        )
        return any(chooser.selector is not None for chooser in selectors)

    def trusts(self, namespace: str, labels: Mapping[str, str]) -> bool:
        """Whether pods in this namespace may ask to be killed later than the kubelet says."""
        return self.trusted_namespaces.matches(namespace, labels)

    def default_for(self, namespace: str, labels: Mapping[str, str]) -> DefaultRule | None:
        """The admin's request for containers in this namespace that make none."""
        for rule in self.defaults:
            if rule.namespaces.matches(namespace, labels):
                return rule
        return None


def _describe_validation_error(error: ValidationError) -> str:
    details = error.errors()
    parts = []
    for detail in details[:_LISTED_PROBLEMS]:
        where = ".".join(_clip(str(part), QUOTE_CHARS) for part in detail["loc"])
        message = str(detail["msg"]).removeprefix("Value error, ")
        message = message.replace("a valid tuple", "a list")  # YAML has lists, not tuples
        parts.append(f"{where}: {message}" if where else message)
    more = len(details) - _LISTED_PROBLEMS
    if more > 0:
        parts.append(f"and {more} more")
    return "invalid oomguard policy: " + "; ".join(parts) + "."


# Bounds on reading a policy file. The deepest valid policy is 10 levels as the loader
# counts them, the document and the innermost value included
# (oom_kill.defaults[i].namespaces.selector.matchExpressions[j].values[k]), and a real
# one has tens of values; these leave room for any honest file while keeping the worst file cheap:
# PyYAML's pure-Python composer recurses once per level and takes ~20 us per value.
MAX_POLICY_DEPTH = 32
# Values the document stands for once aliases are expanded: every use of an alias
# counts the whole value it names, since validation walks it again each time.
MAX_POLICY_VALUES = 50_000
# The longest key or value a policy needs is a label key (317 characters); int() of
# a long sexagesimal number ("1:59:59...") is quadratic, and of 4,300+ digits refused.
MAX_POLICY_SCALAR_CHARS = 4096
# How much of a parser's own message a PolicyError quotes.
_PROBLEM_CHARS = 200


def _clip(text: str, limit: int = _PROBLEM_CHARS) -> str:
    """A third-party message made safe for one log line or Event: printable, short."""
    shown = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text[:limit])
    return shown + ("..." if len(text) > limit else "")


class _BeyondBounds(yaml.MarkedYAMLError):
    """Valid YAML, maybe, but more than a policy file may make the agent do."""


def _refuse_duplicate_keys(node: yaml.MappingNode) -> None:
    """PyYAML keeps the last of two equal keys; an admin's typo should be an error."""
    seen: set[str] = set()
    for key_node, _value in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            if key_node.value in seen:
                line = key_node.start_mark.line + 1
                raise PolicyError(
                    f"the policy repeats the key {quote_value(key_node.value)} (line {line})."
                )
            seen.add(key_node.value)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, with the work a document can cause bounded while it is read.

    The checks sit in the composer, the one place that sees every value and every use
    of an alias exactly once, so the cost of reading is linear in the file's size:
    - nesting deeper than MAX_POLICY_DEPTH stops before Python's recursion limit;
    - each value counts once, each alias counts the size of the value it names
      (known when that value was composed), so an alias bomb is refused after at most
      MAX_POLICY_VALUES values instead of expanding exponentially; an alias to a value
      still being composed (a cycle) is refused;
    - scalars longer than MAX_POLICY_SCALAR_CHARS are refused before a constructor
      (int, timestamp) works on them;
    - a key repeated in one mapping is an error (PyYAML would keep the last one, and
      an admin's typo should not silently win); checked as each mapping is composed.

    Aliases stay allowed, within the same budget: that is what Kubernetes' own YAML
    reader (go-yaml, "excessive aliasing") does, and honest policies may use anchors.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values = 0
        self._expanded: dict[int, int] = {}  # id(node) -> values it stands for

    def _spend(self, values: int, event: yaml.Event) -> None:
        self._values += values
        if self._values > MAX_POLICY_VALUES:
            self._refuse(
                f"the policy stands for more than {MAX_POLICY_VALUES} values "
                "(aliases count each time they are used)",
                event,
            )

    def _next_event(self) -> yaml.Event:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        return event

    def _refuse(self, problem: str, event: yaml.Event) -> NoReturn:
        mark = event.start_mark if isinstance(event.start_mark, yaml.Mark) else None
        raise _BeyondBounds(None, None, problem, mark)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self._next_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias: PyYAML's own error says so
                size = self._expanded.get(id(target))
                if size is None:
                    self._refuse(
                        f"the alias *{_clip(str(event.anchor), QUOTE_CHARS)} refers to a value "
                        "that contains it",
                        event,
                    )
                self._spend(size, event)
            return self._compose(parent, index)
        if self._depth >= MAX_POLICY_DEPTH:
            self._refuse(f"values are nested more than {MAX_POLICY_DEPTH} levels deep", event)
        if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_POLICY_SCALAR_CHARS:
            self._refuse(f"a value is longer than {MAX_POLICY_SCALAR_CHARS} characters", event)
        before = self._values
        self._spend(1, event)
        self._depth += 1
        try:
            node = self._compose(parent, index)
        finally:
            self._depth -= 1
        self._expanded[id(node)] = self._values - before
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(node)
        return node

    def _compose(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        node = super().compose_node(parent, index)
        assert node is not None  # PyYAML returns None only at the end of the stream
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Constructors raise ValueError for e.g. 2024-13-45; say where, like YAML errors."""
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as error:
            raise yaml.constructor.ConstructorError(
                None, None, f"this value cannot be read: {error}", node.start_mark
            ) from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's message as "(line L, column C): what", where the parser says where."""
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error)
    context = getattr(error, "context", None)
    if context:  # e.g. "expected a single document in the stream", "while parsing a ..."
        problem = f"{context}, {problem}"
    return f"{where}: {_clip(problem)}"


def _parse_document(text: str) -> object:
    """The document in `text`, read within the loader's bounds.

    Everything reading can raise becomes a PolicyError: the input is an admin's file,
    and no mistake in it may stop the agent (the caller keeps the last good policy).
    """
    if not text.strip():
        raise PolicyError("the policy file is empty; write {} to use the defaults.")
    loader: _BoundedLoader | None = None
    try:
        loader = _BoundedLoader(text)  # checks the characters: a ReaderError
        return loader.get_single_data()
    except PolicyError:
        raise
    except _BeyondBounds as error:
        raise PolicyError(f"the policy is refused{_yaml_problem(error)}.") from None
    except yaml.reader.ReaderError as error:
        raise PolicyError(
            f"the policy is not valid YAML (character {error.position + 1}): "
            f"{_clip(str(error.reason))} (#x{error.character:04x})."
            if isinstance(error.character, int)
            else f"the policy is not valid YAML: {_clip(str(error.reason))}."
        ) from None
    except yaml.YAMLError as error:
        raise PolicyError(f"the policy is not valid YAML{_yaml_problem(error)}.") from None
    except RecursionError:  # the depth limit should make this unreachable
        raise PolicyError("the policy is nested too deeply to be read.") from None
    except Exception as error:  # PyYAML's own code on hostile input: never crash on it
        raise PolicyError(
            f"the policy cannot be read: {type(error).__name__}: {_clip(str(error))}."
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def load_policy(text: str) -> AdminPolicy:
    """Parse and validate a policy file's text; a `PolicyError` says what is wrong.

    Nothing else is raised, whatever the text: reading is bounded (`_BoundedLoader`)
    and any other failure is reported as a PolicyError naming it.
    """
    document = _parse_document(text)
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise PolicyError(f"the policy must be a mapping of settings, not a {kind}.")
    try:
        return AdminPolicy.model_validate(document)
    except ValidationError as error:
        raise PolicyError(_describe_validation_error(error)) from None
    except Exception as error:  # e.g. RecursionError; a bug here must not stop the agent
        raise PolicyError(
            f"the policy cannot be validated: {type(error).__name__}: {_clip(str(error))}."
        ) from None
