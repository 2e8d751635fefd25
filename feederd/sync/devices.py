"""Writing a ``[devices.NAME]`` entry into the feeder-sync config (``feeder-sync init --host``).

``pull`` and ``push`` need to know how to reach the feeder; without this a new user met
``add [devices.feeder] ...`` after ``init`` and had to find the keys in a docstring. The entry
is appended as TOML text (the rest of the file, comments included, is left as it is), the
whole file is validated before it replaces the old one, and an existing entry is never
changed behind the user's back.
"""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from feederd.atomic import write_bytes
from feederd.errors import ConfigError
from feederd.sync.config import DeviceConfig, SyncConfig, load_config

logger = logging.getLogger(__name__)


def device_entry(*, host: str | None = None, local: str | None = None,
                 feederd_config: str | None = None) -> dict[str, Any]:
    """The keys of one device: ssh to ``host``, or a feederd on this machine at ``local``."""
    if bool(host) == bool(local):
        raise ConfigError("give exactly one of --host USER@HOST (ssh) or --local STATE_DIR")
    entry: dict[str, Any] = {"transport": "ssh", "host": host} if host else \
        {"transport": "local", "path": str(Path(str(local)).expanduser().absolute())}
    if feederd_config:
        entry["feederd_config"] = feederd_config
    try:  # the same checks as on load (e.g. a host starting with '-')
        DeviceConfig(**entry)
    except ValidationError as exc:
        raise ConfigError("; ".join(f"--{e['loc'][0] if e['loc'] else 'host'}: "
                                    f"{e['msg'].removeprefix('Value error, ')}"
                                    for e in exc.errors())) from exc
    return entry


def add_device(config_path: Path, name: str, entry: dict[str, Any]) -> bool:
    """Append ``[devices.name]`` to the config file; False if the same entry is there."""
    config, _ = load_config(config_path) if config_path.exists() else (None, config_path)
    if config is not None and name in config.devices:
        existing = config.devices[name].model_dump(include=set(entry))
        if existing == entry:
            return False
        raise ConfigError(f"{config_path}: [devices.{name}] already exists with "
                          f"{json.dumps(existing)}; edit it there, or choose another --device")
    old = config_path.read_text(encoding="utf-8") if config_path.exists() else ""
    lines = [f"[devices.{name}]", *(f"{k} = {json.dumps(v)}" for k, v in entry.items())]
    new = old.rstrip("\n") + ("\n\n" if old.strip() else "") + "\n".join(lines) + "\n"
    try:
        SyncConfig(**tomllib.loads(new))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ConfigError(f"{config_path}: adding [devices.{name}] would make it invalid: "
                          f"{exc}") from exc
    config_path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(config_path, new.encode())
    logger.info("added [devices.%s] to %s", name, config_path)
    return True
