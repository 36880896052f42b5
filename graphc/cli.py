"""The graphc command line. Argument parsing and printing only: the work is
done by the public API (graphc.compiler, graphc.runtime, graphc.analysis)."""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence


from . import __version__
from .errors import GraphcError, InternalError


def _dims(values: Sequence[str], known: Iterable[str] | None = None) -> dict[str, int]:
    """--dim NAME=N values. With ``known`` (the model's dim names, or a spec's
    dims mapping), a name it lacks is an error: a typo like BATCH=3 must not
    quietly run at the example size; a size above a spec's declared max is too."""
    out = {}
    declared = known if isinstance(known, Mapping) else {}
    names = None if known is None else sorted(known)
    for item in values or ():
        name, sep, num = item.partition("=")
        if not sep or not name.isidentifier():
            raise GraphcError(f"--dim expects NAME=SIZE, got '{item}'")
        if names is not None and name not in names:
            from .errors import did_you_mean
            raise GraphcError(f"--dim {name}: the model has no dim '{name}'",
                              hint=did_you_mean(name, names) or
                              (f"its dims: {', '.join(names)}" if names else "its shapes are all fixed"))
        try:
            n = int(num)
        except ValueError:
            raise GraphcError(f"--dim {name}: '{num}' is not an integer") from None
        if n < 0:
            raise GraphcError(f"--dim {name}: size must not be negative")
        most = getattr(declared.get(name), "max", None)
        if most is not None and n > most:
            raise GraphcError(f"--dim {name}={n}: the spec declares {name} at most {most}", hint=f"use {name} <= {most}")
        if out.get(name, n) != n:       # the later one silently won
            raise GraphcError(f"--dim {name} is given twice, as {out[name]} and as {n}", hint="give each dim once")
        out[name] = n
    return out


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _byte_size(text: str) -> int:
    """'4G', '512MiB', '1000000' -> bytes (binary units), for --max-param-bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _SIZE_UNITS else ""
    try:
        n = float(t[:len(t) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size like 4G, 512M or 1000000, got '{text}'") from None
    if not n > 0:
        raise argparse.ArgumentTypeError(f"expected a positive size, got '{text}'")
    if n * _SIZE_UNITS[unit] > 1 << 60:
        raise argparse.ArgumentTypeError(f"'{text}' is more than 1 EiB (2**60 bytes), the largest budget accepted")
    return int(n * _SIZE_UNITS[unit])


def _depth(text: str) -> int:
    """--depth N: 1 is the spec's top-level layers, so 0 or less names no level."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (1: the spec's top-level layers), got {n}")
    return n


def _add_budget_arg(p: argparse.ArgumentParser) -> None:
    from .expand import DEFAULT_MAX_PARAM_BYTES
    p.add_argument("--max-param-bytes", type=_byte_size, default=DEFAULT_MAX_PARAM_BYTES, metavar="SIZE",
                   help="refuse models whose parameters exceed this (e.g. 16G; default 2G); check, params, info "
                        "and graph allocate no parameters, so for them only computed tables count")


def _is_spec(path: str) -> bool:
    return Path(path).suffix.lower() in (".yaml", ".yml")


def _add_compile_args(p: argparse.ArgumentParser, seed_also: str = "") -> None:
    p.add_argument("--weights", help="a .safetensors or .npz file with torch state_dict names, or a checkpoint "
                   "directory (model.safetensors, or sharded with model.safetensors.index.json)")
    p.add_argument("--ignore-weights", action="append", default=[], metavar="PATTERN",
                   help="drop the checkpoint's tensors matching PATTERN ('*' = one name segment), with a note")
    p.add_argument("--seed", type=int, default=0,
                   help=f"seed for initial weights when --weights is not given{seed_also} (default 0)")
    p.add_argument("--opset", type=int, default=None, help="target ONNX opset (17..26; default 17)")
    p.add_argument("--include-dir", action="append", default=[], metavar="DIR",
                   help=INCLUDE_DIR_HELP)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"],
                   help="precision of the model's float tensors (float16: softmax and norms still in float32)")
    p.add_argument("--quantize", default=None, metavar="MODE",
                   help="int8: dynamic int8 projections and feed-forward layers (docs/quantize.md); "
                        "none: float; default: the spec's quantize: section, else none")
    p.add_argument("--target", default="onnx", metavar="TARGET",
                   help="onnx (standard operators, the default) or ort (ONNX Runtime contrib operators)")
    p.add_argument("--max-error", type=float, default=None, metavar="X",
                   help="refuse a quantized model whose relative RMS error on any output exceeds X (e.g. 0.01)")
    _add_budget_arg(p)


def _refuse_ignore_without_weights(args) -> None:
    """--ignore-weights drops tensors of the --weights file; without one it
    changed nothing, silently (the weights were initialised from --seed)."""
    if getattr(args, "ignore_weights", None) and not args.weights:
        raise GraphcError("--ignore-weights applies to the tensors of a --weights file, and none is given",
                          hint="add --weights FILE, or leave out --ignore-weights")


def _compile(args, progress=None, keep_weights=True):
    from .compiler import compile_spec
    from .progress import Progress
    _refuse_ignore_without_weights(args)
    compiled = compile_spec(args.spec, args.weights, args.seed, args.opset, args.include_dir, progress=progress,
                            keep_weights=keep_weights, max_param_bytes=args.max_param_bytes, dtype=args.dtype,
                            quantize=args.quantize, target=args.target, max_error=args.max_error,
                            ignore_weights=args.ignore_weights)
    if not getattr(args, "quiet", False):
        if compiled.graph.warnings and isinstance(progress, Progress):
            progress.close()
        _print_warnings(compiled.graph)
        if compiled.quantization is not None:
            if isinstance(progress, Progress):
                progress.close()
            for line in compiled.quantization.summary():
                print(f"graphc: {line}", file=sys.stderr)
        for note in compiled.notes:
            if isinstance(progress, Progress):
                progress.close()            # erase the progress line; it redraws at the next stage
            print(f"graphc: note: {note}", file=sys.stderr)
    return compiled


# ------------------------------------------------------------------ commands

def inspect_spec(args):
    """check, params, info, graph: the spec checked, its parameters declared but never
    allocated, so only constant tables count against --max-param-bytes; an .onnx file
    is refused with the commands that read one (graphc.spec_or_model)."""
    from .compiler import check_spec
    from .spec_or_model import refuse_compiled_model
    refuse_compiled_model(args.spec, args.command)
    spec, g = check_spec(args.spec, args.include_dir, args.max_param_bytes, params_allocated=False)
    _print_warnings(g)
    return spec, g


def _print_warnings(g) -> None:
    for w in g.warnings:
        print(w.render(), file=sys.stderr)


def cmd_check(args) -> int:
    import numpy as np
    t0 = time.perf_counter()
    spec, g = inspect_spec(args)
    from .analysis import layer_rows
    dims = _dims(args.dim, spec.dims)
    from .table_limits import check_table_limits
    check_table_limits(g, {**g.dim_examples, **dims})
    from .analysis import with_opless_layers
    rows = with_opless_layers(layer_rows(g, dims, depth=args.depth or 1), spec, g, dims)   # --depth: sub-layers
    width = max([len(r.layer) for r in rows] + [5])
    for r in rows:
        print(f"{r.layer:<{width}}  {r.shape}")
    for public, name in g.outputs.items():
        print(f"output {public}: {g.value(name).type}")
    n_params = sum(int(np.prod(p.type.concrete_shape())) for p in g.params())
    # the same at every --depth; "(outputs)" (an input or a layer output twice, copied) is no layer
    n_layers = sum(r.layer != "(outputs)" for r in with_opless_layers(layer_rows(g, dims, depth=1), spec, g, dims))
    print(f"ok: {spec.path}: {n_layers} layer{'' if n_layers == 1 else 's'}, {n_params:,} parameters, checked in "
          f"{(time.perf_counter() - t0) * 1000:.0f} ms")
    return 0


def cmd_build(args) -> int:
    from .lower import check_model_file
    from .compiler import check_output_path
    _refuse_ignore_without_weights(args)
    if args.kv_cache:
        from .generation.bundle_write import build_bundle_cli
        return build_bundle_cli(args)
    if args.logits != "all":
        raise GraphcError("--logits last needs --kv-cache", hint="it chooses the logits of a generation bundle")
    if args.cache_layout != "concat":
        raise GraphcError("--cache-layout needs --kv-cache", hint="it chooses how a generation bundle keeps its cache")
    out = Path(args.output)
    check_output_path(args.output, [args.spec, args.weights])   # before a long compile; the text keeps a trailing '/'
    t0 = time.perf_counter()
    from .progress import Progress
    with Progress(enabled=False if args.quiet else None) as progress:   # stderr, only on a terminal
        compiled = _compile(args, progress, keep_weights=False)
        check_output_path(out, compiled.spec.sources)      # the included files are known now

        def verify(written: str) -> None:                  # the bytes on disk, before they replace anything
            progress("onnx_check")
            check_model_file(written)
        progress("write", detail=str(out))
        size = compiled.save(out, verify if args.check else None)
    if not args.quiet:
        from .atomic_write import output_target
        # -o /dev/stdout: the model is on stdout, so the summary goes to stderr
        consts = compiled.count_weights() - compiled.param_count   # position tables, shape constants
        print(f"wrote {out} ({size / 1e6:.1f} MB, {len(compiled.model.graph.node)} nodes, "
              f"{compiled.param_count:,} parameters + {consts:,} constant values, "
              f"opset {compiled.model.opset_import[0].version}) in "
              f"{time.perf_counter() - t0:.2f} s", file=sys.stderr if output_target(out).stream else sys.stdout)
    return 0


def _load_inputs(items: Sequence[str], session=None) -> dict:
    from .runtime.session import load_inputs
    return load_inputs(items, session)


def cmd_run(args) -> int:
    from .runtime import make_session, random_inputs, run_model
    import numpy as np
    for flag in ("bench", "warmup", "threads"):
        if (getattr(args, flag) or 0) < 0:
            raise GraphcError(f"--{flag} must not be negative")
    if args.bench == 0:         # it ran once and printed no timing
        raise GraphcError("--bench 0 times no runs", hint="give the number of timed runs, e.g. --bench 50")
    if args.warmup is not None and args.bench is None:
        raise GraphcError("--warmup applies to --bench", hint="add --bench N, or leave out --warmup")
    args.warmup = 3 if args.warmup is None else args.warmup
    if args.output and Path(args.output).suffix.lower() == ".npy":
        # numpy.savez's archive under a .npy name: numpy.load then returns an NpzFile, not an array
        raise GraphcError(f"--output {args.output}: graphc run writes an .npz archive (every output by name), "
                          f"not a .npy", hint=f"name it {Path(args.output).with_suffix('.npz')}; "
                                              f"numpy.load(FILE)[NAME] reads one output")
    if args.output:
        from .compiler import check_output_path
        check_output_path(args.output, [args.model, args.weights] +
                          [i.partition("=")[2] or i for i in args.input])
    if _is_spec(args.model):
        args.spec = args.model
        from .lower import serialize
        model = serialize(_compile(args).model)
    else:
        from .runtime.arrays_io import require_file
        from .spec_or_model import refuse_compile_flags
        refuse_compile_flags(args, args.model)
        require_file(args.model, "model file")
        model = args.model
    session = make_session(model, args.provider, args.threads)
    from .runtime.session import model_dims
    dims = _dims(args.dim, model_dims(session))
    feeds = _load_inputs(args.input, session)         # headers checked against the model first
    if args.random or (args.bench and not args.input):     # --bench alone times the model on random inputs
        from .run_report import describe_drawn
        from .runtime.session import model_meta
        rand = random_inputs(session, dims, args.seed, given=feeds)    # only the inputs not given
        drawn = [k for k in rand if k not in feeds]
        feeds = {**rand, **feeds}
        if drawn:
            print(describe_drawn(model_meta(session), feeds, drawn, args.seed))
    outs = run_model(session, feeds, dims)
    if args.bench:
        times = []
        for _ in range(args.warmup):
            session.run(None, feeds)
        for _ in range(args.bench):
            t0 = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - t0)
        times.sort()
        shapes = ", ".join(f"{k} {v.dtype}{list(v.shape)}" for k, v in feeds.items())
        print(f"inputs: {shapes}")
        print(f"latency over {args.bench} runs after {args.warmup} warm-up: median {_quantile(times, 0.5):.3f} ms, "
              f"p10 {_quantile(times, 0.1):.3f} ms, p90 {_quantile(times, 0.9):.3f} ms, min {times[0] * 1e3:.3f} ms "
              f"({args.provider}, {args.threads or 'default'} threads)")
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
        from .runtime.session import save_outputs
        save_outputs(outs, args.output)
    return 0


def _quantile(sorted_seconds: list[float], q: float) -> float:
    """The q-quantile in milliseconds (nearest rank: a run that happened)."""
    i = min(len(sorted_seconds) - 1, max(0, round(q * (len(sorted_seconds) - 1))))
    return sorted_seconds[i] * 1e3


def cmd_params(args) -> int:
    import numpy as np
    _, g = inspect_spec(args)
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
    from .analysis import layer_kind, layer_rows
    spec, g = inspect_spec(args)
    dims = {**g.dim_examples, **_dims(args.dim, spec.dims)}
    from .table_limits import check_table_limits
    check_table_limits(g, dims)
    rows = layer_rows(g, dims, depth=args.depth)
    for r in rows:
        r.kind = r.kind or layer_kind(spec, r.layer)
    total_p = sum(r.params for r in rows)
    total_f = None if any(r.flops is None for r in rows) else sum(r.flops for r in rows)
    if args.json:
        from .analysis import shape_list
        layers = [{**r.__dict__, "shape": shape_list(r.shape)} for r in rows]   # lists, as params --json
        print(json.dumps({"dims": dims, "layers": layers,
                          "total_params": total_p, "total_flops": total_f}, indent=1))
        return 0
    width = max([len(r.layer) for r in rows] + [5])
    kwidth = max([len(r.kind) for r in rows] + [4])
    swidth = max([len(r.shape) for r in rows] + [12])
    rule = "-" * (width + kwidth + swidth + 34)
    print(f"{'layer':<{width}}  {'kind':<{kwidth}}  {'output shape':<{swidth}}  {'params':>12}  {'FLOPs':>14}")
    print(rule)
    for r in rows:
        flops = "?" if r.flops is None else f"{r.flops:,}"
        print(f"{r.layer:<{width}}  {r.kind:<{kwidth}}  {r.shape:<{swidth}}  {r.params:>12,}  {flops:>14}")
    print(rule)
    tf = "?" if total_f is None else f"{total_f:,}"
    print(f"{'total':<{width}}  {'':<{kwidth}}  {'':<{swidth}}  {total_p:>12,}  {tf:>14}")
    print(f"dims: {', '.join(f'{k}={v}' for k, v in dims.items()) or '(none)'}; "
          f"{total_p * 4 / 1e6:.1f} MB of float32 weights")
    return 0


def cmd_graph(args) -> int:
    from .render import choose_format, render_graph
    args.format = choose_format(args.format, args.output)
    if args.format == "png" and not args.output:
        raise GraphcError("--format png writes binary data; give a file with -o", hint="e.g. -o model.png")
    spec, g = inspect_spec(args)
    dims = _dims(args.dim, spec.dims)
    from .table_limits import check_table_limits
    check_table_limits(g, dims)                          # a picture at sizes the model refuses would mislead
    text = render_graph(g, args.format, ops=args.ops, dims=dims, spec=spec)
    if args.output:
        from .compiler import check_output_path
        from .atomic_write import write_atomic
        check_output_path(args.output, spec.sources)     # never over the spec or its includes
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text if isinstance(text, str) else text.decode())
    return 0


def cmd_layers(args) -> int:
    from .layers import LAYERS
    from .layer_docs import layer_detail_text, layers_list_text
    if args.kind is None:
        sys.stdout.write(layers_list_text())
        return 0
    from .specfile.aliases import find_kind
    kind = args.kind if args.kind in LAYERS else find_kind(args.kind, LAYERS)   # LSTM, nn.LayerNorm
    if kind is None:
        from .errors import did_you_mean
        raise GraphcError(f"unknown layer kind '{args.kind}'",
                          hint=did_you_mean(args.kind.lower(), LAYERS) or "'graphc layers' lists the layer kinds")
    sys.stdout.write(layer_detail_text(LAYERS[kind]))
    return 0


def cmd_schema(args) -> int:
    from .schema import schema_json
    text = schema_json()
    if args.output:
        from .compiler import check_output_path
        from .atomic_write import write_atomic
        check_output_path(args.output, [])
        write_atomic(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


# ------------------------------------------------------------------ parser

SPEC_HELP = "the spec file (.yaml)"
DIM_HELP = "a dim's size (repeatable), e.g. --dim batch=1 --dim seq=128; default: the spec's example sizes"
INCLUDE_DIR_HELP = "a directory that includes may also read from (repeatable; default: the spec's own directory)"

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphc", description="Compile YAML model specs to ONNX.")
    p.add_argument("--version", action="version", version=f"graphc {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="parse and shape-check a spec (no weights allocated)")
    c.add_argument("spec", help=SPEC_HELP)
    c.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="show shapes at these dim sizes (repeatable), e.g. --dim seq=128")
    c.add_argument("--depth", type=_depth, default=None, metavar="N",
                   help="show sub-layers down to this nesting depth (default 1: the spec's top-level layers)")
    c.add_argument("--include-dir", action="append", default=[], metavar="DIR", help=INCLUDE_DIR_HELP)
    _add_budget_arg(c)
    c.set_defaults(fn=cmd_check)

    b = sub.add_parser("build", help="compile a spec to an .onnx file")
    b.add_argument("spec", help=SPEC_HELP)
    b.add_argument("-o", "--output", required=True, metavar="FILE.onnx",
                   help="the model to write (atomically: a failed build leaves an earlier file untouched)")
    _add_compile_args(b)
    b.add_argument("--check", action="store_true",
                   help="also run onnx.checker (full) and ONNX's strict shape inference on the output "
                        "(the test suite does this for every example; it adds seconds on big models)")
    b.add_argument("--kv-cache", action="store_true",
                   help="write a generation bundle directory (cached decoder, encoder, graphc_generation.json) "
                        "for 'graphc generate'; needs the spec's generation: section (docs/generation.md)")
    b.add_argument("--logits", choices=("all", "last"), default="all",
                   help="with --kv-cache: logits at every new position (default) or at the last one only "
                        "(a shorter prompt step; docs/generation.md)")
    b.add_argument("--cache-layout", choices=("concat", "shared"), default="concat",
                   help="with --kv-cache: present = past + new tokens (default, standard ONNX) or one buffer per "
                        "layer updated in place (needs --target ort: GroupQueryAttention; docs/generation.md)")
    b.add_argument("-q", "--quiet", action="store_true", help="print nothing on success (no progress, no summary)")
    b.set_defaults(fn=cmd_build)

    r = sub.add_parser("run", help="run an .onnx file (or a spec, compiled in memory) on ONNX Runtime")
    r.add_argument("model", help="a compiled .onnx file, or a spec (.yaml) compiled in memory first")
    r.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                   help="an input's values from a .npy file (repeatable)")
    r.add_argument("--random", action="store_true",
                   help="random values for the inputs not given (it prints what it drew); --seed picks them")
    r.add_argument("--dim", action="append", default=[], metavar="NAME=N", help=DIM_HELP)
    r.add_argument("--output", metavar="FILE.npz", help="save outputs to this .npz")
    r.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="ONNX Runtime execution provider")
    r.add_argument("--threads", type=int, default=None, metavar="N",
                   help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice, one per core)")
    r.add_argument("--bench", type=int, default=None, metavar="N",
                   help="time N runs and print the median and quantiles (without --input: random inputs)")
    r.add_argument("--warmup", type=int, default=None, metavar="N", help="untimed runs before --bench's (default 3)")
    _add_compile_args(r, seed_also=", and for --random's inputs")
    r.set_defaults(fn=cmd_run)

    pa = sub.add_parser("params", help="list every parameter: name, shape, count")
    pa.add_argument("spec", help=SPEC_HELP)
    pa.add_argument("--json", action="store_true", help="print JSON (shapes as lists) for programs")
    pa.add_argument("--include-dir", action="append", default=[], metavar="DIR", help=INCLUDE_DIR_HELP)
    _add_budget_arg(pa)
    pa.set_defaults(fn=cmd_params)

    i = sub.add_parser("info", help="per-layer table: output shape, params, FLOPs")
    i.add_argument("spec", help=SPEC_HELP)
    i.add_argument("--dim", action="append", default=[], metavar="NAME=N", help=DIM_HELP)
    i.add_argument("--depth", type=_depth, default=None, metavar="N",
                   help="group sub-layers at this nesting depth (1: top-level layers; default: every layer)")
    i.add_argument("--json", action="store_true", help="print JSON (shapes as lists) for programs")
    i.add_argument("--include-dir", action="append", default=[], metavar="DIR", help=INCLUDE_DIR_HELP)
    _add_budget_arg(i)
    i.set_defaults(fn=cmd_info)

    g = sub.add_parser("graph", help="draw the graph: dot or mermaid text, or svg/png through Graphviz")
    g.add_argument("spec", help=SPEC_HELP)
    g.add_argument("--format", default=None, choices=["dot", "mermaid", "svg", "png"],
                   help="default: from -o's extension (.dot/.gv, .mmd, .svg, .png), else dot; "
                        "svg and png need Graphviz's 'dot' program; png needs -o")
    g.add_argument("--ops", action="store_true", help="primitive ops instead of spec layers")
    g.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                   help="label shapes at these dim sizes (repeatable); default: symbolic")
    g.add_argument("-o", "--output", metavar="FILE", help="write here (its extension picks the format) "
                   "instead of stdout")
    g.add_argument("--include-dir", action="append", default=[], metavar="DIR", help=INCLUDE_DIR_HELP)
    _add_budget_arg(g)
    g.set_defaults(fn=cmd_graph)

    ly = sub.add_parser("layers", help="list the layer kinds, or show one kind's parameters, shapes and example")
    ly.add_argument("kind", nargs="?", default=None,
                    help="a layer kind (any case; lstm, LSTM); omit it to list every kind")
    ly.set_defaults(fn=cmd_layers)

    from .hf_import.cli import add_parser as add_import_parser
    add_import_parser(sub)          # graphc import DIR: a spec for a Hugging Face checkpoint

    sc = sub.add_parser("schema", help="print the JSON Schema of the spec format (for editors)")
    sc.add_argument("-o", "--output", metavar="FILE", help="write to this file instead of stdout")
    sc.set_defaults(fn=cmd_schema)

    from .generation.cli import add_parser as add_generate    # graphc generate DIR (its own module)
    add_generate(sub)
    return p


def run() -> None:
    """The process entry point (the ``graphc`` script and ``python -m graphc``).
    Once main has returned, the work is done or cleanly abandoned, so a Ctrl-C
    that arrives while the interpreter shuts down is ignored instead of being
    printed as a traceback from an exit hook."""
    import signal
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    from .interrupt import honoured
    if sys.stdout is None:
        # started with stdout closed (`graphc schema >&-`): what print() already does
        # for every command, discard, instead of failing on sys.stdout.write
        sys.stdout = open(os.devnull, "w")
    from .process_owner import as_cli
    try:
        with honoured(), as_cli():      # Ctrl-C in a finalizer is not lost (graphc.interrupt); ORT's logger quiet
            parser = build_parser()     # inside the try: Ctrl-C during start-up is no traceback either
            args = parser.parse_args(argv)
            if getattr(args, "output", None) == "":     # -o "": an unset variable; not stdout, not '.'
                raise GraphcError("the output path is empty", hint="give a file name after -o/--output")
            code = args.fn(args)
            sys.stdout.flush()          # a reader that went away is seen here, not at interpreter exit
            return code
    except GraphcError as exc:
        print(exc.render(), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("graphc: interrupted; no output was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`graphc params big.yaml | head`): not an error, and
        # Python must not complain again when it flushes stdout at exit
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 141   # 128 + SIGPIPE, what a Unix tool killed by the closed pipe reports
    except OSError as exc:
        # the environment refused something (a full disk under stdout, a name too
        # long for the file system): the user's to fix, not a bug in graphc
        where = f"{exc.filename}: " if exc.filename else ""
        if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EIO, errno.EFBIG):
            where = "writing the output: "
            try:                     # Python must not fail again flushing stdout at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass
        print(f"graphc: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
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
