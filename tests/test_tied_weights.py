"""A tied table is stored once: an LM head tied to the embedding reads the one
table transposed (graphc.layers.basic.tied_linear_op) and a scaled embedding
multiplies after the lookup, so neither needs a second copy of the table; the
numbers still match PyTorch's tied modules, and `graphc build` counts the
parameters as `graphc params` does."""
from __future__ import annotations

import numpy as np
import pytest

from graphc.compiler import compile_spec
from helpers import ROOT, cli, compile_text, ort_run

TIED = """graphc: 1
dims: {batch: 2, seq: 5}
params: {vocab: 50, d: 16}
inputs:
  src: {dtype: int64, shape: [batch, seq], range: [0, vocab]}
  tgt: {dtype: int64, shape: [batch, seq], range: [0, vocab]}
layers:
  - {name: embed, kind: embedding, input: src, num_embeddings: vocab, embedding_dim: d, scale: true}
  - {name: tgt_embed, kind: embedding, input: tgt, num_embeddings: vocab, embedding_dim: d, scale: true, tie: embed.weight}
  - {name: mix, kind: add, inputs: [embed, tgt_embed]}
  - {name: head, kind: linear, input: mix, out_features: vocab, bias: false, tie: embed.weight}
outputs: {logits: head}
"""


def _initializers(model: bytes):
    import onnx
    return {t.name: tuple(t.dims) for t in onnx.load_from_string(model).graph.initializer}


def test_the_tied_table_is_stored_once_and_matches_torch():
    torch = pytest.importorskip("torch")
    model, g, w = compile_text(TIED, weights="random")
    big = [shape for shape in _initializers(model).values() if np.prod(shape) >= 50 * 16]
    assert big == [(50, 16)], f"the 50x16 table should be stored once, found {big}"
    emb = torch.nn.Embedding(50, 16)
    head = torch.nn.Linear(16, 50, bias=False)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(w["embed.weight"]))
        head.weight = emb.weight                                    # torch's tying: one Parameter
        rng = np.random.default_rng(0)
        src, tgt = (rng.integers(0, 50, (2, 5)) for _ in range(2))
        s = 16 ** 0.5
        want = head(emb(torch.from_numpy(src)) * s + emb(torch.from_numpy(tgt)) * s).numpy()
    got = ort_run(model, {"src": src, "tgt": tgt})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_build_counts_parameters_like_params(tmp_path):
    spec = tmp_path / "tied.yaml"
    spec.write_text(TIED, encoding="utf-8")
    rc, out, _ = cli("build", spec, "-o", tmp_path / "m.onnx")
    assert rc == 0
    rc, params_out, _ = cli("params", spec)
    total = int(params_out.splitlines()[-1].split()[-1].replace(",", ""))
    assert total == 50 * 16
    assert f"{total:,} parameters + " in out, out
    # the file holds the parameters once plus a few constants: 4 bytes each, and a small overhead
    assert (tmp_path / "m.onnx").stat().st_size < 4 * total + 2000


def test_the_base_model_file_holds_its_parameters_once():
    """The paper's base model: 63.1M parameters; the shared 37000x512 table appears once."""
    compiled = compile_spec(ROOT / "specs" / "transformer_base.yaml", keep_weights=False)
    assert compiled.param_count == 63_082_496
    tables = [n for n, a in compiled.weights if 37000 in a.shape]
    assert len(tables) == 1, tables
    stored = compiled.count_weights()
    assert stored - compiled.param_count < 3_000_000      # the two 5000x512 position tables share one constant
