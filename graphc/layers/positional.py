"""Positional encodings.

Attention is permutation-invariant, so every Transformer needs some notion of
position. The kinds here cover the common ones:

- ``sinusoidal_pe``: the fixed table of "Attention Is All You Need" (section 3.5);
- ``learned_pe``: a trained table of absolute positions (BERT, GPT-2);
- ``rope``: rotary embeddings (RoFormer), applied to queries and keys, in both
  the GPT-NeoX ("half") and GPT-J ("interleaved") conventions;
- ``alibi_bias()``: the ALiBi additive attention bias (a function for the
  attention layer; no layer kind).

The Transformer feed-forward block lives in feed_forward.py.

Run-time sequence length: every table is precomputed once (in float64, stored
in the model's dtype) with ``max_len`` rows and cut to the actual length with
the ``SliceLike`` primitive, which reads the length from the input's shape at
run time. One compiled model therefore serves every length up to ``max_len``
and no length is baked into the graph. Tables are shared between all the uses
in one graph (a stack of 12 RoPE layers stores one cos/sin pair, not 24).

See docs/positional.md for the formulas and the named variants.
"""
from __future__ import annotations

import weakref
from typing import Callable

import numpy as np

from ..ir import Builder, Init, Value, run_limits
from ..shapes import Dim
from . import basic
from .base import Call, LayerKind, Param, Port

FLOAT_INPUTS = ("float32", "float16")
MAX_TABLE_LEN = 1 << 20           # a table longer than this is a mistake, not a model
ALIBI_MAX_LEN = 8192

# ------------------------------------------------------------------ tables (float64 numpy)


def _row_chunks(max_len: int, d: int):
    """Row ranges of about 16 MiB of float64 each: a table is computed a chunk at a
    time into its final dtype, so building it takes little more memory than it holds."""
    step = max(1, (1 << 21) // max(d, 1))
    for lo in range(0, max_len, step):
        yield lo, min(lo + step, max_len)


def sinusoid_table(max_len: int, d: int, style: str = "interleaved", dtype=np.float64) -> np.ndarray:
    """The paper's table, computed in float64 and stored as ``dtype``, [max_len, d].

    angle(pos, i) = pos / 10000^(2i/d) for i in [0, d/2);
    ``interleaved`` (the paper): column 2i = sin, column 2i+1 = cos;
    ``concat``: columns [0, d/2) = sin, [d/2, d) = cos (same frequencies, channels permuted).
    """
    two_i = np.arange(0, d, 2, dtype=np.float64)[None, :]              # [1, d/2]
    denom = np.power(10000.0, two_i / d)
    pe = np.empty((max_len, d), dtype=dtype)
    sin_cols, cos_cols = (slice(0, d // 2), slice(d // 2, d)) if style == "concat" else \
        (slice(0, None, 2), slice(1, None, 2))
    for lo, hi in _row_chunks(max_len, d):
        angle = np.arange(lo, hi, dtype=np.float64)[:, None] / denom     # [rows, d/2]
        pe[lo:hi, sin_cols] = np.sin(angle)
        pe[lo:hi, cos_cols] = np.cos(angle)
    return pe


def rope_theta(d: int, base: float, scaling: tuple | None = None) -> np.ndarray:
    """theta_i = base^(-2i/d), i in [0, d/2) (float64), with ``scaling`` applied.

    ``scaling`` is None or a tuple (kind, factor, low_freq_factor, high_freq_factor,
    original_max_len), the scaled frequencies of transformers' ``rope_type``s:
    ``linear`` divides every theta_i by factor (positions interpolated); ``llama3``
    (Llama 3.1) divides the low frequencies (wavelength 2 pi / theta_i above
    original_max_len / low_freq_factor) by factor, keeps the high ones (wavelength
    below original_max_len / high_freq_factor) and blends in between, with
    s = (original_max_len / wavelength - low) / (high - low):
    theta' = (1 - s) theta / factor + s theta."""
    theta = np.power(float(base), -np.arange(0, d, 2, dtype=np.float64) / d)
    if scaling is None:
        return theta
    kind, factor, low, high, original = scaling
    if kind == "linear":
        return theta / factor
    wavelen = 2 * np.pi / theta
    scaled = np.where(wavelen > original / low, theta / factor, theta)
    smooth = (original / wavelen - low) / (high - low)
    medium = ~(wavelen < original / high) & ~(wavelen > original / low)
    return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def rope_tables(max_len: int, d: int, base: float, style: str,
                dtype=np.float64, scaling: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos and signed-sin tables, [max_len, d] (computed in float64, stored as
    ``dtype``), for y = x * cos + swap(x) * sin_signed.

    theta_i = base^(-2i/d) (scaled by ``scaling``, see ``rope_theta``),
    angle(pos, i) = pos * theta_i, i in [0, d/2).
    ``half``: pair (i, i + d/2) turns by angle_i; swap(x) = [x2 | x1]; sin_signed = [-sin | sin].
    ``interleaved``: pair (2i, 2i+1) turns by angle_i; swap(x) exchanges each pair;
    sin_signed = [-sin_0, sin_0, -sin_1, sin_1, ...]. Folding the sign of the
    usual ``rotate_half`` into the table saves a Neg per tensor at run time.
    """
    theta = rope_theta(d, base, scaling)
    cos, sin = np.empty((max_len, d), dtype=dtype), np.empty((max_len, d), dtype=dtype)
    h = d // 2
    for lo, hi in _row_chunks(max_len, d):
        angle = np.arange(lo, hi, dtype=np.float64)[:, None] * theta[None, :]   # [rows, d/2]
        c, s = np.cos(angle), np.sin(angle)
        if style == "half":
            cos[lo:hi, :h], cos[lo:hi, h:] = c, c
            sin[lo:hi, :h], sin[lo:hi, h:] = -s, s
        else:
            cos[lo:hi, 0::2], cos[lo:hi, 1::2] = c, c                   # [rows, d/2] -> [rows, d]
            sin[lo:hi, 0::2], sin[lo:hi, 1::2] = -s, s
    return cos, sin


def alibi_slopes(heads: int) -> np.ndarray:
    """Per-head slopes of ALiBi (Press et al. 2022), float64 [heads].

    For a power of two n: m_h = 2^(-8h/n), h = 1..n (a geometric sequence).
    Otherwise (the paper's recipe, as in its reference code): the slopes of the
    largest power of two c below heads, then every other slope of 2c, up to heads.
    """
    def pow2(n: int) -> list[float]:
        return [2.0 ** (-8.0 * h / n) for h in range(1, n + 1)]
    if heads & (heads - 1) == 0:
        return np.array(pow2(heads))
    c = 1 << (heads.bit_length() - 1)
    return np.array(pow2(c) + pow2(2 * c)[0::2][:heads - c])


# ------------------------------------------------------------------ graph helpers

_SHARED: "weakref.WeakKeyDictionary[object, dict[tuple, Value]]" = weakref.WeakKeyDictionary()


def _shared_const(b: Builder, key: tuple, make: Callable[[], np.ndarray], hint: str) -> Value:
    """One initializer per distinct table per graph, however many layers use it."""
    per_graph = _SHARED.setdefault(b.g, {})
    if key not in per_graph:
        per_graph[key] = b.const(make(), hint)
    return per_graph[key]


def _is_shared(b: Builder, key: tuple) -> bool:
    return key in _SHARED.get(b.g, {})


def check_table_budget(b: Builder, shape: tuple[int, ...], dtype: str, count: int,
                       fail: Callable[[str, str], Exception]) -> None:
    """Refuse `count` tables of `shape` before computing them if they would
    cross the model's parameter budget (the Builder of graphc.expand counts
    parameters and tables together); `fail(message, hint)` makes the located error."""
    over = getattr(b, "over_budget", None)
    nbytes = count * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    reason = over(nbytes) if over is not None else None
    if reason:
        what = "a table" if count == 1 else f"{count} tables"
        raise fail(f"{what} of [max_len, width] = [{', '.join(map(str, shape))}] {dtype}: {reason}",
                   "max_len is the longest sequence the model accepts: lower it, or raise "
                   "--max-param-bytes if the table is meant")


def _max_len_error(call: Call) -> Callable[[str, str], Exception]:
    return lambda message, hint: call.error(message, "max_len", hint=hint)


def _seq_axis_problem(x: Value, seq_axis: int) -> str | None:
    """Why seq_axis cannot be x's sequence axis, or None."""
    if x.rank < 2:
        return f"needs an input of rank >= 2 (a sequence axis and a feature axis), got rank {x.rank}"
    if not -x.rank <= seq_axis < x.rank:
        return f"seq_axis {seq_axis} is out of range for an input of rank {x.rank}"
    if seq_axis % x.rank == x.rank - 1:
        return "seq_axis cannot be the last axis: the last axis holds the features"
    return None


def _length_problem(x: Value, seq_axis: int, max_len: int) -> str | None:
    n = x.shape[seq_axis]
    if n.is_const and n.value > max_len:
        return f"the sequence axis has length {n.value}, longer than max_len {max_len}"
    return None


def _table_layout(table: np.ndarray, rank: int, seq_axis: int) -> np.ndarray:
    """[L, d] -> [L, 1, ..., 1, d] so that, sliced to [S, 1.., d], it broadcasts
    against an input whose axis ``seq_axis`` is S (any axes before it broadcast)."""
    ones = rank - 2 - seq_axis % rank
    return table.reshape((table.shape[0],) + (1,) * ones + (table.shape[1],))   # [L, d] -> [L, 1.., d]


def _slice_to_seq(b: Builder, table: Value, x: Value, seq_axis: int) -> Value:
    """table[:S] with S read from x's shape at run time (no length in the graph).
    A symbolic S gets the table's length as its run-time limit (graphc.ir.run_limits)."""
    seq = x.shape[seq_axis]
    if len(seq.symbols) == 1 and seq == Dim.sym(next(iter(seq.symbols))):
        run_limits.record(b.g.metadata, "dim_max", str(seq), table.shape[0].value, b.path)
    return b.op("SliceLike", [table, x], axis=0, ref_axis=seq_axis % x.rank)


_POSITIONS_PORT = Port("position_ids", "optional int64 [batch, seq]: each token's position (default 0..seq-1; "
                      "left-padded rows: cumsum(mask) - 1); ids at or above max_len are an error at run time", True)


def _positions(b: Builder, call: Call, x: Value, seq_axis: int, max_len: int) -> Value | None:
    """The positions to encode x at: the layer's position_ids input when connected, a
    --kv-cache build's position_ids for the generated tokens, or None (0..seq-1)."""
    pos = call.inputs.get("position_ids")
    if pos is None:
        return _cached_positions(b, x, seq_axis, max_len)
    if x.rank != 3 or seq_axis % 3 != 1:
        raise call.error("position_ids need a batch-first [batch, seq, d] input (seq_axis 1)", "position_ids")
    if pos.dtype not in ("int64", "int32") or pos.rank != 2 or tuple(pos.shape) != tuple(x.shape[:2]):
        raise call.error(f"position_ids must be int64 [batch, seq] = [{x.shape[0]}, {x.shape[1]}], "
                         f"got {pos.dtype}[{', '.join(map(str, pos.shape))}]", "position_ids")
    return pos


def _cached_positions(b: Builder, x: Value, seq_axis: int, max_len: int) -> Value | None:
    """In a --kv-cache build, the position_ids [batch, seq] a batch-first input over
    the generated tokens is encoded at (graphc.ir.kv_cache); None otherwise."""
    gen = getattr(b, "gen", None)
    if gen is None or x.rank != 3 or seq_axis % 3 != 1 or not gen.applies(x.shape[1]):
        return None
    if x.shape[0] != gen.batch:
        raise b.error(f"positions of the generated tokens: the input's batch {x.shape[0]} is not the tokens' "
                      f"batch {gen.batch}")
    return gen.positions(max_len)


def _float_input(call: Call, x: Value, port: str = "x") -> None:
    if x.dtype not in FLOAT_INPUTS:
        raise call.error(f"needs a floating-point input, got {x.dtype}", port)


def _check_seq(call: Call, x: Value, seq_axis: int, max_len: int) -> None:
    msg = _seq_axis_problem(x, seq_axis)
    if msg:
        raise call.error(msg, "seq_axis", hint="batch-first [batch, seq, d] uses seq_axis: 1")
    msg = _length_problem(x, seq_axis, max_len)
    if msg:
        raise call.error(msg, "max_len", hint="raise max_len, or declare the sequence axis as a symbolic dim")


def _table_input(call: Call) -> tuple[Value, int, int, int]:
    """The checked input of a table-based encoding: (x, seq_axis, max_len, width)."""
    x = call.inputs["x"]
    _float_input(call, x)
    s, max_len = call["seq_axis"], call["max_len"]
    _check_seq(call, x, s, max_len)
    return x, s, max_len, basic.last_dim(call, x)


# ------------------------------------------------------------------ sinusoidal


class SinusoidalPE(LayerKind):
    """Fixed sinusoidal positional encoding ("Attention Is All You Need", section 3.5).

        PE(pos, 2i)   = sin(pos / 10000^(2i/d))
        PE(pos, 2i+1) = cos(pos / 10000^(2i/d))          y = x + PE[:seq]

    Each pair of channels is a sinusoid whose wavelength grows geometrically from
    2*pi to 10000*2*pi, so PE(pos + k) is a fixed linear function of PE(pos): the
    paper's reason for choosing it. ``style`` names the channel order and never
    changes silently: ``interleaved`` is the paper (sine on even channels, cosine
    on odd, as in the PyTorch tutorial's ``pe[:, 0::2] = sin; pe[:, 1::2] = cos``);
    ``concat`` puts all sines first, then all cosines (same frequencies; tensor2tensor's
    layout, but not its ``half_dim - 1`` denominators, which graphc does not offer).

    The table is computed in float64 (the PyTorch tutorial's float32 version is
    off by up to 8e-4 near position 10000 at d = 512) and stored as a
    [max_len, d] constant in the input's dtype; it is sliced to the run-time
    sequence length, so one model serves any length up to max_len. The paper also scales embeddings by
    sqrt(d_model) before adding PE: use ``embedding`` with ``scale: true``.
    No parameters.
    """

    kind = "sinusoidal_pe"
    summary = "fixed sine/cosine positional encoding (the Transformer paper), any run-time length"
    params = (
        Param("max_len", "int", 5000, "rows of the precomputed table: the longest sequence the model accepts",
              min=1, max=MAX_TABLE_LEN),
        Param("style", "str", "interleaved",
              "'interleaved' (the paper: sin on even channels, cos on odd) or 'concat' (all sines, then all cosines)",
              choices=("interleaved", "concat")),
        Param("add", "bool", True, "true: y = x + PE[:seq]; false: y = PE[:seq] alone, shaped to broadcast "
              "against x ([seq, d] for a batch-first input)"),
        Param("seq_axis", "int", 1, "the sequence axis of x (1 for batch-first [batch, seq, d], "
              "0 for [seq, batch, d])"),
    )
    inputs = (Port("x", "[batch, seq, d] (batch-first; see seq_axis) embeddings"), _POSITIONS_PORT)
    outputs = (Port("y", "x + PE, same shape as x (or PE alone when add is false)"),)
    shape_rule = "[batch, seq, d] -> [batch, seq, d]   (add: false -> [seq, d])"
    example = "{name: pos, kind: sinusoidal_pe, input: embed, max_len: 5000}"

    def expand(self, b, call):
        x, s, max_len, d = _table_input(call)
        if d % 2:
            raise call.error(f"needs an even feature width (sin/cos pairs), got {d}", "x",
                             hint="the paper's encoding pairs channels 2i and 2i+1")
        layout = (x.rank, s % x.rank)
        key = ("sinusoid", max_len, d, call["style"], x.dtype, layout)
        if not _is_shared(b, key):
            check_table_budget(b, (max_len, d), x.dtype, 1, _max_len_error(call))
        table = _shared_const(
            b, key, lambda: _table_layout(sinusoid_table(max_len, d, call["style"], np.dtype(x.dtype)), x.rank, s),
            "pe_table")
        positions = _positions(b, call, x, s, max_len)
        if positions is not None:
            pe = b.op("Gather", [table, positions], axis=0)      # [L, d] at [B, S] -> [B, S, d]
        else:
            pe = _slice_to_seq(b, table, x, s)                 # [seq, 1.., d]
        return {"y": b.op("Add", [x, pe]) if call["add"] else pe}

    def reference(self, args, weights, inputs):
        # written per channel j from the formula: i = j // 2, sin if j is even else cos
        x = inputs["x"]
        s = args["seq_axis"] % x.ndim
        n, d = x.shape[s], x.shape[-1]
        pos = np.arange(n, dtype=np.float64)[:, None]
        j = np.arange(d)
        if args["style"] == "interleaved":
            i, use_sin = j // 2, j % 2 == 0
        else:
            i, use_sin = j % (d // 2), j < d // 2
        if inputs.get("position_ids") is not None:
            pos = inputs["position_ids"].astype(np.float64)[..., None]          # [batch, seq, 1]
        angle = pos / 10000.0 ** (2.0 * i / d)
        pe = np.where(use_sin, np.sin(angle), np.cos(angle))
        if inputs.get("position_ids") is None:
            pe = pe.reshape((n,) + (1,) * (x.ndim - 2 - s) + (d,))   # [seq, d] -> [seq, 1.., d]
        return {"y": (x + pe if args["add"] else pe).astype(x.dtype)}


# ------------------------------------------------------------------ learned


class LearnedPE(LayerKind):
    """Learned absolute positional embedding (BERT, GPT-2 ``wpe``).

        y = x + weight[:seq]

    ``weight`` is an ``nn.Embedding(max_len, d)`` table looked up at positions
    0..seq-1; since those positions are always a prefix, the lookup is a slice
    (no Gather, no position-id input), taken at run time so any length up to
    max_len works. Parameter ``<name>.weight`` [max_len, d], init N(0, 1) like
    torch.nn.Embedding.
    """

    kind = "learned_pe"
    summary = "trained absolute position table added to x (like BERT/GPT-2), any run-time length"
    params = (
        Param("max_len", "int", 512, "rows of the table: the longest sequence the model accepts",
              min=1, max=MAX_TABLE_LEN),
        Param("seq_axis", "int", 1, "the sequence axis of x (1 for batch-first [batch, seq, d])"),
    )
    inputs = (Port("x", "[batch, seq, d] (batch-first; see seq_axis) embeddings"), _POSITIONS_PORT)
    shape_rule = "[batch, seq, d] -> [batch, seq, d]"
    example = "{name: pos, kind: learned_pe, input: embed, max_len: 1024}"

    def expand(self, b, call):
        x, s, max_len, d = _table_input(call)
        check_table_budget(b, (max_len, d), x.dtype, 1, _max_len_error(call))
        w = b.param("weight", (max_len, d), Init("normal", 1.0), dtype=x.dtype, doc="[max_len, d]")
        ones = x.rank - 2 - s % x.rank
        if ones:
            # folded at compile time: the stored weight keeps torch's [max_len, d] layout
            shape = (max_len,) + (1,) * ones + (d,)
            w = b.derive(lambda t: t.reshape(shape), [w], shape, "weight_bcast",   # [L, d] -> [L, 1.., d]
                         dtype=x.dtype)
        positions = _positions(b, call, x, s, max_len)
        if positions is not None:
            return {"y": b.op("Add", [x, b.op("Gather", [w, positions], axis=0)])}   # [L, d] at [B, S] -> [B, S, d]
        return {"y": b.op("Add", [x, _slice_to_seq(b, w, x, s)])}

    def reference(self, args, weights, inputs):
        x = inputs["x"]
        s = args["seq_axis"] % x.ndim
        if inputs.get("position_ids") is not None:
            return {"y": x + weights["weight"][inputs["position_ids"]]}             # [batch, seq, d]
        pe = weights["weight"][: x.shape[s]]
        pe = pe.reshape((x.shape[s],) + (1,) * (x.ndim - 2 - s) + (x.shape[-1],))   # [seq, d] -> [seq, 1.., d]
        return {"y": x + pe}


# ------------------------------------------------------------------ rotary


def _rope_table_consts(b: Builder, max_len: int, d: int, base: float, style: str, dtype: str,
                       layout: tuple[int, int], fail: Callable[[str, str], Exception],
                       scaling: tuple | None = None) -> tuple[tuple, Value, Value]:
    """The cos and signed-sin tables of ``rope_tables`` as graph constants shaped to
    broadcast against an input of ``layout`` (rank, seq axis); one pair per graph,
    however many layers rotate with it, checked against the parameter budget once.
    Returns their sharing key and the two constants."""
    key = ("rope", max_len, d, float(base), style, dtype, layout) + ((scaling,) if scaling else ())
    if not _is_shared(b, key + ("cos",)):
        check_table_budget(b, (max_len, d), dtype, 2, fail)
    computed: list = []

    def tables(which: int) -> Callable[[], np.ndarray]:
        def make() -> np.ndarray:
            if not computed:        # cos and sin come from one pass
                computed.extend(_table_layout(t, *layout)
                                for t in rope_tables(max_len, d, base, style, np.dtype(dtype), scaling))
            return computed[which]
        return make
    return (key, _shared_const(b, key + ("cos",), tables(0), "rope_cos"),
            _shared_const(b, key + ("sin",), tables(1), "rope_sin"))


def apply_rope(b: Builder, x: Value, style: str, base: float, max_len: int, seq_axis: int = -2,
               fail: Callable[[str, str], Exception] | None = None, positions: Value | None = None,
               scaling: tuple | None = None) -> Value:
    """Rotary position embedding of x (queries or keys), positions 0..seq-1.

    x: [..., seq, ..., head_dim] with its sequence axis at ``seq_axis`` (default
    -2: [batch, heads, seq, head_dim]). ``style``: ``half`` (GPT-NeoX, HF LLaMA:
    channel i pairs with i + head_dim/2) or ``interleaved`` (GPT-J, Meta LLaMA:
    channel 2i pairs with 2i+1). Emits y = x * cos + swap(x) * sin_signed with
    cos/sin tables precomputed (see ``rope_tables``) and sliced to the run-time
    length. Errors are GraphcErrors located at the current layer (`fail(message,
    hint)`, if given, makes the one for tables over the parameter budget). ``positions``
    (int64 [batch, seq], a KV-cache build's position_ids; x must be
    [batch, heads, seq, head_dim]): each row's positions instead of 0..seq-1.
    ``scaling``: scaled frequencies (see ``rope_theta``).
    """
    if style not in ("half", "interleaved"):
        raise b.error(f"unknown rope style {style!r}", hint="'half' (GPT-NeoX) or 'interleaved' (GPT-J)")
    if x.dtype not in FLOAT_INPUTS:
        raise b.error(f"rope needs a floating-point input, got {x.dtype}")
    msg = _seq_axis_problem(x, seq_axis) or _length_problem(x, seq_axis, max_len)
    if msg:
        raise b.error("rope: " + msg)
    dim = x.shape[-1]
    if not dim.is_const or dim.value % 2:
        raise b.error(f"rope needs a fixed, even head_dim (rotation pairs), got {dim}")
    if not base > 1.0:
        raise b.error(f"rope base must be greater than 1, got {base}")
    d, h = dim.value, dim.value // 2
    layout = (x.rank, seq_axis % x.rank)
    _, cos_table, sin_table = _rope_table_consts(
        b, max_len, d, base, style, x.dtype, layout,
        fail or (lambda message, hint: b.error("rope: " + message, hint=hint)), scaling)
    if positions is not None:
        if layout != (4, 2):
            raise b.error("rope: cached positions need [batch, heads, seq, head_dim] tensors")
        bsz, seq = positions.shape
        four = (bsz, Dim.const(1), seq, Dim.const(d))
        cos = b.op("Reshape", [b.op("Gather", [cos_table, positions], axis=0)], shape=four)   # [B, S, d] -> [B, 1, S, d]
        sin = b.op("Reshape", [b.op("Gather", [sin_table, positions], axis=0)], shape=four)   # [B, S, d] -> [B, 1, S, d]
    else:
        cos = _slice_to_seq(b, cos_table, x, seq_axis)   # [seq, 1.., d]
        sin = _slice_to_seq(b, sin_table, x, seq_axis)   # [seq, 1.., d]
    if style == "half":
        x1 = b.op("Slice", [x], axis=-1, start=0, end=h)             # [..., d/2]
        x2 = b.op("Slice", [x], axis=-1, start=h, end=d)             # [..., d/2]
        swapped = b.op("Concat", [x2, x1], axis=-1)                  # [..., d]: [x2 | x1]
    else:
        pairs = b.op("Reshape", [x], shape=x.shape[:-1] + (Dim.const(h), Dim.const(2)))  # [..., d] -> [..., d/2, 2]
        even, odd = b.op("Split", [pairs], n_out=2, axis=-1, sizes=(1, 1))               # 2 x [..., d/2, 1]
        flipped = b.op("Concat", [odd, even], axis=-1)                                   # [..., d/2, 2]
        swapped = b.op("Reshape", [flipped], shape=x.shape)                              # [..., d/2, 2] -> [..., d]
    return b.op("Add", [b.op("Mul", [x, cos]), b.op("Mul", [swapped, sin])])


def apply_rope_packed(b: Builder, y: Value, style: str, base: float, max_len: int, rotated: int, kept: int,
                      head_dim: int, positions: Value, fail: Callable[[str, str], Exception],
                      scaling: tuple | None = None) -> Value:
    """Rope on a packed projection y [batch, seq, (rotated + kept) * head_dim] whose first
    ``rotated`` heads (queries, keys) turn and whose last ``kept`` heads (values) do not,
    at each row's ``positions`` [batch, seq] (a KV-cache build's position_ids).

    The same arithmetic as ``apply_rope`` (y * cos + swap(y) * sin_signed, element by
    element), in a form with four nodes per layer and no reshapes: the swap is one Gather
    of the columns (each head's halves, or pairs, exchanged), and the per-column tables
    [batch, seq, n * head_dim] (cos 1 and sin 0 on the kept heads) are built once per
    graph from the [max_len, head_dim] tables and shared by every layer. Why: a decode
    step's small ops cost per node, not per element (docs/generation.md, "The shared
    cache buffer")."""
    d, h = head_dim, head_dim // 2
    n = rotated + kept
    if d % 2:
        raise b.error(f"rope needs an even head_dim (rotation pairs), got {d}")
    if not base > 1.0:
        raise b.error(f"rope base must be greater than 1, got {base}")
    key, *per_row = _rope_table_consts(b, max_len, d, base, style, y.dtype, (4, 1), fail, scaling)  # [L, 1, d] each
    bsz, seq = positions.shape
    keep = _shared_const(b, ("rope_kept_heads", rotated, kept),
                         lambda: np.arange(n).reshape(1, 1, n, 1) >= rotated, "rope_kept_heads")   # True on kept heads
    per_column = []
    for which, (table, kept_value) in enumerate(zip(per_row, (1.0, 0.0))):
        full_key = key + ("packed", which, rotated, kept)
        if not _is_shared(b, full_key):
            rows = b.op("Gather", [table, positions], axis=0)                          # [B, S, 1, d]
            fill = b.const(np.array(kept_value, y.dtype), "rope_kept_" + ("cos", "sin")[which])
            full = b.op("Where", [keep, fill, rows])                                   # -> [B, S, n, d]
            full = b.op("Reshape", [full], shape=(bsz, seq, Dim.const(n * d)))          # -> [B, S, n*d]
            _SHARED.setdefault(b.g, {})[full_key] = full
        per_column.append(_SHARED[b.g][full_key])
    cos, sin = per_column

    def permutation() -> np.ndarray:
        within = (np.r_[np.arange(h, d), np.arange(h)] if style == "half"
                  else np.arange(d).reshape(h, 2)[:, ::-1].ravel())                    # halves, or pairs, exchanged
        return (np.arange(n)[:, None] * d + within[None, :]).ravel().astype(np.int64)
    swap = _shared_const(b, ("rope_swap", style, n, d), permutation, "rope_swap")
    swapped = b.op("Gather", [y, swap], axis=2)                                        # [B, S, n*d]
    return b.op("Add", [b.op("Mul", [y, cos]), b.op("Mul", [swapped, sin])])


class Rope(LayerKind):
    """Rotary position embedding (RoFormer, Su et al. 2021) applied to one tensor.

    Channels are grouped in pairs; pair i at position pos is rotated by the angle
    pos * theta_i with theta_i = base^(-2i/head_dim):

        [y_a]   [cos  -sin] [x_a]
        [y_b] = [sin   cos] [x_b]

    so the dot product of a rotated query and key depends only on their
    relative position. Which channels form a pair is the ``style`` and the two
    conventions give different numbers, so it is always named:

    - ``half`` (GPT-NeoX, HF LLaMA/Mistral ``rotate_half``; ONNX RotaryEmbedding
      interleaved=0): a = i, b = i + head_dim/2;
    - ``interleaved`` (GPT-J, Meta's original LLaMA with complex numbers; ONNX
      interleaved=1): a = 2i, b = 2i + 1.

    cos/sin tables [max_len, head_dim] are precomputed in float64 and sliced to
    the run-time sequence length; positions start at 0 (no KV-cache offset).
    ``multihead_attention`` and the Transformer kinds rotate their own queries
    and keys this way with ``rope: half|interleaved`` (self-attention); this kind
    is for attention written out of primitives.
    No parameters. The whole head is rotated (no partial ``rotary_dim``).
    """

    kind = "rope"
    summary = "rotary position embedding (half = GPT-NeoX, interleaved = GPT-J), any run-time length"
    params = (
        Param("head_dim", "int", None, "rotated width; inferred from the last axis when omitted", min=2),
        Param("base", "float", 10000.0, "theta_i = base^(-2i/head_dim) (10000 in RoFormer and LLaMA)"),
        Param("style", "str", "half", "'half' (GPT-NeoX/HF LLaMA: pairs i, i+d/2) or "
              "'interleaved' (GPT-J: pairs 2i, 2i+1)", choices=("half", "interleaved")),
        Param("max_len", "int", 4096, "rows of the cos/sin tables: the longest sequence accepted",
              min=1, max=MAX_TABLE_LEN),
        Param("seq_axis", "int", -2, "the sequence axis of x (-2 for [batch, heads, seq, head_dim])"),
    )
    inputs = (Port("x", "[batch, heads, seq, head_dim] queries or keys (see seq_axis)"),)
    shape_rule = "[batch, heads, seq, head_dim] -> [batch, heads, seq, head_dim]"
    example = "{name: q_rot, kind: rope, input: q_heads, style: half, base: 10000.0}"

    def expand(self, b, call):
        x = call.inputs["x"]
        _float_input(call, x)
        _check_seq(call, x, call["seq_axis"], call["max_len"])
        d = basic.last_dim(call, x)
        if call["head_dim"] is not None and call["head_dim"] != d:
            raise call.error(f"head_dim is {call['head_dim']} but the input's last axis is {d}", "head_dim")
        if d % 2:
            raise call.error(f"needs an even head_dim (channels rotate in pairs), got {d}",
                             "head_dim" if call["head_dim"] is not None else "x")
        if not call["base"] > 1.0:
            raise call.error(f"base must be greater than 1, got {call['base']}", "base")
        return {"y": apply_rope(b, x, call["style"], call["base"], call["max_len"], call["seq_axis"],
                                _max_len_error(call))}

    def reference(self, args, weights, inputs):
        # complex-number form: each pair (a, b) is a + ib, multiplied by e^(i pos theta)
        x = inputs["x"].astype(np.float64)
        s = args["seq_axis"] % x.ndim
        n, d = x.shape[s], x.shape[-1]
        theta = rope_theta(d, args["base"], args.get("scaling"))   # attention's rope_scaling passes "scaling"
        rot = np.exp(1j * np.arange(n)[:, None] * theta[None, :])          # [seq, d/2]
        rot = rot.reshape((n,) + (1,) * (x.ndim - 2 - s) + (d // 2,))      # [seq, d/2] -> [seq, 1.., d/2]
        if args["style"] == "half":
            z = (x[..., : d // 2] + 1j * x[..., d // 2:]) * rot
            y = np.concatenate([z.real, z.imag], axis=-1)
        else:
            z = (x[..., 0::2] + 1j * x[..., 1::2]) * rot
            y = np.stack([z.real, z.imag], axis=-1).reshape(x.shape)       # [..., d/2, 2] -> [..., d]
        return {"y": y.astype(inputs["x"].dtype)}


# ------------------------------------------------------------------ ALiBi


def alibi_bias(b: Builder, heads: int, q_ref: Value, k_ref: Value, max_len: int = ALIBI_MAX_LEN) -> Value:
    """ALiBi (Press et al., "Train Short, Test Long") additive attention bias, [1, heads, Sq, Sk].

        bias[0, h, i, j] = m_h * (j - i),   m_h from ``alibi_slopes(heads)``

    to be added to the attention scores before softmax. Sq and Sk are read at
    run time from axis -2 of q_ref and k_ref ([batch, seq, E] or [batch, heads,
    seq, d]). For j <= i this is the paper's -m_h * (i - j); the paper is causal
    and future keys (j > i) must be masked by the caller. Any offset between the
    query and key positions (past keys) shifts a whole row by a constant, which
    softmax ignores. Positions come from a [max_len] table (exact in float32);
    the bias is float32, or float16 when q_ref is.
    """
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise b.error(f"ALiBi needs a positive number of heads, got {heads!r}")
    for name, ref in (("queries", q_ref), ("keys", k_ref)):
        if ref.rank < 2:
            raise b.error(f"ALiBi reads the {name}' length from axis -2, but the tensor has rank {ref.rank}")
        n = ref.shape[-2]
        if n.is_const and n.value > max_len:
            raise b.error(f"ALiBi: the {name}' length {n.value} exceeds the position table ({max_len})")
    positions = np.arange(max_len, dtype=np.float32)
    q_pos = b.op("SliceLike", [_shared_const(b, ("alibi_q", max_len), lambda: positions[:, None], "alibi_qpos"),
                               q_ref], axis=0, ref_axis=q_ref.rank - 2)          # [Sq, 1]
    k_pos = b.op("SliceLike", [_shared_const(b, ("alibi_k", max_len), lambda: positions[None, :], "alibi_kpos"),
                               k_ref], axis=1, ref_axis=k_ref.rank - 2)          # [1, Sk]
    rel = b.op("Sub", [k_pos, q_pos])                                           # [Sq, Sk]: j - i
    slopes = _shared_const(b, ("alibi_slopes", heads),
                           lambda: alibi_slopes(heads).astype(np.float32).reshape(1, heads, 1, 1), "alibi_slopes")
    bias = b.op("Mul", [rel, slopes])                                           # [1, heads, Sq, Sk]
    return b.op("Cast", [bias], to="float16") if q_ref.dtype == "float16" else bias


KINDS = (SinusoidalPE, LearnedPE, Rope)
