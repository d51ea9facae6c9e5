"""What oom_score_adj each container should have: pod annotations, bounded by the admin.

Annotations are written by whoever can create a pod, so they are requests, not
orders: by default a pod may only ask to be killed *sooner* than the kubelet would
have it; asking to be killed later needs a namespace the admin trusts, and whatever
is granted stays inside the admin's bounds for the pod's QoS class (the systemd
`ManagedOOMPreference` rule: a preference counts only where its owner is trusted).
This module is pure: it reads values handed to it and returns a `Decision`; the
reconciler writes /proc, the pod cache supplies the pod.

Annotations (the first three keys are the public contract)
-----------------------------------------------------------
    oomguard.io/protect: "true"            ask for protection (the policy says how much)
    oomguard.io/sacrifice: "true"          volunteer to be killed first (1000 by default)
    oomguard.io/oom-score-adj: "<n>"       an explicit value, -1000..1000, bounded by policy
    oomguard.io/protect.<container>        the same three, for one container only
    oomguard.io/sacrifice.<container>
    oomguard.io/oom-score-adj.<container>

- Booleans are exactly "true" or "false", lower case (as Kubernetes writes them);
  "false" is the same as leaving the key out, except that a container-form "false"
  still shadows the pod form for that container (see below).
- Numbers are canonical decimal: an optional "-" then ASCII digits, no leading zeros,
  no "+", no "-0", no spaces, no fractions or exponents, within -1000..1000.
  One spelling per number keeps diffs and greps honest and leaves nothing for
  another tool's parser (octal "010", "1e3", Unicode digits) to read differently.
- Container form wins: if any valid container-form key names a container, the pod
  form is ignored for that container. That is how one container opts out of a
  pod-wide request (`oomguard.io/protect.istio-proxy: "false"`).
  Kubernetes limits the part after "oomguard.io/" to 63 characters, so the container
  form works for container names of up to 49 characters (all three keys); a longer
  key is refused by the API server when the pod is created, never silently dropped.
- One request per container: protect, sacrifice and oom-score-adj are alternatives.
  Two of them "true"/set at the same level conflict, and both are ignored.
- An invalid or conflicting value is ignored as if it were not written, with a
  warning saying why; unknown `oomguard.io/` keys and container-form keys naming a
  container the pod does not have are warned about too. Nothing here raises on a
  pod's annotations.

How a request becomes a value (for one container, `decide`)
-----------------------------------------------------------
1. The baseline is the kubelet's own value, or the admin's default for the pod's
   namespace when one matches (`defaults`, first match wins; the admin needs no
   trust from anyone, but the default is still bounded like a request).
2. protect maps to the policy's `protect` value for the pod's QoS class, sacrifice
   to its `sacrifice` value, oom-score-adj to its number. protect never raises the
   baseline and sacrifice never lowers it.
3. Asking for less than the baseline needs `trusted_namespaces` to match the
   namespace; otherwise the request is refused and the baseline stands.
4. The result is clamped into [lowest, highest] for the QoS class, but the clamp
   never pushes it past the baseline in the other direction (a pod that asked to be
   killed sooner is never made safer, and the reverse). -1000 only with
   `allow_never_kill`.
So `Decision.desired` is None (leave the kubelet's value), the baseline, or a value
inside the class's bounds; nothing else.

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

A selector is matched against the namespace's labels, which the agent reads from the
API only while some rule has a selector (`k8s/namespace_labels.py`: cached for a
minute; labels it cannot read count as none, after a bounded grace on transient API
errors, so the namespace then matches no selector and only `names` can choose it).

Defaults, and why: nothing is trusted (only raising works until the admin says
otherwise). Each class's `lowest` keeps it inside the band the kubelet itself uses
for it, one point wider: Guaranteed -998 (the kubelet's -997, but still above the
kubelet and kube-proxy at -999), Burstable 3 (the kubelet's Burstable floor),
BestEffort 999 (the kubelet's Burstable ceiling). So by default protection reorders
pods within their QoS class and never lifts one over a class above it. `highest` is
1000 everywhere: volunteering to die first is always allowed.

Reading the file is bounded, because a file the agent cannot finish reading would stop
its main loop (`load_policy` raises PolicyError and nothing else, whatever the text):
at most MAX_POLICY_DEPTH (32) levels of nesting (a policy needs 6); at most
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
"""

from __future__ import annotations

import enum
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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
    field_validator,
    model_validator,
)

from oomguard.kubelet_score import (
    BURSTABLE_MAX_OOM_SCORE_ADJ,
    BURSTABLE_MIN_OOM_SCORE_ADJ,
    GUARANTEED_OOM_SCORE_ADJ,
    KUBELET_OOM_SCORE_ADJ,
    OOM_SCORE_ADJ_MAX,
    OOM_SCORE_ADJ_MIN,
    QOS_ORDER,
    QosClass,
)

ANNOTATION_PREFIX = "oomguard.io/"
# Separates the word from the container name in the per-container form.
CONTAINER_SEPARATOR = "."
TRUE = "true"
FALSE = "false"
# Longest canonical number in range: "-1000".
_MAX_NUMBER_CHARS = len(str(OOM_SCORE_ADJ_MIN))
# How much of a hostile value a message quotes.
_QUOTE_CHARS = 40
# How many of a policy's problems one message lists.
_LISTED_PROBLEMS = 8
# How many container names a message lists.
_LISTED_CONTAINERS = 8

_CANONICAL_NUMBER = re.compile(r"0|-?[1-9][0-9]*")
_SIGNED_DIGITS = re.compile(r"[+-]?[0-9]+")
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


class Word(enum.StrEnum):
    """The annotation words after `oomguard.io/`; each names one kind of request."""

    PROTECT = "protect"
    SACRIFICE = "sacrifice"
    OOM_SCORE_ADJ = "oom-score-adj"


_SWITCH_WORDS = frozenset({Word.PROTECT, Word.SACRIFICE})


class AnnotationError(ValueError):
    """An annotation value that is not in the grammar; the message says why."""


def _quote(value: str) -> str:
    """A value safe to put in a log line or an Event: escaped, and cut if long."""
    shown = json.dumps(value[:_QUOTE_CHARS], ensure_ascii=True)
    return shown + ("..." if len(value) > _QUOTE_CHARS else "")


def parse_switch(value: str) -> bool:
    """Read a protect / sacrifice value: exactly "true" or "false"."""
    if value == TRUE:
        return True
    if value == FALSE:
        return False
    if value.strip() != value:
        raise AnnotationError(f"{_quote(value)} has spaces around it; write true or false")
    if value.lower() in (TRUE, FALSE):
        raise AnnotationError(f"{_quote(value)} must be written in lower case: {value.lower()}")
    raise AnnotationError(f'{_quote(value)} is not "true" or "false"')


def parse_score_adj(value: str) -> int:
    """Read an oom-score-adj value: a canonical integer from -1000 to 1000."""
    if _CANONICAL_NUMBER.fullmatch(value) and len(value) <= _MAX_NUMBER_CHARS:
        number = int(value)
        if OOM_SCORE_ADJ_MIN <= number <= OOM_SCORE_ADJ_MAX:
            return number
    if value == "":
        raise AnnotationError("the value is empty; write a number from -1000 to 1000")
    if value.strip() != value:
        raise AnnotationError(f"{_quote(value)} has spaces around it")
    if _CANONICAL_NUMBER.fullmatch(value):
        # Canonical but out of range; never int() a huge string to say so.
        raise AnnotationError(f"{_quote(value)} is outside -1000..1000")
    if _SIGNED_DIGITS.fullmatch(value):
        digits = value.lstrip("+-")
        if value.startswith("+"):
            hint = "drop the '+'"
        elif digits.strip("0") == "":
            hint = "write 0"
        else:
            hint = "drop the leading zeros"
        raise AnnotationError(f"{_quote(value)} is not written canonically; {hint}")
    raise AnnotationError(
        f"{_quote(value)} is not a whole number from -1000 to 1000 "
        "(an optional '-' and ASCII digits only)"
    )


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """What one container asked for, and the annotation that asked."""

    key: str
    word: Word
    number: int | None = None  # set for Word.OOM_SCORE_ADJ only


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str
    word: Word
    switch: bool = False
    number: int | None = None

    @property
    def active(self) -> bool:
        return self.word is Word.OOM_SCORE_ADJ or self.switch


@dataclass(frozen=True, slots=True)
class AnnotationLevel:
    """The valid keys written at one level (the pod, or one container)."""

    request: ScoreRequest | None
    present: bool  # any valid key at all, "false" included: it shadows the pod level
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ContainerRequest:
    """The request that applies to one container after the container form shadows."""

    request: ScoreRequest | None
    problems: tuple[str, ...]  # invalid or conflicting keys that concerned it
    invalid_keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AnnotationReading:
    """A pod's oomguard annotations, read once for all its containers."""

    pod_level: AnnotationLevel
    container_levels: Mapping[str, AnnotationLevel]
    pod_problems: tuple[str, ...]  # unknown keys, keys naming no container
    invalid_keys: Mapping[str | None, tuple[str, ...]]  # by container (None: pod form)

    def for_container(self, name: str) -> ContainerRequest:
        """The request container `name` carries, and the problems that concern it."""
        own = self.container_levels.get(name)
        problems = list(self.pod_level.problems)
        invalid = list(self.invalid_keys.get(None, ()))
        if own is not None:
            problems.extend(own.problems)
            invalid.extend(self.invalid_keys.get(name, ()))
        level = own if own is not None and own.present else self.pod_level
        return ContainerRequest(level.request, tuple(problems), tuple(invalid))


def _resolve_level(entries: list[_Entry], problems: list[str]) -> AnnotationLevel:
    active = [entry for entry in entries if entry.active]
    if len(active) > 1:
        keys = ", ".join(entry.key for entry in active)
        problems.append(
            f"{keys} conflict (ask for one of protect, sacrifice or oom-score-adj); "
            "all of them are ignored"
        )
        entries = [entry for entry in entries if not entry.active]
        active = []
    request = None
    if active:
        entry = active[0]
        request = ScoreRequest(entry.key, entry.word, entry.number)
    return AnnotationLevel(request, bool(entries), tuple(problems))


def _container_list(names: Iterable[str]) -> str:
    listed = sorted(names)
    shown = ", ".join(listed[:_LISTED_CONTAINERS])
    return shown + (", ..." if len(listed) > _LISTED_CONTAINERS else "") if listed else "none"


def read_annotations(
    annotations: Mapping[str, str], container_names: Iterable[str]
) -> AnnotationReading:
    """Read every `oomguard.io/` annotation of a pod; never raises on their content."""
    known_containers = frozenset(container_names)
    entries: dict[str | None, list[_Entry]] = {None: []}
    problems: dict[str | None, list[str]] = {None: []}
    invalid: dict[str | None, list[str]] = {}
    pod_problems: list[str] = []
    for key in sorted(annotations):
        if not key.startswith(ANNOTATION_PREFIX):
            continue
        value = annotations[key]
        name = key[len(ANNOTATION_PREFIX) :]
        word_text, separator, container = name.partition(CONTAINER_SEPARATOR)
        try:
            word = Word(word_text)
        except ValueError:
            words = ", ".join(word.value for word in Word)
            pod_problems.append(
                f"{_quote(key)} is not an oomguard annotation (known: {words}, "
                f"optionally followed by {CONTAINER_SEPARATOR}<container>); ignored"
            )
            continue
        target: str | None = None
        if separator:
            if container not in known_containers:
                pod_problems.append(
                    f"{_quote(key)} names no container of this pod "
                    f"(containers: {_container_list(known_containers)}); ignored"
                )
                continue
            target = container
        try:
            if word in _SWITCH_WORDS:
                entry = _Entry(key, word, switch=parse_switch(value))
            else:
                entry = _Entry(key, word, number=parse_score_adj(value))
        except AnnotationError as error:
            problems.setdefault(target, []).append(f"{key}: {error}; ignored")
            invalid.setdefault(target, []).append(key)
            continue
        entries.setdefault(target, []).append(entry)
    levels = {
        target: _resolve_level(entries.get(target, []), problems.get(target, []))
        for target in {*entries, *problems}
    }
    pod_level = levels.pop(None)
    container_levels = {name: level for name, level in levels.items() if name is not None}
    return AnnotationReading(
        pod_level,
        container_levels,
        tuple(pod_problems),
        {target: tuple(keys) for target, keys in invalid.items()},
    )


# ----------------------------------------------------------------------------- policy

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
        return self.selector is not None and self.selector.matches(labels)

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


class AdminPolicy(BaseModel):
    """The admin's bounds on what pod annotations may achieve (see the module docstring)."""

    model_config = _MODEL_CONFIG

    trusted_namespaces: NamespaceSelector = Field(default_factory=NamespaceSelector)
    allow_never_kill: StrictBool = False
    qos: QosRules = Field(default_factory=QosRules)
    defaults: tuple[DefaultRule, ...] = ()

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
        return self.trusted_namespaces.selector is not None or any(
            rule.namespaces.selector is not None for rule in self.defaults
        )

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
        where = ".".join(_clip(str(part), _QUOTE_CHARS) for part in detail["loc"])
        message = str(detail["msg"]).removeprefix("Value error, ")
        message = message.replace("a valid tuple", "a list")  # YAML has lists, not tuples
        parts.append(f"{where}: {message}" if where else message)
    more = len(details) - _LISTED_PROBLEMS
    if more > 0:
        parts.append(f"and {more} more")
    return "invalid oomguard policy: " + "; ".join(parts) + "."


# Bounds on reading a policy file. The deepest valid policy is 5 levels
# (trusted_namespaces.selector.matchExpressions[i].values[j]) and a real one has tens
# of values; these leave room for any honest file while keeping the worst file cheap:
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
                    f"the policy repeats the key {_quote(key_node.value)} (line {line})."
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
                        f"the alias *{_clip(str(event.anchor), _QUOTE_CHARS)} refers to a value "
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


# --------------------------------------------------------------------------- decision


class Outcome(enum.StrEnum):
    """How a container's value came about; metrics count these."""

    UNMANAGED = "unmanaged"  # no request and no default: the kubelet's value stands
    DEFAULTED = "defaulted"  # the admin's default for the namespace
    APPLIED = "applied"  # the pod's request, as asked
    BOUNDED = "bounded"  # the pod's request, cut to the policy's bounds
    REFUSED = "refused"  # the pod asked to be safer without trust: the baseline stands


@dataclass(frozen=True, slots=True)
class PodProjection:
    """What the policy needs to know about a pod (the pod cache builds it)."""

    namespace: str
    qos_class: QosClass
    # container name -> the kubelet's oom_score_adj for it (kubelet_score.py)
    kubelet_scores: Mapping[str, int]
    annotations: Mapping[str, str] = field(default_factory=dict)
    namespace_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Decision:
    """The oom_score_adj one container should have, and why, in words."""

    container: str
    kubelet_value: int
    desired: int | None  # None: leave (or put back) the kubelet's value
    outcome: Outcome
    reason: str
    warnings: tuple[str, ...] = ()  # for a Warning Event: invalid, refused, bounded
    request_key: str | None = None  # the annotation (or default) that asked
    invalid_keys: tuple[str, ...] = ()

    @property
    def target(self) -> int:
        """The value every process of the container should end up with."""
        return self.kubelet_value if self.desired is None else self.desired


@dataclass(frozen=True, slots=True)
class PodDecision:
    """Decisions for every container, plus warnings about the pod as a whole."""

    decisions: tuple[Decision, ...]
    warnings: tuple[str, ...]  # unknown keys, keys naming no container

    @property
    def all_warnings(self) -> tuple[str, ...]:
        """Every distinct warning, pod-wide first: one Warning Event's worth."""
        seen = dict.fromkeys(self.warnings)
        for decision in self.decisions:
            seen.update(dict.fromkeys(decision.warnings))
        return tuple(seen)


def _requested_value(request: ScoreRequest, bounds: QosBounds, baseline: int) -> int:
    """The value a request stands for; protect never raises, sacrifice never lowers."""
    if request.word is Word.PROTECT:
        return min(bounds.protect_value, baseline)
    if request.word is Word.SACRIFICE:
        return max(bounds.sacrifice_value, baseline)
    assert request.number is not None
    return request.number


def _bounded(value: int, baseline: int, bounds: QosBounds, allow_never_kill: bool) -> int:
    """Clamp into the class's bounds, never past the baseline the wrong way."""
    result = bounds.clamp(value)
    if value >= baseline:
        result = max(result, baseline)
    if value <= baseline:
        result = min(result, baseline)
    if result == OOM_SCORE_ADJ_MIN and not allow_never_kill:
        result = SAFEST_WITHOUT_NEVER_KILL
    return result


def _describe_request(request: ScoreRequest) -> str:
    if request.word is Word.OOM_SCORE_ADJ:
        return f"{request.key}={request.number}"
    return f"{request.key}=true" if request.key.startswith(ANNOTATION_PREFIX) else request.key


def _decide(
    pod: PodProjection, container: str, reading: AnnotationReading, policy: AdminPolicy
) -> Decision:
    if container not in pod.kubelet_scores:
        raise KeyError(f"no kubelet value for container {container!r}")
    kubelet = min(max(pod.kubelet_scores[container], OOM_SCORE_ADJ_MIN), OOM_SCORE_ADJ_MAX)
    qos = pod.qos_class
    bounds = policy.qos[qos]
    never_kill = policy.allow_never_kill
    namespace = pod.namespace
    own = reading.for_container(container)
    warnings = list(own.problems)

    def decision(
        desired: int | None, outcome: Outcome, reason: str, request_key: str | None = None
    ) -> Decision:
        return Decision(
            container=container,
            kubelet_value=kubelet,
            desired=desired,
            outcome=outcome,
            reason=reason,
            warnings=tuple(warnings),
            request_key=request_key,
            invalid_keys=own.invalid_keys,
        )

    rule = policy.default_for(namespace, pod.namespace_labels)
    baseline, baseline_words, fallback = kubelet, f"the kubelet's value {kubelet}", None
    if rule is not None:
        wanted = _requested_value(rule.score_request, bounds, kubelet)
        fallback = _bounded(wanted, kubelet, bounds, never_kill)
        baseline = fallback
        baseline_words = f"the policy's default for namespace {namespace} ({fallback})"

    request = own.request
    if request is None:
        if rule is None:
            return decision(
                None,
                Outcome.UNMANAGED,
                f"no oomguard request for container {container}; {baseline_words} stands",
            )
        return decision(
            fallback,
            Outcome.DEFAULTED,
            f"{baseline_words} applies to {qos} container {container} "
            f"(asked {rule.request}; kubelet's value {kubelet})",
            rule.score_request.key,
        )

    asked = _describe_request(request)
    wanted = _requested_value(request, bounds, baseline)
    if wanted < baseline and not policy.trusts(namespace, pod.namespace_labels):
        warnings.append(
            f"{asked} asks to lower container {container}'s oom_score_adj from {baseline} to "
            f"{wanted}, which needs the oomguard policy to trust namespace {namespace}; "
            f"{baseline_words} stays"
        )
        return decision(
            fallback,
            Outcome.REFUSED,
            f"{asked} refused: namespace {namespace} is not trusted to lower oom_score_adj; "
            f"{baseline_words} stays",
            request.key,
        )

    granted = _bounded(wanted, baseline, bounds, never_kill)
    outcome = Outcome.APPLIED
    if granted != wanted:
        outcome = Outcome.BOUNDED
        clamped = bounds.clamp(wanted)
        if granted == clamped:
            why = f"the policy allows {qos} pods {bounds.lowest}..{bounds.highest}"
        elif granted == baseline:
            why = (
                f"the policy's bounds for {qos} pods ({bounds.lowest}..{bounds.highest}) "
                f"would move it to the other side of {baseline_words}"
            )
        else:
            why = "-1000 (never kill) needs allow_never_kill in the policy"
        warnings.append(
            f"{asked} asks for {wanted} for container {container}, but {why}; applied {granted}"
        )
    return decision(
        granted,
        outcome,
        f"{asked} gives {qos} container {container} {granted} (kubelet's value {kubelet})",
        request.key,
    )


def decide(pod: PodProjection, container: str, policy: AdminPolicy) -> Decision:
    """The value one container should have; raises only if `container` has no kubelet value."""
    reading = read_annotations(pod.annotations, pod.kubelet_scores)
    return _decide(pod, container, reading, policy)


def decide_pod(pod: PodProjection, policy: AdminPolicy) -> PodDecision:
    """Decisions for every container of the pod, reading its annotations once."""
    reading = read_annotations(pod.annotations, pod.kubelet_scores)
    decisions = tuple(_decide(pod, name, reading, policy) for name in pod.kubelet_scores)
    return PodDecision(decisions, reading.pod_problems)
