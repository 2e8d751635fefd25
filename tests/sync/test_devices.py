"""``feeder-sync init --host/--local`` writes the ``[devices.NAME]`` entry pull and push need."""

from __future__ import annotations

from pathlib import Path

import pytest

from feederd.sync.cli import main
from feederd.sync.config import load_config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "feeder-sync.toml"
    path.write_text(f'# my laptop\nworkspace = "{tmp_path / "ws"}"\n\n[training]\n'
                    "tolerance = 0.05  # kept\n")
    return path


def test_init_with_host_writes_an_ssh_device_and_keeps_the_rest(config: Path) -> None:
    assert main(["init", "--config", str(config), "--device", "pi", "--host",
                 "pi@feeder.local", "--feederd-config", "/etc/feederd/feederd.toml"]) == 0
    loaded, _ = load_config(config)
    device = loaded.devices["pi"]
    assert (device.transport, device.host, device.feederd_config) == \
        ("ssh", "pi@feeder.local", "/etc/feederd/feederd.toml")
    assert loaded.training.tolerance == 0.05
    assert "# my laptop" in config.read_text() and "# kept" in config.read_text()


def test_init_with_local_writes_a_local_device_with_an_absolute_path(
        config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--config", str(config), "--local", "state"]) == 0
    device = load_config(config)[0].devices["feeder"]
    assert (device.transport, device.path) == ("local", str(tmp_path / "state"))


def test_a_new_config_file_is_created_with_the_device(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.toml"
    assert main(["init", "--config", str(path), "--host", "feeder"]) == 0
    assert path.read_text() == '[devices.feeder]\ntransport = "ssh"\nhost = "feeder"\n'


def test_the_same_entry_again_changes_nothing_and_a_different_one_is_refused(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--config", str(config), "--host", "pi@a"]) == 0
    before = config.read_text()
    assert main(["init", "--config", str(config), "--host", "pi@a"]) == 0
    assert main(["init", "--config", str(config), "--host", "pi@b"]) == 2
    assert config.read_text() == before
    assert "[devices.feeder] already exists" in capsys.readouterr().err


def test_a_host_that_looks_like_an_ssh_option_is_refused(config: Path) -> None:
    before = config.read_text()
    assert main(["init", "--config", str(config), "--host=-oProxyCommand=x"]) == 2
    assert config.read_text() == before


def test_init_without_a_device_or_the_baseline_flags_names_what_is_missing(
        config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--config", str(config), "--device", "pi", "--backbone",
                 "b.onnx"]) == 2
    err = capsys.readouterr().err
    assert "--embedding-output" in err and "--data" in err
