"""Owner replies: the accepted forms, the refused ones, and fuzzing that nothing else escapes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feederd.errors import FeedbackError
from feederd.mqtt.feedback import (
    LATEST,
    MAX_LABEL_CHARS,
    VERDICTS,
    canonical_label,
    parse_feedback,
    reply_payload,
)
from feederd.types import new_event_id

EVENT = new_event_id(1714548612.345)
MAX = 4096


def parse(payload: bytes | str, correlation: str | bytes | None = None, max_bytes: int = MAX):
    data = payload.encode() if isinstance(payload, str) else payload
    corr = correlation.encode() if isinstance(correlation, str) else correlation
    return parse_feedback(data, corr, max_bytes)


class TestJsonReplies:
    def test_a_json_not_a_bird_names_its_event(self) -> None:
        feedback = parse(json.dumps({"event_id": EVENT, "verdict": "not_a_bird"}))
        assert (feedback.event_id, feedback.verdict, feedback.label) == (EVENT, "not_a_bird", None)

    def test_a_json_species_reply_carries_its_label(self) -> None:
        feedback = parse(json.dumps({"event_id": EVENT, "verdict": "species",
                                     "label": " great_tit "}))
        assert (feedback.verdict, feedback.label) == ("species", "great_tit")

    def test_json_without_event_id_takes_it_from_the_correlation_data(self) -> None:
        assert parse('{"verdict": "correct"}', EVENT).event_id == EVENT

    def test_latest_is_accepted_as_an_event_id(self) -> None:
        assert parse(reply_payload(LATEST, "not_a_bird")).event_id == LATEST

    @pytest.mark.parametrize(("payload", "reason"), [
        ('{"verdict": "correct"}', "names no event"),
        ('{"event_id": "nope", "verdict": "correct"}', "not a feederd event id"),
        ('{"event_id": 5, "verdict": "correct", "x": 1}', "unknown key"),
        ('{"event_id": 5, "verdict": "correct"}', "must be a string"),
        (f'{{"event_id": "{EVENT}", "verdict": "maybe"}}', "unknown verdict"),
        (f'{{"event_id": "{EVENT}", "verdict": "species"}}', "needs a label"),
        (f'{{"event_id": "{EVENT}", "verdict": "species", "label": 3}}', "must be a string"),
        (f'{{"event_id": "{EVENT}", "verdict": "species", "label": "a\\nb"}}', "not a species"),
        (f'{{"event_id": "{EVENT}", "verdict": "correct", "label": "x"}}', "goes with"),
        ('[1, 2]', "neither a JSON object"),
        ('{"event_id": ', "neither a JSON object"),
    ])
    def test_a_malformed_json_reply_is_refused_with_its_reason(self, payload: str,
                                                               reason: str) -> None:
        with pytest.raises(FeedbackError, match=reason):
            parse(payload)

    def test_event_id_and_correlation_data_must_agree(self) -> None:
        other = new_event_id(1714548700.0)
        with pytest.raises(FeedbackError, match="disagrees"):
            parse(reply_payload(EVENT, "correct"), other)


class TestBareTextReplies:
    @pytest.mark.parametrize("text", ["not a bird", "Not A Bird", " not_a_bird\n",
                                      "NOT-A-BIRD", "\"not a bird\""])
    def test_not_a_bird_is_recognised_in_any_spelling(self, text: str) -> None:
        feedback = parse(text, EVENT)
        assert (feedback.event_id, feedback.verdict) == (EVENT, "not_a_bird")

    def test_correct_confirms_the_alert(self) -> None:
        assert parse("Correct", EVENT).verdict == "correct"

    def test_any_other_short_text_names_a_species(self) -> None:
        feedback = parse("Blue tit", EVENT)
        assert (feedback.verdict, feedback.label) == ("species", "Blue tit")

    def test_bare_text_without_correlation_data_is_refused(self) -> None:
        with pytest.raises(FeedbackError, match="correlation data"):
            parse("not a bird")

    def test_correlation_data_that_is_no_event_id_is_refused(self) -> None:
        with pytest.raises(FeedbackError, match="correlation data"):
            parse("not a bird", b"\x00" * 200)


class TestLimits:
    def test_an_oversized_reply_is_refused_before_it_is_read(self) -> None:
        with pytest.raises(FeedbackError, match="over the 4096-byte limit"):
            parse(b"x" * (MAX + 1), EVENT)

    def test_invalid_utf8_is_refused(self) -> None:
        with pytest.raises(FeedbackError, match="not valid UTF-8"):
            parse(b"not a bird \xff", EVENT)

    def test_a_deeply_nested_document_is_refused_not_crashing(self) -> None:
        with pytest.raises(FeedbackError):
            parse("[" * 100_000, EVENT, max_bytes=2**20)

    def test_an_overlong_label_is_refused(self) -> None:
        with pytest.raises(FeedbackError, match="not a species"):
            parse("x" * (MAX_LABEL_CHARS + 1), EVENT)


class TestCanonicalLabel:
    def test_a_label_is_matched_ignoring_case_spaces_and_dashes(self) -> None:
        assert canonical_label("Great Tit", ["blue_tit", "great_tit"]) == "great_tit"

    def test_an_unknown_label_is_refused_listing_the_known_ones(self) -> None:
        with pytest.raises(FeedbackError, match="blue_tit, great_tit"):
            canonical_label("dodo", ["blue_tit", "great_tit"])

    def test_without_known_labels_a_label_passes_as_given(self) -> None:
        assert canonical_label("Dodo", []) == "Dodo"


def test_reply_payload_refuses_what_parse_would_refuse() -> None:
    with pytest.raises(FeedbackError, match="needs a label"):
        reply_payload(EVENT, "species")


# --- fuzzing ------------------------------------------------------------------------------------

event_ids = st.builds(new_event_id, st.floats(min_value=0, max_value=4e9)) | st.just(LATEST)
labels = st.text(st.characters(codec="utf-8"), min_size=1, max_size=MAX_LABEL_CHARS).filter(
    lambda s: s == s.strip() and s.isprintable())
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(payload=st.binary(max_size=300), correlation=st.none() | st.binary(max_size=80))
def test_arbitrary_bytes_raise_nothing_but_feedback_error(payload: bytes,
                                                          correlation: bytes | None) -> None:
    try:
        feedback = parse_feedback(payload, correlation, 256)
    except FeedbackError as exc:
        assert str(exc)  # a reason to log
    else:
        assert feedback.verdict in VERDICTS


@settings(max_examples=200, deadline=None)
@given(document=st.dictionaries(st.sampled_from(["event_id", "verdict", "label", "other"]),
                                json_values | event_ids | st.sampled_from(VERDICTS)),
       correlation=st.none() | event_ids.map(str.encode))
def test_arbitrary_json_objects_raise_nothing_but_feedback_error(
        document: dict[str, Any], correlation: bytes | None) -> None:
    try:
        feedback = parse_feedback(json.dumps(document).encode(), correlation, 2**16)
    except FeedbackError as exc:
        assert str(exc)
    else:
        assert feedback.verdict in VERDICTS and feedback.event_id


@settings(max_examples=200, deadline=None)
@given(event_id=event_ids, verdict=st.sampled_from(VERDICTS), label=labels)
def test_a_valid_json_reply_round_trips(event_id: str, verdict: str, label: str) -> None:
    given_label = label if verdict == "species" else None
    feedback = parse_feedback(reply_payload(event_id, verdict, given_label).encode(), None, 2**16)
    assert (feedback.event_id, feedback.verdict, feedback.label) == (event_id, verdict,
                                                                     given_label)


@settings(max_examples=200, deadline=None)
@given(event_id=event_ids, label=labels.filter(lambda s: not s.startswith(("{", "[", '"'))))
def test_a_bare_species_name_round_trips(event_id: str, label: str) -> None:
    try:
        json.loads(label)
    except ValueError:
        pass
    else:
        return  # text that happens to be JSON ("12", "null") is not a species name
    feedback = parse_feedback(label.encode(), event_id.encode(), 2**16)
    if feedback.verdict == "species":
        assert feedback.label == label
    else:  # a spelling of "not a bird" or "correct", such as "correct_"
        assert feedback.label is None
