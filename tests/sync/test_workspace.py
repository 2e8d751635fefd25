"""The per-device workspace: its state, its history and its lock."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from feederd.errors import SyncError
from feederd.sync.workspace import Workspace


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
