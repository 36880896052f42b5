"""Attention parity against PyTorch (nn.MultiheadAttention and
F.scaled_dot_product_attention), the numpy reference, and the ONNX reference
evaluator; masks of every polarity; fully masked rows give zeros, never NaN.
Tolerance: max abs difference <= 1e-5 in float32."""
import math

import numpy as np
import pytest

from graphc.expand import build_graph
from graphc.layers import LAYERS
from graphc.specfile import parse_spec_text
from helpers import ROOT, compile_text, graphc_cli, layer_parity, ort_run, ref_run, single_layer_spec, user_error

torch = pytest.importorskip("torch", reason="PyTorch is the parity oracle: pip install torch==2.13.0")
F32 = "float32"
TOL = 1e-5
RNG = np.random.default_rng(1)


def _torch_mha(e, h, **kw):
    torch.manual_seed(0)
    m = torch.nn.MultiheadAttention(e, h, batch_first=True, **kw).eval()
    with torch.no_grad():   # non-zero biases so bias handling is exercised
        for name, p in m.named_parameters():
            if "bias" in name:
                p.normal_(0, 0.1)
    return m


def _weights(module, prefix="l."):
    return {prefix + k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _mha_spec(args, inputs, ports):
    return single_layer_spec("multihead_attention", args, inputs, dims=("batch", "sq", "sk"), ports=ports)


def _compare(got, want, valid_rows=None):
    got, want = np.asarray(got), np.asarray(want)
    if valid_rows is not None:
        got, want = got[valid_rows], want[valid_rows]
    diff = np.max(np.abs(got - want)) if got.size else 0.0
    assert diff <= TOL, f"max abs diff {diff:.3g} > {TOL}"
    return diff


@pytest.mark.parametrize("opset", [17, 23])
def test_mha_self_attention_with_key_padding_matches_torch(opset):
    e, h, b, s = 32, 4, 3, 6
    m = _torch_mha(e, h)
    x = RNG.standard_normal((b, s, e)).astype(np.float32)
    kpm = np.zeros((b, s), bool)
    kpm[0, 4:] = True                      # partly padded
    kpm[2, :] = True                       # fully padded: torch gives NaN, graphc zeros
    text = _mha_spec({"heads": h}, {"x": (F32, ["batch", "sq", e]), "kpm": ("bool", ["batch", "sq"])},
                     {"query": "x", "key_padding_mask": "kpm"})
    model, _, _ = compile_text(text, weights=_weights(m), opset=opset)
    got = ort_run(model, {"x": x, "kpm": kpm})["y"]
    with torch.no_grad():
        want = m(*(torch.from_numpy(x),) * 3, key_padding_mask=torch.from_numpy(kpm), need_weights=False)[0].numpy()
    _compare(got, want, valid_rows=[0, 1])
    # the fully padded row: the attention gives zeros, so the output is out_proj(0) = out_proj.bias
    np.testing.assert_allclose(got[2], np.broadcast_to(m.out_proj.bias.detach().numpy(), (s, e)), atol=1e-6)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(ref_run(model, {"x": x, "kpm": kpm})["y"], got, atol=TOL)


@pytest.mark.parametrize("mask_kind", ["bool", "float", "causal", "bool+padding+lengths"])
def test_mha_attention_masks_match_torch(mask_kind):
    e, h, b, s = 24, 3, 2, 5
    m = _torch_mha(e, h)
    x = RNG.standard_normal((b, s, e)).astype(np.float32)
    inputs = {"x": (F32, ["batch", "sq", e])}
    ports = {"query": "x"}
    args = {"heads": h}
    feeds = {"x": x}
    tkw = {}
    if mask_kind in ("bool", "bool+padding+lengths"):
        am = RNG.random((s, s)) < 0.3
        np.fill_diagonal(am, False)
        inputs["am"] = ("bool", ["sq", "sq"])
        ports["attn_mask"] = "am"
        feeds["am"] = am
        tkw["attn_mask"] = torch.from_numpy(am)
    if mask_kind == "float":
        am = (RNG.standard_normal((s, s)) * 2).astype(np.float32)
        am[0, 2] = -np.inf
        inputs["am"] = (F32, ["sq", "sq"])
        ports["attn_mask"] = "am"
        feeds["am"] = am
        tkw["attn_mask"] = torch.from_numpy(am)
    if mask_kind == "causal":
        args["causal"] = True
        tkw["attn_mask"] = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)
    if mask_kind == "bool+padding+lengths":
        kpm = np.zeros((b, s), bool)
        kpm[1, 3:] = True
        lengths = np.array([4, 5], np.int64)
        inputs["kpm"] = ("bool", ["batch", "sq"])
        inputs["lengths"] = ("int64", ["batch"])
        ports.update(key_padding_mask="kpm", key_lengths="lengths")
        feeds.update(kpm=kpm, lengths=lengths)
        torch_kpm = kpm | (np.arange(s)[None, :] >= lengths[:, None])
        tkw["key_padding_mask"] = torch.from_numpy(torch_kpm)
    model, _, _ = compile_text(_mha_spec(args, inputs, ports), weights=_weights(m))
    got = ort_run(model, feeds)["y"]
    with torch.no_grad():
        want = m(*(torch.from_numpy(x),) * 3, need_weights=False, **tkw)[0].numpy()
    _compare(got, want)
    np.testing.assert_allclose(ref_run(model, feeds)["y"], got, atol=TOL)


def test_mha_cross_attention_with_other_widths_and_lengths():
    e, h, kd = 16, 2, 12
    m = _torch_mha(e, h, kdim=kd, vdim=kd)
    q = RNG.standard_normal((2, 3, e)).astype(np.float32)
    mem = RNG.standard_normal((2, 7, kd)).astype(np.float32)
    text = _mha_spec({"heads": h}, {"q": (F32, ["batch", "sq", e]), "mem": (F32, ["batch", "sk", kd])},
                     {"query": "q", "key": "mem", "value": "mem"})
    declared = {p.name for p in build_graph(parse_spec_text(text, "<test>")).params()}   # before folding renames them
    assert declared >= {"l.q_proj_weight", "l.k_proj_weight", "l.v_proj_weight"}
    model, g, _ = compile_text(text, weights=_weights(m))
    got = ort_run(model, {"q": q, "mem": mem})["y"]
    with torch.no_grad():
        want = m(torch.from_numpy(q), torch.from_numpy(mem), torch.from_numpy(mem), need_weights=False)[0].numpy()
    assert got.shape == (2, 3, e)
    _compare(got, want)


def test_mha_without_bias_and_packed_cross_attention():
    e, h = 16, 4
    m = _torch_mha(e, h, bias=False)
    q = RNG.standard_normal((2, 3, e)).astype(np.float32)
    mem = RNG.standard_normal((2, 5, e)).astype(np.float32)
    text = _mha_spec({"heads": h, "bias": False}, {"q": (F32, ["batch", "sq", e]), "mem": (F32, ["batch", "sk", e])},
                     {"query": "q", "key": "mem"})
    model, _, _ = compile_text(text, weights=_weights(m))
    got = ort_run(model, {"q": q, "mem": mem})["y"]
    with torch.no_grad():
        want = m(torch.from_numpy(q), torch.from_numpy(mem), torch.from_numpy(mem), need_weights=False)[0].numpy()
    _compare(got, want)


@pytest.mark.parametrize("impl,opset", [("decomposed", 17), ("decomposed", 23), ("fused", 23), ("auto", 23)])
@pytest.mark.parametrize("case", ["causal", "gqa", "bool_keep", "cross_len", "padding"])
def test_sdpa_matches_torch_functional(case, impl, opset):
    b, hq, d = 2, 4, 8
    hkv = 2 if case == "gqa" else hq
    sq, sk = (3, 6) if case == "cross_len" else (5, 5)
    q = RNG.standard_normal((b, hq, sq, d)).astype(np.float32)
    k = RNG.standard_normal((b, hkv, sk, d)).astype(np.float32)
    v = RNG.standard_normal((b, hkv, sk, d)).astype(np.float32)
    inputs = {"q": (F32, ["batch", hq, "sq", d]), "k": (F32, ["batch", hkv, "sk", d]), "v": (F32, ["batch", hkv, "sk", d])}
    ports = {"q": "q", "k": "k", "v": "v"}
    feeds = {"q": q, "k": k, "v": v}
    args = {"impl": impl}
    tkw = {}
    if case in ("causal", "gqa"):
        args["causal"] = True
        tkw["is_causal"] = True
    if case == "gqa":
        tkw["enable_gqa"] = True
    if case == "bool_keep":
        keep = RNG.random((sq, sk)) < 0.7
        keep[:, 0] = True
        inputs["m"] = ("bool", ["sq", "sk"])
        ports["attn_mask"] = "m"
        feeds["m"] = keep
        tkw["attn_mask"] = torch.from_numpy(keep)          # SDPA: True = may attend (the default polarity here)
    if case == "padding":
        kpm = np.zeros((b, sk), bool)
        kpm[1, 2:] = True
        inputs["p"] = ("bool", ["batch", "sk"])
        ports["key_padding_mask"] = "p"
        feeds["p"] = kpm
        tkw["attn_mask"] = torch.from_numpy(~kpm[:, None, None, :])
    text = single_layer_spec("scaled_dot_product_attention", args, inputs, dims=("batch", "sq", "sk"), ports=ports)
    model, _, _ = compile_text(text, opset=opset)
    got = ort_run(model, feeds)["y"]
    want = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v)), **tkw).numpy()
    _compare(got, want)
    ref = LAYERS["scaled_dot_product_attention"].reference(
        {p.name: args.get(p.name, p.default) for p in LAYERS["scaled_dot_product_attention"].params},
        {}, {"q": q, "k": k, "v": v, "attn_mask": feeds.get("m"), "key_padding_mask": feeds.get("p")})["y"]
    _compare(got, ref)
    if opset == 17:
        np.testing.assert_allclose(ref_run(model, feeds)["y"], got, atol=TOL)


@pytest.mark.parametrize("opset", [23, 24, 25, 26])
def test_fused_padding_plus_float_mask_gives_zero_rows_at_every_opset(opset):
    """impl: fused with a boolean mask and an additive one: the masked keys used to
    get float32's lowest finite value, and from opset 25 on ORT's Attention turned a
    row of those into the mean of the values (0.74 max abs diff against torch) where
    every opset gives a fully masked row zeros with -inf."""
    b, h, d, sq, sk = 3, 2, 4, 3, 5
    q, k, v = (RNG.standard_normal((b, h, n, d)).astype(np.float32) for n in (sq, sk, sk))
    kpm = np.zeros((b, sk), bool)
    kpm[0, 3:] = True
    kpm[1] = True                                          # batch row 1: every key padded
    fm = RNG.standard_normal((sq, sk)).astype(np.float32)
    fm[2, 0] = -np.inf
    inputs = {"q": (F32, ["batch", h, "sq", d]), "k": (F32, ["batch", h, "sk", d]), "v": (F32, ["batch", h, "sk", d]),
              "p": ("bool", ["batch", "sk"]), "m": (F32, ["sq", "sk"])}
    ports = {"q": "q", "k": "k", "v": "v", "key_padding_mask": "p", "attn_mask": "m"}
    text = single_layer_spec("scaled_dot_product_attention", {"impl": "fused"}, inputs, dims=("batch", "sq", "sk"),
                             ports=ports)
    model, _, _ = compile_text(text, opset=opset)
    got = ort_run(model, {"q": q, "k": k, "v": v, "p": kpm, "m": fm})["y"]
    additive = np.where(kpm, -np.inf, 0)[:, None, None, :] + fm               # [B, 1, Sq, Sk]
    want = torch.nn.functional.scaled_dot_product_attention(
        *(torch.from_numpy(a) for a in (q, k, v)), attn_mask=torch.from_numpy(additive.astype(np.float32))).numpy()
    assert np.all(got[1] == 0)                              # fully masked rows: zeros (the module's promise)
    _compare(got, want, valid_rows=[0, 2])


def test_fused_and_decomposed_lowerings_agree_on_mha_with_padding():
    e, h = 32, 4
    m = _torch_mha(e, h)
    x = RNG.standard_normal((2, 6, e)).astype(np.float32)
    kpm = np.zeros((2, 6), bool)
    kpm[0, 3:] = True
    kpm[1, :] = True
    inputs = {"x": (F32, ["batch", "sq", e]), "kpm": ("bool", ["batch", "sq"])}
    outs = {}
    for impl in ("decomposed", "fused"):
        text = _mha_spec({"heads": h, "impl": impl}, inputs, {"query": "x", "key_padding_mask": "kpm"})
        model, _, _ = compile_text(text, weights=_weights(m), opset=23)
        outs[impl] = ort_run(model, {"x": x, "kpm": kpm})["y"]
    _compare(outs["fused"], outs["decomposed"])
    bias = m.out_proj.bias.detach().numpy()
    for y in outs.values():    # fully padded row: zero attention, so out_proj.bias
        np.testing.assert_allclose(y[1], np.broadcast_to(bias, y[1].shape), atol=1e-6)


@pytest.mark.parametrize("opset", [17, 23])
def test_float16_fully_masked_rows_are_zero_not_nan(opset):
    text = single_layer_spec("scaled_dot_product_attention", {"causal": True},
                             {"q": ("float16", ["batch", 2, "sq", 8]), "k": ("float16", ["batch", 2, "sq", 8]),
                              "v": ("float16", ["batch", 2, "sq", 8]), "p": ("bool", ["batch", "sq"])},
                             dims=("batch", "sq"), ports={"q": "q", "k": "k", "v": "v", "key_padding_mask": "p"})
    model, _, _ = compile_text(text, opset=opset)
    q = (RNG.standard_normal((2, 2, 4, 8)) * 30).astype(np.float16)    # large scores: overflow bait
    pad = np.zeros((2, 4), bool)
    pad[1] = True
    y = ort_run(model, {"q": q, "k": q, "v": q, "p": pad})["y"]
    assert np.all(np.isfinite(y))
    assert np.all(y[1] == 0)


def test_tutorial_example_gives_width_24(tmp_path):
    r = graphc_cli("check", "specs/seed_mha_concat.yaml")
    assert r.returncode == 0 and "output z: float32[batch, seq, 24]" in r.stdout
    r = graphc_cli("run", "specs/seed_mha_concat.yaml", "--random", "--dim", "batch=1", "--dim", "seq=100")
    assert r.returncode == 0 and "z: float32[1, 100, 24]" in r.stdout, r.stderr


def test_mha_spec_loads_a_torch_state_dict_unchanged(tmp_path):
    """The issue's check: specs/mha.yaml with the state_dict of a module holding attn = nn.MultiheadAttention(512, 8)."""
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(512, 8, batch_first=True)
    torch.manual_seed(3)
    mod = Holder().eval()
    sd = {k: v.numpy() for k, v in mod.state_dict().items()}
    assert sorted(sd) == ["attn.in_proj_bias", "attn.in_proj_weight", "attn.out_proj.bias", "attn.out_proj.weight"]
    from safetensors.numpy import save_file
    save_file(sd, str(tmp_path / "w.safetensors"))
    out = tmp_path / "mha.onnx"
    r = graphc_cli("build", "specs/mha.yaml", "--weights", str(tmp_path / "w.safetensors"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    x = RNG.standard_normal((2, 9, 512)).astype(np.float32)
    kpm = np.zeros((2, 9), bool)
    kpm[1, 5:] = True
    got = ort_run(out.read_bytes(), {"x": x, "key_padding_mask": kpm})["y"]
    with torch.no_grad():
        want = mod.attn(*(torch.from_numpy(x),) * 3, key_padding_mask=torch.from_numpy(kpm), need_weights=False)[0]
    _compare(got, want.numpy())


@pytest.mark.parametrize("args,needle", [
    ({"heads": 5}, "5 heads do not divide embed_dim 32"),
    ({"heads": 8, "kv_heads": 3}, "kv_heads 3 does not divide heads 8"),
])
def test_shape_rules_reject_impossible_heads(args, needle):
    text = _mha_spec(args, {"x": (F32, ["batch", "sq", 32])}, {"query": "x"})
    assert user_error(text, needle).span.line > 0


def test_mask_that_does_not_fit_is_a_located_error():
    text = _mha_spec({"heads": 2}, {"x": (F32, ["batch", "sq", 8]), "m": ("bool", ["sk", "sq"])},
                     {"query": "x", "attn_mask": "m"})
    user_error(text, "attn_mask [sk, sq] does not fit the scores", at="attn_mask: m")


def test_numpy_reference_matches_ort_for_gqa_without_out_proj():
    x = RNG.standard_normal((2, 4, 5)).astype(np.float32)
    layer_parity("multihead_attention", {"heads": 4, "kv_heads": 2, "head_dim": 3, "out_proj": False},
                 {"x": (F32, ["batch", "sq", 5])}, ports={"query": "x"}, spec_dims=("batch", "sq", "sk"),
                 feeds={"x": x}, tol=TOL, rtol=0, shape=(2, 4, 12))
