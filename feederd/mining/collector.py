"""Collects the model's mistakes: recent frames, mining at visit close, and owner replies.

This is the one place where the pure mining decisions meet storage: the frame loop's events
arrive here (on the events thread) and replies arrive from MQTT (on its thread), so every
shared structure is behind a lock or thread-safe on its own.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feederd.bundle import Bundle
from feederd.config import MiningConfig
from feederd.errors import UnknownEventError
from feederd.mining.decisions import Candidate, feedback_frames, mine_feedback, mine_visit
from feederd.mining.recent import RecentVisits
from feederd.mqtt.feedback import LATEST, Feedback, canonical_label
from feederd.spool import Spool
from feederd.task import generic_negative
from feederd.types import Alert, ClassifiedFrame, VisitSummary

logger = logging.getLogger(__name__)

_MAX_REMEMBERED = 2000
_MAX_ALERT_BYTES = 2**20  # what a reply needs of recent alerts, a few hundred bytes each


@dataclass(frozen=True, slots=True)
class _AlertFacts:
    """What a reply needs of an alert; never its snapshot (2.7 MB at 1280x720)."""

    label: str
    model_version: str

    def size(self, event_id: str) -> int:
        return 200 + len(event_id) + len(self.label) + len(self.model_version)

_SPOOL_RELABEL = {"not_a_bird": "rejected", "species": "corrected", "correct": "confirmed"}


class Collector:
    """Events handler (recent frames, mining) and MQTT feedback handler in one."""

    def __init__(self, cfg: MiningConfig, recent: RecentVisits, spool: Spool | None,
                 bundle: Bundle) -> None:
        self._cfg = cfg
        self._recent = recent
        self._spool = spool
        self._lock = threading.Lock()
        self._alerts: OrderedDict[str, _AlertFacts] = OrderedDict()
        self._alert_bytes = 0
        self._visits: OrderedDict[str, float] = OrderedDict()
        self.counters: Counter[str] = Counter()
        self.set_bundle(bundle)

    def set_bundle(self, bundle: Bundle) -> None:
        self._bundle = bundle
        if self._spool is not None:
            self._spool.labels = bundle.labels

    @property
    def negative_label(self) -> str:
        """The class a rejected or flicker-negative frame is taught as: the model's catch-all
        negative class (``other``, ``background``...), never an arbitrary raw class."""
        return generic_negative(self._bundle.negative_labels)

    # --- events from the frame loop -----------------------------------------------------------

    def on_classified(self, frame: ClassifiedFrame) -> None:
        self._recent.add(frame)

    def on_alert(self, alert: Alert) -> None:
        facts = _AlertFacts(alert.label, alert.model_version)
        with self._lock:
            if (old := self._alerts.pop(alert.event_id, None)) is not None:
                self._alert_bytes -= old.size(alert.event_id)
            self._alerts[alert.event_id] = facts
            self._alert_bytes += facts.size(alert.event_id)
            while len(self._alerts) > _MAX_REMEMBERED or self._alert_bytes > _MAX_ALERT_BYTES:
                event_id, gone = self._alerts.popitem(last=False)
                self._alert_bytes -= gone.size(event_id)

    def on_visit_closed(self, summary: VisitSummary, frames: Sequence[ClassifiedFrame]) -> None:
        with self._lock:
            self._visits[summary.event_id] = time.time()
            _trim(self._visits)
        candidates = mine_visit(frames, self._cfg, frozenset(self._bundle.negative_labels),
                                negative_label=self.negative_label, alerted=summary.alerted)
        keep = {c.frame.seq for c in candidates} | set(feedback_frames(frames, self._cfg))
        self._recent.close(summary.event_id, keep=keep)
        self._store(summary.event_id, candidates, summary.model_version)

    def _store(self, visit_id: str, candidates: Sequence[Candidate], version: str) -> int:
        if self._spool is None:
            return 0
        stored = 0
        for candidate in candidates:
            jpeg = self._recent.jpeg(visit_id, candidate.frame.seq)
            if jpeg is None:
                continue
            self._spool.put(candidate, jpeg, version or self._bundle.version)
            stored += 1
        self.counters["mined"] += stored
        return stored

    # --- replies from the owner ---------------------------------------------------------------

    def handle(self, feedback: Feedback) -> None:
        """Turn a reply into labelled samples; FeedbackError (its subclasses UnknownEventError,
        UnknownSpeciesError) for unknown events or labels."""
        event_id = self._resolve(feedback.event_id)
        label = feedback.label
        if feedback.verdict == "species":
            label = canonical_label(label or "", self._bundle.labels)
        alert = self._alerts.get(event_id)
        if feedback.verdict == "correct" and label is None and alert is not None:
            label = alert.label
        frames = self._recent.frames(event_id) or []
        target = self.negative_label if feedback.verdict == "not_a_bird" else label
        relabelled = self._relabel_spooled(event_id, feedback.verdict, target)
        candidates = mine_feedback(frames, feedback.verdict, label, self.negative_label,
                                   self._cfg)
        stored = self._store(event_id, candidates, alert.model_version if alert else "")
        self.counters[f"feedback_{feedback.verdict}"] += 1
        if feedback.verdict == "not_a_bird" and alert is not None:
            self.counters["false_alerts_rejected"] += 1
        logger.info("reply %s on %s: %d new samples, %d relabelled", feedback.verdict,
                    event_id, stored, relabelled)

    def _resolve(self, event_id: str) -> str:
        with self._lock:
            if event_id == LATEST:
                if not self._alerts:
                    raise UnknownEventError("no alert yet to reply to")
                return next(reversed(self._alerts))
            if event_id in self._alerts or event_id in self._visits:
                return event_id
        if self._recent.frames(event_id) is not None:
            return event_id
        raise UnknownEventError(f"unknown or expired event {event_id}")

    def _relabel_spooled(self, event_id: str, verdict: str, label: str | None) -> int:
        if self._spool is None or label is None:
            return 0
        predicted: set[str] | None = None
        if verdict == "species":
            predicted = set(self._bundle.labels) - set(self._bundle.negative_labels)
        elif verdict == "correct":
            predicted = {label}
        return self._spool.label_visit(event_id, label, "user", _SPOOL_RELABEL[verdict],
                                       predicted=predicted)

    # --- figures ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        out.setdefault("false_alerts_rejected", 0)
        out["recent"] = self._recent.stats()
        if self._spool is not None:
            spool = self._spool.stats()
            out["spool_samples"] = spool["samples"]
            out["spool_bytes"] = spool["bytes"]
            out["spool_max_bytes"] = spool["max_bytes"]
            out["spool_paused"] = spool["paused"]
            out["spool_labelled_user"] = spool["labelled_user"]
            out["spool_pauses"] = spool["pauses"]  # disk-full pauses since start
            out["spool_dropped_paused"] = spool["dropped_paused"]
        return out


def _trim(mapping: OrderedDict[str, Any]) -> None:
    while len(mapping) > _MAX_REMEMBERED:
        mapping.popitem(last=False)
