"""Time one cached decode step of generation models side by side, and say where it goes.

    python tools/profile_decode.py DIR_OR_ONNX [MORE ...] [--batch 1,4] [--past 32,150]
                                   [--threads 2] [--reps 30] [--profile]

Each argument is a graphc bundle directory (its decoder.onnx), an onnxruntime-genai
model directory (its model.onnx, read from genai_config.json) or a .onnx file. Each
model gets one step of one new token per row after ``past`` cached tokens (random
caches, all-real attention mask, positions past..past+seq-1); the models run in
interleaved rounds (ABAB.., the order rotating) so machine load hits all alike; the
median per step is printed, and in parentheses the 10th percentile and the median
CPU time of the process per step (both threads; on a shared machine these move far
less than the median wall time). ``--profile`` also runs ORT's profiler for each model
and prints the kernel time per op type (the share of the step each op type takes).

Inputs are fed by name, so the ecosystem's layouts all work: ``input_ids``,
``attention_mask`` [B, past + seq], ``position_ids`` (when the model has it),
``past_key_values.{i}.key|value`` [B, kv_heads, past, head_dim], and onnxruntime-genai's
int32 attention masks. Times are ORT session.run wall time with 2 intra-op threads,
no spinning (docs/benchmarks.md, "How each number is taken").
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort

NP = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
      "tensor(int32)": np.int32}


def model_path(arg: str) -> Path:
    p = Path(arg)
    if p.suffix == ".onnx":
        return p
    if (p / "graphc_generation.json").is_file():
        return p / json.loads((p / "graphc_generation.json").read_text())["decoder"]["file"]
    if (p / "genai_config.json").is_file():
        cfg = json.loads((p / "genai_config.json").read_text())
        return p / cfg["model"]["decoder"]["filename"]
    raise SystemExit(f"{arg}: not a bundle, a genai model directory or a .onnx file")


def session(path: Path, threads: int, profile_dir: str | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, path.parent.name + "_" + path.stem)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def head_dim(path: Path) -> int | None:
    """onnxruntime-genai leaves the cache's head_dim symbolic: its config has it."""
    cfg = path.parent / "genai_config.json"
    return json.loads(cfg.read_text())["model"]["decoder"].get("head_size") if cfg.is_file() else None


def feeds(sess: ort.InferenceSession, batch: int, past: int, seq: int = 1, seed: int = 0,
          dim: int | None = None) -> dict:
    out = {}
    shared = any(i.name == "attention_mask" and i.shape[1] == "total_seq" for i in sess.get_inputs())
    for i in sess.get_inputs():
        dt = NP[i.type]
        n = i.name
        rng = np.random.default_rng([seed, zlib.crc32(n.encode())])     # by name: the same in every model
        if n == "input_ids":
            out[n] = rng.integers(3, 1000, (batch, seq)).astype(dt)
        elif n == "attention_mask":
            out[n] = np.ones((batch, past + seq), dt)
        elif n == "position_ids":
            out[n] = np.broadcast_to(np.arange(past, past + seq, dtype=dt), (batch, seq)).copy()
        elif n.startswith("past_key_values") or n.startswith("past."):
            heads, d = i.shape[1], i.shape[3] if isinstance(i.shape[3], int) else dim
            # a graphc --cache-layout shared bundle's caches are buffers longer than what is filled
            length = past + seq + 16 if shared else past
            out[n] = (rng.standard_normal((batch, heads, length, d)) * 0.5).astype(dt)
        else:
            raise SystemExit(f"{n}: no feed rule for this input ({i.type} {i.shape})")
    return out


def op_profile(path: Path, threads: int, batch: int, past: int, runs: int) -> dict[str, float]:
    """Kernel microseconds per op type per step, from ORT's profiler."""
    with tempfile.TemporaryDirectory() as d:
        sess = session(path, threads, d)
        f = feeds(sess, batch, past, dim=head_dim(path))
        for _ in range(3):
            sess.run(None, f)
        for _ in range(runs):
            sess.run(None, f)
        trace = json.loads(Path(sess.end_profiling()).read_text())
    per = collections.Counter()
    for ev in trace:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            per[ev["args"]["op_name"]] += ev["dur"]
    return {k: v / (runs + 3) for k, v in per.most_common()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--names", default=None, help="comma-separated labels, one per model")
    ap.add_argument("--batch", default="1,4")
    ap.add_argument("--past", default="32,150")
    ap.add_argument("--seq", type=int, default=1, help="new tokens per row in the step (the prompt: --past 0 --seq 32)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--error-vs", default=None, metavar="NAME",
                    help="also print each model's logits error against this one (same inputs: the models "
                         "must share weights; relative RMS and max abs, at each batch and past)")
    ap.add_argument("--json-out", default=None)
    a = ap.parse_args(argv)
    paths = [model_path(m) for m in a.models]
    names = a.names.split(",") if a.names else [str(m) for m in a.models]
    sessions = [session(p, a.threads) for p in paths]
    results = []
    print(f"load average {os.getloadavg()[0]:.1f}; {a.threads} threads; median (10th percentile; median CPU) ms per step "
          f"over {a.reps} interleaved rounds", file=sys.stderr)
    header = "| batch | past | " + " | ".join(names) + " |"
    print(header)
    print("|---|---|" + "---:|" * len(names))
    for batch in map(int, a.batch.split(",")):
        for past in map(int, a.past.split(",")):
            fs = [feeds(s, batch, past, a.seq, dim=head_dim(p)) for s, p in zip(sessions, paths)]
            for s, f in zip(sessions, fs):
                for _ in range(3):
                    s.run(None, f)
            times = [[] for _ in sessions]
            cpu = [[] for _ in sessions]
            for r in range(a.reps):
                order = list(range(len(sessions)))
                order = order[r % len(order):] + order[:r % len(order)]
                for k in order:
                    c0, t0 = time.process_time(), time.perf_counter()
                    sessions[k].run(None, fs[k])
                    times[k].append((time.perf_counter() - t0) * 1e3)
                    cpu[k].append((time.process_time() - c0) * 1e3)
            med = [statistics.median(t) for t in times]
            low = [float(np.percentile(t, 10)) for t in times]
            cpu_med = [statistics.median(t) for t in cpu]
            print(f"| {batch} | {past} | " + " | ".join(f"{m:.2f} ({lo:.2f}; cpu {c:.2f})"
                                                      for m, lo, c in zip(med, low, cpu_med)) + " |", flush=True)
            results.append({"batch": batch, "past": past, "ms": dict(zip(names, med)), "p10_ms": dict(zip(names, low)),
                            "cpu_ms": dict(zip(names, cpu_med)),
                            "min_ms": dict(zip(names, (min(t) for t in times)))})
    if a.error_vs:
        ref = names.index(a.error_vs)
        print(f"\nlogits against {a.error_vs} ({a.seq} new tokens; relative RMS, max abs):")
        for batch in map(int, a.batch.split(",")):
            for past in map(int, a.past.split(",")):
                outs = [s.run(["logits"], feeds(s, batch, past, a.seq, dim=head_dim(p)))[0].astype(np.float64)
                        for s, p in zip(sessions, paths)]
                cells = []
                for name, o in zip(names, outs):
                    d = o - outs[ref]
                    rel = float(np.sqrt((d * d).sum() / (outs[ref] ** 2).sum()))
                    cells.append(f"{name} {rel:.3%} {np.abs(d).max():.3g}")
                    results.append({"error_vs": a.error_vs, "model": name, "batch": batch, "past": past,
                                    "rel_rms": rel, "max_abs": float(np.abs(d).max())})
                print(f"  batch {batch} past {past}: " + "; ".join(cells))
    if a.profile:
        for name, p in zip(names, paths):
            for batch in map(int, a.batch.split(",")):
                past = int(a.past.split(",")[0])
                per = op_profile(p, a.threads, batch, past, max(10, a.reps // 2))
                total = sum(per.values())
                print(f"\n{name}, batch {batch}, past {past}: kernel time {total / 1e3:.2f} ms per step")
                for op, us in list(per.items())[:14]:
                    print(f"  {op:32s} {us / 1e3:7.3f} ms  {100 * us / total:5.1f}%")
                results.append({"profile": name, "batch": batch, "past": past, "us_per_op": per})
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
