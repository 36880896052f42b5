""".npy / .npz files of `graphc run`: inputs read header first, outputs written
without numpy.savez.

Inputs are files other people wrote, so they are read the way the weight
readers read theirs (graphc.weight_files): every array's header (dtype, shape) is
read and checked -- against the file's own size and against the model's
declared inputs (``check`` below) -- before any data is read. A 2 MB
compressed .npz can declare a member of gigabytes, and an .npy header can
claim 4e12 elements; neither is inflated or allocated to find out that it
does not fit. Data that must be inflated (compressed members) is bounded by
``MAX_INFLATED_INPUT_BYTES``; uncompressed data is mapped from the file.

Outputs: ``numpy.savez(file, **outputs)`` mixes the arrays' names with its own
keyword arguments, so an output named ``file`` or ``allow_pickle`` was lost or
crashed the write. ``write_npz`` writes the same archive format (a zip of .npy
members, read back by ``numpy.load``) from a plain mapping, so any name works.
"""
from __future__ import annotations

import math
import os
import stat
import zipfile
import zlib
from typing import BinaryIO, Callable, Mapping, Sequence

import numpy as np

from ..errors import GraphcError
from ..weight_files import read_npy_header

# inputs that must be inflated (compressed .npz members) are capped: a small
# zip of zeros inflates a thousandfold. Uncompressed data is mapped from its file.
MAX_INFLATED_INPUT_BYTES = 1 << 30
_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError)


def write_npz(f: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    """An .npz (uncompressed, like numpy.savez) whose members are exactly the
    names of ``arrays``, whatever they are."""
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)


def placeholder(shape: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """A zero-stride array with the declared shape and dtype and no data: what
    the model checks need (ndim, shape, dtype) before anything is read."""
    return np.lib.stride_tricks.as_strided(np.zeros((), dtype), shape=tuple(shape), strides=(0,) * len(shape))


def _header(f, shown: str):
    try:
        version, shape, fortran, dtype = read_npy_header(f)
    except _ERRORS as exc:
        raise GraphcError(f"cannot read {shown}: not a valid .npy array ({str(exc)[:200]})",
                          hint="save it with numpy.save (or numpy.savez for several)") from None
    if shape is None:
        raise GraphcError(f"cannot read {shown}: .npy format {version} is not supported")
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or dtype.kind not in "biufc":
        raise GraphcError(f"cannot read {shown}: dtype {dtype} is not a plain numeric array")
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
        raise GraphcError(f"cannot read {shown}: invalid shape {shape}; the file is corrupt")
    return tuple(shape), bool(fortran), dtype


class _Pending:
    """One input array whose header has been read and whose data has not."""

    def __init__(self, name: str, shown: str, shape, fortran: bool, dtype, load: Callable[[], np.ndarray]):
        self.name, self.shown, self.shape, self.fortran, self.dtype, self.load = name, shown, shape, fortran, dtype, load

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def require_file(path: str, what: str) -> None:
    """A regular file is there; otherwise say what is (a missing path, a
    directory, a FIFO or device are three different mistakes)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise GraphcError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise GraphcError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise GraphcError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise GraphcError(f"{what} {path} is not a regular file (a FIFO, socket or device)",
                          hint="give a file saved on disk")


def _regular(path: str, what: str) -> None:
    try:
        require_file(path, "file")
    except GraphcError as exc:
        raise GraphcError(f"cannot read {what}: {exc.message}", hint=exc.hint) from None


def read_npy(path: str, what: str) -> np.ndarray:
    """One .npy array (``what`` names it in messages: "--prompt-ids"), its
    header checked against the file's size before the data is mapped."""
    return np.array(_npy(path, what, what).load())      # a private, writable copy


def _npy(path: str, name: str, what: str | None = None) -> _Pending:
    what = what or f"input '{name}'"
    _regular(path, what)
    shown = f"{what} from {path}"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            if magic != b"\x93NUMPY":
                if magic.startswith(b"PK"):
                    raise GraphcError(f"{path} is an .npz archive; for {what} give a .npy file",
                                      hint=f"or pass the archive alone: --input {path}")
                raise GraphcError(f"cannot read {what}: {path} is not a .npy file", hint="save it with numpy.save")
            f.seek(0)
            shape, fortran, dtype = _header(f, shown)
            offset = f.tell()
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise GraphcError(f"cannot read {shown}: {exc.strerror or exc}") from None
    p = _Pending(name, shown, shape, fortran, dtype, None)
    if size - offset < p.nbytes:
        raise GraphcError(f"cannot read {shown}: its header declares shape {list(shape)} {dtype} "
                          f"({p.nbytes:,} bytes), but the file holds {size - offset:,} bytes of data",
                          hint="the file is truncated or its header is corrupt; save it again with numpy.save")

    def load() -> np.ndarray:
        order = "F" if fortran else "C"
        if p.nbytes == 0:
            return np.zeros(shape, dtype, order=order)
        try:
            return np.memmap(path, dtype, "r", offset, shape, order)
        except _ERRORS as exc:
            raise GraphcError(f"cannot read {shown}: {str(exc)[:200]}") from None
    p.load = load
    return p


def _npz(path: str) -> tuple[list[_Pending], Callable[[], None]]:
    _regular(path, "inputs")
    try:
        raw = open(path, "rb")
    except OSError as exc:
        raise GraphcError(f"cannot read inputs from {path}: {exc.strerror or exc}") from None
    try:
        if raw.read(6) == b"\x93NUMPY":
            raise GraphcError(f"{path} is a single .npy array, not an .npz archive", hint="pass it as --input NAME=FILE")
        raw.seek(0)
        zf = zipfile.ZipFile(raw)
        pending = []
        seen = set()
        for info in zf.infolist():
            if info.is_dir():
                continue
            if not info.filename.endswith(".npy"):
                raise GraphcError(f"cannot read inputs from {path}: member '{info.filename}' is not a .npy array")
            key = info.filename[:-4]
            if key in seen:
                raise GraphcError(f"cannot read inputs from {path}: '{key}' appears twice in the archive")
            seen.add(key)
            shown = f"input '{key}' from {path}"
            with zf.open(info) as f:
                shape, fortran, dtype = _header(f, shown)
                header_len = f.tell()
            p = _Pending(key, shown, shape, fortran, dtype, None)
            if info.file_size - header_len != p.nbytes:
                raise GraphcError(f"cannot read {shown}: its header declares shape {list(shape)} {dtype} "
                                  f"({p.nbytes:,} bytes), but the member holds {max(info.file_size - header_len, 0):,}",
                                  hint="the archive is corrupt; save it again with numpy.savez")
            p.compressed = info.compress_type != zipfile.ZIP_STORED
            p.load = (lambda info=info, p=p: _member(zf, info, p))
            pending.append(p)
    except GraphcError:
        raw.close()
        raise
    except _ERRORS as exc:
        raw.close()
        raise GraphcError(f"cannot read inputs from {path}: {str(exc)[:200]}") from None
    return pending, raw.close


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, p: _Pending) -> np.ndarray:
    shape = p.shape[::-1] if p.fortran else p.shape
    arr = np.empty(shape, p.dtype)
    view = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
    try:
        with zf.open(info) as f:
            _header(f, p.shown)
            got = 0
            while got < p.nbytes:
                k = f.readinto(view[got:])
                if not k:
                    raise GraphcError(f"cannot read {p.shown}: truncated ({got:,} of {p.nbytes:,} bytes)")
                got += k
    except GraphcError:
        raise
    except _ERRORS as exc:
        raise GraphcError(f"cannot read {p.shown}: {str(exc)[:200]}") from None
    return arr.T if p.fortran else arr


def load_inputs(items: Sequence[str], check: Callable[[Mapping[str, np.ndarray]], None] | None = None
                ) -> dict[str, np.ndarray]:
    """--input NAME=FILE.npy and --input FILE.npz (every array in it, by name).
    ``check`` sees zero-stride placeholders of every array (shape and dtype
    from the headers) before any data is read or inflated."""
    pending: dict[str, _Pending] = {}
    closers = []

    def add(p: _Pending) -> None:
        # the later one silently won: which values ran depended on the order of the flags
        if p.name in pending:
            files = [q.shown.split(" from ", 1)[-1] for q in (pending[p.name], p)]
            raise GraphcError(f"input '{p.name}' is given twice: from {files[0]} and from {files[1]}",
                              hint="give each input once")
        pending[p.name] = p
    try:
        for item in items or ():
            name, sep, path = item.partition("=")
            if not sep:
                if not item.endswith(".npz"):
                    raise GraphcError(f"--input expects NAME=FILE.npy (or FILE.npz), got '{item}'")
                members, close = _npz(item)
                closers.append(close)
                for p in members:
                    add(p)
                continue
            if not name.isidentifier():
                raise GraphcError(f"--input expects NAME=FILE.npy, got '{item}'")
            add(_npy(path, name))
        if check is not None:
            stand_ins = {}
            for n, p in pending.items():
                try:
                    stand_ins[n] = placeholder(p.shape, p.dtype)
                except (ValueError, OverflowError):
                    raise GraphcError(f"cannot read {p.shown}: its shape {list(p.shape)} is too large "
                                      f"for this machine's arrays") from None
            check(stand_ins)
        inflated = sum(p.nbytes for p in pending.values() if getattr(p, "compressed", False))
        if inflated > MAX_INFLATED_INPUT_BYTES:
            big = max((p for p in pending.values() if getattr(p, "compressed", False)), key=lambda p: p.nbytes)
            raise GraphcError(f"compressed inputs would inflate to {inflated:,} bytes, more than "
                              f"{MAX_INFLATED_INPUT_BYTES >> 20} MiB ({big.shown} is {list(big.shape)} {big.dtype})",
                              hint="save large inputs uncompressed (numpy.savez or numpy.save): they are mapped, not inflated")
        return {n: p.load() for n, p in pending.items()}
    finally:
        for close in closers:
            close()


__all__ = ["load_inputs", "read_npy", "write_npz", "placeholder", "MAX_INFLATED_INPUT_BYTES"]
