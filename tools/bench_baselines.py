"""The alternative the benchmarks compare graphc with: the torch.nn module each workload's
spec is the equivalent of (exported with torch.onnx.export, or run eager), and the seeded
weights both sides load.

torch is imported inside the functions: the harness process stays free of torch (its
import would weigh on the memory and time measured), only workers and children load it.
"""
from __future__ import annotations

import numpy as np

from bench_workloads import D, FF, HEADS, RNN_H, RNN_IN


def torch_module(name: str, device=None):
    """The torch.nn module a workload's spec is the equivalent of; its attribute
    (attn, encoder, transformer, lstm, gru) is the spec's parameter prefix."""
    import torch
    from torch import nn

    def causal(n, like):
        return torch.ones(n, n, dtype=torch.bool, device=like.device).triu(1)   # True = masked

    class Holder(nn.Module):          # the attribute name is the state_dict prefix
        def __init__(self, **modules):
            super().__init__()
            for attr, module in modules.items():
                setattr(self, attr, module)

    class MHA(Holder):
        def forward(self, x, key_padding_mask):
            return self.attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)[0]

    class MHACausal(Holder):
        def forward(self, x):
            return self.attn(x, x, x, attn_mask=causal(x.shape[1], x), is_causal=True, need_weights=False)[0]

    class Encoder(Holder):
        def forward(self, src, src_key_padding_mask):
            return self.encoder(src, src_key_padding_mask=src_key_padding_mask)

    class Transformer(Holder):
        def forward(self, src, tgt, src_key_padding_mask, tgt_key_padding_mask):
            return self.transformer(src, tgt, tgt_mask=causal(tgt.shape[1], tgt), tgt_is_causal=True,
                                    src_key_padding_mask=src_key_padding_mask,
                                    tgt_key_padding_mask=tgt_key_padding_mask,
                                    memory_key_padding_mask=src_key_padding_mask)

    class LSTM(Holder):
        def forward(self, x):
            y, (h, c) = self.lstm(x)
            return y, h, c

    class GRU(Holder):
        def forward(self, x, h0):
            return self.gru(x, h0)

    def lstm(bidirectional):
        return LSTM(lstm=nn.LSTM(RNN_IN, RNN_H, 2, batch_first=True, bidirectional=bidirectional))

    make = {"mha": lambda: MHA(attn=nn.MultiheadAttention(D, HEADS, batch_first=True)),
            "mha_causal": lambda: MHACausal(attn=nn.MultiheadAttention(D, HEADS, batch_first=True)),
            "encoder": lambda: Encoder(encoder=nn.TransformerEncoder(
                nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True), 6)),
            "transformer": lambda: Transformer(transformer=nn.Transformer(D, HEADS, 6, 6, FF, dropout=0.0,
                                                                          batch_first=True)),
            "lstm": lambda: lstm(True), "lstm_uni": lambda: lstm(False),
            "gru": lambda: GRU(gru=nn.GRU(RNN_IN, RNN_H, 2, batch_first=True))}[name]
    with torch.device(device or "cpu"):
        return make().eval()


def make_weights(name: str, seed: int) -> dict[str, np.ndarray]:
    """Seeded weights in state_dict names. TransformerEncoder deep-copies one layer and
    MHA starts with zero biases: every tensor is redrawn so that a swapped layer or a
    dropped bias shows in the parity numbers."""
    import torch
    torch.manual_seed(seed)
    m = torch_module(name)
    out = {}
    with torch.no_grad():
        for key, p in m.state_dict().items():
            if name not in ("lstm", "lstm_uni", "gru"):      # RNN defaults already differ per tensor
                if "norm" in key:
                    p.copy_((1.0 if key.endswith("weight") else 0.0) + 0.1 * torch.randn_like(p))
                elif p.dim() > 1:
                    bound = (6.0 / (p.shape[0] + p.shape[1])) ** 0.5
                    p.uniform_(-bound, bound)
                else:
                    p.uniform_(-0.1, 0.1)
            out[key] = p.detach().numpy().copy()
    return out


def load_module(name: str, npz: str):
    """The torch module with the benchmark's weights (built on the meta device: no random init)."""
    import torch
    m = torch_module(name, device="meta")
    with np.load(npz) as z:
        m.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files}, assign=True)
    return m.eval()
