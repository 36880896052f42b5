"""``graphc build SPEC --kv-cache -o DIR``: write a generation bundle.

The bundle (contract: docs/generation.md, "The bundle") is a directory:
``decoder.onnx`` (the cached decoder), ``encoder.onnx`` for encoder-decoder
models, and ``graphc_generation.json`` naming the I/O and the special ids.
The spec is expanded once in cache mode (graphc.ir.kv_cache); an
encoder-decoder graph is then cut by graphc.ir.partition into what depends
only on the source (run once per source) and the rest (run at every step).

The directory appears whole or not at all: everything is written into a
private temporary directory beside it, which is renamed into place at the
end (an earlier bundle there is replaced in one step, files the user added
to it copied over; a directory that is not a bundle is never touched).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .. import __version__
from ..expand import DEFAULT_MAX_PARAM_BYTES, build_graph
from ..errors import GraphcError
from ..interrupt import checkpoint, deferred, terminate_as_interrupt
from ..ir.kv_cache import vocab_size
from ..specfile import load_spec
from ..specfile.refs import split_ref
from ..pipeline import Options, run_passes

CONFIG_NAME = "graphc_generation.json"
DECODER_FILE = "decoder.onnx"
ENCODER_FILE = "encoder.onnx"


def _logits_kind(spec) -> str:
    gen = spec.generation
    if gen.logits_kind is not None:
        return gen.logits_kind
    head = split_ref(spec.outputs[gen.logits].ref, {l.name for l in spec.layers})[0]
    layer = next((l for l in spec.layers if l.name == head), None)
    return "log_probs" if layer is not None and layer.kind == "log_softmax" else "logits"


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise GraphcError(f"cannot write the bundle {out}: it is a file", hint="give a directory path")
    if out.suffix.lower() == ".onnx" and not (out / CONFIG_NAME).is_file():
        # `-o model.onnx` out of habit would make a directory named model.onnx
        raise GraphcError(f"--kv-cache writes a bundle directory, but {out} names an .onnx file",
                          hint=f"give a directory, e.g. -o {out.with_suffix('')}/ (it holds decoder.onnx and "
                               f"graphc_generation.json)")
    if out.is_dir() and any(out.iterdir()) and not (out / CONFIG_NAME).is_file():
        raise GraphcError(f"refusing to write the bundle into {out}: it is a directory that is not a bundle",
                          hint="choose a new directory (an existing bundle there would be replaced)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise GraphcError(f"cannot write {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise GraphcError(f"cannot write {out}: permission denied on directory {parent}")


def build_bundle(spec_path: str | os.PathLike, output: str | os.PathLike,
                 weights: str | os.PathLike | Mapping[str, np.ndarray] | None = None, seed: int = 0,
                 opset: int | None = None, include_dirs: Iterable[str] = (),
                 max_param_bytes: int | None = DEFAULT_MAX_PARAM_BYTES, progress=None,
                 dtype: str = "float32", verify: bool = False, quantize: str | None = None,
                 target: str = "onnx", ignore_weights: Iterable[str] = (), max_error: float | None = None,
                 logits: str = "all", cache_layout: str = "concat") -> dict:
    """Compile ``spec_path`` with a KV cache and write the bundle directory
    ``output``; returns the config written as graphc_generation.json.
    ``verify``: run the ONNX checker and strict shape inference on each file first.
    Weights load as in graphc.compiler.compile_spec (a file, a checkpoint directory or
    a sharded index; the spec's ``weights:`` section and ``ignore_weights`` map names).
    ``quantize`` ("int8", or the spec's ``quantize:`` section) quantizes the cached
    graph like a plain build (graphc.generation.bundle_quant; its measured error is
    in the returned config's "notes", ``max_error`` refuses a larger one); ``target``
    "ort" takes graphc.lower.target_ort's contrib forms (docs/generation.md, "The decode
    step, compile side", says which contrib operators were measured for decode steps).
    ``logits``: "all" (the contract's [batch, seq, vocab]) or "last" (opt-in: [batch, 1,
    vocab], the head on the last position only; graphc.ir.kv_cache.last_position_logits;
    the config then says "logits_positions": "last"). ``cache_layout``: "concat" (the
    contract's present = past ++ new) or "shared" (one buffer per layer that the step
    updates in place, graphc.prims.shared_cache; needs target "ort"; the config then says
    "cache_layout": "shared")."""
    from ..lower import DEFAULT_OPSET, lower_by_reference
    from ..progress import report
    out = Path(output)
    if dtype not in ("float32", "float16"):
        raise GraphcError(f"unknown dtype '{dtype}'", hint="float32 or float16")
    from ..lower.targets import check_target
    check_target(target)        # ort: graphc.lower.target_ort's measured choices apply to bundles too
    if logits not in ("all", "last"):
        raise GraphcError(f"unknown --logits '{logits}'", hint="all (every new position, the default) or last")
    from ..ir.kv_cache import CACHE_LAYOUTS
    if cache_layout not in CACHE_LAYOUTS:
        raise GraphcError(f"unknown --cache-layout '{cache_layout}'", hint="concat (the default) or shared")
    if cache_layout == "shared" and target != "ort":
        raise GraphcError("--cache-layout shared needs --target ort",
                          hint="ONNX has no in-place update; ONNX Runtime's GroupQueryAttention writes the "
                               "new keys into the buffer (add --target ort)")
    _check_target(out)
    report(progress, "check")
    spec = load_spec(spec_path, include_dirs)
    from .. import quantized
    mode = quantized.check_request(quantize, spec, dtype, max_error)
    graph = build_graph(spec, max_param_bytes, kv_cache=True, cache_layout=cache_layout)
    gen, cache = spec.generation, graph.generation
    for src in spec.sources + ([str(weights)] if isinstance(weights, (str, os.PathLike)) else []):
        if out.exists() and Path(src).exists() and Path(src).resolve().is_relative_to(out.resolve()):
            raise GraphcError(f"refusing to replace {out}: it holds the input {src}", hint="choose another directory")
    source, notes = "weights", []
    if isinstance(weights, (str, os.PathLike)):
        from ..checkpoint import load_checkpoint
        source = str(weights)
        report(progress, "read", detail=source)
        weights, notes = load_checkpoint(weights, max_bytes=max_param_bytes)
    if weights is not None and (spec.weights is not None or ignore_weights):
        from ..weights_map import apply_weights_section
        expected = {p.name: p.type.concrete_shape() for p in graph.params()}
        weights, more = apply_weights_section(spec.weights, weights, expected, source, ignore_weights)
        notes += more
    from . import bundle_quant
    options = Options(weights, seed, source, dtype=dtype, progress=progress, quantize=mode, spec=spec, opset=opset or DEFAULT_OPSET,
                      target=target, quantize_block=bundle_quant.BLOCK if target == "ort" else None,
                      last_logits=logits == "last")
    weights = None              # the options hand them to the materialize pass, which lets go
    state = run_passes(graph, options)
    notes += state.notes
    quant, float_model = state.quantization, state.float_model
    graph.metadata["graphc.kv_cache"] = "1"
    config = {
        "format": 1,
        "architecture": "encoder-decoder" if gen.encoder_decoder else "decoder-only",
        "dtype": dtype,
        "bos": gen.bos,
        "eos": (gen.eos[0] if len(gen.eos) == 1 else list(gen.eos)) if gen.eos else None,
        "pad": gen.pad,
        "decoder_start": gen.decoder_start if gen.decoder_start is not None else gen.bos,
        "vocab_size": vocab_size(spec, graph),
        "max_positions": cache.max_positions,
        "logits_kind": _logits_kind(spec),
        "decoder": {"file": DECODER_FILE},
        "encoder": None,
        "cache": [{"past_key": e.past_key, "past_value": e.past_value, "present_key": e.present_key,
                   "present_value": e.present_value, "kv_heads": e.kv_heads, "head_dim": e.head_dim,
                   **({"heads": e.heads} if e.heads is not None else {})}
                  for e in cache.entries],
        **({"logits_positions": "last"} if logits == "last" else {}),
        **({"cache_layout": "shared"} if cache_layout == "shared" else {}),
        "spec": spec.name,
        "graphc_version": __version__,
    }
    parts = {DECODER_FILE: graph}
    if gen.encoder_decoder:
        from ..ir.partition import split_by_inputs
        roles = {cache.input_names[n]: r for n, r in {gen.source: "source_ids", **gen.source_masks}.items()}

        def name(k, info):
            if not info.type.shape or info.type.shape[0] != cache.batch:
                raise GraphcError(f"the encoder-decoder split needs every value passed from the encoder to the "
                                  f"decoder batch-first, but '{info.name}' is {info.type}", info.span,
                                  hint="beam search repeats encoder outputs along axis 0")
            return f"encoder_out.{k}"
        enc, dec, boundary = split_by_inputs(graph, set(roles), name)
        if not boundary:
            raise GraphcError(f"generation 'source': the decoder does not read the source '{gen.source}'",
                              gen.spans["source"])
        for g in (enc, dec):
            g.metadata["graphc.bundle_part"] = "encoder" if g is enc else "decoder"
        parts = {ENCODER_FILE: enc, DECODER_FILE: dec}
        config["encoder"] = {"file": ENCODER_FILE, "inputs": {n: roles[n] for n in enc.inputs},
                             "outputs": [b for _, b in boundary]}
    report(progress, "lower")
    models = {f: lower_by_reference(g, opset or DEFAULT_OPSET, target) for f, g in parts.items()}
    if quant is not None:
        report(progress, "measure")
        from ..lower.stream import write_model
        import io
        buf = io.BytesIO()
        whole = lower_by_reference(graph, opset or DEFAULT_OPSET, target) if len(parts) > 1 else models[DECODER_FILE]
        write_model(buf, *whole)
        bundle_quant.measure(quant, float_model, buf.getvalue(), max_error)
        notes += bundle_quant.summary(quant)
        if target != "ort":
            notes.append("int8 with standard operators quantizes each step's activations per tensor, so a row's logits "
                         "depend on the other rows of the batch; --target ort quantizes them per row (MatMulNBits)")
    _write_directory(out, models, config, verify, progress)
    config["notes"] = notes
    return config


def _write_directory(out: Path, models: dict, config: dict, verify: bool, progress) -> None:
    from ..lower import check_model_file, save_model
    from ..atomic_write import OutputTarget, private_temp_dir
    from ..progress import report
    parent = out.parent if str(out.parent) else Path(".")
    tmp_root = None
    try:
        with terminate_as_interrupt():
            with deferred():
                # graphc.atomic_write' naming: a SIGKILLed write's leftovers are removed by the next one
                tmp_root = private_temp_dir(OutputTarget(parent / out.name))
            tmp = Path(tmp_root) / "bundle"
            tmp.mkdir()
            for file, (model, arrays) in models.items():
                report(progress, "write", detail=str(out / file))
                save_model(model, tmp / file, arrays, check_model_file if verify else None)
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
            if config["architecture"] == "decoder-only":
                _genai_config(tmp, config)
            _keep_user_files(out, tmp)
            checkpoint()
            with deferred():
                old = Path(tmp_root) / "old"
                if out.exists():
                    os.replace(out, old)        # an earlier bundle: moved aside, removed below
                os.replace(tmp, out)
    except OSError as exc:
        raise GraphcError(f"cannot write the bundle {out}: {exc.strerror or exc}") from None
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)


# every name a build writes into a bundle (save_model puts large weights in NAME.data)
_BUNDLE_FILES = {CONFIG_NAME, "genai_config.json"} | {f + ext for f in (DECODER_FILE, ENCODER_FILE)
                                                      for ext in ("", ".data")}


def _keep_user_files(out: Path, tmp: Path) -> None:
    """Copies what the user added to an earlier bundle at ``out`` (a tokenizer.json
    beside the model, as onnxruntime-genai reads it) into the new one, so replacing
    the bundle does not delete them; the files a build writes are not carried over
    (a stale encoder.onnx must not outlive a rebuild as a decoder-only model).
    Copies, not moves: until the final rename the earlier bundle stays whole."""
    if not (out / CONFIG_NAME).is_file():
        return
    for entry in out.iterdir():
        if entry.name in _BUNDLE_FILES:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, tmp / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, tmp / entry.name, follow_symlinks=False)


def _genai_config(directory: Path, config: dict) -> None:
    """genai_config.json for onnxruntime-genai, when graphc.generation.genai_config
    (the runtime side's module) is present: write_genai_config(directory, config)."""
    try:
        from . import genai_config
    except ImportError:
        return
    write = getattr(genai_config, "write_genai_config", None)
    if write is not None:
        write(directory, config)


def build_bundle_cli(args) -> int:
    """``graphc build --kv-cache``: the CLI's arguments to build_bundle, and its summary line."""
    import sys
    import time
    from ..progress import Progress
    t0 = time.perf_counter()
    with Progress(enabled=False if args.quiet else None) as progress:
        config = build_bundle(args.spec, args.output, args.weights, args.seed, args.opset, args.include_dir,
                              args.max_param_bytes, progress, args.dtype, args.check, args.quantize, args.target,
                              args.ignore_weights, getattr(args, "max_error", None), args.logits,
                              getattr(args, "cache_layout", "concat"))
    if not args.quiet:
        for note in config["notes"]:
            print(f"graphc: note: {note}", file=sys.stderr)
        files = [DECODER_FILE] + ([ENCODER_FILE] if config["encoder"] else [])
        size = sum(os.path.getsize(Path(args.output) / f) for f in files)
        print(f"wrote {args.output}/ ({config['architecture']}: {', '.join(files)}, {size / 1e6:.1f} MB, "
              f"{len(config['cache'])} cached attention layers) in {time.perf_counter() - t0:.2f} s")
    return 0
