"""A hand-written toy generation bundle (one attention layer, onnx.helper) and its numpy
reference, for testing graphc's run side independently of graphc's compiler: the ONNX
decoder takes past keys/values and returns presents as the bundle contract says, and
``reference_logits`` recomputes the whole sequence from the math with no cache."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

E, V, P = 8, 20, 64         # width, vocab, position table rows
BOS, EOS, PAD = 1, 2, 0


def toy_weights(seed=0):
    rng = np.random.default_rng(seed)
    w = {k: (rng.standard_normal(s) * sc).astype(np.float32) for k, s, sc in
         [("emb", (V, E), 1.0), ("pos", (P, E), 0.5), ("wq", (E, E), 0.6), ("wk", (E, E), 0.6),
          ("wv", (E, E), 0.6), ("wo", (E, V), 0.8)]}
    w["wo"][:, EOS] += 1.0          # eos comes up now and then
    w["wo"][:, PAD] -= 3.0          # and pad (a prompt filler) seldom
    return w


def _decoder(w) -> onnx.ModelProto:
    n = helper.make_node
    c = lambda name, arr: numpy_helper.from_array(np.asarray(arr), name)
    nodes = [
        n("Gather", ["emb", "input_ids"], ["tok"]), n("Gather", ["pos", "position_ids"], ["pe"]),
        n("Add", ["tok", "pe"], ["x"]),                                               # [B,S,E]
        n("MatMul", ["x", "wq"], ["q3"]), n("MatMul", ["x", "wk"], ["k3"]), n("MatMul", ["x", "wv"], ["v3"]),
        n("Unsqueeze", ["q3", "ax1"], ["q"]), n("Unsqueeze", ["k3", "ax1"], ["k"]),    # [B,1,S,E]
        n("Unsqueeze", ["v3", "ax1"], ["v"]),
        n("Concat", ["past_key_values.0.key", "k"], ["present.0.key"], axis=2),        # [B,1,L,E]
        n("Concat", ["past_key_values.0.value", "v"], ["present.0.value"], axis=2),
        n("Transpose", ["present.0.key"], ["kt"], perm=[0, 1, 3, 2]),
        n("MatMul", ["q", "kt"], ["s0"]), n("Mul", ["s0", "scale"], ["s"]),            # [B,1,S,L]
        n("Shape", ["present.0.key"], ["kshape"]), n("Gather", ["kshape", "two"], ["L"]),
        n("Shape", ["input_ids"], ["ishape"]), n("Gather", ["ishape", "one"], ["S"]),
        n("Sub", ["L", "S"], ["past"]),
        n("Range", ["zero", "L", "one"], ["kidx"]), n("Range", ["past", "L", "one"], ["qidx"]),
        n("Unsqueeze", ["qidx", "ax1"], ["qcol"]),                                     # [S,1]
        n("LessOrEqual", ["kidx", "qcol"], ["causal"]),                                # [S,L]
        n("Cast", ["attention_mask"], ["keep0"], to=TensorProto.BOOL),
        n("Unsqueeze", ["keep0", "ax12"], ["keep"]),                                   # [B,1,1,L]
        n("And", ["causal", "keep"], ["allowed"]),                                     # [B,1,S,L]
        n("Where", ["allowed", "s", "neg"], ["sm"]), n("Softmax", ["sm"], ["a"], axis=-1),
        n("MatMul", ["a", "present.0.value"], ["ctx4"]), n("Squeeze", ["ctx4", "ax1"], ["ctx"]),
        n("Add", ["ctx", "x"], ["h"]), n("MatMul", ["h", "wo"], ["logits"]),
    ]
    inits = [c(k, v) for k, v in w.items()] + [
        c("ax1", np.array([1], np.int64)), c("ax12", np.array([1, 2], np.int64)),
        c("two", np.array(2, np.int64)), c("one", np.array(1, np.int64)), c("zero", np.array(0, np.int64)),
        c("scale", np.array(1 / np.sqrt(E), np.float32)), c("neg", np.array(-1e9, np.float32))]
    f, i = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("input_ids", i, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", i, ["batch", "total"]),
              helper.make_tensor_value_info("position_ids", i, ["batch", "seq"]),
              helper.make_tensor_value_info("past_key_values.0.key", f, ["batch", 1, "past", E]),
              helper.make_tensor_value_info("past_key_values.0.value", f, ["batch", 1, "past", E])]
    outputs = [helper.make_tensor_value_info("logits", f, ["batch", "seq", V]),
               helper.make_tensor_value_info("present.0.key", f, ["batch", 1, "total", E]),
               helper.make_tensor_value_info("present.0.value", f, ["batch", 1, "total", E])]
    graph = helper.make_graph(nodes, "toy_decoder", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def config(**over):
    cfg = {"format": 1, "architecture": "decoder-only", "dtype": "float32", "bos": BOS, "eos": EOS, "pad": PAD,
           "decoder_start": BOS, "vocab_size": V, "max_positions": P, "logits_kind": "logits",
           "decoder": {"file": "decoder.onnx"}, "encoder": None,
           "cache": [{"past_key": "past_key_values.0.key", "past_value": "past_key_values.0.value",
                      "present_key": "present.0.key", "present_value": "present.0.value",
                      "kv_heads": 1, "head_dim": E}],
           "spec": "toy", "graphc_version": "test"}
    cfg.update(over)
    return cfg


def write_bundle(directory: Path, seed=0, **over) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(_decoder(toy_weights(seed)), str(directory / "decoder.onnx"))
    (directory / "graphc_generation.json").write_text(json.dumps(config(**over)))
    return directory


def reference_logits(w, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Full no-cache forward from the math: [B, T, V] for left-padded ids/mask."""
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    x = w["emb"][ids] + w["pos"][pos]
    q, k, v = x @ w["wq"], x @ w["wk"], x @ w["wv"]
    s = q @ k.transpose(0, 2, 1) / np.sqrt(E)
    t = ids.shape[1]
    allowed = np.tril(np.ones((t, t), bool))[None] & (mask[:, None, :] == 1)
    s = np.where(allowed, s, -1e9)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    return (a @ v + x) @ w["wo"]


class ReferenceStepModel:
    """The numpy reference as a step model (recomputes everything each step)."""

    def __init__(self, w):
        self.w = w

    def start(self, ids, mask):
        self.ids, self.mask = ids.copy(), mask.copy()
        return reference_logits(self.w, self.ids, self.mask)[:, -1].astype(np.float32)

    def step(self, tok):
        self.ids = np.concatenate([self.ids, tok[:, None]], 1)
        self.mask = np.concatenate([self.mask, np.ones((len(tok), 1), np.int64)], 1)
        return reference_logits(self.w, self.ids, self.mask)[:, -1].astype(np.float32)

    def reorder(self, index):
        self.ids, self.mask = self.ids[index], self.mask[index]
