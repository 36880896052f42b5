"""The public pipeline: spec -> graph -> weights -> ONNX."""
from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from .expand import DEFAULT_MAX_PARAM_BYTES, build_graph
from .errors import GraphcError
from .ir import Graph
from .ir.precision import PRECISIONS
from .specfile import Spec, load_spec
from .pipeline import Options, run_passes


@dataclass
class Compiled:
    """A compiled model. With ``keep_weights=False`` the proto holds no weight
    bytes: ``weights`` lists (name, array) and ``save``/``to_bytes`` stream them."""
    spec: Spec
    graph: Graph
    model: object          # onnx.ModelProto (kept untyped: only graphc.lower imports onnx)
    weights: list = field(default_factory=list)
    notes: list = field(default_factory=list)     # for the user: e.g. a weights file matched by renaming
    quantization: object = None   # graphc.quantized.Quantization of an int8 build (its report, measured error)
    param_count: int = 0   # the spec's parameters, each counted once, as `graphc params` totals them
    weight_names: frozenset = frozenset()   # keep_weights=True: the initializers a streamed build appends
    weights_path: str | None = None   # the weights file or checkpoint directory it was compiled from, if any

    def _streamed(self) -> tuple[object, list]:
        """(model without its weights, [(name, array)]), as ``keep_weights=False``
        builds it: both forms then give the same bytes as ``graphc build``."""
        if self.weights or not self.weight_names:
            return self.model, self.weights
        from .lower.stream import split_weights
        return split_weights(self.model, self.weight_names)

    def to_bytes(self) -> bytes:
        """The .onnx file's bytes (what ``save`` writes for a model under 2 GB)."""
        import io
        from .lower.stream import write_model
        buf = io.BytesIO()
        write_model(buf, *self._streamed())
        return buf.getvalue()

    def save(self, path: str | os.PathLike, verify=None) -> int:
        """Write atomically (see graphc.lower.save_model); returns the bytes written.
        ``verify(temporary_path)``, when given, runs on the written file before it
        replaces anything at ``path`` (raise to keep the earlier file).
        Like ``graphc build``, refuses (GraphcError, nothing written) a path that
        is the spec, a file it includes or the weights it was compiled from."""
        from .lower import save_model
        check_output_path(path, [*self.spec.sources, self.weights_path])
        model, weights = self._streamed()
        return save_model(model, path, weights, verify)

    def count_weights(self) -> int:
        inline = sum(int(np.prod(t.dims)) for t in self.model.graph.initializer)
        return inline + sum(int(a.size) for _, a in self.weights)


def check_output_path(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output path that cannot be written, or that is one of the
    compile's own inputs (the spec, a file it includes, the weights): writing
    there would destroy the source the output was made from. Checked before
    the (possibly long) compile, and again once the includes are known."""
    from .atomic_write import output_target
    out = Path(output)
    target = output_target(output)       # the text, not the Path: 'newdir/' keeps its slash
    if target.stream:
        return                    # a device or pipe: written into, no directory entry changes
    directory = target.directory
    if not os.access(directory, os.W_OK | os.X_OK):
        raise GraphcError(f"cannot write {out}: permission denied on directory {directory}")
    if not out.exists():
        return
    from .checkpoint import checkpoint_files
    for src in (f for i in inputs if i is not None for f in checkpoint_files(i)):   # a directory: its files
        if not Path(src).exists():
            continue
        try:
            same = os.path.samefile(out, src)
        except OSError:
            continue
        if same:
            raise GraphcError(f"refusing to write the output over the input {src}", hint="choose another output path")


def param_total(graph: Graph) -> int:
    """Elements of every declared parameter, a tied one once (`graphc params`' total)."""
    return sum(int(np.prod(p.type.concrete_shape())) for p in graph.params())


def check_spec(path: str | os.PathLike, include_dirs: Iterable[str] = (),
               max_param_bytes: int | None = DEFAULT_MAX_PARAM_BYTES,
               params_allocated: bool = True) -> tuple[Spec, Graph]:
    """Parse and shape-check a spec; no weights are allocated. A spec whose
    parameters exceed ``max_param_bytes`` (None: no limit) is refused here,
    unless ``params_allocated=False`` (the caller only inspects: then only
    constant tables count)."""
    spec = load_spec(path, include_dirs)
    return spec, build_graph(spec, max_param_bytes, params_allocated=params_allocated)


def compile_spec(path: str | os.PathLike, weights: str | os.PathLike | Mapping[str, np.ndarray] | None = None,
                 seed: int = 0, opset: int | None = None, include_dirs: Iterable[str] = (),
                 attention: str = "auto", progress=None, keep_weights: bool = True,
                 max_param_bytes: int | None = DEFAULT_MAX_PARAM_BYTES, dtype: str = "float32",
                 quantize: str | None = None, target: str = "onnx", max_error: float | None = None,
                 ignore_weights: Iterable[str] = ()) -> Compiled:
    """The whole build: check (graphc.expand), the passes of graphc.pipeline,
    then the lowering. ``dtype="float16"`` converts the whole model to half precision after the
    weights are in (graphc.ir.precision says which parts stay float32).
    ``progress``: an optional callback told of each stage (graphc.progress.Progress draws it).
    ``keep_weights=False`` leaves the weights out of the proto: ``Compiled.save``
    streams them from their arrays to the file, so a build holds each weight
    once (the CLI's build and tools/bench.py use it).
    ``quantize`` ("int8"; None: the spec's ``quantize:`` section decides) runs
    graphc.quantized (the measured error is in ``Compiled.quantization``;
    ``max_error`` refuses a larger relative RMS error); ``target``: "onnx" or
    "ort" (graphc.lower.targets).
    ``weights`` may be a file, a checkpoint directory or a sharded index
    (graphc.checkpoint); the spec's ``weights:`` section and ``ignore_weights``
    patterns say how its names become the parameters' (graphc.weights_map)."""
    from .lower import DEFAULT_OPSET, lower, lower_by_reference
    from .progress import report
    from .lower.targets import check_target
    from . import quantized
    check_target(target)
    if dtype not in PRECISIONS:
        raise GraphcError(f"unknown model dtype '{dtype}'", hint="choose float32 or float16")
    report(progress, "check")
    spec, graph = check_spec(path, include_dirs, max_param_bytes)
    mode = quantized.check_request(quantize, spec, dtype, max_error)    # before the weights are read
    notes: list[str] = []
    n_params = param_total(graph)
    if isinstance(weights, (str, os.PathLike)):
        from .checkpoint import load_checkpoint
        source = weights_path = str(weights)
        report(progress, "read", detail=source)
        weights, notes = load_checkpoint(weights, max_bytes=max_param_bytes)
    else:
        source, weights_path = "weights", None
    if weights is not None and (spec.weights is not None or ignore_weights):
        from .weights_map import apply_weights_section
        expected = {p.name: p.type.concrete_shape() for p in graph.params()}
        weights, more = apply_weights_section(spec.weights, weights, expected, source, ignore_weights)
        notes += more
    options = Options(weights, seed, source, dtype, attention, quantize=mode, spec=spec,
                      opset=opset or DEFAULT_OPSET, target=target, progress=progress)
    weights = None          # the passes take them over (and drop them once the graph holds them)
    state = run_passes(graph, options)
    notes, quant, float_model = notes + state.notes, state.quantization, state.float_model
    report(progress, "lower")
    if keep_weights:
        # the weights lower_by_reference would stream (lower appends them as initializers)
        weight_names = frozenset(v.name for v in graph.values() if v.kind in ("param", "const"))
        compiled = Compiled(spec, graph, lower(graph, opset or DEFAULT_OPSET, target=target), notes=notes,
                            param_count=n_params, weight_names=weight_names)
    else:
        model, arrays = lower_by_reference(graph, opset or DEFAULT_OPSET, target)
        compiled = Compiled(spec, graph, model, arrays, notes=notes, param_count=n_params)
    compiled.weights_path = weights_path
    if quant is not None:
        report(progress, "measure")
        quantized.measure(quant, float_model, compiled.to_bytes(), max_error)
        compiled.quantization = quant
    return compiled
