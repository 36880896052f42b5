"""The int8 pass: projection and feed-forward MatMuls become dynamic int8.

Precondition: weights materialized and folded (every weight a param or const
with data), float32 model, simplified. Postcondition: each chosen MatMul
against a float32 weight reads an int8 copy of that weight instead
(``QuantMatMul``, graphc.prims.quant); the float weights only they read are
gone; the graph verifies.

What is quantized. MatMuls whose right operand is a weight: ``linear`` layers
(and every projection built on graphc.layers.basic.linear_op: attention output
projections, FFN linear1/linear2, GRU/LSTM are ONNX recurrent ops and stay
float) and the per-head attention projections ([B, 1, S, W] @ [n, W, D]).
What stays float, by default: embeddings (Gather), norms, attention scores
and softmax (inside the Attention primitive), recurrent layers, a ``matmul``
layer against a spec ``constant`` (Graph.exact_products: an averaging or
selection matrix meant to be exact; an ``include:`` pattern opts in), and the output
head: a top-level layer whose MatMul reaches a model output with no other
weight MatMul between (an LM head, a classifier), whose errors the user sees
undiluted; ``quantize: {head: true}`` includes it.

Weights: per output channel (column of the stored [K, N] product form),
symmetric: scale_n = max|W[:, n]| / 127, W_q = round(W / scale_n) in
[-127, 127] (half to even), zero point 0; so ONNX needs no weight zero point
(MatMulInteger's per-column b_zero_point, whose support varies by runtime, is
not used). An all-zero column gets scale 1 (its products are 0 either way).

The per-head projection is rewritten to the flat product [B, S, W] @ [W, n*D]
followed by Reshape/Transpose to [B, n, S, D]: int8 kernels are fastest on one
large GEMM (measured 0.16x of float against 0.32x for the batched per-head
int8 form at b8 s256, docs/benchmarks.md).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np

from ..errors import GraphcError, InternalError
from ..shapes import Dim
from .graph import Graph, OpNode, TensorType, ValueInfo, verify


@dataclass
class QuantizeOptions:
    """What to quantize. ``include`` None = every eligible layer."""
    mode: str = "int8"
    include: list = None                 # graphc.specfile.quantize.Pattern
    exclude: list = field(default_factory=list)
    head: bool = False
    block_size: int | None = None        # weight-only int8 in blocks along K (QuantMatMulBlocks), e.g. 32


@dataclass
class QuantizeReport:
    quantized: list[str] = field(default_factory=list)      # layer paths, in graph order
    kept_head: list[str] = field(default_factory=list)
    kept_excluded: list[str] = field(default_factory=list)
    kept_tied: list[str] = field(default_factory=list)      # products reading a transposed shared table
    kept_exact: list[str] = field(default_factory=list)     # `matmul` layers against a spec `constant`
    weight_bytes_before: int = 0
    weight_bytes_after: int = 0


@dataclass
class _Site:
    """One quantizable product: ``op`` (MatMul) of ``x`` by ``weight`` [K, N] (or
    per-head [n, W, D] read through ``reshape``), optionally followed by ``bias_add``."""
    op: OpNode
    x: str
    weight: str
    heads: bool
    reshape: OpNode | None = None
    bias_add: OpNode | None = None
    bias: str | None = None


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[K, N] float -> (int8 [K, N], float32 scale [N]): per column, symmetric."""
    w = np.asarray(w, np.float32)
    amax = np.abs(w).max(axis=0)
    scale = (amax / np.float32(127)).astype(np.float32)
    scale[scale == 0] = 1
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


def quantize_weight_blocks(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """[K, N] float -> (uint8 [N, nb, block], float32 scales [N * nb]), nb = ceil(K / block):
    symmetric per block of ``block`` rows of one column, stored + 128 (MatMulNBits'
    8-bit layout with its default zero point). A K that is not a multiple of ``block``
    is padded with zero rows (stored 128, i.e. 0), as MatMulNBits lays out its last
    block; the product reads only the first K."""
    k, n = w.shape
    nb = -(-k // block)
    w = np.asarray(w, np.float32)
    if nb * block != k:
        w = np.concatenate([w, np.zeros((nb * block - k, n), np.float32)])     # [nb * block, N]
    wt = w.T.reshape(n, nb, block)
    scale = (np.abs(wt).max(axis=2) / np.float32(127)).astype(np.float32)
    scale[scale == 0] = 1
    q = np.clip(np.rint(wt / scale[..., None]), -127, 127).astype(np.int16) + 128
    return q.astype(np.uint8), scale.reshape(-1)


def _weight_value(g: Graph, name: str):
    v = g.value(name)
    if v.kind in ("param", "const") and v.data is not None and v.type.dtype == "float32":
        return v
    return None


def find_sites(g: Graph) -> list[_Site]:
    sites = []
    for op in g.ops():
        if op.op != "MatMul":
            continue
        x, w = op.inputs
        wv = _weight_value(g, w)
        if wv is None or not g.value(x).type.dtype == "float32":
            continue
        site = None
        if wv.type.rank == 2:
            site = _Site(op, x, w, heads=False)
        elif wv.type.rank == 3:
            site = _per_head_site(g, op, x, w)
        if site is None:
            continue
        users = g.users(op.outputs[0])
        if len(users) == 1 and users[0].op == "Add" and op.outputs[0] not in g.outputs.values():
            add = users[0]
            other = [i for i in add.inputs if i != op.outputs[0]]
            n_out = wv.type.shape[-1].value * (wv.type.shape[0].value if site.heads else 1)
            if len(other) == 1 and _weight_value(g, other[0]) is not None \
                    and g.value(other[0]).data.size == n_out and \
                    (not site.heads or g.value(other[0]).type.rank == 3):
                site.bias_add, site.bias = add, other[0]
        sites.append(site)
    return sites


def _per_head_site(g: Graph, op: OpNode, x: str, w: str) -> _Site | None:
    """[B, 1, S, W] (a Reshape of [B, S, W]) @ [n, W, D]: graphc's attention projection."""
    producer = g.value(x).producer
    if producer is None:
        return None
    rs = g.op(producer)
    if rs.op != "Reshape":
        return None
    src = g.value(rs.inputs[0]).type
    t = g.value(x).type
    if src.rank != 3 or t.rank != 4 or t.shape[1] != 1 or t.shape[0] != src.shape[0] or t.shape[2] != src.shape[1]:
        return None
    return _Site(op, rs.inputs[0], w, heads=True, reshape=rs)


def tied_layers(g: Graph) -> list[str]:
    """Layers whose MatMul reads a weight through a run-time Transpose: a ``linear``
    tied to an embedding table (``tie:``). They stay float (the Gather reads the
    float table too, so an int8 copy would add bytes, not save them); the build says so."""
    out = []
    for op in g.ops():
        if op.op != "MatMul" or _weight_value(g, op.inputs[1]) is not None or op.id in g.exact_products:
            continue
        producer = g.value(op.inputs[1]).producer
        if producer is not None and g.op(producer).op == "Transpose" \
                and _weight_value(g, g.op(producer).inputs[0]) is not None and op.layer not in out:
            out.append(op.layer)
    return out


def head_layers(g: Graph, sites: list[_Site]) -> set[str]:
    """Top-level layers whose product reaches a model output with no other weight MatMul between."""
    site_ops = {s.op.id for s in sites}
    outputs = set(g.outputs.values())
    heads = set()
    for s in sites:
        if s.heads or "." in s.op.layer or not s.op.layer:      # attention projections are never a head
            continue
        seen, todo = set(), [s.op.outputs[0]]
        reaches = False
        while todo and not reaches:
            v = todo.pop()
            if v in outputs:
                reaches = True
                break
            for u in g.users(v):
                if u.id in site_ops or u.id in seen:
                    continue
                seen.add(u.id)
                todo.extend(u.outputs)
        if reaches:
            heads.add(s.op.layer)
    return heads


def matches(path: str, pattern: str) -> bool:
    """A pattern matches a layer and everything inside it."""
    parts = path.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def quantize(g: Graph, options: QuantizeOptions) -> QuantizeReport:
    if options.mode != "int8":
        raise InternalError(f"quantize pass called with mode {options.mode}")
    for v in g.values():
        if v.kind in ("input", "param", "const") and v.type.dtype == "float16":
            raise GraphcError("--quantize int8 needs a float32 model", v.span,
                              hint="build with --dtype float32 (int8 replaces float weights; float16 is a separate option)")
    sites = find_sites(g)
    layers = list(dict.fromkeys(s.op.layer for s in sites))
    for pat in list(options.include or []) + list(options.exclude):
        if not any(matches(layer, pat.text) for layer in layers):
            shown = ", ".join(layers[:6]) + (f", ... ({len(layers)} in all)" if len(layers) > 6 else "")
            raise GraphcError(f"quantize pattern '{pat.text}' matches no quantizable layer", pat.span,
                              hint=f"quantizable layers (projections and feed-forward): {shown or 'none'}")
    heads = head_layers(g, sites)
    report = QuantizeReport(kept_tied=tied_layers(g))
    chosen = []
    for s in sites:
        layer = s.op.layer
        included = options.include is None or any(matches(layer, p.text) for p in options.include)
        if any(matches(layer, p.text) for p in options.exclude) or not included:
            _once(report.kept_excluded, layer)
            continue
        if s.op.id in g.exact_products and options.include is None:
            _once(report.kept_exact, layer)      # meant to be exact; an include: pattern opts in
            continue
        if layer in heads and not options.head:
            _once(report.kept_head, layer)
            continue
        chosen.append(s)
    before = {s.weight: g.value(s.weight).data.nbytes for s in chosen}
    quantized_weights: dict[str, tuple[str, str]] = {}
    site_ops = {s.op.id for s in sites}
    for op in g.ops():      # an exact product read through a run-time Transpose (transpose_b) is no site
        if op.id in g.exact_products and op.id not in site_ops:
            _once(report.kept_exact, op.layer)
    for s in chosen:
        _rewrite(g, s, quantized_weights, options.block_size)
        _once(report.quantized, s.op.layer)
    report.weight_bytes_before = sum(before.values())
    report.weight_bytes_after = sum(g.value(q).data.nbytes + g.value(sc).data.nbytes
                                    for q, sc in quantized_weights.values())
    verify(g)
    return report


def _once(items: list, x) -> None:
    if x not in items:
        items.append(x)


def _const(g: Graph, name: str, array: np.ndarray, like: ValueInfo) -> str:
    base, k = name, 1
    while g.has_value(name):
        k += 1
        name = f"{base}_{k}"
    dtype = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8", np.dtype(np.float32): "float32"}[array.dtype]
    g.add_value(ValueInfo(name, TensorType(dtype, tuple(Dim.const(int(d)) for d in array.shape)), "const",
                          data=np.ascontiguousarray(array), span=like.span))
    return name


def _rewrite(g: Graph, s: _Site, done: dict[str, tuple[str, str]], block: int | None = None) -> None:
    op = s.op
    wv = g.value(s.weight)
    # any K: a K that is not a multiple of the block is padded (per-tensor dynamic int8
    # instead would make a row's result depend on the other rows, which --target ort's
    # blocks are there to prevent)
    blocks = block is not None
    if s.weight not in done:
        w = wv.data
        if s.heads:
            n, width, d = w.shape
            w = np.ascontiguousarray(np.transpose(w, (1, 0, 2))).reshape(width, n * d)   # [n, W, D] -> [W, n*D]
        if blocks:
            q, scale = quantize_weight_blocks(w, block)
            done[s.weight] = (_const(g, s.weight + ".int8_blocks", q, wv), _const(g, s.weight + ".scales", scale, wv))
        else:
            q, scale = quantize_weight(w)
            done[s.weight] = (_const(g, s.weight + ".int8", q, wv), _const(g, s.weight + ".scale", scale, wv))
    wq, ws = done[s.weight]
    new_ops: list[str] = []

    def emit(prim: str, inputs: list[str], out_type: TensorType, **attrs) -> str:
        oid = f"{op.id}/quant/{prim}_{len(new_ops)}"
        g.add_value(ValueInfo(oid, out_type, span=op.span))
        g.add_op(OpNode(oid, prim, inputs, [oid], attrs, op.span, op.layer))
        new_ops.append(oid)
        return oid

    # read x from the graph, not from the site: an earlier rewrite may have replaced it
    # (linear -> linear, or a linear feeding an attention's projections: the first one's
    # bias Add, which ``s.x`` names, is gone)
    x = s.reshape.inputs[0] if s.heads else op.inputs[0]
    xt = g.value(x).type
    wt = g.value(wq).type
    if wt.dtype == "uint8":                 # [N, K / block, block]
        y = emit("QuantMatMulBlocks", [x, wq, ws], TensorType("float32", xt.shape[:-1] + (wt.shape[0],)))
    else:
        y = emit("QuantMatMul", [x, wq, ws], TensorType("float32", xt.shape[:-1] + (wt.shape[1],)))
    if s.bias is not None:
        bias = s.bias
        if s.heads:
            bias = _const(g, s.bias + ".flat", g.value(s.bias).data.reshape(-1), g.value(s.bias))
        y = emit("Add", [y, bias], g.value(y).type)
    final = s.bias_add.outputs[0] if s.bias_add is not None else op.outputs[0]
    if s.heads:
        bsz, seq = xt.shape[0], xt.shape[1]
        n, d = wv.type.shape[0], wv.type.shape[2]
        y = emit("Reshape", [y], TensorType("float32", (bsz, seq, n, d)), shape=(bsz, seq, n, d))   # [B, S, n*D] -> [B, S, n, D]
        y = emit("Transpose", [y], g.value(final).type, perm=[0, 2, 1, 3])                          # -> [B, n, S, D]
    g.replace_uses(final, y)
    g.place_after((s.bias_add or op).id, new_ops)
    # the float product (and its Reshape) is now unread: drop it and the weights only it read
    if s.bias_add is not None:
        g.drop_op(s.bias_add.id)
    g.drop_op(op.id)
    if s.reshape is not None and not g.users(s.reshape.outputs[0]):
        g.drop_op(s.reshape.id)
    for name in (s.weight, s.bias):
        if name and g.has_value(name) and not g.users(name) and name not in g.outputs.values():
            g.remove_value(name)
