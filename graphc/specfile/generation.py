"""The ``generation:`` section of a spec: how a model generates text.

It names the input that carries the generated tokens, the output scored at
each step, the encoder's input for encoder-decoder models and the special
ids. ``graphc build --kv-cache`` reads it to compile the cached decoder (and
the encoder) of a generation bundle (docs/generation.md); a plain build only
checks it. Structure and references to the spec's inputs are checked here,
at parse time; what needs shapes (the logits' rank, ids inside the
vocabulary) is checked by ``graphc.ir.kv_cache.check_generation`` once the
graph is built, so ``graphc check`` reports both.

    generation:
      tokens: tgt_tokens     # int [batch, seq] input of the generated tokens
      source: src_tokens     # encoder-decoder only: the encoder's token input
      logits: log_probs      # [batch, seq, vocab] output scored at each step
      bos: 1
      eos: 2                 # or a list of ids
      pad: 0
      decoder_start: 1       # encoder-decoder: the first decoder token (default bos)
      tokens_mask: attention_mask   # optional: the tokens' int [batch, seq] mask, 1 = real token

``tokens_mask`` is for specs written for plain builds too (Hugging Face
imports): their causal self-attention reads a padding mask of the tokens. In
a --kv-cache build that input is the bundle's ``attention_mask`` [batch,
past_seq + seq], which masks the cache as well; a cached self-attention
given it uses the shared cache mask instead (graphc.ir.kv_cache).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import GraphcError, Span, did_you_mean, known_list
from ..source import Node
from .model import InputDecl

GENERATION_KEYS = ("tokens", "tokens_mask", "source", "source_masks", "logits", "logits_kind", "bos", "eos",
                   "pad", "decoder_start", "doc")
SOURCE_MASK_ROLES = ("source_padding_mask", "source_keep_mask", "source_attention_mask", "source_lengths")
LOGITS_KINDS = ("logits", "log_probs")
INT_DTYPES = ("int64", "int32")


@dataclass
class GenerationDecl:
    """The parsed section; every field keeps where it was written (``spans``)."""

    span: Span
    tokens: str
    logits: str
    pad: int
    source: str | None = None
    source_masks: dict[str, str] = field(default_factory=dict)   # input name -> role
    logits_kind: str | None = None       # None: inferred (a log_softmax output is log_probs)
    bos: int | None = None
    eos: list[int] | None = None
    decoder_start: int | None = None
    tokens_mask: str | None = None       # the tokens' padding mask input (int, 1 = real token)
    spans: dict[str, Span] = field(default_factory=dict)

    @property
    def encoder_decoder(self) -> bool:
        return self.source is not None

    def ids(self) -> list[tuple[str, int]]:
        """(key, id) of every special id, for the vocabulary check."""
        out = [("pad", self.pad)]
        if self.bos is not None:
            out.append(("bos", self.bos))
        out += [("eos", e) for e in self.eos or ()]
        if self.decoder_start is not None:
            out.append(("decoder_start", self.decoder_start))
        return out


def _id(node: Node, what: str) -> int:
    if isinstance(node.value, bool) or not isinstance(node.value, int):
        raise GraphcError(f"generation '{what}' must be a token id (an integer), not {node.type_name()}", node.span)
    if node.value < 0:
        raise GraphcError(f"generation '{what}' must be a token id >= 0, got {node.value}", node.span)
    return node.value


def _input_ref(node: Node, key: str, inputs: dict[str, InputDecl]) -> InputDecl:
    if not isinstance(node.value, str):
        raise GraphcError(f"generation '{key}' must name an input, not {node.type_name()}", node.span)
    if node.value not in inputs:
        raise GraphcError(f"generation '{key}' names '{node.value}', which is not an input of the spec", node.span,
                          hint=did_you_mean(node.value, inputs) or f"the inputs: {known_list(inputs)}")
    return inputs[node.value]


def _token_input(node: Node, key: str, inputs: dict[str, InputDecl]) -> str:
    decl = _input_ref(node, key, inputs)
    if decl.dtype not in INT_DTYPES:
        raise GraphcError(f"generation '{key}': input '{decl.name}' must hold token ids (int64 or int32), "
                          f"but it is {decl.dtype}", node.span,
                          hint=f"the input is declared at {decl.span}")
    if len(decl.shape) != 2:
        raise GraphcError(f"generation '{key}': input '{decl.name}' must be [batch, seq], but it has rank "
                          f"{len(decl.shape)}", node.span, hint=f"the input is declared at {decl.span}")
    return decl.name


def parse_generation(node: Node, inputs: list[InputDecl], outputs: dict) -> GenerationDecl:
    from .parse import check_keys, expect_map
    expect_map(node, "'generation'")
    check_keys(node, GENERATION_KEYS, "'generation'")
    m = node.value
    by_name = {d.name: d for d in inputs}
    spans = {k: m[k].span for k in m}
    for key in ("tokens", "logits", "pad"):
        if key not in m:
            raise GraphcError(f"'generation' has no '{key}'", node.span,
                              hint="e.g. generation: {tokens: tokens, logits: logits, bos: 1, eos: 2, pad: 0}")
    tokens = _token_input(m["tokens"], "tokens", by_name)
    source = _token_input(m["source"], "source", by_name) if "source" in m else None
    if source == tokens:
        raise GraphcError("generation 'source' and 'tokens' name the same input", m["source"].span,
                          hint="'source' is the encoder's input; 'tokens' the decoder's")
    tokens_mask = _tokens_mask(m["tokens_mask"], by_name[tokens], source, by_name) if "tokens_mask" in m else None
    masks: dict[str, str] = {}
    if "source_masks" in m:
        if source is None:
            raise GraphcError("generation 'source_masks' needs a 'source' (encoder-decoder models)",
                              node.key_spans["source_masks"])
        sm = expect_map(m["source_masks"], "generation 'source_masks'")
        for name, role in sm.value.items():
            decl = _input_ref(Node(name, sm.key_spans[name]), "source_masks", by_name)
            if name in (tokens, source, tokens_mask):
                raise GraphcError(f"generation 'source_masks': '{name}' is already the "
                                  f"{'tokens' if name == tokens else 'source' if name == source else 'tokens_mask'}"
                                  " input", sm.key_spans[name])
            if role.value not in SOURCE_MASK_ROLES:
                raise GraphcError(f"unknown source mask role {role.value!r}", role.span,
                                  hint=did_you_mean(str(role.value), SOURCE_MASK_ROLES)
                                  or f"one of {', '.join(SOURCE_MASK_ROLES)}")
            want = {"source_padding_mask": ("bool", 2), "source_keep_mask": ("bool", 2),
                    "source_attention_mask": ("int64", 2), "source_lengths": ("int64", 1)}[role.value]
            if (decl.dtype, len(decl.shape)) != want:
                raise GraphcError(f"a {role.value} must be {want[0]} of rank {want[1]}, but input '{name}' is "
                                  f"{decl.dtype} of rank {len(decl.shape)}", role.span,
                                  hint=f"the input is declared at {decl.span}")
            masks[name] = role.value
    for decl in inputs:
        if decl.name not in (tokens, source, tokens_mask) and decl.name not in masks:
            raise GraphcError(f"input '{decl.name}' has no role in generation", m["tokens"].span,
                              hint="a generating model reads its tokens (and, encoder-decoder, its source); "
                                   "name the tokens' mask as 'tokens_mask', a source mask under 'source_masks', "
                                   "or derive masks from the ids "
                                   "(layer kind padding_mask)",
                              notes=[f"'{decl.name}' is declared at {decl.span}"])
    lg = m["logits"]
    if not isinstance(lg.value, str):
        raise GraphcError(f"generation 'logits' must name an output, not {lg.type_name()}", lg.span)
    if lg.value not in outputs:
        raise GraphcError(f"generation 'logits' names '{lg.value}', which is not an output of the spec", lg.span,
                          hint=did_you_mean(lg.value, outputs) or f"the outputs: {known_list(outputs)}")
    kind = None
    if "logits_kind" in m:
        kind = m["logits_kind"].value
        if kind not in LOGITS_KINDS:
            raise GraphcError(f"generation 'logits_kind' must be one of {', '.join(LOGITS_KINDS)}, got {kind!r}",
                              m["logits_kind"].span)
    eos = None
    if "eos" in m:
        e = m["eos"]
        eos = [_id(x, "eos") for x in e.value] if e.is_list else [_id(e, "eos")]
        if not eos:
            raise GraphcError("generation 'eos' is an empty list", e.span, hint="give one id, a list, or leave it out")
    bos = _id(m["bos"], "bos") if "bos" in m and m["bos"].value is not None else None
    start = _id(m["decoder_start"], "decoder_start") if "decoder_start" in m else None
    if start is not None and source is None:
        raise GraphcError("generation 'decoder_start' is for encoder-decoder models (with a 'source')",
                          node.key_spans["decoder_start"])
    if source is not None and start is None and bos is None:
        raise GraphcError("an encoder-decoder model needs 'decoder_start' or 'bos': the decoder's first token",
                          node.span)
    if "doc" in m and not isinstance(m["doc"].value, str):
        raise GraphcError(f"'doc' must be text, not {m['doc'].type_name()}", m["doc"].span)
    return GenerationDecl(node.span, tokens, lg.value, _id(m["pad"], "pad"), source, masks, kind, bos, eos,
                          start, tokens_mask, spans)


def _tokens_mask(node: Node, tokens: InputDecl, source: str | None, inputs: dict[str, InputDecl]) -> str:
    """The tokens' padding mask: an int input of the tokens' shape, 1 = real token
    (the convention of the bundle's attention_mask, which replaces it)."""
    decl = _input_ref(node, "tokens_mask", inputs)
    if decl.name in (tokens.name, source):
        raise GraphcError(f"generation 'tokens_mask' names the {'tokens' if decl.name == tokens.name else 'source'} "
                          "input", node.span, hint="name the input that masks padding among the tokens")
    if decl.dtype not in INT_DTYPES:
        raise GraphcError(f"generation 'tokens_mask': input '{decl.name}' must be int64 or int32 (1 = real token, "
                          f"0 = padding), but it is {decl.dtype}", node.span, hint=f"the input is declared at {decl.span}")
    want, got = ([str(d.value) for d in x.shape] for x in (tokens, decl))
    if got != want:
        raise GraphcError(f"generation 'tokens_mask': input '{decl.name}' must have the tokens' shape "
                          f"[{', '.join(want)}], got [{', '.join(got)}]", node.span,
                          hint=f"the input is declared at {decl.span}")
    return decl.name
