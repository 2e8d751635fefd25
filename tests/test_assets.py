"""The bundled models: AIY Birds V1 is what `feederd run` uses out of the box, with its licence."""

from __future__ import annotations

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

    def test_it_takes_rgb_pixels_centred_on_128(self, aiy: Classifier) -> None:
        spec = aiy.bundle.input
        assert (spec.size, spec.color, spec.scale) == ((224, 224), "RGB", 1.0)
        assert spec.mean == (128.0,) * 3 and spec.std == (128.0,) * 3

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
