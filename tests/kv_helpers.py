"""Helpers of the KV-cache tests: build a bundle from spec text, and drive its
decoder step by step the way a decoding loop does (prompt first, then one token
at a time, feeding each step's present caches back as the next step's past)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from graphc.expand import build_graph
from graphc.generation.bundle_write import build_bundle
from graphc.specfile import load_spec

from helpers import compile_text, random_weights


def session(path_or_bytes):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes), opts,
                                providers=["CPUExecutionProvider"])


def build_both(tmp_path: Path, text: str, seed: int = 0, scale: float = 0.15, opset: int = 17):
    """(plain model bytes, bundle directory, config, weights): the same spec and weights,
    compiled without and with --kv-cache. Weights N(0, scale^2) keep logits O(1), so an
    absolute 1e-5 is a meaningful float32 tolerance."""
    spec_path = tmp_path / "model.yaml"
    spec_path.write_text(text)
    weights = random_weights(build_graph(load_spec(spec_path)), seed, scale)
    plain, _, _ = compile_text(text, dict(weights), opset=opset)
    out = tmp_path / "bundle"
    config = build_bundle(spec_path, out, dict(weights), opset=opset, verify=True)
    return plain, out, config, weights


def empty_cache(config: dict, batch: int) -> dict:
    feeds = {}
    for e in config["cache"]:
        for k in ("past_key", "past_value"):
            feeds[e[k]] = np.zeros((batch, e["kv_heads"], 0, e["head_dim"]), np.float32)
    return feeds


class Decoder:
    """One cached decoder session plus its cache, for step-by-step runs."""

    def __init__(self, bundle: Path, config: dict, batch: int, extra: dict | None = None):
        self.s = session(bundle / config["decoder"]["file"])
        self.names = [o.name for o in self.s.get_outputs()]
        self.config = config
        self.past = empty_cache(config, batch)
        self.extra = extra or {}
        self.mask = np.zeros((batch, 0), np.int64)

    def step(self, ids: np.ndarray, positions: np.ndarray, real: np.ndarray | None = None) -> np.ndarray:
        real = np.ones(ids.shape, np.int64) if real is None else real.astype(np.int64)
        self.mask = np.concatenate([self.mask, real], axis=1)
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": self.mask,
                 "position_ids": positions.astype(np.int64), **self.past, **self.extra}
        out = dict(zip(self.names, self.s.run(self.names, feeds)))
        for e in self.config["cache"]:
            self.past[e["past_key"]] = out[e["present_key"]]
            self.past[e["past_value"]] = out[e["present_value"]]
        return out["logits"]


def read_config(bundle: Path) -> dict:
    return json.loads((bundle / "graphc_generation.json").read_text())
