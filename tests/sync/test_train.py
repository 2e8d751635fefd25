"""feeder-sync init and train: real embeddings, real scikit-learn, real bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from feederd.bundle import read_bundle
from feederd.classifier import Classifier
from feederd.errors import SyncError
from feederd.sync.config import TrainingConfig
from feederd.sync.dataset import Item, VectorCache, scan_folder, split
from feederd.sync.domain import view_key
from feederd.sync.head import fit_head, out_of_fold
from feederd.sync.train import _Data, _rows, cap_negatives, check_labels, train
from feederd.sync.workspace import Workspace
from sync.conftest import COUNTS, Setup, init_args
from sync.helpers import add_samples, jpeg, photo, run_json, run_sync, spool_dir, sync_config

CFG = TrainingConfig.model_validate({})


def squirrels(count: int, label: str = "other", seed: int = 500
              ) -> list[tuple[bytes, str, str, list[str]]]:
    return [(jpeg(photo("squirrel", seed + n)), label, "user", ["rejected"])
            for n in range(count)]


def pulled(setup: Setup, samples: list[tuple[bytes, str, str, list[str]]]) -> None:
    add_samples(spool_dir(setup.tmp), samples)
    run_sync(setup.config, "pull")


def state(setup: Setup) -> dict[str, object]:
    return json.loads((setup.workspace / "state.json").read_text())


class TestInit:
    def test_init_with_only_a_photo_folder_puts_the_head_on_the_shipped_bird_model(
            self, tmp_path: Path, dataset: Path) -> None:
        config = sync_config(tmp_path)
        result = run_json(config, "init", "--device", "feeder", "--data", str(dataset),
                          "--negative-labels", "other")
        setup = json.loads((tmp_path / "workspace" / "feeder" / "state.json").read_text())
        assert Path(setup["init"]["backbone"]).name == "aiy_birds_v1.onnx"
        assert setup["init"]["embedding_output"] == "embedding"
        bundle = read_bundle(tmp_path / "workspace" / "feeder" / "models"
                             / f"{result['version']}.onnx")
        assert bundle.labels == ("jay", "other", "robin")
        assert Classifier(bundle.path, 1).input_dtype == np.uint8  # the backbone's pixels in

    def test_init_builds_an_evaluated_baseline_bundle(self, setup: Setup, dataset: Path
                                                      ) -> None:
        st = state(setup)
        version = st["baseline"]
        bundle = read_bundle(setup.workspace / "models" / f"{version}.onnx")
        assert bundle.labels == ("jay", "other", "robin")
        assert bundle.negative_labels == {"other"}
        assert bundle.parent_version is None and bundle.created
        train_items, _ = split(scan_folder(dataset), CFG.holdout, 0)
        scenes = CFG.view.empty_scenes  # crops of the empty feeder, trained as 'other'
        assert sum(bundle.trained_on.values()) == len(train_items) + scenes
        assert len(train_items) < sum(COUNTS.values())
        assert bundle.metrics["mean_species_recall"] > 0.8
        assert st["models"][version]["gate"] == "n/a"
        assert (setup.workspace / "reports" / version / "report.md").exists()

    def test_a_new_init_builds_its_baseline_from_the_base_data_only(
            self, setup: Setup, backbone: Path, dataset: Path) -> None:
        pulled(setup, squirrels(6))
        first = state(setup)["baseline"]
        run_sync(setup.config, *init_args(backbone, dataset))
        st = state(setup)
        assert st["baseline"] != first
        assert "other_field" not in st["models"][st["baseline"]]["trained_on"]
        train_items, _ = split(scan_folder(dataset), CFG.holdout, 0)
        assert sum(st["models"][st["baseline"]]["trained_on"].values()) == \
            len(train_items) + CFG.view.empty_scenes

    def test_a_negative_label_without_a_folder_is_bad_input(self, tmp_path: Path,
                                                            backbone: Path,
                                                            dataset: Path) -> None:
        args = init_args(backbone, dataset)
        args[args.index("other")] = "squirrel"
        proc = run_sync(sync_config(tmp_path), *args, check=False)
        assert proc.returncode == 2 and "squirrel" in proc.stderr

    def test_a_missing_embedding_tensor_is_named(self, tmp_path: Path, backbone: Path,
                                                 dataset: Path) -> None:
        args = init_args(backbone, dataset)
        args[args.index("features")] = "fire9/concat_1"
        proc = run_sync(sync_config(tmp_path), *args, check=False)
        assert proc.returncode == 2 and "no tensor named 'fire9/concat_1'" in proc.stderr

    def test_the_split_is_stable_and_keeps_a_training_image_per_label(
            self, dataset: Path) -> None:
        items = scan_folder(dataset)
        forward, backward = split(items, 0.5, 0), split(list(reversed(items)), 0.5, 0)
        assert [sorted(i.key for i in part) for part in forward] == \
            [sorted(i.key for i in part) for part in backward]
        train_items, test_items = split(items[:1] + items[30:31], 0.9, 0)
        assert len(train_items) == 2 and test_items == []


class TestTrain:
    def test_mined_samples_join_the_training_with_full_metadata(self, setup: Setup) -> None:
        pulled(setup, squirrels(6))
        result = run_json(setup.config, "train")
        bundle = read_bundle(Path(result["file"]))
        assert bundle.version == result["version"]
        assert bundle.parent_version == state(setup)["baseline"]
        assert bundle.trained_on["other_field"] == 6
        assert "other_field" in bundle.negative_labels
        assert set(bundle.metrics) >= {"holdout_accuracy", "mean_species_recall", "recall"}
        assert result["mined_used"] == 6

    def test_field_negatives_can_stay_in_their_base_class(self, setup: Setup) -> None:
        pulled(setup, squirrels(4))
        ws = Workspace(setup.tmp / "workspace", "feeder")
        result = train(ws, CFG.model_copy(update={"field_class": False}))
        assert result.labels == ["jay", "other", "robin"]
        # 40 base photos less the 20% held out, the empty-feeder crops, 4 field negatives
        assert result.trained_on["other"] == 32 + CFG.view.empty_scenes + 4

    def test_the_bundle_gives_the_heads_probabilities_and_the_raw_embedding(
            self, setup: Setup) -> None:
        ws = Workspace(setup.tmp / "workspace", "feeder")
        result = train(ws, CFG)
        model = Classifier(result.path)
        images = [photo("robin", 12345), photo("jay", 12346)]
        probs, embedding = model.classify_batch(images)
        assert embedding is not None and embedding.shape == (2, 16)
        head = fit_head(np.vstack([embedding, embedding]), ["robin", "jay"] * 2,
                        result.labels, CFG)
        assert head.probs(embedding).shape == probs.shape

    def test_only_new_images_are_embedded(self, setup: Setup) -> None:
        first = run_json(setup.config, "train")
        assert first["newly_embedded"] == 0
        pulled(setup, squirrels(3))
        second = run_json(setup.config, "train")
        assert second["newly_embedded"] == 3

    def test_embeddings_are_cached_by_content_hash(self, setup: Setup) -> None:
        cache = VectorCache(setup.workspace / "embeddings.db")
        key = f'{state(setup)["init"]["embedder_key"]}|{view_key(CFG.view)}'
        try:
            assert cache.count(key) == sum(COUNTS.values())
        finally:
            cache.close()

    def test_the_device_s_empty_scenes_train_in_the_base_negative_without_review(
            self, setup: Setup) -> None:
        empty = np.full((48, 48, 3), 120, np.uint8)
        pulled(setup, [(jpeg(empty), "other", "pseudo", ["empty_scene"]),
                       (jpeg(photo("robin", 900)), "other", "pseudo", ["flicker_negative"])])
        result = run_json(setup.config, "train")
        baseline = state(setup)["models"][state(setup)["baseline"]]["trained_on"]  # type: ignore[index]
        assert result["trained_on"]["other"] == baseline["other"] + 1
        assert "other_field" not in result["trained_on"]  # a pseudo flicker needs review
        assert result["mined_used"] == 1

    def test_augmented_variants_train_beside_their_images_and_are_cached(
            self, setup: Setup) -> None:
        pulled(setup, squirrels(3))
        ws = Workspace(setup.tmp / "workspace", "feeder")
        flipped = CFG.model_copy(update={"augment": ["flip"]})
        first = train(ws, flipped)
        # the 3 new samples, then every training image once more, mirrored (base photos,
        # empty-feeder crops, field negatives; never the held-out photos)
        assert first.embedded == 3 + sum(first.trained_on.values())
        assert first.trained_on == train(ws, CFG).trained_on  # counts are of images
        assert train(ws, flipped).embedded == 0

    def test_labels_the_base_dataset_lacks_are_a_clear_error(self, setup: Setup) -> None:
        pulled(setup, squirrels(3, label="squirrel"))
        proc = run_sync(setup.config, "train", check=False)
        assert proc.returncode == 2
        assert "labels the base dataset lacks: squirrel (3 samples)" in proc.stderr
        assert "--allow-new-class" in proc.stderr
        assert state(setup)["candidate"] == state(setup)["baseline"]

    def test_a_lookalike_can_be_a_new_negative_class(self, setup: Setup) -> None:
        pulled(setup, squirrels(5, label="squirrel"))
        result = run_json(setup.config, "train", "--allow-new-class",
                          "--negative-label", "squirrel")
        bundle = read_bundle(Path(result["file"]))
        assert "squirrel" in bundle.labels and "squirrel" in bundle.negative_labels
        again = run_json(setup.config, "train", "--allow-new-class")
        assert "squirrel" in read_bundle(Path(again["file"])).negative_labels

    def test_train_before_init_says_what_to_do(self, tmp_path: Path) -> None:
        proc = run_sync(sync_config(tmp_path), "train", check=False)
        assert proc.returncode == 2 and "feeder-sync init" in proc.stderr


def items(labels: dict[str, int], source: str = "base") -> list[Item]:
    return [Item(Path(f"{label}{n}.jpg"), label, source, f"{source}:{label}{n}")
            for label, count in labels.items() for n in range(count)]


class TestNegativeCap:
    def test_a_mined_sample_is_graded_by_a_head_that_saw_neither_it_nor_its_variants(
            self) -> None:
        rng = np.random.default_rng(0)
        base = [Item(Path(f"b{n}"), "bird" if n % 2 else "other", "base", f"b{n}")
                for n in range(40)]
        odd = Item(Path("m"), "other_field", "mined", "m")
        x = {i.key: rng.normal(size=4) + (2.0 if i.label == "bird" else 0.0) for i in base}
        x["m"] = np.array([9.0, 9.0, -9.0, 9.0])  # unlike anything else
        data = _Data(base, [], x, {k: k for k in x}, {"m": [x["m"] + 0.01]})
        items = [*base, odd]
        rows, y, origin = _rows(items, data)
        assert len(rows) == len(items) + 1 and origin[-1] == len(items) - 1
        labels = ["bird", "other", "other_field"]
        full = fit_head(rows, y, labels, CFG)
        oof = out_of_fold(items, rows, y, origin, full, CFG, data.shas)
        assert full.probs(x["m"][None])[0, 2] > 0.5  # the full head learnt it
        assert oof["m"][2] < 0.1  # its mirror image did not teach the out-of-fold head

    def test_negatives_are_capped_per_positive(self) -> None:
        kept, dropped = cap_negatives(items({"robin": 5, "jay": 5, "other": 100}), {"other"},
                                      3, seed=0)
        assert sum(i.label == "other" for i in kept) == 30 and dropped == 70
        assert sum(i.label != "other" for i in kept) == 10

    def test_field_negatives_are_kept_first(self) -> None:
        data = items({"robin": 2, "other": 50}) + items({"other": 5}, "mined")
        kept, _ = cap_negatives(data, {"other"}, 3, seed=0)
        assert sum(i.source == "mined" for i in kept) == 5
        assert sum(i.label == "other" for i in kept) == 6

    def test_under_the_cap_nothing_is_dropped(self) -> None:
        data = items({"robin": 10, "other": 20})
        assert cap_negatives(data, {"other"}, 3, seed=0) == (data, 0)

    def test_every_negative_class_counts_towards_the_cap(self) -> None:
        kept, _ = cap_negatives(items({"robin": 2, "other": 10, "squirrel": 10}),
                                {"other", "squirrel"}, 2, seed=1)
        assert sum(i.label != "robin" for i in kept) == 4


class TestLabels:
    def test_known_labels_keep_their_order(self) -> None:
        assert check_labels(["jay", "other"], items({"other": 1}, "mined"), False) == \
            ["jay", "other"]

    def test_new_labels_need_permission(self) -> None:
        with pytest.raises(SyncError, match="cardinal"):
            check_labels(["jay"], items({"cardinal": 2}, "mined"), False)
        assert check_labels(["jay"], items({"cardinal": 2}, "mined"), True) == \
            ["jay", "cardinal"]
