"""ONNX's protobuf classes, and the few ``onnx.helper`` functions the lowering
uses, without ``import onnx``.

Why: ``import onnx`` imports ``ml_dtypes`` (onnx.helper -> onnx._mapping), whose
C extension registers ufunc loops for a dozen extension dtypes one at a time,
each registration scanning the ones before it; on this project's machines that
import alone took 1.1-1.8 s, more than everything else ``graphc build`` does to
the 6+6 Transformer together (docs/benchmarks.md, "Compile wall time"). A build
needs none of it: it fills protobuf messages and serialises them.

The classes are onnx's own: ``onnx/onnx_ml_pb2.py`` (protoc output, which
imports only protobuf) is executed under its own module name,
``onnx.onnx_ml_pb2``, without running the ``onnx`` package's ``__init__``. A
later ``import onnx`` (``graphc build --check``, ``graphc run``, a test) finds
that module in ``sys.modules`` and reuses it, so ``onnx.ModelProto is
proto.ModelProto`` and every onnx function accepts what graphc built. (The
one difference: when onnx is imported by other code, the attribute
``onnx.onnx_ml_pb2`` is not set on the package, since Python binds a submodule
only when it loads it; ``from onnx import onnx_ml_pb2`` still works, as Python
falls back to ``sys.modules``, and ``import_onnx`` below binds it.) If onnx has
already been imported, its module is
used as is; if the file is not where a normal onnx install puts it, graphc
imports onnx the ordinary way.

The helpers below follow onnx.helper's behaviour exactly, field by field, so
the bytes of every model are the same as before (tests/test_proto.py compares
them with onnx.helper's output, message by message).
"""
from __future__ import annotations

import importlib
import importlib.util
import numbers
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

_PB2 = "onnx.onnx_ml_pb2"


def _load_pb2():
    module = sys.modules.get(_PB2)
    if module is not None:
        return module
    if "onnx" not in sys.modules:
        spec = importlib.util.find_spec("onnx")          # finds the package without importing it
        for folder in (spec.submodule_search_locations or []) if spec else []:
            path = os.path.join(folder, "onnx_ml_pb2.py")
            if os.path.isfile(path):
                file_spec = importlib.util.spec_from_file_location(_PB2, path)
                module = importlib.util.module_from_spec(file_spec)
                sys.modules[_PB2] = module
                try:
                    file_spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[_PB2]
                    raise
                return module
    return importlib.import_module(_PB2)                 # the ordinary route (imports onnx)


_pb2 = _load_pb2()
AttributeProto = _pb2.AttributeProto
GraphProto = _pb2.GraphProto
ModelProto = _pb2.ModelProto
NodeProto = _pb2.NodeProto
OperatorSetIdProto = _pb2.OperatorSetIdProto
TensorProto = _pb2.TensorProto
TypeProto = _pb2.TypeProto
ValueInfoProto = _pb2.ValueInfoProto

# numpy dtype -> TensorProto data type, for the dtypes graphc emits (onnx._mapping's pairs)
_NP_TO_ONNX = {
    np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint16): TensorProto.UINT16,
    np.dtype(np.int16): TensorProto.INT16, np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.int64): TensorProto.INT64, np.dtype(np.bool_): TensorProto.BOOL,
    np.dtype(np.float16): TensorProto.FLOAT16, np.dtype(np.float64): TensorProto.DOUBLE,
    np.dtype(np.uint32): TensorProto.UINT32, np.dtype(np.uint64): TensorProto.UINT64,
}
_ONNX_TO_NP = {v: k for k, v in _NP_TO_ONNX.items()}
# where make_tensor stores non-raw values (onnx.helper.tensor_dtype_to_field), and as what
_FIELD = {
    TensorProto.FLOAT: ("float_data", None), TensorProto.DOUBLE: ("double_data", None),
    TensorProto.INT64: ("int64_data", None), TensorProto.INT32: ("int32_data", None),
    TensorProto.INT16: ("int32_data", None), TensorProto.INT8: ("int32_data", None),
    TensorProto.UINT16: ("int32_data", None), TensorProto.UINT8: ("int32_data", None),
    TensorProto.BOOL: ("int32_data", np.uint8), TensorProto.FLOAT16: ("int32_data", "view_uint16"),
    TensorProto.UINT32: ("uint64_data", None), TensorProto.UINT64: ("uint64_data", None),
}
# the lowest IR version each ai.onnx opset needs (onnx.helper.OP_SET_ID_VERSION_MAP, onnx 1.23)
_IR_FOR_OPSET = {15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10, 22: 10, 23: 11, 24: 12, 25: 13, 26: 13}
_UNKNOWN_DOMAIN_IR = 3          # onnx.helper's default for a domain it does not know (com.microsoft)


def import_onnx():
    """The onnx package itself, for what a build does not need (checker, shape
    inference, external-data saving), imported with Ctrl-C deferred: a Ctrl-C
    inside onnx's C-extension initialisation crashes the process (SIGSEGV)."""
    from ..interrupt import deferred
    with deferred():
        import onnx
    if not hasattr(onnx, "onnx_ml_pb2"):       # loaded by _load_pb2 before onnx: bind it as an import would
        onnx.onnx_ml_pb2 = _pb2
    return onnx


def np_dtype_to_tensor_dtype(dtype) -> int:
    try:
        return _NP_TO_ONNX[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"Unable to convert type {dtype!r} into TensorProto element type.") from None


def make_attribute(key: str, value: Any) -> AttributeProto:
    attr = AttributeProto()
    attr.name = key
    if isinstance(value, numbers.Integral):
        attr.i, attr.type = int(value), AttributeProto.INT
    elif isinstance(value, numbers.Real):
        attr.f, attr.type = float(value), AttributeProto.FLOAT
    elif isinstance(value, (str, bytes)):
        attr.s, attr.type = _to_bytes(value), AttributeProto.STRING
    elif isinstance(value, TensorProto):
        attr.t.CopyFrom(value)
        attr.type = AttributeProto.TENSOR
    elif isinstance(value, GraphProto):
        attr.g.CopyFrom(value)
        attr.type = AttributeProto.GRAPH
    elif isinstance(value, Iterable):
        value = list(value)
        types = {type(v) for v in value}
        if not value:
            raise ValueError(f"Could not infer attribute `{key}` type from empty iterator")
        if all(issubclass(t, numbers.Integral) for t in types):
            attr.ints.extend(value)
            attr.type = AttributeProto.INTS
        elif all(issubclass(t, numbers.Real) for t in types):
            attr.floats.extend(value)
            attr.type = AttributeProto.FLOATS
        elif all(issubclass(t, (str, bytes)) for t in types):
            attr.strings.extend(_to_bytes(v) for v in value)
            attr.type = AttributeProto.STRINGS
        elif all(issubclass(t, TensorProto) for t in types):
            attr.tensors.extend(value)
            attr.type = AttributeProto.TENSORS
        elif all(issubclass(t, GraphProto) for t in types):
            attr.graphs.extend(value)
            attr.type = AttributeProto.GRAPHS
        else:
            raise ValueError(f"Could not infer the attribute type of `{key}` from the elements of the passed Iterable value.")
    else:
        raise TypeError(f"'{value}' is not an accepted attribute value.")
    return attr


def _to_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


def make_node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str | None = None,
              doc_string: str | None = None, domain: str | None = None, **attrs: Any) -> NodeProto:
    node = NodeProto()
    node.op_type = op_type
    node.input.extend(inputs)
    node.output.extend(outputs)
    if name:
        node.name = name
    if doc_string:
        node.doc_string = doc_string
    if domain is not None:
        node.domain = domain
    if attrs:
        node.attribute.extend(make_attribute(k, v) for k, v in sorted(attrs.items()) if v is not None)
    return node


def make_tensor(name: str, data_type: int, dims: Sequence[int], vals) -> TensorProto:
    """A small tensor stored in the typed fields (not raw_data), as onnx.helper.make_tensor(raw=False)."""
    if data_type not in _FIELD:
        raise ValueError(f"graphc's make_tensor does not store data type {data_type}")
    tensor = TensorProto()
    tensor.data_type = data_type
    tensor.name = name
    tensor.dims.extend(dims)
    values = np.asarray(vals, dtype=_ONNX_TO_NP[data_type]).flatten()
    count = 1
    for d in dims:
        count *= int(d)
    if len(values) != count:
        raise ValueError(f"Number of values ({len(values)}) does not match tensor dimensions requiring {count} elements.")
    field, convert = _FIELD[data_type]
    if convert == "view_uint16":
        values = values.view(np.uint16)
    elif convert is not None:
        values = values.astype(convert)
    getattr(tensor, field).extend(values)
    return tensor


def from_array(array: np.ndarray, name: str | None = None) -> TensorProto:
    """A tensor holding ``array`` as little-endian raw_data, as onnx.numpy_helper.from_array."""
    tensor = TensorProto()
    tensor.dims.extend(array.shape)
    if name:
        tensor.name = name
    data_type = np_dtype_to_tensor_dtype(array.dtype)
    if array.dtype.byteorder == ">" or (sys.byteorder == "big" and array.dtype.byteorder == "="):
        array = array.astype(array.dtype.newbyteorder("<"))
    tensor.raw_data = array.tobytes()
    tensor.data_type = data_type
    return tensor


def make_tensor_value_info(name: str, elem_type: int, shape: Sequence[str | int | None] | None) -> ValueInfoProto:
    info = ValueInfoProto()
    info.name = name
    tensor_type = info.type.tensor_type
    tensor_type.elem_type = elem_type
    if shape is not None:
        shape_proto = tensor_type.shape
        shape_proto.dim.extend([])          # marks the shape present: a scalar ([]) has an empty shape, None has none
        for d in shape:
            dim = shape_proto.dim.add()
            if d is None:
                continue
            if isinstance(d, int):
                dim.dim_value = d
            elif isinstance(d, str):
                dim.dim_param = d
            else:
                raise ValueError(f"Invalid item in shape: {d}. Needs to be of int or str.")
    return info


def make_graph(nodes: Sequence[NodeProto], name: str, inputs: Sequence[ValueInfoProto],
               outputs: Sequence[ValueInfoProto], initializer: Sequence[TensorProto] = ()) -> GraphProto:
    graph = GraphProto()
    graph.node.extend(nodes)
    graph.name = name
    graph.input.extend(inputs)
    graph.output.extend(outputs)
    graph.initializer.extend(initializer)
    return graph


def make_opsetid(domain: str, version: int) -> OperatorSetIdProto:
    opset = OperatorSetIdProto()
    opset.domain = domain
    opset.version = version
    return opset


def find_min_ir_version_for(opsets: Iterable[OperatorSetIdProto], ignore_unknown: bool = True) -> int:
    """The lowest IR version the opsets need; an unknown domain counts as IR 3 (onnx.helper's rule)."""
    found = _UNKNOWN_DOMAIN_IR
    for o in opsets:
        if o.domain in ("", "ai.onnx"):
            if o.version not in _IR_FOR_OPSET:
                raise ValueError(f"graphc does not know the IR version of ai.onnx opset {o.version}")
            found = max(found, _IR_FOR_OPSET[o.version])
        elif not ignore_unknown:
            raise ValueError("Unsupported opset-version.")
    return found


def set_model_props(model: ModelProto, props: Mapping[str, str]) -> None:
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
