#!/usr/bin/env python
"""Generation speed: graphc's KV-cache bundles against Hugging Face transformers' eager
generate() (with its cache), and optionally Optimum's export and onnxruntime-genai, same
weights, same prompts, greedy, in one run.

    python tools/bench_generate.py --json-out gen.json          # the full measurement (minutes)
    python tools/bench_generate.py --quick                      # tiny models, a few seconds
    python tools/bench_generate.py --only llama --batches 1 --reps 3

Workloads (tools/gen_models.py): "llama", a LLaMA-like decoder (hidden 512, 8 layers, 8 heads,
4 kv heads, FFN 1376, vocab 32000, untied; 56M parameters), and "base", the paper's base
Transformer (6+6 layers, 512, FFN 2048, 8 heads, vocab 37000) in Marian's layout (HF's
MarianMTModel is the transformers side). Random weights, std 0.05. Prompts of 32 tokens
(batch 4: 32, 24, 16 and 28 real tokens, left-padded), 128 new tokens, eos off so every run
is the same length, 2 threads everywhere (torch.set_num_threads, ORT intra-op threads).

Per run, the times at which each step's scores become available are recorded (graphc: a
wrapper around the step model; transformers: a logits processor, called once per step):
time to first token = the first one; the step latency at token k = time(k) - time(k-1);
decode tokens/s = batch * (new - 1) / (time(last) - time(first)). Tools are interleaved
rep by rep and medians reported; ratios are the only numbers comparable across runs of a
busy machine. Greedy ids are compared (graphc against transformers) in every run. Each timed
run starts after ``--settle`` seconds of idle (0.2): an ONNX Runtime session's worker threads keep
spinning for a while after a run (tens of milliseconds), and without the pause the next tool's prompt
step shared the two cores with them (graphc's time to first token measured 26-35 ms right after
another session against 15-17 ms alone or after a 0.1 s pause; each tool would run alone in a user's
process).

With --tools ...,optimum,genai also Optimum's ONNX export on ORT and onnxruntime-genai's model
builder output (fp32), each from its own environment (--optimum-python, --genai-python; see
docs/generation.md, "Performance"):

    python tools/bench_generate.py --tools graphc,transformers,optimum,genai \
        --optimum-python optimum-venv/bin/python --genai-python genai-venv/bin/python --json-out gen.json
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import gen_models as gm  # noqa: E402

QUICK_LLAMA = dict(vocab=512, d_model=64, heads=4, kv_heads=2, layers=2, d_ff=128, max_len=256, eos=2)
QUICK_BASE = dict(vocab=512, d_model=64, heads=4, d_ff=128, layers=2, max_len=256)


def _prompts(batch: int, prompt: int, vocab: int, seed: int, pad: int, left: bool) -> np.ndarray:
    """[batch, prompt] ids in [4, vocab); rows shorter than the first padded with pad
    (left for decoder prompts, right for sources)."""
    rng = np.random.default_rng(seed)
    lengths = [prompt, prompt * 3 // 4, prompt // 2, prompt * 7 // 8][:batch] if batch > 1 else [prompt]
    lengths += [prompt] * (batch - len(lengths))
    ids = np.full((batch, prompt), pad, np.int64)
    for i, n in enumerate(lengths):
        row = rng.integers(4, vocab, size=n)
        if left:
            ids[i, prompt - n:] = row
        else:
            ids[i, :n] = row
    return ids


class _Clock:
    """A step model wrapper recording when each step's scores are ready."""

    def __init__(self, inner):
        self.inner, self.times = inner, []

    def start(self, ids, mask):
        out = self.inner.start(ids, mask)
        self.times.append(time.perf_counter())
        return out

    def step(self, tokens):
        out = self.inner.step(tokens)
        self.times.append(time.perf_counter())
        return out

    def reorder(self, index):
        self.inner.reorder(index)


def run_graphc(gen, ids, new, encoder_decoder):
    """One greedy run; returns (ids, t0, step times)."""
    from graphc.generation.api import _WithCapacity
    from graphc.generation.search import greedy_or_sample
    b = gen.bundle
    t0 = time.perf_counter()
    if encoder_decoder:
        gen.decoder.set_fixed(gen.encoder(ids))
        start = np.full((ids.shape[0], 1), b.decoder_start, np.int64)
        mask = np.ones_like(start)
    else:
        gen.decoder.set_fixed({})
        start, mask = ids, (np.cumsum(ids != b.pad, 1) > 0).astype(np.int64)
    clock = _Clock(_WithCapacity(gen.decoder, new))
    out = greedy_or_sample(clock, start, mask, max_new_tokens=new, eos=(), pad=b.pad)
    return out, t0, clock.times


def run_hf(model, ids, new, encoder_decoder, pad):
    import torch
    import transformers

    class Clock(transformers.LogitsProcessor):
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    clock = Clock()
    cfg = transformers.GenerationConfig(do_sample=False, max_new_tokens=new, min_new_tokens=new, eos_token_id=None,
                                        pad_token_id=pad, use_cache=True,
                                        decoder_start_token_id=3 if encoder_decoder else None)
    mask = torch.from_numpy((ids != pad).astype(np.int64))
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=mask, generation_config=cfg,
                             logits_processor=transformers.LogitsProcessorList([clock]))
    out = out.numpy()[:, (1 if encoder_decoder else ids.shape[1]):]
    return out, t0, clock.times


def _metrics(t0, times, batch, new):
    lat = np.diff(np.array(times)) * 1e3
    k8, k120 = min(8, len(times) - 1), min(120, len(times) - 1)
    return {"ttft_ms": (times[0] - t0) * 1e3,
            "step8_ms": float(lat[k8 - 1]) if k8 >= 1 else None,
            "step120_ms": float(lat[k120 - 1]) if k120 >= 1 else None,
            "step_median_ms": float(np.median(lat)) if lat.size else None,
            "decode_tok_s": batch * (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else None}


def _median(runs, key):
    vals = [r[key] for r in runs if r[key] is not None]
    return statistics.median(vals) if vals else None


def bench_workload(name, dims, args, tmp: Path) -> dict:
    import torch
    from graphc.generation.api import Generator
    from graphc.generation.bundle_write import build_bundle
    torch.manual_seed(0)
    enc_dec = name == "base"
    if enc_dec:
        model = gm.marian_model(gm.hf_marian(**dims), 0.05)
        weights, text, pad = gm.marian_weights(model), gm.MARIAN_TEMPLATE.format(**dims), 1
    else:
        import transformers
        model = gm.randomize(transformers.LlamaForCausalLM(gm.hf_llama(**dims)).eval(), 0.05)
        weights, text, pad = gm.llama_weights(model), gm.LLAMA_TEMPLATE.format(**dims), 0
    spec = tmp / f"{name}.yaml"
    spec.write_text(text)
    t = time.perf_counter()
    build_bundle(spec, tmp / name, weights)
    build_s = time.perf_counter() - t
    gen = Generator(tmp / name, threads=args.threads)
    n_params = sum(int(np.prod(v.shape)) for v in weights.values())
    result = {"params": n_params, "build_s": build_s, "batches": {}}
    tools = {"graphc": lambda ids, new: run_graphc(gen, ids, new, enc_dec)}
    if "graphc-shared" in args.tools:
        # --target ort --cache-layout shared: one buffer per layer updated in place (GroupQueryAttention)
        build_bundle(spec, tmp / f"{name}_shared", weights, target="ort", cache_layout="shared")
        gen_shared = Generator(tmp / f"{name}_shared", threads=args.threads)
        tools["graphc-shared"] = lambda ids, new: run_graphc(gen_shared, ids, new, enc_dec)
    if "transformers" in args.tools:
        tools["transformers"] = lambda ids, new: run_hf(model, ids, new, enc_dec, pad)
    if "genai" in args.tools:
        if enc_dec:
            result["genai"] = "onnxruntime-genai's builder does not take Marian/BART-style models"
        else:
            og_model = build_genai(model, dims, tmp / f"{name}_genai", args)
            tools["genai"] = lambda ids, new: run_genai(og_model, ids, new, pad, args.threads)
    if "optimum" in args.tools:
        worker = OptimumWorker(model, tmp / f"{name}_optimum", args, enc_dec)
        tools["optimum"] = worker.run
    for batch in args.batches:
        ids = _prompts(batch, args.prompt, dims["vocab"], 1, pad, left=not enc_dec)
        runs = {tool: [] for tool in tools}
        outs = {}
        for fn in tools.values():                                        # warm-up
            fn(ids, min(args.new, 4))
        for _ in range(args.reps):                                       # interleaved
            for tool, fn in tools.items():
                time.sleep(args.settle)     # the previous tool's spinning threads go idle first
                out, t0, times = fn(ids, args.new)
                runs[tool].append(_metrics(t0, times, batch, args.new))
                outs[tool] = out
        keys = ["ttft_ms", "step8_ms", "step120_ms", "step_median_ms", "decode_tok_s"]
        med = {tool: {k: _median(r, k) for k in keys} for tool, r in runs.items()}
        ref = outs.get("transformers")
        for tool in tools:
            if tool != "transformers":
                med[tool]["ids_equal_rows"] = (None if ref is None else
                                               [bool(r) for r in (outs[tool] == ref).all(axis=1)]
                                               if outs[tool].shape == ref.shape else [False] * batch)
        def ratios(mine: str, others) -> dict:
            m = med[mine]
            out = {f"decode_tok_s_vs_{t}": m["decode_tok_s"] / med[t]["decode_tok_s"] for t in others}
            out.update({f"ttft_vs_{t}": m["ttft_ms"] / med[t]["ttft_ms"] for t in others})
            return out
        g = med["graphc"]
        med["ratios"] = ratios("graphc", [t for t in tools if t != "graphc"])
        if "graphc-shared" in tools:
            med["ratios_shared"] = ratios("graphc-shared", [t for t in tools if not t.startswith("graphc")])
        med["ratios"]["graphc_step120_over_step8"] = (g["step120_ms"] / g["step8_ms"]
                                                      if g["step8_ms"] and g["step120_ms"] else None)
        med["ids_equal"] = None if ref is None else all(g["ids_equal_rows"])
        result["batches"][str(batch)] = med
        line = f"{name} b{batch}:"
        for tool in tools:
            m = med[tool]
            line += f" | {tool} {m['decode_tok_s']:.0f} tok/s (step {m['step_median_ms']:.2f} ms, ttft {m['ttft_ms']:.1f} ms)"
            if "ids_equal_rows" in m and m["ids_equal_rows"] is not None:
                line += f" ids equal {sum(m['ids_equal_rows'])}/{batch}"
        print(line, flush=True)
    return result


def build_genai(model, dims, out: Path, args):
    """onnxruntime-genai's model builder output (fp32, CPU) for the same HF model. The
    builder runs in ``--genai-python`` (an environment with onnxruntime-genai and onnx-ir;
    default: this one) and wants a tokenizer beside the model: a word-level one is made."""
    import subprocess
    hf_dir = out.parent / (out.name + "_hf")
    model.save_pretrained(hf_dir)
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    tok = Tokenizer(WordLevel({f"w{i}": i for i in range(dims["vocab"])}, unk_token="w0"))
    tok.save(str(hf_dir / "tokenizer.json"))
    (hf_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "w0", "pad_token": "w0"}))
    proc = subprocess.run([args.genai_python, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir),
                           "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(out.parent / "genai_cache")],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"onnxruntime-genai's builder failed:\n{proc.stderr[-2000:]}")
    import onnxruntime_genai as og
    cfg = json.loads((out / "genai_config.json").read_text())
    cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = args.threads
    (out / "genai_config.json").write_text(json.dumps(cfg))
    return og.Model(str(out))


class OptimumWorker:
    """Optimum's ONNX export (``text-generation-with-past`` / ``text2text-generation-with-past``)
    run by Optimum's ORTModel generate() in ``--optimum-python`` (an environment with
    optimum-onnx, whose transformers must be < 4.58): a worker process that answers one
    timed greedy run per request, so its runs interleave with the other tools'."""

    def __init__(self, model, out: Path, args, enc_dec):
        import subprocess
        hf_dir = out.parent / (out.name + "_hf")
        model.save_pretrained(hf_dir)
        task = "text2text-generation-with-past" if enc_dec else "text-generation-with-past"
        proc = subprocess.run([args.optimum_python, "-m", "optimum.exporters.onnx", "--model", str(hf_dir),
                               "--task", task, "--no-post-process", str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"Optimum's export failed:\n{proc.stderr[-2000:]}")
        self.proc = subprocess.Popen([args.optimum_python, __file__, "--optimum-worker", str(out),
                                      "--threads", str(args.threads)] + (["--enc-dec"] if enc_dec else []),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pad = 1 if enc_dec else 0

    def run(self, ids, new):
        self.proc.stdin.write(json.dumps({"ids": ids.tolist(), "new": new, "pad": self.pad}) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return np.array(reply["out"], np.int64), reply["t0"], reply["times"]


def optimum_worker(directory: str, threads: int, enc_dec: bool) -> int:
    """The --optimum-worker loop: one JSON request per line on stdin, one reply on stdout."""
    import onnxruntime as ort
    import torch
    import transformers
    from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSeq2SeqLM
    torch.set_num_threads(threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    cls = ORTModelForSeq2SeqLM if enc_dec else ORTModelForCausalLM
    model = cls.from_pretrained(directory, session_options=opts, use_cache=True)

    class Clock(transformers.LogitsProcessor):
        def __call__(self, input_ids, scores):
            self.times.append(time.perf_counter())
            return scores

    for line in sys.stdin:
        req = json.loads(line)
        ids = np.array(req["ids"], np.int64)
        clock = Clock()
        clock.times = []
        cfg = transformers.GenerationConfig(do_sample=False, max_new_tokens=req["new"], min_new_tokens=req["new"],
                                            eos_token_id=None, pad_token_id=req["pad"], use_cache=True,
                                            decoder_start_token_id=3 if enc_dec else None)
        t0 = time.perf_counter()
        out = model.generate(input_ids=torch.from_numpy(ids),
                             attention_mask=torch.from_numpy((ids != req["pad"]).astype(np.int64)),
                             generation_config=cfg, logits_processor=transformers.LogitsProcessorList([clock]))
        out = out.numpy()[:, (1 if enc_dec else ids.shape[1]):]
        sys.stdout.write(json.dumps({"out": out.tolist(), "t0": t0, "times": clock.times}) + "\n")
        sys.stdout.flush()
    return 0


def run_genai(og_model, ids, new, pad, threads):
    import onnxruntime_genai as og
    t0 = time.perf_counter()
    params = og.GeneratorParams(og_model)
    params.set_search_options(max_length=ids.shape[1] + new, min_length=ids.shape[1] + new, do_sample=False,
                              batch_size=ids.shape[0])
    gen = og.Generator(og_model, params)
    gen.append_tokens(ids.astype(np.int32))
    times, out = [], []
    while not gen.is_done():
        gen.generate_next_token()
        times.append(time.perf_counter())
        out.append(np.array(gen.get_next_tokens(), dtype=np.int64))
    return np.stack(out, axis=1), t0, times


def markdown(report) -> str:
    """One row per workload, batch and tool; the ratio columns are graphc's decode tokens/s over
    that tool's (graphc's own rows: blank), for the default bundle and, with the graphc-shared
    tool, the --target ort --cache-layout shared one; ids: rows equal to transformers' ids."""
    lines = ["| workload | batch | tool | TTFT ms | step@8 ms | step@120 ms | tok/s | graphc tok/s ratio | "
             "graphc-shared tok/s ratio | ids = transformers |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"
    for name, w in report["workloads"].items():
        for batch, m in w["batches"].items():
            for tool in [t for t in ("graphc", "graphc-shared", "transformers", "optimum", "genai") if t in m]:
                r = m[tool]
                ratio = m["ratios"].get(f"decode_tok_s_vs_{tool}")
                shared = m.get("ratios_shared", {}).get(f"decode_tok_s_vs_{tool}")
                rows = r.get("ids_equal_rows")
                ids = "" if tool == "transformers" else "-" if rows is None else f"{sum(rows)}/{len(rows)} rows"
                lines.append(f"| {name} | {batch} | {tool} | {f(r['ttft_ms'], 1)} | {f(r['step8_ms'])} | "
                             f"{f(r['step120_ms'])} | {f(r['decode_tok_s'], 0)} | "
                             f"{'' if ratio is None else f(ratio) + 'x'} | "
                             f"{'' if shared is None else f(shared) + 'x'} | {ids} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models, 16 new tokens, 1 rep (a smoke run)")
    p.add_argument("--only", default="llama,base", help="workloads: llama, base")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--settle", type=float, default=0.2,
                   help="seconds of idle before each timed run (default 0.2): ONNX Runtime's worker threads "
                        "spin after a run; without a pause the next tool's first steps share the cores with them")
    p.add_argument("--tools", default="graphc,transformers",
                   help="comma list of graphc, graphc-shared (--target ort --cache-layout shared), transformers, "
                        "optimum (Optimum's export on ORT), genai "
                        "(onnxruntime-genai's builder output, fp32; "
                        "graphc alone skips transformers, whose OpenMP threads suffer most on a busy machine)")
    p.add_argument("--optimum-python", default=sys.executable,
                   help="a python with optimum-onnx (transformers < 4.58) for --tools ...,optimum")
    p.add_argument("--optimum-worker", help=argparse.SUPPRESS)
    p.add_argument("--enc-dec", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--genai-python", default=sys.executable,
                   help="a python with onnxruntime-genai and onnx-ir, to run genai's model builder")
    p.add_argument("--json-out")
    args = p.parse_args(argv)
    if args.optimum_worker:
        return optimum_worker(args.optimum_worker, args.threads, args.enc_dec)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.tools = args.tools.split(",")
    if args.quick:
        args.new, args.reps, args.prompt = min(args.new, 16), 1, min(args.prompt, 8)
        args.settle = 0.0
    import torch
    torch.set_num_threads(args.threads)
    import onnxruntime
    import transformers
    report = {"config": {"quick": args.quick, "tools": args.tools, "batches": args.batches, "prompt": args.prompt, "new": args.new,
                         "reps": args.reps, "threads": args.threads, "torch": torch.__version__,
                         "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__},
              "workloads": {}}
    sizes = {"llama": QUICK_LLAMA if args.quick else gm.LLAMA_BENCH,
             "base": QUICK_BASE if args.quick else gm.MARIAN_BASE}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            if name not in sizes:
                p.error(f"unknown workload {name!r} (llama, base)")
            report["workloads"][name] = bench_workload(name, sizes[name], args, Path(tmp))
    print(markdown(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
