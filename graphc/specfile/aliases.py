"""The names users bring from elsewhere, mapped to graphc's.

difflib's "did you mean" finds typos, not synonyms: `pre_norm` is closest to
`norm` by spelling but means `norm_first`, and `LSTM` (torch's class name) is no
close match of `lstm` at all because difflib compares case. These tables give
the hint a user coming from torch or HF configs needs."""
from __future__ import annotations

from typing import Iterable

# argument names from torch, HF configs and papers -> graphc's (suggested only
# when the layer kind has that argument)
ARG_ALIASES = {
    "pre_norm": "norm_first", "prenorm": "norm_first", "pre_ln": "norm_first", "normalize_before": "norm_first",
    "nhead": "heads", "num_heads": "heads", "n_head": "heads", "num_attention_heads": "heads",
    "num_key_value_heads": "kv_heads", "n_kv_heads": "kv_heads",
    "dim_feedforward": "d_ff", "intermediate_size": "d_ff", "ffn_dim": "d_ff",
    "num_layers": "layers", "n_layers": "layers", "num_hidden_layers": "layers", "n_layer": "layers",
    "layer_norm_eps": "eps", "layer_norm_epsilon": "eps", "norm_eps": "eps", "rms_norm_eps": "eps",
    "hidden_act": "activation", "vocab_size": "num_embeddings", "hidden_dim": "hidden_size",
    "in_dim": "in_features", "out_dim": "out_features", "units": "out_features",
}


def arg_alias_hint(key: str, allowed: Iterable[str]) -> str | None:
    target = ARG_ALIASES.get(key) or ARG_ALIASES.get(key.lower())
    if target and target in set(allowed):
        return f"did you mean '{target}'? (graphc's name for {key})"
    return None


def _squash(name: str) -> str:
    """'nn.MultiheadAttention', 'multihead_attention', 'Multihead-Attention' -> 'multiheadattention'."""
    n = name.strip()
    for prefix in ("torch.nn.", "nn."):
        if n.startswith(prefix):
            n = n[len(prefix):]
    return "".join(c for c in n.lower() if c.isalnum())


def find_kind(name: str, kinds: Iterable[str]) -> str | None:
    """The registered kind a name means, matched without case, underscores or an
    'nn.' prefix (LSTM -> lstm, nn.LayerNorm -> layer_norm); None if none does."""
    want = _squash(name)
    matches = [k for k in kinds if _squash(k) == want]
    return matches[0] if len(matches) == 1 else None
