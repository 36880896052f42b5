"""Loading checkpoints: bfloat16 conversion, checkpoint directories and sharded
indexes, the ignore list, the spec's weight map (and its located errors), and
the mismatch report (the file's names, transposes, a renaming as a map rule).
Oracles: numpy written from the rule's definition, and bit patterns built by
hand (bfloat16 is float32's upper 16 bits)."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from graphc.checkpoint import load_checkpoint
from graphc.errors import GraphcError
from tests.helpers import cli, ort_run, user_error

SPEC = """graphc: 1
dims: {batch: 2}
inputs:
  x: {dtype: float32, shape: [batch, 4]}
layers:
  - {name: fc1, kind: linear, input: x, out_features: 6}
  - {name: fc2, kind: linear, input: fc1, out_features: 6}
outputs: {y: fc2}
"""
RNG = np.random.default_rng(0)
W1, B1 = RNG.standard_normal((6, 4)).astype(np.float32), RNG.standard_normal(6).astype(np.float32)
W2, B2 = RNG.standard_normal((6, 6)).astype(np.float32), RNG.standard_normal(6).astype(np.float32)
X = RNG.standard_normal((2, 4)).astype(np.float32)


def _want(w1=W1, b1=B1, w2=W2, b2=B2):
    return (X @ w1.T + b1) @ w2.T + b2


def _safetensors(path, tensors: dict, raw: dict | None = None) -> None:
    """A safetensors file written by hand (the format: u64 header length, JSON
    header, data); ``raw`` entries are (dtype name, shape, bytes)."""
    header, data = {}, b""
    items = [(n, ("F32", list(a.shape), np.ascontiguousarray(a, "<f4").tobytes())) for n, a in tensors.items()]
    items += list((raw or {}).items())
    for name, (dtype, shape, blob) in items:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _build(tmp_path, spec_text, weights, *extra):
    (spec := tmp_path / "s.yaml").write_text(spec_text)
    out = tmp_path / "m.onnx"
    rc, o, err = cli("build", spec, "--weights", weights, "-o", out, *extra)
    return rc, err, out


def _refused(tmp_path, spec_text, weights, *extra, message, **where) -> str:
    """A build ``_build`` would run, refused as a user error (helpers.user_error:
    ``message``, a text or a tuple of texts; ``where``: its located=/where=)."""
    (spec := tmp_path / "s.yaml").write_text(spec_text)
    return user_error(cli("build", spec, "--weights", weights, "-o", tmp_path / "m.onnx", *extra), message, **where)


def _run(out):
    return ort_run(out.read_bytes(), {"x": X})["y"]


# ------------------------------------------------------------------ dtypes

def test_bfloat16_tensors_load_exactly_with_a_note(tmp_path):
    w1 = np.round(W1 * 8) / 8        # exactly representable in bfloat16 (few mantissa bits)
    bits = (w1.astype("<f4").view("<u4") >> 16).astype("<u2")
    _safetensors(tmp_path / "w.safetensors", {"fc1.bias": B1, "fc2.weight": W2, "fc2.bias": B2},
                 {"fc1.weight": ("BF16", [6, 4], bits.tobytes())})
    tensors, notes = load_checkpoint(tmp_path / "w.safetensors")
    assert tensors["fc1.weight"].dtype == np.float32 and np.array_equal(tensors["fc1.weight"], w1)
    assert notes == [f"1 bfloat16 tensor in {tmp_path / 'w.safetensors'} converted to float32 (exactly), "
                     f"e.g. 'fc1.weight'"]
    rc, err, out = _build(tmp_path, SPEC, tmp_path / "w.safetensors")
    assert rc == 0 and "1 bfloat16 tensor" in err
    assert np.abs(_run(out) - _want(w1=w1)).max() < 1e-5


def test_float16_and_float64_are_converted_with_notes(tmp_path):
    np.savez(tmp_path / "w.npz", **{"fc1.weight": W1.astype(np.float16), "fc1.bias": B1.astype(np.float64),
                                    "fc2.weight": W2, "fc2.bias": B2})
    rc, err, out = _build(tmp_path, SPEC, tmp_path / "w.npz")
    assert rc == 0
    assert "1 float16 tensor in" in err and "(exactly), e.g. 'fc1.weight'" in err
    assert "1 float64 tensor in" in err and "(rounded), e.g. 'fc1.bias'" in err
    want = _want(w1=W1.astype(np.float16).astype(np.float32))
    assert np.abs(_run(out) - want).max() < 1e-5


# ------------------------------------------------------------------ directories and shards

def _shards(tmp_path, index_map=None):
    d = tmp_path / "ckpt"
    d.mkdir()
    _safetensors(d / "model-00001-of-00002.safetensors", {"fc1.weight": W1, "fc1.bias": B1})
    _safetensors(d / "model-00002-of-00002.safetensors", {"fc2.weight": W2, "fc2.bias": B2})
    wmap = index_map or {"fc1.weight": "model-00001-of-00002.safetensors",
                         "fc1.bias": "model-00001-of-00002.safetensors",
                         "fc2.weight": "model-00002-of-00002.safetensors",
                         "fc2.bias": "model-00002-of-00002.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    return d


def test_sharded_checkpoint_directory_and_index(tmp_path):
    d = _shards(tmp_path)
    for weights in (d, d / "model.safetensors.index.json"):
        rc, err, out = _build(tmp_path, SPEC, weights)
        assert rc == 0, err
        assert np.abs(_run(out) - _want()).max() < 1e-5


def test_index_naming_a_missing_shard(tmp_path):
    d = _shards(tmp_path)
    (d / "model-00002-of-00002.safetensors").unlink()
    err = _refused(tmp_path, SPEC, d, message="copy every shard")
    assert "names shard 'model-00002-of-00002.safetensors' (for 2 tensors, e.g. 'fc2.weight'), which is not in" in err
    assert "copy every shard" in err


def test_index_and_shard_disagree(tmp_path):
    d = _shards(tmp_path, {"fc1.weight": "model-00001-of-00002.safetensors",
                           "fc1.bias": "model-00002-of-00002.safetensors",
                           "fc2.weight": "model-00002-of-00002.safetensors",
                           "fc2.bias": "model-00002-of-00002.safetensors"})
    with pytest.raises(GraphcError, match="shard 'model-00001-of-00002.safetensors' holds tensor 'fc1.bias', "
                                          "which .* does not list"):
        load_checkpoint(d)


def test_directory_without_safetensors(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "pytorch_model.bin").write_bytes(b"\x80\x02")
    _refused(tmp_path, SPEC, tmp_path / "ckpt",
             message=("holds pytorch_model.bin, not model.safetensors", "safe_serialization"))


# ------------------------------------------------------------------ ignore list

def _with_extra(tmp_path):
    _safetensors(p := tmp_path / "w.safetensors", {"fc1.weight": W1, "fc1.bias": B1, "fc2.weight": W2,
                                                   "fc2.bias": B2, "pooler.dense.weight": W2,
                                                   "pooler.dense.bias": B2})
    return p


def test_extra_tensors_are_an_error_that_suggests_the_ignore_list(tmp_path):
    err = _refused(tmp_path, SPEC, _with_extra(tmp_path), message="unexpected: pooler.dense.bias [6]")
    assert "--ignore-weights PATTERN" in err and "weights: {ignore: [PATTERN]}" in err


def test_ignore_in_the_spec_and_on_the_command_line(tmp_path):
    w = _with_extra(tmp_path)
    rc, err, out = _build(tmp_path, SPEC + "weights: {ignore: ['pooler.**']}\n", w)
    assert rc == 0, err
    assert "ignored 2 tensors of" in err and "pooler.dense.bias, pooler.dense.weight" in err
    assert np.abs(_run(out) - _want()).max() < 1e-5
    rc, err, out = _build(tmp_path, SPEC, w, "--ignore-weights", "pooler.dense.*")
    assert rc == 0 and "ignored 2 tensors" in err and "as the command line says" in err


def test_ignore_pattern_matching_nothing(tmp_path):
    w = _with_extra(tmp_path)
    _refused(tmp_path, SPEC + "weights:\n  ignore: ['poolr.*']\n", w, located=tmp_path / "s.yaml", where="10:12",
             message=("s.yaml:10:12: error: this ignore pattern 'poolr.*' matches no tensor of",
                      "closest names in the file: 'pooler.dense.bias'"))
    _refused(tmp_path, SPEC + "weights: {ignore: ['pooler.*']}\n", w, located=tmp_path / "s.yaml",
             message="'*' matches one name segment: 'pooler.**' would match 2 tensors")
    _refused(tmp_path, SPEC, w, "--ignore-weights", "nothing.*", message="--ignore-weights 'nothing.*' matches no tensor")


# ------------------------------------------------------------------ the weight map

def _hf_style(tmp_path):
    """fc1 as separate q/k rows in [in, out] layout, fc2 under another name."""
    _safetensors(p := tmp_path / "w.safetensors", {
        "model.layers.0.a.weight": np.ascontiguousarray(W1[:2].T), "model.layers.0.b.weight": np.ascontiguousarray(W1[2:].T),
        "model.layers.0.bias": B1, "model.out.weight": W2, "model.out.bias": B2})
    return p


MAP = """weights:
  map:
    - {from: ['model.layers.*.a.weight', 'model.layers.*.b.weight'], to: 'fc1.weight', transpose: true}
    - {from: 'model.layers.*.bias', to: 'fc{1}.bias', rows: [0, 6]}
    - {from: 'model.out.*', to: 'fc2.{1}'}
"""


def test_weight_map_transposes_concatenates_and_renames(tmp_path):
    rc, err, out = _build(tmp_path, SPEC + MAP.replace("fc{1}.bias", "fc1.bias"), _hf_style(tmp_path))
    assert rc == 0, err
    assert np.abs(_run(out) - _want()).max() < 1e-5


def test_weight_map_split_and_reshape(tmp_path):
    packed = np.concatenate([W1.reshape(-1), B1])       # one flat tensor holding fc1's weight and bias
    _safetensors(p := tmp_path / "w.safetensors", {"packed": packed, "fc2.weight": W2, "fc2.bias": B2})
    spec = SPEC + ("weights:\n  map:\n    - {from: packed, to: [fc1.weight, fc1.bias], split: [24, 6]}\n")
    _refused(tmp_path, spec, p, located=tmp_path / "s.yaml",
             message="maps 'packed' to 'fc1.weight' as [24], but the spec's 'fc1.weight' is [6, 4]")
    _safetensors(p, {"w": W1.reshape(-1), "fc1.bias": B1, "fc2.weight": W2, "fc2.bias": B2})
    rc, err, out = _build(tmp_path, SPEC + "weights:\n  map:\n    - {from: w, to: fc1.weight, reshape: [6, -1]}\n", p)
    assert rc == 0, err
    assert np.abs(_run(out) - _want()).max() < 1e-5
    _safetensors(p, {"qkv": np.concatenate([W2, W2[:3]]), "fc1.weight": W1, "fc1.bias": B1, "fc2.bias": B2})
    _refused(tmp_path, SPEC + "weights:\n  map:\n    - {from: qkv, to: [fc2.weight, unused], split: [6, 3]}\n", p,
             located=tmp_path / "s.yaml", message="maps 'qkv' to 'unused', which is not a parameter of the spec")


@pytest.mark.parametrize("rule, where, message", [
    ("{from: 'model.nothing.*', to: 'fc2.{1}'}", "14:14", "weight-map rule 'model.nothing.*' matches no tensor of"),
    ("{from: 'model.out.*', to: 'fc2.{1}'}", "14:14", "tensor 'model.out.bias' matches this rule and "
     "the rule at line 13"),
    ("{from: 'model.out.weight', to: 'fc1.bias'}", "14:7", "weight map produces 'fc1.bias' twice"),
    ("{from: 'model.out.weight', to: 'fc3.weight'}", "14:7", "weight-map rule maps 'model.out.weight' to "
     "'fc3.weight', which is not a parameter of the spec"),
])
def test_weight_map_errors_are_located(tmp_path, rule, where, message):
    spec = SPEC + "weights:\n  map:\n" + \
        "    - {from: ['model.layers.*.a.weight', 'model.layers.*.b.weight'], to: 'fc1.weight', transpose: true}\n" + \
        "    - {from: 'model.layers.*.bias', to: 'fc1.bias'}\n" + \
        "    - {from: 'model.out.bias', to: 'fc2.bias'}\n" + f"    - {rule}\n"
    err = _refused(tmp_path, spec, _hf_style(tmp_path), message=message, located=tmp_path / "s.yaml", where=where)
    assert f"s.yaml:{where}: error: {message}" in err, err


def test_weight_map_says_when_a_tensor_is_exactly_transposed(tmp_path):
    _safetensors(p := tmp_path / "w.safetensors", {"conv.weight": np.ascontiguousarray(W1.T), "fc1.bias": B1,
                                                   "fc2.weight": W2, "fc2.bias": B2})
    spec = SPEC + "weights:\n  map:\n    - {from: conv.weight, to: fc1.weight}\n"
    err = _refused(tmp_path, spec, p, message="weight-map rule maps 'conv.weight'", located=tmp_path / "s.yaml",
                   where="11:7")
    assert "s.yaml:11:7: error: weight-map rule maps 'conv.weight' to 'fc1.weight' as [4, 6], but the spec's " \
           "'fc1.weight' is [6, 4]" in err
    assert "exactly the transpose of what is expected: add 'transpose: true'" in err
    rc, err, out = _build(tmp_path, spec.replace("fc1.weight}", "fc1.weight, transpose: true}"), p)
    assert rc == 0, err
    assert np.abs(_run(out) - _want()).max() < 1e-5


def test_weight_map_structure_is_checked_by_graphc_check(tmp_path):
    (spec := tmp_path / "s.yaml").write_text(SPEC + "weights:\n  map:\n    - {from: 'a.*.w', to: 'fc{2}.weight'}\n")
    user_error(cli("check", spec), "s.yaml:11:27: error: 'fc{2}.weight' uses {2}, but the pattern has 1 wildcard",
               located=spec, where="11:27")
    spec.write_text(SPEC + "weights:\n  map:\n    - {from: 'a.w', to: 'b', transpos: true}\n")
    user_error(cli("check", spec), ("unknown key 'transpos' in a weight-map rule", "did you mean 'transpose'"),
               located=spec)


# ------------------------------------------------------------------ the mismatch report

def test_mismatch_names_a_transposed_tensor(tmp_path):
    np.savez(p := tmp_path / "w.npz", **{"fc1.weight": W1.T, "fc1.bias": B1, "fc2.weight": W2, "fc2.bias": B2})
    err = _refused(tmp_path, SPEC, p,
                   message="wrong shape: fc1.weight is [4, 6], expected [6, 4] (exactly its transpose)")
    assert "transpose: true" in err and "square ones cannot be detected" in err


def test_mismatch_suggests_a_prefix_rule_and_shows_the_files_names(tmp_path):
    np.savez(p := tmp_path / "w.npz", **{"model.fc1.weight": W1, "model.fc1.bias": B1, "model.fc2.weight": W2,
                                         "model.fc2.bias": B2, "lm_head.weight": W2})
    err = _refused(tmp_path, SPEC, p, message="do not match the spec's parameters")
    assert "unexpected: model.fc1.weight [6, 4]" in err           # the file's own names are shown
    assert "weights: {map: [{from: 'model.**', to: '{1}'}], ignore: [lm_head.weight]}" in err
    # and that rule, plus ignoring the extra head, loads it
    rc, err, out = _build(tmp_path, SPEC + "weights: {ignore: [lm_head.weight], map: [{from: 'model.**', to: '{1}'}]}\n", p)
    assert rc == 0, err
    assert np.abs(_run(out) - _want()).max() < 1e-5


# ------------------------------------------------------------------ integer masks

MASKED = """graphc: 1
dims: {batch: 2, seq: 5}
inputs:
  x: {dtype: float32, shape: [batch, seq, 8]}
  mask: {dtype: %s, shape: [batch, seq]}
layers:
  - {name: attn, kind: multihead_attention, inputs: {query: x, key_padding_mask: mask}, heads: 2,
     key_padding_polarity: keep}
outputs: {y: attn}
"""


def test_integer_attention_mask_reads_like_a_bool_one(tmp_path):
    """HF's int64 1/0 attention_mask against the numpy math of masked attention."""
    from tests.helpers import compile_text
    x = RNG.standard_normal((2, 5, 8)).astype(np.float32)
    keep = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], np.int64)
    model, g, used = compile_text(MASKED % "int64", weights="random")
    got = ort_run(model, {"x": x, "mask": keep})["y"]
    w = {k[len("attn."):]: v for k, v in used.items()}
    q, k, v = np.split(x @ w["in_proj_weight"].T + w["in_proj_bias"], 3, axis=-1)
    heads = lambda t: t.reshape(2, 5, 2, 4).transpose(0, 2, 1, 3)       # [B, S, 8] -> [B, H, S, 4]
    s = heads(q) @ heads(k).transpose(0, 1, 3, 2) / 2.0
    s = np.where(keep[:, None, None, :] == 1, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    o = (p / p.sum(-1, keepdims=True)) @ heads(v)
    want = o.transpose(0, 2, 1, 3).reshape(2, 5, 8) @ w["out_proj.weight"].T + w["out_proj.bias"]
    assert np.abs(got - want).max() < 1e-5


def test_float_padding_mask_hint(tmp_path):
    (spec := tmp_path / "s.yaml").write_text(MASKED % "float32")
    err = user_error(cli("check", spec), "key_padding_mask must be bool or int", located=spec)
    assert "cast to bool" not in err
