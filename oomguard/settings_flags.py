"""A settings model's fields as command-line flags, so each setting is written once.

Each field becomes `--field-name`, typed from its annotation, its help the field's
description plus its default and unit. Flags default to None (absent): the model then
takes the environment, then its own default, so the precedence stays in one place.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import AliasChoices, BaseModel
from pydantic.fields import FieldInfo

# A name's suffix gives its unit (STYLE: every number carries its unit in its name).
UNITS = {"_s": "s"}
# json_schema_extra key: what happens when an optional setting is left unset.
UNSET = "unset"


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _plain(annotation: Any) -> Any:
    """`X | None` as X: None is what an absent flag already means."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _aliases(field: FieldInfo) -> list[str]:
    alias = field.validation_alias
    if not isinstance(alias, AliasChoices):
        return []
    return [c for c in alias.choices if isinstance(c, str)]


def _own_env_names(model: type[BaseModel], name: str) -> list[str]:
    """Names beyond the field's own and its prefixed one, e.g. NODE_NAME from the
    downward API: said in the help and the errors, since the user may have set those."""
    prefix = str(model.model_config.get("env_prefix", ""))
    usual = {name, f"{prefix}{name}".upper()}
    return [n for n in _aliases(model.model_fields[name]) if n not in usual]


def _extra(field: FieldInfo) -> Mapping[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def shown_default(model: type[BaseModel], name: str) -> str:
    """The default as the help says it, with its unit."""
    field = model.model_fields[name]
    if field.is_required():
        env = _own_env_names(model, name)
        return f"env {' or '.join(env)}" if env else "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return str(_extra(field).get(UNSET, "none"))
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return '""'
    text = f"{value:g}" if isinstance(value, float) else str(value)
    unit = next((u for suffix, u in UNITS.items() if name.endswith(suffix)), None)
    return f"{text} {unit}" if unit else text


def _kind(name: str, annotation: Any) -> dict[str, Any]:
    """argparse keywords for a field's type."""
    plain = _plain(annotation)
    if plain is bool:
        return {"action": "store_true"}
    if get_origin(plain) is Literal:
        return {"choices": list(get_args(plain))}
    if plain in (str, Path, float, int):
        return {"type": plain}
    raise TypeError(f"setting {name}: no flag for type {annotation!r}")


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One flag per field of the model, in the model's order."""
    for name, field in model.model_fields.items():
        help_text = f"{field.description or name} (default: {shown_default(model, name)})"
        parser.add_argument(
            flag_name(name),
            dest=name,
            default=None,
            help=help_text.replace("%", "%%"),
            **_kind(name, field.annotation),
        )


def given_flags(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, object]:
    """The model's flags the user gave, by field name."""
    values = {name: getattr(args, name, None) for name in model.model_fields}
    return {name: value for name, value in values.items() if value is not None}


def flag_label(model: type[BaseModel], where: str) -> str:
    """The flag a validation error's location (a field name or alias) stands for."""
    for name, field in model.model_fields.items():
        if where == name or where in _aliases(field):
            env = _own_env_names(model, name)
            return flag_name(name) + (f" (or {', '.join(env)})" if env else "")
    return where
