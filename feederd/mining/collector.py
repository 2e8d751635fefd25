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
from dataclasses import dataclass, replace
from typing import Any

from feederd.bundle import Bundle
from feederd.config import MiningConfig
from feederd.errors import UnknownEventError
from feederd.mining.decisions import (
    Candidate,
    Reason,
    feedback_frames,
    mine_feedback,
    mine_visit,
    priority,
)
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

_SPOOL_RELABEL: dict[str, Reason] = {"not_a_bird": "rejected", "species": "corrected",
                                     "correct": "confirmed"}


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
        # Replies to visits still open: (the reply, frame seqs it already stored). The rest
        # of the visit is labelled when it closes (a squirrel stays long after its alert).
        self._open_replies: OrderedDict[str, tuple[Feedback, set[int]]] = OrderedDict()
        self.counters: Counter[str] = Counter()
        self._last_empty_scene = -float("inf")
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
            reply = self._open_replies.pop(summary.event_id, None)
        candidates = mine_visit(frames, self._cfg, frozenset(self._bundle.negative_labels),
                                negative_label=self.negative_label, alerted=summary.alerted,
                                empty_scene=self._empty_scene_due())
        if reply is not None:
            candidates = self._under_reply(frames, candidates, *reply)
        keep = {c.frame.seq for c in candidates} | set(feedback_frames(frames, self._cfg))
        self._recent.close(summary.event_id, keep=keep)
        stored = self._store(summary.event_id, candidates, summary.model_version)
        if reply is not None:
            logger.info("visit %s closed after its reply %s: %d more samples",
                        summary.event_id, reply[0].verdict, stored)

    def _under_reply(self, frames: Sequence[ClassifiedFrame], mined: Sequence[Candidate],
                     feedback: Feedback, stored: set[int]) -> list[Candidate]:
        """A visit's samples at close when the owner replied while it was open: the reply's
        samples over the whole visit first, then the mined ones labelled as the reply says
        (as :meth:`_relabel_spooled` does after close); none the reply already stored."""
        label = self._reply_label(feedback)
        chosen = mine_feedback(frames, feedback.verdict, label, self.negative_label, self._cfg)
        taken = stored | {c.frame.seq for c in chosen}
        target = self.negative_label if feedback.verdict == "not_a_bird" else label
        predicted = self._relabel_scope(feedback.verdict, label)
        out = [c for c in chosen if c.frame.seq not in stored]
        for cand in (c for c in mined if c.frame.seq not in taken):
            applies = target is not None and (predicted is None
                                               or cand.frame.prediction.label in predicted)
            out.append(_labelled(cand, target, _SPOOL_RELABEL[feedback.verdict])
                       if applies and target is not None else cand)
        return out

    def _empty_scene_due(self) -> bool:
        """Whether a visit may give an empty_scene sample now: one per
        ``mining.empty_scene_interval_s`` at most, so an empty feeder's shadows cost a few
        small writes an hour, never one a visit."""
        interval = self._cfg.empty_scene_interval_s
        return interval > 0 and time.monotonic() - self._last_empty_scene >= interval

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
            if "empty_scene" in candidate.reasons:
                self._last_empty_scene = time.monotonic()
                self.counters["empty_scenes"] += 1
        self.counters["mined"] += stored
        return stored

    # --- replies from the owner ---------------------------------------------------------------

    def handle(self, feedback: Feedback) -> None:
        """Turn a reply into labelled samples; FeedbackError (its subclasses UnknownEventError,
        UnknownSpeciesError) for unknown events or labels."""
        event_id = self._resolve(feedback.event_id)
        feedback = replace(feedback, event_id=event_id)
        label = self._reply_label(feedback)
        alert = self._alerts.get(event_id)
        frames = self._recent.frames(event_id) or []
        target = self.negative_label if feedback.verdict == "not_a_bird" else label
        relabelled = self._relabel_spooled(event_id, feedback.verdict, target)
        candidates = mine_feedback(frames, feedback.verdict, label, self.negative_label,
                                   self._cfg)
        stored = self._store(event_id, candidates, alert.model_version if alert else "")
        with self._lock:
            if event_id not in self._visits:  # still open: the rest is labelled at close
                self._open_replies[event_id] = (feedback, {c.frame.seq for c in candidates})
                _trim(self._open_replies)
        self.counters[f"feedback_{feedback.verdict}"] += 1
        if feedback.verdict == "not_a_bird" and alert is not None:
            self.counters["false_alerts_rejected"] += 1
        logger.info("reply %s on %s: %d new samples, %d relabelled", feedback.verdict,
                    event_id, stored, relabelled)

    def _reply_label(self, feedback: Feedback) -> str | None:
        """The label a reply gives: a species canonicalised, ``correct`` the alerted one."""
        if feedback.verdict == "species":
            return canonical_label(feedback.label or "", self._bundle.labels)
        alert = self._alerts.get(feedback.event_id)
        if feedback.verdict == "correct" and feedback.label is None and alert is not None:
            return alert.label
        return feedback.label

    def _relabel_scope(self, verdict: str, label: str | None) -> set[str] | None:
        """Which predicted classes a reply relabels (``None``: all)."""
        if verdict == "species":
            return set(self._bundle.labels) - set(self._bundle.negative_labels)
        if verdict == "correct":
            return {label} if label is not None else set()
        return None

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
        return self._spool.label_visit(event_id, label, "user", _SPOOL_RELABEL[verdict],
                                       predicted=self._relabel_scope(verdict, label))

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


def _labelled(candidate: Candidate, label: str, reason: Reason) -> Candidate:
    """A mined candidate as the owner's reply labels it (as ``Spool.label_visit`` would)."""
    reasons = candidate.reasons + (() if reason in candidate.reasons else (reason,))
    pred = candidate.frame.prediction
    return replace(candidate, reasons=reasons, label=label, label_source="user",
                   priority=priority(reasons, "user", pred.task_confidence, pred.task_margin))


def _trim(mapping: OrderedDict[str, Any]) -> None:
    while len(mapping) > _MAX_REMEMBERED:
        mapping.popitem(last=False)
