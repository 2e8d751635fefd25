"""The tensor layer of the TFLite importer: reading TFLite tensors and emitting their QDQ form.

:class:`TensorGraph` holds the ONNX graph being built and knows how one TFLite tensor becomes
ONNX values: constants as int8/uint8 initializers behind a ``DequantizeLinear`` (or dequantized
now in ``fp32`` mode), activations re-rounded to their own uint8/int8 grid by a
``QuantizeLinear``/``DequantizeLinear`` pair, so that onnxruntime fuses them back into integer
kernels. It is separate from the operator emitters (:mod:`feederd.tflite_ops`) and the driver
(:mod:`feederd.tflite_graph`) because every operator shares these rules, and the rules (not the
operators) decide how close the import comes to the TFLite model's answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tflite

from feederd.errors import ModelError
from feederd.onnx_proto import Graph, Node

MODES = ("qdq", "qdq-u8", "fp32")
_NUMPY = {tflite.TensorType.UINT8: np.uint8, tflite.TensorType.INT8: np.int8,
          tflite.TensorType.INT32: np.int32, tflite.TensorType.FLOAT32: np.float32}


@dataclass(frozen=True)
class Quant:
    """Per-tensor or per-axis affine quantization: real = scale * (q - zero_point)."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int



class TensorGraph:
    """One subgraph's tensors and the ONNX graph they are rewritten into.

    ``mode`` is one of :data:`MODES`: ``qdq`` (shipped) takes uint8 NHWC pixels and stores the
    weights of non-depthwise layers as int8 (see :meth:`_signed`); ``qdq-u8`` is the earlier
    form, float NCHW input and every weight uint8 (u8u8 kernels); ``fp32`` dequantizes the
    weights and drops activation rounding (for comparisons: it changes answers).
    """

    def __init__(self, model: Any, source: str, mode: str = "qdq") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.model = model
        self.sub = model.Subgraphs(0)
        self.source = source
        self.quantized = mode != "fp32"
        self.compact = mode == "qdq"  # uint8 input, int8 weights where exact
        self.graph = Graph(name="feederd_tflite")
        self.values: dict[int, str] = {}  # TFLite tensor index -> float ONNX name

    def _tensor(self, index: int) -> Any:
        return self.sub.Tensors(index)

    def _shape(self, index: int) -> list[int]:
        return [int(v) for v in self._tensor(index).ShapeAsNumpy()]

    def _width(self, index: int) -> int:
        return self._shape(index)[-1]

    def _quant(self, index: int) -> Quant | None:
        q = self._tensor(index).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        zero = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(q.ScaleLength())
        return Quant(np.asarray(q.ScaleAsNumpy(), np.float32), np.asarray(zero, np.int64),
                     int(q.QuantizedDimension()))

    def _dtype(self, index: int) -> Any:
        kind = self._tensor(index).Type()
        if kind not in _NUMPY:
            raise ModelError(f"{self.source}: tensor {self._tensor(index).Name().decode()} has "
                             f"TFLite type {kind}; only uint8, int8, int32 and float32 import")
        return _NUMPY[kind]

    def _constant(self, index: int) -> np.ndarray:
        buffer = self.model.Buffers(self._tensor(index).Buffer())
        raw = buffer.DataAsNumpy() if buffer is not None else 0
        if isinstance(raw, int):
            raise ModelError(f"{self.source}: constant tensor #{index} has no data")
        return np.frombuffer(raw.tobytes(), self._dtype(index)).reshape(self._shape(index))

    def _weight(self, index: int, array: np.ndarray, axis_map: dict[int, int],
                signed: bool = False) -> str:
        """A constant as a float ONNX value: DQ of the stored integers, or dequantized now."""
        name = f"w{index}"
        quant = self._quant(index)
        if quant is None or array.dtype == np.float32:
            self.graph.initializers[name] = array.astype(np.float32)
            return name
        axis = axis_map.get(quant.axis, 0)
        if not self.quantized:
            shape = [1] * array.ndim
            if quant.scale.size > 1:
                shape[axis] = -1
            real = (array.astype(np.float64) - quant.zero_point.reshape(shape)) \
                * quant.scale.reshape(shape)
            self.graph.initializers[name] = real.astype(np.float32)
            return name
        if signed and self._signed(array):
            array = (array.astype(np.int16) - 128).astype(np.int8)
            quant = Quant(quant.scale, quant.zero_point - 128, quant.axis)
        self.graph.initializers[name + "_q"] = array
        return self._dequantize(name + "_q", name, quant, array.dtype, axis)

    def _signed(self, array: np.ndarray) -> bool:
        """Whether uint8 weights may be stored as int8 (minus 128): only when all of them lie
        in 1..255, i.e. -127..127 after the shift (TFLite's narrow weight range).

        Every onnxruntime kernel then computes the same integers as with uint8 weights: VNNI
        (x86) and UDOT (ARM64 with dot product) sum in int32, and the NEON kernel for CPUs
        without dot product (Pi 4) flips the activations to int8 and adds two products in
        int16, which cannot wrap when |weight| <= 127 (2 * 128 * 127 < 32768). Only x86 without
        VNNI saturates (PMADDUBSW): the classifier then asks onnxruntime to convert the weights
        back to uint8 (``session.x64quantprecision``).
        """
        return (self.compact and array.dtype == np.uint8 and array.ndim > 1
                and int(array.min()) >= 1)

    def _dequantize(self, source: str, target: str, quant: Quant, dtype: Any,
                    axis: int = 1) -> str:
        self._scale_zero(target, quant, dtype)
        attrs = {"axis": axis} if quant.scale.size > 1 else {}
        self.graph.nodes.append(Node("DequantizeLinear", (source, target + "_s", target + "_z"),
                                     (target,), f"dq_{target}", attrs))
        return target

    def _scale_zero(self, name: str, quant: Quant, dtype: Any) -> None:
        single = quant.scale.size == 1
        scale = quant.scale.reshape(()) if single else quant.scale
        zero = quant.zero_point.reshape(()) if single else quant.zero_point
        self.graph.initializers[name + "_s"] = scale.astype(np.float32)
        self.graph.initializers[name + "_z"] = zero.astype(dtype)

    def _emit(self, index: int, value: str) -> None:
        """Register the float result of a TFLite op, re-rounded to its uint8/int8 grid."""
        quant = self._quant(index)
        if quant is None:
            self.values[index] = value
            return
        dtype = self._dtype(index)
        name = f"t{index}"
        if not self.quantized:
            self.values[index] = self._range_clip(value, name, quant, dtype)
            return
        self._scale_zero(name + "_o", quant, dtype)
        self.graph.nodes.append(Node("QuantizeLinear", (value, name + "_o_s", name + "_o_z"),
                                     (name + "_q",), f"q_{name}"))
        self.values[index] = self._dequantize(name + "_q", name, quant, dtype)

    def _range_clip(self, value: str, name: str, quant: Quant, dtype: Any) -> str:
        """fp32 variant: clamp to the tensor's quantized range, which is where converters put
        a ReLU6 (the fused activation itself is often NONE)."""
        info = np.iinfo(dtype)
        scale, zero = float(quant.scale.reshape(-1)[0]), float(quant.zero_point.reshape(-1)[0])
        self.graph.initializers[name + "_lo"] = np.array(scale * (info.min - zero), np.float32)
        self.graph.initializers[name + "_hi"] = np.array(scale * (info.max - zero), np.float32)
        self.graph.nodes.append(Node("Clip", (value, name + "_lo", name + "_hi"),
                                     (name + "_c",), f"clip_{name}"))
        return name + "_c"

    def _value(self, index: int) -> str:
        try:
            return self.values[index]
        except KeyError:
            raise ModelError(f"{self.source}: tensor #{index} is used before it is computed "
                             "(constant activations are not supported)") from None

    def _activation(self, value: str, kind: int, name: str) -> str:
        """TFLite's fused activation as an ONNX node (ORT folds it into the next Quantize)."""
        act = tflite.ActivationFunctionType
        if kind == act.NONE:
            return value
        if kind == act.RELU:
            self.graph.nodes.append(Node("Relu", (value,), (name + "_act",), name + "_relu"))
        elif kind in (act.RELU6, act.RELU_N1_TO_1):
            low, high = (0.0, 6.0) if kind == act.RELU6 else (-1.0, 1.0)
            self.graph.initializers[name + "_lo"] = np.array(low, np.float32)
            self.graph.initializers[name + "_hi"] = np.array(high, np.float32)
            self.graph.nodes.append(Node("Clip", (value, name + "_lo", name + "_hi"),
                                         (name + "_act",), name + "_clip"))
        else:
            raise ModelError(f"{self.source}: fused activation {kind} is not supported")
        return name + "_act"
