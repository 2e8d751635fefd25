"""The bundled models: AIY Birds V1 is what `feederd run` uses out of the box, with its licence."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from feederd.assets import default_model_path, demo_model_path
from feederd.classifier import Classifier
from feederd.config import Settings
from feederd.daemon import resolve_model_path

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def aiy() -> Classifier:
    return Classifier(default_model_path(), threads=1)


class TestTheDefaultModel:
    def test_it_is_the_committed_aiy_bundle_and_it_validates(self, aiy: Classifier) -> None:
        assert default_model_path().resolve() == (REPO / "models" / "aiy_birds_v1.onnx").resolve()
        assert aiy.bundle.version == "aiy-birds-v1"
        assert len(aiy.bundle.labels) == 965 and aiy.bundle.labels[-1] == "background"
        assert aiy.bundle.negative_labels == frozenset({"background"})

    def test_it_passes_the_onnx_checker(self) -> None:
        onnx.checker.check_model(onnx.load(str(default_model_path())), full_check=True)

    def test_it_takes_uint8_rgb_pixels_and_dequantizes_them_itself(self, aiy: Classifier
                                                                   ) -> None:
        spec = aiy.bundle.input
        assert (spec.size, spec.layout, spec.color, spec.scale) == ((224, 224), "NHWC", "RGB", 1)
        assert spec.mean == (0.0,) * 3 and spec.std == (1.0,) * 3
        assert aiy.session.get_inputs()[0].type == "tensor(uint8)"
        graph = onnx.load(str(default_model_path())).graph
        values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        first = next(n for n in graph.node if n.op_type == "DequantizeLinear"
                     and n.input[0] == "image_nchw")  # the TFLite input's own quantization
        assert (float(values[first.input[1]]), int(values[first.input[2]])) == (1 / 128, 128)

    def test_its_weights_are_int8_and_zero_point_0_where_that_is_exact(self) -> None:
        """int8 in the ordinary layers; zero point 0 (onnxruntime's fused symmetric kernels) in
        the 3 ordinary and 6 depthwise layers where feederd.tflite_symmetric finds it exact."""
        graph = onnx.load(str(default_model_path())).graph
        values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        weights = {n.input[1]: n for n in graph.node if n.op_type in ("Conv", "Gemm")}
        kinds = Counter()
        for node in graph.node:
            if node.op_type == "DequantizeLinear" and node.output[0] in weights:
                group = next((a.i for a in weights[node.output[0]].attribute
                              if a.name == "group"), 1)
                stored, zero = values[node.input[0]], values[node.input[2]]
                symmetric = stored.dtype == np.int8 and not zero.any()
                kinds[(group > 1, stored.dtype.name, symmetric)] += 1
                if stored.dtype == np.int8:  # -127..127: no int16 pair can wrap on ARM64
                    assert stored.min() >= -127
        assert kinds == {(True, "uint8", False): 11, (True, "int8", True): 6,
                         (False, "int8", False): 33, (False, "int8", True): 3}

    def test_on_x86_without_vnni_it_runs_as_uint8_weights_with_the_same_answers(
            self, aiy: Classifier, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr("feederd.onnx_session.u8s8_may_saturate", lambda: True)
        fallback = Classifier(default_model_path(), threads=1)
        options = fallback.session.get_session_options()
        assert options.get_session_config_entry("session.x64quantprecision") == "1"
        rng = np.random.default_rng(5)
        for _ in range(3):
            image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
            np.testing.assert_array_equal(fallback.run(fallback.prepare(image))[0],
                                          aiy.run(aiy.prepare(image))[0])

    def test_it_has_a_1280_wide_embedding_and_float_probabilities(self, aiy: Classifier
                                                                  ) -> None:
        image = np.random.default_rng(3).integers(0, 256, (300, 400, 3), dtype=np.uint8)
        probs, embedding = aiy.run(aiy.prepare(image))
        assert embedding is not None and embedding.shape == (1, 1280)
        assert probs.shape == (1, 965) and abs(float(probs.sum()) - 1.0) < 1e-4
        # a float softmax, not the TFLite model's uint8 one: values off the 1/256 grid exist
        assert np.any(np.abs(probs * 256 - np.round(probs * 256)) > 1e-3)

    def test_every_species_has_a_common_and_a_scientific_name(self, aiy: Classifier) -> None:
        bundle = aiy.bundle
        assert bundle.display_name("tufted_titmouse") == "Tufted Titmouse"
        assert bundle.scientific_name("blue_jay") == "Cyanocitta cristata"
        species = [label for label in bundle.labels if not bundle.is_negative(label)]
        assert set(bundle.display_names) >= set(species)
        assert set(bundle.scientific_names) == set(species)

    def test_its_licence_and_notice_lie_beside_it(self) -> None:
        folder = default_model_path().parent
        assert "Apache License" in (folder / "LICENSE-aiy_birds_v1").read_text()
        assert "aiy_birds_v1.onnx" in (folder / "NOTICE").read_text()

    def test_run_uses_it_when_no_model_is_configured_or_installed(self, tmp_path: Path
                                                                   ) -> None:
        settings = Settings(state_dir=tmp_path / "state")
        assert resolve_model_path(settings) == default_model_path()

    def test_a_configured_model_still_wins(self, tmp_path: Path) -> None:
        settings = Settings(state_dir=tmp_path / "state",
                            classifier={"model": str(demo_model_path())})
        assert resolve_model_path(settings) == demo_model_path()
