"""Just enough of the protobuf wire format of an ONNX ModelProto, without the ``onnx`` package.

Two uses on the device, both about memory:

- :func:`read_metadata_props` reads a bundle's ``metadata_props`` by walking the top-level
  fields of a memory-mapped file: the graph (nearly all of the bytes) is skipped, not read.
- :func:`external_view` rewrites a bundle so that its large initializers are *external data*
  pointing back into the bundle file itself (``location`` = the file's name, ``offset`` and
  ``length`` of the tensor's ``raw_data``). onnxruntime then memory-maps those bytes instead
  of holding the parsed model *and* a copy of every weight: loading a 300 MB bundle costs
  about 300 MB instead of 900 MB (``tools/bench/install_memory_bench.py``). The bundle stays
  one ordinary ONNX file; only the bytes handed to onnxruntime change.

Field numbers are onnx/onnx.proto's; :mod:`feederd.onnx_proto` is the writing side.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from feederd.errors import ModelError

# The writer's encoders: one implementation of the wire format's writing side.
from feederd.onnx_proto import _int, _msg, _str

# ModelProto, GraphProto, TensorProto and StringStringEntryProto fields; wire types.
MODEL_GRAPH, MODEL_METADATA = 7, 14
GRAPH_INITIALIZER = 5
TENSOR_RAW_DATA, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 9, 13, 14
EXTERNAL = 1
VARINT, I64, LEN, I32 = 0, 1, 2, 5

Span = tuple[int, int, int, int, int]
"""(field, wire type, start of the field, start of its value, end of its value)."""


class Buffer(Protocol):
    """bytes, bytearray or mmap: indexable to ints and sliceable to bytes."""

    def __getitem__(self, index: int, /) -> int: ...

    def __len__(self) -> int: ...


def read_metadata_props(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of the ONNX file at ``path``; ModelError if it is not one.

    The file is memory-mapped and only the pages holding field headers and the metadata are
    touched, so this costs kilobytes whatever the model's size.
    """
    with path.open("rb") as handle:
        if handle.seek(0, 2) == 0:
            raise ModelError(f"{path}: not an ONNX model (the file is empty)")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return metadata_props(data, path)


def metadata_props(data: mmap.mmap | bytes, path: Path) -> dict[str, str]:
    """:func:`read_metadata_props` of a serialised ModelProto already in memory."""
    meta: dict[str, str] = {}
    seen_graph = False
    try:
        for field, wire, _, start, end in spans(data, 0, len(data)):
            if field == MODEL_METADATA and wire == LEN:
                entry = {f: bytes(data[s:e]) for f, w, _, s, e in spans(data, start, end)
                         if w == LEN}
                meta[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
            seen_graph |= field == MODEL_GRAPH and wire == LEN
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: not a readable ONNX model ({exc}); the file may be "
                         "truncated or corrupt, copy it again") from exc
    if not seen_graph:
        raise ModelError(f"{path}: not an ONNX model (no graph found)")
    return meta


def external_view(data: mmap.mmap, location: str, min_bytes: int) -> bytes | None:
    """The model with every graph initializer of ``min_bytes`` or more made external data.

    The external data points at ``location`` (the bundle's own file name) at the tensor's
    offset in ``data``; ``None`` when no initializer is that large (load the file as it is).
    Raises ValueError on a malformed file.
    """
    out = bytearray()
    changed = False
    for field, wire, begin, start, end in spans(data, 0, len(data)):
        if field == MODEL_GRAPH and wire == LEN:
            graph, moved = _graph_view(data, start, end, location, min_bytes)
            changed |= moved
            out += _msg(field, graph)
        else:
            out += data[begin:end]
    return bytes(out) if changed else None


def _graph_view(data: mmap.mmap, start: int, end: int, location: str,
                min_bytes: int) -> tuple[bytes, bool]:
    out = bytearray()
    moved = False
    for field, wire, begin, value_start, value_end in spans(data, start, end):
        tensor = None
        if field == GRAPH_INITIALIZER and wire == LEN:
            tensor = _tensor_view(data, value_start, value_end, location, min_bytes)
        if tensor is None:
            out += data[begin:value_end]
            continue
        moved = True
        out += _msg(field, tensor)
    return bytes(out), moved


def _tensor_view(data: mmap.mmap, start: int, end: int, location: str,
                 min_bytes: int) -> bytes | None:
    """The TensorProto with its ``raw_data`` replaced by a reference into the file."""
    fields = list(spans(data, start, end))
    raw = [f for f in fields if f[0] == TENSOR_RAW_DATA and f[1] == LEN]
    if len(raw) != 1 or raw[0][4] - raw[0][3] < min_bytes or any(
            f[0] in (TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION) for f in fields):
        return None
    offset, length = raw[0][3], raw[0][4] - raw[0][3]
    out = bytearray()
    for field, _, begin, _, value_end in fields:
        if field != TENSOR_RAW_DATA:
            out += data[begin:value_end]
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(length))):
        out += _msg(TENSOR_EXTERNAL_DATA, _str(1, key) + _str(2, value))
    out += _int(TENSOR_DATA_LOCATION, EXTERNAL)
    return bytes(out)


def spans(data: Buffer, start: int, end: int) -> Iterator[Span]:
    """Each protobuf field of ``data[start:end]``, by position (nothing is copied)."""
    pos = start
    while pos < end:
        begin = pos
        key, pos = _varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ValueError("malformed field")
        if wire == VARINT:
            value_start = pos
            _, pos = _varint(data, pos, end)
        elif wire in (I64, I32):
            value_start = pos
            pos += 8 if wire == I64 else 4
        elif wire == LEN:
            length, value_start = _varint(data, pos, end)
            pos = value_start + length
        else:
            raise ValueError(f"unexpected wire type {wire}")
        if pos > end:
            raise ValueError("a field runs past the end of the file")
        yield field, wire, begin, value_start, pos


def _varint(data: Buffer, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("malformed varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos
