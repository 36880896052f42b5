"""Assemble, check and write ONNX models.

Determinism: nodes and initializers are emitted in the IR's (deterministic)
order, names come from the spec, metadata holds no timestamps, and protobuf is
serialised with ``deterministic=True``, so the same spec, weights and seed give
byte-identical files.
"""
from __future__ import annotations

import os
import shutil
from typing import Callable, Sequence

import numpy as np

from .. import __version__
from ..errors import GraphcError, InternalError
from ..interrupt import checkpoint, deferred, terminate_as_interrupt
from ..ir import Graph, contract
from ..shapes import Dim
from . import proto
from .context import LowerContext
from .ops_core import ONNX_DTYPE
from . import ops_attention, ops_recurrent, ops_quant, target_ort  # noqa: F401  (registration)
from .targets import MS_DOMAIN, check_target, lowering_for

MIN_OPSET = 17
DEFAULT_OPSET = 17
MAX_OPSET = 26          # the newest ai.onnx opset ONNX Runtime 1.31 accepts
EXTERNAL_DATA_THRESHOLD = 2_000_000_000   # protobuf's hard limit is 2 GiB


def dim_proto_value(d: Dim) -> int | str:
    return d.value if d.is_const else str(d).replace(" ", "")


def _value_info(name: str, dtype: str, shape) -> proto.ValueInfoProto:
    return proto.make_tensor_value_info(name, ONNX_DTYPE[dtype], [dim_proto_value(d) for d in shape])


def lower(g: Graph, opset: int = DEFAULT_OPSET, release_weights: bool = False, target: str = "onnx") -> proto.ModelProto:
    """The whole model as one proto, weights included (``release_weights``
    drops each weight from the graph once the proto holds a copy)."""
    model, weights = lower_by_reference(g, opset, target)
    graph = model.graph
    for name, data in weights:
        _add_initializer(graph, name, data)
        if release_weights:
            g.value(name).data = None   # the proto now owns the bytes
    return model


def lower_by_reference(g: Graph, opset: int = DEFAULT_OPSET,
                       target: str = "onnx") -> tuple[proto.ModelProto, list[tuple[str, np.ndarray]]]:
    """The model without its weights, and the (name, array) of each weight in
    initializer order (the graph's own arrays, not copies): ``save_model(model, path, weights)`` streams their
    arrays to the file without copying them into the proto (graphc.lower.stream)."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise GraphcError(f"opset {opset} is not supported",
                          hint=f"choose an opset from {MIN_OPSET} to {MAX_OPSET} (the newest ONNX Runtime accepts)")
    ctx = LowerContext(g, opset, check_target(target))
    for op in g.ops():
        ctx.current = op
        fn = lowering_for(op.op, target)
        if fn is None:
            raise InternalError(f"no ONNX lowering for primitive {op.op} (was it folded?)")
        fn(ctx, op)
    ctx.current = None
    used = _names_read(ctx.nodes)
    weights = []
    for v in g.values():
        if v.kind in ("param", "const"):
            if v.data is None:
                raise InternalError(f"parameter '{v.name}' has no data: materialize() first")
            if v.name in used or v.name in g.outputs.values():
                weights.append(v)
    weights.sort(key=lambda v: v.name)
    inputs = [_value_info(n, g.value(n).type.dtype, g.value(n).type.shape) for n in g.inputs]
    outputs = []
    for public, name in g.outputs.items():
        v = g.value(name)
        outputs.append(_value_info(public, v.type.dtype, v.type.shape))
    _rename_outputs(ctx, g)
    opsets = [proto.make_opsetid("", opset)]
    if any(n.domain == MS_DOMAIN for n in ctx.nodes):
        opsets.append(proto.make_opsetid(MS_DOMAIN, 1))
    # Built in place rather than with onnx.helper.make_graph/make_model, which copy every
    # initializer twice more: on a 178 MB model that was a third of the compile time.
    model = proto.ModelProto()
    model.producer_name, model.producer_version = "graphc", __version__
    model.opset_import.extend(opsets)
    graph = model.graph
    graph.name = g.name
    graph.node.extend(ctx.nodes)
    graph.input.extend(inputs)
    graph.output.extend(outputs)
    graph.initializer.extend(ctx.extra_initializers)
    # ORT 1.31 refuses IR > 13 and onnx 1.23 stamps 14: use the lowest the opset needs
    model.ir_version = proto.find_min_ir_version_for(opsets, ignore_unknown=True)
    meta = dict(g.metadata)
    meta["graphc.version"] = __version__
    meta["graphc.opset"] = str(opset)
    if target != "onnx":
        meta["graphc.target"] = target
    meta.update(contract.encode(g.dim_examples, g.input_ranges))     # graphc.ir.contract reads them back
    proto.set_model_props(model, dict(sorted(meta.items())))
    return model, [(v.name, v.data) for v in weights]


def _names_read(nodes) -> set[str]:
    """Every name the nodes read, including from inside If branches (a weight
    read only by a guarded MatMul is still a weight of the model)."""
    used: set[str] = set()
    for n in nodes:
        used.update(n.input)
        for a in n.attribute:
            if a.type == proto.AttributeProto.GRAPH:
                used |= _names_read(a.g.node)
            elif a.type == proto.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    used |= _names_read(sub.node)
    return used


def _add_initializer(graph: proto.GraphProto, name: str, data) -> None:
    t = graph.initializer.add()
    t.name = name
    t.dims.extend(data.shape)
    t.data_type = proto.np_dtype_to_tensor_dtype(data.dtype)
    if data.dtype == bool:
        t.raw_data = data.astype("uint8").tobytes()
    else:
        t.raw_data = data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes()


def _rename_outputs(ctx: LowerContext, g: Graph) -> None:
    """Graph outputs carry the spec's public names: rename the producing node's output."""
    mapping = {name: public for public, name in g.outputs.items()}
    _rename_in(ctx.nodes, mapping)
    for v in g.inputs:
        if v in mapping:
            raise InternalError("an input is a graph output without an Identity")


def _rename_in(nodes, mapping: dict) -> None:
    """Rename in these nodes and in the If branches inside them: a branch may read
    a value of the outer graph that is a graph output (a KV cache's present key
    read by a guarded fused Attention)."""
    for node in nodes:
        for i, o in enumerate(node.output):
            if o in mapping:
                node.output[i] = mapping[o]
        for i, inp in enumerate(node.input):
            if inp in mapping:
                node.input[i] = mapping[inp]
        for a in node.attribute:
            if a.type == proto.AttributeProto.GRAPH:
                _rename_in(a.g.node, mapping)
            elif a.type == proto.AttributeProto.GRAPHS:
                for sub in a.graphs:
                    _rename_in(sub.node, mapping)


def serialize(model: proto.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def check_model(model: proto.ModelProto, expected_outputs: dict | None = None) -> None:
    """The ONNX checker (full) plus strict shape inference; graphc's own output
    shapes must agree with what ONNX infers."""
    onnx = proto.import_onnx()     # here, not at the top: a build without --check never imports onnx
    try:
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise InternalError(f"graphc emitted an invalid ONNX model: {exc}") from None
    declared = {o.name: o for o in model.graph.output}
    for o in inferred.graph.output:
        ours = [d.dim_value or d.dim_param for d in declared[o.name].type.tensor_type.shape.dim]
        theirs = [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim]
        if ours != theirs:
            raise InternalError(f"output {o.name}: graphc says {ours}, ONNX infers {theirs}")


def check_model_file(path: str | os.PathLike) -> None:
    """check_model on a written file, as a runtime would read it."""
    onnx = proto.import_onnx()
    check_model(onnx.load(str(path)))


def save_model(model: proto.ModelProto, path: str | os.PathLike, weights: Sequence[tuple[str, np.ndarray]] = (),
               verify: Callable[[str], None] | None = None) -> int:
    """Write atomically: into a private temporary directory beside ``path``,
    then a rename. A failure, Ctrl-C or SIGTERM leaves an earlier file intact
    and no partial file. ``weights`` (name, array), from lower_by_reference,
    are streamed from their arrays (graphc.lower.stream) instead of being
    copied into the proto first. Models whose weights exceed 2 GB store them
    in '<name>.data' beside the file; the two renames that put that pair in
    place run with Ctrl-C deferred, so the pair is never half replaced.
    ``verify(temporary_path)`` runs on the written file before it is put in
    place (``graphc build --check``): a model that fails it never lands."""
    from .stream import with_external_data, write_model
    from ..atomic_write import output_target, private_temp_dir, put_in_place, replace_keeping_mode
    shown = path
    target = output_target(path)
    path = target.path
    total = sum(len(t.raw_data) for t in model.graph.initializer) + sum(a.nbytes for _, a in weights)
    if target.stream and total > EXTERNAL_DATA_THRESHOLD:
        raise GraphcError(f"cannot write {shown}: a model over 2 GB is two files (the model and its "
                          f"'.data'), which a device or pipe cannot hold", hint="give a file path")
    data_path = path.with_name(path.name + ".data")
    tmp_paths: list[str] = []
    try:
        with terminate_as_interrupt():
            with deferred():     # no window where the temporary directory exists unrecorded
                tmp_dir = private_temp_dir(target)
                tmp_paths.append(tmp_dir)
            tmp_model = os.path.join(tmp_dir, path.name)
            tmp_data = os.path.join(tmp_dir, data_path.name)
            if total > EXTERNAL_DATA_THRESHOLD:
                if weights:
                    with open(tmp_data, "wb") as f:
                        model = with_external_data(model, weights, f, data_path.name)
                # onnx writes the data file beside the model it saves (its own
                # tensors: all of them for a full proto, none after the line above)
                proto.import_onnx().save_model(model, tmp_model, save_as_external_data=True, all_tensors_to_one_file=True,
                                location=data_path.name, size_threshold=1024)
            else:
                with open(tmp_model, "wb") as f:
                    write_model(f, model, weights)
            if verify is not None:
                verify(tmp_model)
            checkpoint()                  # a Ctrl-C swallowed while writing: the old file stays
            with deferred():
                # rename is atomic: readers see the old file or the new one, never a part
                # (no fsync: that guards against power loss, at seconds per big model)
                if os.path.exists(tmp_data):     # absent when every tensor is under size_threshold
                    replace_keeping_mode(tmp_data, data_path)
                size = os.path.getsize(tmp_model)
                put_in_place(tmp_model, target)
            external = total > EXTERNAL_DATA_THRESHOLD and data_path.exists()
            return size + (os.path.getsize(data_path) if external else 0)
    except OSError as exc:
        raise GraphcError(f"cannot write {shown}: {exc.strerror or exc}") from None
    finally:
        for t in tmp_paths:
            shutil.rmtree(t, ignore_errors=True)
