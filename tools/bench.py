#!/usr/bin/env python
"""graphc against what users would pick instead: torch.onnx.export (the dynamo exporter and
the legacy dynamo=False one) and PyTorch eager, on the same weights, in one run.

    python tools/bench.py --json-out bench.json            # full run (~6 min on 2 cores)
    python tools/bench.py --quick --json-out /tmp/q.json   # tiny inputs, legacy exporter only (< 60 s)
    python tools/bench.py --only encoder,gru --reps 10

Measures compile time and memory (fresh processes), ONNX Runtime CPU latency (candidates
interleaved round by round), GFLOP/s against a single MatMul, and parity with eager. How
each number is taken, and the results: docs/benchmarks.md. Ratios are graphc / alternative
(below 1: graphc is faster or smaller); only same-run ratios mean something on a shared machine.
"""
from __future__ import annotations

import argparse
import compileall
import contextlib
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))    # workers run this file through runpy.run_path
from bench_baselines import load_module, make_weights  # noqa: E402
from bench_report import fmt, markdown, ratio, targets  # noqa: E402
from bench_workloads import WORKLOADS, Case, Workload, flops, make_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MATMUL_REF_SHAPE, MATMUL_REF_QUICK = (2048, 512, 2048), (256, 512, 512)   # the encoder's FFN shape at b8 s256


# ----------------------------------------------------------------- child processes

def _rss_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        return next((int(line.split()[1]) for line in f if line.startswith(field_name + ":")), 0)


def worker_compile(job: dict) -> dict:
    """compile_spec + Compiled.save of each item in this (fresh) process: time and the
    growth of RSS over the post-import baseline."""
    import tracemalloc
    from graphc.compiler import compile_spec
    import onnx  # noqa: F401  (imported before the baseline: its modules are not the compile's memory)
    results = []
    for item in job["items"]:
        base = _rss_kb("VmRSS")
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")                                    # reset the peak RSS (VmHWM) to now
        t0 = time.perf_counter()
        compiled = compile_spec(item["spec"], item["weights"], opset=job["opset"], keep_weights=False)
        compiled.save(item["out"])
        model = compiled.model
        seconds = time.perf_counter() - t0
        peak = _rss_kb("VmHWM")
        res = {"inproc_s": seconds, "rss_base_mb": base / 1024, "rss_peak_delta_mb": (peak - base) / 1024,
               "nodes": len(model.graph.node)}
        del model, compiled
        if job.get("tracemalloc"):        # Python and numpy allocations only: protobuf's C memory is not traced
            tracemalloc.start()
            compile_spec(item["spec"], item["weights"], opset=job["opset"], keep_weights=False).save(item["out"])
            res["tracemalloc_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
        results.append(res)
    return {"results": results}


def worker_export(job: dict) -> dict:
    """torch.onnx.export of each item's module at one or more shapes, each timed inside."""
    import warnings
    import torch
    warnings.filterwarnings("ignore")
    torch.set_num_threads(job["threads"])
    torch.backends.mha.set_fastpath_enabled(False)   # the legacy exporter cannot trace the fused fast path
    dynamo = job["exporter"] == "dynamo"
    t0 = time.perf_counter()
    torch.onnx.export(torch.nn.Linear(4, 4), (torch.zeros(2, 4),), job["warmup_out"], dynamo=dynamo)
    out = {"startup_s": time.perf_counter() - t0, "results": []}   # the exporter's one-off start-up
    for item in job["items"]:
        w = WORKLOADS[item["workload"]]
        m = load_module(w.name, item["weights"])
        recs = []
        for e in item["exports"]:
            feeds = make_inputs(w, Case("export", e["dims"]))
            args = tuple(torch.from_numpy(feeds[a]) for a in w.torch_args)
            kw = {"input_names": list(w.torch_args), "output_names": list(w.outputs)}
            if dynamo:
                from torch.export import Dim
                kw["dynamic_shapes"] = tuple({ax: Dim.DYNAMIC for ax in w.dynamic.get(a, ())} or None
                                             for a in w.torch_args)
            rec = {"key": e["key"], "path": e["path"]}
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    torch.onnx.export(m, args, e["path"], dynamo=dynamo, **kw)
                rec["inproc_s"] = time.perf_counter() - t0
                p = Path(e["path"])
                rec["size_mb"] = sum(f.stat().st_size for f in p.parent.glob(p.name + "*")) / 1e6
            except Exception as exc:   # recorded, not fatal: the table says which exporter failed where
                msg = str(exc).strip()
                rec["error"] = f"{type(exc).__name__}: {msg.splitlines()[0][:300] if msg else ''}"
            recs.append(rec)
        out["results"].append({"exports": recs})
    return out


# Runs a module (-m NAME) or a script in this process and writes its peak RSS (VmHWM: this
# process image's own) to stderr at exit. ru_maxrss from wait4 would not do: Linux carries
# the parent's high-water mark into a forked child, and the parent here holds torch and models.
_PEAK_WRAPPER = """import atexit, runpy, sys
atexit.register(lambda: sys.stderr.write(''.join('\\nBENCH_' + l for l in open('/proc/self/status') if l[:5] == 'VmHWM')))
module = sys.argv[1] == '-m'
sys.argv = sys.argv[1 + module:]
runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True) if module else runpy.run_path(sys.argv[0], run_name='__main__')
"""


def run_child(argv: list[str], timeout: float) -> dict:
    """Run a fresh Python process: wall time from outside, its peak RSS from inside."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, *argv], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=timeout)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = -9, exc.stdout or "", f"timed out after {timeout} s"
    wall = time.perf_counter() - t0
    peak = re.findall(r"BENCH_VmHWM:\s*(\d+)", err)
    return {"wall_s": wall, "maxrss_mb": int(peak[-1]) / 1024 if peak else None, "rc": rc,
            "stdout": out if isinstance(out, str) else out.decode(), "stderr": err[-3000:]}


def child_job(kind: str, job: dict, tmp: Path, timeout: float) -> dict:
    path = tmp / f"job-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(job))
    r = run_child([str(Path(__file__).resolve()), "--_worker", kind, str(path)], timeout)
    try:
        res = json.loads(r["stdout"].strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        tail = r["stderr"].strip().splitlines()
        res = {"error": f"worker exited {r['rc']}: {tail[-1] if tail else ''}"}
    res.update(wall_s=r["wall_s"], maxrss_mb=r["maxrss_mb"])
    return res


# ----------------------------------------------------------------- measurements

def session(path: str, threads: int, spin: bool):
    """The same options for every model: ORT_ENABLE_ALL, intra-op = threads, inter-op 1."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # ORT's workers busy-wait after each run by default; interleaved with torch on a
    # shared 2-core machine that steals the cores the next candidate needs
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def matmul(m: int, k: int, n: int, args):
    """A one-MatMul ONNX graph (activation [m, k] x weight initializer [k, n]) in ORT:
    returns a zero-argument runner and its FLOPs."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((k, n), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    s = session(model.SerializeToString(), args.threads, args.spin)
    feeds = {"x": rng.standard_normal((m, k), np.float32)}
    return (lambda: s.run(None, feeds)), 2 * m * k * n


def matmul_limit(args) -> dict:
    """GFLOP/s of single MatMuls of these models' shapes in ORT: the practical limit."""
    shapes = [(256, 512, 512)] if args.quick else \
        [(2048, 512, 2048), (2048, 2048, 512), (128, 512, 2048), (1024, 1024, 1024)]
    out = {}
    for m, k, n in shapes:
        run, f = matmul(m, k, n, args)
        times, _ = time_candidates({"mm": run}, 3, max(args.reps, 5))
        out[f"{m}x{k}x{n}"] = f / (statistics.median(times["mm"]) / 1e3) / 1e9
    return out


def case_reps(run_graphc, args, cap: int = 400) -> int:
    """Timed runs per candidate for one shape: at least --reps, and enough that graphc's
    runs add up to --min-time seconds, so a 1 ms model gets hundreds of samples instead of
    20 (its median then moves by ~1% between runs instead of ~10%)."""
    if args.min_time <= 0:
        return args.reps
    run_graphc()
    t0 = time.perf_counter()
    run_graphc()
    ms = max((time.perf_counter() - t0) * 1e3, 1e-3)
    return min(cap, max(args.reps, math.ceil(args.min_time * 1e3 / ms)))


def time_candidates(cands: dict, warmup: int, reps: int, solo=("eager",), lead=("matmul",),
                    block: int = 5, pause: float = 0.0) -> tuple[dict, dict]:
    """cands: name -> zero-argument callable; returns the times (ms) and first outputs. ORT
    candidates run in interleaved rounds, the order rotating; eager runs in blocks alternating
    with them, each block opened by an untimed call and closed by a pause (docs/benchmarks.md).

    The reference MatMul (`lead`) opens every round instead of rotating with the models: it
    sweeps 24 MB through the caches, and in a plain rotation of four the same model followed
    it in three rounds of four (graphc, by the order of `cands`), which cost that model its
    cached weights (b1 s128 MHA, graphc / legacy export: 1.12 with the old order, 1.04 with this one).
    ``pause``: seconds of idle before each timed call (sessions whose workers spin after a run
    would otherwise share the cores with the next candidate)."""
    outs = {name: fn() for name, fn in cands.items()}
    for _ in range(warmup - 1):
        for fn in cands.values():
            fn()
    times = {n: [] for n in cands}
    names = [n for n in cands if n not in solo and n not in lead]
    first = [n for n in lead if n in cands]

    def timed(name):
        if pause:
            time.sleep(pause)
        t0 = time.perf_counter()
        cands[name]()
        times[name].append((time.perf_counter() - t0) * 1e3)
    for start in range(0, reps, block):
        for r in range(start, min(reps, start + block)):
            k = r % len(names)
            for name in first + names[k:] + names[:k]:
                timed(name)
        for name in (n for n in solo if n in cands):
            cands[name]()
            for _ in range(start, min(reps, start + block)):
                timed(name)
            time.sleep(0.05)
    return times, outs


def max_abs(a, b, lengths=None) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if lengths:      # padded [batch, seq, ...] outputs: eager's nested tensors leave zeros at padding
        keep = np.arange(a.shape[1])[None, :] < np.asarray(lengths)[:, None]
        a, b = a[keep], b[keep]
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def bench_group(ws: list[Workload], args, tmp: Path, log) -> dict:
    """Every measurement of a group of workloads. A full run makes one group per
    workload (every compile and export in a fresh process); --quick makes one group
    of all, sharing each worker process (fewer start-ups; not fresh per workload)."""
    res, npz, gpath = {}, {}, {}
    fresh = len(ws) == 1
    for w in ws:
        wdir = tmp / w.name
        wdir.mkdir()
        weights = make_weights(w.name, args.seed)
        npz[w.name], gpath[w.name] = wdir / "weights.npz", wdir / "graphc.onnx"
        np.savez(npz[w.name], **weights)
        res[w.name] = {"spec": w.spec, "weight_bytes": int(sum(a.nbytes for a in weights.values())),
                       "fresh_process": fresh, "compile": {}, "cases": {}}
        del weights
    compile_graphc(ws, res, npz, gpath, args, tmp, log)
    exported = export_torch(ws, res, npz, args, tmp, log)
    for w in ws:
        latency(w, res[w.name], str(npz[w.name]), str(gpath[w.name]), exported[w.name], args, log)
    return res


def compile_graphc(ws, res, npz, gpath, args, tmp: Path, log) -> None:
    """graphc: compile_spec + Compiled.save timed inside fresh workers, and `graphc build` timed from outside.
    Every compile writes a new file, as the exporters do: replacing a big file costs its unlink."""
    def items(rep):
        return [{"spec": str(ROOT / w.spec), "weights": str(npz[w.name]),
                 "out": str(tmp / w.name / f"graphc-{rep}.onnx")} for w in ws]
    reps, opset = [], ["--opset", str(args.opset)] if args.opset else []
    for i in range(args.compile_reps):
        job = {"items": items(i), "tracemalloc": i == 0 and not args.quick, "opset": args.opset}
        reps.append(child_job("compile", job, tmp, 900))
        if "error" in reps[-1]:
            raise RuntimeError(f"graphc compile worker failed: {reps[-1]['error']}")
        for it in items(i):
            os.unlink(it["out"])
    # `graphc build` as installed: pip byte-compiles a package it installs, but an editable install
    # under PYTHONDONTWRITEBYTECODE=1 (set on these machines) never caches bytecode, and every run
    # would recompile graphc's ~45 modules from source (~45 ms) before doing anything
    compileall.compile_dir(str(ROOT / "graphc"), quiet=1)
    for j, w in enumerate(ws):
        runs, cli = [r["results"][j] for r in reps], []
        for i in range(args.compile_reps):
            it = items(f"cli-{i}")[j]
            cli.append(run_child(["-m", "graphc", "build", it["spec"], "--weights", it["weights"], "-o", it["out"],
                                  *opset], 600))
            if cli[-1]["rc"] != 0:
                raise RuntimeError(f"graphc build failed on {w.spec}: {cli[-1]['stderr']}")
            os.replace(it["out"], gpath[w.name])
        said = [float(m.group(1)) for c in cli for m in [re.search(r" in ([0-9.]+) s$", c["stdout"].strip())] if m]
        g = {"inproc_s": statistics.median(r["inproc_s"] for r in runs),
             "wall_s": statistics.median(c["wall_s"] for c in cli),
             "cli_reported_s": statistics.median(said) if said else None,
             "cli_maxrss_mb": max((c["maxrss_mb"] or 0) for c in cli) or None,
             "rss_peak_delta_mb": max(r["rss_peak_delta_mb"] for r in runs),
             "tracemalloc_peak_mb": runs[0].get("tracemalloc_peak_mb"),
             "nodes": runs[0]["nodes"], "size_mb": gpath[w.name].stat().st_size / 1e6,
             "runs_inproc_s": [r["inproc_s"] for r in runs], "runs_wall_s": [c["wall_s"] for c in cli]}
        g["peak_over_weights"] = g["rss_peak_delta_mb"] * 2**20 / res[w.name]["weight_bytes"]
        g["maxrss_mb"] = g["cli_maxrss_mb"]      # the whole `graphc build` process, imports included
        res[w.name]["compile"]["graphc"] = g
        log(f"[{w.name}] weights {res[w.name]['weight_bytes'] / 1e6:.1f} MB; graphc compile {g['inproc_s']:.3f} s "
            f"in-process, {g['wall_s']:.2f} s wall, peak +{g['rss_peak_delta_mb']:.0f} MB")



def export_torch(ws, res, npz, args, tmp: Path, log) -> dict:
    """Each exporter in a fresh worker; returns workload -> exporter -> case label -> .onnx path."""
    fresh = len(ws) == 1
    exported: dict[str, dict] = {w.name: {} for w in ws}
    for exp in args.exporters:
        jitems = []
        for w in ws:
            cases = w.quick_cases if args.quick else w.cases
            if exp == "dynamo":     # one export with dynamic batch and sequence dims
                jobs = [{"key": "dynamic", "dims": w.example, "path": str(tmp / w.name / "dynamo.onnx")}]
            else:                   # the legacy exporter bakes the sequence length: one export per shape
                keys = list(dict.fromkeys(json.dumps(c.dims, sort_keys=True) for c in cases))
                jobs = [{"key": k, "dims": json.loads(k), "path": str(tmp / w.name / f"legacy-{i}.onnx")}
                        for i, k in enumerate(keys)]
            jitems.append({"workload": w.name, "weights": str(npz[w.name]), "exports": jobs})
        r = child_job("export", {"exporter": exp, "threads": args.threads, "items": jitems,
                                 "warmup_out": str(tmp / f"warmup-{exp}.onnx")}, tmp, 900)
        for j, w in enumerate(ws):
            recs = r["results"][j]["exports"] if "results" in r else [{"error": r.get("error")}]
            first = recs[0]
            info = {"inproc_s": first.get("inproc_s"), "startup_s": r.get("startup_s"),
                    "wall_s": r["wall_s"] if fresh else None, "maxrss_mb": r["maxrss_mb"] if fresh else None,
                    "size_mb": first.get("size_mb"), "error": first.get("error"),
                    "reexports": [{k: e.get(k) for k in ("key", "inproc_s", "error")} for e in recs[1:]]}
            g = res[w.name]["compile"]["graphc"]
            info["ratio_inproc"] = ratio(g["inproc_s"], info["inproc_s"])    # graphc / exporter
            info["ratio_wall"] = ratio(g["wall_s"], info["wall_s"])
            if not first.get("error"):
                import onnx
                try:
                    info["nodes"] = len(onnx.load(first["path"], load_external_data=False).graph.node)
                except Exception as exc:   # an unreadable file: ORT reports it again below, per shape
                    info["error"] = f"unreadable export: {type(exc).__name__}"
            res[w.name]["compile"][exp] = info
            paths = {e["key"]: e["path"] for e in recs if "error" not in e}
            cases = w.quick_cases if args.quick else w.cases
            exported[w.name][exp] = {c.label: paths.get("dynamic", paths.get(json.dumps(c.dims, sort_keys=True)))
                                     for c in cases}
            log(f"[{w.name}] {exp} export {fmt(info['inproc_s'], '.3f')} s in-process, "
                f"{fmt(info['wall_s'])} s wall" + (f"  ERROR {info['error']}" if info["error"] else ""))
    return exported


def latency(w: Workload, res: dict, npz: str, gpath: str, exported: dict, args, log) -> None:
    """ORT latency of graphc's model and every export, and eager, interleaved; parity."""
    import torch
    module = load_module(w.name, npz)
    sessions = {gpath: session(gpath, args.threads, args.spin)}
    cases = w.quick_cases if args.quick else w.cases
    for c in cases:
        feeds = make_inputs(w, c, seed=1)
        tin = tuple(torch.from_numpy(feeds[a]) for a in w.torch_args)
        gs = sessions[gpath]
        cands = {"graphc": lambda gs=gs, f=feeds: gs.run(None, f)}
        errors = {}
        for exp, by_case in exported.items():
            p = by_case.get(c.label)
            if p is None:
                errors[exp] = "export failed"
                continue
            try:
                s = sessions.get(p) or session(p, args.threads, args.spin)
                sessions[p] = s
                ef = {i.name: feeds[i.name] for i in s.get_inputs()}
                s.run(None, ef)
                cands[exp] = lambda s=s, f=ef: s.run(None, f)
            except Exception as exc:   # a model that loads but fails at this shape: recorded
                errors[exp] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"

        def eager(m=module, t=tin):
            with torch.inference_mode():
                r = m(*t)
            return [r] if isinstance(r, torch.Tensor) else list(r)
        cands.update(eager=eager, matmul=args.matmul_ref[0])    # matmul: the practical limit, same load
        reps = case_reps(cands["graphc"], args)
        times, outs = time_candidates(cands, args.warmup, reps, pause=0.05 if args.spin else 0.0)
        mm_ms = statistics.median(times.pop("matmul"))
        med = {n: statistics.median(t) for n, t in times.items()}
        ref = [o.numpy() for o in outs["eager"]]
        parity = {name: {out: max_abs(a, r, c.lengths) for out, a, r in zip(w.outputs, o, ref)}
                  for name, o in outs.items() if name not in ("eager", "matmul")}
        f = flops(w.name, c.dims)
        res["cases"][c.label] = {
            "dims": c.dims, "lengths": list(c.lengths) if c.lengths else None, "reps": reps, "ms": med,
            "ms_quartiles": {n: [float(q) for q in np.percentile(t, [25, 75])] for n, t in times.items()},
            "ms_min": {n: min(t) for n, t in times.items()},
            "errors": errors, "max_abs_diff": parity, "gflop": f / 1e9,
            "gflops": {n: f / (t / 1e3) / 1e9 for n, t in med.items()},
            "ratio": {n: med["graphc"] / t for n, t in med.items() if n != "graphc"},     # graphc / alternative
            "ratio_of_min": {n: min(times["graphc"]) / min(t) for n, t in times.items() if n != "graphc"},
            "matmul_gflops_interleaved": args.matmul_ref[1] / (mm_ms / 1e3) / 1e9}
        log(f"[{w.name}] {c.label}: " + ", ".join(f"{n} {t:.2f} ms" for n, t in med.items())
            + f", matmul {mm_ms:.2f} ms" + (f"  errors: {errors}" if errors else ""))
    if w.name.startswith("lstm"):
        res["varlen_max_abs_diff"] = lstm_varlen_parity(w, module, sessions[gpath], cases[-1])


def lstm_varlen_parity(w: Workload, module, sess, case: Case) -> dict:
    """graphc's sequence_lens against torch's packed sequences (eager only: no torch
    export takes lengths)."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
    feeds = make_inputs(w, case, seed=2)
    b, s = case.dims["batch"], case.dims["seq"]
    feeds["lengths"] = np.linspace(max(1, s // 3), s, b).round().astype(np.int64)
    ours = sess.run(None, feeds)
    with torch.inference_mode():
        packed = pack_padded_sequence(torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["lengths"]),
                                      batch_first=True, enforce_sorted=False)
        y, (h, c) = module.lstm(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=s)
    return {n: max_abs(a, r.numpy()) for n, a, r in zip(w.outputs, ours, (y, h, c))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny inputs, few repetitions, no dynamo exporter (< 60 s)")
    p.add_argument("--only", help=f"comma-separated workloads (default all: {','.join(WORKLOADS)})")
    p.add_argument("--reps", type=int, help="timed runs per candidate, at least (default 20; quick 3)")
    p.add_argument("--min-time", type=float, help="seconds of graphc runs per shape: short models get more "
                   "timed runs than --reps, up to 400 (default 1.0; quick 0)")
    p.add_argument("--warmup", type=int, help="warm-up runs per candidate (default 3; quick 1)")
    p.add_argument("--compile-reps", type=int, help="fresh-process compiles of graphc per workload (default 3; quick 1)")
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads and torch threads (default 2)")
    p.add_argument("--exporters", help="comma-separated: dynamo,legacy (default both; quick: legacy)")
    p.add_argument("--spin", action="store_true",
                   help="let ORT's worker threads busy-wait between runs (its default); off by default, for every "
                        "ORT model alike, because spinning threads steal the cores of the next interleaved candidate; "
                        "with --spin each timed run follows a 0.05 s pause instead)")
    p.add_argument("--opset", type=int, help="graphc's target opset (default: graphc's own; 23 emits ONNX Attention)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", help="write every number to this JSON file")
    p.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._worker:
        fn = worker_compile if args._worker[0] == "compile" else worker_export
        print(json.dumps(fn(json.loads(Path(args._worker[1]).read_text()))))
        return 0
    args.reps = args.reps or (3 if args.quick else 20)
    args.warmup = args.warmup or (1 if args.quick else 3)
    args.min_time = args.min_time if args.min_time is not None else (0.0 if args.quick else 1.0)
    args.compile_reps = args.compile_reps or (1 if args.quick else 3)
    args.exporters = (args.exporters or ("legacy" if args.quick else "dynamo,legacy")).split(",")
    names = args.only.split(",") if args.only else list(WORKLOADS)
    bad = [n for n in names if n not in WORKLOADS] + [e for e in args.exporters if e not in ("dynamo", "legacy")]
    if bad:
        p.error(f"unknown workload or exporter: {', '.join(bad)} (workloads: {', '.join(WORKLOADS)})")
    if "dynamo" in args.exporters and importlib.util.find_spec("onnxscript") is None:
        print("note: the dynamo exporter needs onnxscript (pip install onnxscript): skipped", file=sys.stderr)
        args.exporters.remove("dynamo")

    import onnx
    import onnxruntime
    import torch
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load0 = list(os.getloadavg())

    def log(msg):
        print(f"# {time.perf_counter() - t_start:6.1f}s {msg}", file=sys.stderr, flush=True)

    mm = matmul_limit(args)
    ref_shape = MATMUL_REF_QUICK if args.quick else MATMUL_REF_SHAPE
    args.matmul_ref = matmul(*ref_shape, args)
    log("single MatMul GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in mm.items()))
    results = {}
    with tempfile.TemporaryDirectory(prefix="graphc-bench-") as td:
        groups = [names] if args.quick else [[n] for n in names]
        for group in groups:
            results.update(bench_group([WORKLOADS[n] for n in group], args, Path(td), log))
    mm2 = matmul_limit(args)             # a second pass: the limit is the best seen
    mm = {k: max(v, mm2[k]) for k, v in mm.items()}
    limit = max(mm.values())
    report = {
        "config": {"quick": args.quick, "threads": args.threads, "reps": args.reps, "min_time": args.min_time,
                   "warmup": args.warmup,
                   "compile_reps": args.compile_reps, "exporters": args.exporters, "seed": args.seed, "spin": args.spin,
                   "graphc_opset": args.opset, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                   "workloads": names, "matmul_ref_shape": "x".join(map(str, ref_shape))},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
                    "loadavg_start": load0},
        "matmul_gflops": mm, "matmul_limit_gflops": limit, "workloads": results,
    }
    report["targets"] = targets(results, limit)
    report["seconds"] = time.perf_counter() - t_start
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    text = markdown(report)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
