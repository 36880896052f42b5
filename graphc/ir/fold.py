"""The fold pass: every compile-time ``Derive`` op runs once, on the
materialized parameters, and its result becomes a constant initializer.

Precondition: every parameter has data (graphc.weights.materialize ran).
Postcondition: no Derive op is left (the lowering has no form for one); the
parameters and constants that only fed Derive ops are gone, and each was
released as soon as its last reader folded (``release_mapped_pages``), so a
build's peak memory stays near one copy of the weights even when every weight
is transposed or stacked. A folded value is renamed ``<layer path>.<label>``
where that name is free, so the ONNX initializers read like the spec.
"""
from __future__ import annotations

import mmap

import numpy as np

from ..errors import InternalError
from .graph import DTYPES, Graph, verify
from .simplify import remove_unread_weights


def fold_derived(g: Graph) -> None:
    """Run every Derive op once; its result becomes a const initializer and
    parameters that only fed Derive ops drop out of the runtime graph."""
    for op in [o for o in g.ops() if o.op == "Derive"]:
        args = [g.value(n).data for n in op.inputs]
        if any(a is None for a in args):
            raise InternalError(f"Derive {op.id} runs before its inputs have data")
        out = np.ascontiguousarray(op.attrs["fn"](*args))
        (out_name,) = op.outputs
        info = g.value(out_name)
        if tuple(out.shape) != info.type.concrete_shape() or out.dtype != DTYPES[info.type.dtype]:
            raise InternalError(f"Derive {op.attrs['label']} produced {out.dtype}{list(out.shape)}, "
                                f"declared {info.type}")
        g.remove_op(op.id)
        info.kind, info.data = "const", out
        # free inputs nothing else reads any more (raw weights once transposed, the
        # halves of a packed QKV) now, not at the end: keeps peak memory near 1x weights
        for name in set(op.inputs):
            if g.has_value(name) and not g.users(name) and name not in g.outputs.values():
                release_mapped_pages(g.value(name).data)
                g.remove_value(name)
        # a readable initializer name: '<layer path>.<label>' where free
        nice = f"{op.layer}.{op.attrs['label']}" if op.layer else op.attrs["label"]
        if not g.has_value(nice):
            _rename_value(g, out_name, nice)
    remove_unread_weights(g)
    verify(g)




def release_mapped_pages(arr: np.ndarray | None) -> None:
    """Tell the kernel this process is done with the file pages behind a
    tensor mapped from a weights file (the originals of transposed or stacked
    weights): they leave this process's resident memory at once instead of
    when the whole file is unmapped, which keeps a build's peak near one copy
    of the weights. The page cache keeps them; nothing is written. A no-op for
    ordinary arrays."""
    if arr is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    base = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):          # np.frombuffer keeps a memoryview of the map
        base = base.obj
    if not isinstance(base, mmap.mmap) or not arr.nbytes:
        return
    start = arr.__array_interface__["data"][0] - np.frombuffer(base, np.uint8, count=1).ctypes.data
    lo = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE                  # whole pages inside the tensor only:
    hi = (start + arr.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE       # its neighbours may still be in use
    if hi > lo:
        base.madvise(mmap.MADV_DONTNEED, lo, hi - lo)




def _rename_value(g: Graph, old: str, new: str) -> None:
    info = g.value(old)
    users = g.users(old)
    g.remove_value(old)
    info.name = new
    g.add_value(info)
    for u in users:
        u.inputs = [new if i == old else i for i in u.inputs]
        g.nx.add_edge("v:" + new, "op:" + u.id)
    for k, v in g.outputs.items():
        if v == old:
            g.outputs[k] = new
