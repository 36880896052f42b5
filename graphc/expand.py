"""Expansion: a Spec becomes an IR graph of primitives with symbolic shapes.

Layers are expanded in dependency order (a spec may list them in any order;
a cycle is reported with its path). Each layer's arguments are checked
against its kind's descriptors, its inputs resolved, and its expansion run
inside ``Builder.layer`` so every emitted op carries the layer's YAML line
and parameter prefix. Blocks are expanded recursively with their own
parameter scope; ``repeat: N`` makes N copies named ``<layer>.0`` ...
``<layer>.N-1`` with distinct weights, chaining the first input.
"""
from __future__ import annotations

import contextlib
import os
from typing import Mapping

import networkx as nx

try:
    import resource
except ImportError:  # pragma: no cover  (not on Windows)
    resource = None

from .errors import GraphcError, Span, did_you_mean, known_list
from .ir import DTYPES, Builder, Graph, Value, run_limits, verify
from .layers import LAYERS, Call
from .shapes import Dim, format_shape
from .shapes.dim import DimTooLarge
from .specfile import BlockDecl, InputRef, LayerDecl, Spec
from .specfile.args import Env, eval_arg, eval_int, eval_shape, resolve_args
from .specfile.refs import split_ref
from .specfile.declarations import check_declarations, first_copy, unknown_kind_error

MAX_REPEAT = 1024
# Expansion costs ~60 us per primitive; these bound a spec's compile time to a
# few seconds however 'repeat' and nested blocks multiply (a 96-layer GPT is
# ~5,000 primitives).
MAX_EXPANDED_LAYERS = 20_000
MAX_OPS = 30_000
# Parameters (and compile-time constant tables) are counted as layers declare
# them, before any weight exists; past this budget the compile stops at the
# layer that crossed it. Building takes about twice the parameter bytes of
# memory and ~15 s per GB; 2 GiB is also the most a single .onnx protobuf
# holds. So the default admits every model that fits one file (the paper's
# big Transformer is 0.86 GB), refuses a typo'd width in milliseconds, and
# --max-param-bytes raises it for bigger models (stored with external data).
DEFAULT_MAX_PARAM_BYTES = 2 << 30


# Some layers compute constant tables in numpy while they expand (positional
# encodings: max_len x width). They ask the Builder first (over_budget), so a
# table over the budget is refused before it is computed; as a second line of
# defence against any other large temporary, while a spec expands,
# the process's address space is capped (where the OS allows) at its current
# size plus twice the budget plus this slack, so such an allocation fails at
# once and is reported at the layer.
GUARD_SLACK_BYTES = 1 << 30


@contextlib.contextmanager
def _address_space_guard(max_param_bytes: int | None):
    limits = None
    if max_param_bytes is not None and resource is not None:
        try:
            with open("/proc/self/statm") as f:
                current = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            cap = current + 2 * max_param_bytes + GUARD_SLACK_BYTES
            if hard != resource.RLIM_INFINITY:
                cap = min(cap, hard)
            if soft == resource.RLIM_INFINITY or cap < soft:
                resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
                limits = (soft, hard)
        except (OSError, ValueError):
            limits = None
    try:
        yield
    finally:
        if limits is not None:
            resource.setrlimit(resource.RLIMIT_AS, limits)


def format_bytes(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


class _BoundedBuilder(Builder):
    """A Builder that keeps a running total of parameter bytes and primitive
    count, so that an absurd width or a runaway 'repeat' is refused, located at
    the layer responsible, before anything is allocated or the graph grows
    for minutes."""

    def __init__(self, graph: Graph, max_param_bytes: int | None, params_allocated: bool = True):
        super().__init__(graph)
        self.max_param_bytes = max_param_bytes
        self.params_allocated = params_allocated
        self.param_bytes = 0
        self.n_ops = 0
        self.biggest: tuple[int, str] = (0, "")

    def _account(self, name: str, nbytes: int) -> None:
        self.param_bytes += nbytes
        if nbytes > self.biggest[0]:
            self.biggest = (nbytes, name)
        if self.max_param_bytes is not None and self.param_bytes > self.max_param_bytes:
            err = self.error(
                f"the model's parameters would take at least {format_bytes(self.param_bytes)}, over the "
                f"budget of {format_bytes(self.max_param_bytes)}",
                hint="check the widths for a typo; if the model really is this large, pass "
                     "--max-param-bytes (e.g. --max-param-bytes 64G)")
            err.notes.append(f"the largest is '{self.biggest[1]}' ({format_bytes(self.biggest[0])})")
            raise err

    def over_budget(self, nbytes: int) -> str | None:
        """Why `nbytes` more (a table a layer is about to compute) would not fit
        the budget, or None; nothing is counted (the const or param that follows is)."""
        if self.max_param_bytes is None or self.param_bytes + nbytes <= self.max_param_bytes:
            return None
        return (f"the model's parameters and tables would take at least {format_bytes(self.param_bytes + nbytes)}, "
                f"over the budget of {format_bytes(self.max_param_bytes)}")

    def param(self, local, shape, init, dtype="float32", doc=""):
        count = 1
        for s in shape:
            count *= int(s)
        if self.params_allocated:    # check/params/info/graph declare parameters, they never allocate them
            self._account(self.qualified(local), count * DTYPES[dtype].itemsize)
        return super().param(local, shape, init, dtype, doc)

    def const(self, array, hint="const"):
        self._account(f"{self.path}/{hint}" if self.path else hint, int(array.nbytes))
        return super().const(array, hint)

    def op(self, prim, inputs, n_out=1, name_hint=None, **attrs):
        self.n_ops += 1
        if self.n_ops > MAX_OPS:
            raise self.error(f"the spec expands to more than {MAX_OPS} primitive operations",
                             hint="'repeat' and blocks multiply; a real model needs far fewer")
        return super().op(prim, inputs, n_out, name_hint, **attrs)


class _Scope:
    """Values visible while expanding one list of layers: name -> {output: Value}."""

    def __init__(self, where: str):
        self.where = where
        self.values: dict[str, dict[str, Value]] = {}
        self.primary: dict[str, str] = {}

    def define(self, name: str, outputs: Mapping[str, Value], primary: str) -> None:
        self.values[name] = dict(outputs)
        self.primary[name] = primary

    def resolve(self, ref: InputRef) -> Value:
        head, tail = split_ref(ref.ref, self.values)
        if head not in self.values:
            raise GraphcError(f"unknown name '{head}' in {self.where}", ref.span,
                              hint=did_you_mean(head, self.values) or f"known here: {known_list(self.values)}")
        outs = self.values[head]
        if not tail:
            return outs[self.primary[head]]
        if tail not in outs:
            raise GraphcError(f"'{head}' has no output '{tail}'", ref.span,
                              hint=did_you_mean(tail, outs) or f"its outputs: {known_list(outs)}")
        return outs[tail]


class _Expander:
    def __init__(self, spec: Spec, graph: Graph, max_param_bytes: int | None = DEFAULT_MAX_PARAM_BYTES,
                 params_allocated: bool = True):
        self.spec = spec
        self.b = _BoundedBuilder(graph, max_param_bytes, params_allocated)
        self.block_stack: list[str] = []
        self.count = 0

    def expand_list(self, layers: list[LayerDecl], scope: _Scope, env: Env) -> None:
        for decl in _dependency_order(layers, scope):
            self.expand_layer(decl, scope, env)

    def expand_layer(self, decl: LayerDecl, scope: _Scope, env: Env) -> None:
        block = self.spec.blocks.get(decl.kind)
        kind = LAYERS.get(decl.kind)
        if block is None and kind is None:
            raise unknown_kind_error(decl, self.spec)
        inputs = [(ref, scope.resolve(ref)) for ref in decl.inputs]
        repeat = 1
        if decl.repeat is not None:
            repeat = eval_int(decl.repeat, env, "'repeat'", 1, MAX_REPEAT)
        where = f"layer '{decl.name}'"
        outs: dict[str, Value] = {}
        primary = ""
        with self.b.layer(decl.name, decl.span, decl.kind):
            for i in range(repeat):
                self.count += 1
                if self.count > MAX_EXPANDED_LAYERS:
                    raise GraphcError(f"the spec expands to more than {MAX_EXPANDED_LAYERS} layers", decl.span)
                copy = first_copy(decl) if i == 0 else decl
                if repeat > 1:
                    with self.b.scope(str(i)):
                        outs, primary = self._one(copy, block, kind, inputs, env, where)
                    first_ref, first_val = inputs[0] if inputs else (None, None)
                    new = outs[primary]
                    # copy 0 may change the type when 'first:' gives it other arguments (its own width)
                    if first_val is not None and i + 1 < repeat:
                        if new.type != first_val.type and not (i == 0 and decl.first):
                            raise GraphcError(f"'repeat' chains each copy's output into the next copy's first input, "
                                              f"but {new.type} differs from {first_val.type}", decl.repeat.span)
                        inputs = [(first_ref, new)] + inputs[1:]
                else:
                    outs, primary = self._one(copy, block, kind, inputs, env, where)
        scope.define(decl.name, outs, primary)

    def _one(self, decl, block, kind, inputs, env, where):
        if kind is not None:
            ports = self._bind_ports(decl, kind, inputs)
            args = resolve_args(kind, decl.args, decl.arg_key_spans, env, where, decl.span)
            call = Call(decl.name, decl.kind, decl.span, args,
                        {**decl.arg_key_spans}, {k: v for k, (s, v) in ports.items()},
                        {k: s for k, (s, v) in ports.items() if s is not None})
            if self.b.gen is not None:
                self.b.gen.check_kind(decl.kind, call.inputs.values(), decl.kind_span)
            try:
                outs = kind.expand(self.b, call)
            except DimTooLarge as exc:        # a size this layer computes grew past graphc.shapes' bounds
                raise GraphcError(f"{decl.kind} '{decl.name}': {exc.message}", decl.span, hint=exc.hint) from None
            except MemoryError:
                raise GraphcError(f"{decl.kind} '{decl.name}': building this layer needs more memory than the "
                                  f"parameter budget allows", decl.span,
                                  hint="check its sizes (widths, max_len) for a typo; if they are meant, "
                                       "raise --max-param-bytes") from None
            return outs, next(iter(outs))
        return self._expand_block(decl, block, inputs, env, where)

    def _bind_ports(self, decl: LayerDecl, kind, inputs) -> dict[str, tuple[Span | None, Value | None]]:
        names = [p.name for p in kind.inputs]
        bound: dict[str, tuple[Span | None, Value | None]] = {}
        positional = [(r, v) for r, v in inputs if r.port is None]
        named = [(r, v) for r, v in inputs if r.port is not None]
        if len(positional) > len(names) and not kind.variadic:
            r = positional[len(names)][0]
            raise GraphcError(f"{decl.kind} takes {len(names)} input{'s' if len(names) != 1 else ''} "
                              f"({', '.join(names)}), got {len(positional)}", r.span)
        for i, (r, v) in enumerate(positional):
            bound[names[i] if i < len(names) else f"x{i}"] = (r.span, v)
        for r, v in named:
            if r.port not in names:
                raise GraphcError(f"{decl.kind} has no input '{r.port}'", r.span,
                                  hint=did_you_mean(r.port, names) or f"its inputs: {', '.join(names)}")
            if r.port in bound:
                raise GraphcError(f"input '{r.port}' is given twice", r.span)
            bound[r.port] = (r.span, v)
        for p in kind.inputs:
            if p.name in bound and bound[p.name][1] is None and not p.optional:
                raise GraphcError(f"{decl.kind} '{decl.name}' needs input '{p.name}', but it is given an optional "
                                  f"block input that is not connected", bound[p.name][0])
            if p.name not in bound:
                if not p.optional:
                    raise GraphcError(f"{decl.kind} '{decl.name}' needs input '{p.name}'", decl.span,
                                      hint=p.doc or None)
                bound[p.name] = (None, None)
        return bound

    def _expand_block(self, decl: LayerDecl, block: BlockDecl, inputs, env: Env, where: str):
        if block.name in self.block_stack:
            chain = " -> ".join(self.block_stack + [block.name])
            raise GraphcError(f"block '{block.name}' uses itself: {chain}", decl.kind_span)
        # block parameters: defaults from the block, overrides from the call, evaluated in the caller's env
        values = {}
        for key in decl.args:
            if key not in block.params:
                raise GraphcError(f"block '{block.name}' has no parameter '{key}'", decl.arg_key_spans[key],
                                  hint=did_you_mean(key, block.params) or
                                  (f"its parameters: {known_list(block.params)}" if block.params else None))
        for key, default in block.params.items():
            node = decl.args.get(key, default)
            if node.value is None:
                raise GraphcError(f"block '{block.name}' needs parameter '{key}'", decl.span)
            values[key] = _eval_block_param(node, env if key in decl.args else env.child(values), key)
        inner_env = env.child(values)
        inner = _Scope(f"block '{block.name}'")
        names = [n for n, _, _ in block.inputs]
        positional = [(r, v) for r, v in inputs if r.port is None]
        if len(positional) > len(names):
            raise GraphcError(f"block '{block.name}' takes {len(names)} inputs, got {len(positional)}",
                              positional[len(names)][0].span)
        bound = {names[i]: v for i, (r, v) in enumerate(positional)}
        for r, v in inputs:
            if r.port is not None:
                if r.port not in names:
                    raise GraphcError(f"block '{block.name}' has no input '{r.port}'", r.span,
                                      hint=did_you_mean(r.port, names))
                bound[r.port] = v
        for n, span, optional in block.inputs:
            if n not in bound and not optional:
                raise GraphcError(f"block '{block.name}' needs input '{n}'", decl.span)
            # an unconnected optional input resolves to None: the optional ports it feeds stay unconnected
            inner.define(n, {"": bound.get(n)}, "")
        self.block_stack.append(block.name)
        try:
            self.expand_list(block.layers, inner, inner_env)
        finally:
            self.block_stack.pop()
        outs = {k: inner.resolve(r) for k, r in block.outputs.items()}
        for k, r in block.outputs.items():
            if outs[k] is None:
                raise GraphcError(f"block output '{k}' is an optional input that was not connected", r.span)
        return outs, next(iter(outs))


def _eval_block_param(node, env: Env, key: str):
    v = node.value
    if isinstance(v, (bool, int, float)):
        return v
    if isinstance(v, str):
        if v in env.params:
            return env.params[v]
        from .specfile.args import eval_number
        try:
            return eval_number(node, env, f"parameter '{key}'")
        except GraphcError:
            if v.isidentifier():
                return v
            raise
    raise GraphcError(f"parameter '{key}' must be a number, a boolean or text, not {node.type_name()}", node.span)


def _dependency_order(layers: list[LayerDecl], scope: _Scope) -> list[LayerDecl]:
    """Layers sorted so each comes after the layers it reads; ties keep spec order."""
    by_name = {layer.name: layer for layer in layers}
    for layer in layers:
        if layer.name in scope.values:
            raise GraphcError(f"layer '{layer.name}' has the name of an input", layer.span,
                              hint="give the layer another name")
    g = nx.DiGraph()
    index = {layer.name: i for i, layer in enumerate(layers)}
    g.add_nodes_from(by_name)
    for layer in layers:
        for ref in layer.inputs:
            head = split_ref(ref.ref, {**by_name, **scope.values})[0]
            if head in by_name:
                if head == layer.name:
                    raise GraphcError(f"layer '{layer.name}' reads its own output", ref.span)
                g.add_edge(head, layer.name)
            elif head not in scope.values:
                known = list(scope.values) + list(by_name)
                raise GraphcError(f"unknown name '{head}' in {scope.where}", ref.span,
                                  hint=did_you_mean(head, known) or f"known here: {known_list(known)}")
    try:
        return [by_name[n] for n in nx.lexicographical_topological_sort(g, key=lambda n: index[n])]
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(g)
        path = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
        first = min((by_name[a] for a, _ in cycle), key=lambda l: index[l.name])
        raise GraphcError(f"layers form a cycle: {path}", first.span,
                          hint="a layer cannot depend on its own output; recurrent layers (lstm, gru) loop internally") from None


def build_graph(spec: Spec, max_param_bytes: int | None = DEFAULT_MAX_PARAM_BYTES, kv_cache: bool = False,
                params_allocated: bool = True, cache_layout: str = "concat") -> Graph:
    """Expand a spec into a shape-checked IR graph (parameters declared, not
    allocated). ``max_param_bytes`` bounds the parameters' total size (None: no
    bound); a spec over it is refused at the layer that crosses it. With
    ``params_allocated=False`` (commands that never allocate the parameters:
    check, params, info, graph) only the constant tables computed while
    expanding count against it.
    ``kv_cache``: the cached decoder of a generation bundle (graphc.ir.kv_cache):
    the generation tokens input becomes ``input_ids``, the logits output
    ``logits``, and attention_mask, position_ids and the per-layer caches are added;
    ``cache_layout`` "concat" (present = past ++ new) or "shared" (one buffer updated in
    place; graphc.prims.shared_cache)."""
    g = Graph(spec.name)
    dims = {name: Dim.sym(name) for name in spec.dims}
    env = Env(spec.params, dims)
    check_declarations(spec, env)       # all independent layer-declaration errors at once, not the first
    ex = _Expander(spec, g, max_param_bytes, params_allocated)
    top = _Scope("the spec")
    gen = spec.generation if kv_cache else None
    if kv_cache and gen is None:
        raise GraphcError("--kv-cache needs a 'generation:' section in the spec", spec.span,
                          hint="name the tokens input and the logits output, e.g. generation: "
                               "{tokens: tokens, logits: logits, bos: 1, eos: 2, pad: 0} (docs/generation.md)")
    if gen is not None:
        from .ir.kv_cache import bundle_input_names
        onnx_names = bundle_input_names(spec)
    for decl in spec.inputs:
        if gen is not None and decl.name == gen.tokens_mask:
            continue                    # the bundle's attention_mask, defined once the tokens are
        shape = eval_shape(_ShapeNode(decl), env, f"the shape of input '{decl.name}'")
        onnx_name = onnx_names[decl.name] if gen is not None else decl.name
        v = ex.b.input(onnx_name, decl.dtype, shape, decl.span)
        top.define(decl.name, {"": v}, "")
        if decl.range is not None:
            g.input_ranges[onnx_name] = decl.range
        if gen is not None and decl.name == gen.tokens:
            from .ir.kv_cache import CacheContext
            ex.b.gen = CacheContext(ex.b, v, gen.spans["tokens"], shared=cache_layout == "shared")
            ex.b.gen.input_names = onnx_names
    if gen is not None and gen.tokens_mask is not None:
        top.define(gen.tokens_mask, {"": ex.b.gen.attention_mask}, "")
    if gen is not None and gen.source is not None:
        src_seq, tgt_seq = (g.value(n).type.shape[1] for n in (onnx_names[gen.source], "input_ids"))
        if src_seq == tgt_seq:
            raise GraphcError(f"generation 'source' and 'tokens' share the sequence length '{tgt_seq}'",
                              gen.spans["source"],
                              hint="--kv-cache tells the generated sequence by its length: give the source its "
                                   "own dim (e.g. src_seq)")
    for name, d in spec.dims.items():
        if d.example is not None:
            g.dim_examples[name] = d.example
        if d.max is not None:       # `graphc run` refuses larger sizes (graphc.ir.run_limits)
            run_limits.record(g.metadata, "dim_max", name, d.max, "")
    with _address_space_guard(max_param_bytes):
        ex.expand_list(spec.layers, top, env)
    for public, ref in spec.outputs.items():
        if gen is not None:
            if public != gen.logits:
                continue                # a cached decoder returns the logits and the caches only
            public = "logits"
        if public in g.inputs:
            raise GraphcError(f"output '{public}' has the name of an input", ref.span,
                              hint="ONNX needs distinct input and output names; rename the output")
        v = top.resolve(ref)
        if v.name in g.outputs.values() or v.name in g.inputs or g.value(v.name).kind in ("param", "const"):
            # ONNX needs distinct graph outputs, made by nodes: copy through Identity
            with ex.b.layer("", ref.span, "output"):
                v = ex.b.op("Identity", [v], name_hint=public)
        g.outputs[public] = v.name
    if gen is not None:
        ex.b.gen.finish(ex.b, gen.span)
        g.generation = ex.b.gen
    g.metadata.update({"graphc.spec_name": spec.name, "graphc.spec_sha256": spec.digest})
    if spec.generation is not None:
        from .ir.kv_cache import check_generation
        check_generation(spec, g)
    from .table_limits import record_table_limits
    record_table_limits(g)              # lengths written as expressions too (num_patches + 1)
    verify(g)
    return g


class _ShapeNode:
    """Adapter: an input's shape list as a located Node for eval_shape."""

    def __init__(self, decl):
        from .source import Node
        self._node = Node(decl.shape, decl.span)

    def __getattr__(self, item):
        return getattr(self._node, item)
