"""Lowering options (issue 18): a layer's choice of ONNX form (``impl:``) is
kept in Graph.lowering_options, not in the primitive's attributes, and still
decides the lowering per op. The numerics of both forms are held to PyTorch by
tests/test_attention.py; here: where the choice lives and that it is honoured."""
import numpy as np
import onnx
import pytest
import yaml

from graphc.errors import InternalError
from graphc.errors import GraphcError, Span
from graphc.ir import Graph
from graphc.ir.builder import Builder
from graphc.ir.graph import verify
from graphc.ir.simplify import merge_common_subexpressions
from helpers import compile_text, ort_run


def _two_cores(impl_a: str, impl_b: str) -> str:
    """Two attention cores over the same q, k, v, differing only in impl."""
    shape = ["batch", 2, "seq", 4]
    spec = {
        "graphc": 1, "dims": ["batch", "seq"],
        "inputs": {n: {"dtype": "float32", "shape": shape} for n in ("q", "k", "v")},
        "layers": [
            {"name": "a", "kind": "scaled_dot_product_attention", "impl": impl_a, "causal": True,
             "inputs": {"q": "q", "k": "k", "v": "v"}},
            {"name": "b", "kind": "scaled_dot_product_attention", "impl": impl_b, "causal": True,
             "inputs": {"q": "q", "k": "k", "v": "v"}},
        ],
        "outputs": {"ya": "a", "yb": "b"},
    }
    return yaml.safe_dump(spec, sort_keys=False)


def test_impl_is_a_lowering_option_not_an_attribute():
    _, g, _ = compile_text(_two_cores("fused", "decomposed"), opset=23)
    cores = [op for op in g.ops() if op.op == "Attention"]
    assert len(cores) == 2                      # different requests are not merged as one computation
    assert all("impl" not in op.attrs for op in cores)
    assert sorted(g.lowering_options[op.id]["impl"] for op in cores) == ["decomposed", "fused"]


def _op_types(graph) -> list[str]:
    """Op types of a graph and its If branches (the fused form sits behind an empty-input guard)."""
    kinds = []
    for n in graph.node:
        kinds.append(n.op_type)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                kinds += _op_types(a.g)
    return kinds


def test_each_op_is_lowered_as_its_layer_asked():
    model, _, _ = compile_text(_two_cores("fused", "decomposed"), opset=23)
    kinds = _op_types(onnx.load_from_string(model).graph)
    assert kinds.count("Attention") == 1 and kinds.count("Softmax") == 1
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((2, 2, 5, 4)).astype(np.float32) for n in ("q", "k", "v")}
    out = ort_run(model, feeds)
    np.testing.assert_allclose(out["ya"], out["yb"], atol=1e-5)   # the two forms compute one function


def _core_pair(impl_a: str, impl_b: str) -> Graph:
    """Two Attention ops over the same q, k, v summed into one output."""
    g = Graph()
    b = Builder(g)
    span = Span("<t>", 1, 1)
    q, k, v = (b.input(n, "float32", [1, 2, 3, 4], span) for n in "qkv")
    with b.layer("l", span):
        cores = [b.op("Attention", [q, k, v], scale=0.5, causal=False, has_masked=False, has_bias=False,
                      lowering={"impl": impl}) for impl in (impl_a, impl_b)]
        g.outputs["y"] = b.op("Add", cores).name
    return g


@pytest.mark.parametrize("impl_b,merged", [("decomposed", 1), ("fused", 0)])
def test_common_subexpressions_compare_lowering_options(impl_b, merged):
    g = _core_pair("decomposed", impl_b)
    assert merge_common_subexpressions(g) == merged
    verify(g)                                    # no options left behind for a dropped op
    assert len(g.lowering_options) == 2 - merged


def test_fused_below_opset_23_is_still_a_located_error():
    with pytest.raises(GraphcError, match="impl: fused needs --opset 23"):
        compile_text(_two_cores("fused", "auto"), opset=17)


def test_builder_refuses_an_undeclared_lowering_option():
    b = Builder(Graph())
    x = b.input("x", "float32", [2, 3], Span("<t>", 1, 1))
    with pytest.raises(InternalError, match="declares no lowering option impl"):
        b.op("Relu", [x], lowering={"impl": "fused"})
