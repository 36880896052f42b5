"""sequence_mask, masked_softmax and mean_pool: ONNX Runtime against the numpy
reference (written from the math), against PyTorch, and against the ONNX
reference evaluator; fully padded rows give zeros, never NaN; the additive
(Bahdanau) attention and sentence-embedding example specs match PyTorch modules."""
from __future__ import annotations

import numpy as np
import pytest

from graphc.compiler import compile_spec
from graphc.layers import LAYERS
from helpers import SPECS, cli, compile_text, user_error, ort_run, ref_run, single_layer_spec

torch = pytest.importorskip("torch", reason="PyTorch is not installed (the torch extra)")
RNG = np.random.default_rng(0)
LENGTHS = np.array([3, 0, 5, 1], dtype=np.int64)          # a row with no real position at all
B, S, D = 4, 5, 6


def _run(kind, args, inputs, ports, feeds):
    model, _, _ = compile_text(single_layer_spec(kind, args, inputs, ports=ports))
    got = ort_run(model, feeds)["y"]
    by_port = {port: feeds[src] for port, src in ports.items()}       # the reference takes its ports' names
    want = LAYERS[kind].reference({**{p.name: p.default for p in LAYERS[kind].params}, **args}, {}, by_port)["y"]
    return model, got, want


def test_sequence_mask_matches_torch_in_both_polarities():
    x = RNG.standard_normal((B, S, D)).astype(np.float32)
    keep = (torch.arange(S)[None, :] < torch.from_numpy(LENGTHS)[:, None]).numpy()
    for polarity, want in (("keep", keep), ("masked", ~keep)):
        model, got, ref = _run("sequence_mask", {"polarity": polarity},
                               {"lengths": ("int64", ["batch"]), "x": ("float32", ["batch", "seq", D])},
                               {"lengths": "lengths", "like": "x"}, {"lengths": LENGTHS, "x": x})
        assert got.dtype == np.bool_ and np.array_equal(got, want) and np.array_equal(ref, want)
        assert np.array_equal(ref_run(model, {"lengths": LENGTHS, "x": x})["y"], want)


def _torch_masked_softmax(x, keep):
    scores = torch.from_numpy(x).masked_fill(~torch.from_numpy(keep), float("-inf"))
    return torch.nan_to_num(scores.softmax(-1), nan=0.0).numpy()     # torch gives NaN on an empty row


@pytest.mark.parametrize("case", ["lengths", "mask_keep", "mask_masked", "both", "rank3"])
def test_masked_softmax_matches_torch_and_never_nans(case):
    shape = (B, 3, S) if case == "rank3" else (B, S)
    x = (RNG.standard_normal(shape) * 3).astype(np.float32)
    keep_len = np.arange(S)[None, :] < LENGTHS[:, None]
    mask_keep = RNG.random((B, S)) < 0.7
    mask_keep[1] = False
    inputs = {"x": ("float32", ["batch", 3, "seq"] if case == "rank3" else ["batch", "seq"])}
    ports, feeds, args = {"x": "x"}, {"x": x}, {}
    keep = np.ones((B, S), bool)
    if case in ("lengths", "both", "rank3"):
        inputs["lengths"], ports["lengths"], feeds["lengths"] = ("int64", ["batch"]), "lengths", LENGTHS
        keep &= keep_len
    if case.startswith("mask") or case == "both":
        polarity = "masked" if case == "mask_masked" else "keep"
        inputs["mask"], ports["mask"], args["polarity"] = ("bool", ["batch", "seq"]), "mask", polarity
        feeds["mask"] = ~mask_keep if polarity == "masked" else mask_keep
        keep &= mask_keep
    model, got, ref = _run("masked_softmax", args, inputs, ports, feeds)
    k = keep[:, None, :] if case == "rank3" else keep
    want = _torch_masked_softmax(x, np.broadcast_to(k, shape).copy())
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ref, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ref_run(model, feeds)["y"], want, rtol=1e-6, atol=1e-7)
    assert np.all(got[np.broadcast_to(~k, shape)] == 0)          # padding is exactly zero, empty rows too


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_masked_softmax_of_very_negative_scores_still_sums_to_one(dtype, tmp_path):
    """Kept scores below float16's lowest value (-65504, the old finite fill) in a
    float32 model: the masked positions outweighed them and the row came out all
    zeros (max abs diff 0.73 against torch). float16 builds keep -inf through the
    conversion (it was refused as out of range) and still give an empty row zeros."""
    x = np.array([[-1e5, -1e5 + 1, 3.0, 0.0], [1.0, 2.0, 3.0, 4.0], [-3e4, -3e4 + 2, 7.0, 1.0]], np.float32)
    lengths = np.array([2, 0, 2], np.int64)
    if dtype == "float16":
        x = x[1:]                                       # -1e5 is not a float16 number
        lengths = lengths[1:]
    keep = np.arange(4)[None, :] < lengths[:, None]
    text = single_layer_spec("masked_softmax", {}, {"x": ("float32", ["batch", "seq"]), "n": ("int64", ["batch"])},
                             ports={"x": "x", "lengths": "n"})
    path = tmp_path / "s.yaml"
    path.write_text(text)
    model = compile_spec(path, dtype=dtype).to_bytes()
    x = x.astype(dtype)
    got = ort_run(model, {"x": x, "n": lengths})["y"]
    want = _torch_masked_softmax(x.astype(np.float32), keep)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got.astype(np.float32), want, atol=1e-6 if dtype == "float32" else 1e-3)
    np.testing.assert_allclose(got.sum(-1), keep.any(-1).astype(np.float32), atol=1e-3)


@pytest.mark.parametrize("case", ["lengths", "mask_keep", "mask_masked", "plain"])
def test_mean_pool_matches_torch(case):
    x = RNG.standard_normal((B, S, D)).astype(np.float32)
    inputs, ports, feeds, args = {"x": ("float32", ["batch", "seq", D])}, {"x": "x"}, {"x": x}, {}
    keep = np.ones((B, S), bool)
    if case == "lengths":
        inputs["lengths"], ports["lengths"], feeds["lengths"] = ("int64", ["batch"]), "lengths", LENGTHS
        keep = np.arange(S)[None, :] < LENGTHS[:, None]
    elif case.startswith("mask"):
        keep = RNG.random((B, S)) < 0.6
        keep[2] = False
        args["polarity"] = case.split("_")[1]
        inputs["mask"], ports["mask"] = ("bool", ["batch", "seq"]), "mask"
        feeds["mask"] = keep if args["polarity"] == "keep" else ~keep
    model, got, ref = _run("mean_pool", args, inputs, ports, feeds)
    t, m = torch.from_numpy(x), torch.from_numpy(keep).float()[:, :, None]
    want = ((t * m).sum(1) / m.sum(1).clamp(min=1)).numpy()          # sentence-transformers' mean pooling
    if case == "plain":
        np.testing.assert_allclose(want, t.mean(1).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ref_run(model, feeds)["y"], want, rtol=1e-5, atol=1e-6)


def test_a_mask_without_its_polarity_is_a_located_error(tmp_path):
    text = single_layer_spec("mean_pool", {}, {"x": ("float32", ["batch", "seq", 4]), "m": ("bool", ["batch", "seq"])},
                             ports={"x": "x", "mask": "m"})
    p = tmp_path / "s.yaml"
    p.write_text(text, encoding="utf-8")
    user_error(cli("check", p), ("needs its polarity named", "polarity: keep"), located=p)


def test_additive_attention_spec_matches_a_torch_module():
    import yaml
    text = (SPECS / "additive_attention.yaml").read_text(encoding="utf-8")
    p = yaml.safe_load(text)["params"]
    torch.manual_seed(0)
    W = torch.nn.Linear(p["d_dec"], p["d_att"], bias=False)
    U = torch.nn.Linear(p["d_enc"], p["d_att"])
    v = torch.nn.Linear(p["d_att"], 1, bias=False)
    weights = {f"{n}.{k}": t.detach().numpy() for n, m in (("W", W), ("U", U), ("v", v))
               for k, t in m.state_dict().items()}
    model, _, _ = compile_text(text, weights=weights)
    q = RNG.standard_normal((3, p["d_dec"])).astype(np.float32)
    mem = RNG.standard_normal((3, 9, p["d_enc"])).astype(np.float32)
    lengths = np.array([9, 4, 1], dtype=np.int64)
    with torch.no_grad():
        e = v(torch.tanh(W(torch.from_numpy(q))[:, None, :] + U(torch.from_numpy(mem))))[..., 0]
        pad = torch.arange(9)[None, :] >= torch.from_numpy(lengths)[:, None]
        a = e.masked_fill(pad, float("-inf")).softmax(-1)
        c = (a[:, :, None] * torch.from_numpy(mem)).sum(1)
    got = ort_run(model, {"query": q, "memory": mem, "src_lengths": lengths})
    np.testing.assert_allclose(got["weights"], a.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["context"], c.numpy(), rtol=1e-5, atol=1e-5)


def test_sentence_embedding_ignores_padding():
    """The pooled vector of a sentence is the same alone and padded in a batch."""
    model, _, _ = compile_text((SPECS / "sentence_embedding.yaml").read_text(encoding="utf-8"), weights="random")
    tokens = RNG.integers(1, 1000, (2, 10))
    mask = np.ones((2, 10), bool)
    mask[1, 6:] = False
    both = ort_run(model, {"tokens": tokens, "attention_mask": mask})["embedding"]
    alone = ort_run(model, {"tokens": tokens[1:, :6], "attention_mask": mask[1:, :6]})["embedding"]
    np.testing.assert_allclose(both[1], alone[0], rtol=1e-4, atol=1e-5)
