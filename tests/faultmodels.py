"""Real ONNX bundles that fail the way models fail in the field (built with onnx.helper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from feederd.assets import demo_model_path
from feederd.bundle import read_bundle
from feederd.sync.build import write_metadata

# Variance of the 8x8-pooled model input (the demo bundle's preprocessing) that each kind of
# image reaches, measured: a grey image 0, a noise image 0.024 (the synthetic validation
# inputs), frames of the bundled cartoon clip 0.24, real photos and feeder clips 0.29-0.94.
BEYOND_TEST_IMAGES = 0.1  # NaN on every real frame, the bundled clip included
BEYOND_CARTOON = 0.5  # NaN on real feeder footage only


def nan_on_texture(out: Path, version: str, threshold: float) -> Path:
    """The demo model, except that its probabilities are NaN when the input's coarse variance
    exceeds ``threshold``: ``probs + 0 * sqrt(threshold - variance)``."""
    model = onnx.load(str(demo_model_path()))
    graph = model.graph
    image = graph.input[0].name
    for node in graph.node:  # the old output becomes an inner tensor
        node.output[:] = ["probs_raw" if name == "probs" else name for name in node.output]
    graph.initializer.extend([
        numpy_helper.from_array(np.array([threshold], np.float32), "nan_threshold"),
        numpy_helper.from_array(np.array([0.0], np.float32), "nan_zero"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), "nan_shape"),
    ])
    graph.node.extend([
        helper.make_node("AveragePool", [image], ["nan_pooled"], kernel_shape=[8, 8],
                         strides=[8, 8]),
        helper.make_node("ReduceMean", ["nan_pooled"], ["nan_mean"], axes=[1, 2, 3]),
        helper.make_node("Sub", ["nan_pooled", "nan_mean"], ["nan_centred"]),
        helper.make_node("Mul", ["nan_centred", "nan_centred"], ["nan_squares"]),
        helper.make_node("ReduceMean", ["nan_squares"], ["nan_variance"], axes=[1, 2, 3]),
        helper.make_node("Sub", ["nan_threshold", "nan_variance"], ["nan_room"]),
        helper.make_node("Sqrt", ["nan_room"], ["nan_root"]),  # NaN once the room < 0
        helper.make_node("Mul", ["nan_root", "nan_zero"], ["nan_term"]),
        helper.make_node("Reshape", ["nan_term", "nan_shape"], ["nan_column"]),
        helper.make_node("Add", ["probs_raw", "nan_column"], ["probs"]),
    ])
    bundle = read_bundle(demo_model_path())
    write_metadata(model, {"labels": list(bundle.labels),
                           "negative_labels": sorted(bundle.negative_labels),
                           "input": bundle.input.as_dict(), "version": version,
                           "parent_version": bundle.version})
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def truncated(out: Path) -> Path:
    """The demo bundle cut in half, as a disk error or an interrupted copy leaves it."""
    data = demo_model_path().read_bytes()
    out.write_bytes(data[:len(data) // 2])
    return out




def demo_version(out: Path, version: str) -> Path:
    """A good bundle: the demo model under another version."""
    model = onnx.load(str(demo_model_path()))
    bundle = read_bundle(demo_model_path())
    write_metadata(model, {"labels": list(bundle.labels),
                           "negative_labels": sorted(bundle.negative_labels),
                           "input": bundle.input.as_dict(), "version": version})
    onnx.save(model, str(out))
    return out
