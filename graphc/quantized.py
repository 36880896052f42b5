"""An int8 build as the compiler runs it: the mode chosen (command line over
the spec's ``quantize:`` section), the pass (graphc.ir.quantize), and the
error of the quantized model against the float one, measured on ONNX Runtime
with random inputs at the spec's example dims (the build reports it;
``max_error`` refuses a model whose relative RMS error is above it).

Relative RMS error of an output: sqrt(sum((q - f)^2) / sum(f^2)), q the int8
model's output, f the float model's, on the same inputs.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from .errors import GraphcError
from .ir import Graph
from .ir.quantize import QuantizeOptions, QuantizeReport, quantize
from .specfile import Spec
from .specfile.quantize import check_mode

ERROR_SEED = 0


@dataclass
class OutputError:
    name: str
    max_abs: float
    rel_rms: float


@dataclass
class Quantization:
    mode: str
    report: QuantizeReport
    errors: list[OutputError] = field(default_factory=list)

    def summary(self) -> list[str]:
        r = self.report
        n = len(r.quantized)
        lines = [f"quantized {n} layer{'' if n == 1 else 's'} to {self.mode} "
                 f"({r.weight_bytes_before / 1e6:.1f} MB of float weights -> {r.weight_bytes_after / 1e6:.1f} MB)"]
        if r.kept_head:
            lines.append(f"kept float (output head; quantize: {{head: true}} to include): {', '.join(r.kept_head)}")
        if r.kept_excluded:
            shown = ", ".join(r.kept_excluded[:6]) + (" ..." if len(r.kept_excluded) > 6 else "")
            lines.append(f"kept float (excluded): {shown}")
        if r.kept_tied:
            lines.append(f"kept float (tied to a table the model also reads as float): {', '.join(r.kept_tied)}")
        if r.kept_exact:
            lines.append(f"kept float (a matmul against a spec constant; list it under quantize: include: "
                         f"to quantize it): {', '.join(r.kept_exact)}")
        for e in self.errors:
            lines.append(f"error against float, output {e.name}: max abs {e.max_abs:.3g}, "
                         f"relative RMS {e.rel_rms:.3%} (random inputs, seed {ERROR_SEED})")
        return lines


def resolve_mode(cli_mode: str | None, spec: Spec) -> str:
    """--quantize wins; otherwise the spec section's mode; otherwise none."""
    decl = spec.quantize
    if cli_mode is not None:
        return check_mode(cli_mode, what="--quantize mode")
    return decl.mode if decl is not None else "none"


def check_request(cli_mode: str | None, spec: Spec, dtype: str = "float32", max_error: float | None = None) -> str:
    """The flags of an int8 build checked before any work: ``--max-error`` needs
    an int8 build (a float build has no error to bound: silently ignoring it
    would pass a check nobody ran) and a number >= 0 (a negative or NaN bound
    refuses every model, after the whole build); int8 needs ``--dtype float32``.
    Located at the spec's ``quantize:`` section when the mode came from it.
    Returns the mode (``resolve_mode``)."""
    mode = resolve_mode(cli_mode, spec)
    decl = spec.quantize
    from_spec = cli_mode is None and decl is not None
    if max_error is not None and not max_error >= 0:
        raise GraphcError(f"--max-error must be a number >= 0, not {max_error:g}",
                          hint="a relative RMS error, e.g. --max-error 0.02 (2%)")
    if max_error is not None and mode == "none":
        raise GraphcError("--max-error bounds the error of an int8 build, and this build is float",
                          hint="add --quantize int8 (or a quantize: section to the spec), or leave out --max-error")
    if mode == "int8" and dtype != "float32":
        where = (decl.mode_span or decl.span) if from_spec else None
        raise GraphcError(f"int8 needs a float32 model, not --dtype {dtype}"
                          + (" (the spec's quantize: section asks for int8)" if from_spec else ""), where,
                          hint="leave out --dtype (int8 replaces the float weights itself)"
                               + ("; --quantize none builds float16 without int8" if from_spec else ""))
    return mode


def options_for(mode: str, spec: Spec) -> QuantizeOptions:
    decl = spec.quantize
    if decl is None:
        return QuantizeOptions(mode)
    return QuantizeOptions(mode, decl.include, list(decl.exclude), decl.head)


def float_reference(graph: Graph, opset: int, target: str) -> bytes:
    """The float model, serialized, before the pass replaces its weights."""
    from .lower import lower_by_reference
    from .lower.stream import write_model
    model, arrays = lower_by_reference(graph, opset, target)
    buf = io.BytesIO()
    write_model(buf, model, arrays)
    return buf.getvalue()


def apply(graph: Graph, spec: Spec, mode: str, block_size: int | None = None) -> Quantization:
    """``block_size``: weight-only int8 in blocks along K (graphc.prims.quant QuantMatMulBlocks)."""
    options = options_for(mode, spec)
    options.block_size = block_size
    report = quantize(graph, options)
    if not report.quantized:
        _refuse_nothing_quantized(report, spec)
    graph.metadata["graphc.quantize"] = mode
    return Quantization(mode, report)


def _refuse_nothing_quantized(report: QuantizeReport, spec: Spec) -> None:
    """An int8 build that would quantize no layer is refused: its file would say
    int8 (metadata, summary) and be the float model."""
    where = spec.quantize.span if spec.quantize is not None else None
    kept = report.kept_head + report.kept_excluded + report.kept_exact
    if not kept:
        raise GraphcError("int8: the model has no layer to quantize (a linear, attention or feed-forward "
                          "product against a weight)", where,
                          hint="recurrent layers, embeddings, norms and tied output heads stay float "
                               "(docs/quantize.md); build it without --quantize int8")
    hints = []
    if report.kept_head:
        hints.append(f"quantize: {{head: true}} quantizes the output head ({', '.join(report.kept_head)})")
    if report.kept_excluded:
        hints.append("the spec's include/exclude patterns leave out " + ", ".join(report.kept_excluded[:6])
                     + (" ..." if len(report.kept_excluded) > 6 else ""))
    if report.kept_exact:
        hints.append("a matmul against a spec constant stays exact unless a quantize: include: pattern names it ("
                     + ", ".join(report.kept_exact[:6]) + ")")
    raise GraphcError("int8: every quantizable layer of the model is kept float, so the int8 build would "
                      "be the float model", where, hint="; ".join(hints))


def measure(q: Quantization, float_model: bytes, quant_model: bytes, max_error: float | None = None,
            feeds_for=None) -> None:
    """Fill ``q.errors``; refuse (GraphcError) when a relative RMS error exceeds ``max_error``.
    ``feeds_for(session, seed)``: the inputs to compare on (default: random at the example dims)."""
    from .runtime import make_session, random_inputs
    # the deployed kernels (all optimizations), without re-packing the weights for
    # speed: two runs at the example dims do not repay it (40% of session creation)
    config = {"session.disable_prepacking": "1"}
    fs, qs = make_session(float_model, config=config), make_session(quant_model, config=config)
    feeds = feeds_for(fs, ERROR_SEED) if feeds_for is not None else random_inputs(fs, {}, ERROR_SEED)
    names = [o.name for o in fs.get_outputs()]
    f_out, q_out = fs.run(names, feeds), qs.run(names, feeds)
    for name, f, qv in zip(names, f_out, q_out):
        if f.dtype.kind != "f":
            continue
        f64, q64 = f.astype(np.float64), qv.astype(np.float64)
        diff = q64 - f64
        denom = float(np.sqrt(np.sum(f64 * f64)))
        rel = float(np.sqrt(np.sum(diff * diff)) / denom) if denom > 0 else float(np.sqrt(np.sum(diff * diff)))
        q.errors.append(OutputError(name, float(np.abs(diff).max()) if diff.size else 0.0, rel))
    if max_error is not None:
        for e in q.errors:
            if not e.rel_rms <= max_error:
                raise GraphcError(f"the {q.mode} model's error is above --max-error {max_error:g}: output '{e.name}' "
                                  f"has relative RMS error {e.rel_rms:.4%} ({e.rel_rms:.4g}) against the float model",
                                  hint="keep more layers float (quantize: {exclude: [...]} in the spec), "
                                       "or raise --max-error; nothing was written")
