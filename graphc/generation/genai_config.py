"""``genai_config.json``: the same decoder-only bundle, run by onnxruntime-genai.

onnxruntime-genai reads a ``genai_config.json`` beside the model (its format:
``src/config.cpp`` and the model builder's ``make_genai_config`` in
``src/python/py/models/builders/base.py``). A graphc decoder already uses the
names genai expects (``input_ids``, ``attention_mask``, ``position_ids``,
``past_key_values.%d.key|value`` in, ``logits`` and ``present.%d.key|value``
out), so the config only maps the bundle's facts onto genai's fields:

- ``type: "decoder"``, genai's generic decoder-only LLM;
- ``past_present_share_buffer``: false for the default cache layout (graphc's
  decoder concatenates past and new keys: a present is past_len + seq long), true
  for ``--cache-layout shared`` bundles, whose GroupQueryAttention writes into a
  preallocated max-length buffer as genai's own models do;
- ``num_key_value_heads`` / ``head_size`` from the cache entries, which genai
  needs to be the same in every layer (otherwise no config is written);
- ``num_attention_heads`` / ``hidden_size`` (heads x head_size): from the cache
  entries' ``heads`` (the layer's query heads, written since 2026-12-05; a
  grouped-query model has more query than kv heads), else the config's optional
  ``heads``, else the kv-head count (older bundles). genai 0.18 reads them only
  for inputs_embeds models and cross-attention caches (neither applies; a run with
  them set to nonsense gives the same ids), but other readers of the file take
  them as the model's facts.

Encoder-decoder bundles get no genai config (genai's only encoder-decoder
types are Whisper and Marian exports of its own layout).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

GENAI_CONFIG_NAME = "genai_config.json"
DEFAULT_CONTEXT = 2048          # when the model's positions are unbounded (RoPE without a table limit)


def genai_config(gen_config: dict) -> dict | None:
    """The genai_config.json dict for a graphc_generation.json dict, or None when
    onnxruntime-genai cannot run the bundle (encoder-decoder; layers whose caches
    differ in shape)."""
    if gen_config.get("architecture") != "decoder-only":
        return None
    cache = gen_config.get("cache") or []
    shapes = {(c["kv_heads"], c["head_dim"]) for c in cache}
    if len(shapes) != 1:
        return None
    (kv_heads, head_dim), = shapes
    names = [(c["past_key"], c["past_value"], c["present_key"], c["present_value"]) for c in cache]
    if names != [(f"past_key_values.{i}.key", f"past_key_values.{i}.value", f"present.{i}.key",
                  f"present.{i}.value") for i in range(len(cache))]:
        return None                 # genai addresses the caches by a %d template only
    per_layer = {c.get("heads") for c in cache}
    heads = (per_layer.pop() if len(per_layer) == 1 and None not in per_layer else None) \
        or gen_config.get("heads") or kv_heads
    eos = gen_config.get("eos")
    eos_list = [] if eos is None else (list(eos) if isinstance(eos, list) else [eos])
    pad = gen_config["pad"]
    context = gen_config.get("max_positions") or DEFAULT_CONTEXT
    bos = gen_config.get("bos")
    return {
        "model": {
            "bos_token_id": bos if bos is not None else pad,
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": gen_config["decoder"]["file"],
                "head_size": head_dim,
                "hidden_size": heads * head_dim,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": heads,
                "num_hidden_layers": len(cache),
                "num_key_value_heads": kv_heads,
            },
            "eos_token_id": eos_list[0] if len(eos_list) == 1 else eos_list,
            "pad_token_id": pad,
            "type": "decoder",
            "vocab_size": gen_config["vocab_size"],
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
            "max_length": context, "min_length": 0, "no_repeat_ngram_size": 0, "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": gen_config.get("cache_layout") == "shared", "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }


def write_genai_config(directory: str | os.PathLike, gen_config: dict) -> bool:
    """Write DIR/genai_config.json when the bundle can run in onnxruntime-genai.
    Called by the bundle writer inside its temporary directory (the bundle appears
    whole or not at all), so a plain write is enough here."""
    cfg = genai_config(gen_config)
    if cfg is None:
        return False
    Path(directory, GENAI_CONFIG_NAME).write_text(json.dumps(cfg, indent=1) + "\n")
    return True
