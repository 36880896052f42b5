"""Encoder-decoder generation: one file or two? Measured, side by side in one run.

Three ways to run a cached translation decoder (the same weights, the same
cached self-attention; they differ only in what runs at every step):

- two files (what `graphc build --kv-cache` writes): encoder.onnx runs once per
  source and returns the memory's cross-attention keys/values for every decoder
  layer; decoder.onnx reads them at each step;
- one file, memory in: the decoder takes the encoder output and projects it to
  cross-attention keys/values at every step (the cut at the memory);
- one file, source in: a single model re-runs the whole encoder at every step.

Prints the encoder time, the median time per decode step (batch 1 and 4,
source 32 tokens, steps 1..N) and the ratios. Usage:

    python tools/bench_encdec_split.py [--spec specs/translation_base.yaml] [--steps 48] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from graphc.expand import build_graph  # noqa: E402
from graphc.ir.partition import split_by_inputs  # noqa: E402
from graphc.lower import lower, serialize  # noqa: E402
from graphc.specfile import load_spec  # noqa: E402
from graphc.pipeline import Options, run_passes  # noqa: E402


def _session(model: bytes, threads: int):
    import onnxruntime as ort
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    return ort.InferenceSession(model, o, providers=["CPUExecutionProvider"])


def build_variants(spec_path: str, threads: int):
    spec = load_spec(spec_path)
    g = build_graph(spec, None, kv_cache=True)
    run_passes(g, Options())
    gen, cache = spec.generation, g.generation
    name = lambda k, info: f"encoder_out.{k}"                       # noqa: E731
    enc2, dec2, _ = split_by_inputs(g, {gen.source}, name)
    enc1, dec1, _ = split_by_inputs(g, {gen.source}, name, late=lambda op: "multihead_attn" in op.layer)
    return {
        "two files": (_session(serialize(lower(enc2)), threads), _session(serialize(lower(dec2)), threads)),
        "one file, memory in": (_session(serialize(lower(enc1)), threads), _session(serialize(lower(dec1)), threads)),
        "one file, source in": (None, _session(serialize(lower(g)), threads)),
    }, cache, gen


def decode(variant, cache, gen, src, steps):
    enc, dec = variant
    b = src.shape[0]
    feeds = {}
    t0 = time.perf_counter()
    if enc is not None:
        names = [o.name for o in enc.get_outputs()]
        feeds.update(zip(names, enc.run(names, {gen.source: src})))
    else:
        feeds[gen.source] = src
    t_enc = time.perf_counter() - t0
    for e in cache.entries:
        feeds[e.past_key] = np.zeros((b, e.kv_heads, 0, e.head_dim), np.float32)
        feeds[e.past_value] = np.zeros((b, e.kv_heads, 0, e.head_dim), np.float32)
    out_names = [o.name for o in dec.get_outputs()]
    times = []
    ids = np.full((b, 1), 1, np.int64)
    for t in range(steps):
        feeds.update(input_ids=ids, attention_mask=np.ones((b, t + 1), np.int64), position_ids=np.full((b, 1), t))
        t0 = time.perf_counter()
        out = dict(zip(out_names, dec.run(out_names, feeds)))
        times.append(time.perf_counter() - t0)
        ids = out["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
        for e in cache.entries:
            feeds[e.past_key], feeds[e.past_value] = out[e.present_key], out[e.present_value]
    return t_enc, times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="specs/translation_base.yaml")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--src-len", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    variants, cache, gen = build_variants(args.spec, args.threads)
    rng = np.random.default_rng(0)
    for batch in (1, 4):
        src = rng.integers(3, 1000, (batch, args.src_len))
        step_ms = {k: [] for k in variants}
        enc_ms = {k: [] for k in variants}
        for _ in range(args.repeats):                 # interleaved, so machine noise hits all alike
            for k, v in variants.items():
                decode(v, cache, gen, src, 3)         # warm-up
                t_enc, times = decode(v, cache, gen, src, args.steps)
                enc_ms[k].append(t_enc * 1e3)
                step_ms[k].append(statistics.median(times[1:]) * 1e3)
        base = statistics.median(step_ms["two files"])
        print(f"batch {batch}, source {args.src_len} tokens, steps 1..{args.steps - 1}, {args.threads} threads")
        for k in variants:
            s = statistics.median(step_ms[k])
            print(f"  {k:<22} encoder {statistics.median(enc_ms[k]):7.2f} ms   per step {s:7.2f} ms   "
                  f"({s / base:.2f}x two files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
