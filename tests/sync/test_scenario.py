"""The seeds' scenario on real photographs, through the real CLIs and a real spool.

A baseline from the shared SqueezeNet and half of the shared bird photos (blue_jay, crow,
hummingbird, swallow, woodpecker, other) raises "bird" alerts on many squirrels it never saw.
The owner rejects 25 of those alerts; the rejected frames are pulled, the head retrained and
the candidate evaluated on the squirrels nobody labelled: its false alerts must fall by at
least 60% while mean species recall falls by at most 2 points.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sync.helpers import add_samples, run_json, run_sync, spool_dir, sync_config

SPECIES = ("blue_jay", "crow", "hummingbird", "swallow", "woodpecker")
MINED = 25


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


def false_alerts(report: dict[str, object], which: str) -> int:
    return int(report[which]["false_alerts"])  # type: ignore[index]


@pytest.mark.shared_data
@pytest.mark.slow
def test_rejected_squirrels_cut_false_alerts_without_costing_recall(
        shared_data: Path, tmp_path: Path) -> None:
    config = sync_config(tmp_path)
    data = link_birds(shared_data, tmp_path / "birds")
    squirrels = sorted(p for p in (shared_data / "images" / "squirrel").rglob("*")
                       if p.is_file())
    run_sync(config, "init", "--device", "feeder", "--backbone",
             str(shared_data / "models/squeezenet1.1/squeezenet1.1-fp32.onnx"),
             "--embedding-output", "fire9/concat_1", "--preprocess", "caffe",
             "--data", str(data), "--negative-labels", "other", "--holdout", "0.5",
             timeout=900)

    # The baseline on every squirrel: which of them raise an alert?
    everything = link_files(squirrels, tmp_path / "all-squirrels")
    baseline = run_json(config, "evaluate", "--negatives", str(everything))["candidate"]
    state = json.loads((tmp_path / "workspace/feeder/state.json").read_text())
    version = state["baseline"]
    probs_alerting = _alerting(tmp_path, version, squirrels)
    rejected, unseen = probs_alerting[:MINED], [p for p in squirrels
                                                if p not in set(probs_alerting[:MINED])]

    # The owner rejects 25 alerts: the frames reach the spool labelled 'other'.
    add_samples(spool_dir(tmp_path), [(p.read_bytes(), "other", "user", ["rejected"])
                                      for p in rejected], predicted="hummingbird")
    run_sync(config, "pull")
    trained = run_json(config, "train")
    report = run_json(config, "evaluate", "--negatives",
                      str(link_files(unseen, tmp_path / "unseen-squirrels")))
    before, after = report["reference"], report["candidate"]
    fell = 1 - after["extra"]["false_alerts"] / before["extra"]["false_alerts"]
    drop = before["mean_species_recall"] - after["mean_species_recall"]
    print(f"\nbaseline {version}: {baseline['false_alerts']} of {len(squirrels)} squirrels "
          f"raise an alert ({baseline['false_alerts_by_label']})")
    print(f"candidate {trained['version']} trained with {MINED} rejected squirrels")
    print(f"unseen squirrels ({len(unseen)}): false alerts {before['extra']['false_alerts']}"
          f" -> {after['extra']['false_alerts']} (-{fell:.0%})")
    print(f"mean species recall {before['mean_species_recall']:.3f} -> "
          f"{after['mean_species_recall']:.3f} ({-drop * 100:+.1f} points); per species "
          f"{before['recall']} -> {after['recall']}")
    print(f"gate: {report['gate']}: {report['reasons']}")
    print((Path(report["report"]) / "report.md").read_text())
    assert fell >= 0.60
    assert drop <= 0.02
    assert os.path.exists(Path(report["report"]) / f"confusion-{trained['version']}.png")


def _alerting(tmp: Path, version: str, squirrels: list[Path]) -> list[Path]:
    """The squirrels on which the baseline raises an alert (as the device would)."""
    import cv2

    from feederd.classifier import Classifier

    model = Classifier(tmp / "workspace/feeder/models" / f"{version}.onnx")
    found = []
    for path in squirrels:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        prediction, _ = model.classify(image, None, 1.0)
        if not model.bundle.is_negative(prediction.label) and prediction.confidence >= 0.5:
            found.append(path)
    return found
