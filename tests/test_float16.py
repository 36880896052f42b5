"""Whole-model float16 export (``--dtype float16``).

Oracles: each example spec's float32 model (itself held to PyTorch and the ONNX
reference evaluator by the other suites) on the same inputs, PyTorch float32
eager for a padded encoder stack, and the ONNX reference evaluator, which runs
the float16 model in numpy float16 (ORT's CPU provider computes many float16
ops in float32 behind inserted casts, so the two are independent).

Tolerance: float16 keeps 11 significant bits (relative step 9.8e-4); outputs
must agree to 4e-3 relative to the output's scale (measured worst: 8.2e-4 on
the 6-layer encoder), and no output may hold NaN or inf.
"""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from graphc.compiler import check_spec, compile_spec
from graphc.lower import check_model
from graphc.runtime import random_inputs
from helpers import SPECS, graphc_cli, ort_run, ref_run, single_layer_spec, user_error

REL_TOL = 4e-3
SPECS_F16 = sorted(SPECS.rglob("*.yaml"))
MAX_PARAMS = 30_000_000        # bigger models: float32 parity lives in their own tests
DIMS = {"batch": 2, "seq": 7, "src_seq": 7, "tgt_seq": 5}


def _half(feeds):
    return {k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in feeds.items()}


def _close(got16, want32, what):
    assert got16.dtype == np.float16, what
    assert np.all(np.isfinite(got16)), f"{what}: NaN or inf in float16"
    scale = max(1.0, float(np.abs(want32).max()))
    diff = float(np.abs(got16.astype(np.float32) - want32).max())
    assert diff <= REL_TOL * scale, f"{what}: max abs diff {diff:.3g} at scale {scale:.3g}"


def _float_types(model):
    """Float types of the weights and of the inputs/outputs. Scalar float32
    constants (the attention mask's fill, used inside its float32 softmax)
    are not weights."""
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    weights = [t for t in model.graph.initializer if t.data_type in floats]
    return ({t.data_type for t in weights if not (t.data_type == onnx.TensorProto.FLOAT and not t.dims)},
            {v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)} & floats)


@pytest.mark.parametrize("opset", [17, 23])
@pytest.mark.parametrize("path", SPECS_F16, ids=[p.stem for p in SPECS_F16])
def test_example_spec_in_float16_matches_its_float32_model(path, opset):
    _, g = check_spec(path)
    if sum(int(np.prod(p.type.concrete_shape())) for p in g.params()) > MAX_PARAMS:
        pytest.skip("large model: see test_six_plus_six_transformer_runs_in_float16")
    m32 = compile_spec(path, seed=3, opset=opset)
    m16 = compile_spec(path, seed=3, opset=opset, dtype="float16")
    check_model(m16.model)
    assert _float_types(m16.model) in [({onnx.TensorProto.FLOAT16}, {onnx.TensorProto.FLOAT16}),
                                       (set(), {onnx.TensorProto.FLOAT16})]
    session = ort.InferenceSession(m32.to_bytes(), providers=["CPUExecutionProvider"])
    feeds = random_inputs(session, DIMS, 1)
    want = ort_run(m32.to_bytes(), feeds)
    got = ort_run(m16.to_bytes(), _half(feeds))
    for k in want:
        _close(got[k], want[k], f"{path.stem}:{k}@{opset}")


def test_softmax_and_norms_run_in_float32_inside_a_float16_model():
    """The ONNX types ORT sees: every Softmax/LogSoftmax reads float32, and the
    normalisations keep float32 statistics (stash_type=1)."""
    m = compile_spec(SPECS / "mlp.yaml", dtype="float16").model
    m_att = compile_spec(SPECS / "transformer_encoder.yaml", dtype="float16").model
    for model in (m, m_att):
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        types = {v.name: v.type.tensor_type.elem_type for v in
                 list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
        softmaxes = [n for n in model.graph.node if n.op_type in ("Softmax", "LogSoftmax")]
        assert softmaxes
        for n in softmaxes:
            assert types[n.input[0]] == onnx.TensorProto.FLOAT, n.name
        for n in model.graph.node:
            if n.op_type in ("LayerNormalization", "RMSNormalization"):
                assert next(a.i for a in n.attribute if a.name == "stash_type") == 1


def test_float16_encoder_matches_torch_float32_with_padding_and_a_fully_padded_row():
    torch = pytest.importorskip("torch", reason="PyTorch is the parity oracle: pip install torch==2.13.0")
    d, h, ff, n, b, s = 32, 4, 64, 2, 3, 7
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d, h, ff, dropout=0.0, batch_first=True)
    enc = torch.nn.TransformerEncoder(layer, n, enable_nested_tensor=False).eval()
    weights = {"l." + k: v.detach().numpy().copy() for k, v in enc.state_dict().items()}
    text = single_layer_spec("transformer_encoder", {"layers": n, "heads": h, "d_ff": ff},
                             {"x": ("float32", ["batch", "seq", d]), "m": ("bool", ["batch", "seq"])},
                             ports={"x": "x", "key_padding_mask": "m"})
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "enc.yaml"
        spec.write_text(text)
        model = compile_spec(spec, weights, dtype="float16").to_bytes()
    rng = np.random.default_rng(3)
    x = rng.standard_normal((b, s, d)).astype(np.float32)
    kpm = np.arange(s)[None, :] >= np.array([s, 4, 0])[:, None]          # row 2: every key padded
    got = ort_run(model, {"x": x.astype(np.float16), "m": kpm})["y"]
    assert np.all(np.isfinite(got)), "a fully padded sequence must not give NaN in float16"
    with torch.no_grad():
        want = enc(torch.from_numpy(x[:2]), src_key_padding_mask=torch.from_numpy(kpm[:2])).numpy()
    valid = ~kpm[:2]
    diff = np.abs(got[:2].astype(np.float32) - want)[valid].max()
    assert diff <= REL_TOL * max(1.0, float(np.abs(want).max())), diff


@pytest.mark.parametrize("name", ["mha", "seed_mha_concat", "gru_classifier", "positional_demo"])
def test_reference_evaluator_in_numpy_float16_agrees_with_ort(name):
    m16 = compile_spec(SPECS / f"{name}.yaml", seed=2, dtype="float16").to_bytes()
    session = ort.InferenceSession(m16, providers=["CPUExecutionProvider"])
    feeds = random_inputs(session, DIMS, 4)
    got = ort_run(m16, feeds)
    want = ref_run(m16, feeds)
    for k in got:
        _close(got[k], want[k].astype(np.float32), f"{name}:{k}")


def test_cli_build_float16_is_deterministic_and_half_the_size(tmp_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"enc{i}.onnx"
        r = graphc_cli("build", "specs/transformer_encoder.yaml", "--dtype", "float16", "-o", str(out))
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    r = graphc_cli("build", "specs/transformer_encoder.yaml", "-o", str(tmp_path / "enc32.onnx"))
    assert r.returncode == 0, r.stderr
    ratio = len(outs[0]) / (tmp_path / "enc32.onnx").stat().st_size
    assert 0.49 < ratio < 0.51, ratio
    meta = {p.key: p.value for p in onnx.load_from_string(outs[0]).metadata_props}
    assert meta["graphc.dtype"] == "float16"
    r = graphc_cli("run", str(tmp_path / "enc0.onnx"), "--random")
    assert r.returncode == 0 and "float16[" in r.stdout and "NON-FINITE" not in r.stdout, r.stdout + r.stderr


def test_weights_beyond_float16_range_are_a_located_error(tmp_path):
    spec = SPECS / "mha.yaml"
    _, g = check_spec(spec)
    rng = np.random.default_rng(0)
    weights = {p.name: rng.standard_normal(p.type.concrete_shape()).astype(np.float32) * 0.02 for p in g.params()}
    weights["attn.out_proj.weight"][3, 5] = 1e5
    np.savez(tmp_path / "w.npz", **weights)
    out = tmp_path / "mha.onnx"
    out.write_bytes(b"earlier output")
    r = graphc_cli("build", str(spec), "--weights", str(tmp_path / "w.npz"), "--dtype", "float16", "-o", str(out))
    user_error((r.returncode, r.stdout, r.stderr), "error: parameter 'attn.out_proj.weight' has values up to 100000",
               located=str(spec))
    assert "float16" in r.stderr and "hint:" in r.stderr
    assert out.read_bytes() == b"earlier output"
    # the same weights are fine in float32
    r = graphc_cli("build", str(spec), "--weights", str(tmp_path / "w.npz"), "-o", str(out))
    assert r.returncode == 0, r.stderr


def test_run_spec_directly_in_float16():
    r = graphc_cli("run", "specs/gru_classifier.yaml", "--random", "--dtype", "float16")
    assert r.returncode == 0, r.stderr
    assert "log_probs: float16[" in r.stdout and "NON-FINITE" not in r.stdout


def test_six_plus_six_transformer_runs_in_float16(tmp_path):
    """specs/transformer.yaml (44M parameters): float16 against float32 at the spec's own sizes."""
    m32 = compile_spec(SPECS / "transformer.yaml", seed=1)
    m16 = compile_spec(SPECS / "transformer.yaml", seed=1, dtype="float16")
    session = ort.InferenceSession(m32.to_bytes(), providers=["CPUExecutionProvider"])
    feeds = random_inputs(session, DIMS, 2)
    want = ort_run(m32.to_bytes(), feeds, threads=2)
    got = ort_run(m16.to_bytes(), _half(feeds), threads=2)
    for k in want:
        _close(got[k], want[k], f"transformer:{k}")
