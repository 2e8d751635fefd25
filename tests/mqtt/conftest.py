"""The link fixtures of test_link.py (a recording feedback handler, started links), shared
with the other tests of the MQTT stage."""

from .test_link import make_link, recorder  # noqa: F401
