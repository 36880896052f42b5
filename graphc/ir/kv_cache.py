"""Cache mode of the expansion: what ``graphc build --kv-cache`` changes.

A generating decoder runs once per new token. Without a cache each step
recomputes the keys and values of every earlier token; with one, each causal
self-attention takes the keys/values of the earlier tokens as graph inputs
(``past_key_values.{i}.key|value`` [batch, kv_heads, past_seq, head_dim]) and
returns them extended by the new tokens (``present.{i}.key|value``, the concat
on the sequence axis). The Builder carries one ``CacheContext`` (``b.gen``)
while a spec is expanded in cache mode; the layer kinds consult it:

- ``multihead_attention`` (and every Transformer kind, which expands through
  it), when causal self-attention runs over the generated sequence, concats the
  cache after the projections (and after rope) and attends with ``mask()``;
- ``sinusoidal_pe``, ``learned_pe`` and rope look positions up in
  ``position_ids`` [batch, seq] instead of using 0..seq-1, so a step at
  position 37 (or a left-padded row whose real tokens start late) gets its
  real positions;
- ``relative_position_bias`` (T5) over the generated tokens gives the bias of
  the new queries against every key column, cache included ([1, heads, seq,
  past_seq + seq], from ``column_distances``: cache columns, as transformers'
  T5 counts them), and a cached attention adds an ``attn_mask`` of that shape.

With ``--cache-layout shared`` (``CacheContext(shared=True)``) the cache inputs are
instead buffers of a capacity (``past_seq``), the attention_mask is ``[batch,
total_seq]`` (how much of them is filled, this step included), and each cached
self-attention is one ``SharedCacheAttention`` (graphc.prims.shared_cache) that
returns the buffer with this step's columns written: bound as both past and
present, nothing is copied per step.

"The generated sequence" is recognised by its length: a value whose sequence
axis is the tokens input's symbolic length. Source sequences (another
symbol) are untouched, so an encoder-decoder's encoder compiles as before.

The mask is built once and shared by every layer: query j of a step (absolute
column past_seq + j) may see key columns 0 .. past_seq + j (causal aligned
bottom-right) whose ``attention_mask`` is 1. It uses reversed column indices
(distance from the last column), which need no run-time past length:
key k is visible to query j iff (T-1-k) >= (S-1-j), T = past_seq + S.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import GraphcError
from ..shapes import Dim
from .builder import Builder, Value

PAST_DIM = "past_seq"
TOTAL_DIM = "total_seq"         # the shared layout's attention_mask length (past + new; the buffer is longer)
CACHE_LAYOUTS = ("concat", "shared")
# layer kinds that mix positions along a sequence in a way a cache cannot carry
UNCACHEABLE_KINDS = ("lstm", "gru", "rnn", "scaled_dot_product_attention", "rope")


@dataclass
class CacheEntry:
    past_key: str
    past_value: str
    present_key: str
    present_value: str
    kv_heads: int
    head_dim: int
    layer: str
    key_value: tuple[str, str] = ("", "")      # the IR values of the present key/value
    heads: int | None = None                    # the layer's query heads (genai_config's num_attention_heads)


class CacheContext:
    def __init__(self, b: Builder, input_ids: Value, span, shared: bool = False):
        if input_ids.rank != 2:
            raise GraphcError(f"the tokens input must be [batch, seq], got rank {input_ids.rank}", span)
        self.batch, self.seq = input_ids.shape
        if self.seq.is_const or len(self.seq.symbols) != 1:
            raise GraphcError(f"the tokens input's sequence length must be a symbolic dim (like 'seq'), "
                              f"not '{self.seq}'", span,
                              hint="a cached decoder runs with a different number of new tokens at each step")
        for reserved in (PAST_DIM, TOTAL_DIM):
            if reserved in (str(self.seq), str(self.batch)):
                raise GraphcError(f"'{reserved}' is a name graphc gives a cache length; rename that dim", span)
        self.input_ids = input_ids
        self.shared = shared
        # concat: the cache inputs are exactly the earlier tokens (past_seq) and the mask covers
        # past + new; shared: the cache inputs are buffers of a capacity (past_seq) and the mask's
        # length (total_seq, at most the capacity) says how much of them is filled
        self.past = Dim.sym(PAST_DIM)
        self.total = Dim.sym(TOTAL_DIM) if shared else self.past + self.seq
        self.span = span
        self.attention_mask = b.input("attention_mask", "int64", (self.batch, self.total), span)
        self.position_ids = b.input("position_ids", "int64", (self.batch, self.seq), span)
        self.entries: list[CacheEntry] = []
        self.max_positions: int | None = None
        self.input_names: dict[str, str] = {}      # spec input -> ONNX input (bundle_input_names)
        self._mask: Value | None = None
        self._additive: dict[str, Value] = {}      # dtype -> the shared layout's padding bias

    # ------------------------------------------------------------------ queries
    def applies(self, seq: Dim) -> bool:
        """Does a sequence axis of this length run over the generated tokens?"""
        return seq == self.seq

    def positions(self, max_len: int) -> Value:
        """position_ids [batch, seq], noting ``max_len`` rows of the table that reads it."""
        self.limit_positions(max_len)
        return self.position_ids

    def limit_positions(self, max_len: int) -> None:
        """Note a table that accepts at most ``max_len`` positions (the bundle's max_positions)."""
        self.max_positions = max_len if self.max_positions is None else min(self.max_positions, max_len)

    def column_distances(self, b: Builder) -> Value:
        """int64 [seq, past_seq + seq]: key column minus query column (k - (past_seq + j)),
        from distances to the last column like ``mask``, so no run-time past length is needed:
        k - (T-S+j) = (S-1-j) - (T-1-k). Relative-position layers read it (T5's bias)."""
        key_back, query_back = self._distances_to_last(b)
        return b.op("Sub", [query_back, key_back])                                             # [S, T]

    def _padding(self, b: Builder) -> Value:
        """bool [B, 1, 1, T]: True where attention_mask is 0 (a padding column)."""
        pad = b.op("Equal", [self.attention_mask, b.const(np.array(0, np.int64), "zero")])    # [B, T]
        return b.op("Reshape", [pad], shape=(self.batch, Dim.const(1), Dim.const(1), self.total))   # -> [B, 1, 1, T]

    def _distances_to_last(self, b: Builder) -> tuple[Value, Value]:
        """int64 [1, T] and [S, 1]: each key column's and each query's distance from the
        last column (T-1 .. 0 and S-1 .. 0), read from the inputs' run-time lengths."""
        one = Dim.const
        key_back = b.op("Arange", [self.attention_mask], axis=1, reverse=True)                 # [T]: T-1 .. 0
        query_back = b.op("Arange", [self.input_ids], axis=1, reverse=True)                    # [S]: S-1 .. 0
        key_back = b.op("Reshape", [key_back], shape=(one(1), self.total))                    # [T] -> [1, T]
        query_back = b.op("Reshape", [query_back], shape=(self.seq, one(1)))                  # [S] -> [S, 1]
        return key_back, query_back

    # ------------------------------------------------------------------ emitting
    def self_attention(self, b: Builder, kh: Value, vh: Value, heads: int | None = None) -> tuple[Value, Value]:
        """Concat the cache before this step's keys/values [B, Hkv, S, D]:
        returns [B, Hkv, past_seq + S, D] each (the layer's present). ``heads``: the
        layer's query heads, recorded for the bundle config (not in the graph)."""
        i = len(self.entries)
        kvh, hd = kh.shape[1], kh.shape[3]
        if not (kvh.is_const and hd.is_const):
            raise b.error("a cached attention needs fixed head counts and widths")
        past_k = b.input(f"past_key_values.{i}.key", kh.dtype, (self.batch, kvh, self.past, hd), b.span)
        past_v = b.input(f"past_key_values.{i}.value", vh.dtype, (self.batch, vh.shape[1], self.past, vh.shape[3]),
                         b.span)
        k = b.op("Concat", [past_k, kh], axis=2, name_hint="present_key")      # [B, Hkv, P, D] + [B, Hkv, S, D]
        v = b.op("Concat", [past_v, vh], axis=2, name_hint="present_value")    # -> [B, Hkv, P+S, D]
        self.entries.append(CacheEntry(past_k.name, past_v.name, f"present.{i}.key", f"present.{i}.value",
                                       kvh.value, hd.value, b.path, (k.name, v.name), heads))
        return k, v

    def shared_attention(self, b: Builder, q: Value, k: Value | None, v: Value | None, heads: int, kv_heads: int,
                         head_dim: int) -> Value:
        """The shared layout's attention (graphc.prims.shared_cache): q [B, S, H*D], k and
        v [B, S, Hkv*D] (or q packed [B, S, (H + 2 Hkv) D], k and v None) -> [B, S, H*D];
        the layer's buffers become its past/present."""
        i = len(self.entries)
        if not self.entries:            # what a run must respect: new <= filled <= the buffer's capacity
            from . import run_limits
            run_limits.record(b.g.metadata, "dim_max", TOTAL_DIM, PAST_DIM, b.path)
            run_limits.record(b.g.metadata, "dim_max", str(self.seq), TOTAL_DIM, b.path)
        shape = (self.batch, Dim.const(kv_heads), self.past, Dim.const(head_dim))
        past_k = b.input(f"past_key_values.{i}.key", q.dtype, shape, b.span)
        past_v = b.input(f"past_key_values.{i}.value", q.dtype, shape, b.span)
        y, pk, pv = b.op("SharedCacheAttention", [q, k, v, past_k, past_v, self.additive_mask(b, q.dtype)], n_out=3,
                         heads=heads, kv_heads=kv_heads)
        self.entries.append(CacheEntry(past_k.name, past_v.name, f"present.{i}.key", f"present.{i}.value",
                                       kv_heads, head_dim, b.path, (pk.name, pv.name), heads))
        return y

    def additive_mask(self, b: Builder, dtype: str) -> Value:
        """The shared layout's padding bias [B, 1, S, T]: 0 for a real key, the dtype's lowest
        finite value for padding (finite: -inf would give 0/0 in rows with no visible key).
        Causality is part of SharedCacheAttention itself, so this is padding only, built
        from attention_mask in six nodes (the broadcast over S comes from input_ids' shape)."""
        if dtype not in self._additive:
            one = Dim.const
            low = b.const(np.array(np.finfo(dtype).min, dtype), "masked_score")
            pad = self._padding(b)                                                               # [B, 1, 1, T]
            zero = b.op("Mul", [b.op("Cast", [self.input_ids], to=dtype),
                                b.const(np.array(0, dtype), "visible_score")])                    # [B, S] zeros
            zero = b.op("Reshape", [zero], shape=(self.batch, one(1), self.seq, one(1)))         # -> [B, 1, S, 1]
            self._additive[dtype] = b.op("Where", [pad, low, zero])                              # [B, 1, S, T]
        return self._additive[dtype]

    def mask(self, b: Builder) -> Value:
        """bool [B, 1, S, T], True = masked out: padding (attention_mask == 0) or a
        key after the query (bottom-right causal). Built once, shared by all layers."""
        if self._mask is not None:
            return self._mask
        one = Dim.const
        pad = self._padding(b)                                                                 # [B, 1, 1, T]
        key_back, query_back = self._distances_to_last(b)
        later = b.op("Less", [key_back, query_back])                                           # [S, T]: key after query
        later = b.op("Reshape", [later], shape=(one(1), one(1), self.seq, self.total))         # -> [1, 1, S, T]
        self._mask = b.op("Or", [pad, later])                                                  # [B, 1, S, T]
        return self._mask

    def check_kind(self, kind: str, inputs, span) -> None:
        """Refuse a layer that would read the generated sequence in a way no cache carries."""
        if kind not in UNCACHEABLE_KINDS:
            return
        for v in inputs:
            if v is not None and any(self.applies(d) for d in v.shape):
                raise GraphcError(f"a '{kind}' layer over the generated sequence cannot be compiled with "
                                  f"--kv-cache", span,
                                  hint="cached decoding supports causal multihead_attention and the Transformer "
                                       "kinds (with rope: for rotary positions); build without --kv-cache")

    def finish(self, b: Builder, spec_span) -> None:
        if not self.entries:
            raise GraphcError("--kv-cache: the model has no causal self-attention over the generated tokens, "
                              "so there is nothing to cache", spec_span,
                              hint="a cached decoder needs causal: true self-attention (multihead_attention, "
                                   "transformer_decoder, transformer, or a causal transformer_encoder) reading "
                                   "the generation tokens; build without --kv-cache otherwise")
        for e in self.entries:
            b.g.outputs[e.present_key] = e.key_value[0]
            b.g.outputs[e.present_value] = e.key_value[1]


RESERVED_PREFIXES = ("past_key_values.", "present.", "encoder_out.")


def bundle_input_names(spec) -> dict[str, str]:
    """The ONNX name of each spec input in a --kv-cache build: the tokens become
    ``input_ids``; a source input whose name the bundle reserves for the decoder
    (a Hugging Face encoder-decoder's ``input_ids``/``attention_mask``) becomes
    ``encoder_<name>`` (the bundle's config maps encoder inputs to roles, so runtimes
    read roles, not names); every other input keeps its name."""
    gen = spec.generation
    out = {}
    for decl in spec.inputs:
        name = decl.name
        if name == gen.tokens:
            name = "input_ids"
        elif name in ("input_ids", "attention_mask", "position_ids") or name.startswith(RESERVED_PREFIXES):
            name = "encoder_" + name
        out[decl.name] = name
    taken = {}
    for decl in spec.inputs:
        if decl.name == gen.tokens_mask:
            continue
        other = taken.setdefault(out[decl.name], decl)
        if other is not decl:
            renamed = decl if out[decl.name] != decl.name else other
            raise GraphcError(f"with --kv-cache input '{renamed.name}' is named '{out[renamed.name]}', the name of "
                              f"another input", renamed.span, hint="rename one of them")
    return out


def vocab_size(spec, g) -> int | None:
    """The logits' last dim (a fixed number), or None when it is symbolic."""
    gen = spec.generation
    name = g.outputs.get("logits") if g.generation is not None else g.outputs.get(gen.logits)
    d = g.value(name).type.shape[-1] if name else None
    return d.value if d is not None and d.is_const else None


def check_generation(spec, g) -> None:
    """What the ``generation:`` section says, against the built graph: the logits
    are [batch, seq, vocab] over the tokens' batch and length, and every special
    id lies inside the vocabulary. Located at the section's keys."""
    gen = spec.generation
    cached = g.generation is not None
    out = g.outputs["logits" if cached else gen.logits]
    t = g.value(out).type
    tokens = g.value("input_ids" if cached else gen.tokens).type
    where = gen.spans["logits"]
    if t.rank != 3 or t.dtype not in ("float32", "float16"):
        raise GraphcError(f"generation 'logits': output '{gen.logits}' must be float [batch, seq, vocab], "
                          f"got {t}", where)
    if t.shape[:2] != tokens.shape:
        raise GraphcError(f"generation 'logits': output '{gen.logits}' is {t}, but the tokens are "
                          f"{tokens}: the logits must score every token position", where,
                          hint="the logits' first two axes are the tokens' [batch, seq]")
    vocab = vocab_size(spec, g)
    if vocab is None:
        raise GraphcError(f"generation 'logits': the vocabulary axis of output '{gen.logits}' is symbolic "
                          f"('{t.shape[-1]}')", where, hint="the logits' last axis must be a fixed number")
    for key, i in gen.ids():
        if i >= vocab:
            raise GraphcError(f"generation '{key}' is {i}, outside the vocabulary of {vocab} tokens "
                              f"(ids 0..{vocab - 1})", gen.spans[key],
                              hint=f"the vocabulary is the last axis of output '{gen.logits}'")


# ops a logits head may end with that work on each position alone (the vocabulary axis last)
_POSITIONWISE = ("LogSoftmax", "Softmax", "Add", "Mul", "Cast")
_HEADS = ("MatMul", "QuantMatMul", "QuantMatMulBlocks")


def _static(g, name: str) -> bool:
    """A weight, or computed from weights alone (a tied table's run-time Transpose)."""
    v = g.value(name)
    if v.kind in ("const", "param"):
        return True
    return v.producer is not None and all(_static(g, i) for i in g.op(v.producer).inputs if i)


def last_position_logits(g) -> None:
    """Rewrite a cached graph so ``logits`` is [batch, 1, vocab]: the output head runs on
    the last position only. The head is the MatMul (float or int8) against a weight
    that the logits are reached from through position-wise ops (a bias, a scale,
    a log-softmax over the vocabulary); its input is sliced to its last position.

    Why: a prompt step computes the head for every prompt position, and a decoding
    loop reads only the last (left-padded prompts end in the last column). On the
    LLaMA-like spec the head of a 32-token prompt took 11.5 ms against 5.0 for the
    last position (batch 1) and 53 against 10 ms at batch 4 (docs/generation.md).
    A step of 0 new tokens gives [batch, 0, vocab]. A graph whose logits do not
    come from such a head is a located error."""
    from .graph import OpNode, TensorType, ValueInfo
    name = g.outputs["logits"]
    chain = []
    v = name
    while True:
        op = g.op(g.value(v).producer) if g.value(v).producer else None
        if op is None:
            raise GraphcError("--logits last: the logits do not come from an output head (a linear layer)",
                              g.value(name).span)
        consts = [i for i in op.inputs[1:] if i and _static(g, i)]
        if op.op in _HEADS and len(consts) == len(op.inputs) - 1:
            break
        data = [i for i in op.inputs if i and not _static(g, i)]
        if op.op not in _POSITIONWISE or len(data) != 1 or (op.attrs.get("axis", -1) not in (-1, 2)) \
                or any(g.value(i).type.rank > 1 for i in op.inputs if i and i not in data):
            raise GraphcError(f"--logits last: the logits pass through '{op.op}' after the output head, which is "
                              f"not position-wise", op.span, hint="build without --logits last")
        chain.append(op)
        v = data[0]
    x = g.value(op.inputs[0])
    if x.type.rank != 3 or g.generation is None or not g.generation.applies(x.type.shape[1]):
        raise GraphcError("--logits last: the output head's input is not [batch, seq, width] over the new tokens",
                          op.span)
    one = Dim.const(1)
    last = ValueInfo(f"{x.name}/last_position", TensorType(x.type.dtype, (x.type.shape[0], one, x.type.shape[2])),
                     span=op.span)
    g.add_value(last)
    order = [o.id for o in g.ops()]
    anchor = order[order.index(op.id) - 1]
    options = g.lowering_options.get(op.id)
    g.remove_op(op.id)
    slice_op = OpNode(f"{op.id}/last_position", "Slice", [x.name], [last.name],
                      {"axis": 1, "start": -1, "end": None}, op.span, op.layer)     # [B, S, W] -> [B, 1, W]
    g.add_op(slice_op)
    g.add_op(OpNode(op.id, op.op, [last.name] + op.inputs[1:], op.outputs, op.attrs, op.span, op.layer))
    if options:
        g.lowering_options[op.id] = options
    g.place_after(anchor, [slice_op.id, op.id])
    for o in [op] + chain:
        for out in o.outputs:
            t = g.value(out).type
            g.value(out).type = TensorType(t.dtype, (t.shape[0], one) + tuple(t.shape[2:]))
