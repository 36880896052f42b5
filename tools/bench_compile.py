#!/usr/bin/env python
"""Compile as the user sees it: the process wall time of ``graphc build`` against a
process that imports torch, loads the same weights and exports with
``torch.onnx.export(dynamo=True)``, all in one run.

    python tools/bench_compile.py --json-out compile.json            # ~2-3 min on 2 cores
    python tools/bench_compile.py --reps 3 --dynamo-reps 1 --only encoder
    python tools/bench_compile.py --compare-tree /path/to/old/checkout   # before/after, same run
    python tools/bench_compile.py --dynamo-reps 0 --breakdown           # graphc only, with stage times
    python tools/bench_compile.py --torch-python venv/bin/python         # a Python with onnxscript for dynamo

Every candidate is a fresh process timed from outside (interpreter start-up, imports,
reading the weights and writing the file included); the candidates run in interleaved
rounds, the order rotating each round, so a burst of load from other processes falls on
all of them alike. Each graphc build writes a new file (the previous one is deleted
outside the timing: replacing a 177 MB file costs the kernel ~0.1 s to free its pages,
which ``--same-output`` measures), and graphc's bytecode is compiled first, as pip does
for an installed package. Minimum and median of the runs are reported; the
targets (issue 19, item 5) are judged on the minima, the statistic least moved by other
processes on a shared machine, and the medians are shown beside them.

Weights: tools/bench_baselines.py's ``make_weights`` (torch.manual_seed, every tensor redrawn),
saved once as .safetensors (and .npz), given to both sides. The dynamo process loads the
.safetensors with safetensors.torch onto a module built on the meta device (no random
init), traces at batch 2 / length 17 with dynamic batch and sequence dims, as
tools/bench.py's dynamo export does, and pays the exporter's one-off start-up (no warm-up
export: that is part of what the user waits for).
"""
from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = Path(__file__).resolve().parent
SPECS = {"encoder": "specs/transformer_encoder.yaml", "transformer": "specs/transformer.yaml"}

_DYNAMO = r"""
import sys, warnings
sys.path.insert(0, {tools!r})
warnings.filterwarnings("ignore")
import torch
from torch.export import Dim
from safetensors.torch import load_file
from bench_baselines import load_module, torch_module
from bench_workloads import WORKLOADS, Case, make_inputs
w = WORKLOADS[{name!r}]
m = torch_module(w.name, device="meta")
m.load_state_dict(load_file({weights!r}), assign=True)
m.eval()
feeds = make_inputs(w, Case("export", w.example))
args = tuple(torch.from_numpy(feeds[a]) for a in w.torch_args)
shapes = tuple({{ax: Dim.DYNAMIC for ax in w.dynamic.get(a, ())}} or None for a in w.torch_args)
with torch.no_grad():
    torch.onnx.export(m, args, {out!r}, dynamo=True, input_names=list(w.torch_args),
                      output_names=list(w.outputs), dynamic_shapes=shapes)
"""

_STAGES = r"""
import os, sys, time, json
t0 = time.perf_counter()
from graphc.compiler import check_spec
from graphc.ir.simplify import simplify
from graphc.lower import lower_by_reference, save_model
from graphc.weights import materialize
try:
    from graphc.weight_files import load_weights
except ImportError:                     # before the weights split it lived in graphc.weights
    from graphc.weights import load_weights
try:
    from graphc.ir.fold import fold_derived
except ImportError:                     # before the pass pipeline it lived in graphc.weights
    from graphc.weights import fold_derived
out = {{"imports": time.perf_counter() - t0}}
def stage(name, fn):
    t = time.perf_counter(); r = fn(); out[name] = time.perf_counter() - t; return r
spec, g = stage("parse+expand", lambda: check_spec({spec!r}))
w = stage("read weights", lambda: load_weights({weights!r})) if {weights!r} else None
stage("weights", lambda: materialize(g, w, 0))      # the pipeline folds in the next stage
stage("fold (transposes)", lambda: fold_derived(g))
stage("simplify", lambda: simplify(g))
model, arrays = stage("lower", lambda: lower_by_reference(g, 17))
stage("write", lambda: save_model(model, {output!r}, arrays))
os.unlink({output!r})
print(json.dumps(out))
"""


def wall(argv: list[str], env: dict, cwd: str, timeout: float) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])}... exited {p.returncode}: {p.stderr.strip()[-800:]}")
    return seconds


def make_weight_files(names: list[str], tmp: Path) -> dict[str, dict[str, str]]:
    """Once per run, in a child process (this process stays free of torch)."""
    code = (f"import sys; sys.path.insert(0, {str(TOOLS)!r})\n"
            "import numpy as np, bench_baselines\nfrom safetensors.numpy import save_file\n"
            f"for n in {names!r}:\n"
            "    w = bench_baselines.make_weights(n, 0)\n"
            f"    save_file(w, {str(tmp)!r} + f'/{{n}}.safetensors')\n"
            f"    np.savez({str(tmp)!r} + f'/{{n}}.npz', **w)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    return {n: {"safetensors": str(tmp / f"{n}.safetensors"), "npz": str(tmp / f"{n}.npz")} for n in names}


def candidates(args, files: dict, tmp: Path) -> list[dict]:
    trees = [("graphc", str(ROOT))] + ([("graphc@compare", args.compare_tree)] if args.compare_tree else [])
    out = []
    for name in args.only:
        spec = str(ROOT / SPECS[name])
        for label, tree in trees:
            env = dict(os.environ, PYTHONPATH=tree)
            for how, weights in (("seeded", None), ("safetensors", files[name]["safetensors"]),
                                 ("npz", files[name]["npz"])):
                if how == "npz" and not args.npz:
                    continue
                dest = tmp / f"{label}-{name}-{how}.onnx"
                argv = [sys.executable, "-m", "graphc", "build", spec, "-o", str(dest)]
                if weights:
                    argv[5:5] = ["--weights", weights]
                # run in the tree: 'python -m graphc' puts the working directory first on sys.path
                out.append({"key": f"{label} {name} {how}", "argv": argv, "env": env, "cwd": tree, "dest": dest,
                            "reps": args.reps, "times": []})
        if args.dynamo_reps:
            argv = [args.torch_python, "-c", _DYNAMO.format(tools=str(TOOLS), name=name,
                                                          weights=files[name]["safetensors"],
                                                          out=str(tmp / f"dynamo-{name}.onnx"))]
            out.append({"key": f"dynamo {name} safetensors", "argv": argv, "env": dict(os.environ), "cwd": str(ROOT),
                        "dest": None, "reps": args.dynamo_reps, "times": []})
    return out


def run_rounds(cands: list[dict], args, log) -> None:
    rounds = max(c["reps"] for c in cands)
    for r in range(rounds):
        todo = [c for c in cands if len(c["times"]) < c["reps"]]
        k = r % len(todo)
        for c in todo[k:] + todo[:k]:                  # the order rotates each round
            if c["dest"] is not None and not args.same_output and c["dest"].exists():
                c["dest"].unlink()                     # outside the timing (see the module docstring)
            c["times"].append(wall(c["argv"], c["env"], c["cwd"], args.timeout))
        log(f"round {r + 1}/{rounds}: " + ", ".join(f"{c['key']} {c['times'][-1]:.2f}" for c in todo))


def summary(cands: list[dict], names: list[str]) -> dict:
    res = {c["key"]: {"min_s": min(c["times"]), "median_s": statistics.median(c["times"]), "runs_s": c["times"]}
           for c in cands}
    rows = []
    for n in names:
        dyn = res.get(f"dynamo {n} safetensors")
        for how in ("seeded", "safetensors", "npz"):
            g = res.get(f"graphc {n} {how}")
            if g is None:
                continue
            row = {"workload": n, "weights": how, "graphc_min_s": g["min_s"], "graphc_median_s": g["median_s"]}
            old = res.get(f"graphc@compare {n} {how}")
            if old:
                row.update(compare_min_s=old["min_s"], compare_median_s=old["median_s"])
            if dyn and how != "seeded":
                row.update(dynamo_min_s=dyn["min_s"], dynamo_median_s=dyn["median_s"],
                           speedup_min=dyn["min_s"] / g["min_s"], speedup_median=dyn["median_s"] / g["median_s"])
            rows.append(row)
    return {"candidates": res, "rows": rows}


def targets(rows: list[dict]) -> list[tuple[str, float, bool]]:
    out = []
    for r in rows:
        if r["workload"] == "transformer" and r["weights"] in ("seeded", "safetensors"):
            out.append((f"transformer ({r['weights']}) build <= 1.0 s wall (min)", r["graphc_min_s"],
                        r["graphc_min_s"] <= 1.0))
        if r["workload"] == "encoder" and r["weights"] == "safetensors" and "speedup_min" in r:
            out.append(("encoder with weights >= 20x faster than the dynamo process (min/min)", r["speedup_min"],
                        r["speedup_min"] >= 20.0))
    return out


def markdown(report: dict) -> str:
    compare = any("compare_min_s" in r for r in report["rows"])
    lines = ["| workload | weights | graphc min / median s | " +
             ("before (--compare-tree) min / median s | " if compare else "")
             + "dynamo process min / median s | dynamo / graphc (min, median) |", ""]
    lines[1] = "|" + "---|" * (lines[0].count("|") - 1)
    for r in report["rows"]:
        cells = [r["workload"], r["weights"], f"{r['graphc_min_s']:.3f} / {r['graphc_median_s']:.3f}"]
        if compare:
            cells.append(f"{r['compare_min_s']:.3f} / {r['compare_median_s']:.3f}" if "compare_min_s" in r else "")
        if "speedup_min" in r:
            cells += [f"{r['dynamo_min_s']:.2f} / {r['dynamo_median_s']:.2f}",
                      f"{r['speedup_min']:.1f}x / {r['speedup_median']:.1f}x"]
        else:
            cells += ["", ""]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| target | value | status |", "|---|---|---|"]
    for what, value, ok in report["targets"]:
        lines.append(f"| {what} | {value:.3f} | {'PASS' if ok else 'MISS'} |")
    if report.get("breakdown"):
        lines += ["", "| stage (one in-process run, " + ", ".join(report["breakdown"]) + ") | "
                  + " | ".join("s" for _ in report["breakdown"]) + " |",
                  "|---|" + "---|" * len(report["breakdown"])]
        stages = list(next(iter(report["breakdown"].values())))
        for s in stages:
            lines.append(f"| {s} | " + " | ".join(f"{b.get(s, 0):.3f}" for b in report["breakdown"].values()) + " |")
    return "\n".join(lines)


def breakdown(names: list[str], files: dict, tmp: Path, timeout: float) -> dict:
    out = {}
    for n in names:
        for how, weights in (("seeded", ""), ("safetensors", files[n]["safetensors"])):
            code = _STAGES.format(spec=str(ROOT / SPECS[n]), weights=weights, output=str(tmp / "stages.onnx"))
            p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                               capture_output=True, text=True, timeout=timeout)
            if p.returncode != 0:               # the timed rounds are reported all the same
                print(f"breakdown of {n} {how} failed: {p.stderr.strip()[-500:]}", file=sys.stderr)
                continue
            out[f"{n} {how}"] = json.loads(p.stdout.strip().splitlines()[-1])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="encoder,transformer", help="encoder, transformer (comma-separated)")
    p.add_argument("--reps", type=int, default=7, help="runs of each graphc build (default 7)")
    p.add_argument("--dynamo-reps", type=int, default=2, help="runs of each dynamo export process (default 2; 0: none)")
    p.add_argument("--npz", action="store_true", help="also build from the .npz weights")
    p.add_argument("--compare-tree", help="another graphc source tree (an older checkout) measured in the same rounds")
    p.add_argument("--same-output", action="store_true", help="rebuild over the previous output instead of a new file")
    p.add_argument("--breakdown", action="store_true", help="also time the stages of one in-process build")
    p.add_argument("--torch-python", default=sys.executable,
                   help="the Python that runs the dynamo export (it needs torch, onnxscript and safetensors; "
                        "default: this one)")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    args.only = [n for n in args.only.split(",") if n]
    bad = [n for n in args.only if n not in SPECS]
    if bad:
        p.error(f"unknown workload(s) {bad}; choose from {list(SPECS)}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="graphc-bench-compile-") as d:
        tmp = Path(d)
        # bytecode as an installed package has it (pip compiles what it installs; this machine sets
        # PYTHONDONTWRITEBYTECODE, so without this every build would compile graphc from source)
        for tree in [str(ROOT)] + ([args.compare_tree] if args.compare_tree else []):
            compileall.compile_dir(str(Path(tree) / "graphc"), quiet=1)
        log("writing weights ...")
        files = make_weight_files(args.only, tmp)
        cands = candidates(args, files, tmp)
        run_rounds(cands, args, log)
        report = summary(cands, args.only)
        report["targets"] = targets(report["rows"])
        if args.breakdown:
            report["breakdown"] = breakdown(args.only, files, tmp, args.timeout)
    report["machine"] = {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                         "load_average": os.getloadavg()}
    print(markdown(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
