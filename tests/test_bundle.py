"""The bundle metadata format: parsing, defaults, and errors that name the key and the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from feederd.bundle import (
    METADATA_PREFIX,
    InputSpec,
    encode_metadata,
    parse_metadata,
    read_bundle,
)
from feederd.errors import ModelError

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "models" / "demo.onnx"
PATH = Path("/models/candidate.onnx")


def metadata(**changes: Any) -> dict[str, str]:
    """A complete, valid metadata dict; ``changes`` replace (or with None, remove) keys."""
    values: dict[str, Any] = {
        "labels": ["cardinal", "other"],
        "negative_labels": ["other"],
        "input": {"size": [64, 48], "layout": "NCHW", "color": "RGB",
                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "version": "v2",
        "parent_version": "v1",
        "created": "2024-06-01T00:00:00Z",
        "trained_on": {"cardinal": 10, "other": 30},
        "metrics": {"accuracy": 0.9},
    }
    values.update(changes)
    return {METADATA_PREFIX + k: json.dumps(v) for k, v in values.items() if v is not None}


def parse(meta: dict[str, str]) -> Any:
    return parse_metadata(meta, PATH, "ab" * 32)


class TestParseMetadata:
    def test_a_complete_bundle_yields_every_field(self) -> None:
        bundle = parse(metadata())
        assert bundle.labels == ("cardinal", "other")
        assert bundle.negative_labels == frozenset({"other"})
        assert bundle.input.size == (64, 48)
        assert (bundle.version, bundle.parent_version) == ("v2", "v1")
        assert bundle.trained_on == {"cardinal": 10, "other": 30}
        assert bundle.metrics == {"accuracy": 0.9}

    def test_optional_keys_default_to_empty(self) -> None:
        bundle = parse(metadata(negative_labels=None, parent_version=None, created=None,
                                trained_on=None, metrics=None))
        assert bundle.negative_labels == frozenset()
        assert bundle.parent_version is None
        assert (bundle.created, bundle.trained_on, bundle.metrics) == ("", {}, {})

    @pytest.mark.parametrize("key", ["labels", "input", "version"])
    def test_a_missing_required_key_is_named_with_the_file(self, key: str) -> None:
        with pytest.raises(ModelError, match=f"{PATH}.*'feederd.{key}' is missing"):
            parse(metadata(**{key: None}))

    def test_invalid_json_names_the_key(self) -> None:
        meta = metadata()
        meta["feederd.labels"] = "[cardinal"
        with pytest.raises(ModelError, match=r"'feederd.labels' is not valid JSON"):
            parse(meta)

    def test_duplicate_labels_are_refused(self) -> None:
        with pytest.raises(ModelError, match=r"feederd.labels.*duplicate.*cardinal"):
            parse(metadata(labels=["cardinal", "cardinal"], negative_labels=[]))

    def test_a_negative_label_must_be_a_label(self) -> None:
        with pytest.raises(ModelError, match=r"feederd.negative_labels.*squirrel"):
            parse(metadata(negative_labels=["squirrel"]))

    @pytest.mark.parametrize("field, value, message", [
        ("layout", "CHW", "layout must be one of NCHW, NHWC"),
        ("color", "YUV", "color must be one of RGB, BGR"),
        ("size", [64], r"size must be \[height, width\]"),
        ("std", [1, 0, 1], "std must be positive"),
        ("mean", [1, 2], "mean must be a list of 1 or 3 numbers"),
        ("scale", -1, "scale must be a positive number"),
        ("gamma", 2.2, "has unknown fields"),
    ])
    def test_a_bad_input_field_is_named(self, field: str, value: Any, message: str) -> None:
        spec = {"size": [64, 64], field: value}
        with pytest.raises(ModelError, match=f"'feederd.input' {message}"):
            parse(metadata(input=spec))

    def test_trained_on_counts_must_be_integers(self) -> None:
        with pytest.raises(ModelError, match=r"feederd\.trained_on"):
            parse(metadata(trained_on={"cardinal": "many"}))


class TestInputSpec:
    def test_rgb_with_unit_means_defaults_to_a_1_255_scale(self) -> None:
        spec = parse(metadata(input={"size": [8, 8], "mean": [0.4, 0.4, 0.4]})).input
        assert spec.scale == pytest.approx(1 / 255)

    def test_caffe_style_bgr_defaults_to_scale_one(self) -> None:
        spec = parse(metadata(input={"size": [8, 8], "color": "BGR",
                                     "mean": [104, 117, 123]})).input
        assert spec.scale == 1.0

    def test_a_single_mean_applies_to_every_channel(self) -> None:
        spec = parse(metadata(input={"size": [8, 8], "mean": [0.5], "std": [0.2]})).input
        assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.2, 0.2, 0.2)

    def test_shape_follows_the_layout(self) -> None:
        assert InputSpec((32, 48), "NCHW").shape(2) == (2, 3, 32, 48)
        assert InputSpec((32, 48), "NHWC").shape(2) == (2, 32, 48, 3)


class TestBundle:
    def test_negative_labels_are_recognised(self) -> None:
        bundle = parse(metadata())
        assert bundle.is_negative("other") and not bundle.is_negative("cardinal")

    def test_describe_is_json_and_names_the_version_and_file(self) -> None:
        described = json.loads(json.dumps(parse(metadata()).describe()))
        assert described["version"] == "v2"
        assert described["file"] == "candidate.onnx"
        assert described["negative_labels"] == ["other"]

    def test_encoded_metadata_parses_back_to_the_same_bundle(self) -> None:
        spec = InputSpec((16, 16), "NHWC", "BGR", (1.0, 2.0, 3.0), (4.0, 5.0, 6.0), 1.0)
        meta = encode_metadata({"labels": ("a", "b"), "negative_labels": {"b"}, "input": spec,
                                "version": "x"})
        bundle = parse(meta)
        assert bundle.input == spec and bundle.labels == ("a", "b")


class TestReadBundle:
    def test_the_demo_model_metadata_reads_without_onnxruntime(self) -> None:
        bundle = read_bundle(DEMO)
        assert bundle.version == "demo-1"
        assert bundle.labels == ("blue_jay", "cardinal", "goldfinch", "other")
        assert len(bundle.sha256) == 64

    def test_a_missing_file_is_a_model_error(self, tmp_path: Path) -> None:
        with pytest.raises(ModelError, match="no such model file"):
            read_bundle(tmp_path / "absent.onnx")

    def test_a_truncated_file_is_a_model_error(self, tmp_path: Path) -> None:
        path = tmp_path / "cut.onnx"
        path.write_bytes(DEMO.read_bytes()[:1500])
        with pytest.raises(ModelError, match=str(path)):
            read_bundle(path)

    def test_random_bytes_are_a_model_error(self, tmp_path: Path) -> None:
        path = tmp_path / "noise.onnx"
        path.write_bytes(bytes(range(256)) * 8)
        with pytest.raises(ModelError, match=str(path)):
            read_bundle(path)


class TestNames:
    def test_display_and_scientific_names_come_from_the_metadata(self) -> None:
        bundle = parse_metadata(metadata(display_names={"cardinal": "Northern Cardinal"},
                                         scientific_names={"cardinal": "Cardinalis cardinalis"}),
                                PATH, "0" * 64)
        assert bundle.display_name("cardinal") == "Northern Cardinal"
        assert bundle.scientific_name("cardinal") == "Cardinalis cardinalis"
        assert bundle.display_name("other") == "other"
        assert bundle.scientific_name("other") is None

    def test_a_label_without_a_display_name_reads_with_spaces(self) -> None:
        bundle = parse_metadata(metadata(labels=["blue_jay", "other"]), PATH, "0" * 64)
        assert bundle.display_name("blue_jay") == "blue jay"

    def test_names_for_unknown_labels_are_refused(self) -> None:
        with pytest.raises(ModelError, match="display_names"):
            parse_metadata(metadata(display_names={"emu": "Emu"}), PATH, "0" * 64)
