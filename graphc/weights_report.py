"""The error a user sees when a weights file does not fit the spec.

Why a module: the message is the whole user interface of a failed load, and
it has to carry the clues a person needs to fix it in one go: the spec's
missing names *and* the file's own names (side by side, neither drowned by the
other), tensors that are exactly the transpose of what is expected (an
[in, out] layout like GPT-2's Conv1D), a renaming most tensors fit (written
as the weight-map rule that performs it), and how to drop extra tensors.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .errors import GraphcError

SHOWN = 20          # lines per kind of problem; the counts say how many more


def _some(lines: list[str], what: str) -> list[str]:
    if len(lines) <= SHOWN:
        return lines
    return lines[:SHOWN] + [f"... and {len(lines) - SHOWN} more {what}"]


def mismatch_error(expected: Mapping[str, object], weights: Mapping[str, np.ndarray], source: str,
                   dtypes: Mapping, renaming_hint) -> GraphcError | None:
    """``expected``: parameter name -> ValueInfo; ``dtypes``: graphc dtype name ->
    numpy dtype; ``renaming_hint``: graphc.weights.renaming_hint (passed in, to
    keep the import one-way). None when everything fits."""
    missing = [f"missing: {n} {list(p.type.concrete_shape())}" for n, p in expected.items() if n not in weights]
    extra = [f"unexpected: {n} {list(np.shape(weights[n]))}" for n in sorted(weights) if n not in expected]
    shapes, kinds, transposed = [], [], []
    for n, p in expected.items():
        if n not in weights:
            continue
        arr = weights[n]
        want = p.type.concrete_shape()
        got = tuple(np.shape(arr))
        if got != want:
            line = f"wrong shape: {n} is {list(got)}, expected {list(want)}"
            if len(got) == 2 and got[::-1] == want:
                line += " (exactly its transpose)"
                transposed.append(n)
            shapes.append(line)
        elif arr.dtype != dtypes[p.type.dtype] and not (arr.dtype.kind == "f" and dtypes[p.type.dtype].kind == "f"):
            kinds.append(f"wrong dtype: {n} is {arr.dtype}, expected {p.type.dtype}")
    count = len(missing) + len(extra) + len(shapes) + len(kinds)
    if not count:
        return None
    near = renaming_hint(expected, weights)
    renaming = _prefixes(near) if near else None
    if renaming:
        # first the parameters even the near renaming cannot find: the real gaps
        strip, add = renaming
        found = {add + n[len(strip):] for n in weights if n.startswith(strip)}
        missing.sort(key=lambda line: line.split(" ")[1] in found)
    if not renaming:
        extra = _close_matches(extra, expected, weights)
    notes = (_some(missing, "missing") + _some(extra, "unexpected (the file's own names)")
             + _some(shapes, "wrong shapes") + _some(kinds, "wrong dtypes"))
    hints = []
    if near:
        hints.append(near)
        if renaming:
            rest = sorted(n for n in weights if n not in expected and not n.startswith(renaming[0]))
            ignore = f", ignore: [{', '.join(rest)}]" if rest and len(rest) <= 5 else ""
            hints.append("to load it, add to the spec: weights: {map: [{from: '%s**', to: '%s{1}'}]%s}"
                         % (renaming + (ignore,)))
    if transposed:
        hints.append(f"{len(transposed)} tensor{'s are' if len(transposed) > 1 else ' is'} stored transposed "
                     f"([in, out], like GPT-2's Conv1D): map {'them' if len(transposed) > 1 else 'it'} with "
                     f"'transpose: true' in the spec's weights: map (square ones cannot be detected: map "
                     f"every such tensor, not only these)")
    if extra and not missing and not shapes and not kinds:
        hints.append("to drop the extra tensors: 'weights: {ignore: [PATTERN]}' in the spec, or "
                     "--ignore-weights PATTERN ('*' matches one name segment)")
    if not hints:
        hints.append("names follow torch state_dict conventions")
    return GraphcError(f"the tensors in {source} do not match the spec's parameters "
                       f"({count} problem{'s' if count > 1 else ''})", notes=notes,
                       hint="; ".join(hints) + "; 'graphc params SPEC' lists the spec's")


def _close_matches(extra: list[str], expected: Mapping[str, object],
                   weights: Mapping[str, np.ndarray]) -> list[str]:
    """The shown 'unexpected' lines, each with the missing parameter of the same
    shape it probably misspells ('norm_1' for 'norm1'): in a list of hundreds of
    names the pair is otherwise hard to spot. Only the shown lines are matched,
    so a file of thousands of stray tensors costs SHOWN searches."""
    import difflib
    missing = {n: tuple(p.type.concrete_shape()) for n, p in expected.items() if n not in weights}
    if not missing:
        return extra
    out = []
    for i, line in enumerate(extra):
        name = line.split(" ")[1]
        if i < SHOWN:
            shape = tuple(np.shape(weights[name]))
            same = [n for n, s in missing.items() if s == shape]
            match = difflib.get_close_matches(name, same, n=1, cutoff=0.8)
            if match:
                line += f" (the spec's {match[0]}?)"
        out.append(line)
    return out


def _prefixes(hint: str) -> tuple[str, str] | None:
    """(strip, add) of the renaming renaming_hint describes (it quotes the prefixes)."""
    import re
    if m := re.search(r"start with '([^']*)' where the spec's start with '([^']*)'", hint):
        return m.group(1), m.group(2)
    if m := re.search(r"carry the prefix '([^']*)'", hint):
        return m.group(1), ""
    if m := re.search(r"lack the prefix '([^']*)'", hint):
        return "", m.group(1)
    return None
