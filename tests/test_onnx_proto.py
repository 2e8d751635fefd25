"""The device-side ONNX writer produces models the real onnx checker and onnxruntime accept."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from feederd.onnx_proto import FLOAT, Graph, Node, ValueInfo, serialize_model


def tiny_graph() -> Graph:
    """x (N, 3) -> Gemm with int8 weights dequantized in the graph -> Softmax."""
    graph = Graph(name="tiny")
    graph.inputs.append(ValueInfo("x", FLOAT, ("N", 3)))
    graph.outputs.append(ValueInfo("probs", FLOAT, ("N", 2)))
    graph.initializers.update({
        "w_q": np.array([[1, -2, 3], [-4, 5, -6]], np.int8),
        "w_s": np.array(0.5, np.float32), "w_z": np.array(0, np.int8),
        "b": np.array([0.25, -0.25], np.float32),
    })
    graph.nodes += [
        Node("DequantizeLinear", ("w_q", "w_s", "w_z"), ("w",), "dq"),
        Node("Gemm", ("x", "w", "b"), ("logits",), "gemm", {"transB": 1, "alpha": 1.0}),
        Node("Softmax", ("logits",), ("probs",), "softmax", {"axis": -1}),
    ]
    return graph


def test_a_written_model_passes_the_onnx_checker_with_its_metadata() -> None:
    blob = serialize_model(tiny_graph(), 13, {"feederd.version": '"t-1"'})
    model = onnx.load_from_string(blob)
    onnx.checker.check_model(model, full_check=True)
    assert {p.key: p.value for p in model.metadata_props} == {"feederd.version": '"t-1"'}
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert model.graph.node[2].attribute[0].i == -1  # a negative int64 survives


def test_onnxruntime_computes_what_numpy_does() -> None:
    session = ort.InferenceSession(serialize_model(tiny_graph(), 13, {}),
                                   providers=["CPUExecutionProvider"])
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]], np.float32)
    (probs,) = session.run(["probs"], {"x": x})
    logits = x @ (0.5 * np.array([[1, -2, 3], [-4, 5, -6]])).T + [0.25, -0.25]
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
