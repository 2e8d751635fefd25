"""Owner replies to an alert ("not a bird", "correct", another species), checked at the edge.

Anyone who can publish on the feedback topic can send a reply, so every byte is untrusted. A
reply is parsed once, here, into a small frozen :class:`Feedback`; anything else raises
:class:`~feederd.errors.FeedbackError` with a one-line reason that the MQTT link logs and counts.

Accepted forms (DESIGN.md, "MQTT contract"):

- JSON ``{"event_id": ..., "verdict": "not_a_bird" | "correct" | "species", "label": ...}``.
  ``label`` goes with ``species`` only. ``event_id`` may be left out when MQTT 5 correlation
  data carries it (a native MQTT 5 reply with a JSON body); if both are given they must agree.
- Bare text with MQTT 5 correlation data = the event id: ``not a bird`` (any case; spaces,
  ``_`` or ``-`` between the words), ``correct``, or a species name (verdict ``species``).
  Bare text without correlation data is refused: it would have to guess which alert it means.

The event id ``latest`` stands for the most recent alert, for a client that cannot know the
event id. Home Assistant's "Not a bird" button does know it (its command template reads the
event id of the alert the "Last species" sensor shows) and falls back to ``latest`` only when
that sensor has no alert. The MQTT link resolves ``latest`` to a real id before a
:class:`FeedbackHandler` sees the reply.

Every reply gets a :class:`ReplyResult` (accepted, duplicate, unknown event, unknown species,
invalid, error): the link publishes it retained on ``feedback/result`` and, when an MQTT 5
reply names a response topic, there too, so the replier learns what the device decided and
not only that the broker took the message. A reply repeating the verdict an event already has
is a ``duplicate`` (:class:`ReplyMemory`): counted and mined once.
"""

from __future__ import annotations

import json
import re
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from feederd.errors import FeedbackError, UnknownEventError, UnknownSpeciesError
from feederd.mqtt.messages import iso_time

Verdict = Literal["not_a_bird", "correct", "species"]
VERDICTS: tuple[str, ...] = get_args(Verdict)
Result = Literal["accepted", "duplicate", "unknown_event", "unknown_species", "invalid", "error"]
RESULTS: tuple[str, ...] = get_args(Result)
LATEST = "latest"
MAX_LABEL_CHARS = 64
_MAX_ID_BYTES = 64
_EVENT_ID = re.compile(r"\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{8}")  # feederd.types.new_event_id
_WORD_GAPS = re.compile(r"[\s_-]+")
_BARE_VERDICTS: dict[str, Verdict] = {"not a bird": "not_a_bird", "correct": "correct"}
_JSON_KEYS = ("event_id", "verdict", "label")
_NOT_JSON = object()


@dataclass(frozen=True, slots=True)
class Feedback:
    """One accepted reply: which alert, what the owner says, and when it arrived (Unix time)."""

    event_id: str
    verdict: Verdict
    label: str | None
    received: float


class FeedbackHandler(Protocol):
    """Where accepted replies go (mining and the spool); the MQTT link knows nothing more.

    ``handle`` raises :class:`FeedbackError` for an unknown or expired event or an unknown
    label. Anything else it raises is a bug: the link logs it with its traceback and goes on.
    """

    def handle(self, feedback: Feedback) -> None: ...


def parse_feedback(payload: bytes, correlation_data: bytes | None, max_bytes: int) -> Feedback:
    """Turn one received reply into a :class:`Feedback`, or raise :class:`FeedbackError`."""
    if len(payload) > max_bytes:
        raise FeedbackError(f"reply of {len(payload)} bytes is over the {max_bytes}-byte limit")
    text = _decode(payload, "reply")
    corr_id = None if correlation_data is None else _correlation_id(correlation_data)
    document = _json_document(text)
    if isinstance(document, dict):
        return _from_json(document, corr_id)
    if isinstance(document, str):
        return _from_bare_text(document, corr_id)  # a JSON string holding bare text
    if document is not _NOT_JSON or text.lstrip().startswith(("{", "[")):
        raise FeedbackError(f"reply is neither a JSON object nor bare text: {_show(text)}")
    return _from_bare_text(text, corr_id)


def reply_payload(event_id: str, verdict: str, label: str | None = None) -> str:
    """The JSON reply for ``event_id`` (``feederd reply``, the Home Assistant button, tests).

    It is checked with the same rules as a received reply, so what it builds is accepted.
    """
    document: dict[str, Any] = {"event_id": event_id, "verdict": verdict}
    if label is not None:
        document["label"] = label
    parsed = _from_json(document, None)
    out: dict[str, Any] = {"event_id": parsed.event_id, "verdict": parsed.verdict}
    if parsed.label is not None:
        out["label"] = parsed.label
    return json.dumps(out, ensure_ascii=False)


def canonical_label(label: str, labels: Sequence[str]) -> str:
    """The model's spelling of ``label`` ("Blue tit", "blue-tit" -> "blue_tit").

    With no known labels (no model loaded yet) the label passes as given; the handler decides.
    """
    if not labels or label in labels:
        return label
    by_key = {_label_key(known): known for known in labels}
    if (found := by_key.get(_label_key(label))) is not None:
        return found
    shown = ", ".join(list(labels)[:12]) + (", ..." if len(labels) > 12 else "")
    raise UnknownSpeciesError(f"unknown species {_show(label)}; the model knows: {shown}")


@dataclass(frozen=True, slots=True)
class ReplyResult:
    """What the device made of one reply; ``ok`` for accepted and duplicate."""

    result: Result
    detail: str
    event_id: str | None = None
    verdict: str | None = None
    label: str | None = None

    @property
    def ok(self) -> bool:
        return self.result in ("accepted", "duplicate")

    @classmethod
    def refused(cls, exc: FeedbackError, feedback: Feedback | None = None) -> ReplyResult:
        """The result for a reply that raised ``exc`` (``feedback``: what was parsed of it)."""
        result: Result = ("unknown_event" if isinstance(exc, UnknownEventError)
                          else "unknown_species" if isinstance(exc, UnknownSpeciesError)
                          else "invalid")
        if feedback is None:
            return cls(result, str(exc))
        return cls(result, str(exc), feedback.event_id, feedback.verdict, feedback.label)

    def payload(self, t: float) -> dict[str, Any]:
        """The JSON of ``feedback/result`` and of an MQTT 5 response."""
        return {"result": self.result, "event_id": self.event_id, "verdict": self.verdict,
                "label": self.label, "detail": self.detail, "time": iso_time(t)}


def parse_result(payload: bytes) -> ReplyResult:
    """A result as ``feederd reply`` receives it; FeedbackError if it is not one."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise FeedbackError("the device's answer is not JSON") from exc
    if not isinstance(document, dict) or document.get("result") not in RESULTS:
        raise FeedbackError(f"the device's answer names no known result: {_show(document)}")
    return ReplyResult(document["result"], str(document.get("detail", "")),
                       document.get("event_id"), document.get("verdict"), document.get("label"))


class ReplyMemory:
    """The verdict each recent event last received, so that a repeated reply (a button pressed
    twice, a notification answered from two phones) is recognised and counted once."""

    def __init__(self, max_events: int = 2000) -> None:
        self._max = max_events
        self._verdicts: OrderedDict[str, tuple[str, str | None]] = OrderedDict()

    def is_repeat(self, feedback: Feedback) -> bool:
        return self._verdicts.get(feedback.event_id) == (feedback.verdict, feedback.label)

    def remember(self, feedback: Feedback) -> None:
        self._verdicts[feedback.event_id] = (feedback.verdict, feedback.label)
        self._verdicts.move_to_end(feedback.event_id)
        while len(self._verdicts) > self._max:
            self._verdicts.popitem(last=False)


def _from_json(document: dict[str, Any], corr_id: str | None) -> Feedback:
    if unknown := sorted(set(document) - set(_JSON_KEYS)):
        raise FeedbackError(f"unknown key(s) {', '.join(map(_show, unknown))} in the reply; "
                            f"allowed: {', '.join(_JSON_KEYS)}")
    event_id = _json_event_id(document.get("event_id"), corr_id)
    verdict = _verdict(document.get("verdict"))
    raw_label = document.get("label")
    if verdict != "species":
        if raw_label is not None:
            raise FeedbackError(f"a label goes with verdict 'species' only, not {verdict!r}")
        return Feedback(event_id, verdict, None, time.time())
    if raw_label is None:
        raise FeedbackError("verdict 'species' needs a label naming the species")
    return Feedback(event_id, verdict, _label(raw_label), time.time())


def _from_bare_text(text: str, corr_id: str | None) -> Feedback:
    if corr_id is None:
        raise FeedbackError(
            "a bare-text reply needs MQTT 5 correlation data (the alert's event id); "
            'otherwise send JSON {"event_id": ..., "verdict": ...}'
        )
    words = _WORD_GAPS.sub(" ", text.casefold()).strip()
    if (verdict := _BARE_VERDICTS.get(words)) is not None:
        return Feedback(corr_id, verdict, None, time.time())
    return Feedback(corr_id, "species", _label(text), time.time())


def _json_document(text: str) -> Any:
    """The parsed JSON value, or ``_NOT_JSON`` (then the text may be bare text)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _json_event_id(value: Any, corr_id: str | None) -> str:
    if value is None:
        if corr_id is None:
            raise FeedbackError("the reply names no event: give 'event_id' or MQTT 5 "
                                "correlation data")
        return corr_id
    event_id = _check_event_id(value, "event_id")
    if corr_id is not None and corr_id != event_id:
        raise FeedbackError(f"event_id {event_id!r} disagrees with the correlation data "
                            f"{corr_id!r}")
    return event_id


def _correlation_id(data: bytes) -> str:
    if len(data) > _MAX_ID_BYTES:
        raise FeedbackError(f"correlation data of {len(data)} bytes is not an event id")
    return _check_event_id(_decode(data, "correlation data"), "correlation data")


def _check_event_id(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise FeedbackError(f"{where} must be a string, got {type(value).__name__}")
    if value != LATEST and not _EVENT_ID.fullmatch(value):
        raise FeedbackError(f"{where} {_show(value)} is not a feederd event id "
                            "(like 20240501T073012.345Z-1a2b0003) nor 'latest'")
    return value


def _verdict(value: Any) -> Verdict:
    if not isinstance(value, str) or value not in VERDICTS:
        raise FeedbackError(f"unknown verdict {_show(value)}; expected one of "
                            f"{', '.join(VERDICTS)}")
    return value  # type: ignore[return-value]  # checked against VERDICTS just above


def _label(value: Any) -> str:
    if not isinstance(value, str):
        raise FeedbackError(f"label must be a string, got {type(value).__name__}")
    label = value.strip()
    if not label or len(label) > MAX_LABEL_CHARS or not label.isprintable():
        raise FeedbackError(f"label {_show(value)} is not a species name (1-{MAX_LABEL_CHARS} "
                            "printable characters)")
    return label


def _label_key(label: str) -> str:
    return _WORD_GAPS.sub("_", label.strip().casefold())


def _decode(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FeedbackError(f"{what} is not valid UTF-8 (byte {exc.start})") from exc


def _show(value: Any, limit: int = 40) -> str:
    """A short repr for a log line: replies can be a megabyte long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
