"""``feederd demo``: what the demo shows beyond alerts, because it knows its clip's truth.

The bundled clip is scripted (``models/demo-clip.json``, written by
``tools/make_demo_assets.py``: who visits when), so the demo can mark the alert that is wrong —
the squirrel the cartoon model calls a bird — and say how many hard examples it mined. Its state
folder is kept where the user can look (``feederd spool ls``), not in a temporary folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from feederd.assets import asset_path
from feederd.config import default_state_dir
from feederd.errors import ConfigError
from feederd.events import JsonLinesSink
from feederd.types import Alert, ClassifiedFrame

logger = logging.getLogger(__name__)

DEMO_TRUTH = "demo-clip.json"
MARKER = ".feederd-demo"
# An alert is decided a few frames into a visit and at most close_after_s after it ends.
LATE_S = 4.0


@dataclass(frozen=True)
class Truth:
    """Who is on the clip when: ``(kind, start_s, end_s)`` per scripted visit."""

    seconds: float
    visits: tuple[tuple[str, float, float], ...]

    @classmethod
    def load(cls, path: Path | None = None) -> Truth:
        data = json.loads((path or asset_path(DEMO_TRUTH)).read_text(encoding="utf-8"))
        return cls(float(data["seconds"]), tuple((v["kind"], float(v["start_s"]),
                                                  float(v["end_s"])) for v in data["visits"]))

    def at(self, media_s: float) -> str | None:
        """The animal on the clip at ``media_s`` (a looped replay's time wraps)."""
        t = media_s % self.seconds
        return next((kind for kind, start, end in self.visits if start <= t <= end + LATE_S),
                    None)


class DemoSink(JsonLinesSink):
    """The demo's JSON lines, each alert with ``truth`` and ``correct`` from the clip's script."""

    def __init__(self, stream: IO[str], visits: bool, truth: Truth) -> None:
        super().__init__(stream, visits)
        self._truth = truth
        self._media_s = 0.0
        self.alerts = 0
        self.wrong: list[str] = []

    def on_classified(self, frame: ClassifiedFrame) -> None:
        self._media_s = frame.mono  # media time of a replayed file

    def on_alert(self, alert: Alert) -> None:
        truth = self._truth.at(self._media_s)
        self.alerts += 1
        record: dict[str, Any] = {"truth": truth, "correct": truth == alert.label}
        if truth is not None and truth != alert.label:
            self.wrong.append(f"a {truth} called {alert.label}")
            record["note"] = (f"wrong: this is the {truth}, which the demo model never saw; "
                              "feederd keeps such frames in its spool to learn from")
        self.write_alert(alert, record)


def demo_state_dir() -> Path:
    """``~/.local/state/feederd-demo`` (beside the real state folder, never inside it)."""
    return default_state_dir().with_name("feederd-demo")


def fresh_state_dir(path: Path) -> Path:
    """Empty the demo's own folder from a previous run (marked by :data:`MARKER`), so its
    counts are this run's; refuse to touch a folder the demo did not make."""
    if path.exists() and any(path.iterdir()):
        if not (path / MARKER).exists():
            raise ConfigError(f"--state-dir {path}: not empty and not a demo folder; choose "
                              "an empty or new folder")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("made by `feederd demo`; emptied by its next run\n")
    return path


def summary(sink: DemoSink, spool_dir: Path, samples: int) -> dict[str, Any]:
    """The demo's last line: alerts, the wrong ones, and the samples mined into the spool."""
    return {"type": "summary", "alerts": sink.alerts, "wrong_alerts": sink.wrong,
            "mined_samples": samples, "spool": str(spool_dir)}


def summary_text(data: dict[str, Any], state_dir: Path) -> str:
    wrong = f" ({len(data['wrong_alerts'])} wrong: {'; '.join(data['wrong_alerts'])})" \
        if data["wrong_alerts"] else ""
    return (f"demo: {data['alerts']} alerts{wrong}; {data['mined_samples']} samples mined into "
            f"the spool {data['spool']}; list them with "
            f"`FEEDERD_STATE_DIR={state_dir} feederd spool ls`")
