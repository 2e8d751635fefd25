"""Configuration: strict TOML, environment overrides, messages that name the key and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from feederd.config import Settings, load_settings
from feederd.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "feederd.toml"
    path.write_text(text)
    return path


class TestLoading:
    def test_an_empty_file_gives_the_demo_defaults(self, tmp_path):
        settings = load_settings(write(tmp_path, ""))
        assert settings.camera.source == "demo"
        assert settings.mqtt.port == 1883

    def test_file_values_are_read(self, tmp_path):
        settings = load_settings(write(tmp_path, "[mqtt]\nhost = 'broker.lan'\nport = 8883\n"))
        assert (settings.mqtt.host, settings.mqtt.port) == ("broker.lan", 8883)

    def test_the_environment_overrides_the_file(self, tmp_path, monkeypatch):
        monkeypatch.setenv("FEEDERD_MQTT__PORT", "9999")
        settings = load_settings(write(tmp_path, "[mqtt]\nport = 8883\n"))
        assert settings.mqtt.port == 9999

    def test_a_password_comes_from_the_environment(self, tmp_path, monkeypatch):
        monkeypatch.setenv("FEEDERD_MQTT__PASSWORD", "s3cret")
        settings = load_settings(write(tmp_path, "[mqtt]\nusername = 'feeder'\n"))
        assert settings.mqtt_password() == "s3cret"
        assert "s3cret" not in repr(settings)

    def test_a_whole_section_as_json_takes_its_keys_over_it(self, tmp_path, monkeypatch):
        monkeypatch.setenv("FEEDERD_MQTT", '{"host": "broker.lan", "port": 8883}')
        monkeypatch.setenv("FEEDERD_MQTT__PORT", "9999")
        settings = load_settings(write(tmp_path, "[mqtt]\nkeepalive_s = 30\n"))
        assert (settings.mqtt.host, settings.mqtt.port) == ("broker.lan", 9999)

    def test_lists_and_per_module_levels_come_from_the_environment(self, tmp_path,
                                                                   monkeypatch):
        monkeypatch.setenv("FEEDERD_VISITS__SPECIES", '["blue_jay"]')
        monkeypatch.setenv("FEEDERD_LOGGING__LEVELS__feederd.MQTT", "DEBUG")
        settings = load_settings(write(tmp_path, ""))
        assert settings.visits.species == ["blue_jay"]
        assert settings.logging.levels == {"feederd.mqtt": "DEBUG"}

    def test_settings_built_in_code_read_the_environment_too(self, monkeypatch):
        monkeypatch.setenv("FEEDERD_MQTT__PORT", "9999")
        assert Settings(mqtt={"port": 8883}).mqtt.port == 9999

    def test_the_daemon_imports_no_pydantic_settings(self):
        code = "import sys, feederd.daemon; print('pydantic_settings' in sys.modules)"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=60, check=True)
        assert result.stdout.strip() == "False"

    def test_a_password_comes_from_a_systemd_credential(self, tmp_path, monkeypatch):
        (tmp_path / "mqtt_password").write_text("from-cred\n")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
        settings = load_settings(write(tmp_path, "[mqtt]\nusername = 'feeder'\n"))
        assert settings.mqtt_password() == "from-cred"


class TestErrors:
    def problems(self, tmp_path: Path, text: str) -> list[str]:
        with pytest.raises(ConfigError) as info:
            load_settings(write(tmp_path, text))
        return info.value.problems

    def test_an_unknown_key_is_named_with_the_allowed_ones(self, tmp_path):
        [problem] = self.problems(tmp_path, "[mqtt]\nhots = 'x'\n")
        assert problem.startswith("mqtt.hots: unknown key")
        assert "host" in problem and "port" in problem

    def test_an_unknown_section_is_an_error(self, tmp_path):
        [problem] = self.problems(tmp_path, "[camrea]\nfps = 5\n")
        assert problem.startswith("camrea: unknown key")

    def test_a_value_out_of_range_says_what_is_allowed(self, tmp_path):
        [problem] = self.problems(tmp_path, "[mqtt]\nport = 70000\n")
        assert problem.startswith("mqtt.port:") and "65535" in problem

    def test_a_value_of_the_wrong_type_is_named(self, tmp_path):
        [problem] = self.problems(tmp_path, "[visits]\nclassify_fps = 'fast'\n")
        assert problem.startswith("visits.classify_fps:")

    def test_every_problem_is_reported_at_once(self, tmp_path):
        found = self.problems(tmp_path, "[mqtt]\nport = 0\n[motion]\nthreshold = 300\n")
        assert {p.split(":")[0] for p in found} == {"mqtt.port", "motion.threshold"}

    def test_a_password_in_the_file_is_refused(self, tmp_path):
        [problem] = self.problems(tmp_path, "[mqtt]\nusername='u'\npassword = 'x'\n")
        assert "FEEDERD_MQTT__PASSWORD" in problem

    def test_cross_field_rules_speak_plainly(self, tmp_path):
        [problem] = self.problems(tmp_path, "[mqtt]\ncert_file = '/x.pem'\n")
        assert "cert_file and key_file must be given together" in problem

    def test_broken_toml_names_the_file(self, tmp_path):
        [problem] = self.problems(tmp_path, "[mqtt\n")
        assert "feederd.toml" in problem and "TOML" in problem

    def test_a_list_that_is_not_json_names_the_variable(self, tmp_path, monkeypatch):
        monkeypatch.setenv("FEEDERD_VISITS__SPECIES", "blue_jay")
        with pytest.raises(ConfigError) as info:
            load_settings(write(tmp_path, ""))
        [problem] = info.value.problems
        assert problem.startswith("FEEDERD_VISITS__SPECIES: not valid JSON")

    def test_a_missing_file_names_the_file(self, tmp_path):
        with pytest.raises(ConfigError, match="no such config file"):
            load_settings(tmp_path / "absent.toml")


class TestCheckConfigCommand:
    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "feederd.cli", "check-config", *args],
                              capture_output=True, text=True, timeout=60)

    def test_a_valid_file_exits_0(self, tmp_path):
        result = self.run(str(write(tmp_path, "[camera]\nfps = 5\n")))
        assert result.returncode == 0, result.stderr

    def test_an_invalid_file_prints_each_problem_and_exits_2(self, tmp_path):
        result = self.run(str(write(tmp_path, "[mqtt]\nport = 0\nhots = 1\n")))
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert any(line.startswith("feederd: mqtt.port:") for line in lines)
        assert any(line.startswith("feederd: mqtt.hots: unknown key") for line in lines)
