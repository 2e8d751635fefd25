"""Checks on the ``FEEDERD_*`` environment that pydantic-settings does not make itself.

pydantic-settings reads only the variables that name a field: ``FEEDERD_MQTT_HOST`` (one
underscore) or ``FEEDERD_NOSECTION__X`` would be ignored without a word, and a feeder would
quietly run with its defaults. A variable with the prefix that names no section or key is
therefore an error, like an unknown key in the file. Malformed JSON in a list or section
variable is reported naming the variable instead of as a traceback.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

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
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NOT_CONFIG or \
                upper.startswith(FAULT_PREFIX):
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


def malformed_json(section: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """``NAME: not valid JSON`` for the variables of ``section`` pydantic could not parse."""
    environ = os.environ if environ is None else environ
    head = f"{ENV_PREFIX}{section}".upper()
    problems = []
    for name, value in sorted(environ.items()):
        upper = name.upper()
        if upper != head and not upper.startswith(head + NESTED):
            continue
        if value.lstrip()[:1] not in ("[", "{"):
            continue
        try:
            json.loads(value)
        except ValueError as exc:
            problems.append(f"{name}: not valid JSON ({exc}); lists and tables are given "
                            f"as JSON, e.g. {name}='[[[0,0],[0.2,0],[0.2,0.3]]]'")
    return problems


def field_of_settings_error(message: Any) -> str:
    """The field pydantic-settings names in 'error parsing value for field "motion" ...'."""
    text = str(message)
    start = text.find('field "')
    if start < 0:
        return ""
    end = text.find('"', start + 7)
    return text[start + 7:end] if end > 0 else ""
