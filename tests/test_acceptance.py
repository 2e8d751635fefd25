"""The seeds' scenario, end to end over the real parts, on real photographs.

1. ``feeder-sync init`` builds a baseline from the shared SqueezeNet and half of the shared
   photos of blue_jay, crow, hummingbird, swallow, woodpecker and other (every other bird);
   the other half is the test set. ``feeder-sync push`` installs it on the device.
2. The daemon (a real ``feederd run`` process, real Mosquitto) replays a stream of squirrel
   photos, then bird photos, as visits (image-folder replay). An "owner" replies "not a bird"
   over MQTT to the squirrels' alerts, 25 replies at most.
3. While a daemon runs, ``feeder-sync loop`` (local transport: the real ``feederd spool
   export``, ``ack`` and ``model install`` commands) pulls, trains, evaluates and pushes; the
   running daemon reloads the new model without restarting.
4. Other squirrels and the test birds are replayed through the same pipeline with the baseline
   and with the new model: false alerts on squirrels must fall by at least 60% and mean species
   recall must not fall by more than 2 points.

The replays classify the whole frame (``crop = "full"``) with the photo filling almost all of
it, so the frames the device mines look like the photos the base dataset holds.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from brokers import Mosquitto, Probe, wait_until
from daemonproc import DaemonProcess, write_config
from sync.helpers import FEEDERD, feederd, run_json, run_sync
from sync.test_scenario import link_birds, link_files

from feederd.capture.folder import FolderSource
from feederd.classifier import Classifier
from feederd.config import Settings, load_settings
from feederd.motion import MotionDetector, VisitStateMachine
from feederd.pipeline import Pipeline
from feederd.sync.dataset import scan_folder, split
from feederd.types import Alert, ClassifiedFrame, VisitSummary
from feederd.visits import VisitTracker

SPECIES = ("blue_jay", "crow", "hummingbird", "swallow", "woodpecker")
MAX_REPLIES = 25
DEVICE = "feeder"
TOPIC = f"feederd/{DEVICE}"

REPLAY = {
    "camera": {"width": 640, "height": 480, "frames_per_image": 10, "folder_gap_s": 6.0,
               "folder_fill": 0.95, "realtime": False},
    "motion": {"close_after_s": 1.5},
    "classifier": {"crop": "full"},
}


class AlertsByImage:
    """Pipeline events: which image was on screen when each alert was decided."""

    def __init__(self, source: FolderSource) -> None:
        self.source = source
        self.alerts: dict[Path, str] = {}

    def on_classified(self, frame: ClassifiedFrame) -> None:
        return None

    def on_alert(self, alert: Alert) -> None:
        if self.source.current_path is not None:
            self.alerts[self.source.current_path] = alert.label

    def on_visit_closed(self, summary: VisitSummary, frames: Sequence[ClassifiedFrame]) -> None:
        return None


def replay(model: Path, folder: Path, settings: Settings) -> dict[Path, str]:
    """Run the device pipeline over an image folder; the alert (label) each image raised."""
    classifier = Classifier(model)
    source = FolderSource(folder, settings.camera, settings.motion.height)
    events = AlertsByImage(source)
    bundle = classifier.bundle
    pipeline = Pipeline(MotionDetector(settings.motion), VisitStateMachine(settings.motion),
                        VisitTracker(settings.visits, bundle.labels, bundle.negative_labels),
                        classifier, events, settings.classifier)
    while not source.finished:
        if (frame := source.read()) is not None:
            pipeline.process(frame)
    pipeline.close_visit(time.time())
    source.close()
    return {path.resolve(): label for path, label in events.alerts.items()}


def figures(model: Path, squirrels: Path, birds: Path, truth: dict[Path, str],
            settings: Settings) -> dict[str, Any]:
    false_alerts = replay(model, squirrels, settings)
    bird_alerts = replay(model, birds, settings)
    recall = {}
    for species in SPECIES:
        photos = [p for p, label in truth.items() if label == species]
        recall[species] = sum(bird_alerts.get(p) == species for p in photos) / len(photos)
    return {"false_alerts": len(false_alerts), "squirrels": len(list(squirrels.iterdir())),
            "false_by_label": dict(Counter(false_alerts.values())), "recall": recall,
            "mean_recall": sum(recall.values()) / len(recall)}


def owner_rejects_squirrels(daemon: DaemonProcess, probe: Probe, limit: int,
                            deadline_s: float = 180.0) -> list[str]:
    """Reply "not a bird" to each squirrel alert as it arrives, ``limit`` replies at most.

    The replay loops (a device is always on), so the owner stops when it has sent ``limit``
    replies or the deadline passes, and the daemon is stopped once the replies are stored.
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
    time.sleep(2.0)  # replies are handled on arrival; the spool commits every 0.2 s
    return replied


@pytest.mark.shared_data
@pytest.mark.slow
def test_rejected_squirrels_retrain_the_model_and_cut_false_alerts(
        shared_data: Path, tmp_path: Path, broker: Mosquitto) -> None:
    # 1. Baseline from half the photos; the device runs it.
    device = tmp_path / "device"
    daemon_config = write_config(tmp_path / "feederd.toml", {
        "state_dir": str(device), **REPLAY,
        "spool": {"commit_interval_s": 0.2},
        "mqtt": {"host": broker.host, "port": broker.port, "device_id": DEVICE},
        "homeassistant": {"enabled": False},
        "jobs": {"model_watch_interval_s": 1.0}})
    sync_config = tmp_path / "sync.toml"
    sync_config.write_text(
        f'workspace = "{tmp_path / "workspace"}"\n[devices.{DEVICE}]\ntransport = "local"\n'
        f'feederd = "{FEEDERD}"\nfeederd_config = "{daemon_config}"\n'
        '[training.view]\ncrop = "full"\nwidth = 640\nheight = 480\nfill = 0.95\n')
    data = link_birds(shared_data, tmp_path / "birds")
    run_sync(sync_config, "init", "--backbone",
             str(shared_data / "models/squeezenet1.1/squeezenet1.1-fp32.onnx"),
             "--embedding-output", "fire9/concat_1", "--preprocess", "caffe", "--data",
             str(data), "--negative-labels", "other", "--holdout", "0.5", timeout=900)
    state = json.loads((tmp_path / "workspace" / DEVICE / "state.json").read_text())
    baseline = tmp_path / "workspace" / DEVICE / "models" / f"{state['baseline']}.onnx"
    run_sync(sync_config, "push", "--version", state["baseline"])

    _, test_items = split(scan_folder(data), 0.5, 0)
    test_birds = link_files([i.path for i in test_items], tmp_path / "test-birds")
    truth = {(test_birds / f"{n:04d}{i.path.suffix}").resolve(): i.label
             for n, i in enumerate(test_items)}
    squirrels = sorted(p for p in (shared_data / "images" / "squirrel").rglob("*.jpg"))
    mining, unseen = squirrels[::2], squirrels[1::2]

    # 2. The device meets squirrels; the owner rejects their alerts.
    probe = Probe(broker, f"{TOPIC}/alert")
    daemon = DaemonProcess(daemon_config, env={
        "FEEDERD_CAMERA__SOURCE": str(link_files(mining, tmp_path / "squirrels-seen")),
        "FEEDERD_CAMERA__LOOP": "true"})
    replied = owner_rejects_squirrels(daemon, probe, MAX_REPLIES)
    assert daemon.stop() == 0, daemon.log
    assert replied, "the baseline raised no alert on squirrels: nothing to learn from"
    train_birds, _ = split(scan_folder(data), 0.5, 0)
    birds_seen = link_files([i.path for i in train_birds[::8]], tmp_path / "birds-seen")
    daemon = DaemonProcess(daemon_config, env={"FEEDERD_CAMERA__SOURCE": str(birds_seen)})
    assert daemon.proc.wait(300) == 0, daemon.log
    probe.close()

    # 3. feeder-sync closes the loop while a daemon runs; the daemon adopts the new model.
    watcher = Probe(broker, f"{TOPIC}/model")
    running = DaemonProcess(daemon_config, env={"FEEDERD_CAMERA__SOURCE": "demo",
                                                "FEEDERD_CAMERA__REALTIME": "true",
                                                "FEEDERD_CAMERA__LOOP": "true"})
    try:
        watcher.wait_for(f"{TOPIC}/model", 1, 60)
        started = time.monotonic()
        summary = run_json(sync_config, "loop")
        loop_seconds = time.monotonic() - started
        assert summary["pushed"], json.dumps({
            "replies": len(replied), "reasons": summary["evaluation"]["reasons"],
            "pulled": summary["pulled"], "trained": summary["trained"],
            "spool": json.loads(feederd(daemon_config, "spool", "stats", "--json").stdout)})
        new_version = summary["trained"]["version"]
        wait_until(lambda: any(json.loads(m.payload).get("version") == new_version
                               for m in watcher.on(f"{TOPIC}/model")), 60, "model reload")
        running.wait_log(f"now classifying with model {new_version}", 60)  # after its visit
        assert running.proc.poll() is None
    finally:
        assert running.stop() == 0
        watcher.close()
    new_model = device / "models" / "current"

    # 4. Other squirrels and the test birds, before and after.
    settings = load_settings(None, state_dir=str(tmp_path / "replay"), **REPLAY)
    others = link_files(unseen, tmp_path / "squirrels-unseen")
    before = figures(baseline, others, test_birds, truth, settings)
    after = figures(new_model.resolve(), others, test_birds, truth, settings)
    fell = 1 - after["false_alerts"] / before["false_alerts"]
    drop = before["mean_recall"] - after["mean_recall"]
    report = Path(summary["evaluation"]["report"])
    sys.stdout.write(
        f"\nowner replies: {len(replied)}; loop {loop_seconds:.1f} s: {summary}\n"
        f"false alerts on {before['squirrels']} unseen squirrels: {before['false_alerts']} "
        f"{before['false_by_label']} -> {after['false_alerts']} {after['false_by_label']} "
        f"(-{fell:.0%})\nmean species recall {before['mean_recall']:.3f} -> "
        f"{after['mean_recall']:.3f} ({-drop * 100:+.1f} points)\n"
        f"per species {before['recall']} -> {after['recall']}\n")
    for md in report.glob("*.md") if report.is_dir() else []:
        sys.stdout.write(md.read_text())
    assert fell >= 0.60
    assert drop <= 0.02
