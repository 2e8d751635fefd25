"""Zero-point-0 int8 weights only where onnxruntime then computes exactly the same outputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

import feederd.tflite_graph as tflite_graph
from feederd.classifier import resize_for_model
from feederd.onnx_proto import FLOAT, Graph, Node, ValueInfo, serialize_model
from feederd.tflite_graph import OPSET, convert_graph
from feederd.tflite_symmetric import make_symmetric

CHANNELS = 4
AIY = Path("models") / "aiy_birds_v1" / "aiy_birds_v1.tflite"


def _quantized(graph: Graph, value: str, name: str, scale: float, zero: int) -> str:
    """``value`` rounded to a uint8 grid (QuantizeLinear + DequantizeLinear, as the importer)."""
    graph.initializers[f"{name}_s"] = np.array(scale, np.float32)
    graph.initializers[f"{name}_z"] = np.array(zero, np.uint8)
    graph.nodes += [Node("QuantizeLinear", (value, f"{name}_s", f"{name}_z"), (f"{name}_q",)),
                    Node("DequantizeLinear", (f"{name}_q", f"{name}_s", f"{name}_z"), (name,))]
    return name


def _conv(graph: Graph, x: str, name: str, weights: np.ndarray, group: int = 1,
          bias: np.ndarray | None = None) -> str:
    """A ReLU6 convolution with uint8 weights (zero point 128) and an int32 bias, requantized."""
    if bias is None:
        bias = np.arange(len(weights), dtype=np.int32) * 7
    graph.initializers.update({
        f"{name}_wq": weights.astype(np.uint8), f"{name}_ws": np.array(0.01, np.float32),
        f"{name}_wz": np.array(128, np.uint8),
        f"{name}_bq": bias.astype(np.int32),
        f"{name}_bs": np.array(0.01 * 0.05, np.float32), f"{name}_bz": np.array(0, np.int32),
        f"{name}_lo": np.array(0.0, np.float32), f"{name}_hi": np.array(6.0, np.float32)})
    kernel = weights.shape[2]
    graph.nodes += [
        Node("DequantizeLinear", (f"{name}_wq", f"{name}_ws", f"{name}_wz"), (f"{name}_w",)),
        Node("DequantizeLinear", (f"{name}_bq", f"{name}_bs", f"{name}_bz"), (f"{name}_b",)),
        Node("Conv", (x, f"{name}_w", f"{name}_b"), (name,), name,
             {"group": group, "kernel_shape": (kernel, kernel),
              "pads": (kernel // 2,) * 4}),
        Node("Clip", (name, f"{name}_lo", f"{name}_hi"), (f"{name}_act",))]
    return _quantized(graph, f"{name}_act", f"{name}_out", 6 / 255, 0)


def _weights(rng: np.random.Generator, kernel: int = 1, depthwise: bool = False) -> np.ndarray:
    """uint8 weights around zero point 128 that fit -127..127 (values 40..216)."""
    shape = (CHANNELS, 1 if depthwise else CHANNELS, kernel, kernel)
    return rng.integers(40, 217, shape)


def network(first: np.ndarray, then: str, second: np.ndarray | None = None,
            depthwise: np.ndarray | None = None, bias: np.ndarray | None = None) -> Graph:
    """x -> conv ``a`` (``bias``) -> ``then`` (a 1x1 conv ``b``, a depthwise ``d`` then ``b``,
    or an Add with itself) -> y."""
    rng = np.random.default_rng(5)
    graph = Graph(name="net")
    graph.inputs.append(ValueInfo("x", FLOAT, (1, CHANNELS, 6, 6)))
    value = _conv(graph, _quantized(graph, "x", "xq", 0.05, 100), "a", first, 1, bias)
    if then == "add":
        graph.nodes.append(Node("Add", (value, value), ("sum",)))
        value = _quantized(graph, "sum", "sumq", 12 / 255, 0)
    else:
        if then == "depthwise":
            weights = _weights(rng, 3, depthwise=True) if depthwise is None else depthwise
            value = _conv(graph, value, "d", weights, CHANNELS)
        value = _conv(graph, value, "b", _weights(rng) if second is None else second)
    graph.nodes.append(Node("Identity", (value,), ("y",)))
    graph.outputs.append(ValueInfo("y", FLOAT, (1, CHANNELS, 6, 6)))
    return graph


def run(graph: Graph, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(serialize_model(graph, OPSET, {}),
                                   providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["y"], {"x": x})[0])


def rewritten_and_same(graph: Graph) -> list[str]:
    """What make_symmetric rewrote, after checking the outputs did not move by one bit."""
    x = np.random.default_rng(1).uniform(-5, 7.7, (1, CHANNELS, 6, 6)).astype(np.float32)
    before = run(graph, x)
    names = make_symmetric(graph)
    np.testing.assert_array_equal(run(graph, x), before)
    return names


def with_wide_channel(weights: np.ndarray, channel: int = 2) -> np.ndarray:
    wide = weights.copy()
    wide[channel].flat[0] = 0  # 0 - 128 = -128: outside -127..127
    return wide


def test_a_layer_whose_channels_all_fit_gets_int8_weights_with_zero_point_0() -> None:
    graph = network(_weights(np.random.default_rng(2)), "conv")
    assert rewritten_and_same(graph) == ["a", "b"]
    assert graph.initializers["a_wq"].dtype == np.int8
    assert graph.initializers["a_wz"].dtype == np.int8 and int(graph.initializers["a_wz"]) == 0


def test_a_layer_with_a_channel_that_does_not_fit_and_is_read_is_left_alone() -> None:
    graph = network(with_wide_channel(_weights(np.random.default_rng(2))), "conv")
    assert rewritten_and_same(graph) == ["b"]
    assert graph.initializers["a_wq"].dtype == np.uint8


def test_a_channel_that_does_not_fit_but_nothing_reads_is_zeroed() -> None:
    rng = np.random.default_rng(2)
    second = _weights(rng)
    second[:, 2] = 128  # real weight 0 for input channel 2 everywhere in b
    graph = network(with_wide_channel(_weights(rng)), "conv", second)
    assert rewritten_and_same(graph) == ["a", "b"]
    assert not graph.initializers["a_wq"][2].any()


def test_a_depthwise_consumer_passes_the_question_on_to_its_own_consumers() -> None:
    rng = np.random.default_rng(3)
    second = _weights(rng)
    second[:, 2] = 128
    assert rewritten_and_same(network(with_wide_channel(_weights(rng)), "depthwise", second)) \
        == ["a", "d", "b"]
    read = network(with_wide_channel(_weights(rng)), "depthwise")
    assert rewritten_and_same(read) == ["d", "b"]


def test_weights_on_an_input_that_is_always_its_zero_point_are_zeroed() -> None:
    """Channel 2 of ``a`` has real weight 0; with a bias below 0 the ReLU6 grid (zero point 0)
    makes it 0 everywhere, so the depthwise weights that read it do not matter."""
    rng = np.random.default_rng(4)
    first = _weights(rng)
    first[2] = 128
    depthwise = with_wide_channel(_weights(rng, 3, depthwise=True))
    silent = network(first, "depthwise", depthwise=depthwise, bias=np.array([5, 9, -40, 3]))
    assert rewritten_and_same(silent) == ["a", "d", "b"]
    assert not silent.initializers["d_wq"][2].any()
    live = network(first, "depthwise", depthwise=depthwise, bias=np.array([5, 9, 40, 3]))
    assert rewritten_and_same(live) == ["a", "b"]


def test_any_other_reader_counts_as_reading_every_channel() -> None:
    graph = network(with_wide_channel(_weights(np.random.default_rng(2))), "add")
    assert rewritten_and_same(graph) == []


@pytest.mark.shared_data
def test_the_aiy_graph_computes_the_same_with_and_without_the_rewrite(
        shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = (shared_data / AIY).read_bytes()
    rewritten = convert_graph(data, "aiy").graph
    monkeypatch.setattr(tflite_graph, "make_symmetric", lambda graph: [])
    plain = convert_graph(data, "aiy").graph
    sessions = [ort.InferenceSession(serialize_model(graph, OPSET, {}),
                                     providers=["CPUExecutionProvider"])
                for graph in (rewritten, plain)]
    photos = sorted((shared_data / "images").rglob("*.jpg"))[::40][:40]
    pixels = [cv2.cvtColor(resize_for_model(cv2.imread(str(p)), 224, 224), cv2.COLOR_BGR2RGB)
              for p in photos]
    pixels += [np.zeros((224, 224, 3), np.uint8), np.full((224, 224, 3), 255, np.uint8)]
    batch = np.stack(pixels)
    name = sessions[0].get_inputs()[0].name
    ours, theirs = (s.run(None, {name: batch}) for s in sessions)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)
    int8_zero = [n for n, a in rewritten.initializers.items()
                 if n.endswith("_z") and a.dtype == np.int8 and not a.any()]
    assert len(int8_zero) == 9  # the 6 depthwise layers and 3 ordinary ones that qualify
