"""feeder-sync's config file and the per-device workspace."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from feederd.errors import ConfigError, SyncError
from feederd.sync.workspace import (
    SampleIndex,
    Workspace,
    load_config,
    pick_device,
    training_label,
)


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


class TestWorkspace:
    def test_state_is_written_atomically_and_read_back(self, tmp_path: Path) -> None:
        ws = Workspace(tmp_path, "pi").create()
        ws.update_state(deployed="v2")
        assert json.loads(ws.state_path.read_text())["deployed"] == "v2"
        assert not [p for p in ws.dir.iterdir() if p.name.endswith(".tmp")]

    def test_a_second_command_on_the_same_device_fails_at_once(self, tmp_path: Path) -> None:
        ws = Workspace(tmp_path, "pi").create()
        errors: list[Exception] = []

        def second() -> None:
            try:
                with ws.lock():
                    pass
            except SyncError as exc:
                errors.append(exc)

        with ws.lock():
            thread = threading.Thread(target=second)
            thread.start()
            thread.join()
        assert errors and "another feeder-sync command" in str(errors[0])

    def test_a_missing_workspace_says_to_run_init(self, tmp_path: Path) -> None:
        with pytest.raises(SyncError, match="feeder-sync init --device pi"):
            Workspace(tmp_path, "pi").require()

    def test_history_is_bounded(self, tmp_path: Path) -> None:
        ws = Workspace(tmp_path, "pi").create()
        for n in range(210):
            ws.record("pull", n=n)
        history = ws.load_state()["history"]
        assert len(history) == 200 and history[-1]["n"] == 209


ROW = {"id": 7, "sha256": "a" * 64, "seq": 3, "size": 10, "file": "samples/x.jpg",
       "label": None, "label_source": None, "reasons": ["low_margin"], "probs": {"jay": 0.5}}


class TestSampleIndex:
    def test_a_resent_sample_is_updated_and_keeps_its_review(self, tmp_path: Path) -> None:
        with SampleIndex(tmp_path / "s.db") as index:
            assert index.commit([ROW], "spool-a", 3) == 1
            index.set_review("7", "a" * 64, "jay", "owner")
            assert index.commit([{**ROW, "seq": 9, "label": "other", "label_source": "user"}],
                                "spool-a", 9) == 0
            [row] = index.all()
            assert (row["seq"], row["label"], row["review_label"]) == (9, "other", "jay")
            assert index.cursor() == ("spool-a", 9)

    def test_the_owner_review_wins_and_pseudo_labels_wait(self) -> None:
        assert training_label({"label": "other", "label_source": "user"}) == "other"
        assert training_label({"label": "jay", "label_source": "pseudo"}) is None
        assert training_label({"label": "jay", "label_source": "pseudo"}, True) == "jay"
        assert training_label({"label": "other", "label_source": "user",
                               "review_source": "owner", "review_label": "jay"}) == "jay"
        assert training_label({"label": "other", "label_source": "user",
                               "review_source": "excluded", "review_label": None}) is None
