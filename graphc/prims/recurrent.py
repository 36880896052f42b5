"""LSTM and GRU primitives: the ONNX ``LSTM`` and ``GRU`` operators with
``layout=0`` (time-major), so that lowering is exactly one native node.

Inputs, in ONNX order (G = 4 gates for LSTM, 3 for GRU; dirs = 1 or 2)::

    X              [seq, batch, input_size]
    W              [dirs, G*H, input_size]   gate blocks in ONNX order (LSTM i,o,f,c; GRU z,r,h)
    R              [dirs, G*H, H]
    B              [dirs, 2*G*H]             optional: concat(W biases, R biases)
    sequence_lens  [batch] int32             optional: valid steps per sequence
    initial_h      [dirs, batch, H]          optional (zeros)
    initial_c      [dirs, batch, H]          optional, LSTM only (zeros)

Outputs: ``Y`` [seq, dirs, batch, H], ``Y_h`` [dirs, batch, H] and, for LSTM,
``Y_c`` [dirs, batch, H].

Optional inputs are positional slots, as in ONNX and every graphc primitive
(graphc.prims._registry): an omitted one is ``""`` in the op and None for the
shape rule and the numpy evaluation, so ``initial_h`` and ``initial_c`` are told
apart by their place; trailing omitted slots are dropped. The lowering passes
the slots through unchanged.

GRU here is always the ``linear_before_reset=1`` form (PyTorch's
``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``); the ONNX default (0) is a
different function, so the primitive has no attribute to select it.
"""
from __future__ import annotations

import numpy as np

from ..errors import InternalError
from ..tensors import FLOAT_DTYPES, TensorType
from ..shapes import Dim, format_shape
from ._registry import ShapeError, prim, same_dtype

SLOTS = {
    "LSTM": ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c"),
    "GRU": ("X", "W", "R", "B", "sequence_lens", "initial_h"),
}
REQUIRED = ("X", "W", "R")
GATES = {"LSTM": 4, "GRU": 3}
DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
N_OUTPUTS = {"LSTM": 3, "GRU": 2}


def bind_slots(op: str, items: list) -> dict:
    """The present inputs (types or arrays) by ONNX slot name; an omitted slot
    (None, or past the end) is left out of the dict."""
    if len(items) > len(SLOTS[op]):
        raise InternalError(f"{op} takes at most {len(SLOTS[op])} inputs {list(SLOTS[op])}, got {len(items)}")
    named = {s: x for s, x in zip(SLOTS[op], items) if x is not None}
    missing = [s for s in REQUIRED if s not in named]
    if missing:
        raise InternalError(f"{op} needs inputs {missing}")
    return named


def _expect(op: str, what: str, t: TensorType, shape: tuple) -> None:
    if t.shape != tuple(shape):
        raise ShapeError(f"{op}: {what} must have shape {format_shape(shape)}, got {format_shape(t.shape)}")


def _rnn_infer(op: str):
    def infer(attrs, ins):
        t = bind_slots(op, list(ins))
        direction = attrs.get("direction", "forward")
        if direction not in DIRECTIONS:
            raise ShapeError(f"{op}: direction must be one of {list(DIRECTIONS)}, got {direction!r}")
        dirs = Dim.const(DIRECTIONS[direction])
        h = int(attrs["hidden_size"])
        if h < 1:
            raise ShapeError(f"{op}: hidden_size must be at least 1, got {h}")
        hd = Dim.const(h)
        gh = Dim.const(GATES[op] * h)
        x = t["X"]
        if x.rank != 3:
            raise ShapeError(f"{op} needs X of rank 3 [seq, batch, input_size] (layout=0), got {format_shape(x.shape)}")
        if x.dtype not in FLOAT_DTYPES:
            raise ShapeError(f"{op} needs a floating-point X, got {x.dtype}")
        seq, batch, width = x.shape
        _expect(op, "W", t["W"], (dirs, gh, width))
        _expect(op, "R", t["R"], (dirs, gh, hd))
        if "B" in t:
            _expect(op, "B", t["B"], (dirs, Dim.const(2 * GATES[op] * h)))
        if "sequence_lens" in t:
            lens = t["sequence_lens"]
            if lens.dtype != "int32":
                raise ShapeError(f"{op}: sequence_lens must be int32, got {lens.dtype}")
            _expect(op, "sequence_lens", lens, (batch,))
        for s in ("initial_h", "initial_c"):
            if s in t:
                _expect(op, s, t[s], (dirs, batch, hd))
        dtype = same_dtype(op, [v for k, v in t.items() if k != "sequence_lens"])
        state = TensorType(dtype, (dirs, batch, hd))
        return [TensorType(dtype, (seq, dirs, batch, hd))] + [state] * (N_OUTPUTS[op] - 1)
    infer.__doc__ = (f"ONNX {op} (layout=0): X [seq, batch, in] -> Y [seq, dirs, batch, H], "
                     f"Y_h{', Y_c' if op == 'LSTM' else ''} [dirs, batch, H]; optional inputs by position (None: omitted).")
    return infer


# ---------------------------------------------------------------- numpy evaluation (ONNX semantics)

def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _lstm_step(gx, gh, h, c):
    """One step with ONNX gate order i, o, f, c (no peepholes)."""
    i, o, f, g = np.split(gx + gh, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c), c


def _gru_step(gx, gh, h, c):
    """One step with ONNX gate order z, r, h and linear_before_reset=1."""
    xz, xr, xh = np.split(gx, 3, axis=-1)
    hz, hr, hh = np.split(gh, 3, axis=-1)
    z, r = _sigmoid(xz + hz), _sigmoid(xr + hr)
    n = np.tanh(xh + r * hh)
    return (1 - z) * n + z * h, c


def _rnn_eval(op: str):
    def evaluate(*arrays, hidden_size, direction="forward", **_):
        """The ONNX operator in numpy, including sequence_lens: steps past a
        sequence's length give zeros and leave the state alone, and the reverse
        direction starts at each sequence's last valid step."""
        a = bind_slots(op, list(arrays))
        x = a["X"].astype(np.float64)
        seq, batch, _ = x.shape
        dirs, g, h_size = DIRECTIONS[direction], GATES[op], int(hidden_size)
        lens = a["sequence_lens"].astype(np.int64) if "sequence_lens" in a else np.full(batch, seq)
        step = _lstm_step if op == "LSTM" else _gru_step
        y = np.zeros((seq, dirs, batch, h_size))
        y_h = np.zeros((dirs, batch, h_size))
        y_c = np.zeros((dirs, batch, h_size))
        rows = np.arange(batch)
        for d in range(dirs):
            w, r = a["W"][d].astype(np.float64), a["R"][d].astype(np.float64)
            bias = a["B"][d].astype(np.float64) if "B" in a else np.zeros(2 * g * h_size)
            wb, rb = bias[:g * h_size], bias[g * h_size:]
            h = a["initial_h"][d].astype(np.float64) if "initial_h" in a else np.zeros((batch, h_size))
            c = a["initial_c"][d].astype(np.float64) if "initial_c" in a else np.zeros((batch, h_size))
            backward = direction == "reverse" or d == 1
            for t in range(seq):
                idx = lens - 1 - t if backward else np.full(batch, t)
                active = (idx >= 0) & (idx < lens)
                xt = x[np.clip(idx, 0, seq - 1), rows]
                h_new, c_new = step(xt @ w.T + wb, h @ r.T + rb, h, c)
                h = np.where(active[:, None], h_new, h)
                c = np.where(active[:, None], c_new, c)
                y[idx[active], d, rows[active]] = h[active]
            y_h[d], y_c[d] = h, c
        dt = a["X"].dtype
        outs = [y.astype(dt), y_h.astype(dt), y_c.astype(dt)]
        return outs[:N_OUTPUTS[op]]
    return evaluate


def _rnn_flops(op: str):
    def flops(attrs, ins, outs, dims) -> int | None:
        """Per step and direction, the two gate products (2 * batch * G*H *
        (input_size + H)) plus about G + 3 elementwise ops per hidden unit."""
        try:
            seq, batch, width = (d.evaluate(dims) for d in ins[0].shape)
        except KeyError:
            return None
        gates, h = GATES[op], int(attrs["hidden_size"])
        n_dirs = DIRECTIONS[attrs.get("direction", "forward")]
        return seq * n_dirs * batch * (2 * gates * h * (width + h) + (gates + 3) * h)
    return flops


prim("LSTM", _rnn_eval("LSTM"), flops=_rnn_flops("LSTM"))(_rnn_infer("LSTM"))
prim("GRU", _rnn_eval("GRU"), flops=_rnn_flops("GRU"))(_rnn_infer("GRU"))
