"""graphc.ir.simplify: what common-subexpression elimination merges and what it
must not, what dead-op removal drops, and that the simplified model computes
exactly what the unsimplified one does."""
import collections
import contextlib

import numpy as np
import onnx
import pytest

from graphc.errors import Span
from graphc.ir import Builder, Graph
from graphc.ir.simplify import _canonical, _NoKey, merge_common_subexpressions, remove_dead_ops
from graphc.shapes import Dim
from helpers import compile_text, ort_run, single_layer_spec


@contextlib.contextmanager
def _graph():
    """A graph with input x [batch, 3, 4], its ops inside one test layer."""
    g = Graph("t")
    b = Builder(g)
    x = b.input("x", "float32", [Dim.sym("batch"), 3, 4], Span("<test>", 1, 1))
    with b.layer("blk", Span("<test>", 2, 1), "test"):
        yield g, b, x


def _op_keys(g):
    return [(o.op, tuple(o.inputs), _canonical(o.attrs)) for o in g.ops() if o.op != "Derive"]


def test_identical_ops_merge_and_their_users_follow():
    with _graph() as (g, b, x):
        r1, r2 = b.op("Relu", [x]), b.op("Relu", [x])
        s1, s2 = b.op("Softmax", [r1], axis=-1), b.op("Softmax", [r2], axis=-1)   # equal once r2 is r1
        g.outputs["y"] = b.op("Add", [s1, s2]).name
    assert merge_common_subexpressions(g) == 2
    ops = g.ops()
    assert [o.op for o in ops] == ["Relu", "Softmax", "Add"]
    assert ops[2].inputs == [s1.name, s1.name]
    assert not g.has_value(r2.name) and not g.has_value(s2.name)
    assert len(set(_op_keys(g))) == len(_op_keys(g))


def test_different_attributes_derives_and_graph_outputs_stay_apart():
    with _graph() as (g, b, x):
        a1, a2 = b.op("Softmax", [x], axis=-1), b.op("Softmax", [x], axis=1)        # different attribute
        w = b.const(np.ones(4, np.float32))
        d1, d2 = (b.derive(lambda t: t * 2, [w], (4,), "twice") for _ in range(2))   # closures: never equal
        e1, e2 = b.op("Add", [x, d1]), b.op("Add", [x, d2])
        o1, o2 = b.op("Relu", [x]), b.op("Relu", [x])                              # both are graph outputs
    g.outputs.update(a=a1.name, b=a2.name, e1=e1.name, e2=e2.name, o1=o1.name, o2=o2.name)
    before = [o.id for o in g.ops()]
    assert merge_common_subexpressions(g) == 0
    assert [o.id for o in g.ops()] == before


def test_attribute_keys_tell_types_and_values_apart():
    assert len({_canonical(1), _canonical(1.0), _canonical(True)}) == 3
    assert _canonical([1, 2]) != _canonical((1, 2))
    assert _canonical(np.array([1, 2], np.int64)) == _canonical(np.array([1, 2], np.int64))
    assert _canonical(np.array([1, 2], np.int64)) != _canonical(np.array([1, 2], np.int32))
    assert _canonical({"shape": (Dim.sym("b"), Dim.const(1))}) == _canonical({"shape": (Dim.sym("b"), Dim.const(1))})
    assert _canonical((Dim.sym("b"),)) != _canonical((Dim.sym("c"),))
    with pytest.raises(_NoKey):
        _canonical(lambda: 0)


def test_a_stack_builds_its_mask_work_once_and_computes_the_same():
    """Every layer of an encoder reshapes the same padding mask; after the pass one
    reshape, one additive mask and one row factor serve all of them, and the
    outputs are bit-for-bit those of the unmerged model."""
    d, n = 16, 3
    text = single_layer_spec("transformer_encoder", {"layers": n, "heads": 2, "d_ff": 32},
                             {"x": ("float32", ["batch", "seq", d]), "m": ("bool", ["batch", "seq"])},
                             ports={"x": "x", "key_padding_mask": "m"})
    merged, g, w = compile_text(text, weights="random")
    plain, g0, _ = compile_text(text, weights=w, simplified=False)
    assert len(g.ops()) < len(g0.ops()) and len(set(_op_keys(g))) == len(_op_keys(g))
    count = collections.Counter(node.op_type for node in onnx.load_from_string(merged).graph.node)
    count0 = collections.Counter(node.op_type for node in onnx.load_from_string(plain).graph.node)
    for op_type in ("Where", "ReduceMax", "Not"):     # the mask's additive form and the row factor
        per_layer = count0[op_type] // n              # what one layer builds from the mask
        assert per_layer >= 1 and count0[op_type] == n * per_layer, op_type
        assert count[op_type] == per_layer, op_type   # built once for the whole stack
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, d)).astype(np.float32)
    m = np.zeros((2, 5), bool)
    m[0, 3:] = True
    m[1, :] = True                                    # a fully padded sequence: the zeroed rows too
    got, want = ort_run(merged, {"x": x, "m": m})["y"], ort_run(plain, {"x": x, "m": m})["y"]
    np.testing.assert_array_equal(got, want)


def test_dead_chains_and_the_weights_only_they_read_are_dropped():
    with _graph() as (g, b, x):
        live = b.op("Relu", [x])
        w = b.const(np.ones(4, np.float32), "only_dead_reads_me")
        dead = b.op("Softmax", [b.op("Add", [x, w])], axis=-1)              # a chain nothing reads
        g.outputs["y"] = live.name
    assert remove_dead_ops(g) == 2
    assert [o.op for o in g.ops()] == ["Relu"]
    assert not g.has_value(dead.name) and not g.has_value(w.name) and g.has_value("x")


def test_an_unread_layer_output_is_not_computed():
    """A GRU's per-step output y that the spec never reads: the model that only
    returns h_n has no node computing y's batch-first layout, and gives the same h_n."""
    text = single_layer_spec("gru", {"hidden_size": 8, "num_layers": 2},
                             {"x": ("float32", ["batch", "seq", 4])}, outputs={"h": "l.h_n"})
    slim, g, w = compile_text(text, weights="random")
    full, g0, _ = compile_text(text, weights=w, simplified=False)
    nodes = [n.op_type for n in onnx.load_from_string(slim).graph.node]
    nodes0 = [n.op_type for n in onnx.load_from_string(full).graph.node]
    assert len(nodes) < len(nodes0)
    x = np.random.default_rng(1).standard_normal((3, 5, 4)).astype(np.float32)
    np.testing.assert_array_equal(ort_run(slim, {"x": x})["h"], ort_run(full, {"x": x})["h"])
