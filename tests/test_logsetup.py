"""Logging set-up: journald detection, one line per event, per-module levels, redaction."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from feederd.config import LoggingConfig
from feederd.logsetup import (
    RedactSecrets,
    forget_secrets,
    journald_stream,
    redact,
    register_secret,
    setup_logging,
    teardown_logging,
)

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} ")


@pytest.fixture(autouse=True)
def clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    root_level = logging.getLogger().level
    yield
    teardown_logging()
    forget_secrets()
    logging.getLogger().setLevel(root_level)


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[TextIO]:
    """A real file as the log stream, so it has a device and an inode like journald's socket."""
    with open(tmp_path / "log.txt", "w+", encoding="utf-8") as stream:
        yield stream


def lines(stream: TextIO) -> list[str]:
    stream.flush()
    stream.seek(0)
    return stream.read().splitlines()


def journal_id(stream: TextIO) -> str:
    st = os.fstat(stream.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def test_outside_systemd_lines_carry_a_timestamp(log_file: TextIO) -> None:
    setup_logging(LoggingConfig(), log_file)
    logging.getLogger("feederd.test").info("visit %d closed", 7)
    [line] = lines(log_file)
    assert STAMP.match(line)
    assert line.endswith("INFO feederd.test: visit 7 closed")


def test_under_journald_lines_have_no_timestamp_but_a_priority_prefix(
        log_file: TextIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", journal_id(log_file))
    setup_logging(LoggingConfig(), log_file)
    logging.getLogger("feederd.test").warning("broker away")
    logging.getLogger("feederd.test").info("broker back")
    assert lines(log_file) == ["<4>WARNING feederd.test: broker away",
                               "<6>INFO feederd.test: broker back"]


def test_journal_stream_of_another_file_is_not_journald(
        log_file: TextIO, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "other", "w", encoding="utf-8") as other:
        monkeypatch.setenv("JOURNAL_STREAM", journal_id(other))
    assert not journald_stream(log_file)
    setup_logging(LoggingConfig(), log_file)
    logging.getLogger("feederd.test").info("x")
    assert STAMP.match(lines(log_file)[0])


def test_a_stream_without_a_file_descriptor_is_not_journald(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    assert not journald_stream(io.StringIO())


def test_a_systemd_service_without_journal_stream_gets_no_timestamps(
        log_file: TextIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
    setup_logging(LoggingConfig(), log_file)
    logging.getLogger("feederd.test").info("started")
    assert lines(log_file) == ["INFO feederd.test: started"]


def test_timestamps_yes_overrides_journald(
        log_file: TextIO, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", journal_id(log_file))
    setup_logging(LoggingConfig(timestamps="yes"), log_file)
    logging.getLogger("feederd.test").info("x")
    assert STAMP.match(lines(log_file)[0].removeprefix("<6>"))


def test_timestamps_no_overrides_a_terminal_or_file(log_file: TextIO) -> None:
    setup_logging(LoggingConfig(timestamps="no"), log_file)
    logging.getLogger("feederd.test").info("x")
    assert lines(log_file) == ["INFO feederd.test: x"]


def test_a_traceback_stays_on_one_line(log_file: TextIO) -> None:
    setup_logging(LoggingConfig(timestamps="no"), log_file)
    try:
        raise ValueError("bad frame\nsecond line")
    except ValueError:
        logging.getLogger("feederd.test").exception("frame loop failed")
    [line] = lines(log_file)
    assert line.startswith("ERROR feederd.test: frame loop failed | Traceback")
    assert line.endswith("ValueError: bad frame | second line")


def test_levels_are_set_per_module(log_file: TextIO) -> None:
    cfg = LoggingConfig(level="WARNING", levels={"feederd.mqtt": "DEBUG"})
    setup_logging(cfg, log_file)
    logging.getLogger("feederd.mqtt").debug("connack")
    logging.getLogger("feederd.mqtt.outbox").debug("queued")  # children inherit the level
    logging.getLogger("feederd.spool").info("committed")  # below the root level
    logging.getLogger("feederd.spool").warning("disk low")
    assert [line.split(": ", 1)[1] for line in lines(log_file)] == [
        "connack", "queued", "disk low"]


def test_setting_up_again_replaces_handler_and_levels(log_file: TextIO) -> None:
    setup_logging(LoggingConfig(levels={"feederd.mqtt": "DEBUG"}), log_file)
    setup_logging(LoggingConfig(timestamps="no"), log_file)  # a SIGHUP reload
    logging.getLogger("feederd.mqtt").debug("hidden now")
    logging.getLogger("feederd.mqtt").info("once")
    assert lines(log_file) == ["INFO feederd.mqtt: once"]


def test_a_registered_secret_is_redacted_from_message_and_arguments(log_file: TextIO) -> None:
    setup_logging(LoggingConfig(timestamps="no"), log_file)
    register_secret("hunter2")
    log = logging.getLogger("feederd.test")
    log.info("connecting with password hunter2")
    log.info("credentials: %s", {"user": "feeder", "password": "hunter2"})
    text = "\n".join(lines(log_file))
    assert "hunter2" not in text
    assert "password ***" in text
    assert "'password': '***'" in text


def test_a_secret_inside_a_traceback_is_redacted(log_file: TextIO) -> None:
    setup_logging(LoggingConfig(timestamps="no"), log_file)
    register_secret("s3cr3t!")
    try:
        raise ConnectionError("auth failed for s3cr3t!")
    except ConnectionError:
        logging.getLogger("feederd.test").exception("broker")
    [line] = lines(log_file)
    assert "s3cr3t!" not in line
    assert "auth failed for ***" in line


def test_escaped_forms_of_a_secret_are_redacted_too(log_file: TextIO) -> None:
    setup_logging(LoggingConfig(timestamps="no"), log_file)
    register_secret("p@ss word\n")
    logging.getLogger("feederd.test").info("url %s repr %r", "mqtt://u:p%40ss%20word%0A@h",
                                          "p@ss word\n")
    [line] = lines(log_file)
    assert "p%40ss" not in line and "ss word" not in line
    assert line == "INFO feederd.test: url mqtt://u:***@h repr '***'"


def test_handlers_installed_by_others_never_see_a_secret(
        log_file: TextIO, caplog: pytest.LogCaptureFixture) -> None:
    # pytest's capture handler sits on the root logger before ours and formats on its own.
    setup_logging(LoggingConfig(timestamps="no"), log_file)
    register_secret("topsecret")
    logging.getLogger("feederd.test").warning("got %s", "topsecret")
    assert "topsecret" not in "\n".join(lines(log_file))
    assert "got ***" in caplog.text
    assert "topsecret" not in caplog.text


def test_the_filter_redacts_records_made_before_logging_was_set_up() -> None:
    record = logging.LogRecord("feederd.test", logging.INFO, __file__, 1, "pw=%s",
                               ("early",), None)
    register_secret("early")
    assert RedactSecrets().filter(record)
    assert record.getMessage() == "pw=***"


def test_empty_secrets_are_ignored_and_redact_works_on_plain_text() -> None:
    register_secret("")
    assert redact("nothing to hide") == "nothing to hide"
    register_secret("abc")
    register_secret("abcdef")  # the longer one is replaced whole
    assert redact("x abcdef y abc") == "x *** y ***"


def test_a_malformed_log_call_neither_raises_nor_leaks(log_file: TextIO) -> None:
    setup_logging(LoggingConfig(timestamps="no"), log_file)
    register_secret("hunter2")
    logging.getLogger("feederd.test").info("count %d", "hunter2")
    [line] = lines(log_file)
    assert "hunter2" not in line
    assert line == "INFO feederd.test: count %d % ('***',)"
