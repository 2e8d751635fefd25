"""The housekeeping jobs on apscheduler's thread, against real parts: a real RecentVisits, a
real Spool on disk, the real Collector as the stats source and a real MQTT link to Mosquitto.

The daemon is the jobs' target in production; here :class:`Target` plays it with the same real
stages the daemon wires, and counts what the jobs asked of it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from brokers import Mosquitto, Probe, wait_until

from feederd.assets import demo_model_path
from feederd.classifier import Classifier
from feederd.config import HomeAssistantConfig, JobsConfig, MiningConfig, MqttConfig, SpoolConfig
from feederd.jobs import Jobs
from feederd.mining.collector import Collector
from feederd.mining.decisions import Candidate, priority
from feederd.mining.recent import RecentVisits
from feederd.mqtt import MqttLink
from feederd.spool import Spool
from feederd.types import ClassifiedFrame, Prediction

DEVICE = "feeder1"
STATS_TOPIC = f"feederd/{DEVICE}/stats"
LABELS = ("blue_jay", "other")


# --- real parts ---------------------------------------------------------------------------------

def picture(seed: int, side: int = 48) -> np.ndarray:
    """A small BGR picture, different (to a perceptual hash) for each seed."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8), (side, side))


def frame(visit: str, seq: int, mono: float) -> ClassifiedFrame:
    prediction = Prediction(LABELS, (0.55, 0.45), np.array([0.55, 0.45], np.float32))
    return ClassifiedFrame(visit, seq, mono, time.time(), prediction, None, picture(seq), True)


def candidate(seq: int, label_source: str | None = None) -> Candidate:
    """A low-margin sample of its own visit; owner-labelled ``other`` if ``label_source``."""
    label = "other" if label_source else None
    reasons: tuple[Any, ...] = ("low_margin",) if label_source is None else ("rejected",)
    prio = priority(reasons, label_source, 0.55, 0.1)
    rng = np.random.default_rng(seq)
    return Candidate(frame(f"visit-{seq}", seq, 0.0), reasons, label, label_source,  # type: ignore[arg-type]
                     prio, int(rng.integers(0, 2**63)))


def jpeg(seq: int) -> bytes:
    return cv2.imencode(".jpg", picture(seq))[1].tobytes()


def spool_config(**kw: Any) -> SpoolConfig:
    return SpoolConfig(**{"commit_interval_s": 600.0, "min_free_bytes": 0, **kw})


def open_spool(directory: Path, **kw: Any) -> Spool:
    return Spool(directory, spool_config(**kw), labels=LABELS, dedup_distance=0)


class Target:
    """What the jobs see of the daemon, made of real stages; counts the calls it gets."""

    def __init__(self, spool: Spool | None, recent: RecentVisits, mqtt: MqttLink | None = None,
                 collector: Collector | None = None, fail_stats: int = 0) -> None:
        self.spool = spool
        self.recent = recent
        self.mqtt = mqtt
        self.collector = collector
        self.fail_stats = fail_stats
        self.stats_calls = 0
        self.model_checks = 0
        self._lock = threading.Lock()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self.stats_calls += 1
            calls = self.stats_calls
        if calls <= self.fail_stats:
            raise RuntimeError("the stats source is broken this time")
        out: dict[str, Any] = {"frames": 1234, "uptime_s": 5.0}
        if self.collector is not None:
            out.update(self.collector.stats())
        return out

    def check_model(self, force: bool = False) -> bool:
        with self._lock:
            self.model_checks += 1
        return False

    def write_health(self) -> None:
        return None


def jobs_config(**kw: float) -> JobsConfig:
    """Every job as rare as allowed unless named: a test sees only the jobs it is about."""
    return JobsConfig(**{"stats_interval_s": 3600.0, "prune_interval_s": 3600.0,
                         "maintenance_interval_s": 86400.0, "model_watch_interval_s": 3600.0,
                         **kw})


@pytest.fixture
def running() -> Iterator[list[Jobs]]:
    """Jobs started by a test are stopped after it, whatever happens."""
    started: list[Jobs] = []
    yield started
    for jobs in started:
        jobs.stop()


def start(running: list[Jobs], cfg: JobsConfig, target: Target) -> Jobs:
    jobs = Jobs(cfg, target)
    jobs.start()
    running.append(jobs)
    return jobs


@pytest.fixture
def link(broker: Mosquitto, tmp_path: Path) -> Iterator[tuple[MqttLink, Collector]]:
    """A connected MQTT link whose feedback goes to a real Collector (spool in tmp_path)."""
    spool = open_spool(tmp_path / "spool")
    recent = RecentVisits(2**20, 3600.0, 90)
    collector = Collector(MiningConfig(), recent, spool, Classifier(demo_model_path()).bundle)
    cfg = MqttConfig(host=broker.host, port=broker.port, device_id=DEVICE,
                     reconnect_min_s=0.2, reconnect_max_s=1.0)
    mqtt = MqttLink(cfg, HomeAssistantConfig(enabled=False), "", tmp_path / "outbox.db",
                    collector, sw_version="test")
    mqtt.start()
    wait_until(lambda: mqtt.connected, 15, "the MQTT link to connect")
    yield mqtt, collector
    mqtt.stop()
    spool.close()


# --- prune ---------------------------------------------------------------------------------------

def test_prune_runs_on_the_scheduler_and_forgets_recent_visits_older_than_their_age_limit(
        running: list[Jobs]) -> None:
    recent = RecentVisits(10 * 2**20, max_age_s=60.0, jpeg_quality=90)
    now = time.monotonic()
    for seq in range(3):
        recent.add(frame("old", seq, now - 120.0))
        recent.add(frame("new", 10 + seq, now))
    start(running, jobs_config(prune_interval_s=1.0), Target(None, recent))
    wait_until(lambda: recent.frames("old") is None, 10, "the old visit to expire")
    assert [f.seq for f in recent.frames("new") or []] == [10, 11, 12]


def test_prune_brings_a_spool_over_a_lowered_quota_back_under_it_keeping_owner_labels(
        tmp_path: Path) -> None:
    """The quota is enforced after each batch; prune is what catches a spool found over its
    bound otherwise, e.g. when the owner lowered ``spool.max_count`` between two runs."""
    with open_spool(tmp_path / "spool", max_count=100) as spool:
        for seq in range(30):
            spool.put(candidate(seq, "user" if seq % 6 == 0 else None), jpeg(seq), "m1")
        assert spool.flush() == 30
    spool = open_spool(tmp_path / "spool", max_count=20)
    try:
        target = Target(spool, RecentVisits(2**20, 3600.0, 90))
        Jobs(jobs_config(), target).prune()
        kept = spool.ls(limit=1000)
        assert len(kept) <= 19  # evicted down to 95% of the bound
        assert sum(s.label_source == "user" for s in kept) == 5  # owner labels go last
        files = {p.name for p in (tmp_path / "spool" / "samples").iterdir()}
        assert files == {s.path for s in kept}
    finally:
        spool.close()


# --- stats ---------------------------------------------------------------------------------------

def test_stats_are_published_each_period_with_the_spool_and_reply_figures(
        running: list[Jobs], broker: Mosquitto, link: tuple[MqttLink, Collector]) -> None:
    mqtt, collector = link
    probe = Probe(broker, STATS_TOPIC)
    try:
        target = Target(None, RecentVisits(2**20, 3600.0, 90), mqtt, collector)
        start(running, jobs_config(stats_interval_s=1.0), target)
        messages = probe.wait_for(STATS_TOPIC, 2, 15)
    finally:
        probe.close()
    stats = json.loads(messages[-1].payload)
    assert stats["frames"] == 1234
    assert stats["spool_samples"] == 0 and stats["false_alerts_rejected"] == 0
    assert stats["spool_paused"] is False and stats["spool_pauses"] == 0
    assert "outbox_pending" in stats["mqtt"]


def test_a_job_that_raises_is_logged_and_runs_again_next_period(
        running: list[Jobs], broker: Mosquitto, link: tuple[MqttLink, Collector],
        caplog: pytest.LogCaptureFixture) -> None:
    mqtt, collector = link
    probe = Probe(broker, STATS_TOPIC)
    caplog.set_level(logging.ERROR, logger="feederd.jobs")
    try:
        target = Target(None, RecentVisits(2**20, 3600.0, 90), mqtt, collector, fail_stats=1)
        start(running, jobs_config(stats_interval_s=1.0), target)
        probe.wait_for(STATS_TOPIC, 1, 15)
    finally:
        probe.close()
    [failure] = [r for r in caplog.records if r.name == "feederd.jobs"]
    assert "job publish_stats failed; it runs again next period" in failure.getMessage()
    assert failure.exc_info is not None and "stats source is broken" in str(failure.exc_info[1])
    assert target.stats_calls >= 2


# --- model watch, maintenance, stop ---------------------------------------------------------------

def test_the_model_watch_asks_the_daemon_to_check_its_model_each_period(
        running: list[Jobs]) -> None:
    target = Target(None, RecentVisits(2**20, 3600.0, 90))
    start(running, jobs_config(model_watch_interval_s=1.0), target)
    wait_until(lambda: target.model_checks >= 2, 10, "two model checks")


def test_maintenance_runs_the_spools_sqlite_maintenance_and_keeps_every_sample(
        tmp_path: Path) -> None:
    with open_spool(tmp_path / "spool") as spool:
        for seq in range(10):
            spool.put(candidate(seq), jpeg(seq), "m1")
        spool.flush()
        wal = tmp_path / "spool" / "spool.db-wal"
        assert wal.stat().st_size > 0
        Jobs(jobs_config(), Target(spool, RecentVisits(2**20, 3600.0, 90))).maintain()
        assert wal.stat().st_size == 0  # the WAL was folded into the index
        assert len(spool.ls(limit=100)) == 10


def test_after_stop_no_job_runs_again(running: list[Jobs]) -> None:
    """The daemon stops the jobs before it closes the spool and the MQTT link they use."""
    target = Target(None, RecentVisits(2**20, 3600.0, 90))
    jobs = start(running, jobs_config(model_watch_interval_s=1.0), target)
    wait_until(lambda: target.model_checks >= 1, 10, "a model check")
    jobs.stop()
    checks = target.model_checks
    time.sleep(1.5)
    assert target.model_checks == checks
