"""The GPU check (issue 19, item 6), prepared to run as one command on a lent GPU machine.

  python tools/bench_gpu.py --out DIR                 # on the GPU machine: CUDA provider
  python tools/bench_gpu.py --provider cpu --quick    # here: the same code paths on the CPU provider

It does, in one process:

1. **Parity, every example spec** (specs/*.yaml, specs/tutorial/*.yaml): builds each in float32 and in
   float16 (``--dtype float16``), runs each on the chosen provider and the float32 build on the CPU
   provider (the reference), on the same random inputs (``graphc run --random``'s, the spec's example
   dims), and records the max abs difference and the relative RMS error of every output.
2. **Timings in float16**: the 6-layer encoder and the 6+6 Transformer at batch 1 / seq 128 and batch 8 /
   seq 256, with the benchmark's seeded weights (tools/bench_baselines.py), graphc on the provider
   (inputs and outputs bound on the device through IOBinding, so no host copies are timed) against
   PyTorch eager float16 on the GPU with the same weights (when torch sees one), medians of interleaved
   runs, plus each one's error against torch float32 on the CPU.
3. **Generation**: not timed. graphc's decoding loop (graphc.generation) binds its caches on the CPU;
   a device-resident cache is its own piece of work, so this script says so instead of timing host copies.

Writes ``gpu.json`` and ``gpu.md`` (a markdown table for docs/benchmarks.md) into --out. A failure in one
spec is recorded and the run goes on; the exit status is 1 if any parity row failed to run.

Getting the CUDA provider onto the GPU machine: its image holds the CPU build of onnxruntime, and the
CUDA build's wheel (onnxruntime-gpu, linked against CUDA 13, which the image has) is ~255 MB where one
device call carries 64 MiB; docs/benchmarks.md ("GPU") gives the recipe.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_workloads import WORKLOADS, Case, make_inputs   # noqa: E402


def session(path: str, provider: str):
    import onnxruntime as ort
    ort.set_default_logger_severity(3)
    providers = {"cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"], "cpu": ["CPUExecutionProvider"]}[provider]
    s = ort.InferenceSession(path, providers=providers)
    if provider == "cuda" and "CUDAExecutionProvider" not in s.get_providers():
        raise RuntimeError("the CUDA provider did not load (onnxruntime-gpu and CUDA 13 libraries needed)")
    return s


def errors(ref: np.ndarray, out: np.ndarray, lengths=None) -> dict:
    """Max abs difference and relative RMS error; with ``lengths`` (key padding), only the valid
    positions of [batch, seq, ...] outputs: eager's nested tensors leave zeros at padded ones."""
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref.shape != out.shape:
        return {"shape": [list(ref.shape), list(out.shape)], "max_abs": float("inf"), "rel_rms": float("inf")}
    if lengths:
        keep = np.arange(ref.shape[1])[None, :] < np.asarray(lengths)[:, None]
        ref, out = ref[keep], out[keep]
    if ref.size == 0:
        return {"max_abs": 0.0, "rel_rms": 0.0}
    diff = out - ref
    rms = float(np.sqrt(np.mean(ref ** 2)))
    return {"max_abs": float(np.abs(diff).max()), "rel_rms": float(np.sqrt(np.mean(diff ** 2))) / max(rms, 1e-30)}


def build(spec: str, out: Path, dtype: str, weights=None) -> str:
    from graphc.compiler import compile_spec
    compiled = compile_spec(spec, weights=weights, dtype=dtype, keep_weights=False)
    compiled.save(out)
    return str(out)


def as_model_inputs(sess, feeds: dict) -> dict:
    """The float32 reference inputs in the model's own input types (float16 builds)."""
    types = {i.name: i.type for i in sess.get_inputs()}
    return {k: (v.astype(np.float16) if types.get(k) == "tensor(float16)" else v) for k, v in feeds.items()
            if k in types}


def parity(specs: list[Path], provider: str, tmp: Path, log) -> list[dict]:
    from graphc.runtime.session import random_inputs
    rows = []
    for spec in specs:
        for dtype in ("float32", "float16"):
            row = {"spec": str(spec.relative_to(ROOT)), "dtype": dtype}
            try:
                ref_path = build(str(spec), tmp / f"{spec.stem}.f32.onnx", "float32")
                ref_sess = session(ref_path, "cpu")
                feeds = random_inputs(ref_sess, {}, seed=0)
                ref = dict(zip([o.name for o in ref_sess.get_outputs()], ref_sess.run(None, feeds)))
                path = ref_path if dtype == "float32" else build(str(spec), tmp / f"{spec.stem}.f16.onnx", dtype)
                sess = session(path, provider)
                outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, as_model_inputs(sess, feeds))))
                row["outputs"] = {name: errors(ref[name], outs[name]) for name in ref}
                worst = max(row["outputs"].values(), key=lambda e: e["rel_rms"])
                log(f"{row['spec']:40s} {dtype:8s} max abs {worst['max_abs']:.2e}  rel RMS {worst['rel_rms']:.2e}")
            except Exception as exc:      # recorded: one spec that fails must not hide the others' numbers
                row["error"] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
                log(f"{row['spec']:40s} {dtype:8s} FAILED {row['error']}")
            rows.append(row)
    return rows


def ort_timer(sess, feeds: dict, provider: str):
    """A zero-argument call that runs the model with inputs and outputs bound on the device."""
    import onnxruntime as ort
    device = "cuda" if provider == "cuda" else "cpu"
    binding = sess.io_binding()
    for name, value in as_model_inputs(sess, feeds).items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), device, 0))
    for o in sess.get_outputs():
        binding.bind_output(o.name, device)

    def run():
        binding.synchronize_inputs()
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()
    return run, lambda: binding.copy_outputs_to_cpu()[0]


def timings(provider: str, quick: bool, reps: int, tmp: Path, log) -> list[dict]:
    try:
        import torch
        from bench_baselines import load_module, make_weights
    except ImportError as exc:
        log(f"timings skipped: {exc}")
        return []
    gpu = provider == "cuda" and torch.cuda.is_available()
    rows = []
    for name in ("encoder", "transformer"):
        w = WORKLOADS[name]
        npz = tmp / f"{name}.npz"
        np.savez(npz, **make_weights(name, 0))
        path = build(str(ROOT / w.spec), tmp / f"{name}.f16.onnx", "float16", weights=str(npz))
        sess = session(path, provider)
        m32 = load_module(name, str(npz))
        m16 = load_module(name, str(npz)).to("cuda" if gpu else "cpu", torch.float16 if gpu else torch.float32)
        for case in (w.quick_cases if quick else w.cases):
            feeds = make_inputs(w, case)
            args32 = tuple(torch.from_numpy(feeds[a]) for a in w.torch_args)
            with torch.inference_mode():
                ref = m32(*args32)
                ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()
            run_graphc, fetch = ort_timer(sess, feeds, provider)
            dev_args = tuple(a.to("cuda", torch.float16) if gpu and a.is_floating_point() else
                             (a.to("cuda") if gpu else a) for a in args32)

            def eager():
                with torch.inference_mode():
                    y = m16(*dev_args)
                if gpu:
                    torch.cuda.synchronize()
                return y
            run_graphc(), eager()                               # warm-up: kernels chosen, memory taken
            times = {"graphc": [], "eager": []}
            for _ in range(reps):                               # interleaved, one of each per round
                for label, fn in (("graphc", run_graphc), ("eager", eager)):
                    t0 = time.perf_counter()
                    fn()
                    times[label].append((time.perf_counter() - t0) * 1e3)
            y_eager = eager()
            y_eager = (y_eager[0] if isinstance(y_eager, tuple) else y_eager).float().cpu().numpy()
            row = {"workload": name, "case": case.label, "provider": provider, "eager_device": "cuda" if gpu else "cpu",
                   "graphc_ms": float(np.median(times["graphc"])), "eager_ms": float(np.median(times["eager"])),
                   "graphc_err": errors(ref, fetch(), case.lengths),
                   "eager_err": errors(ref, y_eager, case.lengths)}
            row["ratio"] = row["graphc_ms"] / row["eager_ms"]
            log(f"{name:12s} {case.label:14s} graphc f16 {row['graphc_ms']:.3f} ms, eager {row['eager_ms']:.3f} ms "
                f"({row['ratio']:.2f}x); rel RMS vs f32: {row['graphc_err']['rel_rms']:.1e} / {row['eager_err']['rel_rms']:.1e}")
            rows.append(row)
    return rows


def markdown(result: dict) -> str:
    lines = [f"onnxruntime {result['onnxruntime']}, provider {result['provider']}", "",
             "| spec | dtype | worst max abs | worst rel RMS |", "|---|---|---:|---:|"]
    for r in result["parity"]:
        if "error" in r:
            lines.append(f"| {r['spec']} | {r['dtype']} | failed: {r['error'][:80]} | |")
            continue
        worst = max(r["outputs"].values(), key=lambda e: e["rel_rms"])
        lines.append(f"| {r['spec']} | {r['dtype']} | {worst['max_abs']:.2e} | {worst['rel_rms']:.2e} |")
    if result["timings"]:
        lines += ["", "| workload | case | graphc f16 ms | eager f16 ms | ratio | rel RMS graphc / eager |",
                  "|---|---|---:|---:|---:|---|"]
        for r in result["timings"]:
            lines.append(f"| {r['workload']} | {r['case']} | {r['graphc_ms']:.3f} | {r['eager_ms']:.3f} | "
                         f"{r['ratio']:.2f} | {r['graphc_err']['rel_rms']:.1e} / {r['eager_err']['rel_rms']:.1e} |")
    lines += ["", "Generation: not timed (graphc's decoding loop keeps its caches on the CPU)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--provider", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--quick", action="store_true", help="two specs, the workloads' tiny shapes, 3 timed rounds")
    p.add_argument("--reps", type=int, default=None, help="timed rounds per shape (default 20; quick 3)")
    p.add_argument("--only", help="comma-separated spec stems for the parity part (default: every example spec)")
    p.add_argument("--no-timings", action="store_true")
    p.add_argument("--out", default="gpu_out")
    args = p.parse_args(argv)
    import onnxruntime as ort
    specs = sorted((ROOT / "specs").glob("*.yaml")) + sorted((ROOT / "specs" / "tutorial").glob("*.yaml"))
    if args.only:
        keep = set(args.only.split(","))
        specs = [s for s in specs if s.stem in keep]
    elif args.quick:
        specs = [s for s in specs if s.stem in ("mha", "gru")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(msg, flush=True)
    result = {"provider": args.provider, "onnxruntime": ort.__version__,
              "available_providers": ort.get_available_providers()}
    log(f"onnxruntime {ort.__version__}, providers {result['available_providers']}")
    with tempfile.TemporaryDirectory() as tmp:
        result["parity"] = parity(specs, args.provider, Path(tmp), log)
        try:
            result["timings"] = [] if args.no_timings else timings(
                args.provider, args.quick, args.reps or (3 if args.quick else 20), Path(tmp), log)
        except Exception:
            result["timings"] = []
            result["timings_error"] = traceback.format_exc()[-2000:]
            log(result["timings_error"])
    (out / "gpu.json").write_text(json.dumps(result, indent=1))
    (out / "gpu.md").write_text(markdown(result))
    log(f"wrote {out / 'gpu.json'} and {out / 'gpu.md'}")
    return 1 if any("error" in r for r in result["parity"]) or "timings_error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
