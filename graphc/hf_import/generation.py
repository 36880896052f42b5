"""The ``generation:`` section of an imported spec: how the checkpoint generates.

It names the inputs as the imported spec declares them (the tokens, their
padding mask, and for encoder-decoders the source and its mask) and the
special ids transformers' ``generate()`` would use. Ids come from
``generation_config.json`` first (what ``generate()`` reads), then
``config.json``. Where transformers fills a gap, the section does the same
and says so: no ``pad_token_id`` means padding with ``eos`` (transformers'
``generate()`` sets pad = eos then), an encoder-decoder without
``decoder_start_token_id`` starts from ``bos``.

The section is left out, with a comment saying why, when the ids cannot make
a valid one (an id outside the vocabulary, an encoder-decoder with no first
decoder token): a plain build checks the section too, so a wrong one would
refuse the whole spec.
"""
from __future__ import annotations

import json

from ..json_files import read_json
from .common import MAX_CONFIG_BYTES, Config

# decoding settings a checkpoint may carry that the section cannot say (graphc
# generate takes sampling and beam settings as options; the others it lacks)
# generation, with transformers' defaults (older config.json files store those too: not listed)
OTHER_SETTINGS = {"forced_bos_token_id": None, "forced_eos_token_id": None, "no_repeat_ngram_size": 0,
                  "bad_words_ids": None, "min_length": 0, "repetition_penalty": 1.0, "num_beams": 1,
                  "length_penalty": 1.0, "early_stopping": False, "do_sample": False, "temperature": 1.0,
                  "top_k": 50, "top_p": 1.0}


def _settings(cfg: Config) -> tuple[dict, dict]:
    """(generation_config.json, config.json) as dicts ({} when absent)."""
    gen = {}
    if (cfg.dir / "generation_config.json").is_file():
        g = read_json(cfg.dir / "generation_config.json", MAX_CONFIG_BYTES, "generation config")
        gen = g if isinstance(g, dict) else {}
    return gen, cfg.data


def _lookup(key: str, gen: dict, config: dict) -> tuple[object, str]:
    """(value, the file it came from) of ``key``: generation_config.json first."""
    for data, where in ((gen, "generation_config.json"), (config, "config.json")):
        if data.get(key) is not None:
            return data[key], where
    return None, ""


def _is_id(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def generation_section(cfg: Config, vocab: int, tokens: str, tokens_mask: str, logits: str,
                       source: str | None = None, source_mask: str | None = None) -> list[str]:
    """The section's lines (or a comment saying why there is none)."""
    gen, config = _settings(cfg)
    lines = ["generation:                          # graphc build THIS.yaml --weights DIR --kv-cache -o BUNDLE",
             f"  tokens: {tokens}",
             f"  tokens_mask: {tokens_mask}              # 1 = real token: the bundle's attention_mask"]
    if source is not None:
        lines += [f"  source: {source}                    # the encoder's input",
                  f"  source_masks: {{{source_mask}: source_attention_mask}}   # int64, 1 = real token"]
    lines.append(f"  logits: {logits}")
    problems, start = [], None
    bos, where = _lookup("bos_token_id", gen, config)
    if _is_id(bos):
        lines.append(f"  bos: {bos}                           # bos_token_id ({where})")
    eos, eos_where = _lookup("eos_token_id", gen, config)
    eos_ids = [e for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
    if eos_ids and not all(_is_id(e) for e in eos_ids):
        problems.append(f"eos_token_id {eos!r} is not a token id")
        eos_ids = []
    if eos_ids:
        text = str(eos_ids[0]) if len(eos_ids) == 1 else "[" + ", ".join(map(str, eos_ids)) + "]"
        lines.append(f"  eos: {text}                           # eos_token_id ({eos_where})")
    pad, where = _lookup("pad_token_id", gen, config)
    if _is_id(pad):
        lines.append(f"  pad: {pad}                           # pad_token_id ({where})")
    elif eos_ids:
        lines.append(f"  pad: {eos_ids[0]}                           # no pad_token_id: eos, as transformers' "
                     "generate() pads then")
    else:
        lines.append("  pad: 0                           # no pad_token_id nor eos_token_id: 0 (padding is "
                     "masked; any id would do)")
    if source is not None:
        start, where = _lookup("decoder_start_token_id", gen, config)
        if _is_id(start):
            lines.append(f"  decoder_start: {start}                 # decoder_start_token_id ({where}): the "
                         "decoder's first token")
        elif not _is_id(bos):
            problems.append("neither decoder_start_token_id nor bos_token_id is set, so the decoder has no first "
                            "token")
    used = [int(x) for x in [bos, start, pad] + eos_ids if _is_id(x)]
    outside = sorted({x for x in used if x >= vocab})
    if outside:
        problems.append(f"token id(s) {', '.join(map(str, outside))} lie outside the vocabulary of {vocab}")
    if problems:
        return ["# no generation: section (graphc build --kv-cache needs one): " + "; ".join(problems) + ".",
                "# Write one by hand (docs/generation.md); the section it would have been:"] + \
               ["# " + ln for ln in lines]
    # a string is shown JSON-quoted: a line break in it would end the comment and inject YAML
    other = [f"{k}: {json.dumps(v) if isinstance(v, str) else v}" for k, default in OTHER_SETTINGS.items() for v in [_lookup(k, gen, config)[0]]
             if v is not None and v != default]
    if other:
        lines.append("  # the checkpoint's generation_config also sets " + ", ".join(other) + ";")
        lines.append("  # transformers' generate() applies these, graphc generate takes its settings as options")
    return lines
