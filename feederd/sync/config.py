"""feeder-sync's configuration: the laptop side's config file, its devices and training options.

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

Strict like the device's config (unknown keys are errors, each named with its location), so a
typo fails the command instead of silently training with a default. The device's own folder on
this machine is :mod:`feederd.sync.workspace`'s.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from feederd.config import CameraConfig, ClassifierConfig, MiningConfig, parse_toml
from feederd.errors import ConfigError

CONFIG_ENV = "FEEDER_SYNC_CONFIG"
DEVICE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


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
        data = parse_toml(target, "no such feeder-sync config file")
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
