"""The cached LLaMA-like decoder against Hugging Face transformers' LlamaForCausalLM
(random-initialised from a tiny config in the test; no downloads) with the same
weights: a left-padded batch, prompt then one token at a time, compared with
HF's own cached forward (its DynamicCache, its position_ids and mask) at every
real position, and greedy ids from HF's generate() against a greedy loop over
the bundle. An independent oracle for rope (half), GQA caches, RMSNorm, SwiGLU
and left-padding positions."""
from __future__ import annotations

import numpy as np
import pytest

from kv_helpers import Decoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SPEC = """graphc: 1
name: hf_llama
dims: {batch: 2, seq: 8}
params: {vocab: 96, d_model: 64, heads: 4, kv_heads: 2}
inputs:
  tokens: {dtype: int64, shape: [batch, seq], range: [0, vocab]}
layers:
  - {name: embed_tokens, kind: embedding, input: tokens, num_embeddings: vocab, embedding_dim: d_model}
  - {name: layers, kind: transformer_encoder, input: embed_tokens, causal: true, norm_first: true,
     final_norm: true, layers: 2, heads: heads, kv_heads: kv_heads, d_ff: 112, activation: swiglu,
     norm: rms_norm, eps: 1.0e-6, bias: false, rope: half, rope_max_len: 128}
  - {name: lm_head, kind: linear, input: layers, out_features: vocab, bias: false}
outputs:
  logits: lm_head
generation: {tokens: tokens, logits: logits, bos: 1, eos: 2, pad: 0}
"""


def _hf_model():
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                                   initializer_range=0.08, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():                       # norms away from 1 so they are tested too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model


def _to_graphc(model) -> dict:
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    w = {"embed_tokens.weight": sd["model.embed_tokens.weight"], "lm_head.weight": sd["lm_head.weight"],
         "layers.norm.weight": sd["model.norm.weight"]}
    for i in range(2):
        hf, g = f"model.layers.{i}.", f"layers.layers.{i}."
        w[g + "self_attn.in_proj_weight"] = np.concatenate(
            [sd[hf + f"self_attn.{p}_proj.weight"] for p in ("q", "k", "v")])      # rows [W_q; W_k; W_v]
        w[g + "self_attn.out_proj.weight"] = sd[hf + "self_attn.o_proj.weight"]
        w[g + "linear1.weight"] = sd[hf + "mlp.gate_proj.weight"]
        w[g + "linear3.weight"] = sd[hf + "mlp.up_proj.weight"]
        w[g + "linear2.weight"] = sd[hf + "mlp.down_proj.weight"]
        w[g + "norm1.weight"] = sd[hf + "input_layernorm.weight"]
        w[g + "norm2.weight"] = sd[hf + "post_attention_layernorm.weight"]
    return {k: np.ascontiguousarray(v, np.float32) for k, v in w.items()}


PROMPTS = [[1, 17, 40, 8, 93, 25], [1, 60, 4], [1, 33, 71, 12]]


def _left_padded():
    width = max(map(len, PROMPTS))
    ids = np.zeros((len(PROMPTS), width), np.int64)
    mask = np.zeros_like(ids)
    for r, p in enumerate(PROMPTS):
        ids[r, width - len(p):], mask[r, width - len(p):] = p, 1
    return ids, mask


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from graphc.generation.bundle_write import build_bundle
    tmp = tmp_path_factory.mktemp("hf")
    (tmp / "m.yaml").write_text(SPEC)
    model = _hf_model()
    config = build_bundle(tmp / "m.yaml", tmp / "bundle", _to_graphc(model))
    return model, tmp / "bundle", config


def test_step_logits_equal_hf_cached_forward_left_padded(built):
    model, bundle, config = built
    ids, mask = _left_padded()
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    new = np.array([[5], [77], [30]])
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    position_ids=torch.from_numpy(positions), use_cache=True)
        mask2 = np.concatenate([mask, np.ones((3, 1), np.int64)], 1)
        out2 = model(input_ids=torch.from_numpy(new), attention_mask=torch.from_numpy(mask2),
                     position_ids=torch.from_numpy(positions[:, -1:] + 1), past_key_values=out.past_key_values,
                     use_cache=True)
    dec = Decoder(bundle, config, 3)
    got1 = dec.step(ids, positions, mask)
    got2 = dec.step(new, positions[:, -1:] + 1)
    real = mask.astype(bool)
    assert float(np.abs(got1[real] - out.logits.numpy()[real]).max()) <= 1e-4
    assert float(np.abs(got2 - out2.logits.numpy()).max()) <= 1e-4


def test_greedy_ids_equal_hf_generate_left_padded(built):
    model, bundle, config = built
    ids, mask = _left_padded()
    steps = 10
    with torch.no_grad():
        want = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                              max_new_tokens=steps, do_sample=False, eos_token_id=None, pad_token_id=0,
                              min_new_tokens=steps).numpy()[:, ids.shape[1]:]
    dec = Decoder(bundle, config, 3)
    positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
    logits = dec.step(ids, positions, mask)
    got = []
    pos = positions[:, -1:]
    for _ in range(steps):
        nxt = logits[:, -1].argmax(-1)[:, None]
        got.append(nxt)
        pos = pos + 1
        logits = dec.step(nxt, pos)
    got = np.concatenate(got, 1)
    assert len(set(want.ravel().tolist())) > 5              # real sequences, not one repeated token
    np.testing.assert_array_equal(got, want)
