"""embedding's token types (BERT's segment embeddings): W[ids] + T[types]
against the numpy math and torch's two nn.Embedding tables, row 0 without
token_type_ids (transformers' default), and the bad uses refused."""
from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import compile_text, layer_parity, ort_run, user_error

I = "int64"

SPEC = """graphc: 1
dims: {batch: 2, seq: 3}
inputs:
  ids: {dtype: int64, shape: [batch, seq], range: [0, 11]}
  types: {dtype: int64, shape: [batch, seq], range: [0, 3]}
layers:
  - {name: emb, kind: embedding, inputs: {ids: ids, token_type_ids: types}, num_embeddings: 11, embedding_dim: 4,
     type_vocab_size: 3}
  - {name: plain, kind: embedding, input: ids, num_embeddings: 11, embedding_dim: 4, type_vocab_size: 3}
outputs: {y: emb, z: plain}
"""


def test_token_types_match_the_reference():
    rng = np.random.default_rng(0)
    feeds = {"ids": rng.integers(0, 11, (3, 5)), "types": rng.integers(0, 2, (3, 5))}
    d = layer_parity("embedding", {"num_embeddings": 11, "embedding_dim": 6, "type_vocab_size": 2},
                     {"ids": (I, ["batch", "seq"]), "types": (I, ["batch", "seq"])}, feeds=feeds, tol=0)
    assert d["reference"] == 0.0


def test_token_types_match_torch_and_default_to_row_0():
    torch = pytest.importorskip("torch")
    model, _, w = compile_text(SPEC, weights="random")
    rng = np.random.default_rng(1)
    ids, types = rng.integers(0, 11, (2, 7)), rng.integers(0, 3, (2, 7))
    got = ort_run(model, {"ids": ids, "types": types})
    word, tt = torch.nn.Embedding(11, 4), torch.nn.Embedding(3, 4)
    word.weight.data = torch.from_numpy(w["emb.weight"])
    tt.weight.data = torch.from_numpy(w["emb.token_type.weight"])
    with torch.no_grad():
        want = (word(torch.from_numpy(ids)) + tt(torch.from_numpy(types))).numpy()
        word.weight.data = torch.from_numpy(w["plain.weight"])
        tt.weight.data = torch.from_numpy(w["plain.token_type.weight"])
        want0 = (word(torch.from_numpy(ids)) + tt(torch.zeros_like(torch.from_numpy(ids)))).numpy()
    np.testing.assert_allclose(got["y"], want, atol=1e-6)
    np.testing.assert_allclose(got["z"], want0, atol=1e-6)


@pytest.mark.parametrize("old, new, message", [
    ("     type_vocab_size: 3}\n", "     }\n", "token_type_ids needs type_vocab_size"),
    ("types: {dtype: int64, shape: [batch, seq]", "types: {dtype: int64, shape: [batch, 5]",
     "token_type_ids must have the shape of the ids"),
    ("types: {dtype: int64, shape: [batch, seq], range: [0, 3]}", "types: {dtype: float32, shape: [batch, seq]}",
     "token_type_ids must be int64 or int32"),
    ("type_vocab_size: 3}\n  - {name: plain", "type_vocab_size: 0}\n  - {name: plain", "at least 1"),
])
def test_bad_token_types_are_located(old, new, message):
    text = SPEC.replace(old, new)
    assert text != SPEC
    user_error(text, message, at="{name: emb," if "at least" not in message else "type_vocab_size: 0")
