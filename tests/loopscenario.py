"""The learning loop through the product, on the shared photos: a harness for the acceptance
test (one K, cheap) and ``tools/bench/loop_bench.py`` (K = 0/10/25/50).

The owner's labelled folder is half of the shared bird photos; the other half (its five
species) is the test set. Half of the shared squirrels visit the owner's feeder; the other
half are only ever used to measure. For one K: the baseline is pushed to a fresh device, a real
``feederd run`` (default settings, replaying as fast as it can) meets the squirrels, the owner
replies "not a bird" over a real Mosquitto to the first K alerts, and ``feeder-sync loop``
(local transport: the real ``feederd`` CLI) pulls, trains, evaluates and pushes if the gate
passes. The figures replay photos through the device's own pipeline (folder replay, motion,
crop, classifier, visit vote) with the same settings: false alerts on the unseen squirrels and
per-species recall (an alert naming the species) on the test birds, for several models in one
pass over the frames.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brokers import Mosquitto, Probe, wait_until
from daemonproc import DaemonProcess, write_config
from sync.helpers import FEEDERD, run_json, run_sync
from sync.test_scenario import link_birds, link_files

from feederd.capture.folder import FolderSource
from feederd.classifier import Classifier
from feederd.config import Settings, SpoolConfig, load_settings
from feederd.motion import MotionDetector, VisitStateMachine
from feederd.pipeline import Pipeline
from feederd.spool import Spool
from feederd.sync.dataset import scan_folder, split
from feederd.types import Alert, ClassifiedFrame, VisitSummary
from feederd.visits import VisitTracker

SPECIES = ("blue_jay", "crow", "hummingbird", "swallow", "woodpecker")
DEVICE = "feeder"
TOPIC = f"feederd/{DEVICE}"
# The device's default settings, replaying as fast as it can; each photo stays 1 s on screen
# (the replay's own default, 0.5 s, leaves one classified frame after the visit opens).
REPLAY = {"camera": {"realtime": False, "frames_per_image": 10}}
SQUEEZENET = ("--embedding-output", "fire9/concat_1", "--preprocess", "caffe")
# The shipped AIY Birds V1 bundle as the backbone of the owner's head (its 1,280-d embedding).
AIY_BACKBONE = ("--embedding-output", "embedding", "--preprocess", "pixels")


@dataclass
class Photos:
    owner: Path  # <label>/<photo>: the owner's labelled folder
    birds: Path  # the other half's photos of the five species, for recall
    truth: dict[Path, str]  # resolved photo -> species
    seen: Path  # squirrels that visit the owner's feeder
    unseen: Path  # squirrels only used to measure


def photos(shared: Path, tmp: Path, bird_step: int = 1, squirrel_step: int = 1) -> Photos:
    """The split; ``*_step`` > 1 keeps every n-th test photo (cheaper figures)."""
    everything = link_birds(shared, tmp / "photos" / "all-birds")
    mine, rest = split(scan_folder(everything), 0.5, 0)
    owner = tmp / "photos" / "owner"
    for item in mine:
        target = owner / item.label / item.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(item.path.resolve())
    tests = [i for i in rest if i.label in SPECIES][::bird_step]
    birds = link_files([i.path.resolve() for i in tests], tmp / "photos" / "test-birds")
    truth = {(birds / f"{n:04d}{i.path.suffix}").resolve(): i.label
             for n, i in enumerate(tests)}
    squirrels = sorted((shared / "images" / "squirrel").rglob("*.jpg"))
    return Photos(owner, birds, truth,
                  link_files(squirrels[::2], tmp / "photos" / "squirrels-seen"),
                  link_files(squirrels[1::2][::squirrel_step], tmp / "photos" / "unseen"))


class Loop:
    """One owner's set-up: an initialised workspace to copy, and a fresh device per run."""

    def __init__(self, tmp: Path, shared: Path, broker: Mosquitto, data: Path,
                 training: str = "") -> None:
        self.tmp, self.shared, self.broker, self.data = tmp, shared, broker, data
        self.training = training
        self.template = tmp / "template"

    def configs(self, name: str) -> tuple[Path, Path]:
        """(feederd config, feeder-sync config) of run ``name``."""
        root = self.tmp / name
        root.mkdir(parents=True, exist_ok=True)
        daemon = write_config(root / "feederd.toml", {
            "state_dir": str(root / "device"), **REPLAY,
            "spool": {"commit_interval_s": 0.2},
            "mqtt": {"host": self.broker.host, "port": self.broker.port, "device_id": DEVICE},
            "homeassistant": {"enabled": False}, "jobs": {"model_watch_interval_s": 1.0}})
        sync = root / "sync.toml"
        sync.write_text(f'workspace = "{root / "workspace"}"\n[training]\n{self.training}\n'
                        f'[devices.{DEVICE}]\ntransport = "local"\nfeederd = "{FEEDERD}"\n'
                        f'feederd_config = "{daemon}"\n')
        return daemon, sync

    def init(self, backbone: Path, *args: str) -> dict[str, Any]:
        """``feeder-sync init`` once, in the template workspace."""
        return self._init("--backbone", str(backbone), *args, "--data", str(self.data),
                          "--negative-labels", "other")

    def init_from(self, bundle: Path) -> dict[str, Any]:
        """``feeder-sync init --from-bundle``: no photo folder."""
        return self._init("--from-bundle", str(bundle))

    def _init(self, *args: str) -> dict[str, Any]:
        _, sync = self.configs("template")
        run_sync(sync, "init", "--device", DEVICE, *args, timeout=1800)
        state: dict[str, Any] = json.loads(
            (self.template / "workspace" / DEVICE / "state.json").read_text())
        return state

    @property
    def baseline(self) -> Path:
        state = json.loads((self.template / "workspace" / DEVICE / "state.json").read_text())
        return self.template / "workspace" / DEVICE / "models" / f"{state['baseline']}.onnx"

    def run(self, name: str, replies: int, seen: Path, *, while_running: bool = False
            ) -> dict[str, Any]:
        """Baseline pushed to a fresh device, K replies, ``feeder-sync loop``.

        ``while_running``: the loop runs while a daemon plays the demo clip, which must adopt
        the new model without restarting.
        """
        daemon_config, sync = self.configs(name)
        shutil.copytree(self.template / "workspace", self.tmp / name / "workspace",
                        symlinks=True)
        run_sync(sync, "push", "--version", self.baseline.stem)
        probe = Probe(self.broker, f"{TOPIC}/alert")
        daemon = DaemonProcess(daemon_config, env={"FEEDERD_CAMERA__SOURCE": str(seen),
                                                   "FEEDERD_CAMERA__LOOP": "true"})
        try:
            replied = owner_rejects(daemon, probe, replies)
        finally:
            assert daemon.stop() == 0, daemon.log
            probe.close()
        rejected = rejected_spooled(self.tmp / name / "device" / "spool")
        started = time.monotonic()
        if while_running:
            summary = loop_while_running(daemon_config, sync, self.broker)
        else:
            summary = run_json(sync, "loop")
        return {"replied": replied, "rejected_spooled": rejected, "summary": summary,
                "loop_s": time.monotonic() - started,
                "device_model": (self.tmp / name / "device" / "models" / "current").resolve()}


def rejected_spooled(spool: Path) -> int:
    """Distinct frames the device spooled as the owner's "not a bird" (its dedup applied)."""
    with Spool(spool, SpoolConfig(), writer=False) as store:
        return sum(s.label_source == "user" and "rejected" in s.reasons
                   for s in store.ls(limit=100_000))


def loop_while_running(daemon_config: Path, sync: Path, broker: Mosquitto) -> Any:
    """``feeder-sync loop`` while a daemon runs; a pushed model is adopted by it in place."""
    watcher = Probe(broker, f"{TOPIC}/model")
    running = DaemonProcess(daemon_config, env={"FEEDERD_CAMERA__SOURCE": "demo",
                                                "FEEDERD_CAMERA__REALTIME": "true",
                                                "FEEDERD_CAMERA__LOOP": "true"})
    try:
        watcher.wait_for(f"{TOPIC}/model", 1, 60)
        summary = run_json(sync, "loop")
        if summary["pushed"]:
            version = summary["trained"]["version"]
            wait_until(lambda: any(json.loads(m.payload).get("version") == version
                                   for m in watcher.on(f"{TOPIC}/model")), 60, "model reload")
            running.wait_log(f"now classifying with model {version}", 60)
            assert running.proc.poll() is None, running.log
    finally:
        assert running.stop() == 0, running.log
        watcher.close()
    return summary


def owner_rejects(daemon: DaemonProcess, probe: Probe, limit: int,
                  deadline_s: float = 300.0) -> list[str]:
    """Reply "not a bird" to each alert as it arrives, ``limit`` replies at most.

    The replay loops (a device is always on), so the owner stops when it has sent ``limit``
    replies or the deadline passes; the replies are stored before the daemon is stopped.
    """
    replied: list[str] = []
    deadline = time.monotonic() + deadline_s
    while len(replied) < limit and time.monotonic() < deadline and daemon.proc.poll() is None:
        for message in probe.on(f"{TOPIC}/alert")[len(replied):limit]:
            event_id = json.loads(message.payload)["event_id"]
            probe.publish(f"{TOPIC}/feedback", json.dumps({"event_id": event_id,
                                                           "verdict": "not_a_bird"}))
            replied.append(event_id)
        time.sleep(0.05)
    if replied:
        daemon.wait_log(f"reply not_a_bird on {replied[-1]}", 60)
    time.sleep(1.0)  # the spool commits every 0.2 s
    return replied


# --- figures: the device pipeline over photo folders, several models at once -----------------

class _AlertsByImage:
    """Pipeline events: which image was on screen when each alert was decided."""

    def __init__(self) -> None:
        self.shown: Path | None = None  # the image of the current visit (set by the replay)
        self.alerts: dict[Path, str] = {}

    def on_classified(self, frame: ClassifiedFrame) -> None:
        return None

    def on_alert(self, alert: Alert) -> None:
        # A visit may be decided just after its image left the screen (the gap's frames
        # still move against the background): it belongs to the image shown last.
        if self.shown is not None:
            self.alerts[self.shown.resolve()] = alert.label

    def on_visit_closed(self, summary: VisitSummary, frames: Sequence[ClassifiedFrame]) -> None:
        return None


def replay(models: Sequence[Path], folder: Path, settings: Settings) -> list[dict[Path, str]]:
    """The alert (label) each image raised, per model: one frame stream, one pipeline each."""
    source = FolderSource(folder, settings.camera, settings.motion.height)
    pipelines, events = [], []
    for model in models:
        classifier = Classifier(model)
        sink = _AlertsByImage()
        bundle = classifier.bundle
        pipelines.append(Pipeline(
            MotionDetector(settings.motion), VisitStateMachine(settings.motion),
            VisitTracker(settings.visits, bundle.labels, bundle.negative_labels), classifier,
            sink, settings.classifier))
        events.append(sink)
    while not source.finished:
        if (frame := source.read()) is not None:
            if source.current_path is not None:
                for sink in events:
                    sink.shown = source.current_path
            for pipeline in pipelines:
                pipeline.process(frame)
    for pipeline in pipelines:
        pipeline.close_visit(time.time())
    source.close()
    return [sink.alerts for sink in events]


def figures(models: Sequence[Path], data: Photos, state_dir: Path, birds_too: bool = True
            ) -> list[dict[str, Any]]:
    """False alerts on the unseen squirrels and recall per species, per model."""
    settings = load_settings(None, state_dir=str(state_dir), **REPLAY)
    squirrels = replay(models, data.unseen, settings)
    birds = replay(models, data.birds, settings) if birds_too else [{} for _ in models]
    count = len(list(data.unseen.iterdir()))
    out = []
    for false, said in zip(squirrels, birds, strict=True):
        recall = {}
        for species in SPECIES:
            shown = [p for p, label in data.truth.items() if label == species]
            recall[species] = round(sum(said.get(p) == species for p in shown) / len(shown), 3)
        recall = recall if birds_too else {}
        out.append({"false_alerts": len(false), "squirrels": count,
                    "false_alert_rate": round(len(false) / count, 4),
                    "false_by_label": dict(Counter(false.values())), "recall": recall,
                    "mean_recall": round(sum(recall.values()) / len(recall), 3)
                    if recall else None})
    return out


def top1(models: Sequence[Path], shared: Path, step: int = 1) -> list[dict[str, float]]:
    """Top-1 accuracy on the shared CUB photos of the species a model knows (folder name =
    label), as photos and as device frames, per model; a field class counts as wrong."""
    import cv2

    from feederd.sync.config import ViewConfig
    from feederd.sync.domain import DeviceView

    known = set(Classifier(models[0]).bundle.labels)
    photos = [p for p in sorted((shared / "images" / "bird").glob("*/*"))
              if p.parent.name in known][::step]
    raw = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in photos]
    view = DeviceView(ViewConfig())
    domains = {"photos": raw, "device_frames": [view.render(i) for i in raw]}
    out = []
    for model in models:
        classifier = Classifier(model)
        scores = {"photos_n": float(len(photos))}
        for name, images in domains.items():
            probs, _ = classifier.classify_batch(images)
            said = [classifier.bundle.labels[int(k)] for k in probs.argmax(axis=1)]
            scores[name] = round(sum(s == p.parent.name for s, p in zip(said, photos,
                                                                        strict=True))
                                 / len(photos), 4)
        out.append(scores)
    return out
