"""Rotary position embeddings inside attention (``rope: half|interleaved`` on
multihead_attention and the Transformer kinds): ONNX Runtime against an oracle
written in torch the way the model families write it (HF LLaMA's
``rotate_half`` for ``half``, Meta LLaMA's complex multiply for ``interleaved``),
and against graphc's numpy reference; errors located at the argument.
Tolerance: max abs difference <= 1e-5 in float32."""
import numpy as np
import pytest

from helpers import compile_text, layer_parity, ort_run, single_layer_spec, user_error

F32 = "float32"
TOL = 1e-5
RNG = np.random.default_rng(7)


def _spec(args, width=32, dims=("batch", "seq")):
    return single_layer_spec("multihead_attention", args, {"x": (F32, ["batch", "seq", width])},
                             dims=dims, ports={"query": "x"})


def _torch_rope_mha(w: dict, x: np.ndarray, heads: int, kv_heads: int, style: str, base: float, causal: bool):
    """Self-attention with rotary q/k as LLaMA-family code writes it, from torch ops."""
    torch = pytest.importorskip("torch", reason="PyTorch is the parity oracle: pip install torch==2.13.0")
    F = torch.nn.functional
    t = {k: torch.from_numpy(v).double() for k, v in w.items()}
    xt = torch.from_numpy(x).double()
    bsz, n, e = x.shape
    hd = t["l.in_proj_weight"].shape[0] // (heads + 2 * kv_heads)
    proj = F.linear(xt, t["l.in_proj_weight"], t["l.in_proj_bias"])
    q, k, v = proj.split([heads * hd, kv_heads * hd, kv_heads * hd], dim=-1)
    q, k, v = (z.view(bsz, n, -1, hd).transpose(1, 2) for z in (q, k, v))      # [B, h, S, D]
    inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    freqs = torch.outer(torch.arange(n, dtype=torch.float64), inv_freq)          # [S, D/2]
    if style == "half":                                  # HF LlamaRotaryEmbedding + apply_rotary_pos_emb
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()

        def rotate_half(z):
            z1, z2 = z[..., : hd // 2], z[..., hd // 2:]
            return torch.cat((-z2, z1), dim=-1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    else:                                                # Meta LLaMA apply_rotary_emb: pairs (2i, 2i+1) as complex
        rot = torch.polar(torch.ones_like(freqs), freqs)

        def rotate(z):
            zc = torch.view_as_complex(z.reshape(*z.shape[:-1], hd // 2, 2).contiguous())
            return torch.view_as_real(zc * rot).flatten(-2)
        q, k = rotate(q), rotate(k)
    k, v = (z.repeat_interleave(heads // kv_heads, dim=1) for z in (k, v))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    o = o.transpose(1, 2).reshape(bsz, n, heads * hd)
    return F.linear(o, t["l.out_proj.weight"], t["l.out_proj.bias"]).numpy()


@pytest.mark.parametrize("style", ["half", "interleaved"])
@pytest.mark.parametrize("kv_heads,causal,opset", [(4, False, 17), (2, True, 17), (4, True, 23)])
def test_mha_with_rope_matches_llama_style_torch(style, kv_heads, causal, opset):
    args = {"heads": 4, "kv_heads": kv_heads, "rope": style, "rope_base": 500.0, "causal": causal}
    model, _, w = compile_text(_spec(args), weights="random", opset=opset)
    w["l.in_proj_bias"] = w["l.in_proj_bias"] + 0.1        # non-zero biases: rotated after the bias
    model, _, w = compile_text(_spec(args), weights=w, opset=opset)
    for n in (1, 7, 19):                                  # one table serves every run-time length
        x = RNG.standard_normal((2, n, 32)).astype(np.float32)
        got = ort_run(model, {"x": x})["y"]
        want = _torch_rope_mha(w, x, 4, kv_heads, style, 500.0, causal)
        assert np.max(np.abs(got - want)) <= TOL


@pytest.mark.parametrize("style", ["half", "interleaved"])
def test_rope_matters_and_numpy_reference_agrees(style):
    """Without positions attention is permutation-equivariant; with rope a
    swap of two tokens changes the other outputs. And ORT = numpy reference =
    ONNX reference evaluator."""
    args = {"heads": 2, "rope": style}
    x = RNG.standard_normal((1, 5, 8)).astype(np.float32)
    layer_parity("multihead_attention", args, {"x": (F32, ["batch", "seq", 8])}, ports={"query": "x"},
                 feeds={"x": x}, tol=TOL, rtol=0)
    model, _, _ = compile_text(_spec(args, width=8), weights="random")
    got = ort_run(model, {"x": x})["y"]
    swapped = ort_run(model, {"x": x[:, [1, 0, 2, 3, 4]]})["y"]
    assert np.max(np.abs(swapped[:, 2:] - got[:, 2:])) > 1e-3


def test_transformer_stack_with_rope_matches_numpy_reference():
    """A LLaMA-shaped decoder-only stack: pre-norm RMSNorm, SwiGLU, GQA, causal, rope."""
    args = {"layers": 2, "heads": 4, "kv_heads": 2, "d_ff": 40, "activation": "swiglu", "norm": "rms_norm",
            "norm_first": True, "bias": False, "causal": True, "rope": "half", "final_norm": True}
    x = RNG.standard_normal((2, 6, 24)).astype(np.float32)
    layer_parity("transformer_encoder", args, {"x": (F32, ["batch", "seq", 24])}, ports={"x": "x"},
                 feeds={"x": x}, tol=TOL, rtol=0)
    text = single_layer_spec("transformer_encoder", args, {"x": (F32, ["batch", "seq", 24])}, ports={"x": "x"})
    model, _, w = compile_text(text, weights="random")
    got = ort_run(model, {"x": x})["y"]
    plain = ort_run(compile_text(text.replace("rope: half", "rope: null"), weights=w)[0], {"x": x})["y"]
    assert np.max(np.abs(plain - got)) > 1e-3, "rope changed nothing"


@pytest.mark.parametrize("args,width,needle,key", [
    ({"heads": 4, "head_dim": 3, "rope": "half"}, 32, "needs an even head_dim, got 3", "rope"),
    ({"heads": 4, "rope": "half", "rope_base": 1.0}, 32, "rope_base must be greater than 1", "rope_base"),
    ({"heads": 4, "rope": "spiral"}, 32, "must be one of half, interleaved", "rope"),
])
def test_rope_mistakes_are_located_at_the_argument(args, width, needle, key):
    text = _spec(args, width)
    error = user_error(text, needle)
    line = text.splitlines()[error.span.line - 1]
    assert line.lstrip().startswith(key + ":"), line


def test_a_fixed_length_over_rope_max_len_is_located():
    text = single_layer_spec("multihead_attention", {"heads": 2, "rope": "half", "rope_max_len": 8},
                             {"x": (F32, ["batch", 9, 8])}, ports={"query": "x"})
    error = user_error(text, "rope")
    assert "rope_max_len" in text.splitlines()[error.span.line - 1]
