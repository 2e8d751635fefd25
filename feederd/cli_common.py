"""What every ``feederd`` subcommand shares: its output and its settings.

Its own module so that the subcommand groups (:mod:`feederd.cli_model`,
:mod:`feederd.cli_spool`) and :mod:`feederd.cli` itself print the same way (``--json`` for
scripts, an aligned table for people) and load the config the same way, without importing
each other.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from feederd.config import Settings, load_settings


def emit(data: Any, as_json: bool, text: Callable[[Any], str] | None = None) -> None:
    """Print a result: JSON for machines, a readable rendering for people."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=None, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write((text(data) if text else table(data)) + "\n")


def table(data: Any) -> str:
    """A dict as aligned ``key  value`` lines, a list one item (or block) a line: for people."""
    if isinstance(data, dict):
        width = max((len(str(k)) for k in data), default=0)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in data.items())
    if isinstance(data, list):
        return "\n".join(table(item) if isinstance(item, dict) else str(item)
                         for item in data)
    return str(data)


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings of ``--config`` (or the defaults), with the MQTT password registered so
    that no log line of the command can show it."""
    from feederd.logsetup import register_secret

    path = Path(args.config) if getattr(args, "config", None) else None
    settings = load_settings(path, **overrides)
    register_secret(settings.mqtt_password())
    return settings
