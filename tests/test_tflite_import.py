"""TFLite classifiers become bundles that answer as the TFLite original does under LiteRT.

The reference is the real LiteRT runtime (``ai-edge-litert``, a test dependency only) on the
shared photos; the converter under test is the device-side one (``feederd model import``).
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from feederd.assets import default_model_path
from feederd.classifier import Classifier, resize_for_model, validate_bundle
from feederd.errors import ModelError
from feederd.tflite_graph import Converter, load_model
from feederd.tflite_import import import_tflite

CLI = [sys.executable, "-m", "feederd.cli"]
AIY = Path("models") / "aiy_birds_v1" / "aiy_birds_v1.tflite"
INAT = Path("models") / "inat_bird_mobilenet_v2" / "mobilenet_v2_1.0_224_inat_bird_quant.tflite"
SAMPLE_EVERY = 40  # ~50 of the 1,955 shared photos: birds of every kind, squirrels, scenes


def sample_photos(shared: Path) -> list[Path]:
    with (shared / "images.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [shared / row["path"] for row in rows[::SAMPLE_EVERY]]


def litert_top1(tflite_path: Path, images_rgb: list[np.ndarray]) -> list[set[int]]:
    """LiteRT's top-1 per image, as the set of classes tied at its uint8 output's maximum."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_path), num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]["index"]
    out = interpreter.get_output_details()[0]["index"]
    tops = []
    for rgb in images_rgb:
        interpreter.set_tensor(inp, rgb[None])
        interpreter.invoke()
        scores = interpreter.get_tensor(out)[0]
        tops.append(set(np.flatnonzero(scores == scores.max()).tolist()))
    return tops


def agreement(bundle: Path, tflite_path: Path, photos: list[Path]) -> float:
    classifier = Classifier(bundle, threads=1)
    size = classifier.bundle.input
    images = [resize_for_model(cv2.imread(str(p)), size.width, size.height) for p in photos]
    reference = litert_top1(tflite_path, [np.ascontiguousarray(i[:, :, ::-1]) for i in images])
    ours = [int(np.argmax(classifier.run(classifier.prepare(i))[0][0])) for i in images]
    return float(np.mean([o in ref for o, ref in zip(ours, reference, strict=True)]))


@pytest.mark.shared_data
class TestAgreementWithLiteRT:
    @pytest.mark.timeout(120)
    def test_the_committed_aiy_bundle_gives_litert_s_top1_on_shared_photos(
            self, shared_data: Path) -> None:
        photos = sample_photos(shared_data)
        assert len(photos) >= 45
        assert agreement(default_model_path(), shared_data / AIY, photos) >= 0.98

    @pytest.mark.timeout(180)
    def test_model_import_turns_the_inat_model_into_a_valid_bundle_that_agrees(
            self, shared_data: Path, tmp_path: Path) -> None:
        out = tmp_path / "inat.onnx"
        proc = subprocess.run([*CLI, "model", "import", str(shared_data / INAT), "--out",
                               str(out), "--version", "inat-1", "--json"],
                              capture_output=True, text=True, timeout=150)
        assert proc.returncode == 0, proc.stderr
        bundle = validate_bundle(out)
        assert (bundle.version, len(bundle.labels)) == ("inat-1", 965)
        assert bundle.negative_labels == frozenset({"background"})
        # its labels come from the file inside the .tflite: same stable labels as AIY's
        assert bundle.display_name("blue_jay") == "Blue Jay"
        assert bundle.labels == Classifier(default_model_path(), 1).bundle.labels
        # the shipped bundle's form: uint8 NHWC pixels in, the model's own quantization inside
        assert (bundle.input.layout, bundle.input.mean) == ("NHWC", (0.0, 0.0, 0.0))
        assert Classifier(out, 1).session.get_inputs()[0].type == "tensor(uint8)"
        assert agreement(out, shared_data / INAT, sample_photos(shared_data)[::2]) >= 0.96


# Runs `feederd model import` in a Python that cannot import onnx, TensorFlow or LiteRT.
WITHOUT_HEAVY_PACKAGES = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("onnx", "tensorflow", "ai_edge_litert", "tflite_runtime"):
            raise ImportError("not on the device: " + name)
sys.meta_path.insert(0, Block())
from feederd.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.shared_data
@pytest.mark.timeout(120)
def test_model_import_needs_neither_onnx_nor_tensorflow(shared_data: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "aiy.onnx"
    proc = subprocess.run([sys.executable, "-c", WITHOUT_HEAVY_PACKAGES, "model", "import",
                           str(shared_data / AIY), "--out", str(out)],
                          capture_output=True, text=True, timeout=100)
    assert proc.returncode == 0, proc.stderr
    assert validate_bundle(out).version == "aiy_birds_v1"


@pytest.mark.shared_data
def test_weights_that_use_the_value_0_stay_uint8(shared_data: Path) -> None:
    """As int8 that would be -128, and two -128 x -128 products wrap the int16 sums of
    onnxruntime's ARM64 kernel for CPUs without dot product."""
    converter = Converter(load_model((shared_data / AIY).read_bytes(), "aiy"), "aiy")
    assert converter._signed(np.array([[1, 255]], np.uint8))
    assert not converter._signed(np.array([[0, 200]], np.uint8))
    assert not Converter(converter.model, "aiy", "qdq-u8")._signed(np.array([[1, 255]], np.uint8))


class TestRefusals:
    def test_a_file_that_is_not_tflite_is_refused_naming_it(self, tmp_path: Path) -> None:
        bogus = tmp_path / "model.tflite"
        bogus.write_bytes(b"\x00" * 64)
        with pytest.raises(ModelError, match=r"model\.tflite: not a TFLite model"):
            import_tflite(bogus, tmp_path / "out.onnx")
        assert not (tmp_path / "out.onnx").exists()

    def test_a_missing_file_exits_2_naming_it(self, tmp_path: Path) -> None:
        missing = tmp_path / "absent.tflite"
        proc = subprocess.run([*CLI, "model", "import", str(missing)], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 2 and str(missing) in proc.stderr, proc.stderr

    @pytest.mark.shared_data
    def test_labels_that_do_not_match_the_outputs_are_refused(self, shared_data: Path,
                                                              tmp_path: Path) -> None:
        labels = tmp_path / "labels.txt"
        labels.write_text("blue jay\ncardinal\n")
        with pytest.raises(ModelError, match="2 labels for a model with 965 outputs"):
            import_tflite(shared_data / AIY, tmp_path / "out.onnx", labels=labels)
