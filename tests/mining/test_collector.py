"""The collector remembers recent alerts for replies, and nothing of them a reply does not need."""

from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path

import numpy as np

from feederd.assets import demo_model_path
from feederd.bundle import read_bundle
from feederd.config import MiningConfig
from feederd.mining.collector import Collector
from feederd.mining.recent import RecentVisits
from feederd.mqtt.feedback import LATEST
from feederd.types import Alert, new_event_id


def collector() -> Collector:
    recent = RecentVisits(2**20, 3600.0, 90)
    return Collector(MiningConfig(), recent, None, read_bundle(demo_model_path()))


def alert(snapshot: np.ndarray | None = None, label: str = "cardinal") -> Alert:
    now = time.time()
    return Alert(new_event_id(now), now, label, 0.9, 0.5, 6, "demo-1", snapshot=snapshot)


def test_an_alerts_full_resolution_snapshot_is_not_kept_once_handled(tmp_path: Path) -> None:
    kept = collector()
    snapshot = np.zeros((720, 1280, 3), np.uint8)
    watch = weakref.ref(snapshot)
    raised = alert(snapshot)
    kept.on_alert(raised)
    del snapshot, raised
    gc.collect()
    assert watch() is None, "the collector still holds the 2.7 MB frame"


def test_recent_alerts_are_bounded_and_the_newest_stay() -> None:
    kept = collector()
    raised = [alert() for _ in range(2500)]
    for one in raised:
        kept.on_alert(one)
    assert kept._resolve(raised[-1].event_id) == raised[-1].event_id
    assert kept._resolve(LATEST) == raised[-1].event_id
    assert len(kept._alerts) <= 2000
