"""Configuration: one strict TOML file plus ``FEEDERD_<SECTION>__<KEY>`` environment overrides.

Every key has a default, so an empty file (or none) runs the demo set-up. Unknown keys are errors
rather than silently ignored, because a typo in a threshold would otherwise go unnoticed for
months on a feeder. Secrets never come from the file: the MQTT password is read from the
environment or from a systemd credential file.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from feederd.config_env import environment_values, merged, unknown_variables
from feederd.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/feederd/feederd.toml")


def default_state_dir() -> Path:
    """systemd's StateDirectory= when run as a service, else the user's XDG state folder."""
    if env := os.environ.get("STATE_DIRECTORY"):
        return Path(env.split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "feederd"


class Section(BaseModel):
    """Base of every section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CameraConfig(Section):
    kind: Literal["auto", "demo", "picamera2", "opencv", "video", "folder"] = Field(
        "auto",
        description="Frame source. auto: 'demo' for the bundled clip, a device index or URL "
        "opens OpenCV, a folder replays images, a file replays a video.",
    )
    source: str = Field("demo", description="'demo', a device index ('0'), an RTSP/HTTP URL, "
                        "a video file or an image folder.")
    width: int = Field(1280, ge=64, le=4608, description="Capture width in pixels.")
    height: int = Field(720, ge=64, le=3496, description="Capture height in pixels.")
    fps: float = Field(10.0, gt=0, le=120, description="Requested capture frame rate.")
    lores_width: int = Field(320, ge=32, le=1280, description="picamera2 lores stream width.")
    lores_height: int = Field(240, ge=32, le=960, description="picamera2 lores stream height.")
    realtime: bool = Field(True, description="Replay files at their native speed (false: as "
                           "fast as possible).")
    loop: bool = Field(False, description="Restart a replayed file or folder at its end.")
    frames_per_image: int = Field(5, ge=1, le=1000, description="Image-folder replay: frames "
                                  "each image is shown for.")
    folder_gap_s: float = Field(8.0, ge=0, le=600, description="Image-folder replay: seconds "
                                "of empty background between images, so each forms a visit "
                                "(the background takes a few seconds to forget a photo, then "
                                "motion.close_after_s must pass).")
    jitter_px: int = Field(3, ge=0, le=64, description="Image-folder replay: shift each shown "
                           "frame by up to this many pixels, as a moving animal would.")
    folder_fill: float = Field(0.8, ge=0.3, le=0.98, description="Image-folder replay: share "
                               "of the frame an image fills (the rest is the grey 'feeder'). "
                               "Near 1 with crop = 'full' classifies the photos almost as "
                               "taken; over motion.max_area, an image's arrival counts as a "
                               "lighting change and its jitter opens the visit.")
    reconnect_min_s: float = Field(1.0, gt=0, le=600, description="First reconnect delay.")
    reconnect_max_s: float = Field(60.0, gt=0, le=3600, description="Longest reconnect delay.")

    @model_validator(mode="after")
    def _backoff_order(self) -> CameraConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be at least reconnect_min_s")
        return self

    @model_validator(mode="after")
    def _picamera_has_no_source(self) -> CameraConfig:
        # picamera2 ignores source: "0" there would silently open the Pi camera, not a webcam.
        if self.kind == "picamera2" and "source" in self.model_fields_set and \
                self.source.strip() != "picamera2":
            raise ValueError(f"source = {self.source!r} is not read by kind = 'picamera2' "
                             "(the Pi camera module); for a USB webcam set kind = 'opencv' "
                             "and source = '0' (its index), for the Pi camera remove source")
        return self


class MotionConfig(Section):
    height: int = Field(100, ge=24, le=480, description="Height of the grey frame motion is "
                        "computed on (width follows the aspect ratio).")
    threshold: int = Field(25, ge=1, le=255, description="Grey-level change that counts as "
                           "motion for one pixel.")
    min_area: float = Field(0.002, gt=0, le=1, description="Fraction of the frame that must "
                            "change to count as motion.")
    background_alpha: float = Field(0.05, gt=0, le=1, description="How fast the background "
                                    "adapts (0-1).")
    max_area: float = Field(0.8, gt=0, le=1, description="A change over more of the frame "
                            "than this is a lighting change (sun, cloud, exposure), not an "
                            "animal: the background is re-learned from that frame.")
    ignore_masks: list[list[tuple[float, float]]] = Field(
        default_factory=list,
        description="Polygons in relative coordinates (0-1) where motion is ignored, e.g. a "
        "swaying branch: [[[0,0],[0.2,0],[0.2,0.3],[0,0.3]]].",
    )
    start_frames: int = Field(3, ge=1, le=100, description="Motion frames in a row that start "
                              "a visit.")
    close_after_s: float = Field(3.0, gt=0, le=600, description="Seconds without motion that "
                                 "close a visit.")
    max_visit_s: float = Field(300.0, gt=0, le=86400, description="A visit longer than this "
                               "is closed and a new one starts.")

    @model_validator(mode="after")
    def _area_order(self) -> MotionConfig:
        if self.max_area <= self.min_area:
            raise ValueError("max_area must be above min_area")
        return self


class ClassifierConfig(Section):
    model: str = Field("", description="Model bundle (.onnx). Empty: the installed 'current' "
                       "model, else the bundled demo model.")
    crop: Literal["motion", "full"] = Field("motion", description="Classify the motion box "
                                            "(expanded) or the whole frame.")
    crop_expand: float = Field(1.6, ge=1.0, le=4.0, description="Motion box growth factor "
                               "(context around the animal).")
    threads: int = Field(2, ge=1, le=16, description="onnxruntime intra-op threads.")
    top_k: int = Field(3, ge=1, le=20, description="Classes reported per frame.")
    min_crop_side: float = Field(0.3, ge=0, le=1, description="Smallest crop side, as a "
                                 "share of the frame's shorter side: a small or distant "
                                 "animal keeps context instead of being upscaled into mush.")


class VisitsConfig(Section):
    classify_fps: float = Field(3.0, gt=0, le=60, description="Most frames classified per "
                                "second during a visit.")
    min_frames: int = Field(2, ge=1, le=1000, description="Frames that must vote for a "
                            "species before it alerts.")
    min_confidence: float = Field(0.5, ge=0, le=1, description="Mean probability of the "
                                  "winning species over its frames.")
    min_share: float = Field(0.3, ge=0, le=1, description="Share of the visit's classified "
                             "frames the winning species needs (isolated frames do not alert).")
    species: list[str] = Field(default_factory=list, description="Local species allow-list "
                               "(labels, common or scientific names, any case); the model's "
                               "other species fold into its negative class. Empty: every "
                               "label not in the model's negative_labels.")
    exclude_species: list[str] = Field(default_factory=list, description="Species that never "
                                       "alert (block-list, matched like species); they fold "
                                       "into the model's negative class.")


class MiningConfig(Section):
    enabled: bool = Field(True, description="Keep hard examples in the spool.")
    low_margin: float = Field(0.15, ge=0, le=1, description="Top-1 minus top-2 below this is "
                              "'unsure'.")
    flicker_confidence: float = Field(0.5, ge=0, le=1, description="Confidence of an isolated "
                                      "frame that counts as flicker.")
    flicker_window: int = Field(2, ge=1, le=10, description="Neighbours on each side that must "
                                "disagree for a flicker.")
    max_per_visit: int = Field(8, ge=1, le=1000, description="Most samples kept from one visit.")
    dedup_distance: int = Field(6, ge=0, le=64, description="Perceptual-hash Hamming distance "
                                "under which a frame is a near-duplicate.")
    recent_max_bytes: int = Field(64 * 2**20, ge=0, description="Bytes of recent-visit frames "
                                  "kept for late replies.")
    recent_max_age_s: float = Field(6 * 3600, ge=0, description="How long recent-visit frames "
                                    "wait for a reply.")
    jpeg_quality: int = Field(90, ge=30, le=100, description="JPEG quality of stored frames.")
    empty_foreground: float = Field(0.03, ge=0, le=1, description="A crop differing from the "
                                    "visit's empty-feeder reference over less than this share "
                                    "counts as empty (evidence for flicker_negative).")
    animal_min_area: float = Field(0.004, ge=0, le=1, description="Motion over at least this "
                                   "share of the frame is animal-sized (missed_visit, "
                                   "disagreement).")
    missed_share: float = Field(0.5, ge=0, le=1, description="Share of a visit's frames with "
                                "evidence (animal-sized object or empty feeder) that must show "
                                "an animal for a visit without an alert to be a missed_visit.")
    empty_scene_interval_s: float = Field(600.0, ge=0, description="At most one empty_scene "
                                          "sample (a visit with motion but no object, no "
                                          "alert: a cheap negative) per this many seconds; 0: "
                                          "none.")
    min_gap_s: float = Field(1.0, ge=0, le=3600, description="Picks of one visit are at least "
                             "this far apart (spread over the visit, not bunched).")
    dedup_cosine: float = Field(0.9, ge=0, le=1, description="Embedding cosine similarity at "
                                "or over which two frames of a visit are near-duplicates "
                                "(bundles with an embedding; else dedup_distance on dHash).")
    visit_dedup_distance: int = Field(16, ge=0, le=64, description="dHash distance under which "
                                      "two frames of one visit are near-duplicates (bundles "
                                      "without an embedding).")


class SpoolConfig(Section):
    dir: str = Field("", description="Spool directory; empty: <state_dir>/spool.")
    max_bytes: int = Field(512 * 2**20, ge=2**20, description="Most bytes of JPEGs kept.")
    max_count: int = Field(10000, ge=10, description="Most samples kept.")
    commit_interval_s: float = Field(5.0, ge=0, le=600, description="Samples are committed "
                                     "in batches at most this far apart (few, whole writes).")
    min_free_bytes: int = Field(64 * 2**20, ge=0, description="Spooling pauses when the disk "
                                "has less free space.")


class MqttConfig(Section):
    enabled: bool = Field(True, description="Publish alerts over MQTT.")
    host: str = Field("localhost", min_length=1, description="Broker host name.")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (8883 for TLS).")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version.")
    device_id: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9_.-]+$",
                           description="Device id in topics; defaults to the host name.")
    prefix: str = Field("feederd", pattern=r"^[^#+]+$", description="Topic prefix.")
    username: str = Field("", description="Broker user name.")
    password: SecretStr = Field(SecretStr(""), description="Set FEEDERD_MQTT__PASSWORD; never "
                                "written in the file.")
    password_file: str = Field("", description="File holding the password (systemd "
                               "LoadCredential); default: $CREDENTIALS_DIRECTORY/mqtt_password.")
    tls: bool = Field(False, description="Connect with TLS.")
    ca_file: str = Field("", description="CA certificate (PEM); empty: system store.")
    cert_file: str = Field("", description="Client certificate (PEM).")
    key_file: str = Field("", description="Client key (PEM).")
    keepalive_s: int = Field(60, ge=5, le=3600, description="MQTT keepalive.")
    reconnect_min_s: float = Field(1.0, gt=0, le=600, description="First reconnect delay.")
    reconnect_max_s: float = Field(120.0, gt=0, le=3600, description="Longest reconnect delay.")
    outbox_max: int = Field(1000, ge=1, le=1_000_000, description="Messages kept while the "
                            "broker is away; the oldest are dropped beyond.")
    sender_stuck_s: float = Field(180.0, ge=1, le=86400, description="A sender that moves "
                                  "nothing this long with the broker connected stops the "
                                  "systemd watchdog; keep it above 1.5 x keepalive_s.")
    snapshot_width: int = Field(640, ge=64, le=4096, description="Snapshot width in pixels.")
    snapshot_quality: int = Field(80, ge=10, le=100, description="Snapshot JPEG quality.")
    feedback_max_bytes: int = Field(4096, ge=64, le=2**20, description="Larger replies are "
                                    "dropped.")

    @model_validator(mode="after")
    def _credentials(self) -> MqttConfig:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file must be given together")
        if self.password.get_secret_value() and not self.username:
            raise ValueError("a password must be given with a username")
        return self


class HomeAssistantConfig(Section):
    enabled: bool = Field(True, description="Announce entities by MQTT discovery.")
    prefix: str = Field("homeassistant", pattern=r"^[^#+]+$", description="Discovery prefix.")
    status_topic: str = Field("homeassistant/status", description="Home Assistant birth topic.")
    configuration_url: str = Field("", pattern=r"^$|^(https?|homeassistant)://\S+$",
                                   description="Link shown on the device page (optional).")
    support_url: str = Field("", pattern=r"^$|^https?://\S+$", description="Where to get help "
                             "with feederd, shown with the device's origin (optional).")


class JobsConfig(Section):
    stats_interval_s: float = Field(60.0, ge=1, le=86400, description="Stats publishing period.")
    prune_interval_s: float = Field(300.0, ge=1, le=86400, description="Recent-frame expiry "
                                    "and spool quota period.")
    maintenance_interval_s: float = Field(86400.0, ge=60, description="SQLite maintenance "
                                          "period.")
    model_watch_interval_s: float = Field(30.0, ge=1, le=3600, description="How often the "
                                          "installed model is checked for a change.")


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class LoggingConfig(Section):
    level: LogLevel = Field("INFO", description="Root log level.")
    levels: dict[str, LogLevel] = Field(default_factory=dict, description="Per-module levels, "
                                        "e.g. {\"feederd.mqtt\" = \"DEBUG\"}.")
    timestamps: Literal["auto", "yes", "no"] = Field("auto", description="auto: none under "
                                                     "journald, which adds its own.")


class Settings(BaseModel):
    """The whole configuration; sections are named after the pipeline stages.

    Built from the file's values with the ``FEEDERD_*`` environment laid over them key by key
    (:func:`feederd.config_env.environment_values`), as :class:`pydantic_settings.BaseSettings`
    did, without its import cost.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)

    state_dir: Path = Field(default_factory=default_state_dir, description="Models, spool, "
                            "outbox and recent frames live here.")
    camera: CameraConfig = Field(default_factory=CameraConfig)
    motion: MotionConfig = Field(default_factory=MotionConfig)
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)
    visits: VisitsConfig = Field(default_factory=VisitsConfig)
    mining: MiningConfig = Field(default_factory=MiningConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    def __init__(self, **values: Any) -> None:
        # The environment overrides the file, which arrives as these values.
        super().__init__(**merged(values, environment_values(type(self))))

    @property
    def spool_dir(self) -> Path:
        return Path(self.spool.dir) if self.spool.dir else self.state_dir / "spool"

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    def mqtt_password(self) -> str:
        """The password from the environment, else the credential file, else empty."""
        if secret := self.mqtt.password.get_secret_value():
            return secret
        path = self.mqtt.password_file
        if not path and (creds := os.environ.get("CREDENTIALS_DIRECTORY")):
            candidate = Path(creds) / "mqtt_password"
            path = str(candidate) if candidate.exists() else ""
        if not path:
            return ""
        try:
            return Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"mqtt.password_file: cannot read {path}: {exc.strerror}") from exc


def writable_dir(path: Path, key: str) -> Path:
    """Create ``path`` if needed and check this user may write in it; else a ConfigError
    naming ``key``: a traceback from deep inside the spool says nothing about the setting."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{key} = {str(path)!r}: cannot create this folder "
                          f"({exc.strerror}); choose a folder this user can create") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} = {str(path)!r}: this user ({_user()}) cannot write there; "
                          "fix its owner or permissions, or choose another folder")
    return path


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _describe(error: dict[str, Any]) -> str:
    """One ``section.key: problem; allowed`` line for a pydantic error."""
    loc = ".".join(str(part) for part in error["loc"]) or "(file)"
    if error["type"] == "extra_forbidden":
        return f"{loc}: unknown key; {_allowed_keys(error['loc'])}"
    if error["type"] == "value_error":  # a cross-field rule: its message says it all
        return f"{loc}: {error['msg'].removeprefix('Value error, ')}"
    return f"{loc}: {error['msg']} (got {error.get('input')!r})"


def _allowed_keys(loc: tuple[Any, ...]) -> str:
    model: type[BaseModel] = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return "check the spelling"
        model = annotation
    where = f"[{'.'.join(map(str, loc[:-1]))}]" if len(loc) > 1 else "the top level"
    return f"allowed in {where}: {', '.join(model.model_fields)}"


def parse_toml(path: Path, missing: str) -> dict[str, Any]:
    """A TOML file's contents; ConfigError naming the file (``missing`` when it is absent)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: {missing}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, refusing secrets in it."""
    data = parse_toml(path, "no such config file; create it or pass --config")
    if "password" in data.get("mqtt", {}):
        raise ConfigError(
            "mqtt.password: secrets are not read from the config file; set "
            "FEEDERD_MQTT__PASSWORD or mqtt.password_file (systemd LoadCredential)"
        )
    return data


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Load the file (``None``: the default path if it exists), then the environment.

    ``overrides`` are section dicts merged over the file (used by ``feederd demo`` and tests).
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_toml(path)
    elif DEFAULT_CONFIG_PATH.exists():
        data = read_toml(DEFAULT_CONFIG_PATH)
    for key, value in overrides.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    if problems := unknown_variables(Settings):
        raise ConfigError(f"{len(problems)} problem(s) in the environment", problems)
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]  # type: ignore[arg-type]
        raise ConfigError(f"{len(problems)} problem(s) in the configuration", problems) from exc
