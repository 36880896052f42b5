"""Weights: reading .npz/.safetensors files, seeded initialisation, and the
materialisation pass that fills parameters and folds compile-time ``Derive`` ops.

Weight files follow torch ``state_dict`` names, so a PyTorch model's weights
load with no mapping. Every mismatch (missing, extra, misshaped, wrongly typed)
is collected and reported in one error, because fixing them one run at a time
is miserable.
"""
from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import GraphcError, InternalError
from .ir import DTYPES, Graph, ValueInfo, verify
from .ir.builder import Init

# safetensors dtype names -> numpy
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "BF16": None}
MAX_HEADER = 100 << 20


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A strict reader of the safetensors format (8-byte header length, JSON
    header, raw little-endian data); every offset is bounds-checked so a
    truncated or foreign file is an error, never a crash or a huge allocation."""
    shown = str(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise GraphcError(f"{shown}: not a safetensors file (shorter than its 8-byte header)")
        (n,) = struct.unpack("<Q", head)
        size = path.stat().st_size
        if n > MAX_HEADER or 8 + n > size:
            raise GraphcError(f"{shown}: not a safetensors file, or truncated (header of {n} bytes in a {size}-byte file)")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GraphcError(f"{shown}: corrupt safetensors header ({exc})") from None
        if not isinstance(header, dict):
            raise GraphcError(f"{shown}: corrupt safetensors header (not a JSON object)")
        data_len = size - 8 - n
        out: dict[str, np.ndarray] = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype_name, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
                shape = tuple(int(s) for s in shape)
                start, end = int(start), int(end)
            except (KeyError, TypeError, ValueError):
                raise GraphcError(f"{shown}: corrupt entry for tensor '{name}'") from None
            if dtype_name not in _ST_DTYPES:
                raise GraphcError(f"{shown}: tensor '{name}' has unknown dtype {dtype_name}")
            if _ST_DTYPES[dtype_name] is None:
                raise GraphcError(f"{shown}: tensor '{name}' is bfloat16, which graphc does not load",
                                  hint="convert to float32 (tensor.float()) before saving")
            dtype = np.dtype(_ST_DTYPES[dtype_name]).newbyteorder("<")
            count = int(np.prod(shape)) if shape else 1
            if any(s < 0 for s in shape) or not 0 <= start <= end <= data_len or end - start != count * dtype.itemsize:
                raise GraphcError(f"{shown}: tensor '{name}' lies outside the file or has the wrong size; "
                                  f"the file is truncated or corrupt")
            f.seek(8 + n + start)
            out[name] = np.frombuffer(f.read(end - start), dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return out


def read_npz(path: Path) -> dict[str, np.ndarray]:
    shown = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise GraphcError(f"{shown}: a .npy array, not an .npz archive of named tensors")
            return {k: z[k] for k in z.files}
    except GraphcError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise GraphcError(f"{shown}: not a readable .npz file ({exc})",
                          hint="save with numpy.savez(path, **state_dict_as_numpy)") from None


def load_weights(path: str | Path) -> dict[str, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise GraphcError(f"weights file not found: {path}")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(p)
    if suffix == ".npz":
        return read_npz(p)
    raise GraphcError(f"{path}: unknown weights format '{suffix}'", hint="use .safetensors or .npz")


def _rng_for(name: str, seed: int) -> np.random.Generator:
    # Seeded per parameter name, not by position: adding a layer does not
    # change the initial weights of the others, and order never matters.
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def initial_value(info: ValueInfo, seed: int) -> np.ndarray:
    shape = info.type.concrete_shape()
    dtype = DTYPES[info.type.dtype]
    init: Init = info.init or Init("zeros")
    if init.kind == "zeros":
        return np.zeros(shape, dtype)
    if init.kind == "ones":
        return np.ones(shape, dtype)
    rng = _rng_for(info.name, seed)
    if init.kind == "uniform":
        return rng.uniform(-init.a, init.a, size=shape).astype(dtype)
    if init.kind == "normal":
        return (rng.standard_normal(size=shape) * init.a).astype(dtype)
    if init.kind == "xavier_uniform":
        fan_out, fan_in = shape[0], shape[1]
        bound = init.a * np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-bound, bound, size=shape).astype(dtype)
    raise InternalError(f"unknown init {init.kind}")


def materialize(g: Graph, weights: Mapping[str, np.ndarray] | None = None, seed: int = 0,
                source: str = "weights") -> None:
    """Give every parameter data (from ``weights`` or seeded init), then fold Derive ops."""
    params = g.params()
    if weights is not None:
        problems = []
        expected = {p.name: p for p in params}
        missing = [n for n in expected if n not in weights]
        extra = sorted(n for n in weights if n not in expected)
        for n in missing:
            problems.append(f"missing: {n} {list(expected[n].type.concrete_shape())}")
        for n in extra:
            problems.append(f"unexpected: {n} {list(np.shape(weights[n]))}")
        for n, p in expected.items():
            if n not in weights:
                continue
            arr = weights[n]
            want = p.type.concrete_shape()
            if tuple(arr.shape) != want:
                problems.append(f"wrong shape: {n} is {list(arr.shape)}, expected {list(want)}")
            elif arr.dtype != DTYPES[p.type.dtype]:
                if arr.dtype.kind == "f" and DTYPES[p.type.dtype].kind == "f":
                    continue   # float widths convert (with a cast below)
                problems.append(f"wrong dtype: {n} is {arr.dtype}, expected {p.type.dtype}")
        if problems:
            shown = problems[:40] + ([f"... and {len(problems) - 40} more"] if len(problems) > 40 else [])
            raise GraphcError(f"{source} do not match the spec ({len(problems)} problem{'s' if len(problems) > 1 else ''})",
                              notes=shown,
                              hint="names follow torch state_dict conventions; 'graphc params SPEC' lists them")
        for p in params:
            arr = np.asarray(weights[p.name])
            if not np.all(np.isfinite(arr)):
                raise GraphcError(f"{source}: tensor '{p.name}' contains NaN or infinity")
            p.data = np.ascontiguousarray(arr.astype(DTYPES[p.type.dtype], copy=False))
    else:
        for p in params:
            p.data = initial_value(p, seed)
    fold_derived(g)


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
        # a readable initializer name: '<layer path>.<label>' where free
        nice = f"{op.layer}.{op.attrs['label']}" if op.layer else op.attrs["label"]
        if not g.has_value(nice):
            _rename_value(g, out_name, nice)
    for p in g.params():
        if not g.users(p.name) and p.name not in g.outputs.values():
            g.remove_value(p.name)
    verify(g)


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


def param_table(g: Graph) -> list[tuple[str, tuple[int, ...], int]]:
    return [(p.name, p.type.concrete_shape(), int(np.prod(p.type.concrete_shape() or ())))
            for p in g.params()]
