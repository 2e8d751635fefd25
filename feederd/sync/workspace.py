"""feeder-sync's configuration and the per-device workspace on the laptop.

The config file (``~/.config/feeder-sync/config.toml``, or ``--config`` / ``$FEEDER_SYNC_CONFIG``)
names the devices and how to reach them, where workspaces live and the training options::

    workspace = "~/feeder-sync"

    [training]
    neg_per_pos = 3          # negatives kept per positive sample
    tolerance = 0.02         # largest species recall drop the gate accepts

    [training.view]          # how the device sees a photo: its camera and crop settings
    crop = "motion"

    [devices.feeder]
    transport = "ssh"        # or "local"
    host = "pi@feeder.local"
    ssh_options = ["-p", "22"]
    feederd = "feederd"      # the command on the device
    feederd_config = "/etc/feederd/feederd.toml"
    pull_max_mb = 4096       # most one pull accepts (a larger stream is refused)

One folder per device holds everything about it::

    <workspace>/<device>/
      state.json        what was pulled, trained, evaluated and deployed (written atomically)
      samples.db        one row per pulled spool sample, with the owner's review
      samples/ab/<sha256>.jpg   pulled JPEGs, named by content
      embeddings.db     backbone embeddings cached by image content hash
      models/           every bundle built here, with a .json sidecar each
      reports/          evaluation reports (markdown, JSON, confusion matrix PNGs)

Nothing here is visible before it is whole: files are written to a temporary name, flushed and
renamed; rows are committed after their file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import time
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from feederd.atomic import write_json
from feederd.config import CameraConfig, ClassifierConfig, MiningConfig
from feederd.errors import ConfigError, SyncError

CONFIG_ENV = "FEEDER_SYNC_CONFIG"
DEVICE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
"""The label grammar: a class name the owner types, and a label a pull may store."""
HISTORY_MAX = 200


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "feeder-sync" / "config.toml"


def default_workspace() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "feeder-sync"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DeviceConfig(_Strict):
    transport: Literal["ssh", "local"] = Field("ssh", description="ssh: the system ssh "
                                               "client; local: feederd on this machine.")
    host: str = Field("", description="ssh destination (user@host or a ~/.ssh/config alias).")
    ssh_options: list[str] = Field(default_factory=list, description="Extra ssh arguments, "
                                   "e.g. ['-p', '2222'] or ['-F', 'ssh_config'].")
    feederd: str = Field("feederd", min_length=1, description="The feederd command on the "
                         "device (a shell word list, e.g. 'python3 -m feederd.cli').")
    feederd_config: str = Field("", description="--config passed to feederd; empty: its "
                                "default.")
    path: str = Field("", description="local transport: the device's state directory "
                      "(FEEDERD_STATE_DIR for the local feederd); empty: from its config.")
    staging_dir: str = Field("/tmp", description="Where a pushed bundle waits on the device "
                             "before 'feederd model install'.")
    alert_confidence: float = Field(0.5, ge=0, le=1, description="The device's "
                                    "visits.min_confidence: a species predicted at least this "
                                    "confidently counts as an alert in evaluations.")
    timeout_s: float = Field(600.0, gt=0, description="Longest wait for one device command.")
    pull_max_mb: int = Field(4096, ge=1, description="Most megabytes one pull accepts from "
                             "the device (a larger stream is refused, nothing is kept).")

    @field_validator("host")
    @classmethod
    def _no_option_host(cls, value: str) -> str:
        if value.startswith("-"):
            raise ValueError("host must not start with '-'; put ssh flags in ssh_options")
        return value


class ViewConfig(_Strict):
    """How the device sees a photo (see :mod:`feederd.sync.domain`); defaults: the device's."""

    domain: Literal["device", "photo"] = Field("device", description="device: base and test "
                                               "photos are rendered as device frames (crop, "
                                               "JPEG) before they are embedded; photo: used "
                                               "as they are (the old recipe).")
    width: int = Field(CameraConfig().width, ge=64, le=4608, description="The device's "
                       "camera.width.")
    height: int = Field(CameraConfig().height, ge=64, le=3496, description="The device's "
                        "camera.height.")
    fill: float = Field(CameraConfig().folder_fill, ge=0.3, le=0.98, description="Share of "
                        "the frame a photo fills (as camera.folder_fill).")
    crop: Literal["motion", "full"] = Field(ClassifierConfig().crop, description="The "
                                            "device's classifier.crop.")
    crop_expand: float = Field(ClassifierConfig().crop_expand, ge=1.0, le=4.0,
                               description="The device's classifier.crop_expand.")
    jpeg_quality: int = Field(MiningConfig().jpeg_quality, ge=30, le=100, description="The "
                              "device's mining.jpeg_quality.")
    empty_scenes: int = Field(24, ge=0, le=1000, description="Crops of the empty feeder "
                              "(lighting levels, box sizes) trained as nothing of interest "
                              "with the base photos; 0: none.")


Augment = Literal["flip", "zoom"]


class TrainingConfig(_Strict):
    neg_per_pos: float = Field(3.0, gt=0, description="Most negative samples per positive "
                               "(as the TF Object Detection API's max_negatives_per_positive).")
    tolerance: float = Field(0.02, ge=0, le=1, description="Gate: the largest drop of any "
                             "species' held-out recall a candidate may have.")
    noise_images: int = Field(1, ge=0, description="Gate: a species' recall drop counts only "
                              "when more than this many of its test images are lost (one "
                              "image of a 14-photo species is 7 points: noise).")
    field_class: bool = Field(True, description="Train the owner's field negatives (mined "
                              "samples labelled with a base negative label, e.g. 'other') as "
                              "a negative class of their own, '<label>_field': things at the "
                              "feeder that are not birds look nothing like the base dataset's "
                              "other birds, and a class of their own costs the species less "
                              "recall.")
    seed: int = Field(0, description="Seed of the split, the negative subsample and the folds.")
    holdout: float = Field(0.2, gt=0, lt=1, description="Default share of each class kept "
                           "out of training for evaluation (feeder-sync init); every class "
                           "keeps at least one training image.")
    view: ViewConfig = Field(default_factory=lambda: ViewConfig.model_validate({}),
                             description="How the device sees a photo ([training.view]).")
    weak_positive_after_s: float = Field(2 * 86400.0, ge=0, description="Gate: a pulled "
                                         "frame of an alert nobody rejected for this long "
                                         "counts as a (weak) positive of the alerted species.")
    augment: list[Augment] = Field(default_factory=list, description="Augmented variants "
                                   "of every training image trained beside it (flip: the "
                                   "mirror image; zoom: a nearer crop). Measured on the shared "
                                   "photos (25 rejected squirrels, 6 draws): flip halves the "
                                   "species' recall change but leaves 5.3% of unseen squirrels "
                                   "alerting instead of 3.8%, hence off by default.")
    c: float = Field(0.1, gt=0, description="Inverse regularisation of the logistic head.")
    class_weight: Literal["balanced", "none"] = Field("balanced", description="balanced: "
                                                      "rare species weigh as much as common.")
    max_iter: int = Field(3000, ge=50, description="Solver iterations of the head.")
    folds: int = Field(5, ge=2, le=20, description="Folds for the out-of-fold estimate on "
                       "field negatives the candidate trained on.")
    batch_size: int = Field(16, ge=1, le=256, description="Images per embedding batch.")
    threads: int = Field(2, ge=1, le=64, description="onnxruntime threads when embedding.")
    use_pseudo: bool = Field(False, description="Train on the device's pseudo-labels without "
                             "review.")
    allow_new_class: bool = Field(False, description="Accept mined labels the base dataset "
                                  "lacks as new classes.")


class SyncConfig(_Strict):
    workspace: Path = Field(default_factory=default_workspace, description="Where device "
                            "workspaces live.")
    training: TrainingConfig = Field(default_factory=lambda: TrainingConfig.model_validate({}))
    devices: dict[str, DeviceConfig] = Field(default_factory=dict)

    @field_validator("devices")
    @classmethod
    def _names(cls, value: dict[str, DeviceConfig]) -> dict[str, DeviceConfig]:
        for name in value:
            if not DEVICE_NAME.match(name):
                raise ValueError(f"device name {name!r} may use only letters, digits, '_.-'")
        return value


def load_config(path: Path | None = None) -> tuple[SyncConfig, Path]:
    """The config from ``path``, else $FEEDER_SYNC_CONFIG, else the default file (if any)."""
    explicit = path or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    target = config_target(explicit)
    data: dict[str, Any] = {}
    if target.exists() or explicit is not None:
        data = _read_toml(target)
    try:
        config = SyncConfig(**data)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{target}: {len(problems)} problem(s): " + "; ".join(problems),
                          problems) from exc
    config.workspace = config.workspace.expanduser()
    return config, target


def config_target(path: Path | None = None) -> Path:
    """The config file ``load_config`` reads: ``path``, $FEEDER_SYNC_CONFIG or the default."""
    explicit = path or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    return (explicit or default_config_path()).expanduser()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such feeder-sync config file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def pick_device(config: SyncConfig, name: str | None) -> str:
    """The named device, or the only one configured / with a workspace."""
    if name:
        if not DEVICE_NAME.match(name):
            raise ConfigError(f"device name {name!r} may use only letters, digits, '_.-'")
        return name
    known = sorted(set(config.devices) | set(_workspaces(config.workspace)))
    if len(known) == 1:
        return known[0]
    if not known:
        raise ConfigError("no device configured; add [devices.NAME] to the feeder-sync config "
                          "or run 'feeder-sync init --device NAME'")
    raise ConfigError(f"several devices ({', '.join(known)}); choose one with --device")


def _workspaces(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return [p.name for p in root.iterdir() if (p / "state.json").exists()]


def device_config(config: SyncConfig, name: str) -> DeviceConfig:
    try:
        return config.devices[name]
    except KeyError:
        raise ConfigError(f"device '{name}' is not in the feeder-sync config; add "
                          f"[devices.{name}] with transport = \"ssh\" and host = ...") from None


# --- the workspace ----------------------------------------------------------------------------

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
        history = [*state.get("history", []), {"time": _now(), "event": event, **details}]
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


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- pulled samples ---------------------------------------------------------------------------

SAMPLE_COLUMNS = ("id", "sha256", "spool", "seq", "visit_id", "time", "reasons", "predicted",
                  "probs", "margin", "label", "label_source", "model_version", "phash", "size",
                  "file")
_JSON_COLUMNS = ("reasons", "probs")
_DEVICE_COLUMNS = [c for c in SAMPLE_COLUMNS if c not in ("id", "sha256")]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    spool TEXT NOT NULL DEFAULT '',
    seq INTEGER NOT NULL,
    visit_id TEXT,
    time REAL,
    reasons TEXT NOT NULL DEFAULT '[]',
    predicted TEXT,
    probs TEXT NOT NULL DEFAULT '{}',
    margin REAL,
    label TEXT,
    label_source TEXT,
    model_version TEXT,
    phash TEXT,
    size INTEGER NOT NULL,
    file TEXT NOT NULL,
    review_label TEXT,
    review_source TEXT,
    reviewed_at TEXT,
    pulled_at TEXT NOT NULL,
    PRIMARY KEY (id, sha256)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SampleIndex:
    """The pulled samples of one device (SQLite): what the device said plus the owner's review.

    A sample is identified by its device id and content hash: when the device sends it again
    (a late reply relabelled it, or a rebuilt spool renumbered it) its row is updated in place
    and the owner's review is kept. The pull cursor (the device's spool id and the last
    sequence stored) is committed in the same transaction as the rows it covers.

    A sample's *training label* is the owner's review if any, else the device label when the
    owner gave it (``label_source == "user"``); pseudo-labels count only once accepted.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SampleIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cursor(self) -> tuple[str, int]:
        """(spool id, last sequence) of the last committed pull."""
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        return meta.get("spool_id", ""), int(meta.get("last_seq", 0))

    def last_seq(self) -> int:
        return self.cursor()[1]

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def commit(self, rows: Iterable[Mapping[str, Any]], spool_id: str, last_seq: int) -> int:
        """Upsert rows and move the cursor in one transaction; returns how many were new."""
        values = [self._values(row, spool_id) for row in rows]
        columns = ", ".join(SAMPLE_COLUMNS)
        marks = ", ".join("?" * (len(SAMPLE_COLUMNS) + 1))
        updates = ", ".join(f"{c} = excluded.{c}" for c in _DEVICE_COLUMNS)
        with self._transaction():
            before = self.count()
            self._db.executemany(
                f"INSERT INTO samples ({columns}, pulled_at) VALUES ({marks}) "
                f"ON CONFLICT (id, sha256) DO UPDATE SET {updates}", values)
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 [("spool_id", spool_id), ("last_seq", str(last_seq))])
            return self.count() - before

    def _values(self, row: Mapping[str, Any], spool_id: str) -> tuple[Any, ...]:
        data = {**row, "spool": spool_id, "id": str(row["id"])}
        out = [json.dumps(data.get(c)) if c in _JSON_COLUMNS else data.get(c)
               for c in SAMPLE_COLUMNS]
        return (*out, _now())

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def all(self) -> list[dict[str, Any]]:
        return [self._row(r) for r in
                self._db.execute("SELECT * FROM samples ORDER BY time, id")]

    def get(self, sample_id: str, sha256: str | None = None) -> dict[str, Any] | None:
        """The sample with this device id (the newest if a rebuilt spool reused it), or
        exactly the row with this id and content hash."""
        if sha256 is not None:
            row = self._db.execute("SELECT * FROM samples WHERE id = ? AND sha256 = ?",
                                   (sample_id, sha256)).fetchone()
        else:
            row = self._db.execute("SELECT * FROM samples WHERE id = ? ORDER BY pulled_at "
                                   "DESC LIMIT 1", (sample_id,)).fetchone()
        return self._row(row) if row else None

    def _row(self, row: sqlite3.Row) -> dict[str, Any]:
        data = dict(row)
        for column in _JSON_COLUMNS:
            data[column] = json.loads(data[column]) if data[column] else None
        return data

    def set_review(self, sample_id: str, sha256: str, label: str | None,
                   source: str | None) -> None:
        """Record the owner's decision; ``source`` None takes it back (the sample is pending
        again, or trains with the device's own user label)."""
        with self._transaction():
            self._db.execute("UPDATE samples SET review_label = ?, review_source = ?, "
                             "reviewed_at = ? WHERE id = ? AND sha256 = ?",
                             (label if source else None, source,
                              _now() if source else None, sample_id, sha256))


EVIDENCE_REASONS = frozenset({"empty_scene"})
"""Pseudo-labels the camera's evidence gives, not the model: they train without review."""


def training_label(sample: Mapping[str, Any], use_pseudo: bool = False) -> str | None:
    """The label a sample trains with, or None (not yet reviewed, or excluded by the owner)."""
    if sample.get("review_source"):
        return sample.get("review_label") or None
    source = sample.get("label_source")
    label = sample.get("label")
    evidence = bool(EVIDENCE_REASONS.intersection(sample.get("reasons") or ()))
    if label and (source == "user" or (source == "pseudo" and (use_pseudo or evidence))):
        return str(label)
    return None
