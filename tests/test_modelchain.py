"""Which model serves: a damaged or NaN-on-real-frames model never keeps the feeder down."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
from faultmodels import BEYOND_CARTOON, BEYOND_TEST_IMAGES, demo_version, nan_on_texture, truncated

from feederd.assets import default_model_path
from feederd.classifier import Classifier
from feederd.config import load_settings
from feederd.errors import ModelError
from feederd.modelchain import load_model
from feederd.modelstore import ModelStore


def settings_in(tmp_path: Path):  # type: ignore[no-untyped-def]
    return load_settings(None, state_dir=str(tmp_path / "state"))


def installed(tmp_path: Path, *versions: str) -> ModelStore:
    """A device store with ``versions`` installed in order (the last is current)."""
    store = ModelStore(tmp_path / "state" / "models")
    for version in versions:
        store.install(demo_version(tmp_path / f"{version}.onnx", version))
    return store


def test_a_model_finite_on_the_test_images_but_nan_on_real_frames_is_refused_at_install(
        tmp_path: Path) -> None:
    bundle = nan_on_texture(tmp_path / "nan.onnx", "nan-1", BEYOND_TEST_IMAGES)
    Classifier(bundle)  # the synthetic test images alone let it through
    store = installed(tmp_path, "good-1")
    with pytest.raises(ModelError, match=r"on frame \d+ of demo-clip.mp4 'probs' contains NaN"):
        store.install(bundle)
    assert store.current_target() == "good-1.onnx"


@pytest.mark.shared_data
def test_recent_spool_samples_are_real_frames_for_the_install_check_too(
        tmp_path: Path, shared_data: Path) -> None:
    bundle = nan_on_texture(tmp_path / "nan.onnx", "nan-1", BEYOND_CARTOON)
    store = installed(tmp_path, "good-1")
    capture = cv2.VideoCapture(str(sorted((shared_data / "video").glob("bird_*.mp4"))[0]))
    ok, frame = capture.read()
    capture.release()
    assert ok
    samples = [(cv2.imencode(".jpg", frame)[1].tobytes(), "other")]
    with pytest.raises(ModelError, match=r"on spool sample 1 'probs' contains NaN"):
        store.install(bundle, samples)
    assert store.current_target() == "good-1.onnx"


def test_a_damaged_current_model_falls_back_to_previous_and_says_why(tmp_path: Path) -> None:
    store = installed(tmp_path, "good-1", "good-2")
    truncated(store.dir / "good-2.onnx")
    choice = load_model(settings_in(tmp_path))
    assert (choice.source, choice.classifier.bundle.version) == ("previous", "good-1")
    assert "current model refused" in choice.fallback and "good-2.onnx" in choice.fallback
    assert choice.describe()["fallback"] == choice.fallback


def test_with_previous_damaged_too_the_bundled_model_serves(tmp_path: Path) -> None:
    store = installed(tmp_path, "good-1", "good-2")
    truncated(store.dir / "good-2.onnx")
    truncated(store.dir / "good-1.onnx")
    choice = load_model(settings_in(tmp_path))
    assert choice.source == "bundled"
    assert choice.classifier.path == default_model_path()
    assert choice.fallback.count("refused") == 2


def test_a_configured_model_is_never_replaced_by_a_fallback(tmp_path: Path) -> None:
    installed(tmp_path, "good-1")
    settings = load_settings(None, state_dir=str(tmp_path / "state"),
                             classifier={"model": str(truncated(tmp_path / "cut.onnx"))})
    with pytest.raises(ModelError, match=r"cut\.onnx"):
        load_model(settings)
