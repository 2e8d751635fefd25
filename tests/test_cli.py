"""The ``feederd`` command line as a specification: help, exit codes, JSON, messages.

Exit codes (DESIGN, "Configuration and commands"): 0 success, 2 bad usage or invalid
config/input with a message naming the key or file, 1 anything else. Commands run as real
processes (``python -m feederd.cli``) on real files, bundles, spools and a real broker; only
argument parsing, which never touches anything, is checked in-process.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import onnx
import pytest
from brokers import Mosquitto, Probe, free_port
from daemonproc import write_config

from feederd.assets import default_model_path, demo_clip_path, demo_model_path
from feederd.bundle import METADATA_PREFIX
from feederd.classifier import square_crop
from feederd.cli import build_parser, main
from feederd.config import SpoolConfig
from feederd.spool import Spool
from feederd.sync.build import write_metadata

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120

COMMANDS = ["run", "demo", "check-config", "classify", "reply", "spool", "model", "doctor",
            "species", "suggest-masks"]
ACTIONS = {"spool": ["ls", "stats", "show", "export", "ack"],
           "model": ["ls", "install", "rollback", "import"]}
EVERY_HELP = [[c] for c in COMMANDS] + [[c, a] for c, actions in ACTIONS.items()
                                        for a in actions]


def feederd(*args: str, config: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m feederd.cli ARGS [--config CONFIG]`` in a clean environment."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("FEEDERD_") and k != "CREDENTIALS_DIRECTORY"}
    command = [sys.executable, "-m", "feederd.cli", *args,
               *(["--config", str(config)] if config else [])]
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env={**clean, **(env or {})})


def json_out(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def assert_clear_failure(proc: subprocess.CompletedProcess[str], code: int, *names: str
                         ) -> None:
    """Exit ``code``, one ``feederd: ...`` message naming ``names``, no traceback."""
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "feederd: " in proc.stderr
    for name in names:
        assert name in proc.stderr, proc.stderr


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A device whose state lives in ``tmp_path/state``; no broker configured."""
    return write_config(tmp_path / "feederd.toml", {
        "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": "127.0.0.1", "port": free_port()},
    })


def state_of(tmp_path: Path) -> Path:
    return tmp_path / "state"


# --- parsing --------------------------------------------------------------------------------

def subcommands(parser: argparse.ArgumentParser) -> list[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


class TestTheCommandSurface:
    def test_the_commands_are_the_ones_the_design_names(self) -> None:
        parser = build_parser()
        assert subcommands(parser) == COMMANDS
        for command, actions in ACTIONS.items():
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            assert subcommands(sub.choices[command]) == actions

    @pytest.mark.parametrize("words", EVERY_HELP, ids=" ".join)
    def test_every_command_has_help(self, words: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_:
            main([*words, "--help"])
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: feederd {' '.join(words)}")

    def test_the_top_level_help_and_version_exit_0(self) -> None:
        assert feederd("--help").returncode == 0
        version = feederd("--version")
        assert version.returncode == 0 and version.stdout.startswith("feederd ")

    @pytest.mark.parametrize("argv", [
        [], ["fly"], ["classify"], ["reply", "latest"],
        ["reply", "latest", "--correct", "--not-a-bird"], ["spool"], ["spool", "show", "one"],
        ["spool", "export"], ["model"], ["model", "install"], ["doctor", "--verbose"],
    ], ids=lambda argv: " ".join(argv) or "nothing")
    def test_bad_usage_exits_2_with_a_usage_line(self, argv: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "usage: feederd" in capsys.readouterr().err

    def test_bad_usage_exits_2_from_the_real_command(self) -> None:
        proc = feederd("reply", "latest")
        assert proc.returncode == 2
        assert "--not-a-bird" in proc.stderr and "Traceback" not in proc.stderr

    def test_config_may_come_before_or_after_the_command(self, config: Path) -> None:
        before = feederd("--config", str(config), "spool", "stats", "--json")
        after = feederd("spool", "stats", "--json", config=config)
        assert json_out(before) == json_out(after)
        assert str(state_of(config.parent)) in json_out(before)["note"]


class TestConfiguration:
    def test_a_valid_file_exits_0(self, config: Path) -> None:
        proc = feederd("check-config", str(config))
        assert proc.returncode == 0 and "valid" in proc.stdout

    def test_a_wrong_value_exits_2_naming_the_key(self, tmp_path: Path) -> None:
        bad = write_config(tmp_path / "bad.toml", {"camera": {"fps": "fast"}})
        assert_clear_failure(feederd("check-config", str(bad)), 2, "camera.fps")

    def test_every_command_refuses_an_invalid_config_with_2(self, tmp_path: Path) -> None:
        bad = write_config(tmp_path / "bad.toml", {"spool": {"max_count": -1}})
        assert_clear_failure(feederd("spool", "stats", config=bad), 2, "spool.max_count")

    def test_a_missing_config_file_exits_2_naming_it(self, tmp_path: Path) -> None:
        missing = tmp_path / "nowhere.toml"
        assert_clear_failure(feederd("doctor", config=missing), 2, str(missing))


# --- classify -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scene() -> ModuleType:
    """tools/make_demo_assets.py, which rendered the demo clip (it knows where the birds are)."""
    spec = importlib.util.spec_from_file_location("make_demo_assets",
                                                  REPO / "tools" / "make_demo_assets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, scene: ModuleType) -> dict[str, Path]:
    """Square photos cut from the demo clip: the cardinal on the tray at 8 s, and the same
    place with the tray empty at 0 s."""
    frames = []
    capture = cv2.VideoCapture(str(demo_clip_path()))
    for _ in range(81):
        ok, frame = capture.read()
        assert ok, "the demo clip is shorter than 8 s"
        frames.append(frame)
    capture.release()
    visit = scene.VISITS[0]
    assert visit.kind == "cardinal"
    x, y, facing, pose = scene.pose_at(visit, 80 / scene.FPS, 80)
    box = scene.draw_animal(scene.make_background(), visit.kind, x, y, 1.0, facing, pose)
    folder = tmp_path_factory.mktemp("photos")
    out = {"cardinal": folder / "cardinal.png", "empty": folder / "empty tray.jpg"}
    cv2.imwrite(str(out["cardinal"]), square_crop(frames[80], box, 1.6))
    cv2.imwrite(str(out["empty"]), square_crop(frames[0], box, 1.6))
    return out


class TestClassify:
    @pytest.fixture
    def config(self, tmp_path: Path) -> Path:
        """The cartoon photos need the cartoon model (run's default is AIY Birds V1)."""
        return write_config(tmp_path / "feederd.toml", {
            "state_dir": str(tmp_path / "state"),
            "classifier": {"model": str(demo_model_path())},
        })

    def test_a_bird_photo_is_named_in_json(self, config: Path, photos: dict[str, Path]) -> None:
        (result,) = json_out(feederd("classify", str(photos["cardinal"]), "--json",
                                     config=config))
        assert result["image"] == str(photos["cardinal"])
        assert result["label"] == "cardinal"
        assert set(result) == {"image", "label", "display_name", "scientific_name",
                               "confidence", "margin", "top"}
        assert len(result["top"]) == 3 and result["top"]["cardinal"] == result["confidence"]

    def test_several_images_give_one_result_each_in_order(self, config: Path,
                                                          photos: dict[str, Path]) -> None:
        results = json_out(feederd("classify", str(photos["cardinal"]), str(photos["empty"]),
                                   "--json", "--top-k", "2", config=config))
        assert [r["label"] for r in results] == ["cardinal", "other"]
        assert all(len(r["top"]) == 2 for r in results)

    def test_the_text_output_is_one_line_per_image(self, config: Path,
                                                   photos: dict[str, Path]) -> None:
        proc = feederd("classify", str(photos["cardinal"]), config=config)
        assert proc.returncode == 0
        assert proc.stdout.startswith(f"{photos['cardinal']}: cardinal (")

    def test_a_file_that_is_not_an_image_exits_2_naming_it(self, config: Path,
                                                           photos: dict[str, Path]) -> None:
        proc = feederd("classify", str(photos["cardinal"]), str(config), config=config)
        assert_clear_failure(proc, 2, str(config))
        assert proc.stdout == ""

    def test_a_missing_image_exits_2_naming_it(self, config: Path, tmp_path: Path) -> None:
        missing = tmp_path / "nowhere.jpg"
        assert_clear_failure(feederd("classify", str(missing), config=config), 2,
                             str(missing), "no such")


@pytest.mark.shared_data
class TestClassifyWithTheDefaultModel:
    def test_a_real_blue_jay_is_named_for_people_with_its_label_beside(
            self, config: Path, shared_data: Path) -> None:
        photo = shared_data / "images" / "bird" / "blue_jay" / "serizba_visi_0007.jpg"
        (result,) = json_out(feederd("classify", str(photo), "--json", config=config))
        assert (result["label"], result["display_name"], result["scientific_name"]) == (
            "blue_jay", "Blue Jay", "Cyanocitta cristata")
        text = feederd("classify", str(photo), config=config).stdout
        assert text.startswith(f"{photo}: Blue Jay [blue_jay] (")


# --- model ----------------------------------------------------------------------------------

def with_version(source: Path, version: str, out: Path) -> Path:
    """A copy of a real bundle whose metadata says ``version`` (parent: the old version)."""
    model = onnx.load(str(source))
    meta = {p.key.removeprefix(METADATA_PREFIX): json.loads(p.value)
            for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}
    write_metadata(model, {**meta, "version": version, "parent_version": meta["version"]})
    onnx.save(model, str(out))
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bundles")
    first = shutil.copy(demo_model_path(), folder / "first.onnx")
    second = with_version(Path(first), "demo-2", folder / "second.onnx")
    data = with_version(Path(first), "demo-3", folder / "third.onnx").read_bytes()
    truncated = folder / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    return {"first": Path(first), "second": second, "truncated": truncated}


def versions(config: Path) -> list[tuple[str, bool, bool]]:
    """(version, current, previous) of every installed model, as ``model ls --json`` says."""
    return sorted((e["version"], e["current"], e["previous"])
                  for e in json_out(feederd("model", "ls", "--json", config=config)))


class TestModel:
    def test_nothing_is_installed_on_a_fresh_device(self, config: Path) -> None:
        assert json_out(feederd("model", "ls", "--json", config=config)) == []

    def test_ls_shows_common_names_with_the_label_beside_them(self, config: Path) -> None:
        feederd("model", "install", str(default_model_path()), "--json", config=config)
        text = feederd("model", "ls", config=config).stdout
        assert "version         aiy-birds-v1" in text
        assert "labels          965: Cassin's Finch (cassins_finch), Limpkin (limpkin)," in text
        assert "and 957 more" in text

    def test_install_ls_and_rollback_round_trip(self, config: Path,
                                                bundles: dict[str, Path]) -> None:
        first = json_out(feederd("model", "install", str(bundles["first"]), "--json",
                                 config=config))
        assert first["installed"] == "demo-1" and first["previous"] is None
        second = json_out(feederd("model", "install", str(bundles["second"]), "--json",
                                  config=config))
        assert second["installed"] == "demo-2" and second["previous"] == "demo-1"
        assert versions(config) == [("demo-1", False, True), ("demo-2", True, False)]

        back = json_out(feederd("model", "rollback", "--json", config=config))
        assert (back["current"], back["previous"]) == ("demo-1", "demo-2")
        assert versions(config) == [("demo-1", True, False), ("demo-2", False, True)]
        again = json_out(feederd("model", "rollback", "--json", config=config))
        assert (again["current"], again["previous"]) == ("demo-2", "demo-1")

    def test_a_truncated_bundle_is_refused_with_2_and_current_is_unchanged(
            self, config: Path, bundles: dict[str, Path]) -> None:
        json_out(feederd("model", "install", str(bundles["first"]), "--json", config=config))
        models = state_of(config.parent) / "models"
        proc = feederd("model", "install", str(bundles["truncated"]), config=config)
        assert_clear_failure(proc, 2, str(bundles["truncated"]))
        assert os.readlink(models / "current") == "demo-1.onnx"
        assert versions(config) == [("demo-1", True, False)]
        assert sorted(p.name for p in models.glob("*.onnx")) == ["demo-1.onnx"]

    def test_rollback_with_no_previous_model_exits_2(self, config: Path) -> None:
        assert_clear_failure(feederd("model", "rollback", config=config), 2, "no previous")

    def test_installing_a_missing_file_exits_2_naming_it(self, config: Path,
                                                         tmp_path: Path) -> None:
        missing = tmp_path / "nowhere.onnx"
        assert_clear_failure(feederd("model", "install", str(missing), config=config), 2,
                             str(missing))


# --- spool ----------------------------------------------------------------------------------

class TestSpool:
    def test_stats_before_the_first_sample_are_zeros_and_say_why(self, config: Path) -> None:
        stats = json_out(feederd("spool", "stats", "--json", config=config))
        assert (stats["samples"], stats["bytes"], stats["last_seq"]) == (0, 0, 0)
        assert stats["spool_id"] is None
        assert "no spool" in stats["note"]
        assert not (state_of(config.parent) / "spool").exists(), "stats must not create it"

    def test_ls_before_the_first_sample_is_empty(self, config: Path) -> None:
        assert json_out(feederd("spool", "ls", "--json", config=config)) == []

    def test_stats_of_an_existing_spool_carry_its_id(self, config: Path) -> None:
        Spool(state_of(config.parent) / "spool", SpoolConfig()).close()
        stats = json_out(feederd("spool", "stats", "--json", config=config))
        assert stats["samples"] == 0 and stats["spool_id"]

    def test_show_of_an_unknown_sample_exits_2(self, config: Path) -> None:
        Spool(state_of(config.parent) / "spool", SpoolConfig()).close()
        assert_clear_failure(feederd("spool", "show", "7", config=config), 2, "7")

    def test_show_without_a_spool_exits_2_saying_so(self, config: Path) -> None:
        assert_clear_failure(feederd("spool", "show", "7", config=config), 2, "no spool")

    def test_ack_beyond_the_last_sequence_exits_2(self, config: Path) -> None:
        Spool(state_of(config.parent) / "spool", SpoolConfig()).close()
        assert_clear_failure(feederd("spool", "ack", "5", config=config), 2, "seq 5")


# --- reply ----------------------------------------------------------------------------------

@pytest.fixture
def listening(broker: Mosquitto) -> Iterator[Probe]:
    probe = Probe(broker, "#")
    yield probe
    probe.close()


class TestReply:
    def test_without_a_reachable_broker_it_exits_1_with_a_message(self, config: Path) -> None:
        proc = feederd("reply", "latest", "--not-a-bird", config=config)
        assert_clear_failure(proc, 1, "127.0.0.1", "broker")
        assert proc.stdout == ""

    def test_a_reply_no_device_answers_reaches_the_feedback_topic_and_exits_1(
            self, tmp_path: Path, broker: Mosquitto, listening: Probe) -> None:
        config = write_config(tmp_path / "feederd.toml", {
            "state_dir": str(tmp_path / "state"),
            "mqtt": {"host": broker.host, "port": broker.port, "device_id": "cli-test"},
        })
        proc = feederd("reply", "latest", "--species", "blue_jay", "--json", "--timeout", "1",
                       config=config)
        assert_clear_failure(proc, 1, "did not answer", "cli-test")
        (message,) = listening.wait_for("feederd/cli-test/feedback")
        assert json.loads(message.payload)["label"] == "blue_jay"

    def test_a_malformed_event_id_exits_2(self, config: Path) -> None:
        assert_clear_failure(feederd("reply", "no such event", "--correct", config=config),
                             2, "no such event")
