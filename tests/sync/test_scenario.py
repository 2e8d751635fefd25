"""The seeds' scenario on real photographs: the gate sees what the device sees (issue 16).

The owner's photo folder is half of the shared bird photos; the device meets squirrels (half of
the shared ones) and the owner rejects the first 25 that raise an alert. The squirrels reach
the spool as the device stores them: the crop of the camera frame around the motion box,
JPEG'd (rendered by :mod:`feederd.sync.domain`, the device's own crop functions).

1. The old recipe (``[training.view] domain = "photo"``: base photos as they are) loses species
   recall on device frames, and a gate testing on raw photos passes it; the gate testing on
   device frames refuses the same candidate and names the species.
2. The new recipe (the default) on the same samples: fewer false alerts on the other squirrels
   (as device frames), and the gate passes it with no species more than 2 points down.

SqueezeNet's features cannot tell a black squirrel from a crow: with every shared squirrel the
owner's feeder saw rejected, ~2% of the others still alert (a linear head; 1.5% with an RBF
SVM). With the shipped AIY Birds V1 bundle as the backbone of the same head, 10 replies leave
none alerting (the last test).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from feederd.classifier import Classifier
from feederd.sync.config import ViewConfig
from feederd.sync.dataset import scan_folder, split
from feederd.sync.domain import DeviceView
from sync.helpers import add_samples, run_json, run_sync, spool_dir, sync_config, write_toml

REJECTED = 25
PHOTO_RECIPE = '[training.view]\ndomain = "photo"\n'


def label_of(fine: str) -> str:
    if fine in ("blue_jay", "crow"):
        return fine
    for kind in ("hummingbird", "swallow", "woodpecker"):
        if kind in fine:
            return kind
    return "other"


def link_birds(shared: Path, out: Path) -> Path:
    """``out/<label>/<fine>__<file>`` symlinks to the shared photos (never copies)."""
    for folder in sorted((shared / "images" / "bird").iterdir()):
        target = out / label_of(folder.name)
        target.mkdir(parents=True, exist_ok=True)
        for photo in sorted(folder.iterdir()):
            (target / f"{folder.name}__{photo.name}").symlink_to(photo)
    return out


def link_files(files: list[Path], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for n, photo in enumerate(files):
        (out / f"{n:04d}{photo.suffix}").symlink_to(photo)
    return out


def owner_photos(shared: Path, out: Path) -> Path:
    """Half of every label's shared photos: the owner's labelled folder."""
    everything = link_birds(shared, out.parent / "all-birds")
    mine, _ = split(scan_folder(everything), 0.5, 0)
    for item in mine:
        target = out / item.label / item.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(item.path.resolve())
    return out


def device_frames(photos: list[Path], out: Path) -> list[Path]:
    """The JPEGs the device would store for these photos, with the default settings."""
    view = DeviceView(ViewConfig())
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for n, path in enumerate(photos):
        frame = view.render(cv2.imread(str(path), cv2.IMREAD_COLOR))
        target = out / f"{n:04d}.jpg"
        target.write_bytes(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1])
        frames.append(target)
    return frames


def alerting(model: Path, frames: list[Path], limit: int) -> list[Path]:
    """The first ``limit`` frames the model alerts on (as the device: species, >= 0.5)."""
    classifier = Classifier(model)
    probs, _ = classifier.classify_batch([cv2.imread(str(p)) for p in frames])
    labels = classifier.bundle.labels
    found = [p for p, row in zip(frames, probs, strict=True)
             if not classifier.bundle.is_negative(labels[int(np.argmax(row))])
             and float(row.max()) >= 0.5]
    return found[:limit]


SQUEEZENET = ("models/squeezenet1.1/squeezenet1.1-fp32.onnx", "fire9/concat_1", "caffe")
AIY = Path(__file__).resolve().parents[2] / "models" / "aiy_birds_v1.onnx"


def baseline(tmp: Path, config: Path, shared: Path, data: Path,
             backbone: tuple[str, str, str] = SQUEEZENET) -> Path:
    model, tensor, preprocess = backbone
    run_sync(config, "init", "--device", "feeder", "--backbone", str(shared / model),
             "--embedding-output", tensor, "--preprocess", preprocess,
             "--data", str(data), "--negative-labels", "other", timeout=900)
    state = json.loads((tmp / "workspace/feeder/state.json").read_text())
    return tmp / "workspace/feeder/models" / f"{state['baseline']}.onnx"


def drops(report: dict[str, object]) -> dict[str, float]:
    before, after = report["reference"], report["candidate"]  # type: ignore[index]
    return {name: round(after["recall"].get(name, 0.0) - value, 3)  # type: ignore[index]
            for name, value in before["recall"].items() if name != "other"}  # type: ignore[index]


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_gate_refuses_what_the_photo_recipe_loses_on_device_frames_and_passes_the_new(
        shared_data: Path, tmp_path: Path) -> None:
    data = owner_photos(shared_data, tmp_path / "owner")
    squirrels = sorted((shared_data / "images" / "squirrel").rglob("*.jpg"))
    seen = device_frames(squirrels[::2], tmp_path / "device-squirrels")
    unseen = link_files(squirrels[1::2], tmp_path / "unseen")  # evaluate renders them

    # 1. The old recipe: baseline and candidate on raw photos.
    config = sync_config(tmp_path, training=PHOTO_RECIPE)
    rejected = alerting(baseline(tmp_path, config, shared_data, data), seen, REJECTED)
    add_samples(spool_dir(tmp_path), [(p.read_bytes(), "other", "user", ["rejected"])
                                      for p in rejected], predicted="crow")
    run_sync(config, "pull")
    run_json(config, "train")
    on_photos = run_json(config, "evaluate")
    default = write_toml(tmp_path / "default.toml", config.read_text().replace(PHOTO_RECIPE, ""))
    on_frames = run_json(default, "evaluate")
    sys.stdout.write(f"\nold recipe, {len(rejected)} rejected squirrels\n"
                     f"  gate on raw photos: {on_photos['gate']} {drops(on_photos)}\n"
                     f"  gate on device frames: {on_frames['gate']} {drops(on_frames)}\n"
                     f"  {on_frames['reasons']}\n")
    assert len(rejected) == REJECTED
    assert on_photos["gate"] == "pass", on_photos["reasons"]
    assert on_frames["gate"] == "fail"
    assert any(" on held-out device frames fell" in r and "images;" in r
               for r in on_frames["reasons"]), on_frames["reasons"]

    # 2. The new recipe on the same samples: init again (base data only), train, evaluate.
    baseline(tmp_path, default, shared_data, data)
    trained = run_json(default, "train")
    report = run_json(default, "evaluate", "--negatives", str(unseen))
    before, after = report["reference"], report["candidate"]
    sys.stdout.write(f"new recipe: false alerts on {before['extra']['samples']} unseen "
                     f"squirrels {before['extra']['false_alerts']} -> "
                     f"{after['extra']['false_alerts']}; recall change {drops(report)}\n"
                     f"  gate {report['gate']}: {report['reasons']}\n")
    assert trained["mined_used"] == REJECTED
    assert after["extra"]["false_alerts"] < 0.5 * before["extra"]["false_alerts"]
    assert report["gate"] == "pass", report["reasons"]


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_with_the_aiy_bundle_as_backbone_ten_replies_leave_no_unseen_squirrel_alerting(
        shared_data: Path, tmp_path: Path) -> None:
    data = owner_photos(shared_data, tmp_path / "owner")
    squirrels = sorted((shared_data / "images" / "squirrel").rglob("*.jpg"))
    seen = device_frames(squirrels[::2], tmp_path / "device-squirrels")
    unseen = link_files(squirrels[1::2], tmp_path / "unseen")  # evaluate renders them
    config = sync_config(tmp_path)
    model = baseline(tmp_path, config, shared_data, data, (str(AIY), "embedding", "pixels"))
    rejected = alerting(model, seen, 10)
    add_samples(spool_dir(tmp_path), [(p.read_bytes(), "other", "user", ["rejected"])
                                      for p in rejected], predicted="crow")
    run_sync(config, "pull")
    run_json(config, "train")
    report = run_json(config, "evaluate", "--negatives", str(unseen))
    before, after = report["reference"]["extra"], report["candidate"]["extra"]
    sys.stdout.write(f"\nAIY backbone, {len(rejected)} rejected: false alerts on "
                     f"{before['samples']} unseen squirrels {before['false_alerts']} -> "
                     f"{after['false_alerts']}; recall change {drops(report)}\n"
                     f"  gate {report['gate']}: {report['reasons']}\n")
    assert len(rejected) == 10
    assert before["false_alerts"] >= 5  # the baseline does call squirrels birds
    assert after["false_alerts"] <= 0.01 * before["samples"]
    assert report["gate"] == "pass", report["reasons"]
    assert all(change >= -0.02 for change in drops(report).values()), drops(report)
