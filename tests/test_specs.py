"""Every example spec checks, builds (byte-identically, twice), passes the ONNX
checker with strict shape inference, and runs on ONNX Runtime with the same
numbers as the ONNX reference evaluator (rtol/atol 1e-4, float32)."""
import os

import numpy as np
import pytest

from graphc.compiler import check_spec, compile_spec
from graphc.lower import check_model, serialize
from helpers import SPECS, graphc_cli, ort_run, ref_run, user_error

ALL = sorted(SPECS.glob("*.yaml"))
# weights above this are only shape-checked here (their parity lives in the model's own tests)
HEAVY_PARAMS = 40_000_000


def _small_feeds(model_bytes, seed=0):
    import onnxruntime as ort
    from graphc.runtime import random_inputs
    s = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    dims = {}
    for i in s.get_inputs():
        for d in i.shape:
            if isinstance(d, str):
                dims[d] = 2 if "batch" in d else 5
    return random_inputs(s, dims, seed)


def _uses_sequence_lens(model) -> bool:
    return any(n.op_type in ("LSTM", "GRU") and len(n.input) > 4 and n.input[4] for n in model.graph.node)


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_spec_checks_builds_and_runs(path):
    spec, g = check_spec(path)
    n_params = sum(int(np.prod(p.type.concrete_shape())) for p in g.params())
    if n_params > HEAVY_PARAMS:
        pytest.skip(f"{n_params:,} parameters: checked only (see its own tests)")
    a = compile_spec(path, seed=3)
    b = compile_spec(path, seed=3)
    assert a.to_bytes() == b.to_bytes(), "same spec and seed must give identical bytes"
    check_model(a.model)
    feeds = _small_feeds(a.to_bytes())
    if _uses_sequence_lens(a.model):
        # the ONNX reference evaluator ignores LSTM/GRU sequence_lens: compare at full lengths
        for name, arr in feeds.items():
            if arr.dtype.kind == "i" and arr.ndim == 1:
                feeds[name] = np.full_like(arr, 5)
    got = ort_run(a.to_bytes(), feeds)
    want = ref_run(a.to_bytes(), feeds)
    for k in got:
        assert np.all(np.isfinite(got[k])) if got[k].dtype.kind == "f" else True
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4, err_msg=f"{path.name}:{k}")


def test_cli_build_is_deterministic_across_hash_seeds(tmp_path):
    outs = []
    for seed in ("0", "12345"):
        out = tmp_path / f"m{seed}.onnx"
        env = dict(os.environ, PYTHONHASHSEED=seed)
        r = graphc_cli("build", "specs/mlp.yaml", "-o", str(out), env=env)
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_cli_run_random_and_metadata(tmp_path):
    out = tmp_path / "mlp.onnx"
    assert graphc_cli("build", "specs/mlp.yaml", "-o", str(out)).returncode == 0
    r = graphc_cli("run", str(out), "--random", "--dim", "batch=3", "--output", str(tmp_path / "o.npz"))
    assert r.returncode == 0, r.stderr
    assert "logits: float32[3, 10]" in r.stdout
    assert np.load(tmp_path / "o.npz")["logits"].shape == (3, 10)
    import onnx
    m = onnx.load(out)
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["graphc.spec_name"] == "mlp" and len(meta["graphc.spec_sha256"]) == 64
    assert m.ir_version == 8
    assert [d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim][:1] == ["batch"]


def test_failed_build_leaves_existing_output_untouched(tmp_path):
    out = tmp_path / "keep.onnx"
    out.write_bytes(b"precious")
    user_error(graphc_cli("build", "tests/errors/unknown_kind.yaml", "-o", str(out)), "unknown layer kind 'linaer'",
               located="tests/errors/unknown_kind.yaml")
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.onnx"]


def test_run_rejects_inputs_that_disagree_on_a_dim(tmp_path):
    out = tmp_path / "mlp.onnx"
    graphc_cli("build", "specs/mlp.yaml", "-o", str(out))
    np.save(tmp_path / "x.npy", np.zeros((2, 783), np.float32))
    user_error(graphc_cli("run", str(out), "--input", f"x={tmp_path / 'x.npy'}"),
               "axis 1 has size 783, the model expects 784")
    np.save(tmp_path / "x.npy", np.zeros((2, 784), np.float64))
    user_error(graphc_cli("run", str(out), "--input", f"x={tmp_path / 'x.npy'}"),
               "dtype float64, the model expects float32")
