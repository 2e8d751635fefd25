"""The task decision: the best species of interest against every other class summed."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from feederd.assets import demo_model_path
from feederd.classifier import Classifier
from feederd.config import VisitsConfig
from feederd.task import Task, generic_negative, resolve_species
from feederd.types import Frame, Prediction
from feederd.visits import VisitTracker

LABELS = ("tufted_titmouse", "blue_jay", "american_flamingo", "indri", "langur", "sloth_bear",
          "background")
NEGATIVES = frozenset({"indri", "langur", "sloth_bear", "background"})
NAMES = {"tufted_titmouse": ["Tufted Titmouse", "Baeolophus bicolor"],
         "blue_jay": ["Blue Jay", "Cyanocitta cristata"],
         "american_flamingo": ["American Flamingo", "Phoenicopterus ruber"]}


def probs(**values: float) -> np.ndarray:
    out = np.array([values.get(name, 0.0) for name in LABELS], np.float32)
    return out / out.sum()


def task(allow: tuple[str, ...] = (), block: tuple[str, ...] = ()) -> Task:
    return Task(LABELS, NEGATIVES, species=resolve_species(LABELS, NAMES, allow, block))


class TestDecision:
    def test_negatives_are_summed_against_the_best_species(self) -> None:
        """A raw top-1 species loses to many negatives that together say "nothing"."""
        decision = task().decide(probs(blue_jay=0.3, indri=0.25, langur=0.25, sloth_bear=0.2))
        assert (decision.label, decision.of_interest) == ("background", False)
        assert decision.confidence == pytest.approx(0.7)
        assert decision.margin == pytest.approx(0.4)

    def test_two_negatives_close_together_are_a_sure_negative(self) -> None:
        decision = task().decide(probs(langur=0.45, sloth_bear=0.44, blue_jay=0.11))
        assert decision.label == "background" and decision.margin > 0.7

    def test_a_winning_species_leads_by_its_margin_over_the_runner_up(self) -> None:
        decision = task().decide(probs(tufted_titmouse=0.5, blue_jay=0.3, indri=0.2))
        assert (decision.label, decision.of_interest) == ("tufted_titmouse", True)
        assert decision.margin == pytest.approx(0.2)

    def test_the_negative_is_the_bundle_s_generic_label_never_a_raw_class(self) -> None:
        assert task().decide(probs(indri=0.9, blue_jay=0.1)).label == "background"

    def test_a_bundle_without_a_catch_all_negative_uses_other(self) -> None:
        assert generic_negative({"indri", "langur"}) == "other"
        assert generic_negative({"squirrel", "background", "other"}) == "other"
        assert generic_negative({"Background"}) == "Background"


class TestLocalSpecies:
    def test_an_allow_list_by_common_or_scientific_name_folds_the_rest_into_the_negative(
            self) -> None:
        local = task(allow=("tufted titmouse", "CYANOCITTA CRISTATA"))
        assert local.species == ("tufted_titmouse", "blue_jay")
        decision = local.decide(probs(american_flamingo=0.8, blue_jay=0.1, indri=0.1))
        assert (decision.label, decision.of_interest) == ("background", False)
        assert decision.confidence == pytest.approx(0.9)

    def test_a_block_list_folds_a_species_into_the_negative(self) -> None:
        local = task(block=("Phoenicopterus ruber",))
        assert "american_flamingo" not in local.species
        assert not local.decide(probs(american_flamingo=0.9, indri=0.1)).of_interest

    def test_labels_match_in_any_case_with_spaces_or_underscores(self) -> None:
        assert task(allow=("Tufted_Titmouse", "blue-jay")).species == ("tufted_titmouse",
                                                                       "blue_jay")

    def test_unknown_names_are_warned_about_naming_the_config_key(
            self, caplog: pytest.LogCaptureFixture) -> None:
        with caplog.at_level(logging.WARNING, logger="feederd.task"):
            local = task(allow=("blue jay", "Dodo"), block=("Great Auk",))
        assert local.species == ("blue_jay",)
        text = caplog.text
        assert "visits.species: 'Dodo': not a label" in text
        assert "visits.exclude_species: 'Great Auk'" in text

    def test_a_flamingo_never_alerts_at_a_minnesota_feeder(self) -> None:
        cfg = VisitsConfig(min_frames=2, min_confidence=0.5, min_share=0.3,
                           species=["Tufted Titmouse", "Blue Jay"])
        tracker = VisitTracker(cfg, LABELS, NEGATIVES, task=task(allow=tuple(cfg.species)))
        tracker.open(Frame(0, 0.0, 0.0, np.zeros((4, 4, 3), np.uint8)), 0.0)
        flamingo = probs(american_flamingo=0.95, indri=0.05)
        alerts = []
        for seq in range(6):
            frame = Frame(seq, seq * 0.5, seq * 0.5, np.zeros((4, 4, 3), np.uint8))
            prediction = Prediction(("american_flamingo", "indri"), (0.95, 0.05), flamingo)
            _, alert = tracker.add(frame, prediction, None, frame.image, "v1")
            alerts.append(alert)
        assert alerts == [None] * 6
        summary, _ = tracker.close(3.0) or (None, None)
        assert summary is not None and summary.votes == {"background": 6}


class TestClassifier:
    def test_each_prediction_carries_the_decision_of_the_model_s_task(self) -> None:
        classifier = Classifier(demo_model_path(), threads=1, species=["cardinal"])
        image = np.full((64, 64, 3), (200, 90, 30), np.uint8)  # blue: the demo's "blue_jay"
        prediction, _ = classifier.classify(image)
        assert classifier.task.species == ("cardinal",)
        assert prediction.decision is not None
        assert prediction.decision == classifier.task.decide(prediction.probs)
        assert prediction.task_label in ("cardinal", "other")


class TestSpeciesCommand:
    def run(self, tmp_path: Path, toml: str) -> subprocess.CompletedProcess[str]:
        config = tmp_path / "feederd.toml"
        config.write_text(f'state_dir = "{tmp_path / "state"}"\n{toml}', encoding="utf-8")
        return subprocess.run([sys.executable, "-m", "feederd.cli", "species", "--json",
                               "--config", str(config)], capture_output=True, text=True,
                              timeout=120)

    def test_it_lists_the_model_s_species_and_marks_those_the_lists_keep(
            self, tmp_path: Path) -> None:
        """On the default model (AIY Birds V1): 964 species, two kept by name."""
        done = self.run(tmp_path, '[visits]\nspecies = ["Blue Jay", "baeolophus bicolor"]\n')
        assert done.returncode == 0, done.stderr
        rows = json.loads(done.stdout)
        assert len(rows) == 964
        assert sorted(r["name"] for r in rows if r["of_interest"]) == ["Blue Jay",
                                                                       "Tufted Titmouse"]

    def test_an_unknown_name_exits_2_naming_the_key(self, tmp_path: Path) -> None:
        done = self.run(tmp_path, '[visits]\nexclude_species = ["Dodo"]\n')
        assert done.returncode == 2
        assert "visits.exclude_species: 'Dodo': not a label" in done.stderr
