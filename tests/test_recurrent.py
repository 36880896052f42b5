"""LSTM/GRU layers and cells: parity with PyTorch (torch state_dicts loaded
with no renaming, packed sequences for variable lengths), with each kind's
numpy reference, with the primitives' numpy evaluation, and with the ONNX
reference evaluator (at full lengths only: it ignores sequence_lens).
Tolerance: max abs difference 1e-5 in float32."""
import numpy as np
import onnx
import pytest

from graphc.compiler import compile_spec
from graphc.layers import LAYERS
from graphc.prims import PRIMS
from helpers import SPECS, compile_text, graphc_cli, ort_run, ref_run, single_layer_spec, user_error

torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch (the CPU build is enough)")
nn = torch.nn
rnn_utils = torch.nn.utils.rnn

TOL = 1e-5
IN, H, BATCH, SEQ = 5, 6, 3, 7
LENGTHS = np.array([7, 2, 5])              # unsorted, one full-length and one short sequence
RNG = np.random.default_rng(0)


def _numpy_state(module, prefix="l."):
    return {prefix + k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _case_spec(kind, layers, bidirectional, batch_first, states, lengths, len_dtype="int64", bias=True):
    dirs = 2 if bidirectional else 1
    x_shape = ["batch", "seq", IN] if batch_first else ["seq", "batch", IN]
    inputs = {"x": ("float32", x_shape)}
    ports = {"x": "x"}
    if lengths:
        inputs["lengths"] = (len_dtype, ["batch"])
        ports["lengths"] = "lengths"
    if states:
        for s in ("h0", "c0") if kind == "lstm" else ("h0",):
            inputs[s] = ("float32", [layers * dirs, "batch", H])
            ports[s] = s
    outputs = {"y": "l", "h_n": "l.h_n"} | ({"c_n": "l.c_n"} if kind == "lstm" else {})
    args = {"hidden_size": H, "num_layers": layers, "bidirectional": bidirectional, "batch_first": batch_first,
            "bias": bias}
    return single_layer_spec(kind, args, inputs, ports=ports, outputs=outputs), args


def _feeds(kind, layers, bidirectional, batch_first, states, lengths, len_dtype="int64", full=False):
    dirs = 2 if bidirectional else 1
    x = RNG.standard_normal((BATCH, SEQ, IN) if batch_first else (SEQ, BATCH, IN)).astype(np.float32)
    feeds = {"x": x}
    if lengths:
        feeds["lengths"] = (np.full(BATCH, SEQ) if full else LENGTHS).astype(len_dtype)
    if states:
        for s in ("h0", "c0") if kind == "lstm" else ("h0",):
            feeds[s] = RNG.standard_normal((layers * dirs, BATCH, H)).astype(np.float32)
    return feeds


def _torch_run(module, kind, feeds, batch_first):
    x = torch.from_numpy(feeds["x"])
    state = None
    if "h0" in feeds:
        h0 = torch.from_numpy(feeds["h0"])
        state = (h0, torch.from_numpy(feeds["c0"])) if kind == "lstm" else h0
    with torch.no_grad():
        if "lengths" in feeds:
            packed = rnn_utils.pack_padded_sequence(x, torch.from_numpy(feeds["lengths"].astype(np.int64)),
                                                    batch_first=batch_first, enforce_sorted=False)
            y, hidden = module(packed, state)
            y, _ = rnn_utils.pad_packed_sequence(y, batch_first=batch_first, total_length=SEQ)
        else:
            y, hidden = module(x, state)
    out = {"y": y.numpy()}
    if kind == "lstm":
        out["h_n"], out["c_n"] = hidden[0].numpy(), hidden[1].numpy()
    else:
        out["h_n"] = hidden.numpy()
    return out


def _torch_module(kind, layers, bidirectional, batch_first, bias=True):
    torch.manual_seed(layers * 10 + bidirectional * 2 + batch_first)
    cls = nn.LSTM if kind == "lstm" else nn.GRU
    return cls(IN, H, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias).eval()


# kind, layers, bidirectional, batch_first, initial states, lengths
CASES = [
    (kind, *rest) for kind in ("lstm", "gru") for rest in [
        (1, False, True, False, False),
        (2, True, True, True, False),
        (2, False, False, True, False),
        (1, True, False, False, False),
        (2, True, True, True, True),
        (1, False, False, False, True),
        (2, True, False, False, True),
    ]
]


def _ids(c):
    kind, layers, bi, bf, st, ln = c
    return f"{kind}-{layers}L-{'bi' if bi else 'uni'}-{'bf' if bf else 'sf'}{'-states' if st else ''}{'-lengths' if ln else ''}"


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_matches_torch_and_reference(case):
    kind, layers, bi, bf, states, lengths = case
    len_dtype = "int32" if (lengths and layers == 1) else "int64"
    text, args = _case_spec(kind, layers, bi, bf, states, lengths, len_dtype)
    module = _torch_module(kind, layers, bi, bf)
    model, _, weights = compile_text(text, weights=_numpy_state(module))
    feeds = _feeds(kind, layers, bi, bf, states, lengths, len_dtype)
    got = ort_run(model, feeds)
    want = _torch_run(module, kind, feeds, bf)
    for k in want:
        assert got[k].shape == want[k].shape, k
        assert _max_diff(got[k], want[k]) <= TOL, (k, _max_diff(got[k], want[k]))
    if lengths:
        y = got["y"] if bf else got["y"].transpose(1, 0, 2)
        for n, length in enumerate(feeds["lengths"]):
            assert np.all(y[n, length:] == 0.0), "outputs past a sequence's length must be exactly zero"
    # the kind's numpy reference, written from the math
    layer = LAYERS[kind]
    full_args = {p.name: args.get(p.name, p.default) for p in layer.params}
    ref = layer.reference(full_args, {k[2:]: v for k, v in weights.items()}, feeds)
    for k in want:
        assert _max_diff(got[k], ref[k]) <= TOL, (k, _max_diff(got[k], ref[k]))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("opset", [17, 23])
def test_onnx_reference_evaluator_agrees_at_full_lengths(kind, opset):
    # all lengths = seq: the ONNX reference evaluator ignores sequence_lens
    text, _ = _case_spec(kind, 2, True, True, True, True)
    model, _, _ = compile_text(text, weights="random", opset=opset)
    feeds = _feeds(kind, 2, True, True, True, True, full=True)
    got, ref = ort_run(model, feeds), ref_run(model, feeds)
    for k in got:
        assert _max_diff(got[k], ref[k]) <= TOL, k


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bias_false(kind):
    text, _ = _case_spec(kind, 2, True, False, False, False, bias=False)
    module = _torch_module(kind, 2, True, False, bias=False)
    model, g, _ = compile_text(text, weights=_numpy_state(module))
    assert not any("bias" in p.name for p in g.values() if p.kind == "param")
    feeds = _feeds(kind, 2, True, False, False, False)
    got, want = ort_run(model, feeds), _torch_run(module, kind, feeds, False)
    for k in want:
        assert _max_diff(got[k], want[k]) <= TOL, k


def test_primitive_numpy_evaluation_matches_ort_with_sequence_lens():
    """prims.recurrent's numpy LSTM/GRU (ONNX semantics) against ORT, lengths included."""
    for kind in ("lstm", "gru"):
        text, _ = _case_spec(kind, 1, True, False, True, True, len_dtype="int32")
        model, g, _ = compile_text(text, weights="random")
        feeds = _feeds(kind, 1, True, False, True, True, len_dtype="int32")
        got = ort_run(model, feeds)
        (op,) = [o for o in g.ops() if o.op == kind.upper()]
        args = [None if not n else feeds[n] if n in feeds else g.value(n).data for n in op.inputs]
        outs = PRIMS[op.op].evaluate(*args, **op.attrs)
        y = outs[0].transpose(0, 2, 1, 3).reshape(SEQ, BATCH, 2 * H)  # [seq, 2, B, H] -> [seq, B, 2H]
        assert _max_diff(y, got["y"]) <= TOL
        assert _max_diff(outs[1], got["h_n"]) <= TOL
        if kind == "lstm":
            assert _max_diff(outs[2], got["c_n"]) <= TOL


@pytest.mark.parametrize("kind", ["lstm_cell", "gru_cell"])
@pytest.mark.parametrize("with_state", [True, False])
def test_cells_match_torch(kind, with_state):
    torch.manual_seed(3)
    module = (nn.LSTMCell if kind == "lstm_cell" else nn.GRUCell)(IN, H).eval()
    inputs = {"x": ("float32", ["batch", IN])}
    state_ports = ("h", "c") if kind == "lstm_cell" else ("h",)
    if with_state:                       # graph inputs h_in, c_in bound to the ports h, c
        inputs.update({s + "_in": ("float32", ["batch", H]) for s in state_ports})
    outputs = {"h": "l"} | ({"c": "l.c"} if kind == "lstm_cell" else {})
    ports = {n.removesuffix("_in"): n for n in inputs}
    text = single_layer_spec(kind, {"hidden_size": H}, inputs, ports=ports, outputs=outputs)
    model, _, weights = compile_text(text, weights=_numpy_state(module))
    feeds = {n: RNG.standard_normal((BATCH, IN if n == "x" else H)).astype(np.float32) for n in inputs}
    got = ort_run(model, feeds)
    port_values = {p: feeds[n] for p, n in ports.items()}
    with torch.no_grad():
        t = {p: torch.from_numpy(v) for p, v in port_values.items()}
        if kind == "lstm_cell":
            hc = module(t["x"], (t["h"], t["c"]) if with_state else None)
            want = {"h": hc[0].numpy(), "c": hc[1].numpy()}
        else:
            want = {"h": module(t["x"], t.get("h")).numpy()}
    layer = LAYERS[kind]
    ref = layer.reference({p.name: p.default for p in layer.params} | {"hidden_size": H},
                          {k[2:]: v for k, v in weights.items()}, port_values)
    onnx_ref = ref_run(model, feeds)
    for k in want:
        assert _max_diff(got[k], want[k]) <= TOL, k
        assert _max_diff(got[k], ref[k]) <= TOL, k
        assert _max_diff(got[k], onnx_ref[k]) <= TOL, k


def test_emitted_nodes_are_native_time_major_and_gru_resets_after_the_product():
    text, _ = _case_spec("gru", 2, True, True, True, True)
    model = onnx.load_from_string(compile_text(text)[0])
    grus = [n for n in model.graph.node if n.op_type == "GRU"]
    assert len(grus) == 2, "one ONNX GRU node per layer"
    for n in grus:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs["linear_before_reset"] == 1 and attrs["layout"] == 0
        assert attrs["direction"] == b"bidirectional" and attrs["hidden_size"] == H
        assert len(n.input) == 6 and n.input[4] and n.input[5]   # X W R B sequence_lens initial_h
    text, _ = _case_spec("lstm", 1, False, False, False, False)
    (lstm,) = [n for n in onnx.load_from_string(compile_text(text)[0]).graph.node if n.op_type == "LSTM"]
    assert len(lstm.input) == 4, "no sequence_lens, states or peepholes P: trailing optional inputs left out"


def _line_of(text, needle):
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_proj_size_is_a_located_error():
    text, _ = _case_spec("lstm", 1, False, True, False, False)
    text = text.replace("hidden_size: 6", "hidden_size: 6\n  proj_size: 3")
    user_error(text, "ONNX LSTM has no output projection", at="proj_size")


BAD = """
graphc: 1
dims: [batch, seq]
inputs:
  x: {dtype: float32, shape: [batch, seq, 5]}
  lengths: {dtype: int64, shape: [batch]}
  h0: {dtype: float32, shape: [2, batch, 6]}
layers:
  - name: l
    kind: lstm
    inputs: {x: x, lengths: lengths, h0: h0}
    hidden_size: 6
    num_layers: 2
    bidirectional: true
    batch_first: true
outputs: {y: l}
"""


def test_bad_ports_are_located_errors():
    # needs num_layers * dirs = 4 rows
    err = user_error(BAD, "initial state 'h0' must have shape [4, batch, 6]", at="inputs: {x: x")
    line = BAD.splitlines()[_line_of(BAD, "inputs: {x: x") - 1]
    assert err.span.col == line.index("h0: h0") + len("h0: ") + 1     # at the bound value 'h0'
    user_error(BAD.replace("dtype: int64", "dtype: float32"), "lengths must be int64 or int32, got float32")
    user_error(BAD.replace("shape: [batch]}", "shape: [seq]}"), "lengths must have shape [batch]")
    user_error(BAD.replace("[batch, seq, 5]", "[batch, 5]"), "must have rank 3")


def test_specs_load_torch_state_dicts_with_no_renaming():
    """The example specs against the exact torch modules they describe."""
    torch.manual_seed(0)
    enc = nn.Module()
    enc.lstm = nn.LSTM(256, 512, num_layers=2, batch_first=True, bidirectional=True)
    c = compile_spec(SPECS / "lstm.yaml", weights=_numpy_state(enc, prefix=""))
    x = RNG.standard_normal((2, 9, 256)).astype(np.float32)
    lengths = np.array([9, 4], np.int64)
    got = ort_run(c.to_bytes(), {"x": x, "lengths": lengths})
    packed = rnn_utils.pack_padded_sequence(torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True,
                                            enforce_sorted=False)
    with torch.no_grad():
        y, (h_n, c_n) = enc.lstm(packed)
    y, _ = rnn_utils.pad_packed_sequence(y, batch_first=True, total_length=9)
    want = {"y": y.numpy(), "h_n": h_n.numpy(), "c_n": c_n.numpy()}
    for k in want:
        assert got[k].shape == want[k].shape and _max_diff(got[k], want[k]) <= TOL, (k, _max_diff(got[k], want[k]))
    assert np.all(got["y"][1, 4:] == 0.0)

    torch.manual_seed(1)
    m = nn.Module()
    m.gru = nn.GRU(256, 512, num_layers=2, batch_first=True)
    c = compile_spec(SPECS / "gru.yaml", weights=_numpy_state(m, prefix=""))
    feeds = {"x": x, "h0": RNG.standard_normal((2, 2, 512)).astype(np.float32)}
    got = ort_run(c.to_bytes(), feeds)
    with torch.no_grad():
        y, h_n = m.gru(torch.from_numpy(x), torch.from_numpy(feeds["h0"]))
    assert _max_diff(got["y"], y.numpy()) <= TOL and _max_diff(got["h_n"], h_n.numpy()) <= TOL


def test_cli_builds_and_runs_the_lstm_spec(tmp_path):
    out = tmp_path / "lstm.onnx"
    r = graphc_cli("build", "specs/lstm.yaml", "-o", str(out))
    assert r.returncode == 0, r.stderr
    r = graphc_cli("run", str(out), "--random", "--dim", "seq=8")
    assert r.returncode == 0, r.stderr
    assert "y: float32[2, 8, 1024]" in r.stdout and "h_n: float32[4, 2, 512]" in r.stdout
