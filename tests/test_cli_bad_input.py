"""Bad config and input give exit 2 with a message naming the key or file, never a traceback
(issue 9, item 12): each case runs the real ``feederd`` command."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from daemonproc import write_config
from prerequisites import require_root
from test_cli import assert_clear_failure, feederd, with_version

from feederd.assets import demo_clip_path, demo_model_path

# Root reads anything; without these two capabilities it meets permissions as a user would.
AS_A_USER = (["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
             if os.geteuid() == 0 else [])


def quiet_config(tmp_path: Path, **sections: object) -> Path:
    """A config whose state lives in ``tmp_path/state``, without a broker."""
    values: dict[str, object] = {"state_dir": str(tmp_path / "state"),
                                 "mqtt": {"enabled": False}}
    values.update(sections)
    return write_config(tmp_path / "feederd.toml", values)


def feederd_as_user(*args: str, config: Path) -> object:
    import subprocess
    import sys

    clean = {k: v for k, v in os.environ.items() if not k.startswith("FEEDERD_")}
    return subprocess.run([*AS_A_USER, sys.executable, "-m", "feederd.cli", *args,
                           "--config", str(config)], capture_output=True, text=True,
                          timeout=120, env=clean)


class TestTheEnvironment:
    def test_malformed_json_in_ignore_masks_names_the_variable(self, tmp_path: Path) -> None:
        proc = feederd("check-config", env={"FEEDERD_MOTION__IGNORE_MASKS": "[[0,0"},
                       config=quiet_config(tmp_path))
        assert_clear_failure(proc, 2, "FEEDERD_MOTION__IGNORE_MASKS", "JSON")

    @pytest.mark.parametrize("name, hint", [
        ("FEEDERD_NOSECTION__X", "names no config section"),
        ("FEEDERD_MQTT_HOST", "did you mean FEEDERD_MQTT__HOST"),
        ("FEEDERD_MQTT__HOTS", "FEEDERD_MQTT__HOTS: this environment variable names no"),
    ])
    def test_a_variable_naming_no_key_is_an_error_like_an_unknown_key(
            self, tmp_path: Path, name: str, hint: str) -> None:
        proc = feederd("check-config", env={name: "broker.lan"}, config=quiet_config(tmp_path))
        assert_clear_failure(proc, 2, hint)

    def test_variables_naming_real_keys_and_test_knobs_are_accepted(self, tmp_path: Path) -> None:
        proc = feederd("check-config", config=quiet_config(tmp_path), env={
            "FEEDERD_MQTT__HOST": "broker.lan", "FEEDERD_STATE_DIR": str(tmp_path),
            "FEEDERD_LOGGING__LEVELS__feederd.mqtt": "DEBUG",
            "FEEDERD_REQUIRE_SHARED_DATA": "1", "FEEDERD_FAULT_SENDER_HANG_AFTER": "0"})
        assert proc.returncode == 0, proc.stderr


class TestTheStateDirectory:
    def test_a_state_dir_under_a_file_is_refused_naming_the_key(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("")
        config = quiet_config(tmp_path, state_dir=str(tmp_path / "file" / "state"))
        assert_clear_failure(feederd("run", config=config), 2, "state_dir", "Not a directory")

    def test_a_state_dir_this_user_cannot_create_is_refused(self, tmp_path: Path) -> None:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        config = quiet_config(tmp_path, state_dir=str(locked / "state"))
        assert_clear_failure(feederd_as_user("run", config=config), 2,  # type: ignore[arg-type]
                             "state_dir", str(locked / "state"))


class TestTheCamera:
    def test_a_video_file_this_user_cannot_read_is_refused_naming_it(self, tmp_path: Path
                                                                    ) -> None:
        clip = Path(shutil.copy(demo_clip_path(), tmp_path / "clip.mp4"))
        clip.chmod(0)
        config = quiet_config(tmp_path, camera={"source": str(clip)})
        assert_clear_failure(feederd_as_user("run", config=config), 2,  # type: ignore[arg-type]
                             "camera.source", "permission denied", str(clip))

    def test_a_video_device_this_user_cannot_open_is_refused(self, tmp_path: Path) -> None:
        node = Path("/dev/video57")
        require_root("making a /dev/video57 node")
        if node.exists():
            pytest.skip("this machine has a /dev/video57")
        os.mknod(node, 0o660 | stat.S_IFCHR, os.makedev(81, 57))
        try:
            os.chown(node, 65534, 65534)  # the video group's node, not this user's
            config = quiet_config(tmp_path, camera={"source": "57"})
            proc = feederd_as_user("run", config=config)
        finally:
            node.unlink()
        assert_clear_failure(proc, 2, "/dev/video57", "video' group")  # type: ignore[arg-type]

    def test_a_folder_of_only_undecodable_images_exits_2_like_an_empty_one(
            self, tmp_path: Path) -> None:
        photos = tmp_path / "photos"
        photos.mkdir()
        (photos / "a.jpg").write_bytes(b"not a jpeg")
        (photos / "b.png").write_bytes(b"\x89PNG broken")
        config = quiet_config(tmp_path, camera={"kind": "folder", "source": str(photos)})
        assert_clear_failure(feederd("run", config=config), 2, str(photos), "decoded")

    def test_picamera2_with_a_webcam_index_fails_check_config(self, tmp_path: Path) -> None:
        config = quiet_config(tmp_path, camera={"kind": "picamera2", "source": "0"})
        assert_clear_failure(feederd("check-config", config=config), 2, "camera",
                             "kind = 'opencv'")


def test_a_bundle_whose_version_is_too_long_for_a_file_name_is_refused(tmp_path: Path) -> None:
    bundle = with_version(demo_model_path(), "v" * 5000, tmp_path / "long.onnx")
    proc = feederd("model", "install", str(bundle), config=quiet_config(tmp_path))
    assert_clear_failure(proc, 2, str(bundle), "feederd.version")
    assert not list((tmp_path / "state" / "models").glob("*.onnx"))


class TestCheckConfigJson:
    def test_an_invalid_file_prints_its_errors_as_json_and_exits_2(self, tmp_path: Path) -> None:
        import json

        bad = write_config(tmp_path / "bad.toml", {"mqtt": {"port": 0, "hots": "x"}})
        proc = feederd("check-config", "--json", str(bad))
        assert proc.returncode == 2
        report = json.loads(proc.stdout)
        assert report["valid"] is False and report["file"] == str(bad)
        assert sorted(e.split(":")[0] for e in report["errors"]) == ["mqtt.hots", "mqtt.port"]

    def test_json_may_come_before_the_command(self, tmp_path: Path) -> None:
        import json

        proc = feederd("--json", "check-config", config=quiet_config(tmp_path))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["state_dir"] == str(tmp_path / "state")
