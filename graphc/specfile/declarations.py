"""Every layer-declaration error of a spec in one pass.

The expansion stops at the first error, and rightly so for shapes: a wrong
width in layer 3 makes every later shape meaningless. But an unknown argument,
a misspelt kind or an ill-typed value in one layer says nothing about the next
one, and fixing them one run at a time costs a user a run per typo. So before
expanding, every declaration (top-level layers and the layers of blocks) is
checked on its own, and all errors found are reported together, up to
MAX_REPORTED. What is checked here (docs/spec.md, "Errors"):

- the kind exists (a block or a built-in kind; `LSTM` hints `lstm`);
- every argument is one the kind takes (`pre_norm` hints `norm_first`);
- a top-level layer's argument values have the right type and range, and its
  required arguments are given (a block's layers are checked for unknown kinds
  and argument names only: their values depend on the block's parameters);
- a block use names only parameters the block has.
"""
from __future__ import annotations

from dataclasses import replace

from ..errors import GraphcError, GraphcErrors, did_you_mean, known_list
from .aliases import arg_alias_hint, find_kind
from .args import Env, eval_arg

MAX_REPORTED = 20


def unknown_kind_error(decl, spec) -> GraphcError:
    from ..layers import LAYERS
    names = list(LAYERS) + list(spec.blocks)
    same = find_kind(decl.kind, names)
    hint = (f"did you mean '{same}'? (kinds are lower case with underscores)" if same else
            did_you_mean(decl.kind, names) or "run 'graphc layers' to list the layer kinds")
    return GraphcError(f"unknown layer kind '{decl.kind}'", decl.kind_span, hint=hint)


def _layer_errors(decl, spec, env: Env | None) -> list[GraphcError]:
    from ..layers import LAYERS
    block = spec.blocks.get(decl.kind)
    kind = LAYERS.get(decl.kind)
    if block is None and kind is None:
        return [unknown_kind_error(decl, spec)]
    where = f"layer '{decl.name}'"
    errors = []
    if kind is None:
        for key in decl.args:
            if key not in block.params:
                errors.append(GraphcError(
                    f"block '{block.name}' has no parameter '{key}'", decl.arg_key_spans[key],
                    hint=did_you_mean(key, block.params) or
                    (f"its parameters: {known_list(block.params)}" if block.params else None)))
        return errors
    allowed = {p.name: p for p in kind.params}
    suggested = set()        # a misspelt required argument is one error (the unknown key), not two
    for key in decl.args:
        if key not in allowed:
            hint = arg_alias_hint(key, allowed) or did_you_mean(key, list(allowed) + ["input", "inputs", "repeat"])
            suggested.add((hint or "").split("'")[1] if hint and "'" in hint else "")
            errors.append(GraphcError(
                f"unknown argument '{key}' for {where}", decl.arg_key_spans[key],
                hint=hint or (f"{kind.kind} takes: {known_list(allowed)}" if allowed else
                              f"{kind.kind} takes no arguments")))
        elif env is not None:
            try:
                eval_arg(allowed[key], decl.args[key], env, where)
            except GraphcError as exc:
                errors.append(exc)
    if env is not None:
        for name, p in allowed.items():
            if p.required and name not in decl.args and name not in suggested:
                errors.append(GraphcError(f"{where} needs '{name}'", decl.span, hint=p.doc or None))
    return errors


def first_copy(decl):
    """The declaration of copy 0 of a repeated layer: its arguments with 'first:' applied."""
    if not decl.first:
        return decl
    return replace(decl, args={**decl.args, **decl.first}, arg_key_spans={**decl.arg_key_spans, **decl.first_key_spans})


def _first_errors(decl, spec, env: Env | None, seen: list[GraphcError]) -> list[GraphcError]:
    """The errors of copy 0's arguments not already reported for the layer's own."""
    if not decl.first:
        return []
    known = {(e.message, e.span) for e in seen}
    return [e for e in _layer_errors(first_copy(decl), spec, env) if (e.message, e.span) not in known]


def check_declarations(spec, env: Env) -> None:
    """Raise every independent declaration error of the spec at once (one
    error as itself, several as a GraphcErrors), or return if there are none."""
    errors: list[GraphcError] = []
    for decl in spec.layers:
        errors += _layer_errors(decl, spec, env)
        errors += _first_errors(decl, spec, env, errors)
    for block in spec.blocks.values():
        for decl in block.layers:
            errors += _layer_errors(decl, spec, None)
            errors += _first_errors(decl, spec, None, errors)
    if not errors:
        return
    errors.sort(key=lambda e: (e.span.path, e.span.line, e.span.col) if e.span else ("", 0, 0))
    if len(errors) == 1:
        raise errors[0]
    raise GraphcErrors(errors[:MAX_REPORTED], more=max(0, len(errors) - MAX_REPORTED))
