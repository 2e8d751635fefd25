"""Mining on the 15 shared feeder clips, with default settings, checked against what is really
in each crop (``clip_truth.csv``, labelled by looking; see :mod:`mining.purity`).

Both real models are run: the SqueezeNet ImageNet bundle the spool tests build (every non-bird
class a negative) and, where it is shipped, the AIY Birds V1 bundle. On these backlit clips
SqueezeNet names no bird in almost any frame, so every visit is a miss; the mined set must
then be the frames that show the bird, few near-duplicates, and no "flicker negative" that is
really a titmouse.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from feederd.classifier import Classifier
from mining.purity import (
    BLUE_JAY_CLIP,
    Report,
    Visit,
    clip_settings,
    load_truth,
    mine,
    replay,
    score,
)

REPO = Path(__file__).resolve().parents[2]
AIY = REPO / "models" / "aiy_birds_v1.onnx"
GROUSE_CLIP = "bird_10_03_2023--12_23_18.mp4"


def run(classifier: Classifier, shared: Path) -> tuple[list[Visit], Report]:
    clips = sorted((shared / "video").glob("bird_*.mp4"))
    assert len(clips) == 15, "the shared data should hold 15 feeder clips"
    visits: list[Visit] = []
    for clip in clips:
        visits += replay(clip, classifier, clip_settings(clip))
    mined = mine(visits, classifier, clip_settings(clips[0]))
    return visits, score(visits, mined, load_truth())


@pytest.fixture(scope="module")
def squeezenet_run(shared_data: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[list[Visit], Report]:
    from test_daemon_spool import squeezenet

    out = tmp_path_factory.mktemp("purity") / "squeezenet-birds.onnx"
    return run(Classifier(squeezenet(shared_data, out, "squeezenet-birds", True)), shared_data)


@pytest.fixture(scope="module")
def aiy_run(shared_data: Path) -> tuple[list[Visit], Report]:
    return run(Classifier(AIY), shared_data)  # shipped in the repository: never skipped


def check_targets(visits: list[Visit], report: Report) -> None:
    flicker = report.purity("flicker_negative")
    assert flicker is None or flicker >= 0.85, report.table()
    assert report.animal_share >= 0.9, report.table()
    assert report.duplicate_share <= 0.05, report.table()
    unalerted = {v.clip for v in visits} - {v.clip for v in visits if v.alerts}
    assert unalerted <= set(report.missed_visits), (
        f"visits without an alert and no missed_visit sample: "
        f"{sorted(unalerted - set(report.missed_visits))}\n{report.table()}")


@pytest.mark.shared_data
@pytest.mark.timeout(300)
class TestSqueezeNet:
    def test_mined_crops_hold_the_animal_their_reasons_claim(
            self, squeezenet_run: tuple[list[Visit], Report]) -> None:
        check_targets(*squeezenet_run)

    def test_the_blue_jay_and_titmouse_visits_the_model_misses_are_mined_as_missed(
            self, squeezenet_run: tuple[list[Visit], Report]) -> None:
        visits, report = squeezenet_run
        assert not any(v.alerts for v in visits), report.alerts
        assert BLUE_JAY_CLIP in report.missed_visits
        assert len(report.missed_visits) == 15, report.table()
        assert report.reasons["missed_visit"][0] >= 45, report.table()

    def test_the_titmouse_called_black_grouse_is_a_disagreement_not_a_flicker_negative(
            self, squeezenet_run: tuple[list[Visit], Report]) -> None:
        """Issue 11: its neighbours' "nothing" were the model's own misses of the bird."""
        visits, report = squeezenet_run
        (grouse,) = [f for v in visits if v.clip == GROUSE_CLIP for f in v.frames
                     if f.of_interest]
        assert grouse.prediction.label == "black grouse"
        assert "flicker_negative" not in report.reasons, report.table()
        assert report.reasons.get("disagreement", (0, 0))[0] >= 1, report.table()


@pytest.mark.shared_data
@pytest.mark.timeout(300)
class TestAiyBirds:
    def test_mined_crops_hold_the_animal_their_reasons_claim(
            self, aiy_run: tuple[list[Visit], Report]) -> None:
        check_targets(*aiy_run)
