#!/usr/bin/env python
"""How should a projection tied to an embedding table read the table? Three ONNX forms of
the paper's base-model generator (x [B, S, 512] -> logits [B, S, 37000], W [37000, 512]),
timed on ONNX Runtime CPU in one run, interleaved round by round (docs/benchmarks.md):

  copy       MatMul(x, W_t) with a second, pre-transposed copy W_t stored (graphc before: 2 tables)
  transpose  MatMul(x, Transpose(W)) on the one stored table (ORT may fold or fuse the Transpose)
  gemm       Reshape x to [B*S, 512], Gemm(x, W, transB=1), Reshape back (one table)

    python tools/bench_tied.py [--reps 20] [--threads 2]

Prints medians (ms) and ratios against `copy`, plus each session's resident-memory growth.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def _model(form: str, d: int, vocab: int, w: np.ndarray) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", d])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "S", vocab])
    inits, nodes = [], []
    if form == "copy":
        inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), "w_t"))
        nodes.append(helper.make_node("MatMul", ["x", "w_t"], ["y"]))
    elif form == "transpose":
        inits.append(numpy_helper.from_array(w, "w"))
        nodes += [helper.make_node("Transpose", ["w"], ["w_t"], perm=[1, 0]),
                  helper.make_node("MatMul", ["x", "w_t"], ["y"])]
    else:
        inits += [numpy_helper.from_array(w, "w"),
                  numpy_helper.from_array(np.array([-1, d], np.int64), "flat"),
                  numpy_helper.from_array(np.array([0, 0, vocab], np.int64), "back")]
        nodes += [helper.make_node("Shape", ["x"], ["xs"]),
                  helper.make_node("Reshape", ["x", "flat"], ["x2"]),           # [B, S, d] -> [B*S, d]
                  helper.make_node("Gemm", ["x2", "w"], ["y2"], transB=1),     # [B*S, vocab]
                  helper.make_node("Slice", ["xs", "zero", "two"], ["bs"]),
                  helper.make_node("Concat", ["bs", "v"], ["shape3"], axis=0),
                  helper.make_node("Reshape", ["y2", "shape3"], ["y"])]         # [B*S, vocab] -> [B, S, vocab]
        inits += [numpy_helper.from_array(np.array([0], np.int64), "zero"),
                  numpy_helper.from_array(np.array([2], np.int64), "two"),
                  numpy_helper.from_array(np.array([vocab], np.int64), "v")]
    g = helper.make_graph(nodes, form, [x], [y], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    import onnxruntime as ort
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=37000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((a.vocab, a.d)) * 0.05).astype(np.float32)
    forms = ("copy", "transpose", "gemm")
    sessions, mem = {}, {}
    for f in forms:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        opts.log_severity_level = 3
        before = _rss()
        sessions[f] = ort.InferenceSession(_model(f, a.d, a.vocab, w), opts, providers=["CPUExecutionProvider"])
        mem[f] = (_rss() - before) / 1e6
    print(f"| shape | {' | '.join(forms)} | transpose/copy | gemm/copy |")
    print("|---|" + "---:|" * (len(forms) + 2))
    for b, s in ((1, 1), (1, 128), (8, 128)):
        x = rng.standard_normal((b, s, a.d)).astype(np.float32)
        want = x @ w.T
        times = {f: [] for f in forms}
        for f in forms:
            got = sessions[f].run(None, {"x": x})[0]
            assert np.abs(got - want).max() < 1e-3, f
            for _ in range(3):
                sessions[f].run(None, {"x": x})
        for _ in range(a.reps):
            for f in forms:                       # interleaved: drift hits every form alike
                t0 = time.perf_counter()
                sessions[f].run(None, {"x": x})
                times[f].append(time.perf_counter() - t0)
        med = {f: statistics.median(t) * 1e3 for f, t in times.items()}
        print(f"| b{b} s{s} | " + " | ".join(f"{med[f]:.2f}" for f in forms) +
              f" | {med['transpose'] / med['copy']:.2f} | {med['gemm'] / med['copy']:.2f} |")
    print("session memory growth (MB): " + ", ".join(f"{f} {mem[f]:.0f}" for f in forms))


if __name__ == "__main__":
    main()
