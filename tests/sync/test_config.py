"""feeder-sync's config file: its defaults, its errors, and which device a command means."""

from __future__ import annotations

from pathlib import Path

import pytest

from feederd.errors import ConfigError
from feederd.sync.config import load_config, pick_device


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


class TestConfig:
    def test_no_file_means_defaults(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                    ) -> None:
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
        monkeypatch.delenv("FEEDER_SYNC_CONFIG", raising=False)
        config, path = load_config()
        assert path == tmp_path / "feeder-sync" / "config.toml"
        assert config.devices == {} and config.training.neg_per_pos == 3
        assert config.training.tolerance == 0.02

    def test_the_environment_names_the_file(self, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
        file = write(tmp_path / "c.toml", 'workspace = "~/ws"\n[devices.pi]\nhost = "pi@x"\n')
        monkeypatch.setenv("FEEDER_SYNC_CONFIG", str(file))
        config, _ = load_config()
        assert config.devices["pi"].host == "pi@x" and config.devices["pi"].transport == "ssh"
        assert config.workspace == Path.home() / "ws"

    def test_an_unknown_key_is_named(self, tmp_path: Path) -> None:
        file = write(tmp_path / "c.toml", "[training]\nneg_per_positive = 3\n")
        with pytest.raises(ConfigError, match=r"training\.neg_per_positive"):
            load_config(file)

    def test_a_missing_explicit_file_is_an_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="no such feeder-sync config"):
            load_config(tmp_path / "nope.toml")

    def test_a_host_that_looks_like_an_option_is_refused(self, tmp_path: Path) -> None:
        file = write(tmp_path / "c.toml", '[devices.pi]\nhost = "-oProxyCommand=x"\n')
        with pytest.raises(ConfigError, match="must not start with '-'"):
            load_config(file)

    def test_the_only_device_is_the_default(self, tmp_path: Path) -> None:
        file = write(tmp_path / "c.toml", f'workspace = "{tmp_path}"\n[devices.pi]\n')
        config, _ = load_config(file)
        assert pick_device(config, None) == "pi"

    def test_several_devices_need_a_choice(self, tmp_path: Path) -> None:
        file = write(tmp_path / "c.toml", f'workspace = "{tmp_path}"\n[devices.a]\n'
                     "[devices.b]\n")
        config, _ = load_config(file)
        with pytest.raises(ConfigError, match="choose one with --device"):
            pick_device(config, None)
