"""The alert JSON names the species for people beside the stable label."""

from __future__ import annotations

from feederd.mqtt.messages import alert_payload
from feederd.types import Alert


def alert(**names: str) -> Alert:
    return Alert("e1", 1_700_000_000.0, "tufted_titmouse", 0.8, 0.4, 5, "aiy-birds-v1",
                 **names)


def test_the_common_and_scientific_names_ride_beside_the_label() -> None:
    payload = alert_payload(alert(display_name="Tufted Titmouse",
                                  scientific_name="Baeolophus bicolor"))
    assert payload["label"] == "tufted_titmouse"
    assert payload["display_name"] == "Tufted Titmouse"
    assert payload["scientific_name"] == "Baeolophus bicolor"


def test_without_names_the_label_is_shown_and_the_scientific_name_is_null() -> None:
    payload = alert_payload(alert())
    assert payload["display_name"] == "tufted_titmouse"
    assert payload["scientific_name"] is None
