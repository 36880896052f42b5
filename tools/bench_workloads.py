"""The benchmark's workloads (tools/bench.py, bench_compile.py, bench_quant.py): each
a spec of specs/, the torch module it is the equivalent of (tools/bench_baselines.py),
the input cases timed, their inputs, and their FLOP count.

Kept free of torch, and of graphc at import time (only ``flops`` imports it, to count with
graphc's own FLOP rules), so every benchmark process can import it.
"""
from __future__ import annotations

import functools

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

D, HEADS, FF = 512, 8, 2048          # the Transformer workloads' widths
RNN_IN, RNN_H = 256, 512


@dataclass
class Case:
    label: str
    dims: dict                       # batch, seq (src_seq/tgt_seq for the Transformer)
    lengths: tuple | None = None     # key padding: valid tokens per batch row


@dataclass
class Workload:
    name: str
    spec: str
    torch_args: tuple                # forward(*args) order; also the exported models' input names
    outputs: tuple                   # graphc output names, in the torch module's return order
    cases: list
    quick_cases: list
    dynamic: dict                    # arg -> its dynamic axes, for the dynamo exporter
    example: dict = field(default_factory=lambda: {"batch": 2, "seq": 17})   # the dynamo exporter traces
                                     # here: sizes 0 and 1 would be specialised, and 17 equals no other dim


def _bs(b, s, **kw):
    return Case(f"b{b} s{s}" + (" padded" if kw.get("lengths") else ""), {"batch": b, "seq": s}, **kw)


BS = (0, 1)        # batch and sequence axes
WORKLOADS = {w.name: w for w in [
    Workload("mha", "specs/mha.yaml", ("x", "key_padding_mask"), ("y",), [_bs(1, 128), _bs(8, 256)], [_bs(2, 8)],
             {"x": BS, "key_padding_mask": BS}),
    Workload("mha_causal", "specs/mha_causal.yaml", ("x",), ("y",), [_bs(1, 128), _bs(8, 256)], [_bs(2, 8)],
             {"x": BS}),
    Workload("encoder", "specs/transformer_encoder.yaml", ("src", "src_key_padding_mask"), ("memory",),
             [_bs(1, 128), _bs(8, 256), _bs(8, 256, lengths=tuple(int(v) for v in np.linspace(90, 256, 8).round()))],
             [_bs(2, 8), _bs(2, 8, lengths=(5, 8))], {"src": BS, "src_key_padding_mask": BS}),
    Workload("transformer", "specs/transformer.yaml",
             ("src", "tgt", "src_key_padding_mask", "tgt_key_padding_mask"), ("out",),
             [Case("b1 s128/128", {"batch": 1, "src_seq": 128, "tgt_seq": 128}),
              Case("b4 s128/128", {"batch": 4, "src_seq": 128, "tgt_seq": 128})],
             [Case("b2 s8/6", {"batch": 2, "src_seq": 8, "tgt_seq": 6})],
             {"src": BS, "tgt": BS, "src_key_padding_mask": BS, "tgt_key_padding_mask": BS},
             {"batch": 2, "src_seq": 17, "tgt_seq": 13}),
    Workload("lstm", "specs/lstm.yaml", ("x",), ("y", "h_n", "c_n"), [_bs(8, 100)], [_bs(2, 6)], {"x": BS}),
    Workload("lstm_uni", "specs/lstm_uni.yaml", ("x",), ("y", "h_n", "c_n"), [_bs(8, 100)], [_bs(2, 6)], {"x": BS}),
    Workload("gru", "specs/gru.yaml", ("x", "h0"), ("y", "h_n"), [_bs(8, 100)], [_bs(2, 6)], {"x": BS, "h0": (1,)}),
]}


def make_inputs(w: Workload, case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs in graphc's names (a superset of the torch module's: LSTM lengths)."""
    rng = np.random.default_rng(seed)
    d = case.dims
    b = d["batch"]

    def pad_mask(s):
        lengths = case.lengths or (s,) * b
        return np.arange(s)[None, :] >= np.asarray(lengths)[:, None]     # True = padding

    if w.name == "transformer":
        return {"src": rng.standard_normal((b, d["src_seq"], D), np.float32),
                "tgt": rng.standard_normal((b, d["tgt_seq"], D), np.float32),
                "src_key_padding_mask": pad_mask(d["src_seq"]), "tgt_key_padding_mask": pad_mask(d["tgt_seq"])}
    s = d["seq"]
    if w.name in ("lstm", "lstm_uni", "gru"):
        feeds = {"x": rng.standard_normal((b, s, RNN_IN), np.float32)}
        if w.name == "gru":
            feeds["h0"] = rng.standard_normal((2, b, RNN_H), np.float32)
        else:
            feeds["lengths"] = np.full((b,), s, np.int64)
        return feeds
    x, mask = rng.standard_normal((b, s, D), np.float32), pad_mask(s)
    return dict(zip(w.torch_args, (x, mask)))          # mha, mha_causal (no mask), encoder


# the products' FLOPs, counted by graphc's own per-primitive rules (graphc.prims._flops: one
# multiply-add = 2); the softmax term of the Attention rule (one per score) and elementwise
# ops are left out: the convention of shared/ANCHORS.md's GFLOP column
PRODUCTS = ("MatMul", "QuantMatMul", "QuantMatMulBlocks", "LSTM", "GRU")


@functools.lru_cache(maxsize=None)
def _graph(spec: str):
    from graphc.expand import build_graph
    from graphc.specfile import load_spec
    return build_graph(load_spec(str(ROOT / spec)))


def flops(name: str, dims: dict) -> int:
    """Multiply-adds x 2 of every product of the workload's spec at ``dims`` (attention scores
    and mixing counted in full, causal or not; a recurrent layer's rule, whose gate arithmetic
    adds 0.1%), by graphc's FLOP rules rather than a second formula here."""
    from graphc.analysis import op_flops
    from graphc.prims._flops import numel
    g = _graph(WORKLOADS[name].spec)
    total = 0
    for op in g.ops():
        if op.op in PRODUCTS:
            total += op_flops(g, op, dims)
        elif op.op == "Attention":
            q, k = g.input_types(op)[:2]
            total += op_flops(g, op, dims) - numel(q.shape[:3] + k.shape[2:3], dims)   # less the softmax term
    return total
