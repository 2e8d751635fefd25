"""The ``FEEDERD_*`` environment: read into the configuration, and checked.

Variables are ``FEEDERD_<SECTION>__<KEY>`` (or ``FEEDERD_STATE_DIR``), names case-insensitive,
lists and tables given as JSON; they override the file key by key. This module reads them
itself, as pydantic-settings used to (the same rules: a whole section as a JSON table, then
its ``__`` keys over it), because pydantic-settings and what it imports cost ~6 MB of the
daemon's resident memory for this one job (``tools/bench/rss_bench.py``).

A variable with the prefix that names no section or key is an error, like an unknown key in
the file: ``FEEDERD_MQTT_HOST`` (one underscore) or ``FEEDERD_NOSECTION__X`` would otherwise be
ignored without a word, and a feeder would quietly run with its defaults. Malformed JSON in a
list or section variable is reported naming the variable.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from feederd.errors import ConfigError

ENV_PREFIX = "FEEDERD_"
NESTED = "__"

# Variables with the prefix that are not configuration: test knobs, and every fault-injection
# knob (FEEDERD_FAULT_*).
NOT_CONFIG = frozenset({
    "FEEDERD_REQUIRE_SHARED_DATA", "FEEDERD_SHARED_DATA", "FEEDERD_KILL_SEED",
    "FEEDERD_KILL_ROUNDS", "FEEDERD_PI_ROOTS", "FEEDERD_PI_MIRROR",
})
FAULT_PREFIX = "FEEDERD_FAULT_"


def unknown_variables(settings_cls: type[BaseModel],
                      environ: Mapping[str, str] | None = None) -> list[str]:
    """One ``NAME: problem`` line per ``FEEDERD_*`` variable that names no section or key."""
    environ = os.environ if environ is None else environ
    problems = []
    for name in sorted(environ):
        if not _is_config_name(name):
            continue
        if not _names_a_key(settings_cls, name[len(ENV_PREFIX):].lower().split(NESTED)):
            problems.append(f"{name}: this environment variable names no config section or "
                            f"key{_suggestion(settings_cls, name)}; variables are "
                            f"FEEDERD_<SECTION>{NESTED}<KEY> or FEEDERD_STATE_DIR; unset it")
    return problems


def _names_a_key(model: type[BaseModel], parts: list[str]) -> bool:
    field = model.model_fields.get(parts[0])
    if field is None:
        return False
    if len(parts) == 1:
        return True
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _names_a_key(annotation, parts[1:])
    return getattr(annotation, "__origin__", None) is dict  # e.g. logging.levels.<module>


def _suggestion(model: type[BaseModel], name: str) -> str:
    """``FEEDERD_MQTT_HOST`` -> ``; did you mean FEEDERD_MQTT__HOST?``."""
    rest = name[len(ENV_PREFIX):]
    for section in model.model_fields:
        head = section.upper() + "_"
        if rest.upper().startswith(head) and not rest.upper().startswith(head + "_"):
            guess = f"{ENV_PREFIX}{section.upper()}{NESTED}{rest[len(head):]}"
            if _names_a_key(model, guess[len(ENV_PREFIX):].lower().split(NESTED)):
                return f" (did you mean {guess}?)"
    return ""


def environment_values(settings_cls: type[BaseModel],
                       environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``FEEDERD_*`` variables as the nested values they configure; ConfigError naming
    each variable whose list or table is not valid JSON.

    A whole section (``FEEDERD_MQTT='{"port": 1}'``) comes first, its keys over it; a
    variable whose first part names no field is left to :func:`unknown_variables`, one
    naming an unknown key inside a section is kept, so that validation calls it unknown.
    """
    environ = os.environ if environ is None else environ
    found = [(name[len(ENV_PREFIX):].lower().split(NESTED), name, value)
             for name, value in environ.items() if _is_config_name(name)]
    values: dict[str, Any] = {}
    problems = []
    for parts, name, value in sorted(found, key=lambda item: (len(item[0]), item[1])):
        if parts[0] not in settings_cls.model_fields:
            continue
        if value and _is_complex(_annotation_at(settings_cls, parts)):
            try:
                value = json.loads(value)
            except ValueError as exc:
                problems.append(f"{name}: not valid JSON ({exc}); lists and tables are given "
                                f"as JSON, e.g. {name}='[[[0,0],[0.2,0],[0.2,0.3]]]'")
                continue
        _put(values, parts, value)
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the environment", problems)
    return values


def merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` laid on it, tables merged key by key, anything else replaced."""
    result = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            value = merged(result[key], value)
        result[key] = value
    return result


def _is_config_name(name: str) -> bool:
    upper = name.upper()
    return upper.startswith(ENV_PREFIX) and upper not in NOT_CONFIG and \
        not upper.startswith(FAULT_PREFIX)


def _annotation_at(model: type[BaseModel], parts: list[str]) -> Any:
    """The type of the key at ``parts`` (a table's value type inside a table), else None."""
    annotation: Any = model
    for part in parts:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            annotation = field.annotation if field is not None else None
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return None
    return annotation


def _is_complex(annotation: Any) -> bool:
    """Whether a variable for this type is JSON: a section, a list or a table."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return (get_origin(annotation) or annotation) in (list, dict, tuple, set, frozenset)


def _put(values: dict[str, Any], parts: list[str], value: Any) -> None:
    target: Any = values
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            return  # a whole-section value that is no table: validation names it
    target[parts[-1]] = value
