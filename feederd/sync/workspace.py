"""One device's workspace on the laptop: its folder, its state, its models' notes, its lock.

One folder per device holds everything about it::

    <workspace>/<device>/
      state.json        what was pulled, trained, evaluated and deployed (written atomically)
      samples.db        one row per pulled spool sample, with the owner's review
      samples/ab/<sha256>.jpg   pulled JPEGs, named by content
      embeddings.db     backbone embeddings cached by image content hash
      models/           every bundle built here, with a .json sidecar each
      reports/          evaluation reports (markdown, JSON, confusion matrix PNGs)

Nothing here is visible before it is whole: files are written to a temporary name, flushed and
renamed; rows are committed after their file. The config naming the devices is
:mod:`feederd.sync.config`'s; the pulled samples' index is :mod:`feederd.sync.samples`'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feederd.atomic import write_json
from feederd.errors import SyncError
from feederd.sync.samples import SampleIndex, now_utc

HISTORY_MAX = 200


@dataclass(frozen=True)
class Workspace:
    """One device's folder; cheap to create, touches the disk only when used."""

    root: Path
    device: str

    @property
    def dir(self) -> Path:
        return self.root / self.device

    @property
    def samples_dir(self) -> Path:
        return self.dir / "samples"

    @property
    def models_dir(self) -> Path:
        return self.dir / "models"

    @property
    def reports_dir(self) -> Path:
        return self.dir / "reports"

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    @property
    def cache_path(self) -> Path:
        return self.dir / "embeddings.db"

    def create(self) -> Workspace:
        for folder in (self.samples_dir, self.models_dir, self.reports_dir):
            folder.mkdir(parents=True, exist_ok=True)
        if not self.state_path.exists():
            write_json(self.state_path, {"device": self.device, "last_seq": 0,
                                                "acked_seq": 0, "models": {}, "history": []})
        return self

    def exists(self) -> bool:
        return self.state_path.exists()

    def require(self) -> Workspace:
        if not self.exists():
            raise SyncError(f"no workspace for device '{self.device}' in {self.root}; run "
                            f"'feeder-sync init --device {self.device} ...' first")
        return self

    def load_state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            self.require()
            raise
        except (OSError, json.JSONDecodeError) as exc:
            raise SyncError(f"{self.state_path}: unreadable workspace state ({exc})") from exc
        return state

    def save_state(self, state: Mapping[str, Any]) -> None:
        write_json(self.state_path, dict(state))

    def update_state(self, **changes: Any) -> dict[str, Any]:
        state = self.load_state()
        state.update(changes)
        self.save_state(state)
        return state

    def record(self, event: str, **details: Any) -> None:
        """Append to the bounded history shown by ``feeder-sync status``."""
        state = self.load_state()
        history = [*state.get("history", []), {"time": now_utc(), "event": event, **details}]
        state["history"] = history[-HISTORY_MAX:]
        self.save_state(state)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One feeder-sync command at a time per device (a second one fails at once)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("a") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SyncError(f"another feeder-sync command is working on device "
                                f"'{self.device}'; wait for it to finish") from None
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def index(self) -> SampleIndex:
        return SampleIndex(self.dir / "samples.db")

    def model_path(self, version: str) -> Path:
        return self.models_dir / f"{safe_name(version)}.onnx"

    def sidecar_path(self, version: str) -> Path:
        return self.models_dir / f"{safe_name(version)}.json"

    def load_sidecar(self, version: str) -> dict[str, Any]:
        path = self.sidecar_path(version)
        if not path.exists():
            return {}
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SyncError(f"{path}: unreadable model notes ({exc})") from exc
        return data


def safe_name(version: str) -> str:
    """A file name for a version string (which comes from bundle metadata)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", version).lstrip(".")
    return name or "model"

