"""The classifier stage on real onnxruntime sessions: the demo model, and broken bundles."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from feederd.assets import demo_clip_path, demo_model_path
from feederd.bundle import InputSpec
from feederd.classifier import (
    Classifier,
    crop_square,
    noise_image,
    square_crop,
    validate_bundle,
)
from feederd.errors import ModelError
from feederd.sync.build import write_metadata
from feederd.types import Box

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "models" / "demo.onnx"
SPEC = InputSpec((16, 16), "NCHW", "RGB", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 1 / 255)


@pytest.fixture(scope="module")
def demo() -> Classifier:
    return Classifier(DEMO, threads=1)


@pytest.fixture(scope="module")
def scene() -> ModuleType:
    """tools/make_demo_assets.py, the renderer the demo model was trained on."""
    spec = importlib.util.spec_from_file_location("make_demo_assets",
                                                  REPO / "tools" / "make_demo_assets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def tiny_model(path: Path, spec: InputSpec = SPEC, labels: tuple[str, ...] = ("a", "b"),
               *, classes: int | None = None, batch: int | str = "N", nan: bool = False,
               softmax: bool = True, embedding_rank: int = 2, probs_name: str = "probs",
               input_type: int = TensorProto.FLOAT, **meta: Any) -> Path:
    """A real ONNX bundle: AveragePool -> Flatten (embedding) -> Gemm -> Softmax (probs)."""
    classes = len(labels) if classes is None else classes
    height, width = spec.size
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(size=(3, classes)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(classes, np.float32), "b")
    nodes = [
        helper.make_node("Cast", ["image"], ["image_f"], to=TensorProto.FLOAT),
        helper.make_node("GlobalAveragePool", ["image_f"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
    ]
    if nan:
        nodes.append(helper.make_node("Constant", [], ["nan"], value=numpy_helper.from_array(
            np.array([np.nan], np.float32))))
        nodes.append(helper.make_node("Add", ["logits", "nan"], ["logits_nan"]))
    last = "logits_nan" if nan else "logits"
    nodes.append(helper.make_node("Softmax", [last], [probs_name], axis=1) if softmax
                 else helper.make_node("Identity", [last], [probs_name]))
    embedding_source = "flat" if embedding_rank == 2 else "pooled"
    nodes.append(helper.make_node("Identity", [embedding_source], ["embedding"]))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", input_type, [batch, 3, height, width])],
        [helper.make_tensor_value_info(probs_name, TensorProto.FLOAT, [batch, classes]),
         helper.make_tensor_value_info("embedding", TensorProto.FLOAT,
                                       [batch, 3] + [1] * (embedding_rank - 2))],
        [weights, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    write_metadata(model, {"labels": list(labels), "input": spec.as_dict(), "version": "t1",
                           **meta})
    onnx.save(model, str(path))
    return path


def with_metadata(path: Path, **meta: Any) -> Path:
    """A copy of the demo model with some metadata replaced."""
    model = onnx.load(str(DEMO))
    current = {p.key.removeprefix("feederd."): p.value for p in model.metadata_props}
    merged: dict[str, object] = {k: json.loads(v) for k, v in current.items()}
    merged.update(meta)
    write_metadata(model, merged)
    onnx.save(model, str(path))
    return path


class TestDemoModel:
    @pytest.mark.parametrize("species", ["cardinal", "blue_jay", "goldfinch"])
    def test_a_rendered_bird_on_the_tray_is_named(self, demo: Classifier, scene: ModuleType,
                                                  species: str) -> None:
        frame, box = scene.render_scene(species, np.random.default_rng(7), x=230)
        prediction, _ = demo.classify(frame, box)
        assert prediction.label == species
        assert prediction.confidence > 0.8

    @pytest.mark.parametrize("species", ["cardinal", "blue_jay", "goldfinch"])
    def test_a_flying_bird_in_the_sky_is_named(self, demo: Classifier, scene: ModuleType,
                                               species: str) -> None:
        frame, box = scene.render_scene(species, np.random.default_rng(8), x=380, y=130,
                                        facing=-1, pose="wings_up")
        assert demo.classify(frame, box)[0].label == species

    def test_an_empty_patch_of_the_feeder_is_other(self, demo: Classifier,
                                                   scene: ModuleType) -> None:
        frame, _ = scene.render_scene(None, np.random.default_rng(9))
        prediction, _ = demo.classify(frame, Box(200, 220, 60, 40))
        assert prediction.label == "other"
        assert demo.bundle.is_negative(prediction.label)

    def test_the_unseen_squirrel_is_called_a_bird_with_little_confidence(
            self, demo: Classifier, scene: ModuleType) -> None:
        frame, box = scene.render_scene("squirrel", np.random.default_rng(10), x=260,
                                        pose="sit")
        prediction, _ = demo.classify(frame, box)
        assert not demo.bundle.is_negative(prediction.label)
        assert prediction.confidence < 0.85  # the cartoon birds get 0.9 and more

    def test_the_prediction_carries_top_k_probs_and_embedding(self, demo: Classifier,
                                                               scene: ModuleType) -> None:
        frame, box = scene.render_scene("cardinal", np.random.default_rng(11))
        prediction, _ = demo.classify(frame, box, top_k=2)
        assert len(prediction.labels) == len(prediction.scores) == 2
        assert prediction.scores[0] >= prediction.scores[1]
        assert prediction.probs.shape == (4,)
        assert prediction.embedding is not None and prediction.embedding.shape == (192,)

    def test_top_k_larger_than_the_labels_returns_every_label(self, demo: Classifier) -> None:
        image = np.full((50, 50, 3), 90, np.uint8)
        prediction, _ = demo.classify(image, top_k=10)
        assert sorted(prediction.labels) == sorted(demo.bundle.labels)

    def test_a_batch_gives_the_same_answers_as_one_at_a_time(self, demo: Classifier,
                                                              scene: ModuleType) -> None:
        rng = np.random.default_rng(12)
        scenes = [scene.render_scene(kind, rng) for kind in ("cardinal", "blue_jay", "goldfinch")]
        crops = [demo.crop(frame, box, 1.6) for frame, box in scenes]
        probs, embedding = demo.classify_batch(crops, batch_size=2)
        singles = np.stack([demo.classify(crop)[0].probs for crop in crops])
        np.testing.assert_allclose(probs, singles, atol=1e-5)
        assert embedding is not None and embedding.shape == (3, 192)

    def test_validate_bundle_returns_the_metadata(self) -> None:
        assert validate_bundle(DEMO).version == "demo-1"

    def test_the_bundled_demo_files_are_found(self) -> None:
        assert demo_model_path().resolve() == DEMO.resolve()
        assert demo_clip_path().stat().st_size > 100_000

    def test_each_visit_of_the_demo_clip_gets_its_label(self, demo: Classifier,
                                                        scene: ModuleType) -> None:
        votes: dict[str, Counter[str]] = {}
        capture = cv2.VideoCapture(str(demo_clip_path()))
        background = scene.make_background()
        for index in range(0, round(scene.CLIP_SECONDS * scene.FPS)):
            ok, frame = capture.read()
            assert ok
            for visit in scene.VISITS:
                where = scene.pose_at(visit, index / scene.FPS, index)
                if where is None or index % 4:
                    continue
                x, y, facing, pose = where
                box = scene.draw_animal(background.copy(), visit.kind, x, y, 1.0, facing, pose)
                if box.w > 0:
                    label = demo.classify(frame, box)[0].label
                    votes.setdefault(visit.kind, Counter())[label] += 1
        capture.release()
        winners = {kind: counts.most_common(1)[0][0] for kind, counts in votes.items()}
        assert winners == {"cardinal": "cardinal", "blue_jay": "blue_jay",
                           "goldfinch": "goldfinch", "squirrel": "cardinal"}


class TestCrop:
    frame = np.arange(120 * 200 * 3, dtype=np.uint32).astype(np.uint8).reshape(120, 200, 3)

    def crop(self, box: Box | None, expand: float = 1.5) -> np.ndarray:
        return square_crop(self.frame, box, expand)

    def test_a_box_inside_the_frame_gives_an_expanded_square_around_it(self) -> None:
        crop = self.crop(Box(80, 40, 20, 10), expand=2.0)
        assert crop.shape == (40, 40, 3)
        np.testing.assert_array_equal(crop, self.frame[25:65, 70:110])

    def test_a_box_at_the_edge_is_moved_inside_the_frame(self) -> None:
        crop = self.crop(Box(0, 0, 20, 20), expand=2.0)
        np.testing.assert_array_equal(crop, self.frame[0:40, 0:40])

    def test_a_square_taller_than_the_frame_is_padded(self) -> None:
        crop = self.crop(Box(50, 10, 100, 100), expand=1.6)
        assert crop.shape == (160, 160, 3)
        np.testing.assert_array_equal(crop[20:140], self.frame[:, 20:180])

    def test_no_box_classifies_the_whole_frame(self) -> None:
        assert self.crop(None) is self.frame

    def test_the_crop_is_a_copy(self) -> None:
        crop = self.crop(Box(80, 40, 20, 20))
        crop[:] = 0
        assert self.frame.any()

    def test_a_small_box_grows_to_the_minimum_side_around_its_centre(self) -> None:
        """A distant bird keeps context rather than being upscaled into mush."""
        crop = square_crop(self.frame, Box(90, 50, 10, 10), 1.6, min_side=60)
        assert crop.shape == (60, 60, 3)
        np.testing.assert_array_equal(crop, self.frame[25:85, 65:125])
        assert crop_square(Box(90, 50, 10, 10), 1.6, 200, 120, 60) == Box(65, 25, 60, 60)


class TestPrepare:
    def test_caffe_style_subtracts_bgr_means_from_0_255_pixels(self, tmp_path: Path) -> None:
        spec = InputSpec((8, 8), "NCHW", "BGR", (104.0, 117.0, 123.0), (1.0, 1.0, 1.0), 1.0)
        classifier = Classifier(tiny_model(tmp_path / "caffe.onnx", spec))
        image = np.empty((8, 8, 3), np.uint8)
        image[:] = (110, 117, 120)  # B, G, R
        batch = classifier.prepare(image)
        np.testing.assert_allclose(batch[0, :, 0, 0], [6.0, 0.0, -3.0])

    def test_rgb_mean_std_reorders_and_scales(self, tmp_path: Path) -> None:
        classifier = Classifier(tiny_model(tmp_path / "rgb.onnx"))
        image = np.empty((32, 32, 3), np.uint8)
        image[:] = (0, 255, 51)  # B, G, R
        batch = classifier.prepare(image)
        expected = (np.array([0.2, 1.0, 0.0]) - 0.5) / 0.25
        np.testing.assert_allclose(batch[0, :, 5, 5], expected, atol=1e-5)
        assert batch.shape == (1, 3, 16, 16) and batch.dtype == np.float32

    def test_nhwc_layout_puts_channels_last(self, tmp_path: Path) -> None:
        spec = InputSpec((8, 8), "NHWC", "RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0)
        path = tmp_path / "nhwc.onnx"
        model = tiny_model(path, InputSpec((8, 8)))
        loaded = onnx.load(str(model))
        transpose = helper.make_node("Transpose", ["image_nhwc"], ["image"], perm=[0, 3, 1, 2])
        loaded.graph.node.insert(0, transpose)
        loaded.graph.input[0].name = "image_nhwc"
        dims = loaded.graph.input[0].type.tensor_type.shape.dim
        dims[1].dim_value, dims[3].dim_value = 8, 3
        write_metadata(loaded, {"labels": ["a", "b"], "input": spec.as_dict(), "version": "t"})
        onnx.save(loaded, str(path))
        image = np.empty((8, 8, 3), np.uint8)
        image[:] = (1, 2, 3)
        np.testing.assert_allclose(Classifier(path).prepare(image)[0, 0, 0], [3, 2, 1])

    def test_a_uint8_input_gets_the_resized_pixels_themselves_in_model_order(
            self, tmp_path: Path) -> None:
        spec = InputSpec((8, 8), "NCHW", "RGB", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0)
        classifier = Classifier(tiny_model(tmp_path / "u8.onnx", spec,
                                           input_type=TensorProto.UINT8))
        image = np.empty((16, 16, 3), np.uint8)
        image[:] = (1, 2, 250)  # B, G, R
        batch = classifier.prepare(image)
        assert batch.dtype == np.uint8 and batch.shape == (1, 3, 8, 8)
        np.testing.assert_array_equal(batch[0, :, 3, 3], [250, 2, 1])
        probs, _ = classifier.run(batch)
        assert classifier.prepare(image) is batch and abs(float(probs.sum()) - 1) < 1e-5

    def test_the_buffer_is_reused(self, demo: Classifier) -> None:
        first = demo.prepare(np.zeros((10, 10, 3), np.uint8))
        assert demo.prepare(np.ones((10, 10, 3), np.uint8)) is first

    def test_a_model_with_a_fixed_batch_of_one_is_fed_one_image_at_a_time(
            self, tmp_path: Path) -> None:
        classifier = Classifier(tiny_model(tmp_path / "fixed.onnx", batch=1))
        probs, embedding = classifier.classify_batch([np.zeros((9, 9, 3), np.uint8)] * 3)
        assert probs.shape == (3, 2)
        assert embedding is not None and embedding.shape == (3, 3)


class TestRefusedBundles:
    def test_a_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ModelError, match="no such model file"):
            Classifier(tmp_path / "absent.onnx")

    def test_a_truncated_file(self, tmp_path: Path) -> None:
        path = tmp_path / "cut.onnx"
        path.write_bytes(DEMO.read_bytes()[:2000])
        with pytest.raises(ModelError, match="truncated or corrupt"):
            Classifier(path)

    def test_random_bytes(self, tmp_path: Path) -> None:
        path = tmp_path / "noise.onnx"
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
        with pytest.raises(ModelError, match=str(path)):
            Classifier(path)

    def test_labels_that_do_not_match_the_probs_width(self, tmp_path: Path) -> None:
        path = with_metadata(tmp_path / "labels.onnx", labels=["a", "b", "c"],
                             negative_labels=[])
        with pytest.raises(ModelError, match=r"'probs' has shape.*3 classes"):
            Classifier(path)

    def test_labels_that_do_not_match_a_dynamic_probs_width(self, tmp_path: Path) -> None:
        path = tiny_model(tmp_path / "dyn.onnx", labels=("a", "b", "c"), classes=2)
        with pytest.raises(ModelError, match="3 classes"):
            Classifier(path)

    def test_an_input_size_that_disagrees_with_the_graph(self, tmp_path: Path) -> None:
        spec = InputSpec((32, 32), "NCHW", "RGB", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        path = with_metadata(tmp_path / "size.onnx", input=spec.as_dict())
        with pytest.raises(ModelError, match=r"feederd.input says NCHW size \[32, 32\]"):
            Classifier(path)

    def test_a_model_that_outputs_nan(self, tmp_path: Path) -> None:
        with pytest.raises(ModelError, match="NaN"):
            Classifier(tiny_model(tmp_path / "nan.onnx", nan=True))

    def test_outputs_that_are_not_probabilities(self, tmp_path: Path) -> None:
        with pytest.raises(ModelError, match="not a probability vector"):
            Classifier(tiny_model(tmp_path / "logits.onnx", softmax=False))

    def test_a_model_without_a_probs_output(self, tmp_path: Path) -> None:
        with pytest.raises(ModelError, match="no 'probs' output"):
            Classifier(tiny_model(tmp_path / "named.onnx", probs_name="scores"))

    def test_an_embedding_that_is_not_two_dimensional(self, tmp_path: Path) -> None:
        with pytest.raises(ModelError, match="'embedding' has shape"):
            Classifier(tiny_model(tmp_path / "emb4d.onnx", embedding_rank=4))

    def test_an_input_neither_float_nor_uint8(self, tmp_path: Path) -> None:
        with pytest.raises(ModelError, match="expected tensor\\(float\\) or tensor\\(uint8\\)"):
            Classifier(tiny_model(tmp_path / "i32.onnx", input_type=TensorProto.INT32))

    def test_a_uint8_input_whose_metadata_asks_for_a_normalisation(self, tmp_path: Path
                                                                   ) -> None:
        with pytest.raises(ModelError, match=r"uint8 pixels as they are.*feederd\.input"):
            Classifier(tiny_model(tmp_path / "u8.onnx", input_type=TensorProto.UINT8))

    def test_metadata_errors_name_the_key(self, tmp_path: Path) -> None:
        path = with_metadata(tmp_path / "nolabels.onnx", labels=[])
        with pytest.raises(ModelError, match=f"{path}.*feederd.labels"):
            Classifier(path)


class TestMappedLoad:
    """Large bundles load memory-mapped: their weights point back into the file."""

    def test_a_mapped_bundle_answers_as_the_ordinary_load_does(
            self, monkeypatch: pytest.MonkeyPatch, demo: Classifier,
            scene: ModuleType) -> None:
        from feederd import onnx_session as module

        monkeypatch.setattr(module, "EXTERNAL_MIN_BYTES", 1024)
        assert module._open_mapped(DEMO, 1) is not None  # the demo's weights are mapped
        monkeypatch.setattr(module, "MAPPED_MIN_BYTES", 0)
        mapped = Classifier(DEMO, threads=1)
        frame, box = scene.render_scene("cardinal", np.random.default_rng(7), x=230)
        expected, _ = demo.classify(frame, box)
        got, _ = mapped.classify(frame, box)
        assert got.labels == expected.labels and got.label == "cardinal"
        assert np.allclose(got.probs, expected.probs, atol=1e-5)
        assert mapped.bundle.sha256 == demo.bundle.sha256

    def test_a_corrupt_large_bundle_is_still_refused_with_its_name(
            self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from feederd import onnx_session as module

        monkeypatch.setattr(module, "MAPPED_MIN_BYTES", 0)
        broken = tmp_path / "broken.onnx"
        data = DEMO.read_bytes()
        broken.write_bytes(data[:len(data) // 2])
        with pytest.raises(ModelError, match=r"broken\.onnx"):
            Classifier(broken, threads=1)


IDLE_CPU = """
import resource, time
from feederd.assets import default_model_path
from feederd.classifier import Classifier, noise_image
classifier = Classifier(default_model_path(), threads=2)
crop = classifier.prepare(noise_image(240, 320))
for _ in range(3):
    classifier.run(crop)
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
before = cpu()
time.sleep(0.5)
print(cpu() - before)
"""


class TestWorkerThreads:
    def test_between_runs_a_two_thread_session_burns_no_cpu(self) -> None:
        """Its workers spin 50 us at most, then sleep: onnxruntime's default spin burns
        about 35 ms of CPU after each run here, taken from capture and motion on a Pi."""
        result = subprocess.run([sys.executable, "-c", IDLE_CPU], capture_output=True,
                                text=True, timeout=120, check=True)
        assert float(result.stdout) < 0.02


class TestTestImages:
    def test_the_noise_test_image_spans_every_grey_level_the_same_way_each_time(self) -> None:
        image = noise_image(64, 48)
        assert image.shape == (64, 48, 3) and image.dtype == np.uint8
        assert np.unique(image).size == 256 and image.std() > 60
        assert np.array_equal(image, noise_image(64, 48))

    def test_loading_a_bundle_imports_no_numpy_random(self) -> None:
        code = ("import sys; from feederd.classifier import Classifier; "
                "from feederd.assets import demo_model_path; Classifier(demo_model_path()); "
                "print('numpy.random' in sys.modules)")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=60, check=True)
        assert result.stdout.strip() == "False"
