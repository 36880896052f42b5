"""Encoder-decoder generation bundles (graphc build --kv-cache on a translation
model): encoder.onnx runs once per source, decoder.onnx once per step.

1. Step by step, the cached decoder's log-probabilities equal the plain
   (no-cache, one-file) build's on the whole target sequence within 1e-5, for a
   batch of padded sources of different lengths.
2. The split is the generic partition (graphc.ir.partition): the cross-attention
   key/value projections are in the encoder, not in the per-step decoder.
3. A PyTorch oracle: nn.Transformer + a shared embedding scaled by sqrt(d_model)
   + the paper's sinusoidal positions + a generator tied to the embedding, decoded
   greedily in a torch loop, gives the same ids as a greedy loop over the bundle
   (written here from the bundle contract), padded sources included.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from kv_helpers import Decoder, build_both, session

TOL = 1e-5

TRANSLATION = """graphc: 1
name: tiny_translation
dims: {{batch: 2, src_seq: 9, tgt_seq: 7}}
params: {{vocab: 60, d_model: 32, heads: 4, d_ff: 64, n_layers: 2, max_len: 64}}
inputs:
  src_tokens: {{dtype: int64, shape: [batch, src_seq], range: [0, vocab]}}
  tgt_tokens: {{dtype: int64, shape: [batch, tgt_seq], range: [0, vocab]}}
layers:
  - {{name: embed, kind: embedding, input: src_tokens, num_embeddings: vocab, embedding_dim: d_model, scale: true}}
  - {{name: tgt_embed, kind: embedding, input: tgt_tokens, num_embeddings: vocab, embedding_dim: d_model,
     scale: true, tie: embed.weight}}
  - {{name: src_pos, kind: sinusoidal_pe, input: embed, max_len: max_len}}
  - {{name: tgt_pos, kind: sinusoidal_pe, input: tgt_embed, max_len: max_len}}
  - {{name: src_pad, kind: padding_mask, input: src_tokens, pad: 0}}
  - name: transformer
    kind: transformer
    inputs: {{src: src_pos, tgt: tgt_pos, src_key_padding_mask: src_pad}}
    heads: heads
    d_ff: d_ff
    encoder_layers: n_layers
    decoder_layers: n_layers
    final_norms: {final_norms}
  - {{name: generator, kind: linear, input: transformer, out_features: vocab, bias: false, tie: embed.weight}}
  - {{name: log_probs, kind: log_softmax, input: generator}}
outputs:
  log_probs: log_probs
generation: {{tokens: tgt_tokens, source: src_tokens, logits: log_probs, bos: 1, eos: 2, pad: 0}}
"""

SOURCES = np.array([[5, 9, 14, 3, 22, 7, 31, 8, 11],
                    [17, 4, 40, 6, 0, 0, 0, 0, 0],       # padded with pad = 0
                    [12, 33, 0, 0, 0, 0, 0, 0, 0]])


def _encode(bundle, config, src):
    enc = session(bundle / config["encoder"]["file"])
    names = [o.name for o in enc.get_outputs()]
    assert names == config["encoder"]["outputs"]
    return dict(zip(names, enc.run(names, {"src_tokens": src})))


def test_encoder_once_decoder_steps_equal_full_forward(tmp_path):
    plain, bundle, config, _ = build_both(tmp_path, TRANSLATION.format(final_norms="false"))
    assert config["architecture"] == "encoder-decoder" and config["logits_kind"] == "log_probs"
    assert config["encoder"]["inputs"] == {"src_tokens": "source_ids"} and config["decoder_start"] == 1
    rng = np.random.default_rng(5)
    tgt = rng.integers(3, 60, (3, 6))
    tgt[:, 0] = 1
    full = session(plain)
    ref = full.run(None, {"src_tokens": SOURCES, "tgt_tokens": tgt})[0]
    memory = _encode(bundle, config, SOURCES)
    for out in memory.values():
        assert out.shape[0] == 3                          # batch-first: beams repeat along axis 0
    dec = Decoder(bundle, config, 3, memory)
    worst = max(float(np.abs(dec.step(tgt[:, t:t + 1], np.full((3, 1), t)) - ref[:, t:t + 1]).max())
                for t in range(tgt.shape[1]))
    assert worst <= TOL
    # a prompt of several target tokens in one step agrees too (a forced prefix)
    dec = Decoder(bundle, config, 3, memory)
    got = np.concatenate([dec.step(tgt[:, :3], np.tile(np.arange(3), (3, 1))),
                          dec.step(tgt[:, 3:], np.tile(np.arange(3, 6), (3, 1)))], axis=1)
    assert float(np.abs(got - ref).max()) <= TOL


def test_cross_attention_keys_values_are_computed_in_the_encoder(tmp_path):
    _, bundle, config, _ = build_both(tmp_path, TRANSLATION.format(final_norms="false"))
    enc, dec = (onnx.load(str(bundle / f)) for f in ("encoder.onnx", "decoder.onnx"))
    dec_inputs = [i.name for i in dec.graph.input]
    assert "src_tokens" not in dec_inputs
    assert set(config["encoder"]["outputs"]) <= set(dec_inputs)
    cross = [i.name for i in enc.graph.initializer if "multihead_attn" in i.name]
    assert cross and all("kv_" in n for n in cross)              # the memory's K/V projections, once per source
    assert not [i.name for i in dec.graph.initializer if "multihead_attn.kv_" in i.name]
    assert not [i.name for i in dec.graph.initializer if i.name.startswith("transformer.encoder.")]
    # 2 layers x (key, value) [batch, heads, src_seq, head_dim] + the source padding mask
    shapes = sorted(tuple(d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim) for o in enc.graph.output)
    assert shapes == [("batch", 1, 1, "src_seq")] + [("batch", 4, "src_seq", 8)] * 4


# ------------------------------------------------------------------ the PyTorch oracle

torch = pytest.importorskip("torch")


class _PaperModel(torch.nn.Module):
    """nn.Transformer with a shared embedding (x sqrt(d)), sinusoidal positions
    (sin on even channels, cos on odd) and a generator tied to the embedding."""

    def __init__(self, vocab, d, heads, layers, d_ff):
        super().__init__()
        self.d = d
        self.embed = torch.nn.Embedding(vocab, d)
        self.transformer = torch.nn.Transformer(d, heads, layers, layers, d_ff, dropout=0.0, batch_first=True)
        pos = torch.arange(256, dtype=torch.float64)[:, None]
        div = torch.pow(10000.0, torch.arange(0, d, 2, dtype=torch.float64) / d)
        pe = torch.zeros(256, d, dtype=torch.float64)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos / div), torch.cos(pos / div)
        self.register_buffer("pe", pe.float(), persistent=False)

    def embed_at(self, ids):
        return self.embed(ids) * math.sqrt(self.d) + self.pe[: ids.shape[1]]

    def log_probs(self, h):
        return torch.log_softmax(h @ self.embed.weight.T, dim=-1)


def _torch_greedy(model, src, start, steps, pad):
    with torch.no_grad():
        src_t = torch.from_numpy(src)
        pad_mask = src_t == pad
        memory = model.transformer.encoder(model.embed_at(src_t), src_key_padding_mask=pad_mask)
        ys = torch.full((src.shape[0], 1), start, dtype=torch.long)
        scores = []
        for _ in range(steps):
            n = ys.shape[1]
            causal = torch.nn.Transformer.generate_square_subsequent_mask(n)
            h = model.transformer.decoder(model.embed_at(ys), memory, tgt_mask=causal, tgt_is_causal=True,
                                          memory_key_padding_mask=pad_mask)
            lp = model.log_probs(h[:, -1])
            scores.append(lp.numpy())
            ys = torch.cat([ys, lp.argmax(-1)[:, None]], dim=1)
    return ys.numpy(), np.stack(scores, 1)


def _bundle_greedy(bundle, config, src, steps):
    memory = _encode(bundle, config, src)
    dec = Decoder(bundle, config, src.shape[0], memory)
    ys = np.full((src.shape[0], 1), config["decoder_start"], np.int64)
    scores = []
    for t in range(steps):
        lp = dec.step(ys[:, -1:], np.full((src.shape[0], 1), t))
        scores.append(lp[:, -1])
        ys = np.concatenate([ys, lp[:, -1].argmax(-1)[:, None]], axis=1)
    return ys, np.stack(scores, 1)


def test_greedy_ids_equal_pytorch_nn_transformer(tmp_path):
    torch.manual_seed(0)
    model = _PaperModel(60, 32, 4, 2, 64).eval()
    with torch.no_grad():                              # spread enough that greedy does not collapse to one token
        for name, p in model.named_parameters():
            if p.ndim == 2 and name != "embed.weight":
                p.normal_(0, 0.2)
        model.embed.weight.normal_(0, 0.3)
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    spec = tmp_path / "model.yaml"
    spec.write_text(TRANSLATION.format(final_norms="true"))   # nn.Transformer always has both final norms
    from graphc.generation.bundle_write import build_bundle
    config = build_bundle(spec, tmp_path / "bundle", weights)
    steps = 12
    want, want_lp = _torch_greedy(model, SOURCES, 1, steps, 0)
    got, got_lp = _bundle_greedy(tmp_path / "bundle", config, SOURCES, steps)
    assert len(set(want[:, 1:].ravel().tolist())) > 4        # a real sequence, not one repeated token
    np.testing.assert_array_equal(got, want)
    assert float(np.abs(got_lp - want_lp).max()) <= 1e-4     # torch and ORT kernels; 2 + 2 layers
    # and each padded row decodes as it does alone
    for r in range(SOURCES.shape[0]):
        n = int((SOURCES[r] != 0).sum())
        alone, _ = _bundle_greedy(tmp_path / "bundle", config, SOURCES[r:r + 1, :n], steps)
        np.testing.assert_array_equal(alone[0], got[r])
