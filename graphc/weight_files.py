"""Weight files: strict readers of ``.safetensors`` and ``.npz`` (``load_weights``
picks one by suffix).

A weights file is untrusted input: headers are checked against the file's size
and the ``max_bytes`` budget before any tensor is read, anything but a regular
file is refused without opening it blocking, and uncompressed tensors are
mmap'd read-only views, never copied (a checkpoint can be most of memory).
Directories, sharded indexes and dtype conversions are graphc.checkpoint's.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import GraphcError

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
                     converted: dict[str, str] | None = None, raw_bf16: bool = False) -> dict[str, np.ndarray]:
    """A strict reader of the safetensors format (8-byte header length, JSON
    header, raw little-endian data); every offset is bounds-checked so a
    truncated or foreign file is an error, never a crash or a huge allocation.
    As the format requires, header keys are unique, ``__metadata__`` is a
    string-to-string map, and the tensors tile the data section exactly (no
    overlaps, no holes). bfloat16 tensors (numpy has no such dtype) become
    float32 copies, exactly (bf16 is float32's upper half); ``converted``, if
    given, hears of each (name -> 'bfloat16') so the caller can say so.
    ``raw_bf16``: leave them as mapped uint16 views of their bits instead (names,
    shapes and bitwise comparisons need no float32 copy of a whole checkpoint)."""
    shown = str(path)
    f = _open_regular(path, shown)
    try:
        with f:
            return _read_safetensors(f, path, shown, max_bytes, converted, raw_bf16)
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
                      converted: dict[str, str] | None = None, raw_bf16: bool = False) -> dict[str, np.ndarray]:
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
        if bf16 and not raw_bf16:   # bfloat16 bits are the upper 16 bits of the float32 with the same value
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


def read_npy_header(f) -> tuple[tuple, tuple, bool, np.dtype]:
    """(format version, shape, Fortran order, dtype) of the .npy stream ``f`` at its
    start; shape is None for a format version graphc does not read (not 1.0 or 2.0).
    numpy's own errors for a malformed header propagate; each caller words them."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        return (version, *fmt.read_array_header_1_0(f))
    if version == (2, 0):
        return (version, *fmt.read_array_header_2_0(f))
    return version, None, False, None


def _npy_header(f, shown: str, key: str):
    version, shape, fortran, dtype = read_npy_header(f)
    if shape is None:
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
