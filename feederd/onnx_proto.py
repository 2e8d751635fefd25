"""A minimal ONNX writer: enough protobuf to serialise a plain inference graph.

``feederd model import`` runs on the device, where the ``onnx`` package (and its protobuf
runtime) is not installed. An inference graph needs only a handful of message types, so they
are written here by hand, the mirror of :mod:`feederd.onnxwire` (the reading side). Field
numbers follow ``onnx/onnx.proto`` (proto2: repeated scalars are written unpacked). The tests
check the output with the real ``onnx`` checker.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# TensorProto.DataType values.
FLOAT, UINT8, INT8, INT32, INT64 = 1, 2, 3, 6, 7
_DTYPES = {np.dtype(np.float32): FLOAT, np.dtype(np.uint8): UINT8, np.dtype(np.int8): INT8,
           np.dtype(np.int32): INT32, np.dtype(np.int64): INT64}
# AttributeProto.AttributeType values.
_ATTR_FLOAT, _ATTR_INT, _ATTR_STRING, _ATTR_INTS = 1, 2, 3, 7
_VARINT, _LEN, _I32 = 0, 2, 5

AttributeValue = int | float | str | Sequence[int]


@dataclass(frozen=True)
class Node:
    """One operator: ``op_type`` from ``inputs`` to ``outputs`` with plain attributes."""

    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    name: str = ""
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    domain: str = ""


@dataclass(frozen=True)
class ValueInfo:
    """A graph input or output: name, element type and shape (strings are symbolic dims)."""

    name: str
    elem_type: int
    shape: tuple[int | str, ...]


@dataclass
class Graph:
    """Nodes in topological order, named initialisers, inputs and outputs."""

    name: str
    nodes: list[Node] = field(default_factory=list)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: list[ValueInfo] = field(default_factory=list)
    outputs: list[ValueInfo] = field(default_factory=list)


def serialize_model(graph: Graph, opset: int, metadata: Mapping[str, str],
                    producer: str = "feederd", ir_version: int = 7) -> bytes:
    """The bytes of an ONNX ModelProto holding ``graph`` and ``metadata`` (metadata_props)."""
    parts = [_int(1, ir_version), _str(2, producer),
             _msg(7, _graph(graph)), _msg(8, _int(2, opset))]
    parts.extend(_msg(14, _str(1, key) + _str(2, value)) for key, value in metadata.items())
    return b"".join(parts)


def _graph(graph: Graph) -> bytes:
    parts = [_msg(1, _node(node)) for node in graph.nodes]
    parts.append(_str(2, graph.name))
    parts.extend(_msg(5, _tensor(name, array)) for name, array in graph.initializers.items())
    parts.extend(_msg(11, _value_info(info)) for info in graph.inputs)
    parts.extend(_msg(12, _value_info(info)) for info in graph.outputs)
    return b"".join(parts)


def _node(node: Node) -> bytes:
    parts = [_str(1, name) for name in node.inputs]
    parts.extend(_str(2, name) for name in node.outputs)
    if node.name:
        parts.append(_str(3, node.name))
    parts.append(_str(4, node.op_type))
    parts.extend(_msg(5, _attribute(key, value)) for key, value in node.attributes.items())
    if node.domain:
        parts.append(_str(7, node.domain))
    return b"".join(parts)


def _attribute(name: str, value: AttributeValue) -> bytes:
    head = _str(1, name)
    if isinstance(value, bool | int):
        return head + _int(3, int(value)) + _int(20, _ATTR_INT)
    if isinstance(value, float):
        return head + _key(2, _I32) + struct.pack("<f", value) + _int(20, _ATTR_FLOAT)
    if isinstance(value, str):
        return head + _str(4, value) + _int(20, _ATTR_STRING)
    return head + b"".join(_int(8, int(v)) for v in value) + _int(20, _ATTR_INTS)


def _tensor(name: str, array: np.ndarray) -> bytes:
    try:
        dtype = _DTYPES[array.dtype]
    except KeyError:
        raise ValueError(f"initializer {name}: unsupported dtype {array.dtype}") from None
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False)
    dims = b"".join(_int(1, d) for d in array.shape)
    return dims + _int(2, dtype) + _str(8, name) + _bytes(9, data.tobytes())


def _value_info(info: ValueInfo) -> bytes:
    dims = b"".join(_msg(1, _str(2, d) if isinstance(d, str) else _int(1, d))
                    for d in info.shape)
    tensor_type = _int(1, info.elem_type) + _msg(2, dims)
    return _str(1, info.name) + _msg(2, _msg(1, tensor_type))


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 as ten-byte two's complement, as protobuf does
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _int(number: int, value: int) -> bytes:
    return _key(number, _VARINT) + _varint(value)


def _bytes(number: int, data: bytes) -> bytes:
    return _key(number, _LEN) + _varint(len(data)) + data


def _str(number: int, text: str) -> bytes:
    return _bytes(number, text.encode("utf-8"))


def _msg(number: int, body: bytes) -> bytes:
    return _bytes(number, body)

