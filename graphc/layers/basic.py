"""Linear, embedding, normalisation, dropout and elementwise combination layers."""
from __future__ import annotations

import math

import numpy as np

from ..ir import Builder, Init, Value, run_limits
from ..shapes import format_shape
from .base import Call, LayerKind, Param, Port
from .relayout import transposed


def linear_op(b: Builder, x: Value, weight: Value, bias: Value | None) -> Value:
    """x @ W^T + b with W stored pre-transposed at compile time, so the runtime
    does one MatMul (which ORT fuses with the Add) and never a Transpose."""
    out_f, in_f = (d.value for d in weight.shape)
    w_t = b.derive(transposed, [weight], (in_f, out_f), label=weight.name.rsplit(".", 1)[-1] + "_t",
                   key=("transpose", weight.name))
    y = b.op("MatMul", [x, w_t])                     # [..., in] @ [in, out] -> [..., out]
    return b.op("Add", [y, bias]) if bias is not None else y


def tied_linear_op(b: Builder, x: Value, weight: Value, bias: Value | None) -> Value:
    """x @ W^T + b for a weight another layer also reads (an LM head tied to the
    embedding table): the file stores the table once and the graph transposes it.
    ONNX Runtime folds the Transpose of an initializer once, at session load, so
    inference runs the same MatMul as ``linear_op``'s pre-transposed copy; the
    alternatives measured by tools/bench_tied.py are in docs/benchmarks.md."""
    out_f, in_f = (d.value for d in weight.shape)
    w_t = b.op("Transpose", [weight], perm=(1, 0))   # [out, in] -> [in, out]
    y = b.op("MatMul", [x, w_t])                     # [..., in] @ [in, out] -> [..., out]
    return b.op("Add", [y, bias]) if bias is not None else y


def declare_linear(b: Builder, in_f: int, out_f: int, bias: bool, prefix: str = "") -> tuple[Value, Value | None]:
    """Parameters of an nn.Linear(in_f, out_f): weight [out, in], bias [out];
    both U(-1/sqrt(in), 1/sqrt(in)) like torch's default init."""
    bound = 1 / math.sqrt(in_f)
    pre = prefix + "." if prefix else ""
    w = b.param(pre + "weight", (out_f, in_f), Init("uniform", bound), doc="[out_features, in_features]")
    bb = b.param(pre + "bias", (out_f,), Init("uniform", bound)) if bias else None
    return w, bb


def last_dim(call: Call, x: Value, port: str = "x") -> int:
    if x.rank == 0:
        raise call.error("needs an input of rank >= 1", port)
    d = x.shape[-1]
    if not d.is_const:
        raise call.error(f"the last axis of the input must have a fixed size, got '{d}'", port,
                         hint="feature axes are fixed numbers; batch and sequence axes may be symbolic")
    return d.value


class Linear(LayerKind):
    """y = x W^T + b over the last axis (torch.nn.Linear).

    Parameters: ``<name>.weight`` [out_features, in_features], ``<name>.bias`` [out_features].
    """

    kind = "linear"
    summary = "affine map over the last axis, like torch.nn.Linear"
    params = (
        Param("out_features", "int", doc="output width", min=1),
        Param("in_features", "int", None, "input width; inferred from the input when omitted", min=1),
        Param("bias", "bool", True, "add a learned bias"),
        Param("tie", "str", None, "use an existing [out_features, in_features] parameter as the weight, e.g. "
              "'embed.weight' for an output projection tied to the embedding (the Transformer paper)"),
    )
    shape_rule = "[*, in_features] -> [*, out_features]"
    example = "{name: fc1, kind: linear, input: x, out_features: 256}"

    def expand(self, b, call):
        x = call.inputs["x"]
        in_f = last_dim(call, x)
        out_f = call["out_features"]
        if call["in_features"] is not None and call["in_features"] != in_f:
            raise call.error(f"in_features is {call['in_features']} but the input has width {in_f}", "in_features")
        if call["tie"] is None:
            w, bias = declare_linear(b, in_f, out_f, call["bias"])
        else:
            w = b.existing_param(call["tie"], call.arg_spans.get("tie"))
            if w.type.concrete_shape() != (out_f, in_f):
                raise call.error(f"tied weight '{call['tie']}' is {list(w.type.concrete_shape())}, this layer needs "
                                 f"[{out_f}, {in_f}] (out_features, in_features)", "tie")
            bias = b.param("bias", (out_f,), Init("uniform", 1 / math.sqrt(in_f))) if call["bias"] else None
            return {"y": tied_linear_op(b, x, w, bias)}
        return {"y": linear_op(b, x, w, bias)}

    def reference(self, args, weights, inputs):
        y = inputs["x"] @ weights["weight"].T
        return {"y": y + weights["bias"] if args["bias"] else y}


class Embedding(LayerKind):
    """Token embedding lookup (torch.nn.Embedding), optionally scaled by sqrt(d)
    as in "Attention Is All You Need" section 3.4.

    Parameter: ``<name>.weight`` [num_embeddings, embedding_dim], init N(0, 1),
    with row ``padding_idx`` zero as torch initialises it (weights given in a
    file are used as they are). With ``type_vocab_size`` (BERT's token type,
    or segment, embeddings) a second table ``<name>.token_type.weight``
    [type_vocab_size, embedding_dim] adds row ``token_type_ids[...]`` to each
    vector, or row 0 when the ``token_type_ids`` port is not connected (what
    transformers does when no token_type_ids are given):
    y = W[ids] (* sqrt(d) with scale) + T[token_type_ids].
    The ids go to ONNX ``Gather``: an id at or
    above num_embeddings is an error in ONNX Runtime, but a negative id -k
    silently picks row num_embeddings - k (Gather counts from the end), where
    torch raises.
    """

    kind = "embedding"
    summary = "token id -> vector lookup, like torch.nn.Embedding"
    params = (
        Param("num_embeddings", "int", doc="vocabulary size", min=1),
        Param("embedding_dim", "int", doc="vector width", min=1),
        Param("scale", "bool", False, "multiply by sqrt(embedding_dim), as the Transformer paper does"),
        Param("padding_idx", "int", None, "an id whose vector is initialised to zeros (seeded init only, as torch)",
              min=0),
        Param("tie", "str", None, "share an existing table, e.g. 'src_embed.weight' (shared source/target vocabulary)"),
        Param("type_vocab_size", "int", None, "token types (BERT's segments): adds a second table "
              "<name>.token_type.weight, read at token_type_ids (row 0 without them)", min=1),
    )
    inputs = (Port("ids", "integer token ids"),
              Port("token_type_ids", "integer token types, the shape of ids (needs type_vocab_size)", optional=True))
    shape_rule = "[*] (int) -> [*, embedding_dim]"
    example = "{name: embed, kind: embedding, input: tokens, num_embeddings: 37000, embedding_dim: 512, scale: true}"

    def expand(self, b, call):
        ids = call.inputs["ids"]
        if ids.dtype not in ("int64", "int32"):
            raise call.error(f"token ids must be int64 or int32, got {ids.dtype}", "ids")
        n, d = call["num_embeddings"], call["embedding_dim"]
        if call["padding_idx"] is not None and call["padding_idx"] >= n:
            raise call.error(f"padding_idx {call['padding_idx']} is not below num_embeddings {n}", "padding_idx")
        if call["tie"] is None:
            w = b.param("weight", (n, d), Init("normal", 1.0, zero_row=call["padding_idx"]),
                        doc="[num_embeddings, embedding_dim]")
        else:
            w = b.existing_param(call["tie"], call.arg_spans.get("tie"))
            if w.type.concrete_shape() != (n, d):
                raise call.error(f"tied table '{call['tie']}' is {list(w.type.concrete_shape())}, not [{n}, {d}]", "tie")
        if ids.name in b.g.inputs:
            # ONNX Gather reads -k as row n - k: graphc run refuses ids outside [0, n)
            run_limits.record(b.g.metadata, "ids", ids.name, n, b.path)
        y = b.op("Gather", [w, ids], axis=0)              # [*] -> [*, d]
        if call["scale"]:
            # a Mul per looked-up vector (d FLOPs a token), as torch computes it: folding
            # sqrt(d) into the table would store a second table when the table is tied
            # (the paper's shared source/target/pre-softmax table, docs/benchmarks.md)
            y = b.op("Mul", [y, b.const(np.array(math.sqrt(d), dtype=np.float32), "sqrt_d")])
        return {"y": self._token_types(b, call, ids, y, d)}

    @staticmethod
    def _token_types(b, call, ids: Value, y: Value, d: int) -> Value:
        types, n_types = call.inputs.get("token_type_ids"), call["type_vocab_size"]
        if n_types is None:
            if types is not None:
                raise call.error("token_type_ids needs type_vocab_size (the rows of the token type table)",
                                 "token_type_ids", hint="e.g. type_vocab_size: 2 (BERT's type_vocab_size)")
            return y
        table = b.param("token_type.weight", (n_types, d), Init("normal", 1.0), doc="[type_vocab_size, embedding_dim]")
        if types is None:                              # transformers' default: every token is of type 0
            row = b.op("Gather", [table, b.const(np.array(0, np.int64), "type_0")], axis=0)   # [d]
            return b.op("Add", [y, row])
        if types.dtype not in ("int64", "int32"):
            raise call.error(f"token_type_ids must be int64 or int32, got {types.dtype}", "token_type_ids")
        if types.shape != ids.shape:
            raise call.error(f"token_type_ids must have the shape of the ids {format_shape(ids.shape)}, got "
                             f"{format_shape(types.shape)}", "token_type_ids")
        if types.name in b.g.inputs:
            run_limits.record(b.g.metadata, "ids", types.name, n_types, b.path)
        return b.op("Add", [y, b.op("Gather", [table, types], axis=0)])        # [*, d] + [*, d]

    def reference(self, args, weights, inputs):
        y = weights["weight"][inputs["ids"]]
        y = y * np.float32(math.sqrt(args["embedding_dim"])) if args["scale"] else y
        if args.get("type_vocab_size") is not None:
            types = inputs.get("token_type_ids")
            y = y + weights["token_type.weight"][0 if types is None else types]
        return {"y": y}


class LayerNorm(LayerKind):
    """Layer normalisation over the last axis (torch.nn.LayerNorm(d)).

    y = (x - mean) / sqrt(var + eps) * weight + bias, statistics in float32.
    Parameters ``<name>.weight`` (ones) and ``<name>.bias`` (zeros), [d].
    """

    kind = "layer_norm"
    summary = "LayerNorm over the last axis, like torch.nn.LayerNorm"
    params = (
        Param("eps", "float", 1e-5, "added to the variance (torch's default)", min=0.0),
        Param("bias", "bool", True, "learned bias (torch's bias=True)"),
    )
    shape_rule = "[*, d] -> [*, d]"
    example = "{name: norm1, kind: layer_norm, input: x}"

    def expand(self, b, call):
        x = call.inputs["x"]
        d = last_dim(call, x)
        return {"y": layer_norm_op(b, x, d, call["eps"], call["bias"])}

    def reference(self, args, weights, inputs):
        x = inputs["x"].astype(np.float64)
        mu = x.mean(-1, keepdims=True)
        var = x.var(-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + args["eps"]) * weights["weight"]
        y = y + weights["bias"] if args["bias"] else y
        return {"y": y.astype(inputs["x"].dtype)}


def layer_norm_op(b: Builder, x: Value, d: int, eps: float, bias: bool = True) -> Value:
    w = b.param("weight", (d,), Init("ones"))
    bb = b.param("bias", (d,), Init("zeros")) if bias else None
    return b.op("LayerNorm", [x, w, bb], eps=float(eps), axis=-1)         # bb None: the bias slot omitted


def rms_norm_op(b: Builder, x: Value, d: int, eps: float) -> Value:
    w = b.param("weight", (d,), Init("ones"))
    return b.op("RMSNorm", [x, w], eps=float(eps), axis=-1)


class RMSNorm(LayerKind):
    """Root-mean-square normalisation over the last axis (torch.nn.RMSNorm(d)).

    y = x / sqrt(mean(x^2) + eps) * weight. Parameter ``<name>.weight`` (ones), [d].

    The default eps, 1e-6, is LLaMA's (HF ``LlamaRMSNorm``), not torch's:
    ``torch.nn.RMSNorm(d)`` built without eps uses float32's machine epsilon,
    1.1920929e-07 (set ``eps: 1.1920929e-07`` to match it; inputs of scale
    0.01 differ by 0.03 between the two defaults).
    """

    kind = "rms_norm"
    summary = "RMSNorm over the last axis, like torch.nn.RMSNorm"
    params = (Param("eps", "float", 1e-6, "added to the mean square (LLaMA's default; torch.nn.RMSNorm without eps uses 1.1920929e-07)", min=0.0),)
    shape_rule = "[*, d] -> [*, d]"
    example = "{name: norm, kind: rms_norm, input: x, eps: 1.0e-6}"

    def expand(self, b, call):
        x = call.inputs["x"]
        return {"y": rms_norm_op(b, x, last_dim(call, x), call["eps"])}

    def reference(self, args, weights, inputs):
        x = inputs["x"].astype(np.float64)
        y = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + args["eps"]) * weights["weight"]
        return {"y": y.astype(inputs["x"].dtype)}


class Dropout(LayerKind):
    """Dropout; graphc compiles inference graphs, so this is the identity."""

    kind = "dropout"
    summary = "identity at inference (kept so specs mirror training code)"
    params = (Param("p", "float", 0.1, "drop probability during training (unused at inference)", min=0.0, max=1.0),)
    shape_rule = "[*] -> [*]"
    example = "{name: drop, kind: dropout, input: x, p: 0.1}"

    def expand(self, b, call):
        return {"y": call.inputs["x"]}

    def reference(self, args, weights, inputs):
        return {"y": inputs["x"]}


class _Binary(LayerKind):
    prim = ""
    inputs = (Port("a", "left operand"), Port("b", "right operand"))
    shape_rule = "broadcast(a, b)"

    def expand(self, b, call):
        return {"y": b.op(self.prim, [call.inputs["a"], call.inputs["b"]])}


class Add(_Binary):
    """Elementwise a + b with numpy broadcasting (residual connections)."""

    kind, prim = "add", "Add"
    summary = "elementwise a + b (residual connections)"
    example = "{name: res, kind: add, inputs: [x, ffn]}"

    def reference(self, args, weights, inputs):
        return {"y": inputs["a"] + inputs["b"]}


class Mul(_Binary):
    """Elementwise a * b with numpy broadcasting (gating)."""

    kind, prim = "mul", "Mul"
    summary = "elementwise a * b (gating)"
    example = "{name: gate, kind: mul, inputs: [x, g]}"

    def reference(self, args, weights, inputs):
        return {"y": inputs["a"] * inputs["b"]}


class MatMul(LayerKind):
    """Matrix product of two tensors with numpy's matmul broadcasting."""

    kind = "matmul"
    summary = "matrix product a @ b (numpy broadcasting)"
    inputs = (Port("a", "left operand [..., n, k]"), Port("b", "right operand [..., k, m]"))
    params = (Param("transpose_b", "bool", False, "use b with its last two axes swapped"),)
    shape_rule = "[..., n, k] @ [..., k, m] -> [..., n, m]"
    example = "{name: scores, kind: matmul, inputs: [q, k], transpose_b: true}"

    def expand(self, b, call):
        a, rhs = call.inputs["a"], call.inputs["b"]
        if call["transpose_b"]:
            if rhs.rank < 2:
                raise call.error("transpose_b needs b of rank >= 2", "b")
            perm = list(range(rhs.rank))
            perm[-1], perm[-2] = perm[-2], perm[-1]
            rhs = b.op("Transpose", [rhs], perm=perm)
        y = b.op("MatMul", [a, rhs])
        if _fixed_by_spec(b.g, rhs.name):
            b.g.exact_products.add(b.g.value(y.name).producer)
        return {"y": y}

    def reference(self, args, weights, inputs):
        rhs = np.swapaxes(inputs["b"], -1, -2) if args["transpose_b"] else inputs["b"]
        return {"y": inputs["a"] @ rhs}


def _fixed_by_spec(g, name: str, limit: int = 64) -> bool:
    """Whether value ``name`` is computed from constants only (a spec `constant`,
    perhaps reshaped or transposed), no parameter and no input: folded later, it is
    indistinguishable from a weight, so the int8 pass learns it here."""
    todo, seen = [name], set()
    while todo:
        v = g.value(todo.pop())
        if v.kind == "const":
            continue
        if v.kind != "intermediate" or v.producer is None or len(seen) >= limit:
            return False
        if v.producer not in seen:
            seen.add(v.producer)
            todo.extend(i for i in g.op(v.producer).inputs if i)
    return True


KINDS = (Linear, Embedding, LayerNorm, RMSNorm, Dropout, Add, Mul, MatMul)
