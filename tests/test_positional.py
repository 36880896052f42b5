"""Positional encodings and feed-forward blocks (graphc/layers/positional.py, feed_forward.py).

- the sinusoidal table against the paper's formula in float64 (1e-6, positions up
  to 10000) and against the PyTorch tutorial's pe[:, 0::2] = sin, pe[:, 1::2] = cos;
- one compiled model at sequence lengths never seen at compile time;
- ORT against each kind's numpy reference and against the ONNX reference evaluator (1e-5);
- RoPE half/interleaved against independent numpy (and torch) implementations;
- feed_forward against torch nn.Linear / nn.TransformerEncoderLayer modules (1e-5);
- ALiBi slopes and bias against the paper's formula;
- located errors; tables over the parameter budget refused before they are computed,
  and tables within it built in little more memory than they hold.
"""
import math
import time
import tracemalloc

import numpy as np
import pytest

from graphc.expand import build_graph
from graphc.errors import GraphcError, Span
from graphc.ir import Builder, Graph
from graphc.layers import LAYERS
from graphc.layers.feed_forward import feed_forward_op
from graphc.layers.positional import alibi_bias, alibi_slopes, apply_rope, sinusoid_table
from graphc.lower import check_model, lower, serialize
from graphc.shapes import Dim
from graphc.specfile import parse_spec_text
from graphc.pipeline import Options, run_passes
from helpers import compile_text, layer_parity, ort_run, ref_run, single_layer_spec, user_error

RNG = np.random.default_rng(0)
F = "float32"
TOL = dict(rtol=1e-5, atol=1e-5)


def _full_args(kind, args):
    return {p.name: args.get(p.name, p.default) for p in LAYERS[kind].params}


def _local(weights):
    return {k[2:]: v for k, v in weights.items()}        # strip the 'l.' prefix


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ (a) the sinusoidal table

def _paper_pe(n, d):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...), float64, element by element."""
    pe = np.zeros((n, d))
    for k in range(d // 2):
        w = 10000.0 ** (2 * k / d)
        pe[:, 2 * k] = np.sin(np.arange(n) / w)
        pe[:, 2 * k + 1] = np.cos(np.arange(n) / w)
    return pe


def _tutorial_pe(n, d):
    """The PyTorch tutorial pattern (exp/log denominators), here in float64."""
    position = np.arange(n, dtype=np.float64)[:, None]
    div_term = np.exp(np.arange(0, d, 2, dtype=np.float64) * (-math.log(10000.0) / d))
    pe = np.zeros((n, d))
    pe[:, 0::2] = np.sin(position * div_term)
    pe[:, 1::2] = np.cos(position * div_term)
    return pe


def _compile_pe(d, max_len, style="interleaved", add=False):
    text = single_layer_spec("sinusoidal_pe", {"max_len": max_len, "style": style, "add": add},
                             {"x": (F, ["batch", "seq", d])})
    return compile_text(text)[0]


def test_sinusoid_table_matches_paper_formula_up_to_position_10000():
    n, d = 10001, 32
    want = _paper_pe(n, d)
    model = _compile_pe(d, n)
    got = ort_run(model, {"x": np.zeros((1, n, d), np.float32)})["y"]     # the stored float32 table
    assert got.shape == (n, d)
    assert np.abs(got - want).max() <= 1e-6
    assert np.abs(sinusoid_table(n, d) - want).max() <= 1e-12
    # the same numbers as the PyTorch tutorial's interleaved layout
    assert np.abs(got - _tutorial_pe(n, d)).max() <= 1e-6
    np.testing.assert_array_equal(got[0, 0::2], 0.0)       # sin(0) on even channels
    np.testing.assert_array_equal(got[0, 1::2], 1.0)       # cos(0) on odd channels


def test_sinusoid_tutorial_in_torch_float64_and_concat_style():
    torch = pytest.importorskip("torch")
    n, d = 600, 16
    position = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    x = np.zeros((1, n, d), np.float32)
    got = ort_run(_compile_pe(d, n), {"x": x})["y"]
    assert np.abs(got - pe.numpy()).max() <= 1e-6
    # 'concat' is the same channels regrouped: all sines, then all cosines
    cat = ort_run(_compile_pe(d, n, style="concat"), {"x": x})["y"]
    np.testing.assert_allclose(cat, np.concatenate([pe.numpy()[:, 0::2], pe.numpy()[:, 1::2]], axis=1), atol=1e-6)
    assert np.abs(cat - got).max() > 0.5                   # the two styles are really different


# ------------------------------------------------------------------ (b) run-time lengths

@pytest.mark.parametrize("kind,args,shape", [
    ("sinusoidal_pe", {"max_len": 512}, ["batch", "seq", 12]),
    ("sinusoidal_pe", {"max_len": 512, "seq_axis": 0}, ["seq", "batch", 12]),
    ("learned_pe", {"max_len": 512}, ["batch", "seq", 12]),
    ("rope", {"max_len": 512}, ["batch", 2, "seq", 8]),
    ("rope", {"max_len": 512, "style": "interleaved"}, ["batch", 2, "seq", 8]),
])
def test_one_model_serves_lengths_never_seen_at_compile_time(kind, args, shape):
    model, graph, weights = compile_text(single_layer_spec(kind, args, {"x": (F, shape)}), weights="random")
    import onnx
    m = onnx.load_from_string(model)
    assert "seq" in [d.dim_param for d in m.graph.output[0].type.tensor_type.shape.dim]
    for n in (1, 7, 300):
        x = _x(*[{"batch": 2, "seq": n}.get(d, d) for d in shape])
        got = ort_run(model, {"x": x})["y"]
        want = LAYERS[kind].reference(_full_args(kind, args), _local(weights), {"x": x})["y"]
        assert got.shape == x.shape
        np.testing.assert_allclose(got, want, **TOL)


# ------------------------------------------------------------------ (c) ORT vs reference vs ONNX reference

CASES = [
    ("sinusoidal_pe", {}, ["batch", "seq", 8]),
    ("sinusoidal_pe", {"style": "concat"}, ["batch", "seq", 8]),
    ("sinusoidal_pe", {"add": False, "max_len": 64}, ["batch", "seq", 8]),
    ("sinusoidal_pe", {"seq_axis": 0, "max_len": 64}, ["seq", "batch", 8]),
    ("sinusoidal_pe", {"seq_axis": -2, "max_len": 64}, ["batch", 3, "seq", 8]),
    ("learned_pe", {"max_len": 20}, ["batch", "seq", 8]),
    ("learned_pe", {"max_len": 20, "seq_axis": 0}, ["seq", "batch", 8]),
    ("rope", {}, ["batch", 2, "seq", 8]),
    ("rope", {"style": "interleaved", "base": 500.0, "head_dim": 8}, ["batch", 2, "seq", 8]),
    ("rope", {"seq_axis": 1, "max_len": 64}, ["batch", "seq", 3, 6]),
    ("rope", {"style": "interleaved", "seq_axis": 1, "max_len": 64}, ["batch", "seq", 3, 6]),
    ("feed_forward", {"d_ff": 16}, ["batch", "seq", 8]),
    ("feed_forward", {"d_ff": 16, "activation": "gelu"}, ["batch", "seq", 8]),
    ("feed_forward", {"d_ff": 16, "activation": "gelu_tanh", "bias": False}, ["batch", 8]),
    ("feed_forward", {"d_ff": 16, "activation": "silu"}, ["batch", "seq", 8]),
    ("feed_forward", {"d_ff": 16, "activation": "swiglu"}, ["batch", "seq", 8]),
    ("feed_forward", {"d_ff": 12, "activation": "swiglu", "bias": False}, ["batch", "seq", 8]),
]


@pytest.mark.parametrize("kind,args,shape", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("opset", [17, 23])
def test_ort_matches_reference_and_onnx_reference(kind, args, shape, opset):
    layer_parity(kind, args, {"x": (F, shape)}, opset=opset, dims={"batch": 3, "seq": 5}, rng=RNG)


def _declared(text):
    """Parameters as declared (before materialize folds transposes into them)."""
    return {p.name: p.type.concrete_shape() for p in build_graph(parse_spec_text(text, "<test>")).params()}


def test_parameter_names_and_shapes():
    params = _declared(single_layer_spec("feed_forward", {"d_ff": 16, "activation": "swiglu"},
                                         {"x": (F, ["batch", 8])}))
    assert params == {"l.linear1.weight": (16, 8), "l.linear1.bias": (16,), "l.linear2.weight": (8, 16),
                      "l.linear2.bias": (8,), "l.linear3.weight": (16, 8), "l.linear3.bias": (16,)}
    assert _declared(single_layer_spec("learned_pe", {"max_len": 30}, {"x": (F, ["batch", "seq", 8])})) == \
        {"l.weight": (30, 8)}
    assert _declared(single_layer_spec("learned_pe", {"max_len": 30, "seq_axis": 0},
                                       {"x": (F, ["seq", "batch", 8])})) == {"l.weight": (30, 8)}


def test_tables_are_shared_between_layers():
    text = """
graphc: 1
dims: [batch, seq]
inputs: {q: {dtype: float32, shape: [batch, 2, seq, 8]}, k: {dtype: float32, shape: [batch, 2, seq, 8]}}
layers:
  - {name: q_rot, kind: rope, input: q}
  - {name: k_rot, kind: rope, input: k}
  - {name: q_int, kind: rope, input: q, style: interleaved}
outputs: {qr: q_rot, kr: k_rot, qi: q_int}
"""
    import onnx
    m = onnx.load_from_string(compile_text(text)[0])
    tables = [t.name for t in m.graph.initializer if "rope_" in t.name]
    assert len(tables) == 4, tables           # one cos/sin pair per style, not one per layer


# ------------------------------------------------------------------ (d) RoPE against independent implementations

def _rope_tables_np(n, d, base):
    inv_freq = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float64) / d))
    freqs = np.outer(np.arange(n, dtype=np.float64), inv_freq)               # [n, d/2]
    return np.cos(freqs), np.sin(freqs)


def _rope_neox(x, base=10000.0):
    """HF LLaMA / GPT-NeoX: q * cos + rotate_half(q) * sin, emb = cat(freqs, freqs)."""
    n, d = x.shape[-2], x.shape[-1]
    c, s = _rope_tables_np(n, d, base)
    cos, sin = np.concatenate([c, c], -1), np.concatenate([s, s], -1)
    rotate_half = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rotate_half * sin


def _rope_gptj(x, base=10000.0):
    """GPT-J: rotate_every_two with sin/cos repeated per pair."""
    n, d = x.shape[-2], x.shape[-1]
    c, s = _rope_tables_np(n, d, base)
    cos, sin = np.repeat(c, 2, -1), np.repeat(s, 2, -1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rot = np.stack([-x2, x1], axis=-1).reshape(x.shape)
    return x * cos + rot * sin


@pytest.mark.parametrize("style,impl", [("half", _rope_neox), ("interleaved", _rope_gptj)])
def test_rope_matches_independent_numpy(style, impl):
    model, _, _ = compile_text(single_layer_spec("rope", {"style": style, "max_len": 2048},
                                                 {"x": (F, ["batch", 4, "seq", 16])}))
    x = _x(2, 4, 1500, 16)
    got = ort_run(model, {"x": x})["y"]
    np.testing.assert_allclose(got, impl(x.astype(np.float64)), **TOL)
    other = _rope_gptj if impl is _rope_neox else _rope_neox
    assert np.abs(got - other(x.astype(np.float64))).max() > 0.1      # the conventions differ


def test_rope_matches_torch_and_keeps_relative_positions():
    torch = pytest.importorskip("torch")
    model, _, _ = compile_text(single_layer_spec("rope", {}, {"x": (F, ["batch", 2, "seq", 8])}))
    x = _x(1, 2, 9, 8)
    t = torch.from_numpy(x)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8))
    emb = torch.cat([torch.outer(torch.arange(9, dtype=torch.float64), inv_freq)] * 2, dim=-1)
    rot = torch.cat((-t[..., 4:], t[..., :4]), dim=-1).double()
    want = (t.double() * emb.cos() + rot * emb.sin()).numpy()
    got = ort_run(model, {"x": x})["y"]
    np.testing.assert_allclose(got, want, **TOL)
    # <rope(q, m), rope(k, n)> depends only on m - n
    q = np.broadcast_to(x[:, :, :1], x.shape).copy()
    k = np.broadcast_to(x[:, :, 1:2], x.shape).copy()
    rq, rk = ort_run(model, {"x": q})["y"][0, 0], ort_run(model, {"x": k})["y"][0, 0]
    assert abs(rq[5] @ rk[3] - rq[2] @ rk[0]) < 1e-5


def _standalone(fn, inputs):
    """Run a plain builder function (as another layer would call it) on a fresh graph."""
    g = Graph("t")
    b = Builder(g)
    vals = {n: b.input(n, F, [Dim.sym(d) if isinstance(d, str) else d for d in shape], None)
            for n, shape in inputs.items()}
    with b.layer("blk", Span("<test>", 1, 1), "test"):
        out = fn(b, vals)
    g.outputs["y"] = out.name
    declared = sorted(p.name for p in g.params())
    run_passes(g, Options(seed=0))
    model = lower(g, 17)
    check_model(model)
    return serialize(model), declared


def test_apply_rope_function_and_feed_forward_op_as_helpers():
    model, _ = _standalone(lambda b, v: apply_rope(b, v["q"], "interleaved", 10000.0, 128),
                           {"q": ["batch", 2, "seq", 8]})
    x = _x(2, 2, 11, 8)
    np.testing.assert_allclose(ort_run(model, {"q": x})["y"], _rope_gptj(x.astype(np.float64)), **TOL)

    def ffn(b, v):
        with b.scope("ff"):
            return feed_forward_op(b, v["x"], 8, 32, "gelu", True)
    model, declared = _standalone(ffn, {"x": ["batch", 8]})
    assert declared == ["blk.ff.linear1.bias", "blk.ff.linear1.weight",
                                                  "blk.ff.linear2.bias", "blk.ff.linear2.weight"]
    assert ort_run(model, {"x": _x(3, 8)})["y"].shape == (3, 8)


# ------------------------------------------------------------------ (e) feed_forward against torch

@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "silu", "swiglu"])
@pytest.mark.parametrize("bias", [True, False])
def test_feed_forward_matches_torch(activation, bias):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    d, d_ff = 16, 48
    torch.manual_seed(0)
    mods = {n: nn.Linear(i, o, bias=bias) for n, i, o in
            [("linear1", d, d_ff), ("linear2", d_ff, d), ("linear3", d, d_ff)]}
    if activation != "swiglu":
        del mods["linear3"]
    weights = {f"l.{n}.{k}": v.detach().numpy() for n, m in mods.items() for k, v in m.state_dict().items()}
    model, _, _ = compile_text(single_layer_spec("feed_forward", {"d_ff": d_ff, "activation": activation,
                                                                  "bias": bias}, {"x": (F, ["batch", "seq", d])}),
                               weights=weights)
    x = _x(3, 7, d)
    act = {"relu": torch.relu, "gelu": nn.GELU(), "gelu_tanh": nn.GELU(approximate="tanh"), "silu": nn.SiLU(),
           "swiglu": nn.SiLU()}[activation]
    with torch.no_grad():
        t = torch.from_numpy(x)
        h = act(mods["linear1"](t))
        if activation == "swiglu":
            h = h * mods["linear3"](t)
        want = mods["linear2"](h).numpy()
    got = ort_run(model, {"x": x})["y"]
    assert np.abs(got - want).max() <= 1e-5


def test_feed_forward_loads_transformer_encoder_layer_state_dict():
    torch = pytest.importorskip("torch")
    layer = torch.nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=40, batch_first=True)
    sd = layer.state_dict()
    weights = {f"l.{k}": v.numpy() for k, v in sd.items() if k.startswith(("linear1.", "linear2."))}
    assert len(weights) == 4
    model, _, _ = compile_text(single_layer_spec("feed_forward", {"d_ff": 40}, {"x": (F, ["batch", "seq", 16])}),
                               weights=weights)
    x = _x(2, 5, 16)
    with torch.no_grad():
        t = torch.from_numpy(x)
        want = layer.linear2(layer.activation(layer.linear1(t))).numpy()
    assert np.abs(ort_run(model, {"x": x})["y"] - want).max() <= 1e-5


# ------------------------------------------------------------------ ALiBi

def test_alibi_slopes_follow_the_paper():
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -(i + 1) for i in range(8)])
    np.testing.assert_allclose(alibi_slopes(16), [2.0 ** (-0.5 * (i + 1)) for i in range(16)])
    # 12 heads: the 8 slopes of 8 heads, then every other slope of 16 heads
    np.testing.assert_allclose(alibi_slopes(12), [2.0 ** -(i + 1) for i in range(8)] +
                               [2.0 ** (-0.5 * k) for k in (1, 3, 5, 7)])


@pytest.mark.parametrize("heads", [4, 6])
def test_alibi_bias_against_numpy(heads):
    model, _ = _standalone(lambda b, v: alibi_bias(b, heads, v["q"], v["k"]),
                           {"q": ["batch", "sq", 8], "k": ["batch", "sk", 8]})
    for sq, sk in ((5, 5), (3, 7), (1, 1)):
        q, k = _x(2, sq, 8), _x(2, sk, 8)
        got = ort_run(model, {"q": q, "k": k})["y"]
        m = alibi_slopes(heads)
        i, j = np.arange(sq)[:, None], np.arange(sk)[None, :]
        want = (m[:, None, None] * (j - i)[None])[None]                    # [1, heads, sq, sk]
        assert got.shape == (1, heads, sq, sk)
        np.testing.assert_allclose(got, want, **TOL)
        np.testing.assert_allclose(got, ref_run(model, {"q": q, "k": k})["y"], **TOL)


# ------------------------------------------------------------------ (f) located errors

def _error(kind, args, shape, message, at=None, dtype=F):
    return user_error(single_layer_spec(kind, args, {"x": (dtype, shape)}), message, at=at)


@pytest.mark.parametrize("kind,args,shape,message,at", [
    ("sinusoidal_pe", {}, ["batch", "seq", 7], "needs an even feature width", "- x"),
    ("sinusoidal_pe", {"style": "concat"}, ["batch", "seq", 5], "even feature width", "- x"),
    ("sinusoidal_pe", {"max_len": 16}, ["batch", 40, 8], "longer than max_len 16", "max_len: 16"),
    ("sinusoidal_pe", {"seq_axis": 2}, ["batch", "seq", 8], "cannot be the last axis", "seq_axis: 2"),
    ("sinusoidal_pe", {"seq_axis": 5}, ["batch", "seq", 8], "out of range", "seq_axis: 5"),
    ("learned_pe", {"max_len": 10}, ["batch", 11, 8], "longer than max_len 10", "max_len: 10"),
    ("rope", {}, ["batch", 2, "seq", 7], "even head_dim", "- x"),
    ("rope", {"head_dim": 7}, ["batch", 2, "seq", 7], "even head_dim", "head_dim: 7"),
    ("rope", {"head_dim": 4}, ["batch", 2, "seq", 8], "head_dim is 4", "head_dim: 4"),
    ("rope", {"base": 1.0}, ["batch", 2, "seq", 8], "greater than 1", "base: 1.0"),
    ("rope", {"style": "neox"}, ["batch", 2, "seq", 8], "must be one of half, interleaved", "style: neox"),
    ("feed_forward", {"activation": "swish"}, ["batch", 8], "must be one of", "activation: swish"),
])
def test_located_errors(kind, args, shape, message, at):
    _error(kind, args, shape, message, at)


def test_errors_on_integer_input_and_from_helper_functions():
    _error("sinusoidal_pe", {}, ["batch", "seq"], "floating-point", dtype="int64")
    with pytest.raises(GraphcError, match="even head_dim"):
        _standalone(lambda b, v: apply_rope(b, v["q"], "half", 10000.0, 64), {"q": ["batch", 2, "seq", 5]})
    with pytest.raises(GraphcError, match="unknown rope style"):
        _standalone(lambda b, v: apply_rope(b, v["q"], "neox", 10000.0, 64), {"q": ["batch", 2, "seq", 4]})
    with pytest.raises(GraphcError, match="expects width 8"):
        _standalone(lambda b, v: feed_forward_op(b, v["x"], 8, 16, "relu", True), {"x": ["batch", 6]})
    with pytest.raises(GraphcError, match="exceeds the position table"):
        _standalone(lambda b, v: alibi_bias(b, 4, v["q"], v["q"], max_len=8), {"q": ["batch", 9, 4]})


@pytest.mark.parametrize("max_len", [1 << 20, 100_000_000])
@pytest.mark.parametrize("kind,shape", [("sinusoidal_pe", ["batch", "seq", 4096]),
                                        ("learned_pe", ["batch", "seq", 4096]),
                                        ("rope", ["batch", 8, "seq", 4096])])
def test_tables_over_the_budget_are_refused_at_max_len_before_they_are_computed(kind, shape, max_len):
    """[2^20, 4096] float32 is 16 GiB (32 GiB for RoPE's cos and sin): over the
    default 2 GiB budget, refused at the max_len value in milliseconds, with
    nothing allocated; 10^8 rows is over the table limit itself."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        _error(kind, {"max_len": max_len}, shape,
               "over the budget of 2.0 GiB" if max_len == 1 << 20 else "must be at most 1048576",
               at=f"max_len: {max_len}")
        elapsed, peak = time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 2 and peak < 16 << 20, (elapsed, peak)


@pytest.mark.parametrize("kind,shape,tables", [("sinusoidal_pe", ["batch", "seq", 1024], 1),
                                               ("rope", ["batch", 2, "seq", 1024], 2)])
def test_tables_are_built_in_little_more_memory_than_they_hold(kind, shape, tables):
    """Computed a chunk of rows at a time, straight into the stored dtype: the
    whole-table float64 temporaries took 4-4.5x the table."""
    spec = parse_spec_text(single_layer_spec(kind, {"max_len": 16384}, {"x": (F, shape)}), "<test>")
    tracemalloc.start()
    try:
        build_graph(spec)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    held = tables * 16384 * 1024 * 4
    assert peak < 1.5 * held, peak / held
