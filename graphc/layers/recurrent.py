"""LSTM and GRU layers and cells (torch.nn.LSTM, GRU, LSTMCell, GRUCell).

They keep torch.nn's parameter names and semantics and lower to native ONNX
``LSTM``/``GRU`` nodes (one per layer).

PyTorch and ONNX store the same numbers in different orders: the gate blocks
are reordered (LSTM i,f,g,o -> ONNX i,o,f,c; GRU r,z,n -> ONNX z,r,h) and the
per-direction tensors stacked at compile time by ``Builder.derive``, so the
reordering is folded once into initializers and never runs at inference.
See docs/recurrent.md.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import InternalError
from ..ir import Builder, Init, Value, contract, run_limits
from ..ir.graph import FLOAT_DTYPES
from ..shapes import Dim, format_shape
from .base import Call, LayerKind, Param, Port
from .basic import last_dim

# model metadata: the model inputs that are sequence lengths of a recurrent layer (comma-separated)
SEQUENCE_LENGTHS_KEY = contract.SEQUENCE_LENGTHS

# block permutations: ONNX block j is torch block ORDER[j]
LSTM_ORDER = (0, 3, 1, 2)   # torch [i, f, g, o] -> ONNX [i, o, f, c]
GRU_ORDER = (1, 0, 2)       # torch [r, z, n]    -> ONNX [z, r, h]


def reorder_gates(w: np.ndarray, order: tuple[int, ...]) -> np.ndarray:
    """Permute the H-row gate blocks along axis 0 (weights and biases alike)."""
    blocks = np.split(w, len(order), axis=0)
    return np.concatenate([blocks[j] for j in order], axis=0)


def _stack_weights(order):
    def stack_gates(*ws):          # dirs x [G*H, in] (torch) -> [dirs, G*H, in] (ONNX)
        return np.stack([reorder_gates(w, order) for w in ws])
    return stack_gates


def _stack_biases(order):
    def stack_biases(*bs):         # (bias_ih, bias_hh) per direction -> [dirs, 2*G*H]
        pairs = zip(bs[0::2], bs[1::2])
        return np.stack([np.concatenate([reorder_gates(bi, order), reorder_gates(bh, order)]) for bi, bh in pairs])
    return stack_biases


def _declare_direction(b: Builder, gates: int, in_f: int, hidden: int, bias: bool, suffix: str):
    """One direction's torch parameters, in torch's state_dict order;
    all U(-1/sqrt(H), 1/sqrt(H)) like torch's reset_parameters."""
    init = Init("uniform", 1 / math.sqrt(hidden))
    gh = gates * hidden
    w_ih = b.param(f"weight_ih{suffix}", (gh, in_f), init, doc=f"[{gates}*hidden_size, input_size]")
    w_hh = b.param(f"weight_hh{suffix}", (gh, hidden), init, doc=f"[{gates}*hidden_size, hidden_size]")
    if not bias:
        return w_ih, w_hh, None, None
    b_ih = b.param(f"bias_ih{suffix}", (gh,), init, doc=f"[{gates}*hidden_size]")
    b_hh = b.param(f"bias_hh{suffix}", (gh,), init, doc=f"[{gates}*hidden_size]")
    return w_ih, w_hh, b_ih, b_hh


def _onnx_weights(b: Builder, per_dir: list, order, gates: int, in_f: int, hidden: int, tag: str):
    """ONNX W [dirs, G*H, in], R [dirs, G*H, H] and B [dirs, 2*G*H] (or None) from torch parameters."""
    dirs, gh = len(per_dir), gates * hidden
    w = b.derive(_stack_weights(order), [p[0] for p in per_dir], (dirs, gh, in_f), label=f"W{tag}")
    r = b.derive(_stack_weights(order), [p[1] for p in per_dir], (dirs, gh, hidden), label=f"R{tag}")
    if per_dir[0][2] is None:
        return w, r, None
    biases = [t for p in per_dir for t in (p[2], p[3])]
    return w, r, b.derive(_stack_biases(order), biases, (dirs, 2 * gh), label=f"B{tag}")


def rnn_op(b: Builder, prim: str, x: Value, w: Value, r: Value, bias: Value | None, lens: Value | None,
           h0: Value | None, c0: Value | None, hidden: int, direction: str) -> tuple[Value, ...]:
    """One native LSTM/GRU primitive: the ONNX input slots in order, None for an
    omitted optional one (see prims.recurrent; GRU has no initial_c slot)."""
    if prim == "GRU" and c0 is not None:
        raise InternalError("GRU has no initial_c input")
    ins = [x, w, r, bias, lens, h0] + ([c0] if prim == "LSTM" else [])
    n_out = 3 if prim == "LSTM" else 2
    return b.op(prim, ins, n_out=n_out, hidden_size=hidden, direction=direction)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def lstm_cell_math(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """torch's LSTM cell, gate blocks i, f, g, o (used by the numpy references)."""
    i, f, g, o = np.split(x @ w_ih.T + b_ih + h @ w_hh.T + b_hh, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c), c


def gru_cell_math(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """torch's GRU cell, gate blocks r, z, n (used by the numpy references)."""
    xr, xz, xn = np.split(x @ w_ih.T + b_ih, 3, axis=-1)
    hr, hz, hn = np.split(h @ w_hh.T + b_hh, 3, axis=-1)
    r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    return (1 - z) * n + z * h, c


def _float_input(call: Call, v: Value, port: str, rank: int, layout: str) -> None:
    if v.rank != rank:
        raise call.error(f"input '{port}' must have rank {rank} {layout}, got {format_shape(v.shape)}", port)
    if v.dtype not in FLOAT_DTYPES:
        raise call.error(f"input '{port}' must be floating point, got {v.dtype}", port)


def _batch_axis_note(call: Call) -> str:
    """Where the batch size came from: the usual cause of a state or lengths
    mismatch is x in the other layout than batch_first says."""
    if call["batch_first"]:
        return "the batch is x's axis 0 (batch_first: true, x is [batch, seq, input_size])"
    return ("the batch is x's axis 1 (batch_first is false: x is [seq, batch, input_size], torch's default); "
            "if x is [batch, seq, input_size], set batch_first: true")


def _check_state(call: Call, v: Value | None, port: str, shape: tuple, dtype: str) -> None:
    if v is None:
        return
    if v.shape != tuple(shape):
        raise call.error(f"initial state '{port}' must have shape {format_shape(shape)}, got {format_shape(v.shape)}",
                         port, hint=("states are [num_layers * num_directions, batch, hidden_size], layer-major, "
                                     "as in torch; " if len(shape) == 3 else "") + _batch_axis_note(call))
    if v.dtype != dtype:
        raise call.error(f"initial state '{port}' is {v.dtype} but the input is {dtype}", port)


def _input_width(call: Call, x: Value) -> int:
    width = last_dim(call, x)
    if call["input_size"] is not None and call["input_size"] != width:
        raise call.error(f"input_size is {call['input_size']} but the input has width {width}", "input_size")
    return width


_RNN_PARAMS = (
    Param("hidden_size", "int", doc="H: the width of the hidden state", min=1),
    Param("input_size", "int", None, "input width; inferred from the input when omitted", min=1),
    Param("num_layers", "int", 1, "stacked layers; layer k > 0 reads layer k-1's output", min=1),
    Param("bias", "bool", True, "learned biases bias_ih_l{k} and bias_hh_l{k}"),
    Param("batch_first", "bool", False, "x and y are [batch, seq, ...] (torch's default is False: [seq, batch, ...])"),
    Param("bidirectional", "bool", False, "also run each layer backwards; y is then 2*hidden_size wide"),
    Param("dropout", "float", 0.0, "dropout between layers during training (identity at inference)", min=0.0, max=1.0),
)

_RNN_PORTS = (
    Port("x", "the sequence: [batch, seq, input_size] if batch_first else [seq, batch, input_size]"),
    Port("lengths", "valid steps per sequence, int64 or int32 [batch], each in 1..seq (torch packed sequences)",
         optional=True),
    Port("h0", "initial hidden state [num_layers * num_directions, batch, hidden_size] (zeros if unbound)",
         optional=True),
)


class _Recurrent(LayerKind):
    """Shared expansion of ``lstm`` and ``gru``."""

    prim = ""
    gates = 0
    order: tuple[int, ...] = ()
    cell_math = staticmethod(lstm_cell_math)

    def expand(self, b, call):
        x = call.inputs["x"]
        _float_input(call, x, "x", 3, "[batch, seq, input_size]" if call["batch_first"] else "[seq, batch, input_size]")
        in_f = _input_width(call, x)
        if self.prim == "LSTM" and call["proj_size"] > 0:
            raise call.error("proj_size > 0 is not supported: ONNX LSTM has no output projection", "proj_size",
                             hint="torch feeds the projected h_t = W_hr h_t back into the recurrence, so it cannot "
                                  "be added after a native LSTM node; use proj_size: 0")
        hidden, layers = call["hidden_size"], call["num_layers"]
        dirs = 2 if call["bidirectional"] else 1
        direction = "bidirectional" if dirs == 2 else "forward"
        if call["batch_first"]:
            x = b.op("Transpose", [x], perm=[1, 0, 2])          # [batch, seq, in] -> [seq, batch, in]
        elif str(x.shape[0]) == "batch":
            b.g.warnings.append(call.warning(
                "x's first axis is named 'batch', but without batch_first the recurrence runs along axis 0 "
                "(x is read as [seq, batch, input_size])", "batch_first" if "batch_first" in call.arg_spans else None,
                hint="set batch_first: true if x is [batch, seq, input_size]; if axis 0 really is time, rename the dim"))
        seq, batch = x.shape[0], x.shape[1]
        lens = self._lengths(b, call, batch, seq)
        states = (Dim.const(layers * dirs), batch, Dim.const(hidden))
        h0 = call.inputs.get("h0")
        c0 = call.inputs.get("c0") if self.prim == "LSTM" else None
        _check_state(call, h0, "h0", states, x.dtype)
        _check_state(call, c0, "c0", states, x.dtype)
        y, h_n, c_n = x, [], []
        for k in range(layers):
            width = in_f if k == 0 else dirs * hidden
            per_dir = [_declare_direction(b, self.gates, width, hidden, call["bias"], f"_l{k}" + ("_reverse" if d else ""))
                       for d in range(dirs)]
            w, r, bias = _onnx_weights(b, per_dir, self.order, self.gates, width, hidden, f"_l{k}")
            outs = rnn_op(b, self.prim, y, w, r, bias, lens, _layer_state(b, h0, k, dirs, layers),
                          _layer_state(b, c0, k, dirs, layers), hidden, direction)
            h_n.append(outs[1])
            if self.prim == "LSTM":
                c_n.append(outs[2])
            if k < layers - 1:
                y = _merge_directions(b, outs[0], seq, batch, dirs, hidden, batch_first=False)
        result = {"h_n": _layer_major(b, h_n)}
        if self.prim == "LSTM":
            result["c_n"] = _layer_major(b, c_n)
        # y last, so the layer's last op (what `graphc check` shows) produces the primary output
        y = _merge_directions(b, outs[0], seq, batch, dirs, hidden, batch_first=call["batch_first"])
        return {"y": y, **result}

    def _lengths(self, b: Builder, call: Call, batch: Dim, steps: Dim) -> Value | None:
        lens = call.inputs.get("lengths")
        if lens is None:
            return None
        if lens.dtype not in ("int64", "int32"):
            raise call.error(f"lengths must be int64 or int32, got {lens.dtype}", "lengths")
        if lens.shape != (batch,):
            raise call.error(f"lengths must have shape {format_shape((batch,))} (one length per sequence), "
                             f"got {format_shape(lens.shape)}", "lengths", hint=_batch_axis_note(call))
        if lens.name in b.g.inputs:
            # recorded for `graphc run`, which refuses a length of 0: torch's packed sequences
            # reject it, and ONNX Runtime returns a zero state for it even when h0 is given
            contract.add_sequence_lengths(b.g.metadata, lens.name)        # graphc.ir.contract
            # each length at most the time axis; over it, ORT fails in the kernel, and past
            # 2**31 the cast below would wrap (2**32 + 3 runs as 3)
            run_limits.record(b.g.metadata, "steps", lens.name, str(steps), b.path)
        # ONNX sequence_lens is int32; torch's lengths are int64
        return lens if lens.dtype == "int32" else b.op("Cast", [lens], to="int32")

    # ------------------------------------------------------------------ numpy reference
    def reference(self, args, weights, inputs):
        """The stacked recurrence from the cell formula, one sequence at a time:
        sequence n runs over its first lengths[n] steps (backwards for the reverse
        direction), later steps of y are zero, h_n/c_n are the states after the
        last valid step (torch packed-sequence semantics)."""
        x = np.asarray(inputs["x"], np.float64)
        if args["batch_first"]:
            x = x.transpose(1, 0, 2)
        seq, batch, _ = x.shape
        hidden, layers = args["hidden_size"], args["num_layers"]
        dirs = 2 if args["bidirectional"] else 1
        lens = inputs.get("lengths")
        lens = [seq] * batch if lens is None else [int(n) for n in lens]
        zeros = np.zeros((layers * dirs, batch, hidden))
        h0 = np.asarray(inputs["h0"], np.float64) if inputs.get("h0") is not None else zeros
        c0 = np.asarray(inputs["c0"], np.float64) if inputs.get("c0") is not None else zeros
        h_n, c_n = np.zeros_like(zeros), np.zeros_like(zeros)
        layer_in = x
        for k in range(layers):
            outs = []
            for d in range(dirs):
                sfx = f"_l{k}" + ("_reverse" if d else "")
                p = [weights[f"{n}{sfx}"].astype(np.float64) for n in ("weight_ih", "weight_hh")]
                p += [weights[f"{n}{sfx}"].astype(np.float64) if args["bias"] else 0.0 for n in ("bias_ih", "bias_hh")]
                y = np.zeros((seq, batch, hidden))
                s = k * dirs + d
                for n in range(batch):
                    h, c = h0[s, n], c0[s, n]
                    for t in (reversed(range(lens[n])) if d else range(lens[n])):
                        h, c = self.cell_math(layer_in[t, n], h, c, *p)
                        y[t, n] = h
                    h_n[s, n], c_n[s, n] = h, c
                outs.append(y)
            layer_in = np.concatenate(outs, axis=-1)
        y = layer_in.transpose(1, 0, 2) if args["batch_first"] else layer_in
        dt = np.asarray(inputs["x"]).dtype
        out = {"y": y.astype(dt), "h_n": h_n.astype(dt)}
        if self.prim == "LSTM":
            out["c_n"] = c_n.astype(dt)
        return out


def _layer_state(b: Builder, state: Value | None, k: int, dirs: int, layers: int) -> Value | None:
    if state is None or layers == 1:
        return state
    return b.op("Slice", [state], axis=0, start=k * dirs, end=(k + 1) * dirs)  # [L*dirs, B, H] -> [dirs, B, H]


def _merge_directions(b: Builder, y: Value, seq: Dim, batch: Dim, dirs: int, hidden: int, batch_first: bool) -> Value:
    """ONNX Y [seq, dirs, batch, H] -> torch's [seq, batch, dirs*H] (or batch-first)."""
    width = Dim.const(dirs * hidden)
    if batch_first:
        y = b.op("Transpose", [y], perm=[2, 0, 1, 3])          # [seq, dirs, B, H] -> [B, seq, dirs, H]
        return b.op("Reshape", [y], shape=(batch, seq, width))  # [B, seq, dirs, H] -> [B, seq, dirs*H]
    if dirs == 2:
        y = b.op("Transpose", [y], perm=[0, 2, 1, 3])          # [seq, 2, B, H] -> [seq, B, 2, H]
    return b.op("Reshape", [y], shape=(seq, batch, width))      # [seq, B, dirs, H] (or [seq, 1, B, H]) -> [seq, B, dirs*H]


def _layer_major(b: Builder, states: list[Value]) -> Value:
    # per-layer [dirs, B, H] -> [L*dirs, B, H]: layer0-fwd, layer0-bwd, layer1-fwd, ... like torch
    return states[0] if len(states) == 1 else b.op("Concat", states, axis=0)


class LSTM(_Recurrent):
    """Multi-layer LSTM, like torch.nn.LSTM (no projection). For each step t
    and layer (gate blocks in torch's order i, f, g, o)::

        i = σ(W_ii x_t + b_ii + W_hi h + b_hi)
        f = σ(W_if x_t + b_if + W_hf h + b_hf)
        g = tanh(W_ig x_t + b_ig + W_hg h + b_hg)
        o = σ(W_io x_t + b_io + W_ho h + b_ho)
        c' = f ⊙ c + i ⊙ g
        h' = o ⊙ tanh(c')

    Layer k > 0 reads layer k-1's output; a bidirectional layer also runs
    backwards over the (valid part of the) sequence and concatenates both
    directions (2H wide). Outputs: ``y`` (h of the last layer at every step),
    ``h_n`` and ``c_n`` [num_layers * num_directions, batch, H], layer-major.

    ``lengths`` gives torch packed-sequence semantics (pack_padded_sequence):
    y is zero past each sequence's length and h_n/c_n are the states at its
    last valid step, in both directions. Lengths must lie in 1..seq.

    Parameters (torch names): ``weight_ih_l{k}`` [4H, in], ``weight_hh_l{k}``
    [4H, H], ``bias_ih_l{k}``, ``bias_hh_l{k}`` [4H], with ``_reverse`` for the
    backward direction; init U(-1/sqrt(H), 1/sqrt(H)). Lowered to one ONNX LSTM
    node per layer (gates reordered to ONNX's i, o, f, c at compile time).
    ``proj_size > 0`` is rejected: ONNX LSTM has no projection.
    """

    kind = "lstm"
    summary = "multi-layer (bi)LSTM with optional lengths, like torch.nn.LSTM"
    prim, gates, order = "LSTM", 4, LSTM_ORDER
    cell_math = staticmethod(lstm_cell_math)
    params = _RNN_PARAMS + (Param("proj_size", "int", 0, "torch's LSTM projection; only 0 is supported", min=0),)
    inputs = _RNN_PORTS + (Port("c0", "initial cell state, shaped like h0 (zeros if unbound)", optional=True),)
    outputs = (Port("y", "last layer's h at every step: [batch, seq, dirs*H] if batch_first else [seq, batch, dirs*H]"),
               Port("h_n", "final hidden states [num_layers*dirs, batch, H]"),
               Port("c_n", "final cell states [num_layers*dirs, batch, H]"))
    shape_rule = ("x [batch, seq, in] (batch_first) or [seq, batch, in] -> y [.., dirs*hidden_size], "
                  "h_n, c_n [num_layers*dirs, batch, hidden_size]")
    example = ("{name: lstm, kind: lstm, inputs: {x: x, lengths: lengths}, hidden_size: 512, num_layers: 2, "
               "bidirectional: true, batch_first: true}")


class GRU(_Recurrent):
    """Multi-layer GRU, like torch.nn.GRU. For each step t and layer (gate
    blocks in torch's order r, z, n)::

        r = σ(W_ir x_t + b_ir + W_hr h + b_hr)
        z = σ(W_iz x_t + b_iz + W_hz h + b_hz)
        n = tanh(W_in x_t + b_in + r ⊙ (W_hn h + b_hn))
        h' = (1 − z) ⊙ n + z ⊙ h

    The reset gate multiplies the *result* of the recurrent product
    (W_hn h + b_hn): this is ONNX GRU with linear_before_reset=1, which graphc
    always emits (the ONNX default, 0, is a different function). The source
    notes' looser paraphrase (h' = h ⊙ r; y = tanh(W(x, h')); h = (1 − z) ⊙ h
    + z ⊙ h') is not a standard variant and is not followed.

    Stacking, bidirectional, ``lengths`` (packed sequences) and the outputs
    ``y`` and ``h_n`` are as for ``lstm``. Parameters (torch names):
    ``weight_ih_l{k}`` [3H, in], ``weight_hh_l{k}`` [3H, H], ``bias_ih_l{k}``,
    ``bias_hh_l{k}`` [3H], ``_reverse`` for the backward direction; init
    U(-1/sqrt(H), 1/sqrt(H)). One ONNX GRU node per layer (gates reordered to
    ONNX's z, r, h at compile time).
    """

    kind = "gru"
    summary = "multi-layer (bi)GRU with optional lengths, like torch.nn.GRU"
    prim, gates, order = "GRU", 3, GRU_ORDER
    cell_math = staticmethod(gru_cell_math)
    params = _RNN_PARAMS
    inputs = _RNN_PORTS
    outputs = (Port("y", "last layer's h at every step: [batch, seq, dirs*H] if batch_first else [seq, batch, dirs*H]"),
               Port("h_n", "final hidden states [num_layers*dirs, batch, H]"))
    shape_rule = ("x [batch, seq, in] (batch_first) or [seq, batch, in] -> y [.., dirs*hidden_size], "
                  "h_n [num_layers*dirs, batch, hidden_size]")
    example = "{name: gru, kind: gru, input: x, hidden_size: 512, num_layers: 2, batch_first: true}"


_CELL_PARAMS = (
    Param("hidden_size", "int", doc="H: the width of the hidden state", min=1),
    Param("input_size", "int", None, "input width; inferred from the input when omitted", min=1),
    Param("bias", "bool", True, "learned biases bias_ih and bias_hh"),
)


class _Cell(LayerKind):
    """Shared expansion of the cells: the native op over a sequence of length 1.
    One node instead of a dozen MatMul/Split/Sigmoid/Tanh prims, and the same
    gate reordering (and the same tests) as the full layers."""

    prim = ""
    gates = 0
    order: tuple[int, ...] = ()

    def expand(self, b, call):
        x = call.inputs["x"]
        _float_input(call, x, "x", 2, "[batch, input_size]")
        in_f = _input_width(call, x)
        hidden = call["hidden_size"]
        batch, hd = x.shape[0], Dim.const(hidden)
        h, c = call.inputs.get("h"), call.inputs.get("c")
        _check_state(call, h, "h", (batch, hd), x.dtype)
        _check_state(call, c, "c", (batch, hd), x.dtype)
        params = _declare_direction(b, self.gates, in_f, hidden, call["bias"], "")
        w, r, bias = _onnx_weights(b, [params], self.order, self.gates, in_f, hidden, "")
        one = Dim.const(1)
        x1 = b.op("Reshape", [x], shape=(one, batch, Dim.const(in_f)))            # [B, in] -> [1, B, in]
        h1 = b.op("Reshape", [h], shape=(one, batch, hd)) if h is not None else None  # [B, H] -> [1, B, H]
        c1 = b.op("Reshape", [c], shape=(one, batch, hd)) if c is not None else None  # [B, H] -> [1, B, H]
        outs = rnn_op(b, self.prim, x1, w, r, bias, None, h1, c1, hidden, "forward")
        result = {"h": b.op("Reshape", [outs[1]], shape=(batch, hd))}            # [1, B, H] -> [B, H]
        if self.prim == "LSTM":
            result["c"] = b.op("Reshape", [outs[2]], shape=(batch, hd))          # [1, B, H] -> [B, H]
        return result

    def reference(self, args, weights, inputs):
        x = np.asarray(inputs["x"], np.float64)
        zeros = np.zeros((x.shape[0], args["hidden_size"]))
        h = np.asarray(inputs["h"], np.float64) if inputs.get("h") is not None else zeros
        c = np.asarray(inputs["c"], np.float64) if inputs.get("c") is not None else zeros
        p = [weights[n].astype(np.float64) for n in ("weight_ih", "weight_hh")]
        p += [weights[n].astype(np.float64) if args["bias"] else 0.0 for n in ("bias_ih", "bias_hh")]
        math_fn = lstm_cell_math if self.prim == "LSTM" else gru_cell_math
        h, c = math_fn(x, h, c, *p)
        dt = np.asarray(inputs["x"]).dtype
        return {"h": h.astype(dt), "c": c.astype(dt)} if self.prim == "LSTM" else {"h": h.astype(dt)}


class LSTMCell(_Cell):
    """One LSTM step, like torch.nn.LSTMCell (gate blocks i, f, g, o)::

        i = σ(W_ii x + b_ii + W_hi h + b_hi)
        f = σ(W_if x + b_if + W_hf h + b_hf)
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)
        o = σ(W_io x + b_io + W_ho h + b_ho)
        c' = f ⊙ c + i ⊙ g
        h' = o ⊙ tanh(c')

    Parameters (torch names): ``weight_ih`` [4H, in], ``weight_hh`` [4H, H],
    ``bias_ih``, ``bias_hh`` [4H]; init U(-1/sqrt(H), 1/sqrt(H)). Lowered to an
    ONNX LSTM node over a one-step sequence.
    """

    kind = "lstm_cell"
    summary = "one LSTM step (x, h, c) -> (h', c'), like torch.nn.LSTMCell"
    prim, gates, order = "LSTM", 4, LSTM_ORDER
    params = _CELL_PARAMS
    inputs = (Port("x", "the input [batch, input_size]"),
              Port("h", "hidden state [batch, hidden_size] (zeros if unbound)", optional=True),
              Port("c", "cell state [batch, hidden_size] (zeros if unbound)", optional=True))
    outputs = (Port("h", "the next hidden state [batch, hidden_size]"),
               Port("c", "the next cell state [batch, hidden_size]"))
    shape_rule = "x [batch, in], h, c [batch, hidden_size] -> h', c' [batch, hidden_size]"
    example = "{name: cell, kind: lstm_cell, inputs: {x: x, h: h, c: c}, hidden_size: 128}"


class GRUCell(_Cell):
    """One GRU step, like torch.nn.GRUCell (gate blocks r, z, n)::

        r = σ(W_ir x + b_ir + W_hr h + b_hr)
        z = σ(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
        h' = (1 − z) ⊙ n + z ⊙ h

    ONNX GRU with linear_before_reset=1 (always emitted); the source notes'
    looser paraphrase (h' = h ⊙ r; y = tanh(W(x, h')); h = (1 − z) ⊙ h + z ⊙ h')
    is not followed. Parameters (torch names): ``weight_ih`` [3H, in],
    ``weight_hh`` [3H, H], ``bias_ih``, ``bias_hh`` [3H]; init
    U(-1/sqrt(H), 1/sqrt(H)).
    """

    kind = "gru_cell"
    summary = "one GRU step (x, h) -> h', like torch.nn.GRUCell"
    prim, gates, order = "GRU", 3, GRU_ORDER
    params = _CELL_PARAMS
    inputs = (Port("x", "the input [batch, input_size]"),
              Port("h", "hidden state [batch, hidden_size] (zeros if unbound)", optional=True))
    outputs = (Port("h", "the next hidden state [batch, hidden_size]"),)
    shape_rule = "x [batch, in], h [batch, hidden_size] -> h' [batch, hidden_size]"
    example = "{name: cell, kind: gru_cell, inputs: {x: x, h: h}, hidden_size: 128}"


KINDS = (LSTM, GRU, LSTMCell, GRUCell)
