"""feeder-sync init --from-bundle and its train: a reject gate on a shipped bundle, learned
from the owner's rejections alone (real CLI, real spool, real ONNX bundles)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from feederd.bundle import InputSpec, read_bundle
from feederd.classifier import Classifier
from feederd.sync.build import imagenet_bundle
from feederd.sync.reject import (
    MAX_PROTOTYPES,
    VIEWS,
    field_probability,
    gated_probs,
    threshold,
)
from sync.helpers import (
    BACKBONE_TENSOR,
    add_samples,
    jpeg,
    photo,
    run_json,
    run_sync,
    spool_dir,
    sync_config,
)

SPEC = InputSpec((32, 32), "NCHW", "RGB", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                 1 / 255)
LABELS = ["robin", "jay", "finch", "wren", "tit", "dove", "crow", "owl", "hawk", "background"]


@pytest.fixture()
def shipped(tmp_path: Path, backbone: Path) -> Path:
    """A bundle with its own 10-class classifier (the role AIY Birds V1 plays)."""
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    return imagenet_bundle(backbone, labels, BACKBONE_TENSOR, SPEC, tmp_path / "shipped.onnx",
                           ["background"], version="shipped-1")


def start(tmp_path: Path, shipped: Path) -> Path:
    config = sync_config(tmp_path)
    run_sync(config, "init", "--device", "feeder", "--from-bundle", str(shipped))
    return config


class TestInitFromBundle:
    def test_the_shipped_bundle_is_the_baseline_and_no_photo_folder_is_needed(
            self, tmp_path: Path, shipped: Path) -> None:
        start(tmp_path, shipped)
        state = json.loads((tmp_path / "workspace/feeder/state.json").read_text())
        assert state["baseline"] == "shipped-1" and state["init"]["data"] is None
        copied = tmp_path / "workspace/feeder/models/shipped-1.onnx"
        assert copied.read_bytes() == shipped.read_bytes()

    def test_init_without_a_bundle_or_a_backbone_names_what_is_missing(
            self, tmp_path: Path) -> None:
        proc = run_sync(sync_config(tmp_path), "init", "--device", "feeder", check=False)
        assert proc.returncode == 2 and "--backbone" in proc.stderr
        assert "--from-bundle" in proc.stderr


class TestRejectGate:
    def test_rejections_become_a_field_class_in_one_onnx_file_and_the_gate_passes(
            self, tmp_path: Path, shipped: Path) -> None:
        config = start(tmp_path, shipped)
        add_samples(spool_dir(tmp_path), [(jpeg(photo("squirrel", 500 + n)), "background",
                                           "user", ["rejected"]) for n in range(12)])
        run_sync(config, "pull")
        trained = run_json(config, "train")
        bundle = read_bundle(Path(trained["file"]))
        assert bundle.labels == (*LABELS, "background_field")
        assert bundle.negative_labels == {"background", "background_field"}
        assert bundle.parent_version == "shipped-1"
        report = run_json(config, "evaluate")
        assert report["candidate"]["field"]["samples"] == 12
        assert report["candidate"]["false_alerts"] <= report["reference"]["false_alerts"]

        gated, base = Classifier(Path(trained["file"])), Classifier(shipped)
        squirrels = [photo("squirrel", 900 + n) for n in range(10)]
        p_gated, x = gated.classify_batch(squirrels)
        p_base, _ = base.classify_batch(squirrels)
        birds, _ = gated.classify_batch([photo(k, 950 + n) for k in ("robin", "jay")
                                         for n in range(10)])
        assert x is not None
        print(f"\nP(field): unseen squirrels {p_gated[:, -1].mean():.3f}, "
              f"birds {birds[:, -1].mean():.3f}")
        assert p_gated[:, -1].mean() > 2 * birds[:, -1].mean()
        # the graph computes exactly what the gate's numpy twin says
        pulled = [cv2.imdecode(np.frombuffer(jpeg(photo("squirrel", 500 + n)), np.uint8),
                               cv2.IMREAD_COLOR) for n in range(12)]
        views = [*pulled, *(view(i) for view in VIEWS.values() for i in pulled)]
        prototypes = gated.classify_batch(views)[1]
        assert prototypes is not None
        gate = bundle.metrics["reject_gate"]
        assert gate["prototypes"] == len(views) == 12 * (1 + len(VIEWS))
        twin = gated_probs(p_base, x, prototypes, float(gate["tau"]), float(gate["alpha"]))
        assert np.abs(twin - p_gated).max() < 2e-3

    def test_far_from_every_rejection_nothing_changes(self) -> None:
        rng = np.random.default_rng(0)
        negatives = rng.normal(0, 1, (20, 8)) + 5 * np.eye(8)[0]
        birds = rng.normal(0, 1, (20, 8)) - 5 * np.eye(8)[0]
        tau = threshold(negatives, birds[:0])
        assert field_probability(birds, negatives, tau).max() < 1e-3
        assert field_probability(negatives[:5] + 0.1, negatives[5:], tau).mean() > 0.5

    def test_the_device_holds_at_most_max_prototypes_the_rejected_frames_first(self) -> None:
        from feederd.sync.frombundle import _capped

        frames, views = np.ones((100, 4)), np.zeros((100 * len(VIEWS), 4))
        protos, groups = _capped(np.vstack([frames, views]), np.arange(len(frames) + len(views)))
        assert len(protos) == len(groups) == MAX_PROTOTYPES
        assert protos[:100].min() == 1.0 and list(groups[:3]) == [0, 1, 2]

    def test_a_confirmed_positive_keeps_the_threshold_above_it(self) -> None:
        rng = np.random.default_rng(1)
        negatives = rng.normal(0, 1, (10, 8)) + 3 * np.eye(8)[0]
        confirmed = negatives[:1] + rng.normal(0, 0.3, (1, 8))
        tau = threshold(negatives[1:], confirmed)
        assert field_probability(confirmed, negatives[1:], tau)[0] < 0.5


@pytest.mark.shared_data
@pytest.mark.timeout(600)
class TestShippedBirdModel:
    """The shipped AIY Birds V1 bundle, real squirrel photos as the device frames them: a dozen
    rejected squirrels teach the gate to stop most alerts on squirrels it never saw, and the
    CUB birds it knows keep their top-1 answers."""

    def test_a_dozen_rejected_squirrels_stop_most_alerts_on_other_squirrels_not_on_birds(
            self, tmp_path: Path, shared_data: Path) -> None:
        from feederd.assets import default_model_path
        from feederd.sync.config import ViewConfig
        from feederd.sync.domain import DeviceView

        shipped = default_model_path()
        base = Classifier(shipped)
        view = DeviceView(ViewConfig())
        squirrels = sorted((shared_data / "images" / "squirrel").rglob("*.jpg"))
        seen = [view.render(cv2.imread(str(p))) for p in squirrels[::2]]
        unseen = [view.render(cv2.imread(str(p))) for p in squirrels[1::2][:120]]
        known = set(base.bundle.labels)
        cub = [p for p in sorted((shared_data / "images" / "bird").glob("*/*"))
               if p.parent.name in known][::2]
        birds = [cv2.imread(str(p)) for p in cub]

        def alerts(classifier: Classifier, frames: list[np.ndarray]) -> np.ndarray:
            probs, _ = classifier.classify_batch(frames)
            top = probs.argmax(axis=1)
            return np.array([not classifier.bundle.is_negative(classifier.bundle.labels[k])
                             and probs[n, k] >= 0.5 for n, k in enumerate(top)])

        rejected = [f for f, alerted in zip(seen, alerts(base, seen), strict=True) if alerted]
        assert len(rejected) >= 8, "the base model alerts on too few squirrels to test"
        config = start(tmp_path, shipped)
        for n, frame in enumerate(rejected[:12]):
            add_samples(spool_dir(tmp_path), [(jpeg(frame), "background", "user",
                                               ["rejected"])],
                        visit=f"20250101T000000.000Z-{n:04d}")
        run_sync(config, "pull")
        trained = run_json(config, "train")
        gated = Classifier(Path(trained["file"]))

        before, after = alerts(base, unseen).sum(), alerts(gated, unseen).sum()
        truth = [base.bundle.labels.index(p.parent.name) for p in cub]
        top1 = [float(np.mean(c.classify_batch(birds)[0].argmax(axis=1) == truth))
                for c in (base, gated)]
        print(f"\nalerts on {len(unseen)} unseen squirrels {before} -> {after}; CUB top-1 "
              f"on {len(cub)} photos {top1[0]:.3f} -> {top1[1]:.3f}; {trained['metrics']}")
        assert after <= before // 2, (before, after)
        assert top1[1] >= top1[0] - 0.01, top1
