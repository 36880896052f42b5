"""The pass pipeline: what happens to the IR between expansion and lowering.

``graphc.expand.build_graph`` expands a spec into primitives (every shape rule
already ran); ``graphc.lower`` turns the final IR into ONNX. In between, the
passes below run in this order, each with a stated precondition and
postcondition that ``run_passes`` checks, and ``graphc.ir.verify`` (the IR's
own invariants: defined before read, one producer per value, acyclic, every op
located) runs before the first pass and after every one. ``PASSES`` is the one
list: ``graphc.compiler.compile_spec`` and the tests' ``compile_text`` both run
it, so a test model goes through exactly what a build does.

=================  ==============================  ==================================
pass               precondition                    postcondition
=================  ==============================  ==================================
materialize        parameters have no data yet     every parameter has data of its
                                                   declared dtype and shape
float16-range      (float16 builds) as above       no parameter beyond float16's range
fold               every parameter has data        no Derive op; every weight is read
float16            (float16 builds) no Derive op   no float32 tensor is left
simplify           no Derive op                    no op whose results nothing reads
metadata           (none)                          the build's settings are recorded
last-logits        (--logits last) no Derive op    logits are [batch, 1, vocab]
quantize           (int8 builds) no Derive op      weight MatMuls are QuantMatMuls;
                                                   the float model is kept to measure
=================  ==============================  ==================================

A pass is a function ``run(graph, options, state)`` that rewrites the graph in
place; ``state`` collects what the caller needs afterwards (notes for the
user, the quantization report). Adding a pass = a module with the
transformation (in graphc/ir/ when it only needs the IR), one ``Pass`` entry
here at its place in the order with its conditions, and a test that the
postcondition holds on a spec that exercises it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from .errors import InternalError
from .ir import DTYPES, Graph, verify
from .ir.fold import fold_derived
from .ir.kv_cache import last_position_logits
from .ir.precision import check_float16_range, convert_to_float16
from .ir.simplify import simplify
from .progress import report
from .weights import materialize


@dataclass
class Options:
    """What a build asks of the passes (graphc.compiler.compile_spec fills it
    from its arguments). ``weights``: arrays by parameter name, or None for
    the seeded initialisation; ``quantize``: the resolved mode ("none" or
    "int8"); ``spec``, ``opset`` and ``target`` are needed by the quantize
    pass only (its options; the float model it keeps for the error measurement)."""
    weights: Mapping[str, np.ndarray] | None = None      # taken (set to None) by the materialize pass
    seed: int = 0
    source: str = "weights"            # how messages name the weights
    dtype: str = "float32"
    attention: str = "auto"
    quantize: str = "none"
    spec: object = None
    opset: int = 17
    target: str = "onnx"
    quantize_block: int | None = None   # int8 weights in blocks along K (generation bundles, --target ort)
    last_logits: bool = False           # generation bundles, --logits last: the head on the last position only
    progress: Callable | None = None


@dataclass
class State:
    """What the passes hand back: notes for the user (a weights file matched
    by renaming), and for an int8 build the graphc.quantized.Quantization and
    the serialized float model it is measured against."""
    notes: list[str] = field(default_factory=list)
    seeded: bool = True                # no weights given: parameters drawn from the seed
    quantization: object = None
    float_model: bytes | None = None


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[Graph, Options, State], None]
    requires: Callable[[Graph], str | None]     # precondition: None when it holds, else what is wrong
    ensures: Callable[[Graph], str | None]      # postcondition, likewise
    when: Callable[[Options], bool] = lambda o: True


# ---------------------------------------------------------------- conditions

def _nothing(g: Graph) -> str | None:
    return None


def _no_param_data(g: Graph) -> str | None:
    done = [p.name for p in g.params() if p.data is not None]
    return f"parameters already have data: {done[:3]}" if done else None


def _params_have_data(g: Graph) -> str | None:
    for p in g.params():
        if p.data is None:
            return f"parameter '{p.name}' has no data"
        if tuple(p.data.shape) != p.type.concrete_shape() or p.data.dtype != DTYPES[p.type.dtype]:
            return f"parameter '{p.name}' holds {p.data.dtype}{list(p.data.shape)}, declared {p.type}"
    return None


def _no_derive(g: Graph) -> str | None:
    left = [op.id for op in g.ops() if op.op == "Derive"]
    return f"Derive ops left: {left[:3]}" if left else None


def _folded(g: Graph) -> str | None:
    problem = _no_derive(g)
    if problem:
        return problem
    outputs = set(g.outputs.values())
    unread = [v.name for v in g.values() if v.kind in ("param", "const") and not g.users(v.name)
              and v.name not in outputs]
    return f"weights nothing reads: {unread[:3]}" if unread else None


def _no_float32(g: Graph) -> str | None:
    left = [v.name for v in g.values() if v.type.dtype == "float32"]
    return f"float32 tensors left: {left[:3]}" if left else None


def _no_dead_ops(g: Graph) -> str | None:
    outputs = set(g.outputs.values())
    dead = [op.id for op in g.ops() if not any(g.users(o) or o in outputs for o in op.outputs)]
    return f"ops nothing reads: {dead[:3]}" if dead else None


def _recorded(g: Graph) -> str | None:
    missing = [k for k in ("graphc.attention", "graphc.seed") if k not in g.metadata]
    return f"metadata missing: {missing}" if missing else None


def _quantized(g: Graph) -> str | None:
    for op in g.ops():
        if op.op == "QuantMatMul":
            w, scale = (g.value(n) for n in op.inputs[1:])
            if w.kind != "const" or w.type.dtype != "int8" or scale.kind != "const":
                return f"QuantMatMul {op.id} does not read int8 weights and their scales"
        if op.op == "QuantMatMulBlocks":
            w, scale = (g.value(n) for n in op.inputs[1:])
            if w.kind != "const" or w.type.dtype != "uint8" or scale.kind != "const":
                return f"QuantMatMulBlocks {op.id} does not read uint8 weight blocks and their scales"
    return _no_dead_ops(g)


# ---------------------------------------------------------------- the passes

def _materialize(g: Graph, o: Options, s: State) -> None:
    # the pass consumes the weights: once the graph holds them, the options let
    # go, so the fold can free each raw weight as its last reader folds
    weights, o.weights = o.weights, None
    s.seeded = weights is None
    s.notes.extend(materialize(g, weights, o.seed, o.source, progress=o.progress))


def _float16_range(g: Graph, o: Options, s: State) -> None:
    check_float16_range(g.params())     # named as the user's weights, before folding renames them


def _fold(g: Graph, o: Options, s: State) -> None:
    report(o.progress, "fold")
    fold_derived(g)


def _float16(g: Graph, o: Options, s: State) -> None:
    report(o.progress, "float16")
    convert_to_float16(g)


def _simplify(g: Graph, o: Options, s: State) -> None:
    simplify(g)


def _metadata(g: Graph, o: Options, s: State) -> None:
    g.metadata["graphc.attention"] = o.attention
    g.metadata["graphc.seed"] = str(o.seed) if s.seeded else "weights"


def _last_logits(g: Graph, o: Options, s: State) -> None:
    last_position_logits(g)


def _logits_last(g: Graph) -> str | None:
    t = g.value(g.outputs["logits"]).type
    return None if t.shape[1] == 1 else f"logits are {t}, not one position"


def _quantize(g: Graph, o: Options, s: State) -> None:
    from . import quantized      # lowers the float model (onnx): loaded only for int8 builds
    report(o.progress, "quantize")
    s.float_model = quantized.float_reference(g, o.opset, o.target)
    s.quantization = quantized.apply(g, o.spec, o.quantize, o.quantize_block)
    simplify(g)


PASSES: tuple[Pass, ...] = (
    Pass("materialize", _materialize, _no_param_data, _params_have_data),
    Pass("float16-range", _float16_range, _params_have_data, _nothing, when=lambda o: o.dtype == "float16"),
    Pass("fold", _fold, _params_have_data, _folded),
    Pass("float16", _float16, _no_derive, _no_float32, when=lambda o: o.dtype == "float16"),
    Pass("simplify", _simplify, _no_derive, _no_dead_ops),
    Pass("metadata", _metadata, _nothing, _recorded),
    Pass("last-logits", _last_logits, _no_derive, _logits_last, when=lambda o: o.last_logits),
    Pass("quantize", _quantize, _no_derive, _quantized, when=lambda o: o.quantize != "none"),
)
PASS_NAMES = tuple(p.name for p in PASSES)


def run_passes(g: Graph, options: Options, skip: tuple[str, ...] = ()) -> State:
    """Run every pass that applies to ``options``, in order, checking each
    one's conditions and the IR's invariants around it. ``skip`` (names from
    PASS_NAMES) is for tests that compare a graph with and without a pass.
    A broken condition is a graphc bug: InternalError naming the pass."""
    unknown = set(skip) - set(PASS_NAMES)
    if unknown:
        raise InternalError(f"no passes named {sorted(unknown)}")
    state = State()
    verify(g)
    for p in PASSES:
        if p.name in skip or not p.when(options):
            continue
        problem = p.requires(g)
        if problem:
            raise InternalError(f"pass {p.name}: precondition broken: {problem}")
        p.run(g, options, state)
        verify(g)
        problem = p.ensures(g)
        if problem:
            raise InternalError(f"pass {p.name}: postcondition broken: {problem}")
    return state
