"""ONNX forms of LSTM and GRU: one native node each.

``layout=0`` always (ORT's CPU kernels reject ``layout=1``; layers add explicit
Transposes for batch-first data). GRU always carries ``linear_before_reset=1``
explicitly: that is PyTorch's GRU, and the ONNX default (0) computes a
different function with no error to warn about it.
"""
from __future__ import annotations

from ..ir import OpNode
from .context import LowerContext
from .ops_core import lowering


@lowering("LSTM", "GRU")
def _rnn(ctx: LowerContext, op: OpNode) -> None:
    # the IR's input slots are ONNX's: "" for an omitted optional input, trailing ones dropped
    attrs = {"hidden_size": int(op.attrs["hidden_size"]), "direction": op.attrs.get("direction", "forward"),
             "layout": 0}
    if op.op == "GRU":
        attrs["linear_before_reset"] = 1
    ctx.node(op.op, list(op.inputs), op.outputs, **attrs)
