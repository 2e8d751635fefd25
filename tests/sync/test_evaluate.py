"""feeder-sync evaluate: reports, false alerts on field negatives, the promotion gate."""

from __future__ import annotations

import json
from pathlib import Path

import cv2

from feederd.sync.evaluate import Score, confusion_table, gate
from feederd.sync.samples import SampleIndex
from sync.conftest import Setup
from sync.helpers import add_samples, jpeg, photo, run_json, run_sync, spool_dir


def negatives_folder(root: Path, count: int = 30, seed: int = 9000) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        (root / f"sq{n}.jpg").write_bytes(jpeg(photo("squirrel", seed + n)))
    return root


def train_with_squirrels(setup: Setup, count: int = 20) -> dict[str, object]:
    add_samples(spool_dir(setup.tmp), [(jpeg(photo("squirrel", 500 + n)), "other", "user",
                                        ["rejected"]) for n in range(count)])
    run_sync(setup.config, "pull")
    return run_json(setup.config, "train")


class TestReport:
    def test_the_report_has_markdown_json_and_confusion_pngs(self, setup: Setup) -> None:
        trained = train_with_squirrels(setup)
        report = run_json(setup.config, "evaluate")
        folder = Path(report["report"])
        assert (folder / "report.md").read_text().startswith(f"# Evaluation of "
                                                             f"{trained['version']}")
        assert json.loads((folder / "report.json").read_text())["gate"] == report["gate"]
        names = [f"confusion-{v}.png" for v in (trained["version"],
                                                report["reference"]["version"])]
        for name in [*names, "confusion.png"]:  # each model, then both side by side
            image = cv2.imread(str(folder / name))
            assert image is not None and image.shape[0] > 100

    def test_the_report_names_the_pulled_samples_behind_each_false_alert(
            self, setup: Setup) -> None:
        train_with_squirrels(setup)
        with SampleIndex(setup.workspace / "samples.db") as index:
            pulled = {(s["id"], s["sha256"]) for s in index.all()}
        reference = run_json(setup.config, "evaluate")["reference"]
        behind = reference["false_alert_samples"]
        assert len(behind) == reference["field"]["false_alerts"] > 0
        assert {(b["id"], b["sha256"]) for b in behind} <= pulled
        assert all(b["said"] != "other" and b["confidence"] >= 0.5 for b in behind)

    def test_per_class_recall_and_the_confusion_matrix_count_the_held_out_split(
            self, setup: Setup) -> None:
        report = run_json(setup.config, "evaluate")
        candidate = report["candidate"]
        assert set(candidate["recall"]) == {"jay", "other", "robin"}
        assert sum(sum(row.values()) for row in candidate["confusion"].values()) == 5 + 8 + 5

    def test_the_text_output_prints_the_tables(self, setup: Setup) -> None:
        out = run_sync(setup.config, "evaluate").stdout
        assert "Confusion matrix" in out and "mean species recall" in out


class TestFieldNegatives:
    def test_false_alerts_on_rejected_samples_go_down_and_the_gate_passes(
            self, setup: Setup) -> None:
        train_with_squirrels(setup)
        report = run_json(setup.config, "evaluate", "--negatives",
                          str(negatives_folder(setup.tmp / "squirrels")))
        before, after = report["reference"], report["candidate"]
        print(f"\nfalse alerts {before['false_alerts']} -> {after['false_alerts']} of "
              f"{after['field_negatives']}; mean species recall "
              f"{before['mean_species_recall']} -> {after['mean_species_recall']}")
        assert after["field"]["samples"] == 20 and after["extra"]["samples"] == 30
        assert after["false_alerts"] < before["false_alerts"]
        assert report["gate"] == "pass", report["reasons"]

    def test_without_field_negatives_the_gate_does_not_pass(self, setup: Setup) -> None:
        add_samples(spool_dir(setup.tmp), [(jpeg(photo("robin", 77)), "robin", "user",
                                            ["corrected"])])
        run_sync(setup.config, "pull")
        run_sync(setup.config, "train")
        report = run_json(setup.config, "evaluate")
        assert report["gate"] == "fail"
        assert "no field negatives" in report["reasons"][0]

    def test_the_alert_threshold_comes_from_the_device_config(self, setup: Setup) -> None:
        text = setup.config.read_text() + "alert_confidence = 1.0\n"
        setup.config.write_text(text)
        report = run_json(setup.config, "evaluate", "--negatives",
                          str(negatives_folder(setup.tmp / "squirrels")))
        assert report["candidate"]["false_alerts"] == 0


def device_samples(setup: Setup, confirmed: int, unanswered: int) -> None:
    """Robins the owner confirmed, and robin alerts in another visit nobody answered."""
    spool = spool_dir(setup.tmp)
    add_samples(spool, [(jpeg(photo("robin", 600 + n)), "robin", "user", ["confirmed"])
                        for n in range(confirmed)])
    add_samples(spool, [(jpeg(photo("robin", 700 + n)), None, None, ["low_margin"])
                        for n in range(unanswered)], visit="20250102T000000.000Z-0002")
    run_sync(setup.config, "pull")


class TestDevicePositives:
    def test_confirmed_and_long_unrejected_alerts_are_scored_as_the_devices_positives(
            self, setup: Setup) -> None:
        text = setup.config.read_text().replace("[training]\n",
                                                "[training]\nweak_positive_after_s = 0\n")
        setup.config.write_text(text)
        device_samples(setup, confirmed=3, unanswered=4)
        train_with_squirrels(setup, 6)
        report = run_json(setup.config, "evaluate")
        device = report["candidate"]["device"]
        assert (device["samples"], device["weak"]) == (7, 4)
        assert set(device["recall"]) == {"robin"}
        assert "device positives (7)" in (Path(report["report"]) / "report.md").read_text()

    def test_unanswered_alerts_wait_before_they_count(self, setup: Setup) -> None:
        device_samples(setup, confirmed=2, unanswered=3)
        train_with_squirrels(setup, 6)
        device = run_json(setup.config, "evaluate")["candidate"]["device"]
        assert (device["samples"], device["weak"]) == (2, 0)


def score(recall: dict[str, float], alerts: int, total: int = 10, n: int = 50) -> Score:
    confusion = {name: {name: round(r * n), "other": n - round(r * n)}
                 for name, r in recall.items()}
    return Score("v", [*recall, "other"], ["other"], confusion, recall, 0.9, total, alerts, 0,
                 0)


class TestGate:
    def test_fewer_false_alerts_and_steady_recall_pass(self) -> None:
        passed, reasons = gate(score({"robin": 0.9}, 2), score({"robin": 0.9}, 6), 0.02)
        assert passed is True and "6 -> 2" in reasons[0]

    def test_false_alerts_that_do_not_go_down_fail(self) -> None:
        passed, reasons = gate(score({"robin": 0.9}, 6), score({"robin": 0.9}, 6), 0.02)
        assert passed is False and "did not go down" in reasons[0]

    def test_a_species_recall_drop_beyond_tolerance_fails(self) -> None:
        passed, reasons = gate(score({"robin": 0.8, "jay": 0.9}, 1),
                               score({"robin": 0.9, "jay": 0.9}, 6), 0.02)
        assert passed is False
        assert any("recall of robin on held-out device frames fell" in r for r in reasons)

    def test_a_drop_within_tolerance_passes(self) -> None:
        passed, _ = gate(score({"robin": 0.88}, 1, n=100), score({"robin": 0.9}, 6, n=100),
                         0.05)
        assert passed is True

    def test_a_single_image_is_noise_not_a_regression(self) -> None:
        passed, reasons = gate(score({"robin": 13 / 14}, 1, n=14), score({"robin": 1.0}, 6,
                                                                          n=14), 0.02)
        assert passed is True and "within noise" in reasons[1]

    def test_a_recall_drop_on_the_devices_own_positives_fails(self) -> None:
        ref, cand = score({"robin": 0.9}, 6), score({"robin": 0.9}, 1)
        ref.device_confusion, ref.device_recall = {"robin": {"robin": 20}}, {"robin": 1.0}
        cand.device_confusion = {"robin": {"robin": 15, "other": 5}}
        cand.device_recall = {"robin": 0.75}
        passed, reasons = gate(cand, ref, 0.02)
        assert passed is False
        assert any("robin on the device's own positives fell" in r for r in reasons)

    def test_the_first_model_has_nothing_to_compare_with(self) -> None:
        assert gate(score({"robin": 0.9}, 1), None, 0.02)[0] is None

    def test_the_confusion_table_has_a_row_per_true_label(self) -> None:
        table = confusion_table(score({"robin": 0.9, "jay": 0.8}, 0))
        assert table.splitlines()[2].split()[:3] == ["robin", "45", "0"]


class TestFaithfulness:
    def test_a_saved_head_that_disagrees_with_its_bundle_is_not_trusted(self, setup: Setup
                                                                         ) -> None:
        from feederd.sync.head import Head

        trusted = run_json(setup.config, "evaluate")["candidate"]
        [saved] = (setup.workspace / "models").glob("*.head.npz")
        head = Head.load(saved)
        assert head is not None
        head.weights = -head.weights
        head.save(saved)
        proc = run_sync(setup.config, "evaluate", "--json")
        assert "disagrees with its saved head" in proc.stderr
        assert json.loads(proc.stdout)["candidate"]["confusion"] == trusted["confusion"]
