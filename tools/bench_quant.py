#!/usr/bin/env python
"""int8 benchmark: graphc --quantize int8 against torch export + ONNX Runtime's quantize_dynamic, in one run.

For the MHA, the 6-layer encoder and the 6+6 Transformer (tools/bench_workloads.py's
workloads, tools/bench_baselines.py's torch modules, the same seeded weights), at b1 s128 and b8 s256
(--quick: b1 s16 and b2 s32):

- latency (ORT, interleaved rounds, medians) of graphc float32, graphc int8,
  graphc int8 --target ort, and each torch exporter's model (legacy, dynamo)
  after onnxruntime.quantization.quantize_dynamic (per_channel=True, QInt8
  weights: what users run); ratios against graphc float32 and against the best
  export + quantize_dynamic;
- relative RMS error of each against eager torch float32 on the same inputs:
  sqrt(sum((y - ref)^2) / sum(ref^2));
- compile wall time, each in a fresh process as the user waits for it: the
  `graphc build --quantize int8` command against a script that imports torch,
  loads the weights, exports and runs quantize_dynamic.

Targets (issue 19): int8 <= 0.40x graphc float32 at b1 and <= 0.55x at b8;
<= 0.85x export + quantize_dynamic; error <= 1% or no worse than
quantize_dynamic's; int8 build >= 3x faster than export + quantize.

    python tools/bench_quant.py --quick            # small shapes, legacy exporter only (~2 min on a busy 2-core box)
    python tools/bench_quant.py --json-out q.json  # the full run
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
import bench  # noqa: E402  (tools/bench.py: the harness)
import bench_baselines  # noqa: E402  (the torch modules and their weights)
import bench_workloads  # noqa: E402  (the workloads, their cases and inputs)

ROOT = bench.ROOT
WORKLOADS = ("mha", "encoder", "transformer")

# the export + quantize process, run fresh so its wall time is what a user waits for
_EXPORT_QUANTIZE = r"""
import sys, json, time, warnings
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[1])
import bench_baselines, bench_workloads, torch
from onnxruntime.quantization import QuantType, quantize_dynamic
job = json.loads(sys.argv[2])
torch.set_num_threads(job["threads"])
torch.backends.mha.set_fastpath_enabled(False)
w = bench_workloads.WORKLOADS[job["workload"]]
m = bench_baselines.load_module(w.name, job["weights"])
feeds = bench_workloads.make_inputs(w, bench_workloads.Case("export", job["dims"]))
args = tuple(torch.from_numpy(feeds[a]) for a in w.torch_args)
kw = {"input_names": list(w.torch_args), "output_names": list(w.outputs)}
dynamo = job["exporter"] == "dynamo"
if dynamo:
    from torch.export import Dim
    kw["dynamic_shapes"] = tuple({ax: Dim.DYNAMIC for ax in w.dynamic.get(a, ())} or None for a in w.torch_args)
with torch.no_grad():
    torch.onnx.export(m, args, job["float_path"], dynamo=dynamo, **kw)
quantize_dynamic(job["float_path"], job["path"], per_channel=True, weight_type=QuantType.QInt8)
"""


def cases(name: str, quick: bool) -> list[bench_workloads.Case]:
    shapes = [(1, 16), (2, 32)] if quick else [(1, 128), (8, 256)]
    if name == "transformer":
        return [bench_workloads.Case(f"b{b} s{s}/{s}", {"batch": b, "src_seq": s, "tgt_seq": s}) for b, s in shapes]
    return [bench_workloads.Case(f"b{b} s{s}", {"batch": b, "seq": s}) for b, s in shapes]


def rel_rms(y, ref) -> float:
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    if y.shape != ref.shape:
        return float("inf")
    return float(np.sqrt(np.sum((y - ref) ** 2) / np.sum(ref ** 2)))


def eager(w, npz: str, feeds: dict, threads: int) -> np.ndarray:
    import torch
    torch.set_num_threads(threads)
    torch.backends.mha.set_fastpath_enabled(False)
    m = bench_baselines.load_module(w.name, npz)
    with torch.no_grad():
        out = m(*(torch.from_numpy(feeds[a]) for a in w.torch_args))
    return (out[0] if isinstance(out, tuple) else out).numpy()


def build_graphc(w, npz: str, out: Path, extra: list[str]) -> dict:
    """`graphc build` in a fresh process: its wall time and exit status."""
    r = bench.run_child(["-m", "graphc", "build", str(ROOT / w.spec), "--weights", npz, "-o", str(out), *extra],
                        timeout=600)
    return {"wall_s": r["wall_s"], "rc": r["rc"], "stderr": r["stderr"].strip()[-800:]}


def export_quantize(w, npz: str, exporter: str, dims: dict, tmp: Path, threads: int) -> dict:
    job = {"workload": w.name, "weights": npz, "exporter": exporter, "dims": dims, "threads": threads,
           "float_path": str(tmp / f"{w.name}-{exporter}-{time.monotonic_ns()}.onnx"),
           "path": str(tmp / f"{w.name}-{exporter}-{time.monotonic_ns()}-int8.onnx")}
    script = tmp / "export_quantize.py"
    script.write_text(_EXPORT_QUANTIZE)
    r = bench.run_child([str(script), str(TOOLS), json.dumps(job)], timeout=900)
    res = {"wall_s": r["wall_s"], "rc": r["rc"], "path": job["path"]}
    if r["rc"] != 0:
        tail = r["stderr"].strip().splitlines()
        res["error"] = tail[-1][:300] if tail else f"exit {r['rc']}"
    return res


def bench_workload(name: str, args, tmp: Path, log) -> dict:
    w = bench_workloads.WORKLOADS[name]
    npz = str(tmp / f"{name}.npz")
    np.savez(npz, **bench_baselines.make_weights(name, args.seed))
    res: dict = {"compile": {}, "cases": {}}
    paths = {}
    for label, extra in (("graphc f32", []), ("graphc int8", ["--quantize", "int8"]),
                         ("graphc int8 ort", ["--quantize", "int8", "--target", "ort"])):
        out = tmp / f"{name}-{label.replace(' ', '_')}.onnx"
        res["compile"][label] = build_graphc(w, npz, out, extra)
        paths[label] = str(out)
        log(f"{name}: {label} build {res['compile'][label]['wall_s']:.2f} s (rc {res['compile'][label]['rc']})")
    # the dynamo export has dynamic shapes: one export serves every case; legacy bakes the shape in
    first = cases(name, args.quick)[0]
    if "dynamo" in args.exporters:
        r = export_quantize(w, npz, "dynamo", first.dims if name != "transformer" else w.example, tmp, args.threads)
        res["compile"]["dynamo + quantize_dynamic"] = r
        log(f"{name}: dynamo + quantize_dynamic {r['wall_s']:.2f} s {r.get('error', '')}")
    for case in cases(name, args.quick):
        cands = {k: v for k, v in paths.items() if res["compile"][k]["rc"] == 0}
        if "legacy" in args.exporters:
            r = export_quantize(w, npz, "legacy", case.dims, tmp, args.threads)
            if case.label == first.label:
                res["compile"]["legacy + quantize_dynamic"] = r
            log(f"{name} {case.label}: legacy + quantize_dynamic {r['wall_s']:.2f} s {r.get('error', '')}")
            if r["rc"] == 0:
                cands["legacy + qd"] = r["path"]
        d = res["compile"].get("dynamo + quantize_dynamic")
        if d and d["rc"] == 0:
            cands["dynamo + qd"] = d["path"]
        feeds = bench_workloads.make_inputs(w, case, args.seed)
        ref = eager(w, npz, feeds, args.threads)
        spin = args.spin == "on"
        sessions = {k: bench.session(p, args.threads, spin) for k, p in cands.items()}
        runs = {}
        for k, s in sessions.items():
            names = {i.name for i in s.get_inputs()}
            fd = {n: v for n, v in feeds.items() if n in names}
            runs[k] = (lambda s=s, fd=fd: s.run(None, fd))
        times, outs = bench.time_candidates(runs, args.warmup, args.reps, solo=(), lead=(),
                                            pause=0.05 if spin else 0.0)
        med = {k: statistics.median(v) for k, v in times.items()}
        errs = {k: rel_rms(outs[k][0], ref) for k in outs}
        base = med.get("graphc f32")
        qd = [med[k] for k in ("legacy + qd", "dynamo + qd") if k in med]
        row = {"ms": med, "rel_rms_vs_eager": errs,
               "vs_f32": {k: v / base for k, v in med.items()} if base else {},
               "vs_best_export_qd": {k: v / min(qd) for k, v in med.items()} if qd else {}}
        res["cases"][case.label] = row
        log(f"{name} {case.label}: " + ", ".join(f"{k} {v:.2f} ms ({errs[k]:.2%})" for k, v in med.items()))
    return res


def markdown(report: dict) -> str:
    lines = [f"int8 benchmark ({'quick' if report['config']['quick'] else 'full'}; {report['config']['threads']} "
             f"threads, {report['config']['reps']} interleaved runs, load {report['machine']['loadavg_start'][0]:.1f})", "",
             "| workload | case | candidate | ms | x graphc f32 | x best export+qd | rel RMS vs eager |",
             "|---|---|---|---:|---:|---:|---:|"]
    for name, r in report["workloads"].items():
        for label, row in r["cases"].items():
            for k, ms in row["ms"].items():
                lines.append(f"| {name} | {label} | {k} | {ms:.2f} | {row['vs_f32'].get(k, float('nan')):.3f} | "
                             f"{row['vs_best_export_qd'].get(k, float('nan')):.3f} | {row['rel_rms_vs_eager'][k]:.3%} |")
    lines += ["", "| workload | build (fresh process) | wall s | x graphc int8 |", "|---|---|---:|---:|"]
    for name, r in report["workloads"].items():
        g = r["compile"]["graphc int8"]["wall_s"]
        for k, c in r["compile"].items():
            err = f" ({c['error']})" if c.get("error") else ""
            lines.append(f"| {name} | {k}{err} | {c['wall_s']:.2f} | {c['wall_s'] / g:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small shapes, few runs, legacy exporter only")
    p.add_argument("--only", help=f"comma-separated workloads (default {','.join(WORKLOADS)})")
    p.add_argument("--reps", type=int, help="interleaved timed runs per candidate (default 20; quick 5)")
    p.add_argument("--warmup", type=int, help="warm-up runs (default 3; quick 1)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--exporters", help="dynamo,legacy (default both; quick: legacy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spin", choices=("off", "on"), default="off",
                   help="ORT's worker threads busy-wait between operators (on: ORT's default, what a user's "
                        "session does; each timed run then follows a 0.05 s pause so the previous candidate's "
                        "spinning workers are idle) or block (off, the default: this benchmark's protocol "
                        "since it began; it costs graphs of many small operators, int8 ones most)")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    args.reps = args.reps or (5 if args.quick else 20)
    args.warmup = args.warmup or (1 if args.quick else 3)
    args.exporters = (args.exporters or ("legacy" if args.quick else "dynamo,legacy")).split(",")
    names = args.only.split(",") if args.only else list(WORKLOADS)
    bad = [n for n in names if n not in WORKLOADS] + [e for e in args.exporters if e not in ("dynamo", "legacy")]
    if bad:
        p.error(f"unknown workload or exporter: {', '.join(bad)}")
    import onnxruntime
    import os
    import torch
    t0 = time.perf_counter()

    def log(msg):
        print(f"# {time.perf_counter() - t0:6.1f}s {msg}", file=sys.stderr, flush=True)

    report = {"config": vars(args), "machine": {"loadavg_start": list(os.getloadavg()), "torch": torch.__version__,
                                                "onnxruntime": onnxruntime.__version__}, "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="graphc-bench-quant-") as td:
        for name in names:
            report["workloads"][name] = bench_workload(name, args, Path(td), log)
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["seconds"] = time.perf_counter() - t0
    print(markdown(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
