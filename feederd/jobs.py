"""Periodic housekeeping on apscheduler's background thread, never on the frame loop.

Each job is short and guarded: an exception is logged and the job runs again next period, so
a full disk or a broker outage cannot stop the housekeeping for good.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from apscheduler.schedulers.background import BackgroundScheduler

from feederd.config import JobsConfig

logger = logging.getLogger(__name__)
# apscheduler logs every start, stop and run at INFO; a feeder's journal needs none of that.
logging.getLogger("apscheduler").setLevel(logging.WARNING)

HEALTH_INTERVAL_S = 5.0  # how often the health file is compared (it is written on change only)


class JobTarget(Protocol):
    """What the jobs need of the daemon."""

    def stats(self) -> dict[str, Any]: ...

    def check_model(self, force: bool = False) -> bool: ...

    def write_health(self) -> None: ...

    @property
    def mqtt(self) -> Any: ...

    @property
    def spool(self) -> Any: ...

    @property
    def recent(self) -> Any: ...


class Jobs:
    """Prune recent frames and the spool, publish stats, watch the model, maintain SQLite."""

    def __init__(self, cfg: JobsConfig, target: JobTarget) -> None:
        self._target = target
        self._scheduler = BackgroundScheduler(daemon=True, job_defaults={
            "coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
        self._add(self.prune, cfg.prune_interval_s)
        self._add(self.publish_stats, cfg.stats_interval_s)
        self._add(self.watch_model, cfg.model_watch_interval_s)
        self._add(self.maintain, cfg.maintenance_interval_s)
        self._add(self.write_health, min(cfg.stats_interval_s, HEALTH_INTERVAL_S))

    def _add(self, job: Callable[[], Any], seconds: float) -> None:
        self._scheduler.add_job(_guarded(job), "interval", seconds=seconds,
                                id=job.__name__, name=job.__name__)

    def start(self) -> None:
        self._scheduler.start()

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)

    def prune(self) -> None:
        expired = self._target.recent.expire(time.monotonic())
        evicted = self._target.spool.enforce_quota() if self._target.spool else 0
        if expired or evicted:
            logger.info("pruned %d recent frames, evicted %d spool samples", expired, evicted)

    def publish_stats(self) -> None:
        stats = self._target.stats()
        if self._target.mqtt is not None:
            self._target.mqtt.publish_stats(stats)
        logger.debug("stats: %s", stats)

    def write_health(self) -> None:
        self._target.write_health()

    def watch_model(self) -> None:
        self._target.check_model()

    def maintain(self) -> None:
        if self._target.spool is not None:
            self._target.spool.maintain()


def _guarded(job: Callable[[], Any]) -> Callable[[], None]:
    def run() -> None:
        try:
            job()
        except Exception:
            logger.exception("job %s failed; it runs again next period", job.__name__)

    run.__name__ = job.__name__
    return run
