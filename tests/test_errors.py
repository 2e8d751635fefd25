"""The one mapping from errors to exit codes that both command lines use."""

from __future__ import annotations

import pytest

from feederd.errors import (
    CameraError,
    ConfigError,
    FeedbackError,
    ModelError,
    MqttError,
    SpoolError,
    SyncError,
    TransportError,
    cli_failure,
    exit_code,
)


@pytest.mark.parametrize("error", [ConfigError("x"), CameraError("x"), ModelError("x"),
                                   SpoolError("x"), FeedbackError("x"), SyncError("x")])
def test_what_the_user_can_fix_exits_2(error: Exception) -> None:
    assert exit_code(error) == 2


@pytest.mark.parametrize("error", [MqttError("x"), TransportError("x"), RuntimeError("bug"),
                                   OSError(5, "I/O error")])
def test_an_unreachable_part_or_a_bug_exits_1(error: Exception) -> None:
    assert exit_code(error) == 1


def test_ctrl_c_exits_130(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_failure("feederd", "run", KeyboardInterrupt()) == 130
    assert capsys.readouterr().err == ""


def test_a_config_error_prints_each_problem_on_its_own_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    error = ConfigError("2 problems", ["mqtt.port: too big", "camera.kind: unknown"])
    assert cli_failure("feeder-sync", "pull", error) == 2
    assert capsys.readouterr().err == ("feeder-sync: mqtt.port: too big\n"
                                       "feeder-sync: camera.kind: unknown\n")


def test_a_bug_is_logged_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        assert cli_failure("feeder-sync", "train", exc) == 1
    [record] = caplog.records
    assert "feeder-sync train failed unexpectedly" in record.getMessage()
    assert record.exc_info is not None and "boom" in str(record.exc_info[1])
