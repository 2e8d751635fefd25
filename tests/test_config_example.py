"""docs/feederd.example.toml: rendered from the models, committed up to date, and the defaults."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from feederd.config import Settings, load_settings
from feederd.config_example import render_example

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "feederd.example.toml"


def test_the_committed_example_is_what_the_models_render() -> None:
    assert EXAMPLE.read_text(encoding="utf-8") == render_example(), \
        "run python3 tools/make_example_config.py and commit docs/feederd.example.toml"


def test_every_key_of_every_section_appears_with_a_comment_above_it() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for section, field in Settings.model_fields.items():
        keys = field.annotation.model_fields if isinstance(field.annotation, type) and \
            issubclass(field.annotation, BaseModel) else {section: field}
        for key in keys:
            assert re.search(rf"^# .+\n(# )?{re.escape(key)} = ", text, re.MULTILINE), key


def test_the_example_loads_to_exactly_the_defaults(tmp_path: Path) -> None:
    machine = {"state_dir": str(tmp_path)}
    example = load_settings(EXAMPLE, **machine, mqtt={"device_id": "feeder"})
    defaults = Settings(**machine, mqtt={"device_id": "feeder"})  # type: ignore[arg-type]
    assert example.model_dump() == defaults.model_dump()


def test_the_tool_check_accepts_the_committed_file() -> None:
    proc = subprocess.run([sys.executable, "tools/make_example_config.py", "--check"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
