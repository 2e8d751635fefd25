"""The example configuration (``docs/feederd.example.toml``), rendered from the pydantic models.

Rendered rather than written by hand so that it cannot drift: every key appears with its
default, its description and its bounds; ``tools/make_example_config.py`` writes the file and
a test checks that the committed copy is what this module renders and that it loads to the
defaults. Defaults that depend on the machine (the host name, the state folder) are shown
commented out, and so is the MQTT password, which is never read from the file.
"""

from __future__ import annotations

import json
import textwrap
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from feederd.config import Settings

WIDTH = 96
HEADER = """\
# feederd configuration: every key, with its default and what it does.
# Rendered from feederd/config.py by tools/make_example_config.py; do not edit by hand.
# Copy only the keys you change into /etc/feederd/feederd.toml (or pass --config FILE):
# unknown keys are errors, and any key can also be set from the environment as
# FEEDERD_<SECTION>__<KEY> (FEEDERD_MQTT__HOST=broker.lan). Check a file with
#   feederd check-config FILE
#
# The camera, three common set-ups:
#   Pi camera module:  [camera] kind = "picamera2"            (no source)
#   USB webcam:        [camera] kind = "opencv"  source = "0"  (/dev/video0; "1" is the next)
#   Network camera:    [camera] source = "rtsp://user@192.168.1.20:554/stream1"
# The default, source = "demo", replays the bundled cartoon clip: a test, not a feeder.
"""
# Shown commented out: their default depends on the machine, or they never belong in a file.
COMMENTED = {("", "state_dir"), ("mqtt", "device_id"), ("mqtt", "password")}


def render_example() -> str:
    """The whole example file."""
    parts = [HEADER, "\n"]
    for name, field in Settings.model_fields.items():
        if not _is_section(field):
            parts.append(_key("", name, field))
    for name, field in Settings.model_fields.items():
        if _is_section(field):
            section: type[BaseModel] = field.annotation  # type: ignore[assignment]
            parts.append(f"[{name}]\n" + "".join(
                _key(name, key, sub) for key, sub in section.model_fields.items()))
    return "".join(parts).rstrip("\n") + "\n"


def _is_section(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def _key(section: str, name: str, field: FieldInfo) -> str:
    lines = textwrap.wrap(_comment(field), WIDTH - 2) or [name]
    text = "".join(f"# {line}\n" for line in lines)
    if (section, name) in COMMENTED:
        return text + f"# {name} = {_machine_default(section, name)}\n\n"
    return text + f"{name} = {_toml(_default(field))}\n\n"


def _comment(field: FieldInfo) -> str:
    words = [field.description or ""]
    choices = typing.get_args(field.annotation) \
        if typing.get_origin(field.annotation) is typing.Literal else ()
    if choices:
        words.append("One of: " + ", ".join(json.dumps(c) for c in choices) + ".")
    bounds = [f"{label} {getattr(m, attr)}" for m in field.metadata
              for attr, label in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
              if getattr(m, attr, None) is not None]
    if bounds:
        words.append("Allowed: " + ", ".join(bounds) + ".")
    return " ".join(w for w in words if w)


def _default(field: FieldInfo) -> Any:
    if field.default is not PydanticUndefined:
        return field.default
    assert field.default_factory is not None
    return field.default_factory()  # type: ignore[call-arg]


def _machine_default(section: str, name: str) -> str:
    if name == "state_dir":
        return '"/var/lib/feederd"   # default: $STATE_DIRECTORY, else ~/.local/state/feederd'
    if name == "device_id":
        return '"feeder"   # default: this machine\'s host name'
    return '""   # never here: set FEEDERD_MQTT__PASSWORD or mqtt.password_file'


def _toml(value: Any) -> str:
    """A TOML literal for the default values config.py uses (JSON's escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML form for the default {value!r}")
