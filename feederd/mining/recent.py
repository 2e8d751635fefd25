"""Frames of recent visits, kept so that a reply arriving minutes or hours later can label them.

Bounded by bytes and by age; thread-safe (the frame loop adds, the feedback handler and the
jobs read and expire).

Each crop is JPEG-encoded at most once, and only when needed: encoding every classified frame
would cost a sizeable fraction of a classification, yet a reply turns at most
``max_per_visit`` frames of a visit into samples. So:

- :meth:`RecentVisits.add` keeps the frame as it is (raw crop, counted in ``max_bytes``);
- :meth:`RecentVisits.close`, when the visit ends, keeps only the frames worth waiting for
  (``mining.feedback_frames`` plus the frames mined at close) and encodes those;
- :meth:`RecentVisits.jpeg` encodes a frame on first use if it is still raw;
- raw crops never take more than ``raw_share`` of ``max_bytes``: beyond, the oldest raw crops
  are encoded, so a visit that never closes (or a caller that never calls ``close``) still
  stays within bounds.

The daemon's wiring at visit close is, in short::

    hashes = {}   # frame seq -> dHash, computed once for both selections
    cands = mine_visit(frames, cfg, negatives, hashes=hashes)
    keep = {c.frame.seq for c in cands} | set(feedback_frames(frames, cfg, hashes=hashes))
    recent.close(visit_id, keep)   # an alerted visit; else keep only the candidates
    for c in cands: spool.put(c, recent.jpeg(visit_id, c.frame.seq), version)
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from feederd.types import ClassifiedFrame

logger = logging.getLogger(__name__)

_NO_CROP = np.empty((0, 0, 3), dtype=np.uint8)
_NO_CROP.flags.writeable = False


@dataclass(slots=True)
class _Entry:
    frame: ClassifiedFrame  # crop replaced by _NO_CROP once encoded
    jpeg: bytes | None = None

    @property
    def nbytes(self) -> int:
        """The picture (raw or JPEG) and the arrays that come with it (the model's 965 scores
        and its embedding are ~9 KB a frame, a sizeable share of a JPEG crop)."""
        picture = len(self.jpeg) if self.jpeg is not None else int(self.frame.crop.nbytes)
        prediction = self.frame.prediction
        embedding = prediction.embedding
        return (picture + int(prediction.probs.nbytes)
                + (0 if embedding is None else int(embedding.nbytes)))


@dataclass(slots=True)
class _Visit:
    last_mono: float
    entries: dict[int, _Entry] = field(default_factory=dict)


class RecentVisits:
    """Recent visits' frames, by visit id and frame seq."""

    def __init__(self, max_bytes: int, max_age_s: float, jpeg_quality: int, *,
                 raw_share: float = 0.5) -> None:
        if max_bytes < 0 or max_age_s < 0 or not 1 <= jpeg_quality <= 100:
            raise ValueError("max_bytes and max_age_s must be >= 0, jpeg_quality 1-100")
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.jpeg_quality = jpeg_quality
        self._raw_budget = int(max_bytes * raw_share)
        self._visits: OrderedDict[str, _Visit] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self._raw_bytes = 0
        self.encoded = 0
        self.dropped = 0

    def add(self, frame: ClassifiedFrame) -> None:
        """Keep one classified frame of a visit (the crop stays raw until it is needed)."""
        entry = _Entry(frame)
        with self._lock:
            visit = self._visits.get(frame.visit_id)
            if visit is None:
                visit = self._visits[frame.visit_id] = _Visit(frame.mono)
            old = visit.entries.pop(frame.seq, None)
            if old is not None:
                self._forget(old)
            visit.entries[frame.seq] = entry
            visit.last_mono = max(visit.last_mono, frame.mono)
            self._bytes += entry.nbytes
            self._raw_bytes += entry.nbytes
            to_encode = self._over_raw_budget()
        self._encode(to_encode)
        with self._lock:
            self._enforce_bytes(keep_visit=frame.visit_id)

    def close(self, visit_id: str, keep: Collection[int] | None = None) -> int:
        """The visit is over: keep only frames ``keep`` (``None``: all), encode them; -> kept."""
        with self._lock:
            visit = self._visits.get(visit_id)
            if visit is None:
                return 0
            for seq in [s for s in visit.entries if keep is not None and s not in keep]:
                self._forget(visit.entries.pop(seq))
                self.dropped += 1
            raw = [e for e in visit.entries.values() if e.jpeg is None]
            kept = len(visit.entries)
        self._encode(raw)
        return kept

    def frames(self, visit_id: str) -> list[ClassifiedFrame] | None:
        """The visit's kept frames in seq order (crops decoded from JPEG), ``None`` if unknown."""
        with self._lock:
            visit = self._visits.get(visit_id)
            if visit is None:
                return None
            entries = [(e.frame, e.jpeg) for _, e in sorted(visit.entries.items())]
        return [frame if jpeg is None else replace(frame, crop=_decode(jpeg))
                for frame, jpeg in entries]

    def jpeg(self, visit_id: str, seq: int) -> bytes | None:
        """JPEG bytes of one kept frame (encoded now if still raw), ``None`` if not kept."""
        with self._lock:
            visit = self._visits.get(visit_id)
            entry = visit.entries.get(seq) if visit is not None else None
            if entry is None or entry.jpeg is not None:
                return entry.jpeg if entry is not None else None
        self._encode([entry])
        return entry.jpeg

    def expire(self, now_mono: float) -> int:
        """Forget visits older than ``max_age_s`` and trim to ``max_bytes``; -> frames dropped."""
        with self._lock:
            before = self.dropped
            for visit_id in [v for v, visit in self._visits.items()
                             if now_mono - visit.last_mono > self.max_age_s]:
                self._drop_visit(visit_id)
            self._enforce_bytes(keep_visit=None)
            return self.dropped - before

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"visits": len(self._visits),
                    "frames": sum(len(v.entries) for v in self._visits.values()),
                    "bytes": self._bytes, "raw_bytes": self._raw_bytes,
                    "encoded": self.encoded, "dropped": self.dropped}

    def _encode(self, entries: list[_Entry]) -> None:
        """Encode raw crops outside the lock, then swap them in if still wanted and raw."""
        for entry in entries:
            crop = entry.frame.crop
            if entry.jpeg is not None or crop.size == 0:
                continue
            ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                logger.warning("cannot encode a %s crop as JPEG; frame dropped", crop.shape)
                continue
            with self._lock:
                if entry.jpeg is not None:
                    continue
                raw = entry.nbytes
                entry.jpeg = buf.tobytes()
                entry.frame = replace(entry.frame, crop=_NO_CROP)
                if self._is_live(entry):
                    self._raw_bytes -= raw
                    self._bytes += entry.nbytes - raw
                self.encoded += 1

    def _is_live(self, entry: _Entry) -> bool:
        visit = self._visits.get(entry.frame.visit_id)
        return visit is not None and visit.entries.get(entry.frame.seq) is entry

    def _over_raw_budget(self) -> list[_Entry]:
        """The oldest raw entries whose encoding brings raw bytes back under budget."""
        excess = self._raw_bytes - self._raw_budget
        chosen: list[_Entry] = []
        for visit in self._visits.values():
            for entry in visit.entries.values():
                if excess <= 0:
                    return chosen
                if entry.jpeg is None:
                    chosen.append(entry)
                    excess -= entry.nbytes
        return chosen

    def _enforce_bytes(self, keep_visit: str | None) -> None:
        """Drop the oldest visits (the current one last, frame by frame) until within bytes."""
        while self._bytes > self.max_bytes and self._visits:
            oldest = next(iter(self._visits))
            if oldest != keep_visit:
                self._drop_visit(oldest)
                continue
            if len(self._visits) > 1:
                self._visits.move_to_end(oldest)
                continue
            visit = self._visits[oldest]
            self._forget(visit.entries.pop(next(iter(visit.entries))))
            self.dropped += 1
            if not visit.entries:
                del self._visits[oldest]

    def _drop_visit(self, visit_id: str) -> None:
        visit = self._visits.pop(visit_id)
        for entry in visit.entries.values():
            self._forget(entry)
        self.dropped += len(visit.entries)

    def _forget(self, entry: _Entry) -> None:
        self._bytes -= entry.nbytes
        if entry.jpeg is None:
            self._raw_bytes -= entry.nbytes


def _decode(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, dtype=np.uint8), cv2.IMREAD_COLOR)
    return image if image is not None else _NO_CROP
