"""Bundle building by graph surgery, on a small real backbone and on the shared SqueezeNet."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from feederd.bundle import InputSpec
from feederd.classifier import Classifier
from feederd.errors import ModelError, SyncError
from feederd.sync.build import (
    EMBEDDING_ONLY_LABEL,
    SQUEEZENET_EMBEDDING,
    SQUEEZENET_INPUT,
    embedding_model,
    head_bundle,
    imagenet_bundle,
    read_labels,
    write_metadata,
)
from feederd.sync.dataset import input_spec_for

SPEC = InputSpec((32, 32), "NCHW", "RGB", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 1 / 255)
CLASSES = 5
FEATURES = 8


def backbone(path: Path, *, fp16: bool = False, fixed_reshape: bool = False) -> Path:
    """An ImageNet-style backbone in the old style of the model zoo (opset 7, IR 3).

    data [1,3,32,32] -> Conv -> Relu = ``features`` (8 x 32 x 32) -> GlobalAveragePool ->
    Flatten (or a Reshape to a fixed batch of 1) -> Gemm -> Softmax = ``out`` [1, 5].
    """
    rng = np.random.default_rng(1)
    dtype, elem = (np.float16, TensorProto.FLOAT16) if fp16 else (np.float32, TensorProto.FLOAT)
    weights = {
        "conv_w": rng.normal(0, 0.5, (FEATURES, 3, 3, 3)),
        "conv_b": rng.normal(0, 0.1, FEATURES),
        "fc_w": rng.normal(0, 1.0, (FEATURES, CLASSES)),
        "fc_b": rng.normal(0, 0.1, CLASSES),
        "shape": np.array([1, FEATURES]),
    }
    inits = [numpy_helper.from_array(v.astype(np.int64 if k == "shape" else dtype), k)
             for k, v in weights.items()]
    flatten = (helper.make_node("Reshape", ["pooled", "shape"], ["flat"]) if fixed_reshape
               else helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
    nodes = [
        helper.make_node("Conv", ["data", "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        flatten,
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["out"]),
    ]
    inputs = [helper.make_tensor_value_info("data", elem, [1, 3, 32, 32])]
    inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
    graph = helper.make_graph(nodes, "backbone", inputs,
                              [helper.make_tensor_value_info("out", elem, [1, CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 7)])
    model.ir_version = 3
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def labels_txt(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"{i},class{i}, synonym\n" for i in range(CLASSES)))
    return path


def images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(count)]


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class TestImagenetBundle:
    def test_probs_are_the_backbones_own_output(self, tmp_path: Path, labels_txt: Path) -> None:
        source = backbone(tmp_path / "bb.onnx")
        bundle = Classifier(imagenet_bundle(source, labels_txt, "features", SPEC,
                                            tmp_path / "b.onnx"))
        batch = bundle.prepare(images(1)[0]).copy()
        reference = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
        expected = reference.run(["out"], {"data": batch})[0]
        probs, embedding = bundle.run(batch)
        np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
        assert embedding is not None and embedding.shape == (1, FEATURES)

    def test_labels_and_metadata_come_from_the_arguments(self, tmp_path: Path,
                                                         labels_txt: Path) -> None:
        out = imagenet_bundle(backbone(tmp_path / "bb.onnx"), labels_txt, "features", SPEC,
                              tmp_path / "b.onnx", negative_labels=["class0"], version="v9")
        bundle = Classifier(out).bundle
        assert bundle.labels == tuple(f"class{i}" for i in range(CLASSES))
        assert bundle.negative_labels == frozenset({"class0"})
        assert bundle.version == "v9" and bundle.input == SPEC

    def test_the_batch_dimension_becomes_dynamic(self, tmp_path: Path,
                                                 labels_txt: Path) -> None:
        bundle = Classifier(imagenet_bundle(backbone(tmp_path / "bb.onnx"), labels_txt,
                                            "features", SPEC, tmp_path / "b.onnx"))
        assert bundle.fixed_batch is None
        probs, embedding = bundle.classify_batch(images(5), batch_size=4)
        assert probs.shape == (5, CLASSES)
        assert embedding is not None and embedding.shape == (5, FEATURES)

    def test_a_graph_with_a_fixed_batch_reshape_falls_back_to_batch_one(
            self, tmp_path: Path, labels_txt: Path) -> None:
        source = backbone(tmp_path / "bb.onnx", fixed_reshape=True)
        bundle = Classifier(imagenet_bundle(source, labels_txt, "features", SPEC,
                                            tmp_path / "b.onnx"))
        assert bundle.fixed_batch == 1
        assert bundle.classify_batch(images(3))[0].shape == (3, CLASSES)

    def test_an_fp16_backbone_gets_a_float32_interface(self, tmp_path: Path,
                                                       labels_txt: Path) -> None:
        full = Classifier(imagenet_bundle(backbone(tmp_path / "32.onnx"), labels_txt,
                                          "features", SPEC, tmp_path / "b32.onnx"))
        half = Classifier(imagenet_bundle(backbone(tmp_path / "16.onnx", fp16=True),
                                          labels_txt, "features", SPEC, tmp_path / "b16.onnx"))
        probs32, _ = full.classify_batch(images(4))
        probs16, embedding16 = half.classify_batch(images(4))
        np.testing.assert_allclose(probs16, probs32, atol=2e-2)
        assert embedding16 is not None and embedding16.dtype == np.float32

    def test_an_unknown_embedding_tensor_lists_candidates(self, tmp_path: Path,
                                                          labels_txt: Path) -> None:
        with pytest.raises(SyncError, match=r"no tensor named 'fire9'.*features"):
            imagenet_bundle(backbone(tmp_path / "bb.onnx"), labels_txt, "fire9", SPEC,
                            tmp_path / "b.onnx")

    def test_a_bundle_that_fails_validation_leaves_the_previous_file(
            self, tmp_path: Path, labels_txt: Path) -> None:
        out = tmp_path / "b.onnx"
        out.write_bytes(b"previous")
        short = tmp_path / "short.txt"
        short.write_text("a\nb\nc\n")
        with pytest.raises(ModelError, match="3"):
            imagenet_bundle(backbone(tmp_path / "bb.onnx"), short, "features", SPEC, out)
        assert out.read_bytes() == b"previous"
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    def test_a_negative_label_that_is_not_a_label_is_refused(self, tmp_path: Path,
                                                             labels_txt: Path) -> None:
        with pytest.raises(SyncError, match="squirrel"):
            imagenet_bundle(backbone(tmp_path / "bb.onnx"), labels_txt, "features", SPEC,
                            tmp_path / "b.onnx", negative_labels=["squirrel"])


class TestHeadBundle:
    def make(self, tmp_path: Path, weights: np.ndarray, bias: np.ndarray,
             scaler: tuple[np.ndarray, np.ndarray] | None = None) -> Classifier:
        out = head_bundle(backbone(tmp_path / "bb.onnx"), "features", SPEC, weights, bias,
                          ["a", "b", "other"], ["other"], tmp_path / "head.onnx", "v2",
                          parent_version="v1", trained_on={"a": 3, "b": 4, "other": 9},
                          metrics={"accuracy": np.float64(0.75)}, embedding_scaler=scaler)
        return Classifier(out)

    def test_probs_are_the_softmax_of_the_linear_head(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(2)
        weights, bias = rng.normal(size=(FEATURES, 3)), rng.normal(size=3)
        classifier = self.make(tmp_path, weights, bias)
        probs, embedding = classifier.classify_batch(images(3))
        assert embedding is not None and embedding.shape == (3, FEATURES)
        np.testing.assert_allclose(probs, softmax(embedding @ weights + bias), atol=1e-5)

    def test_the_scaler_is_folded_in_and_the_embedding_stays_raw(self, tmp_path: Path) -> None:
        rng = np.random.default_rng(3)
        weights, bias = rng.normal(size=(FEATURES, 3)), rng.normal(size=3)
        mean, std = rng.normal(size=FEATURES), rng.uniform(0.5, 2, FEATURES)
        classifier = self.make(tmp_path, weights, bias, (mean, std))
        probs, embedding = classifier.classify_batch(images(3))
        assert embedding is not None
        expected = softmax(((embedding - mean) / std) @ weights + bias)
        np.testing.assert_allclose(probs, expected, atol=1e-5)

    def test_metadata_records_lineage_and_training(self, tmp_path: Path) -> None:
        bundle = self.make(tmp_path, np.zeros((FEATURES, 3)), np.zeros(3)).bundle
        assert (bundle.version, bundle.parent_version) == ("v2", "v1")
        assert bundle.trained_on == {"a": 3, "b": 4, "other": 9}
        assert bundle.metrics == {"accuracy": 0.75}
        assert bundle.is_negative("other")

    def test_weights_of_the_wrong_width_are_refused(self, tmp_path: Path) -> None:
        with pytest.raises(SyncError, match="pools to 8 features"):
            self.make(tmp_path, np.zeros((FEATURES + 1, 3)), np.zeros(3))

    def test_weights_that_do_not_match_the_labels_are_refused(self, tmp_path: Path) -> None:
        with pytest.raises(SyncError, match="do not match 3 labels"):
            self.make(tmp_path, np.zeros((FEATURES, 2)), np.zeros(2))


class TestEmbeddingModel:
    def test_only_the_embedding_is_meaningful(self, tmp_path: Path) -> None:
        out = embedding_model(backbone(tmp_path / "bb.onnx"), "features", tmp_path / "e.onnx",
                              SPEC)
        classifier = Classifier(out)
        probs, embedding = classifier.classify_batch(images(2))
        np.testing.assert_allclose(probs, 1.0)
        assert embedding is not None and embedding.shape == (2, FEATURES)
        assert classifier.bundle.is_negative(EMBEDDING_ONLY_LABEL)


class TestABundleAsBackbone:
    """The shipped AIY bundle (uint8 pixels in, its own ``embedding`` and ``probs``) as the
    backbone of an owner's head."""

    def test_its_embedding_is_kept_as_it_is_and_the_new_head_reads_it(
            self, tmp_path: Path) -> None:
        aiy = Path(__file__).resolve().parents[2] / "models" / "aiy_birds_v1.onnx"
        spec = input_spec_for(aiy, "pixels")
        rng = np.random.default_rng(4)
        weights, bias = rng.normal(size=(1280, 3)) * 0.05, rng.normal(size=3)
        head = Classifier(head_bundle(aiy, "embedding", spec, weights, bias,
                                      ["a", "b", "other"], ["other"], tmp_path / "head.onnx",
                                      "v1"))
        pictures = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(2)]
        _, own = Classifier(aiy).classify_batch(pictures)
        probs, embedding = head.classify_batch(pictures)
        assert head.input_dtype == np.uint8
        assert embedding is not None and own is not None
        np.testing.assert_array_equal(embedding, own)
        np.testing.assert_allclose(probs, softmax(embedding @ weights + bias), atol=1e-5)


class TestHelpers:
    def test_write_metadata_replaces_feederd_keys_and_keeps_others(self) -> None:
        model = helper.make_model(helper.make_graph([], "g", [], []))
        helper.set_model_props(model, {"author": "me", "feederd.version": '"old"'})
        write_metadata(model, {"version": "new", "labels": ["a"]})
        props = {p.key: p.value for p in model.metadata_props}
        assert props == {"author": "me", "feederd.version": '"new"', "feederd.labels": '["a"]'}

    def test_labels_files_with_indices_keep_the_first_name(self, tmp_path: Path) -> None:
        path = tmp_path / "labels.txt"
        path.write_text("0,goldfinch, Carduelis carduelis\n1,crane\n2,crane\n")
        assert read_labels(path) == ["goldfinch", "crane_1", "crane_2"]

    def test_plain_labels_files_are_read_as_is(self, tmp_path: Path) -> None:
        path = tmp_path / "labels.txt"
        path.write_text("blue_jay\nother\n\n")
        assert read_labels(path) == ["blue_jay", "other"]

    def test_a_missing_backbone_is_a_sync_error(self, tmp_path: Path,
                                                labels_txt: Path) -> None:
        with pytest.raises(SyncError, match="no such backbone"):
            imagenet_bundle(tmp_path / "absent.onnx", labels_txt, "features", SPEC,
                            tmp_path / "b.onnx")


# --------------------------------------------------------------------------- shared data


@pytest.fixture(scope="module")
def squeezenet(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    folder = shared_data / "models" / "squeezenet1.1"
    out = tmp_path_factory.mktemp("squeezenet") / "squeezenet-imagenet.onnx"
    return Classifier(imagenet_bundle(folder / "squeezenet1.1-fp32.onnx",
                                      folder / "labels.txt", SQUEEZENET_EMBEDDING,
                                      SQUEEZENET_INPUT, out))


def photos(shared_data: Path, folder: str, count: int = 3) -> list[np.ndarray]:
    paths = sorted((shared_data / "images" / "bird" / folder).glob("*"))[:count]
    loaded = [cv2.imread(str(path)) for path in paths]
    return [image for image in loaded if image is not None]


@pytest.mark.shared_data
class TestSqueezeNet:
    def test_the_bundle_uses_caffe_preprocessing(self, squeezenet: Classifier) -> None:
        spec = squeezenet.bundle.input
        assert (spec.color, spec.scale, spec.mean) == ("BGR", 1.0, (104.0, 117.0, 123.0))

    def test_a_hummingbird_photo_is_a_hummingbird(self, squeezenet: Classifier,
                                                  shared_data: Path) -> None:
        for photo in photos(shared_data, "hummingbird"):
            prediction, _ = squeezenet.classify(photo)
            assert "hummingbird" in prediction.labels

    def test_a_goldfinch_photo_is_a_goldfinch(self, squeezenet: Classifier,
                                              shared_data: Path) -> None:
        for photo in photos(shared_data, "american_goldfinch"):
            assert squeezenet.classify(photo)[0].label == "goldfinch"

    def test_the_embedding_is_512_wide_and_batches(self, squeezenet: Classifier,
                                                   shared_data: Path) -> None:
        probs, embedding = squeezenet.classify_batch(photos(shared_data, "blue_jay", 5),
                                                     batch_size=4)
        assert probs.shape == (5, 1000)
        assert embedding is not None and embedding.shape == (5, 512)

    def test_a_head_bundle_has_the_heads_width_and_a_512_embedding(
            self, shared_data: Path, tmp_path: Path) -> None:
        folder = shared_data / "models" / "squeezenet1.1"
        rng = np.random.default_rng(4)
        out = head_bundle(folder / "squeezenet1.1-fp16.onnx", SQUEEZENET_EMBEDDING,
                          SQUEEZENET_INPUT, rng.normal(size=(512, 3)), np.zeros(3),
                          ["blue_jay", "crow", "other"], ["other"], tmp_path / "head.onnx",
                          "field-1")
        prediction, _ = Classifier(out).classify(photos(shared_data, "blue_jay", 1)[0])
        assert prediction.probs.shape == (3,)
        assert prediction.embedding is not None and prediction.embedding.shape == (512,)

    def test_the_fp16_backbone_agrees_with_fp32(self, squeezenet: Classifier,
                                                shared_data: Path, tmp_path: Path) -> None:
        folder = shared_data / "models" / "squeezenet1.1"
        half = Classifier(imagenet_bundle(folder / "squeezenet1.1-fp16.onnx",
                                          folder / "labels.txt", SQUEEZENET_EMBEDDING,
                                          SQUEEZENET_INPUT, tmp_path / "fp16.onnx"))
        for photo in photos(shared_data, "american_goldfinch"):
            assert half.classify(photo)[0].label == squeezenet.classify(photo)[0].label
