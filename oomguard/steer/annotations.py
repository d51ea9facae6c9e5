"""Pod annotations that ask for an oom_score_adj or a kill mode: read, validated, never trusted.

Annotations are written by whoever can create a pod, so they are requests, not orders;
this module only reads them (`read_annotations`) and says what each container asks for
and what was wrong. What is granted is `decision`'s job (oom_score_adj) and
`kill_mode`'s (memory.oom.group), within `admin`'s bounds.

Annotations (all keys are the public contract)
----------------------------------------------
    oomguard.io/protect: "true"            ask for protection (the policy says how much)
    oomguard.io/sacrifice: "true"          volunteer to be killed first (1000 by default)
    oomguard.io/oom-score-adj: "<n>"       an explicit value, -1000..1000, bounded by policy
    oomguard.io/oom-kill: "process"        how an OOM kill takes the container: "container"
                                           (all its processes die together) or "process"
                                           (only the victim the kernel picks)
    oomguard.io/protect.<container>        the same four, for one container only
    oomguard.io/sacrifice.<container>
    oomguard.io/oom-score-adj.<container>
    oomguard.io/oom-kill.<container>
    oomguard.io/warn-at: "85%" | "off"     OOMImminent warnings' threshold (read by
    oomguard.io/warn-at.<container>        `oomguard.warn.policy`, not here)

- Booleans are exactly "true" or "false", lower case (as Kubernetes writes them);
  "false" is the same as leaving the key out, except that a container-form "false"
  still shadows the pod form for that container (see below).
- Numbers are canonical decimal: an optional "-" then ASCII digits, no leading zeros,
  no "+", no "-0", no spaces, no fractions or exponents, within -1000..1000.
  One spelling per number keeps diffs and greps honest and leaves nothing for
  another tool's parser (octal "010", "1e3", Unicode digits) to read differently.
- Kill modes are exactly "container" or "process", lower case.
- Container form wins: if any valid container-form key names a container, the pod
  form is ignored for that container. That is how one container opts out of a
  pod-wide request (`oomguard.io/protect.istio-proxy: "false"`). The kill mode is
  shadowed on its own: `oomguard.io/oom-kill.<container>` replaces the pod's
  `oom-kill` for that container and leaves its score keys alone, and the reverse.
  Kubernetes limits the part after "oomguard.io/" to 63 characters, so the container
  form works for container names of up to 49 characters (all four keys; 54 for
  oom-kill alone); a longer key is refused by the API server when the pod is created,
  never silently dropped.
- One score request per container: protect, sacrifice and oom-score-adj are
  alternatives. Two of them "true"/set at the same level conflict, and both are
  ignored. A kill mode conflicts with none of them: a container may have both.
- An invalid or conflicting value is ignored as if it were not written, with a
  warning saying why; unknown `oomguard.io/` keys and container-form keys naming a
  container the pod does not have are warned about too. Problems with `oom-kill`
  keys are kept apart from the others (`kill_mode_for`): they concern the kill mode
  only, and are said once, with it. Nothing here raises on a pod's annotations.

"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from oomguard.steer.kubelet_score import (
    OOM_SCORE_ADJ_MAX,
    OOM_SCORE_ADJ_MIN,
)

ANNOTATION_PREFIX = "oomguard.io/"
# Separates the word from the container name in the per-container form.
CONTAINER_SEPARATOR = "."
TRUE = "true"
FALSE = "false"
# Longest canonical number in range: "-1000".
_MAX_NUMBER_CHARS = len(str(OOM_SCORE_ADJ_MIN))
# How much of a hostile value a message quotes.
QUOTE_CHARS = 40
# How many container names a message lists.
_LISTED_CONTAINERS = 8

_CANONICAL_NUMBER = re.compile(r"0|-?[1-9][0-9]*")
_SIGNED_DIGITS = re.compile(r"[+-]?[0-9]+")


class Word(enum.StrEnum):
    """The annotation words after `oomguard.io/`; each names one kind of request."""

    PROTECT = "protect"
    SACRIFICE = "sacrifice"
    OOM_SCORE_ADJ = "oom-score-adj"
    OOM_KILL = "oom-kill"
    WARN_AT = "warn-at"  # read by oomguard.warn.policy, not here


_SWITCH_WORDS = frozenset({Word.PROTECT, Word.SACRIFICE})
# The values of oom-kill (kill_mode.KillMode gives them their meaning); the admin
# policy names the same two.
KillModeWord = Literal["container", "process"]
KILL_MODE_WORDS: tuple[KillModeWord, ...] = get_args(KillModeWord)


class AnnotationError(ValueError):
    """An annotation value that is not in the grammar; the message says why."""


def quote_value(value: str) -> str:
    """A value safe to put in a log line or an Event: escaped, and cut if long."""
    shown = json.dumps(value[:QUOTE_CHARS], ensure_ascii=True)
    return shown + ("..." if len(value) > QUOTE_CHARS else "")


def parse_switch(value: str) -> bool:
    """Read a protect / sacrifice value: exactly "true" or "false"."""
    if value == TRUE:
        return True
    if value == FALSE:
        return False
    if value.strip() != value:
        raise AnnotationError(f"{quote_value(value)} has spaces around it; write true or false")
    if value.lower() in (TRUE, FALSE):
        raise AnnotationError(
            f"{quote_value(value)} must be written in lower case: {value.lower()}"
        )
    raise AnnotationError(f'{quote_value(value)} is not "true" or "false"')


def parse_score_adj(value: str) -> int:
    """Read an oom-score-adj value: a canonical integer from -1000 to 1000."""
    if _CANONICAL_NUMBER.fullmatch(value) and len(value) <= _MAX_NUMBER_CHARS:
        number = int(value)
        if OOM_SCORE_ADJ_MIN <= number <= OOM_SCORE_ADJ_MAX:
            return number
    if value == "":
        raise AnnotationError("the value is empty; write a number from -1000 to 1000")
    if value.strip() != value:
        raise AnnotationError(f"{quote_value(value)} has spaces around it")
    if _CANONICAL_NUMBER.fullmatch(value):
        # Canonical but out of range; never int() a huge string to say so.
        raise AnnotationError(f"{quote_value(value)} is outside -1000..1000")
    if _SIGNED_DIGITS.fullmatch(value):
        digits = value.lstrip("+-")
        if value.startswith("+"):
            hint = "drop the '+'"
        elif digits.strip("0") == "":
            hint = "write 0"
        else:
            hint = "drop the leading zeros"
        raise AnnotationError(f"{quote_value(value)} is not written canonically; {hint}")
    raise AnnotationError(
        f"{quote_value(value)} is not a whole number from -1000 to 1000 "
        "(an optional '-' and ASCII digits only)"
    )


def parse_kill_mode(value: str) -> KillModeWord:
    """Read an oom-kill value: exactly "container" or "process"."""
    for word in KILL_MODE_WORDS:
        if value == word:
            return word
    if value.strip() != value:
        raise AnnotationError(
            f"{quote_value(value)} has spaces around it; write container or process"
        )
    if value.lower() in KILL_MODE_WORDS:
        raise AnnotationError(
            f"{quote_value(value)} must be written in lower case: {value.lower()}"
        )
    raise AnnotationError(f'{quote_value(value)} is not "container" or "process"')


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
class KillModeRequest:
    """The kill mode one container asked for, and the annotation that asked."""

    key: str
    mode: KillModeWord


@dataclass(frozen=True, slots=True)
class KillModeAsk:
    """The kill mode that applies to one container after the container form shadows."""

    request: KillModeRequest | None
    problems: tuple[str, ...]  # invalid oom-kill keys that concerned it, keys naming no container


@dataclass(frozen=True, slots=True)
class AnnotationReading:
    """A pod's oomguard annotations, read once for all its containers."""

    pod_level: AnnotationLevel
    container_levels: Mapping[str, AnnotationLevel]
    pod_problems: tuple[str, ...]  # unknown keys, score keys naming no container
    invalid_keys: Mapping[str | None, tuple[str, ...]]  # by container (None: pod form)
    # oom-kill, kept apart: by container (None: the pod form)
    kill_modes: Mapping[str | None, KillModeRequest] = field(default_factory=dict)
    kill_mode_problems: Mapping[str | None, tuple[str, ...]] = field(default_factory=dict)

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

    def kill_mode_for(self, name: str) -> KillModeAsk:
        """The kill mode container `name` asks for, and the oom-kill problems that concern it.

        Problems of the pod form and keys naming no container concern every container
        (the same words for each, so they are said once per pod).
        """
        problems = self.kill_mode_problems
        concerning = (*problems.get(None, ()), *problems.get(name, ()))
        request = self.kill_modes.get(name) or self.kill_modes.get(None)
        return KillModeAsk(request, concerning)


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


def _names_no_container(key: str, known_containers: Iterable[str]) -> str:
    return (
        f"{quote_value(key)} names no container of this pod "
        f"(containers: {_container_list(known_containers)}); ignored"
    )


def _read_kill_modes(
    annotations: Mapping[str, str], known_containers: frozenset[str]
) -> tuple[dict[str | None, KillModeRequest], dict[str | None, tuple[str, ...]]]:
    """The oom-kill keys' requests and problems, by container (None: the pod form).

    A key naming no container is a problem of the pod form: it concerns every
    container, and reads the same for each.
    """
    requests: dict[str | None, KillModeRequest] = {}
    problems: dict[str | None, list[str]] = {}
    for key, value in annotations.items():
        _, separator, container = key[len(ANNOTATION_PREFIX) :].partition(CONTAINER_SEPARATOR)
        target = container if separator else None
        if target is not None and target not in known_containers:
            problems.setdefault(None, []).append(_names_no_container(key, known_containers))
            continue
        try:
            requests[target] = KillModeRequest(key, parse_kill_mode(value))
        except AnnotationError as error:
            problems.setdefault(target, []).append(f"{key}: {error}; ignored")
    return requests, {target: tuple(said) for target, said in problems.items()}


def read_annotations(
    annotations: Mapping[str, str], container_names: Iterable[str]
) -> AnnotationReading:
    """Read every `oomguard.io/` annotation of a pod; never raises on their content."""
    known_containers = frozenset(container_names)
    entries: dict[str | None, list[_Entry]] = {None: []}
    problems: dict[str | None, list[str]] = {None: []}
    invalid: dict[str | None, list[str]] = {}
    pod_problems: list[str] = []
    kill_mode_keys: dict[str, str] = {}
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
                f"{quote_value(key)} is not an oomguard annotation (known: {words}, "
                f"optionally followed by {CONTAINER_SEPARATOR}<container>); ignored"
            )
            continue
        if word is Word.OOM_KILL:  # read apart: its problems are the kill mode's alone
            kill_mode_keys[key] = value
            continue
        if word is Word.WARN_AT:  # the warnings' key: oomguard.warn.policy reads it
            continue
        target: str | None = None
        if separator:
            if container not in known_containers:
                pod_problems.append(_names_no_container(key, known_containers))
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
        *_read_kill_modes(kill_mode_keys, known_containers),
    )
