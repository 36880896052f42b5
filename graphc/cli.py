"""The graphc command line. Argument parsing and printing only: the work is
done by the public API (graphc.compiler, graphc.runtime, graphc.analysis)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from . import __version__
from .errors import GraphcError, InternalError


def _dims(values: Sequence[str]) -> dict[str, int]:
    out = {}
    for item in values or ():
        name, sep, num = item.partition("=")
        if not sep or not name.isidentifier():
            raise GraphcError(f"--dim expects NAME=SIZE, got '{item}'")
        try:
            n = int(num)
        except ValueError:
            raise GraphcError(f"--dim {name}: '{num}' is not an integer") from None
        if n < 0:
            raise GraphcError(f"--dim {name}: size must not be negative")
        out[name] = n
    return out


def _is_spec(path: str) -> bool:
    return Path(path).suffix.lower() in (".yaml", ".yml")


def _add_compile_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", help="a .safetensors or .npz file with torch state_dict names")
    p.add_argument("--seed", type=int, default=0, help="seed for initial weights when --weights is not given")
    p.add_argument("--opset", type=int, default=None, help="target ONNX opset (17..26; default 17)")
    p.add_argument("--include-dir", action="append", default=[], help="also allow includes from this directory")


def _compile(args):
    from .compiler import compile_spec
    return compile_spec(args.spec, args.weights, args.seed, args.opset, args.include_dir)


# ------------------------------------------------------------------ commands

def cmd_check(args) -> int:
    from .compiler import check_spec
    t0 = time.perf_counter()
    spec, g = check_spec(args.spec, args.include_dir)
    from .analysis import layer_rows
    rows = layer_rows(g, _dims(args.dim), depth=args.depth)
    width = max([len(r.layer) for r in rows] + [5])
    for r in rows:
        print(f"{r.layer:<{width}}  {r.shape}")
    for public, name in g.outputs.items():
        print(f"output {public}: {g.value(name).type}")
    n_params = sum(int(np.prod(p.type.concrete_shape())) for p in g.params())
    print(f"ok: {spec.path}: {len(rows)} layers, {n_params:,} parameters, checked in "
          f"{(time.perf_counter() - t0) * 1000:.0f} ms")
    return 0


def cmd_build(args) -> int:
    from .lower import check_model, save_model
    out = Path(args.output)
    for src in [args.spec] + ([args.weights] if args.weights else []):
        if out.exists() and Path(src).exists() and os.path.samefile(out, src):
            raise GraphcError(f"refusing to write the output over the input {src}", hint="choose another -o path")
    t0 = time.perf_counter()
    compiled = _compile(args)
    if args.check:
        check_model(compiled.model)
    size = save_model(compiled.model, out)
    if not args.quiet:
        n_params = sum(int(np.prod(t.dims)) for t in compiled.model.graph.initializer)
        print(f"wrote {out} ({size / 1e6:.1f} MB, {len(compiled.model.graph.node)} nodes, "
              f"{n_params:,} weights, opset {compiled.model.opset_import[0].version}) in "
              f"{time.perf_counter() - t0:.2f} s")
    return 0


def _load_inputs(items: Sequence[str]) -> dict[str, np.ndarray]:
    feeds = {}
    for item in items or ():
        name, sep, path = item.partition("=")
        if not sep:
            if item.endswith(".npz"):
                try:
                    with np.load(item, allow_pickle=False) as z:
                        feeds.update({k: z[k] for k in z.files})
                except (OSError, ValueError) as exc:
                    raise GraphcError(f"cannot read inputs from {item}: {exc}") from None
                continue
            raise GraphcError(f"--input expects NAME=FILE.npy (or FILE.npz), got '{item}'")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise GraphcError(f"cannot read input '{name}' from {path}: {exc}") from None
    return feeds


def cmd_run(args) -> int:
    from .runtime import make_session, random_inputs, run_model
    if _is_spec(args.model):
        args.spec = args.model
        from .lower import serialize
        model = serialize(_compile(args).model)
    else:
        if not Path(args.model).is_file():
            raise GraphcError(f"model file not found: {args.model}")
        model = args.model
    session = make_session(model, args.provider, args.threads)
    feeds = _load_inputs(args.input)
    if args.random:
        rand = random_inputs(session, _dims(args.dim), args.seed)
        feeds = {**rand, **feeds}
    outs = run_model(session, feeds)
    if args.bench:
        times = []
        for _ in range(args.warmup):
            session.run(None, feeds)
        for _ in range(args.bench):
            t0 = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - t0)
        times.sort()
        print(f"latency over {args.bench} runs after {args.warmup} warm-up: median {times[len(times) // 2] * 1e3:.3f} ms, "
              f"min {times[0] * 1e3:.3f} ms, max {times[-1] * 1e3:.3f} ms ({args.provider}, "
              f"{args.threads or 'default'} threads)")
    for name, arr in outs.items():
        line = f"{name}: {arr.dtype}{list(arr.shape)}"
        if arr.size and arr.dtype.kind == "f":
            a = arr.astype(np.float64)
            bad = int(np.count_nonzero(~np.isfinite(a)))
            fin = a[np.isfinite(a)]
            if fin.size:
                line += f"  mean {fin.mean():.6g}  std {fin.std():.6g}  min {fin.min():.6g}  max {fin.max():.6g}"
            if bad:
                line += f"  NON-FINITE: {bad}"
        print(line)
    if args.output:
        out = Path(args.output)
        fd, tmp = tempfile.mkstemp(prefix=".graphc-", suffix=".npz", dir=out.parent if str(out.parent) else ".")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **outs)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return 0


def cmd_params(args) -> int:
    from .compiler import check_spec
    _, g = check_spec(args.spec, args.include_dir)
    total = 0
    rows = []
    for p in g.params():
        shape = p.type.concrete_shape()
        n = int(np.prod(shape)) if shape else 1
        total += n
        rows.append((p.name, list(shape), n))
    if args.json:
        print(json.dumps({"params": [{"name": r[0], "shape": r[1], "count": r[2]} for r in rows], "total": total}, indent=1))
        return 0
    width = max([len(r[0]) for r in rows] + [4])
    for name, shape, n in rows:
        print(f"{name:<{width}}  {str(shape):<16} {n:>12,}")
    print(f"{'total':<{width}}  {'':<16} {total:>12,}")
    return 0


def cmd_info(args) -> int:
    from .analysis import layer_rows
    from .compiler import check_spec
    _, g = check_spec(args.spec, args.include_dir)
    dims = {**g.dim_examples, **_dims(args.dim)}
    rows = layer_rows(g, dims, depth=args.depth)
    total_p = sum(r.params for r in rows)
    total_f = None if any(r.flops is None for r in rows) else sum(r.flops for r in rows)
    if args.json:
        print(json.dumps({"dims": dims, "layers": [r.__dict__ for r in rows],
                          "total_params": total_p, "total_flops": total_f}, indent=1))
        return 0
    width = max([len(r.layer) for r in rows] + [5])
    swidth = max([len(r.shape) for r in rows] + [12])
    print(f"{'layer':<{width}}  {'output shape':<{swidth}}  {'params':>12}  {'FLOPs':>14}")
    print("-" * (width + swidth + 32))
    for r in rows:
        flops = "?" if r.flops is None else f"{r.flops:,}"
        print(f"{r.layer:<{width}}  {r.shape:<{swidth}}  {r.params:>12,}  {flops:>14}")
    print("-" * (width + swidth + 32))
    tf = "?" if total_f is None else f"{total_f:,}"
    print(f"{'total':<{width}}  {'':<{swidth}}  {total_p:>12,}  {tf:>14}")
    print(f"dims: {', '.join(f'{k}={v}' for k, v in dims.items()) or '(none)'}; "
          f"{total_p * 4 / 1e6:.1f} MB of float32 weights")
    return 0


def cmd_graph(args) -> int:
    from .compiler import check_spec
    from .render import render_graph
    _, g = check_spec(args.spec, args.include_dir)
    text = render_graph(g, args.format, ops=args.ops, dims=_dims(args.dim))
    if args.output:
        from .render import write_atomic
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text if isinstance(text, str) else text.decode())
    return 0


# ------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphc", description="Compile YAML model specs to ONNX.")
    p.add_argument("--version", action="version", version=f"graphc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="parse and shape-check a spec (no weights allocated)")
    c.add_argument("spec")
    c.add_argument("--dim", action="append", default=[], metavar="NAME=N", help="show shapes at these dim sizes")
    c.add_argument("--depth", type=int, default=None, help="group layers at this nesting depth")
    c.add_argument("--include-dir", action="append", default=[])
    c.set_defaults(fn=cmd_check)

    b = sub.add_parser("build", help="compile a spec to an .onnx file")
    b.add_argument("spec")
    b.add_argument("-o", "--output", required=True)
    _add_compile_args(b)
    b.add_argument("--no-check", dest="check", action="store_false", help="skip the ONNX checker")
    b.add_argument("-q", "--quiet", action="store_true")
    b.set_defaults(fn=cmd_build)

    r = sub.add_parser("run", help="run an .onnx file (or a spec, compiled in memory) on ONNX Runtime")
    r.add_argument("model")
    r.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    r.add_argument("--random", action="store_true", help="random inputs for those not given")
    r.add_argument("--dim", action="append", default=[], metavar="NAME=N")
    r.add_argument("--output", help="save outputs to this .npz")
    r.add_argument("--provider", default="cpu", choices=["cpu", "cuda"])
    r.add_argument("--threads", type=int, default=None)
    r.add_argument("--bench", type=int, default=0, metavar="N", help="time N runs and print the median")
    r.add_argument("--warmup", type=int, default=3)
    _add_compile_args(r)
    r.set_defaults(fn=cmd_run)

    pa = sub.add_parser("params", help="list every parameter: name, shape, count")
    pa.add_argument("spec")
    pa.add_argument("--json", action="store_true")
    pa.add_argument("--include-dir", action="append", default=[])
    pa.set_defaults(fn=cmd_params)

    i = sub.add_parser("info", help="per-layer table: output shape, params, FLOPs")
    i.add_argument("spec")
    i.add_argument("--dim", action="append", default=[], metavar="NAME=N")
    i.add_argument("--depth", type=int, default=None)
    i.add_argument("--json", action="store_true")
    i.add_argument("--include-dir", action="append", default=[])
    i.set_defaults(fn=cmd_info)

    g = sub.add_parser("graph", help="the graph as dot or mermaid text")
    g.add_argument("spec")
    g.add_argument("--format", default="dot", choices=["dot", "mermaid"])
    g.add_argument("--ops", action="store_true", help="primitive ops instead of spec layers")
    g.add_argument("--dim", action="append", default=[], metavar="NAME=N")
    g.add_argument("-o", "--output")
    g.add_argument("--include-dir", action="append", default=[])
    g.set_defaults(fn=cmd_graph)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except GraphcError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graphc: interrupted; no output was written", file=sys.stderr)
        return 130
    except RecursionError:
        print("graphc: error: the input is nested too deeply", file=sys.stderr)
        return 2
    except MemoryError:
        print("graphc: error: out of memory; the model is too large for this machine", file=sys.stderr)
        return 2
    except (InternalError, Exception) as exc:  # a bug in graphc: say so, briefly
        if os.environ.get("GRAPHC_DEBUG"):
            raise
        print(f"graphc: internal error: {type(exc).__name__}: {exc}\n"
              f"this is a bug in graphc; rerun with GRAPHC_DEBUG=1 for a traceback and report it", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
