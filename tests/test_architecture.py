"""Unit tier: the structure docs/architecture.md describes holds.

- the pass pipeline (graphc.pipeline): one list for compile_spec and the tests
  (a spec compiled both ways gives the same bytes), conditions checked and
  verify() run between passes;
- the IR and the primitives import without a cycle (graphc.tensors is the leaf);
- the registries refuse what would silently go wrong: a primitive without a
  FLOP rule, a duplicate primitive, a duplicate lowering (standard or target);
- FLOP rules against counts written independently here;
- optional inputs are positional slots ("" omitted, None for the rules), with
  no flag attributes: Attention and LSTM with a middle slot omitted against
  the math written here and ONNX Runtime;
- the shared test helpers can fail (a parity check against a wrong reference,
  an error check when nothing is refused).
"""
import ast
import subprocess
import sys

import numpy as np
import pytest

from graphc.compiler import compile_spec
from graphc.errors import InternalError
from graphc.layers import LAYERS
from graphc.lower.ops_core import LOWERINGS, lowering
from graphc.lower.targets import TARGET_LOWERINGS, target_lowering
from graphc.pipeline import PASS_NAMES, Options, run_passes
from graphc.prims import PRIMS, ShapeError, prim
from graphc.prims._flops import no_flops
from graphc.shapes import Dim
from graphc.tensors import TensorType
from graphc.expand import build_graph
from graphc.specfile import parse_spec_text
from graphc.ir.graph import verify
from helpers import ROOT, SPECS, compile_text, layer_parity, ort_run, single_layer_spec, user_error

F = "float32"


# ------------------------------------------------------------------ the pass pipeline

@pytest.mark.parametrize("spec", ["mlp", "gqa", "lstm_uni"])
def test_tests_and_builds_run_the_same_passes(spec):
    """compile_text (the tests' path) and compile_spec (the CLI's) give the same
    model bytes: they share graphc.pipeline.PASSES."""
    import onnx
    built = compile_spec(SPECS / f"{spec}.yaml").model
    tested = onnx.load_from_string(compile_text((SPECS / f"{spec}.yaml").read_text(), check=False)[0])
    for m in (built, tested):          # the digest covers the spec's file (and its includes), not its text
        keep = [p for p in m.metadata_props if p.key != "graphc.spec_sha256"]
        del m.metadata_props[:]
        m.metadata_props.extend(keep)
    assert tested.SerializeToString(deterministic=True) == built.SerializeToString(deterministic=True)


def _graph(text):
    spec = parse_spec_text(text, "<test>")
    return spec, build_graph(spec)


LINEAR = single_layer_spec("linear", {"out_features": 3}, {"x": (F, ["batch", 4])})


def test_pass_conditions_are_checked():
    _, g = _graph(LINEAR)
    with pytest.raises(InternalError, match="pass simplify: precondition broken: Derive ops left"):
        run_passes(g, Options(), skip=("fold",))          # the linear layer's transposed weight is a Derive
    _, g = _graph(LINEAR)
    run_passes(g, Options())
    with pytest.raises(InternalError, match="pass materialize: precondition broken: parameters already have data"):
        run_passes(g, Options())                          # twice: the weights are already in
    with pytest.raises(InternalError, match="no passes named"):
        run_passes(g, Options(), skip=("folding",))


def test_postconditions_hold_after_each_pass():
    _, g = _graph(LINEAR)
    run_passes(g, Options(dtype="float16"))
    assert not [op for op in g.ops() if op.op == "Derive"]
    assert all(v.type.dtype != "float32" for v in g.values())
    assert all(p.data is not None for p in g.params())
    assert g.metadata["graphc.seed"] == "0" and g.metadata["graphc.dtype"] == "float16"
    assert PASS_NAMES == ("materialize", "float16-range", "fold", "float16", "simplify", "metadata", "last-logits",
                          "quantize")


def test_verify_runs_between_passes(monkeypatch):
    """A pass that breaks an IR invariant is caught right after it, by name."""
    import graphc.pipeline as pipeline

    def breaks_the_graph(g, o, s):
        op = g.ops()[0]
        op.inputs = ["nowhere"] + op.inputs[1:]        # reads a value nothing defines
    broken = pipeline.Pass("simplify", breaks_the_graph, pipeline._nothing, pipeline._nothing)
    monkeypatch.setattr(pipeline, "PASSES", tuple(broken if p.name == "simplify" else p for p in pipeline.PASSES))
    _, g = _graph(LINEAR)
    with pytest.raises(InternalError, match="reads 'nowhere' before it is defined"):
        pipeline.run_passes(g, Options())


def test_materialize_alone_no_longer_folds():
    """The fold is its own pass (graphc.ir.fold): a caller that skips the
    pipeline gets a loud error at the lowering, not a silently different model."""
    from graphc.lower import lower
    from graphc.weights import materialize
    _, g = _graph(LINEAR)
    materialize(g, None, 0)
    with pytest.raises(InternalError, match="no ONNX lowering for primitive Derive"):
        lower(g, 17)


# ------------------------------------------------------------------ imports

@pytest.mark.parametrize("first", ["graphc.prims", "graphc.ir", "graphc.ir.builder", "graphc.ir.precision",
                                   "graphc.tensors", "graphc.pipeline"])
def test_modules_import_in_any_order(first):
    code = f"import {first}; import graphc.ir, graphc.prims, graphc.compiler"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("path", ["graphc/ir/builder.py", "graphc/ir/precision.py", "graphc/ir/graph.py",
                                  "graphc/prims/_registry.py", "graphc/tensors.py", "graphc/pipeline.py"])
def test_no_function_level_imports_of_ir_or_prims(path):
    tree = ast.parse((ROOT / path).read_text())
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    assert not (node.module or "").split(".")[0] in ("ir", "prims", "graph", "tensors"), \
                        f"{path}:{node.lineno} imports {node.module} inside {fn.name}"


def test_prims_do_not_import_the_ir():
    for path in (ROOT / "graphc" / "prims").glob("*.py"):
        assert "from ..ir" not in path.read_text(), path


# ------------------------------------------------------------------ registries

def test_a_primitive_without_a_flop_rule_is_refused():
    with pytest.raises(InternalError, match="TestNoFlops registered without a FLOP rule"):
        prim("TestNoFlops", lambda x: x)(lambda attrs, ins: ins)
    assert "TestNoFlops" not in PRIMS


def test_duplicate_primitives_and_lowerings_are_refused():
    with pytest.raises(InternalError, match="primitive MatMul registered twice"):
        prim("MatMul", flops=no_flops)(lambda attrs, ins: ins)
    with pytest.raises(InternalError, match="standard lowering of MatMul registered twice"):
        lowering("MatMul")(lambda ctx, op: None)
    assert LOWERINGS["MatMul"].__name__ == "_matmul"
    taken = next(iter(TARGET_LOWERINGS))
    with pytest.raises(InternalError, match="registered twice"):
        target_lowering(taken[1], taken[0])(lambda ctx, op: None)


def test_every_primitive_has_a_standard_lowering_and_a_flop_rule():
    for name, p in PRIMS.items():
        assert callable(p.flops), name
        assert name in LOWERINGS or name == "Derive", f"{name} has no standard lowering"
    assert PRIMS["Attention"].lowering_options == ("impl",)


# ------------------------------------------------------------------ FLOP rules

def _t(*shape):
    return TensorType(F, tuple(Dim.sym(d) if isinstance(d, str) else Dim.const(d) for d in shape))


def test_matmul_flops_count_one_multiply_add_per_term():
    a, b = np.ones((2, 3, 5)), np.ones((5, 7))
    terms = a.shape[0] * a.shape[1] * b.shape[1] * a.shape[2]      # each output element sums K products
    assert PRIMS["MatMul"].flops({}, [_t(2, 3, 5), _t(5, 7)], [_t(2, 3, 7)], {}) == 2 * terms
    assert PRIMS["MatMul"].flops({}, [_t("batch", 3, 5), _t(5, 7)], [_t("batch", 3, 7)], {}) is None


def test_attention_flops_are_those_of_its_decomposition():
    """Attention counts what its MatMul / Softmax / MatMul decomposition counts
    through their own rules (the scale is folded into q by the lowering)."""
    b, hq, hkv, sq, sk, d, dv = 2, 4, 2, 5, 7, 8, 6
    q, k, v = _t(b, hq, sq, d), _t(b, hkv, sk, d), _t(b, hkv, sk, dv)
    got = PRIMS["Attention"].flops({"scale": 1.0}, [q, k, v], [_t(b, hq, sq, dv)], {})
    scores = _t(b, hq, sq, sk)
    want = (PRIMS["MatMul"].flops({}, [q, _t(b, hq, d, sk)], [scores], {})
            + PRIMS["Softmax"].flops({}, [scores], [scores], {})
            + PRIMS["MatMul"].flops({}, [scores, _t(b, hq, sk, dv)], [_t(b, hq, sq, dv)], {}))
    assert got == want == b * hq * sq * sk * (2 * d + 2 * dv + 1)


def test_lstm_flops_at_given_dims():
    x, h = _t("seq", "batch", 5), 6
    attrs = {"hidden_size": h, "direction": "bidirectional"}
    got = PRIMS["LSTM"].flops(attrs, [x], [], {"seq": 3, "batch": 2})
    # per step, direction and row: W x and R h (4 gates of width h), then the gate arithmetic
    assert got == 3 * 2 * 2 * (2 * 4 * h * 5 + 2 * 4 * h * h + 7 * h)
    assert PRIMS["LSTM"].flops(attrs, [x], [], {"seq": 3}) is None


# ------------------------------------------------------------------ optional inputs: positional slots

def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _args(g, op, feeds):
    """An op's inputs as its numpy evaluation takes them: None for an omitted slot."""
    return [None if not n else feeds[n] if n in feeds else g.value(n).data for n in op.inputs]


@pytest.mark.parametrize("opset, impl", [(17, "decomposed"), (23, "fused")])
def test_attention_bias_without_mask_is_slot_4(opset, impl):
    """An additive mask with no boolean mask leaves slot 3 empty ("" in the op; no
    has_* flag): the numpy evaluation (None there) and ONNX Runtime both give
    softmax(q k^T / sqrt(d) + bias) v, computed here from the math."""
    shapes = {n: (F, ["batch", 2, "seq", 4]) for n in "qkv"}
    text = single_layer_spec("scaled_dot_product_attention", {"impl": impl}, {**shapes, "m": (F, ["batch", 2, "seq", "seq"])},
                             ports={"q": "q", "k": "k", "v": "v", "attn_mask": "m"})
    model, g, _ = compile_text(text, opset=opset)
    (op,) = [o for o in g.ops() if o.op == "Attention"]
    assert op.inputs[3] == "" and op.inputs[4] == "m" and not {"has_masked", "has_bias"} & set(op.attrs)
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((2, 2, 5, 4)).astype(np.float32) for n in "qkv"}
    feeds["m"] = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    feeds["m"][..., 1] = -np.inf                                   # key 1 masked out additively
    q, k, v, m = (feeds[n].astype(np.float64) for n in "qkvm")
    want = _softmax(q @ k.swapaxes(-1, -2) / 2 + m) @ v            # 1/sqrt(head_dim 4)
    got = PRIMS["Attention"].evaluate(*_args(g, op, feeds), **op.attrs)
    assert np.abs(got - want).max() < 1e-5
    assert np.abs(ort_run(model, feeds)["y"] - want).max() < 1e-5
    # the position says what an input is: a float in the boolean mask's slot is refused
    qt, mt = g.value("q").type, g.value("m").type
    with pytest.raises(ShapeError, match="boolean"):
        PRIMS["Attention"].infer({}, [qt, qt, qt, mt])


def test_lstm_initial_h_without_bias_is_slot_5():
    """An LSTM with initial_h but no B or sequence_lens: slots 3 and 4 are "" and no
    'given' attribute names the present ones; the numpy evaluation (None there) and
    ONNX Runtime both match the LSTM recurrence written here in torch's gate order."""
    h_size, seq, batch, width = 3, 4, 2, 2
    text = single_layer_spec("lstm", {"hidden_size": h_size, "bias": False},
                             {"x": (F, ["seq", "batch", width]), "h0": (F, [1, "batch", h_size])},
                             ports={"x": "x", "h0": "h0"}, outputs={"y": "l", "h": "l.h_n"})
    model, g, w = compile_text(text, weights="random")
    (op,) = [o for o in g.ops() if o.op == "LSTM"]
    assert op.inputs[3:] == ["", "", "h0"] and "given" not in op.attrs
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((seq, batch, width)).astype(np.float32),
             "h0": rng.standard_normal((1, batch, h_size)).astype(np.float32)}
    w_ih, w_hh = (w[f"l.weight_{n}_l0"].astype(np.float64) for n in ("ih", "hh"))
    h, c, ys = feeds["h0"][0].astype(np.float64), np.zeros((batch, h_size)), []
    for t in range(seq):
        i, f, gg, o = np.split(feeds["x"][t] @ w_ih.T + h @ w_hh.T, 4, axis=-1)   # torch order i, f, g, o
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(gg)
        h = _sigmoid(o) * np.tanh(c)
        ys.append(h)
    want_y, want_h = np.stack(ys), h[None]                         # [seq, batch, H], [1, batch, H]
    y, y_h, _ = PRIMS["LSTM"].evaluate(*_args(g, op, feeds), **op.attrs)
    assert np.abs(y[:, 0] - want_y).max() < 1e-5 and np.abs(y_h - want_h).max() < 1e-5
    got = ort_run(model, feeds)
    assert np.abs(got["y"] - want_y).max() < 1e-5 and np.abs(got["h"] - want_h).max() < 1e-5


def test_an_op_ending_in_an_omitted_slot_is_refused():
    """Trailing omitted slots are dropped (as ONNX allows), so each op has one form."""
    _, g = _graph(LINEAR)
    op = g.ops()[-1]
    op.inputs.append("")
    with pytest.raises(InternalError, match="trailing omitted"):
        verify(g)


# ------------------------------------------------------------------ the shared helpers can fail

def test_layer_parity_fails_against_a_wrong_reference(monkeypatch):
    diffs = layer_parity("relu", {}, {"x": (F, ["batch", 9])})
    assert diffs["reference"] <= 1e-6 and diffs["onnx.reference"] <= 1e-6
    monkeypatch.setattr(type(LAYERS["relu"]), "reference", lambda self, a, w, i: {"y": i["x"]})
    with pytest.raises(AssertionError, match="relu y vs reference"):
        layer_parity("relu", {}, {"x": (F, ["batch", 9])})


def test_user_error_fails_when_nothing_is_refused_or_the_place_is_wrong():
    with pytest.raises(AssertionError, match="nothing was refused"):
        user_error(LINEAR, "anything")
    bad = LINEAR.replace("out_features: 3", "out_features: 0")
    user_error(bad, "out_features", at="out_features: 0")
    with pytest.raises(AssertionError):
        user_error(bad, "out_features", at="kind: linear")
    with pytest.raises(ZeroDivisionError):       # not a user error: not swallowed
        user_error(lambda: 1 / 0, "x")


def test_bench_gflop_counts_come_from_the_primitive_rules_and_match_the_closed_form():
    """tools/bench_workloads.flops counts with graphc's per-primitive FLOP rules (no second
    model); for the attention workloads that equals the products' multiply-adds written
    from the architecture (projections 2·T·D·D each, scores and mixing 2·B·Sq·Sk·D each,
    FFN 2·T·D·FF twice)."""
    import sys
    sys.path.insert(0, str(ROOT / "tools"))
    import bench_workloads as bw
    D, FF = bw.D, bw.FF

    def attn(b, sq, sk, cross=False):
        t = b * sq
        proj = 2 * t * D * D * (1 if cross else 3) + (2 * b * sk * D * 2 * D if cross else 0)
        return proj + 2 * t * D * D + 4 * b * sq * sk * D

    def ffn(t):
        return 4 * t * D * FF
    for b, s in ((1, 128), (8, 256)):
        assert bw.flops("mha", {"batch": b, "seq": s}) == attn(b, s, s)
        assert bw.flops("mha_causal", {"batch": b, "seq": s}) == attn(b, s, s)
        assert bw.flops("encoder", {"batch": b, "seq": s}) == 6 * (attn(b, s, s) + ffn(b * s))
    b, ss, ts = 2, 9, 7
    want = 6 * (attn(b, ss, ss) + ffn(b * ss)) + 6 * (attn(b, ts, ts) + attn(b, ts, ss, cross=True) + ffn(b * ts))
    assert bw.flops("transformer", {"batch": b, "src_seq": ss, "tgt_seq": ts}) == want
