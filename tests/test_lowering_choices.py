"""Graph forms chosen for ONNX Runtime's speed (measured in tools/bench.py and
docs/benchmarks.md) must stay chosen: these tests read the graph ORT actually
runs (its optimized model) and the graph graphc emits. Numerics of the same
models are held to PyTorch by tests/test_transformer.py and test_attention.py."""
import onnx
import onnxruntime as ort
import pytest

from graphc.compiler import compile_spec
from helpers import SPECS


def _ort_optimized(model_bytes: bytes, tmp_path) -> onnx.ModelProto:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "optimized.onnx"))


@pytest.mark.parametrize("spec", ["transformer_encoder", "bert_encoder", "encoder_from_blocks"])
def test_residual_sums_before_layer_norm_escape_skip_layer_norm(spec, tmp_path):
    """ORT's SkipLayerNormalization CPU kernel is ~9x slower than Sum +
    LayerNormalization; graphc emits the residual sum as Sum so ORT keeps the
    fast pair."""
    compiled = compile_spec(SPECS / f"{spec}.yaml")
    emitted = [n.op_type for n in compiled.model.graph.node]
    assert emitted.count("LayerNormalization") and emitted.count("Sum") >= emitted.count("LayerNormalization") - 1
    ran = {n.op_type for n in _ort_optimized(compiled.to_bytes(), tmp_path).graph.node}
    assert "SkipLayerNormalization" not in ran and "LayerNormalization" in ran


@pytest.mark.parametrize("spec,opset", [("mha", 17), ("transformer", 17), ("transformer", 23), ("bert_encoder", 17)])
def test_padding_masks_are_added_not_selected_over_the_scores(spec, opset):
    """Key padding (and causal) masks become one additive [B|1, 1, Sq|1, Sk]
    tensor broadcast into the scores with Add, not a Where over the whole
    [B, H, Sq, Sk] scores (measured 2x slower in ORT)."""
    model = compile_spec(SPECS / f"{spec}.yaml", opset=opset).model
    producer = {o: n for n in model.graph.node for o in n.output}
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert softmaxes
    for sm in softmaxes:
        before = producer[sm.input[0]]
        if before.op_type == "MatMul":
            continue                          # an unmasked attention
        assert before.op_type == "Add", before.op_type
        fills = [producer.get(i) for i in before.input]
        assert any(f is not None and f.op_type == "Where" for f in fills)


def _all_nodes(graph):
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(a.g)


@pytest.mark.parametrize("spec", ["mha", "transformer_encoder", "transformer"])
def test_projections_land_in_head_layout_without_transposes(spec):
    """Q, K and V are projected straight into [B, H, S, D] by one batched MatMul
    against per-head weights [n, width, D]: per attention, the only Transposes
    are K^T (fused into the scores MatMul by ORT) and the head merge (measured
    11% faster for the attention block than MatMul + Split on the last axis +
    a Transpose per projection at b8 s256)."""
    model = compile_spec(SPECS / f"{spec}.yaml").model
    inits = {i.name: i for i in model.graph.initializer}
    nodes = list(_all_nodes(model.graph))
    attentions = sum(n.op_type == "Softmax" for n in nodes)
    assert attentions
    perms = sorted(tuple(n.attribute[0].ints) for n in nodes if n.op_type == "Transpose")
    assert perms == sorted([(0, 1, 3, 2), (0, 2, 1, 3)] * attentions)
    head_projections = [n for n in nodes if n.op_type == "MatMul" and n.input[1] in inits
                        and len(inits[n.input[1]].dims) == 3]
    assert len(head_projections) >= attentions


@pytest.mark.parametrize("spec", ["mha", "transformer"])
def test_only_batch_broadcasting_matmuls_are_guarded(spec):
    """The If that shields ORT from an empty batch costs ~20 us a call: only the
    per-head projections ([B, 1, S, W] @ [n, W, D]) carry it, never a plain
    linear layer ([B, S, W] @ [W, N]) or the attention products."""
    model = compile_spec(SPECS / f"{spec}.yaml").model
    guarded = [n for n in model.graph.node if n.op_type == "If"]
    inits = {i.name: i for i in model.graph.initializer}
    for n in guarded:
        (inner,) = [a.g for a in n.attribute if a.name == "else_branch"]
        (mm,) = [x for x in inner.node if x.op_type == "MatMul"]
        assert len(inits[mm.input[1]].dims) == 3
    plain = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert plain and all(len(inits[n.input[1]].dims) == 2 for n in plain)
