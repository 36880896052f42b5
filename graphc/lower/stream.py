"""Write an ONNX model with its weights streamed from numpy arrays.

Why: the ordinary route copies every weight three times on its way to disk
(numpy array -> TensorProto.raw_data -> the serialised bytes -> the kernel),
which on the 6+6 Transformer was most of the compile time and made the peak
memory four times the weights. Here the model proto holds everything but the
weight bytes, and the weights go from their arrays straight to the file.

How, in protobuf's wire format (which is public and stable): a message is a
sequence of fields, each ``key = field_number << 3 | wire_type`` then, for
length-delimited fields (wire type 2: messages, bytes), a varint length and
the payload. Parsers accept fields in any order and merge repeated fields
wherever they appear. So the file is

    ModelProto without its graph            (serialised by protobuf)
    key(7) len  GraphProto:                 (ModelProto.graph = 7)
        graph without the big initializers  (serialised by protobuf)
        per weight: key(5) len TensorProto: (GraphProto.initializer = 5)
            name, dims, data_type           (serialised by protobuf)
            key(9) len raw bytes            (TensorProto.raw_data = 9)

which ``onnx.load`` and ONNX Runtime read as the same model the ordinary
route gives (tested: tests/test_stream.py). The output is deterministic: the
same arrays in the same (sorted) order give the same bytes.
"""
from __future__ import annotations

from typing import BinaryIO, Sequence

import numpy as np
from . import proto as onnx      # onnx's message classes, without import onnx (graphc.lower.proto)

MODEL_GRAPH = 7
GRAPH_INITIALIZER = 5
TENSOR_RAW_DATA = 9
LENGTH_DELIMITED = 2


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def key(field: int, wire_type: int = LENGTH_DELIMITED) -> bytes:
    return varint(field << 3 | wire_type)


def raw_view(array: np.ndarray) -> memoryview | bytes:
    """The little-endian bytes ONNX's raw_data wants, without a copy when the
    array already is (contiguous float/int on x86 and ARM)."""
    if array.dtype == np.bool_:
        array = array.view(np.uint8)
    elif not array.dtype.isnative or not np.little_endian:
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).reshape(-1).data.cast("B")     # flat: empty and 0-d tensors too


def _describe(t: onnx.TensorProto, name: str, array: np.ndarray) -> onnx.TensorProto:
    """Fill a tensor's name, dims and type from the array (no data)."""
    t.name = name
    t.dims.extend(array.shape)
    t.data_type = onnx.np_dtype_to_tensor_dtype(array.dtype)
    return t


def write_model(f: BinaryIO, model: onnx.ModelProto, weights: Sequence[tuple[str, np.ndarray]]) -> int:
    """Write ``model`` plus ``weights`` (name, array) as initializers of its graph.
    Returns the bytes written. ``model`` must not itself hold these names."""
    graph_head = model.graph.SerializeToString(deterministic=True)
    shell = onnx.ModelProto()
    shell.CopyFrom(model)
    shell.ClearField("graph")
    model_head = shell.SerializeToString(deterministic=True)
    parts = []
    graph_len = len(graph_head)
    for name, array in weights:
        raw = raw_view(array)
        head = (_describe(onnx.TensorProto(), name, array).SerializeToString(deterministic=True)
                + key(TENSOR_RAW_DATA) + varint(raw.nbytes))
        tensor_len = len(head) + raw.nbytes
        prefix = key(GRAPH_INITIALIZER) + varint(tensor_len) + head
        parts.append((prefix, raw))
        graph_len += len(prefix) + raw.nbytes
    total = 0
    for chunk in (model_head, key(MODEL_GRAPH), varint(graph_len), graph_head):
        total += f.write(chunk)
    for prefix, raw in parts:
        total += f.write(prefix)
        total += f.write(raw)
    return total


def with_external_data(model: onnx.ModelProto, weights: Sequence[tuple[str, np.ndarray]], data: BinaryIO,
                       location: str) -> onnx.ModelProto:
    """Write the weights one after another into ``data`` and return a copy of
    ``model`` whose initializers point there (ONNX external data: location,
    offset, length), for models past protobuf's 2 GiB limit. Offsets are
    aligned to 4096 bytes, as onnx's own writer can, so runtimes may mmap."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    offset = 0
    for name, array in weights:
        pad = -offset % 4096
        if pad:
            data.write(b"\0" * pad)
            offset += pad
        raw = raw_view(array)
        data.write(raw)
        t = _describe(out.graph.initializer.add(), name, array)
        t.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(raw.nbytes))):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
        offset += raw.nbytes
    return out



def split_weights(model: onnx.ModelProto, names) -> tuple[onnx.ModelProto, list[tuple[str, np.ndarray]]]:
    """A model whose weights are inline initializers -> (the model without the
    initializers named in ``names``, their (name, array) in order): the pair
    lower_by_reference returns, so write_model and save_model lay it out as a
    streamed build. Why: a ``Compiled`` that keeps its weights in the proto and
    one that does not must give the same bytes (``graphc build`` streams; a
    library caller keeps the proto by default), and protobuf's own serialisation
    puts the initializers in the middle of the graph instead of after it.
    The arrays are read-only views of copies of each tensor's raw_data."""
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    inits = bare.graph.initializer
    arrays = []
    for i in reversed(range(len(inits))):
        t = inits[i]
        if t.name in names:
            dtype = _ONNX_TO_NP[t.data_type]
            data = np.frombuffer(t.raw_data, dtype=np.uint8 if dtype == np.bool_ else dtype)
            arrays.append((t.name, data.view(dtype).reshape(tuple(t.dims))))
            del inits[i]
    arrays.reverse()
    return bare, arrays


_ONNX_TO_NP = {onnx.np_dtype_to_tensor_dtype(d): np.dtype(d) for d in
               (np.float32, np.float16, np.float64, np.int8, np.uint8, np.int16, np.uint16, np.int32,
                np.uint32, np.int64, np.uint64, np.bool_)}
