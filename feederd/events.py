"""Hand-off from the frame loop to everything slow (JPEG encoding, MQTT, mining, spool).

The frame loop must never wait on I/O, so it only puts events on a bounded queue; one worker
thread delivers them to the handlers in order. Per-frame events are dropped (and counted)
when the queue is full; alerts and visit summaries wait briefly for room, because losing them
would be visible to the owner. A replay run as fast as possible (``lossless``) has no live
camera to keep up with, so there the frame loop waits for room instead of dropping.

An alert is lost if the process dies before it is on disk, so ``first`` handlers (the MQTT
outbox) get each new alert from the worker before anything else it has queued (per-frame
events, an earlier visit's mining) and before the snapshot is encoded; then every handler gets
it in order. The window between the decision and the outbox is one thread hand-off, the rest
of the item the worker is busy with, and one SQLite commit (docs/DESIGN.md gives the figures).
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
from collections import deque
from collections.abc import Sequence
from typing import IO, Any, Protocol

from feederd.mqtt.messages import alert_payload, visit_payload
from feederd.types import Alert, ClassifiedFrame, VisitSummary

logger = logging.getLogger(__name__)


class PipelineEvents(Protocol):
    """What the frame loop reports; every consumer implements the subset it needs."""

    def on_classified(self, frame: ClassifiedFrame) -> None: ...

    def on_alert(self, alert: Alert) -> None: ...

    def on_visit_closed(self, summary: VisitSummary,
                        frames: Sequence[ClassifiedFrame]) -> None: ...


class AlertStore(Protocol):
    """A handler that must have each alert before anything slow happens (the outbox)."""

    def store_alert(self, alert: Alert) -> None: ...


class EventQueue:
    """A bounded queue and one worker thread in front of a list of handlers."""

    _STOP = object()
    _WAKE = object()

    def __init__(self, handlers: Sequence[PipelineEvents], maxsize: int = 256,
                 important_wait_s: float = 2.0, lossless: bool = False,
                 first: Sequence[AlertStore] = ()) -> None:
        self._handlers = list(handlers)
        self._first = list(first)
        self._alerts: deque[Alert] = deque()  # for ``first``: one per visit at most
        self._lossless = lossless
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._wait = important_wait_s
        self._thread = threading.Thread(target=self._work, name="feederd-events", daemon=True)
        self.dropped = 0
        self.handler_errors = 0

    def add_handler(self, handler: PipelineEvents) -> None:
        self._handlers.append(handler)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Deliver what is queued, then end the worker."""
        if not self._thread.is_alive():
            return
        self._queue.put(self._STOP, timeout=timeout)
        self._thread.join(timeout)

    def on_classified(self, frame: ClassifiedFrame) -> None:
        if self._lossless:
            self._queue.put(("on_classified", (frame,)))
            return
        try:
            self._queue.put_nowait(("on_classified", (frame,)))
        except queue.Full:
            self.dropped += 1

    def on_alert(self, alert: Alert) -> None:
        if self._first:
            self._alerts.append(alert)
            with contextlib.suppress(queue.Full):  # full: the worker is busy, and it takes
                self._queue.put_nowait(self._WAKE)  # the alert before its next item anyway
        self._put_important("on_alert", (alert,))

    def on_visit_closed(self, summary: VisitSummary, frames: Sequence[ClassifiedFrame]) -> None:
        self._put_important("on_visit_closed", (summary, frames))

    def _put_important(self, method: str, args: tuple[Any, ...]) -> None:
        try:
            self._queue.put((method, args), timeout=None if self._lossless else self._wait)
        except queue.Full:
            self.dropped += 1
            logger.error("event queue full: %s dropped; a consumer is stuck", method)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            self._store_alerts()
            if item is self._STOP:
                return
            if item is not self._WAKE:
                method, args = item
                for handler in self._handlers:
                    self._deliver(handler, method, args)

    def _store_alerts(self) -> None:
        """New alerts to the ``first`` handlers, ahead of every event queued before them."""
        while self._alerts:
            alert = self._alerts.popleft()
            for store in self._first:
                self._deliver(store, "store_alert", (alert,))

    def _deliver(self, handler: Any, method: str, args: tuple[Any, ...]) -> None:
        try:
            getattr(handler, method)(*args)
        except Exception:
            self.handler_errors += 1
            logger.exception("%s.%s failed; continuing", type(handler).__name__, method)


class JsonLinesSink:
    """Writes alerts (and optionally visit summaries) as JSON lines: the demo's output."""

    def __init__(self, stream: IO[str], visits: bool = False) -> None:
        self._stream = stream
        self._visits = visits

    def on_classified(self, frame: ClassifiedFrame) -> None:
        return None

    def on_alert(self, alert: Alert) -> None:
        self.write_alert(alert, {})

    def write_alert(self, alert: Alert, extra: dict[str, Any]) -> None:
        self._write({"type": "alert", **alert_payload(alert), **extra})

    def on_visit_closed(self, summary: VisitSummary, frames: Sequence[ClassifiedFrame]) -> None:
        if self._visits:
            self._write({"type": "visit", **visit_payload(summary)})

    def _write(self, record: dict[str, Any]) -> None:
        self._stream.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        self._stream.flush()


class AlertLink(Protocol):
    """The part of the MQTT link the events need (kept abstract: events know no paho)."""

    def publish_alert(self, alert: Alert, snapshot_jpeg: bytes | None, *,
                      snapshot_follows: bool = False) -> None: ...

    def publish_snapshot(self, event_id: str, snapshot_jpeg: bytes | None) -> None: ...

    def publish_visit(self, summary: VisitSummary) -> None: ...


class LinkEvents:
    """Forwards alerts (with a JPEG snapshot, encoded here, off the frame loop) and visits.

    As an :class:`EventQueue` ``first`` handler it stores each alert the moment it is decided
    and sends the snapshot when it is encoded; the link still delivers the snapshot first.
    """

    def __init__(self, link: AlertLink, snapshot_width: int, snapshot_quality: int) -> None:
        self._link = link
        self._width = snapshot_width
        self._quality = snapshot_quality
        self._stored: deque[str] = deque(maxlen=64)  # alerts store_alert has handled

    def on_classified(self, frame: ClassifiedFrame) -> None:
        return None

    def store_alert(self, alert: Alert) -> None:
        self._link.publish_alert(alert, None, snapshot_follows=alert.snapshot is not None)
        self._stored.append(alert.event_id)

    def on_alert(self, alert: Alert) -> None:
        jpeg = None
        if alert.snapshot is not None:
            jpeg = encode_snapshot(alert.snapshot, self._width, self._quality)
        if alert.event_id in self._stored:
            if alert.snapshot is not None:
                self._link.publish_snapshot(alert.event_id, jpeg)
            return
        self._link.publish_alert(alert, jpeg)

    def on_visit_closed(self, summary: VisitSummary, frames: Sequence[ClassifiedFrame]) -> None:
        self._link.publish_visit(summary)


def encode_snapshot(image: Any, width: int, quality: int) -> bytes | None:
    """A JPEG no wider than ``width`` (Home Assistant shows it; the SD card never sees it)."""
    import cv2

    h, w = image.shape[:2]
    if w > width:
        image = cv2.resize(image, (width, max(1, round(h * width / w))),
                           interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else None
