"""Materialisation (pass 1 of graphc.pipeline): give every parameter data, from
the user's weights matched by name or from the seeded init (graphc.weight_init);
folding compile-time ``Derive`` ops is the next pass, graphc.ir.fold. Reading
weight files is graphc.weight_files'.

Weight files follow torch ``state_dict`` names, so a PyTorch model's weights
load with no mapping; a file whose names differ by one prefix throughout is
renamed (``prefix_rewrite``). Every mismatch (missing, extra, misshaped, wrongly
typed) is collected and reported in one error, because fixing them one run at a
time is miserable.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .errors import GraphcError
from .ir import DTYPES, Graph, ValueInfo
from .weight_init import initial_values

def materialize(g: Graph, weights: Mapping[str, np.ndarray] | None = None, seed: int = 0,
                source: str = "weights", progress=None) -> list[str]:
    """Give every parameter data (from ``weights`` or seeded init); the first
    stage of graphc.pipeline (Derive ops are folded by the next, graphc.ir.fold).
    Returns notes for the user (a weights file matched by renaming, see prefix_rewrite).

    ``progress`` (optional, see graphc.progress) hears of each tensor with the
    bytes done so far, because this is the slow part of building a big model."""
    from .progress import report
    params = g.params()
    total = sum(_nbytes(p) for p in params)
    done = 0
    notes: list[str] = []
    if weights is not None:
        expected = {p.name: p for p in params}
        rewrite = prefix_rewrite(expected, weights)
        if rewrite is not None:
            strip, add = rewrite
            weights = {add + n[len(strip):]: a for n, a in weights.items()}
            notes.append(f"the names in {source} {describe_renaming(strip, add)}; matched them by that renaming")
        from .weights_report import mismatch_error
        problem = mismatch_error(expected, weights, source, DTYPES, renaming_hint)
        if problem is not None:
            raise problem
        for p in params:
            arr = np.asarray(weights[p.name])
            # checked after the cast: float64 1e300 becomes inf in float32
            with np.errstate(over="ignore", invalid="ignore"):
                data = np.ascontiguousarray(arr.astype(DTYPES[p.type.dtype], copy=False))
            if data.dtype.kind == "f" and not np.all(np.isfinite(data)):
                why = "contains NaN or infinity" if not np.all(np.isfinite(arr)) else \
                    f"has values too large for {p.type.dtype}"
                raise GraphcError(f"{source}: tensor '{p.name}' {why}")
            p.data = data
            done += p.data.nbytes
            report(progress, "weights", done, total, p.name)
    else:
        for p, data in zip(params, initial_values(params, seed, total)):
            p.data = data
            done += p.data.nbytes
            report(progress, "weights", done, total, p.name)
    return notes


def prefix_rewrite(expected: Mapping[str, object], names: Mapping[str, object]) -> tuple[str, str] | None:
    """(strip, add) such that replacing the leading ``strip`` of every name in
    ``names`` by ``add`` gives exactly the ``expected`` names, or None.

    Why: a spec names parameters after the module attribute that holds a layer
    (``encoder.layers.0...`` for an ``encoder`` attribute), while a user who saves
    a bare ``nn.TransformerEncoder`` gets ``layers.0...``, and one who saves a
    ``DataParallel`` wrapper gets ``module.encoder.layers.0...``. Only a rewrite
    that is total (every tensor used, every parameter found), unambiguous (one
    candidate works) and needed (no name matches as it is) is returned, so it can
    never pick one tensor over another: it only renames a whole file."""
    if not expected or len(expected) != len(names) or any(n in expected for n in names):
        return None
    # same count and every renamed name expected: the renaming is a bijection
    working = [c for c in sorted(_renamings(min(names), expected)) if _found(c, names, expected) == len(names)]
    return working[0] if len(working) == 1 else None


def describe_renaming(strip: str, add: str) -> str:
    """How the file's names differ from the spec's, in words."""
    if not strip:
        return f"lack the prefix '{add}'"
    return f"start with '{strip}' where the spec's start with '{add}'" if add else f"carry the prefix '{strip}'"


def renaming_hint(expected: Mapping[str, object], names: Mapping[str, object]) -> str | None:
    """For the mismatch error: the one-prefix renaming that would find the most
    missing parameters among the file's unused tensors, if it finds at least
    half of the spec's parameters (a whole model's state_dict given for one of
    its parts, say), so the user sees the near miss. Only missing parameters and
    unused tensors count: in a file with one tensor missing, 'fc2.' -> 'fc1.'
    maps names onto parameters that are already there, which is no near miss."""
    missing = {n: p for n, p in expected.items() if n not in names}
    unused = sorted(n for n in names if n not in expected)
    if not missing or not unused:
        return None
    probes = unused[::max(1, len(unused) // 4)][:5]
    votes: dict[tuple[str, str], int] = {}
    for probe in probes:
        for c in _renamings(probe, missing) - {("", "")}:
            votes[c] = votes.get(c, 0) + 1
    found = {c: _found(c, unused, missing) for c in sorted(votes, key=votes.get, reverse=True)[:3]}
    best = max(found, key=found.get, default=None)
    if best is None or 2 * found[best] < len(expected):
        return None
    return (f"{found[best]} of the spec's {len(expected)} parameters are in the file under names "
            f"that {describe_renaming(*best)}; graphc renames a file only when every tensor fits one renaming")


def _renamings(probe: str, expected) -> set[tuple[str, str]]:
    """Every (strip, add) that maps ``probe`` onto some expected name: for each
    expected name, the longest suffix the two share from a name boundary in both."""
    found = set()
    for target in expected:
        for cut in range(len(probe)):
            tail = probe[cut:]
            if (cut == 0 or probe[cut - 1] == ".") and target.endswith(tail) \
                    and (len(target) == len(tail) or target[-len(tail) - 1] == "."):
                found.add((probe[:cut], target[:len(target) - len(tail)]))
                break
    return found


def _found(renaming: tuple[str, str], names, expected) -> int:
    strip, add = renaming
    return sum(1 for n in names if n.startswith(strip) and add + n[len(strip):] in expected)


def _nbytes(p: ValueInfo) -> int:
    shape = p.type.concrete_shape() or ()
    return int(np.prod(shape, dtype=np.int64)) * DTYPES[p.type.dtype].itemsize
