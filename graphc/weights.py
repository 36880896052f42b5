"""Weights: reading .npz/.safetensors files, seeded initialisation, and the
materialisation pass that fills parameters (folding compile-time ``Derive``
ops is the next pass, graphc.ir.fold).

Weight files follow torch ``state_dict`` names, so a PyTorch model's weights
load with no mapping. Every mismatch (missing, extra, misshaped, wrongly typed)
is collected and reported in one error, because fixing them one run at a time
is miserable.
"""
from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Mapping

import numpy as np

from .errors import GraphcError, InternalError
from .ir import DTYPES, Graph, ValueInfo
from .ir.builder import Init

# safetensors dtype names -> numpy
_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
              "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "BF16": None}
MAX_HEADER = 100 << 20


def _over_budget(shown: str, total: int, max_bytes: int | None) -> None:
    if max_bytes is not None and total > max_bytes:
        from .expand import format_bytes
        raise GraphcError(f"{shown}: the tensors in this file take more than {format_bytes(max_bytes)}",
                          hint="if the model really is this large, pass --max-param-bytes (e.g. 64G)")


def _file_kind(mode: int) -> str:
    return ("a directory" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "not a regular file")


def _not_regular(shown: str, mode: int) -> GraphcError:
    hint = ("pass the weights file inside it, not the directory" if stat.S_ISDIR(mode) else
            "save the weights to a file first: graphc maps the file, so it cannot read a pipe or a stream")
    return GraphcError(f"weights file {shown} is not a regular file (it is {_file_kind(mode)})", hint=hint)


def _open_regular(path: Path, shown: str):
    """Open a weights file for reading without blocking (opening a FIFO with no
    writer would hang) and refuse anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise GraphcError(f"cannot read weights file {shown}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(shown, mode)
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_safetensors(path: Path, max_bytes: int | None = None,
                     converted: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """A strict reader of the safetensors format (8-byte header length, JSON
    header, raw little-endian data); every offset is bounds-checked so a
    truncated or foreign file is an error, never a crash or a huge allocation.
    As the format requires, header keys are unique, ``__metadata__`` is a
    string-to-string map, and the tensors tile the data section exactly (no
    overlaps, no holes). bfloat16 tensors (numpy has no such dtype) become
    float32 copies, exactly (bf16 is float32's upper half); ``converted``, if
    given, hears of each (name -> 'bfloat16') so the caller can say so."""
    shown = str(path)
    f = _open_regular(path, shown)
    try:
        with f:
            return _read_safetensors(f, path, shown, max_bytes, converted)
    except OSError as exc:
        raise GraphcError(f"cannot read weights file {shown}: {exc.strerror or exc}") from None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _read_safetensors(f, path: Path, shown: str, max_bytes: int | None,
                      converted: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    head = f.read(8)
    if len(head) < 8:
        raise GraphcError(f"{shown}: not a safetensors file (shorter than its 8-byte header)")
    (n,) = struct.unpack("<Q", head)
    size = os.fstat(f.fileno()).st_size
    if n > MAX_HEADER or 8 + n > size:
        raise GraphcError(f"{shown}: not a safetensors file, or truncated (header of {n} bytes in a {size}-byte file)")
    text = f.read(n)
    if len(text) != n:
        raise GraphcError(f"{shown}: not a safetensors file, or truncated (header of {n} bytes in a {size}-byte file)")
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise GraphcError(f"{shown}: corrupt safetensors header (key '{exc.args[0]}' appears twice)",
                          hint="a safetensors header names each tensor once") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GraphcError(f"{shown}: corrupt safetensors header ({str(exc)[:200]})") from None
    except ValueError:                  # an integer past Python's digit limit (4300 by default)
        raise GraphcError(f"{shown}: corrupt safetensors header (a number with thousands of digits)") from None
    except RecursionError:
        raise GraphcError(f"{shown}: corrupt safetensors header (nested too deeply)") from None
    if not isinstance(header, dict):
        raise GraphcError(f"{shown}: corrupt safetensors header (not a JSON object)")
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and
                                 all(isinstance(v, str) for v in meta.values())):
        raise GraphcError(f"{shown}: corrupt safetensors header ('__metadata__' must map strings to strings, "
                          f"not be {_json_kind(meta)})")
    data_len = size - 8 - n
    entries = []
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            if not isinstance(dtype_name, str) or not isinstance(shape, list):
                raise TypeError
            shape = tuple(_json_int(s) for s in shape)
            start, end = _json_int(start), _json_int(end)
        except (KeyError, TypeError, ValueError):
            raise GraphcError(f"{shown}: corrupt entry for tensor '{name}'") from None
        if dtype_name not in _ST_DTYPES:
            raise GraphcError(f"{shown}: tensor '{name}' has dtype {dtype_name}, which graphc cannot convert",
                              hint="graphc reads " + ", ".join(_ST_DTYPES) + "; convert the tensor to one of them "
                              "(float32 for weights) before saving")
        # bfloat16 is read as its raw 16-bit words, widened to float32 below
        dtype = np.dtype(_ST_DTYPES[dtype_name] or np.uint16).newbyteorder("<")
        count = math.prod(shape)        # exact: numpy's prod would wrap around on absurd shapes
        if any(s < 0 for s in shape) or not 0 <= start <= end <= data_len or end - start != count * dtype.itemsize:
            raise GraphcError(f"{shown}: tensor '{name}' lies outside the file or has the wrong size; "
                              f"the file is truncated or corrupt")
        total += end - start
        _over_budget(shown, total, max_bytes)
        entries.append((name, dtype, shape, start, end, dtype_name == "BF16"))
    _check_layout(shown, entries, data_len)
    # mapped, not read: each tensor is a read-only view of the file (no copy;
    # safetensors is little-endian, which numpy reads as is on x86 and ARM)
    out: dict[str, np.ndarray] = {}
    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if entries else None
    for name, dtype, shape, start, end, bf16 in entries:
        try:
            arr = np.frombuffer(mapped, dtype=dtype, count=math.prod(shape), offset=8 + n + start).reshape(shape)
        except ValueError as exc:       # e.g. more dimensions than numpy supports
            raise GraphcError(f"{shown}: tensor '{name}' cannot be loaded ({str(exc)[:200]})") from None
        if bf16:       # bfloat16 bits are the upper 16 bits of the float32 with the same value
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
            if converted is not None:
                converted[name] = "bfloat16"
        out[name] = arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
    return out


def _check_layout(shown: str, entries: list, data_len: int) -> None:
    """The format requires the tensors' byte ranges to cover the data section
    exactly: no two overlap (one write would change both) and no byte belongs
    to no tensor (a hole can hide another file's content)."""
    hint = "the file was not written by a safetensors library, or was altered; save it again (safetensors save_file)"
    at, prev = 0, None
    for name, _, _, start, end, _ in sorted(entries, key=lambda e: (e[3], e[4])):
        if start < at:
            raise GraphcError(f"{shown}: tensors '{prev[0]}' (bytes {prev[1]}-{prev[2]}) and '{name}' "
                              f"(bytes {start}-{end}) overlap in the data section; the file is corrupt", hint=hint)
        if start > at:
            where = f"between tensor '{prev[0]}' and tensor '{name}'" if prev else f"before tensor '{name}'"
            raise GraphcError(f"{shown}: bytes {at}-{start} of the data section, {where}, belong to no tensor; "
                              f"the file is corrupt", hint=hint)
        at, prev = end, (name, start, end)
    if at != data_len:
        where = f"after tensor '{prev[0]}'" if prev else "with no tensors declared"
        raise GraphcError(f"{shown}: {data_len - at} bytes at the end of the data section, {where}, belong to no "
                          f"tensor; the file is corrupt", hint=hint)


def _json_kind(v) -> str:
    if isinstance(v, dict):
        return "an object with non-string values"
    return {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(v), type(v).__name__)


def _json_int(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError("not an integer")
    return v


def read_npz(path: Path, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Read an .npz (a zip of .npy files) member by member, each header (dtype,
    shape) checked before its data is read: a few kilobytes of zip can declare,
    or inflate to, terabytes. Object arrays (pickles) are refused outright."""
    shown = str(path)
    raw = _open_regular(path, shown)
    with raw:
        try:
            magic = raw.read(6)
            raw.seek(0)
        except OSError as exc:
            raise GraphcError(f"cannot read weights file {shown}: {exc.strerror or exc}") from None
        if magic == b"\x93NUMPY":
            raise GraphcError(f"{shown}: a .npy array, not an .npz archive of named tensors",
                              hint="save with numpy.savez(path, **state_dict_as_numpy)")
        try:
            return _read_npz(raw, shown, max_bytes)
        except GraphcError:
            raise
        except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, NotImplementedError,
                RuntimeError) as exc:
            raise GraphcError(f"{shown}: not a readable .npz file ({str(exc)[:200]})",
                              hint="save with numpy.savez(path, **state_dict_as_numpy)") from None


def _read_npz(raw, shown: str, max_bytes: int | None) -> dict[str, np.ndarray]:
    """Uncompressed members (numpy.savez) are mapped, not read: their arrays are
    read-only views of the file, so loading costs no copy and no memory beyond
    the page cache (the build then copies each weight once, into the output).
    Compressed members (numpy.savez_compressed) are inflated into new arrays."""
    out: dict[str, np.ndarray] = {}
    total = 0
    with zipfile.ZipFile(raw) as zf:
        size = os.fstat(raw.fileno()).st_size
        mapped = mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        seen: set[str] = set()
        for info in zf.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise GraphcError(f"{shown}: member '{info.filename}' is not a .npy tensor")
            key = info.filename[:-4]
            if key in seen:     # a zip may hold two members of one name; neither may silently win
                raise GraphcError(f"{shown}: tensor '{key}' appears twice in the archive ('{info.filename}')",
                                  hint="an .npz names each tensor once; save it again with numpy.savez")
            seen.add(key)
            with zf.open(info) as f:
                shape, fortran, dtype = _npy_header(f, shown, key)
                nbytes = math.prod(shape) * dtype.itemsize
                total += nbytes
                _over_budget(shown, total, max_bytes)
                if info.compress_type == zipfile.ZIP_STORED and mapped is not None:
                    member = _stored_data_offset(mapped, info)
                    start = member + f.tell()
                    if start + nbytes > min(size, member + info.file_size):
                        raise GraphcError(f"{shown}: tensor '{key}' is truncated")
                    arr = np.frombuffer(mapped, dtype, count=math.prod(shape), offset=start)
                    arr = arr.reshape(shape[::-1] if fortran else shape)
                else:
                    arr = _read_into(f, shape[::-1] if fortran else shape, dtype, nbytes, shown, key)
                out[key] = arr.T if fortran else arr
    return out


def _npy_header(f, shown: str, key: str):
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(f)
    else:
        raise GraphcError(f"{shown}: tensor '{key}' uses .npy format {version}, which graphc does not read")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise GraphcError(f"{shown}: tensor '{key}' has dtype {dtype}; weights are plain numeric tensors")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
        # a -1 would make numpy map the rest of the file as this tensor
        raise GraphcError(f"{shown}: tensor '{key}' has an invalid shape {shape}; the file is corrupt")
    return shape, fortran, dtype


def _stored_data_offset(mapped: mmap.mmap, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes begin: after its local file header, whose
    name and extra-field lengths may differ from the central directory's."""
    at = info.header_offset
    header = mapped[at:at + 30]
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return at + 30 + name_len + extra_len


def _read_into(f, shape, dtype, nbytes: int, shown: str, key: str) -> np.ndarray:
    arr = np.empty(shape, dtype)
    view = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
    got = 0
    while got < nbytes:
        k = f.readinto(view[got:])
        if not k:
            raise GraphcError(f"{shown}: tensor '{key}' is truncated ({got} of {nbytes} bytes)")
        got += k
    return arr


def load_weights(path: str | Path, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Read a weights file; ``max_bytes`` bounds the tensors' total size (checked
    from the file's headers before any tensor is read)."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode       # never opens it: opening a FIFO would block
    except (FileNotFoundError, NotADirectoryError):
        raise GraphcError(f"weights file not found: {path}") from None
    except OSError as exc:
        raise GraphcError(f"cannot read weights file {path}: {exc.strerror or exc}") from None
    except ValueError:                  # e.g. a NUL byte in the path
        raise GraphcError(f"weights file not found: {path!r}") from None
    if not stat.S_ISREG(mode):
        raise _not_regular(str(path), mode)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors(p, max_bytes)
    if suffix == ".npz":
        return read_npz(p, max_bytes)
    raise GraphcError(f"{path}: unknown weights format '{suffix}'", hint="use .safetensors or .npz")


def _rng_for(name: str, seed: int) -> np.random.Generator:
    # Seeded per parameter name, not by position: adding a layer does not
    # change the initial weights of the others, and order never matters.
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _uniform(rng: np.random.Generator, shape, bound: float) -> np.ndarray:
    out = rng.random(size=shape, dtype=np.float32)
    out *= np.float32(2 * bound)
    out -= np.float32(bound)
    return out


# Below this many bytes of parameters, drawing them on one thread is as fast.
PARALLEL_INIT_BYTES = 16 << 20
INIT_THREADS = 4


def initial_values(params: list[ValueInfo], seed: int, total: int):
    """Each parameter's seeded value (``initial_value``), in order, drawn on a
    few threads when there is much to draw: drawing 44M values was a fifth of
    the 6+6 Transformer's build. numpy's generators release the GIL while
    they fill an array, and every parameter has its own generator seeded by
    its name, so the values, and the model's bytes, are the same whatever the
    threads do (tests/test_init.py builds with 1 and 4 threads and compares)."""
    threads = min(INIT_THREADS, os.cpu_count() or 1)
    if total < PARALLEL_INIT_BYTES or threads < 2 or len(params) < 2:
        yield from (initial_value(p, seed) for p in params)
        return
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(threads, thread_name_prefix="graphc-init")
    try:
        yield from pool.map(initial_value, params, [seed] * len(params))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)     # on Ctrl-C: nothing new starts


def initial_value(info: ValueInfo, seed: int) -> np.ndarray:
    init: Init = info.init or Init("zeros")
    out = _drawn(info, init, seed)
    if init.zero_row is not None:
        out[init.zero_row] = 0
    return out


def _drawn(info: ValueInfo, init: Init, seed: int) -> np.ndarray:
    shape = info.type.concrete_shape()
    dtype = DTYPES[info.type.dtype]
    if init.kind == "zeros":
        return np.zeros(shape, dtype)
    if init.kind == "ones":
        return np.ones(shape, dtype)
    rng = _rng_for(info.name, seed)
    # drawn in float32 directly: float64 draws + a cast doubled the init time of big models
    if init.kind == "uniform":
        return _uniform(rng, shape, init.a).astype(dtype, copy=False)
    if init.kind == "normal":
        return (rng.standard_normal(size=shape, dtype=np.float32) * np.float32(init.a)).astype(dtype, copy=False)
    if init.kind == "xavier_uniform":
        fan_out, fan_in = shape[0], shape[1]
        bound = init.a * np.sqrt(6.0 / (fan_in + fan_out))
        return _uniform(rng, shape, bound).astype(dtype, copy=False)
    raise InternalError(f"unknown init {init.kind}")


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
